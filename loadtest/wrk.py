"""The load driver: wrk against a running server (a closed loop of c connections, bodies from
loadtest/wrk_bodies.lua), the time-to-first-token probe, and one server's points measured."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.endpoints import ENDPOINTS, Endpoint
from loadtest.server import Server, serving

log = logging.getLogger("loadtest.wrk")


WRK_SCRIPT = Path(__file__).with_name("wrk_bodies.lua")
CONCURRENCY = (1, 16, 64)
GC_FLUSH_S = 0.3  # the service puts the pauses on /metrics every 0.25 s (service.metrics.GCPauses)


@dataclass
class Point:
    """One wrk run: an endpoint at a concurrency."""

    endpoint: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    units_per_s: float  # sentences/s or tokens/s
    p50_ms: float
    p95_ms: float
    p99_ms: float
    wrk_cpu_percent: float  # of one core
    server_cpu_percent: float  # of one core, all server processes
    mean_batch: float | None  # items per model batch (sequences per step for generation)
    connections: list[int] = field(default_factory=list)  # held per worker mid-run, most first
    gc_ms_per_s: float | None = None  # garbage collection pauses, all workers (None: not exported)
    gc_long_pauses: int | None = None  # of them over GC_LONG_S
    ttft_ms: dict[str, float] = field(default_factory=dict)  # probe: p50, p95, count


WRK_ERRORS = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")


def wrk_figures(result: dict) -> dict[str, float]:
    """wrk's result line as seconds, requests, errors, good requests/s and p50/p95/p99 in ms."""
    seconds = result["duration_us"] / 1e6
    return {"seconds": seconds, "requests": result["requests"],
            "errors": sum(result[k] for k in WRK_ERRORS),
            "requests_per_s": (result["requests"] - result["status_errors"]) / seconds,
            **{f"p{q}_ms": result[f"p{q}_us"] / 1000 for q in (50, 95, 99)}}


def run_wrk(url: str, path: str, bodies_file: Path, concurrency: int, seconds: int) -> tuple[dict, float]:
    """wrk's result line and the CPU seconds wrk used."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s",
               "-s", str(WRK_SCRIPT), url + path]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "WRK_BODIES": str(bodies_file)})
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.startswith("WRK_RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    return json.loads(lines[-1].removeprefix("WRK_RESULT ")), usage.ru_utime + usage.ru_stime


class FirstTokenProbe:
    """Streams /generate_stream requests one after another in a thread; times each first chunk."""

    def __init__(self, url: str, bodies: list[dict]):
        self.url = url
        self.bodies = [{**body, "max_tokens": 20} for body in bodies]
        self.times_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FirstTokenProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            body = json.dumps(self.bodies[index % len(self.bodies)]).encode()
            index += 1
            connection = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=60)
            started = time.perf_counter()
            connection.request("POST", "/generate_stream", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            first = response.read1(1)
            if response.status == 200 and first:
                self.times_ms.append((time.perf_counter() - started) * 1000)
            response.read()
            connection.close()
            self._stop.wait(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure_point(server: Server, endpoint: Endpoint, bodies_file: Path, concurrency: int,
                  seconds: int, warmup_s: int, probe_bodies: list[dict] | None) -> Point:
    if warmup_s > 0:
        run_wrk(server.url, endpoint.path, bodies_file, concurrency, warmup_s)
        server.wait_idle()
    time.sleep(GC_FLUSH_S)
    metrics_before = server.metrics()
    cpu_before = server.cpu_seconds()
    probe = FirstTokenProbe(server.url, probe_bodies) if probe_bodies else None
    if probe:
        probe.__enter__()
    spread: list[list[int]] = []
    # how wrk's connections are spread over the workers, once they are all open
    sampler = threading.Timer(min(2.0, seconds / 2), lambda: spread.append(server.connections_per_worker()))
    sampler.start()
    try:
        result, wrk_cpu = run_wrk(server.url, endpoint.path, bodies_file, concurrency, seconds)
    finally:
        sampler.cancel()
        if probe:
            probe.__exit__()
    server_cpu = server.cpu_seconds() - cpu_before
    server.wait_idle()
    time.sleep(GC_FLUSH_S)
    metrics_after = server.metrics()
    batch_count = (metrics_after.get((endpoint.model, "count"), 0)
                   - metrics_before.get((endpoint.model, "count"), 0))
    batch_sum = (metrics_after.get((endpoint.model, "sum"), 0)
                 - metrics_before.get((endpoint.model, "sum"), 0))
    figures = wrk_figures(result)
    duration, errors = figures["seconds"], figures["errors"]
    point = Point(
        endpoint=endpoint.name, concurrency=concurrency, **figures,
        units_per_s=figures["requests_per_s"] * endpoint.items_per_request,
        wrk_cpu_percent=100 * wrk_cpu / duration, server_cpu_percent=100 * server_cpu / duration,
        mean_batch=batch_sum / batch_count if batch_count else None, connections=spread[0] if spread else [])
    if metrics_after[("gc", "sum")] > 0:  # older commits do not export the pauses
        point.gc_ms_per_s = 1000 * (metrics_after[("gc", "sum")] - metrics_before[("gc", "sum")]) / duration
        point.gc_long_pauses = round(metrics_after[("gc", "over")] - metrics_before[("gc", "over")])
    if probe is not None:
        point.ttft_ms = {"p50": percentile(probe.times_ms, 0.5), "p95": percentile(probe.times_ms, 0.95),
                         "count": len(probe.times_ms)}
    log.info("%s c=%d: %.1f req/s, p50 %.1f p99 %.1f ms, %d errors, wrk %.0f%% cpu, server %.0f%% cpu%s",
             endpoint.name, concurrency, point.requests_per_s, point.p50_ms, point.p99_ms, errors,
             point.wrk_cpu_percent, point.server_cpu_percent,
             f", TTFT p50 {point.ttft_ms['p50']:.1f} ms" if point.ttft_ms else "")
    return point


@dataclass(frozen=True)
class Variant:
    """A server to measure: a source tree, its settings, and which points."""

    name: str
    tree: Path
    settings: dict[str, str]
    points: dict[str, tuple[int, ...]]  # endpoint -> concurrencies
    longer: dict[str, int] = field(default_factory=dict)  # endpoint -> least measured seconds
    bentoml_home: Path | None = None  # its own model store (None: the run's)


def measure_variant(variant: Variant, bentoml_home: Path, workdir: Path, bodies: dict[str, list[dict]],
                    seconds: int, warmup_s: int) -> dict[str, Any]:
    bodies_files = {}
    for name, endpoint_bodies in bodies.items():
        bodies_files[name] = workdir / f"{name}.jsonl"
        bodies_files[name].write_text("".join(json.dumps(b) + "\n" for b in endpoint_bodies))
    log_path = workdir / f"server-{variant.name.replace(' ', '-')}.log"
    log.info("serving %s (%s)", variant.name, variant.settings or "defaults")
    with serving(variant.tree, variant.bentoml_home or bentoml_home, log_path, variant.settings) as server:
        idle_rss = server.rss_mb_each()
        points = []
        for name, concurrencies in variant.points.items():
            for concurrency in concurrencies:
                probe = bodies["generate"] if name == "generate" and concurrency == 16 else None
                points.append(measure_point(server, ENDPOINTS[name], bodies_files[name], concurrency,
                                            max(seconds, variant.longer.get(name, 0)), warmup_s, probe))
        loaded_rss = server.rss_mb_each()
        return {"settings": variant.settings, "cold_start_s": server.cold_start_s,
                "rss_mb_idle": sum(idle_rss), "rss_mb_after_load": sum(loaded_rss),
                "rss_mb_idle_each": idle_rss, "rss_mb_after_load_each": loaded_rss,
                "points": [dataclasses.asdict(p) for p in points]}
