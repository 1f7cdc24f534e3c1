"""The rnnserve_* Prometheus metrics, beside BentoML's own bentoml_service_* ones on /metrics.

Plain prometheus_client objects at module level: BentoML sets PROMETHEUS_MULTIPROC_DIR before a
worker imports the service, so every worker writes its own files and /metrics sums them.
Gauges therefore declare how workers combine. Alert rules and dashboards use these exact names.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from dataclasses import dataclass, fields

from prometheus_client import Counter, Gauge, Histogram

# 1 .. 512 items, powers of two
BATCH_BUCKETS = tuple(2.0**i for i in range(10))
# 1 .. 1024 tokens, powers of two
LENGTH_BUCKETS = tuple(2.0**i for i in range(11))
EFFICIENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

batch_size = Histogram("rnnserve_batch_size", "Items per model batch (texts; sequences per "
                       "generation step)", ["model"], buckets=BATCH_BUCKETS)
padding_efficiency = Histogram("rnnserve_padding_efficiency", "Real tokens / padded tokens of a "
                               "model batch", ["model"], buckets=EFFICIENCY_BUCKETS)
queue_wait_seconds = Histogram("rnnserve_queue_wait_seconds", "Time an item waited before its "
                               "model batch (or generation batch) took it", ["model"],
                               buckets=SECONDS_BUCKETS)
compute_seconds = Histogram("rnnserve_compute_seconds", "Model time of one batch (one step for "
                            "generation)", ["model"], buckets=SECONDS_BUCKETS)
input_length = Histogram("rnnserve_input_length", "Tokens per input (words, pieces or prompt "
                         "characters)", ["model"], buckets=LENGTH_BUCKETS)
generated_tokens = Counter("rnnserve_generated_tokens", "Characters generated", ["endpoint"])
time_to_first_token_seconds = Histogram("rnnserve_time_to_first_token_seconds", "From a "
                                        "generation request's arrival to its first character",
                                        ["endpoint"], buckets=SECONDS_BUCKETS)
errors = Counter("rnnserve_errors", "Failed requests by endpoint and kind (validation, "
                 "client, overloaded, timeout, internal, disconnected)", ["endpoint", "kind"])
shed_before_body = Counter("rnnserve_shed_before_body", "Requests to a full model answered 429 by "
                           "the HTTP protocol before their body was read: in rnnserve_errors_total "
                           "{kind=overloaded} too, but never reaching bentoml_service_request_total",
                           ["endpoint"])
active_sequences = Gauge("rnnserve_active_sequences", "Sequences in the running generation "
                         "batch", multiprocess_mode="livesum")
gc_pause_seconds = Histogram("rnnserve_gc_pause_seconds", "Python garbage collection pauses of "
                             "the workers, by generation (2: full)", ["generation"],
                             buckets=SECONDS_BUCKETS)
rebalanced_connections = Counter("rnnserve_rebalanced_connections", "Connections a worker over its "
                                 "share closed after an answer, for the kernel to place afresh")
limit_rejections = Counter("rnnserve_limit_rejections", "Requests and connections stopped by a "
                           "limit (connections, header_timeout, header_bytes, headers, body_timeout, "
                           "body_bytes, unauthorized), and requests whose client went away "
                           "(disconnected)", ["limit"])
sessions = Counter("rnnserve_sessions", "Generation sessions by event: started (a first "
                   "state returned), continued, expired (410), refused (400 or 409)", ["event"])
state_bytes = Histogram("rnnserve_state_bytes", "Characters of each state token returned",
                        buckets=tuple(2.0**i for i in range(10, 18)))
model_info = Gauge("rnnserve_model_info", "1 for every loaded model", ["model", "tag", "task", "cell"],
                   multiprocess_mode="livemax")


@dataclass(frozen=True)
class ModelMetrics:
    """One model's children of the per-model histograms, looked up once: each labels() call
    takes a lock and builds a key, a few times per request on the hot path otherwise."""

    batch_size: Histogram
    padding_efficiency: Histogram
    queue_wait_seconds: Histogram
    compute_seconds: Histogram
    input_length: Histogram

    @classmethod
    def of(cls, model: str) -> ModelMetrics:
        return cls(**{field.name: globals()[field.name].labels(model) for field in fields(cls)})


class GCPauses:
    """Times every garbage collection of this process into rnnserve_gc_pause_seconds.

    A collection stops every thread of the worker, so long ones show up directly in the tail
    latency. The callback only notes the pause: it runs inside whatever allocation triggered the
    collection, possibly while prometheus_client holds its non-reentrant lock, so the histogram is
    updated later, by `flush` (from `run`, on the event loop).
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=100_000)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Time collections from now on, flushing from a task on the running event loop."""
        self.install()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="gc-pauses")

    async def close(self) -> None:
        self.uninstall()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def install(self) -> None:
        gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pending.append((info["generation"], time.perf_counter() - self._started))

    def flush(self) -> None:
        while self._pending:
            generation, seconds = self._pending.popleft()
            gc_pause_seconds.labels(str(generation)).observe(seconds)

    async def run(self, interval_s: float = 0.25) -> None:
        """Flush every `interval_s` seconds, until cancelled."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.flush()
        finally:
            self.flush()


VALIDATION_STATUSES = frozenset({400, 413, 415, 422})


def error_kind(status: int) -> str | None:
    """The errors_total kind of an HTTP status, None for a success.

    validation: the body was rejected (400, 413, 415, 422); client: another 4xx (wrong method,
    401); overloaded: 429/503; timeout: 408, 504; internal: any other 5xx.
    """
    if status < 400:
        return None
    if status in VALIDATION_STATUSES:
        return "validation"
    if status in (429, 503):
        return "overloaded"
    if status in (408, 504):
        return "timeout"
    return "internal" if status >= 500 else "client"
