"""service.metrics.GCPauses: garbage collection pauses reach rnnserve_gc_pause_seconds."""

from __future__ import annotations

import asyncio
import gc

import pytest
from prometheus_client import REGISTRY

from service.metrics import GCPauses


@pytest.fixture(autouse=True)
def only_explicit_collections():
    """No automatic collection may add to the counts the tests expect."""
    gc.disable()
    yield
    gc.enable()


def full_collections() -> tuple[float, float]:
    """(count, sum) of rnnserve_gc_pause_seconds{generation="2"} so far."""
    labels = {"generation": "2"}
    return (REGISTRY.get_sample_value("rnnserve_gc_pause_seconds_count", labels) or 0.0,
            REGISTRY.get_sample_value("rnnserve_gc_pause_seconds_sum", labels) or 0.0)


def test_each_collection_is_observed_by_generation_when_flushed_not_inside_the_collector():
    pauses = GCPauses()
    pauses.install()
    try:
        count, total = full_collections()
        gc.collect()
        gc.collect()
        # the collector's callback only notes the pauses
        assert full_collections() == (count, total)
        pauses.flush()
    finally:
        pauses.uninstall()
    new_count, new_total = full_collections()
    assert new_count == count + 2
    assert new_total > total
    gc.collect()
    pauses.flush()
    assert full_collections()[0] == new_count  # uninstalled: no longer timed


def test_run_flushes_until_cancelled_and_once_more_on_the_way_out():
    pauses = GCPauses()

    async def main() -> None:
        task = asyncio.create_task(pauses.run(interval_s=0.01))
        pauses.install()
        try:
            gc.collect()
            await asyncio.sleep(0.1)
            assert full_collections()[0] == count + 1  # flushed by the loop
            gc.collect()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            pauses.uninstall()

    count, _ = full_collections()
    asyncio.run(main())
    assert full_collections()[0] == count + 2
