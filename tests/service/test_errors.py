"""service.errors: ErrorCounting counts each failed request once by kind, and a request the
protocol cancelled because its client went away ends quietly, counted as disconnected."""

from __future__ import annotations

import asyncio
import logging

from service import errors, metrics


def count(endpoint: str, kind: str) -> float:
    return metrics.errors.labels(endpoint, kind)._value.get()


async def slow_app(scope, receive, send):
    await asyncio.sleep(30)


def run_cancelled(mark_disconnected: bool) -> tuple[bool, BaseException | None]:
    """Run ErrorCounting(slow_app) and cancel its task as the protocol (or a timeout) would:
    (whether the task ended without an exception, the exception)."""

    async def main():
        scope = {"type": "http", "path": "/x", "headers": [], "state": {}}
        app = errors.ErrorCounting(slow_app, endpoints={"/x": "x"})
        task = asyncio.create_task(app(scope, None, None))
        await asyncio.sleep(0)  # ErrorCounting records its task
        assert scope["state"][errors.TASK] is task
        if mark_disconnected:
            scope["state"][errors.DISCONNECTED] = True
        task.cancel()
        try:
            await task
            return True, None
        except BaseException as error:  # noqa: BLE001 - what the task ended with is the point
            return False, error

    return asyncio.run(main())


def test_a_request_whose_client_went_away_ends_quietly_and_counts_as_disconnected():
    before = count("x", "disconnected"), count("x", "timeout")
    ended, error = run_cancelled(mark_disconnected=True)
    assert ended and error is None
    assert (count("x", "disconnected") - before[0], count("x", "timeout") - before[1]) == (1, 0)


def test_any_other_cancellation_propagates_and_counts_as_a_timeout():
    before = count("x", "timeout")
    ended, error = run_cancelled(mark_disconnected=False)
    assert not ended and isinstance(error, asyncio.CancelledError)
    assert count("x", "timeout") - before == 1


def test_the_rate_limited_log_says_how_many_events_a_line_stands_for(caplog):
    limited = errors.RateLimitedLog(logging.getLogger("test.ratelimited"), every_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.ratelimited"):
        for i in range(5):
            limited.warning("shed %d", i)
    assert [record.getMessage() for record in caplog.records] == ["shed 0 (1 such within 3600 s)"]
