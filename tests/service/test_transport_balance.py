"""service.transport.balance: the workers' shared connection counts, and the middleware that closes a
worker's surplus connections after their answer."""

from __future__ import annotations

import asyncio

import pytest

from service import metrics
from service.transport import balance
from service.transport.balance import ConnectionBalancer, SharedCounts, worker_counts


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def request(balancer: ConnectionBalancer, port: int, scope_type: str = "http") -> list[dict]:
    """The messages `balancer` sends for one request from 127.0.0.1:`port`."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": scope_type, "client": ("127.0.0.1", port), "path": "/sentiment"}
    asyncio.run(balancer(scope, receive, send))
    return sent


def closes(sent: list[dict]) -> bool:
    start = next(message for message in sent if message["type"] == "http.response.start")
    return (b"connection", b"close") in start["headers"]


@pytest.fixture
def two_workers(tmp_path):
    """This worker's counts (slot 0) and the other worker's (slot 1), in one file."""
    path = tmp_path / "counts.bin"
    return SharedCounts(path, workers=2, index=0), SharedCounts(path, workers=2, index=1)


def test_workers_see_each_others_counts_and_leave_out_stale_ones(two_workers):
    mine, other = two_workers
    assert mine.live(100.0) == []  # nobody has published
    mine.publish(30, 100.0)
    other.publish(10, 99.5)
    assert sorted(mine.live(100.0)) == sorted(other.live(100.0)) == [10, 30]
    assert mine.live(99.5 + balance.STALE_S + 0.1) == [30]  # the other stopped publishing: gone


def test_a_slot_must_exist(tmp_path):
    with pytest.raises(ValueError, match="worker index 2 out of range for 2 workers"):
        SharedCounts(tmp_path / "counts.bin", workers=2, index=2)


def connect(balancer: ConnectionBalancer, ports: range) -> list[bool]:
    return [closes(request(balancer, port)) for port in ports]


def test_a_worker_over_its_share_closes_its_surplus_connections_after_answering(two_workers):
    mine, other = two_workers
    clock = Clock()
    balancer = ConnectionBalancer(answer, counts=lambda: mine, clock=clock)
    other.publish(10, clock.now)
    assert not any(connect(balancer, range(5000, 5030)))  # counted, not yet published
    clock.now += balance.PUBLISH_S
    # 30 here, 10 there: share 20, and SLACK over it stays
    surplus = 30 - 20 - balance.SLACK
    counted = metrics.rebalanced_connections._value.get()
    closed = connect(balancer, range(5000, 5030))
    assert closed == [True] * surplus + [False] * (30 - surplus)
    assert metrics.rebalanced_connections._value.get() == counted + surplus
    # the closed ones no longer count here
    clock.now += balance.PUBLISH_S
    other.publish(10 + surplus, clock.now)  # where their new connections went
    assert not any(connect(balancer, range(5000 + surplus, 5030)))
    assert sorted(mine.live(clock.now)) == sorted([30 - surplus, 10 + surplus])


def test_a_worker_at_its_share_keeps_every_connection(two_workers):
    mine, other = two_workers
    clock = Clock()
    balancer = ConnectionBalancer(answer, counts=lambda: mine, clock=clock)
    other.publish(20, clock.now)
    connect(balancer, range(5000, 5021))
    clock.now += balance.PUBLISH_S
    assert not any(connect(balancer, range(5000, 5021)))  # 21 against 20: within SLACK


def test_connections_gone_quiet_stop_counting(two_workers):
    mine, other = two_workers
    clock = Clock()
    balancer = ConnectionBalancer(answer, counts=lambda: mine, clock=clock)
    connect(balancer, range(5000, 5030))
    clock.now += balance.WINDOW_S + balance.PUBLISH_S  # those 30 sent nothing for a while
    other.publish(10, clock.now)
    assert not any(connect(balancer, range(6000, 6010)))
    assert sorted(mine.live(clock.now)) == [1, 10]  # published at the first of the 10
    clock.now += balance.PUBLISH_S
    connect(balancer, range(6000, 6001))
    assert sorted(mine.live(clock.now)) == [10, 10]  # the 30 quiet ones left out


def test_a_lone_worker_or_a_gone_one_closes_nothing(two_workers):
    mine, other = two_workers
    clock = Clock()
    other.publish(0, clock.now - balance.STALE_S - 1)
    balancer = ConnectionBalancer(answer, counts=lambda: mine, clock=clock)
    connect(balancer, range(5000, 5030))
    clock.now += balance.PUBLISH_S
    assert not any(connect(balancer, range(5000, 5030)))
    unbalanced = ConnectionBalancer(answer, counts=lambda: None, clock=clock)
    assert not any(connect(unbalanced, range(5000, 5030)))


def test_other_scopes_pass_through(two_workers):
    mine, _ = two_workers
    balancer = ConnectionBalancer(answer, counts=lambda: mine)
    assert request(balancer, 5000, scope_type="websocket")[0]["status"] == 200
    assert mine.live(balance.time.monotonic()) == []  # not counted, nothing published


def test_worker_counts_only_in_a_worker_of_several(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    worker = ["/x/_bentoml_impl/worker/service.py", "--fd", "3", "--worker-id", "2"]
    counts = worker_counts(2, worker)
    assert counts is not None and counts.index == 1
    assert counts.path.parent == tmp_path
    assert worker_counts(1, worker) is None  # one worker: nothing to balance
    assert worker_counts(2, ["bentoml", "serve", "--worker-id", "2"]) is None  # not a worker
    assert worker_counts(2, worker[:3]) is None  # no worker id
