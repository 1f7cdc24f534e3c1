"""The reliability suite: the service tried as an attacker and as an unlucky operator would.

    make reliability     # python -m loadtest.reliability: writes reports/reliability.md (+ .json)
    python -m loadtest.reliability --only overload --seconds 4   # one scenario, shorter phases
    python -m loadtest.reliability --only overload --update      # rerun one, keep the others' figures

Real `bentoml serve` processes of the shipped models on loopback, two workers, every loop and
wait bounded. Each scenario prints what a trusted server (nginx, Triton, TorchServe) does and
what this one did, with its figures. The fast, deterministic checks of the same behaviour run
in CI (tests/service/test_transport_limits.py, test_transport_control.py); these scenarios are
long and timing-dependent, so they stay out of CI and their figures go in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from loadtest.endpoints import request_bodies
from loadtest.payloads import ValidationTexts, load_validation_texts
from loadtest.rawhttp import LOST, REQUEST_TIMEOUT_S, Answer, Connection, closed_loop
from loadtest.recovery import after_drain, drain_end, ended, timeline
from loadtest.reliability_report import Scenario, percentile, write_report
from loadtest.server import REPO_ROOT, Server, export_tree, import_models, serving, stop_server
from models.artifact import WEIGHTS_FILE
from training.store import SHIPPED_DIR

log = logging.getLogger("loadtest.reliability")

WORKERS = "2"
CAPACITY_CONCURRENCY = 16
OVERLOAD_FACTOR = 8
GOODPUT_GOAL = 0.7
DRAIN_LIMIT_S = REQUEST_TIMEOUT_S  # the longest an overload's last request may run
SCHEMATHESIS_EXAMPLES = 200  # per operation and phase
SCHEMATHESIS_TARGET = 1000  # requests, over every operation
SCHEMATHESIS_SEEDS = 5  # at most this many runs to reach it
START_TIMEOUT_S = 120  # a tampered store's server gets this long to fail or to answer
PROBE_TEXTS = ["a good film", "a dull, tired plot", "not bad at all", "the worst acting of the year",
               "an odd but moving story", "I laughed", "too long", "a masterpiece"]


@dataclass
class Context:
    server: Server
    texts: ValidationTexts
    workdir: Path
    seconds: float  # length of a load phase
    bodies: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples on /metrics whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def statuses(answers: list[Answer]) -> dict[str, int]:
    counts = Counter("lost" if a.status == LOST else str(a.status) for a in answers)
    return dict(sorted(counts.items()))


def ok_rate(answers: list[Answer], seconds: float) -> float:
    return sum(a.status == 200 for a in answers) / seconds


def p99_ms(values: list[float]) -> float | None:
    return None if not values else round(percentile(values, 99) * 1000, 1)


def run(coroutine):
    return asyncio.run(coroutine)


# -- schemathesis ---------------------------------------------------------------------------------

def openapi_3_0(document: dict) -> tuple[dict, int]:
    """`document` with each numeric exclusiveMinimum/Maximum (OpenAPI 3.1 style) written the 3.0
    way (minimum + exclusiveMinimum: true), and how many it rewrote."""
    rewritten = 0

    def fix(node):
        nonlocal rewritten
        if isinstance(node, dict):
            for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                value = node.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    node[bound], node[key] = value, True
                    rewritten += 1
            for child in node.values():
                fix(child)
        elif isinstance(node, list):
            for child in node:
                fix(child)

    fix(document)
    return document, rewritten


def schemathesis(ctx: Context) -> Scenario:
    served = httpx.get(f"{ctx.url}/docs.json", timeout=30).json()
    document, rewritten = openapi_3_0(served)
    spec = ctx.workdir / "openapi.json"
    spec.write_text(json.dumps(document))
    entries: list[dict] = []
    runs = []
    started = time.perf_counter()
    # hypothesis stops drawing for an operation early (after a failure, or when it runs out of
    # new cases), so one seed may stay under the target: further seeds until it is reached
    for seed in range(1, SCHEMATHESIS_SEEDS + 1):
        har = ctx.workdir / f"schemathesis-{seed}.har"
        command = [str(Path(sys.executable).with_name("schemathesis")), "run", str(spec), "--url",
                   ctx.url, "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--phases",
                   "examples,coverage,fuzzing", "--checks", "not_a_server_error", "--continue-on-failure",
                   "--seed", str(seed), "--request-timeout", "75", "--no-color", "--report", "har",
                   "--report-har-path", str(har)]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=ctx.workdir)
        runs.append(finished)
        entries += json.loads(har.read_text())["log"]["entries"] if har.exists() else []
        if len(entries) >= SCHEMATHESIS_TARGET:
            break
    seconds = time.perf_counter() - started
    per_path: Counter[str] = Counter()
    server_errors: Counter[str] = Counter()
    for entry in entries:
        path = "/" + entry["request"]["url"].split("/", 3)[-1].split("?")[0]
        per_path[path] += 1
        if entry["response"]["status"] >= 500:
            server_errors[f"{path} {entry['response']['status']}"] += 1
    summary = [line.strip() for finished in runs for line in finished.stdout.splitlines() if re.search(
        r"Selected|Tested|Errored|Skipped|generated|Schema Error|❌|✅|curl ", line)]
    total_5xx = sum(server_errors.values())
    return Scenario(
        "schemathesis", "zero 5xx over every operation of the OpenAPI document (its schema valid "
        "for the version it declares)",
        f"{len(entries):,} requests over {len(per_path)} paths ({len(runs)} seeds), {total_5xx} answers "
        "of 5xx; "
        f"{rewritten} numeric exclusiveMinimum/Maximum rewritten the 3.0 way before loading",
        ok=total_5xx == 0 and len(entries) >= SCHEMATHESIS_TARGET,
        figures={"requests": len(entries), "per_path": dict(sorted(per_path.items())),
                 "server_errors": dict(server_errors), "rewritten_bounds": rewritten,
                 "runs": len(runs), "exit_codes": [run.returncode for run in runs],
                 "seconds": round(seconds, 1)},
        detail=[f"command: {' '.join(command[1:])}", *(f"`{line}`" for line in summary[:30])])


# -- poison among in-flight generations -----------------------------------------------------------

POISON_BODIES = [
    '{"prompt": "a", "top_k": 1000000000}',
    '{"prompt": "a", "temperature": 1e-30}',
    '{"prompt": "a", "temperature": 5e-324}',
    '{"prompt": "a", "temperature": 1e30}',
    '{"prompt": "a", "temperature": 1e309}',
    '{"prompt": "a", "temperature": NaN}',
    '{"prompt": "a", "temperature": -1}',
    '{"prompt": "a", "top_k": -1}',
    '{"prompt": "a", "max_tokens": 0}',
    '{"prompt": "a", "max_tokens": 1e10}',
    '{"prompt": "a", "seed": -1}',
    '{"prompt": "a", "seed": 18446744073709551616}',
    '{"prompt": "\\ud800"}',
    '{"prompt": "\\u0000\\u0000"}',
    '{"prompt": ""}',
    '{"prompt": "' + "z" * 5000 + '"}',
    '{"prompt": 5}',
    '[]',
    '{"prompt": "a", "top_k": 0.5, "temperature": "hot"}',
]


async def _poison_round(url: str, honest: list[dict], path: str) -> tuple[list[Answer], list[Answer]]:
    async def one(body: bytes) -> Answer:
        connection = Connection(url)
        try:
            return await connection.request("POST", path, body)
        finally:
            connection.close()

    honest_tasks = [asyncio.create_task(one(json.dumps(body).encode())) for body in honest]
    await asyncio.sleep(0.2)  # the honest generations are under way
    poison = await asyncio.gather(*(one(body.encode()) for body in POISON_BODIES))
    return list(await asyncio.gather(*honest_tasks)), list(poison)


def stream_text(body: str) -> str:
    """The text of a /generate_stream answer: its message events' data (lines joined with
    "\\n", as an SSE client joins them), up to `event: end`; without that end, the text with a
    mark, so that it never equals a complete answer."""
    text = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), "message")
        data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
        if name == "end":
            return "".join(text)
        if name == "message" and any(line.startswith("data:") for line in lines):
            text.append(data)
    return "".join(text) + "<no event: end>"


def poison(ctx: Context) -> Scenario:
    honest = [{"prompt": "ROMEO:\n", "max_tokens": 400, "temperature": 0.8, "top_k": k, "seed": seed}
              for seed, k in enumerate((0, 5, 20, 0, 5, 20, 0, 5))]
    reference = [httpx.post(f"{ctx.url}/generate", json=body, timeout=75).json()["text"] for body in honest]
    figures: dict = {}
    ok = True
    for path in ("/generate", "/generate_stream"):
        answers, poisoned = run(_poison_round(ctx.url, honest, path))
        texts = []
        for answer in answers:
            body = answer.body.decode("utf-8", "replace")
            if answer.status != 200:
                texts.append(body)
            else:
                texts.append(json.loads(body)["text"] if path == "/generate" else stream_text(body))
        identical = sum(a.status == 200 and t == r for a, t, r in zip(answers, texts, reference, strict=True))
        poison_statuses = statuses(poisoned)
        server_errors = sum(a.status >= 500 for a in poisoned) + sum(a.status >= 500 for a in answers)
        figures[path] = {"honest": len(honest), "identical_to_unloaded": identical,
                         "honest_statuses": statuses(answers), "poison_statuses": poison_statuses,
                         "server_errors": server_errors,
                         "poison_answered_200": [body[:60] for body, answer in zip(
                             POISON_BODIES, poisoned, strict=True) if answer.status == 200]}
        ok &= identical == len(honest) and server_errors == 0 and LOST not in {a.status for a in poisoned}
    return Scenario(
        "poison", "a bad request fails alone with a 4xx naming the field; every other request in "
        "the batch completes as if alone",
        "; ".join(f"{path}: {f['identical_to_unloaded']}/{f['honest']} honest identical to their "
                  f"unloaded answers, poison answered {f['poison_statuses']}, {f['server_errors']} 5xx"
                  for path, f in figures.items()),
        ok=ok, figures=figures,
        detail=[f"{len(POISON_BODIES)} poison bodies sent while 8 seeded generations of 400 "
                "characters ran; the stream's text is compared with /generate's"])


# -- overload goodput ------------------------------------------------------------------------------

def overload_bodies(texts: ValidationTexts) -> dict[str, tuple[str, list[dict]]]:
    """label -> (path, bodies): one text, 64 texts, one German sentence, 200 characters."""
    plain = request_bodies(texts)
    sixty_four = [{"texts": (texts.reviews * 2)[i:i + 64]} for i in range(0, len(texts.reviews), 64)]
    return {"sentiment, 1 text": ("/sentiment", plain["sentiment"]),
            "sentiment, 64 texts": ("/sentiment", sixty_four),
            "translate": ("/translate", plain["translate"]),
            "generate": ("/generate", plain["generate"])}


async def _overload_then_recovery(url: str, path: str, bodies: list[dict], seconds: float):
    """8x the capacity concurrency for 3 x `seconds`, then, the moment it stops sending (its
    last requests still under way), the capacity concurrency again until `seconds` after the
    overload's last request ended (its drain; waited for at most DRAIN_LIMIT_S). The overload's
    answers are those that arrived in its last 2 x `seconds` (its first `seconds` fill the
    queues: a generation of 200 characters at 8x takes several seconds).

    Returns the overload's answers in that window, all of them, the recovery's answers, when the
    recovery started and when it stopped sending."""
    overload_task = asyncio.create_task(closed_loop(url, path, bodies, CAPACITY_CONCURRENCY
                                                    * OVERLOAD_FACTOR, seconds * 3))
    await asyncio.sleep(seconds)
    window_start = time.perf_counter()
    await asyncio.sleep(seconds * 2)
    recovery_start = time.perf_counter()
    stop = asyncio.Event()
    recovery_task = asyncio.create_task(closed_loop(url, path, bodies, CAPACITY_CONCURRENCY,
                                                    DRAIN_LIMIT_S + seconds, stop=stop))
    await asyncio.wait({overload_task}, timeout=DRAIN_LIMIT_S)
    await asyncio.sleep(seconds)
    stop.set()
    recovery_stop = time.perf_counter()
    overloaded = await overload_task
    recovery = await recovery_task
    return ([a for a in overloaded if window_start <= ended(a) <= recovery_start],
            overloaded, recovery, recovery_start, recovery_stop)


def before_or_after(seconds: float | None) -> str:
    """When a first ok came, given in seconds after the drain."""
    return "never" if seconds is None else (f"{seconds:g} s after the drain" if seconds >= 0
                                            else f"{-seconds:g} s before the drain ended")


def overload(ctx: Context) -> Scenario:
    rows = {}
    for label, (path, bodies) in overload_bodies(ctx.texts).items():
        seconds = ctx.seconds
        capacity_answers = run(closed_loop(ctx.url, path, bodies, CAPACITY_CONCURRENCY, seconds))
        capacity = ok_rate(capacity_answers, seconds)
        capacity_p99 = p99_ms([a.seconds for a in capacity_answers if a.status == 200])
        overload_answers, all_overload, recovery_answers, recovery_start, recovery_stop = run(
            _overload_then_recovery(ctx.url, path, bodies, seconds))
        # the old fields: the recovery's first `seconds`, as if it had stopped there
        first_window = [a for a in recovery_answers if ended(a) - recovery_start <= seconds]
        first_second = [a for a in recovery_answers if ended(a) - recovery_start <= 1.0]
        shed = [a.seconds for a in overload_answers if a.status in (429, 503)]
        goodput = ok_rate(overload_answers, seconds * 2)
        drained = drain_end(all_overload) or recovery_start
        judged = after_drain(recovery_answers, recovery_start, drained, recovery_stop, capacity,
                             None if capacity_p99 is None else capacity_p99 / 1000, GOODPUT_GOAL)
        rows[label] = {
            "capacity_ok_per_s": round(capacity, 1),
            "capacity_p99_ms": capacity_p99,
            "overload_ok_per_s": round(goodput, 1),
            "goodput_ratio": round(goodput / capacity, 2) if capacity else None,
            "overload_statuses": statuses(overload_answers),
            "p99_to_shed_ms": p99_ms(shed),
            "overload_ok_p99_ms": p99_ms([a.seconds for a in overload_answers if a.status == 200]),
            "recovery_first_ok_s": judged["first_ok_s"],
            "recovery_ok_per_s_first_second": sum(a.status == 200 for a in first_second),
            "recovery_ok_per_s": round(ok_rate(first_window, seconds), 1),
            "recovery_statuses": statuses(first_window),
            "recovery_drain_s": judged["drain_s"],
            "recovery_first_ok_after_drain_s": judged["first_ok_after_drain_s"],
            "recovery_ok_per_s_after_drain": judged["ok_per_s_after_drain"],
            "recovery_seconds_after_drain": judged["seconds_after_drain"],
            "recovered": judged["recovered"],
            "recovery_statuses_all": statuses(recovery_answers),
            "recovery_timeline": timeline(recovery_answers, recovery_start, recovery_stop),
        }
        log.info("overload %s: %s", label, rows[label])
    ok = all((row["goodput_ratio"] or 0) >= GOODPUT_GOAL and row["recovered"] for row in rows.values())
    observed = "; ".join(
        f"{label}: {row['overload_ok_per_s']}/{row['capacity_ok_per_s']} ok/s = "
        f"{row['goodput_ratio']}x, p99 to a 429 {row['p99_to_shed_ms'] or '-'} ms; overload's work "
        f"drained {row['recovery_drain_s']} s after it stopped sending, first ok "
        f"{before_or_after(row['recovery_first_ok_after_drain_s'])} (p99 at capacity "
        f"{(row['capacity_p99_ms'] or 0) / 1000:.2f} s), then "
        f"{row['recovery_ok_per_s_after_drain']} ok/s (first ok after overload "
        f"{row['recovery_first_ok_s']} s, {row['recovery_ok_per_s']} ok/s in its first "
        f"{ctx.seconds:g} s)" for label, row in rows.items())
    return Scenario(
        "overload goodput", f"under {OVERLOAD_FACTOR}x overload, ok answers/s stay >= "
        f"{GOODPUT_GOAL}x capacity; excess shed at once with 429 + Retry-After. When the load "
        "falls, the work admitted before it fell is finished, not preempted (Triton, TorchServe: "
        "none preempts accepted work); once it has drained, a new request's first ok comes within "
        f"the capacity p99 and ok answers/s are >= {GOODPUT_GOAL}x capacity again, with no idle "
        "pause", observed, ok=ok, figures=rows,
        detail=[f"capacity: {CAPACITY_CONCURRENCY} closed-loop clients for {ctx.seconds:g} s; overload: "
                f"{CAPACITY_CONCURRENCY * OVERLOAD_FACTOR} for {3 * ctx.seconds:g} s, a client answered "
                f"429/503 asking again at once (ok/s and statuses: answers that arrived in its last "
                f"{2 * ctx.seconds:g} s); recovery: {CAPACITY_CONCURRENCY} clients starting the moment the "
                f"overload stops sending (its last requests still under way), until {ctx.seconds:g} s "
                f"after its last request ended (the drain, waited for at most {DRAIN_LIMIT_S:g} s)",
                "recovered: the first ok of a recovery client came within (drain + capacity p99), and "
                f"ok/s from the drain to the end >= {GOODPUT_GOAL}x capacity; recovery_timeline: the "
                "recovery's answers by the second they ended in, from the moment the overload stopped "
                "sending (its last second partial); recovery_ok_per_s, recovery_statuses, "
                f"recovery_first_ok_s: its first {ctx.seconds:g} s, as earlier runs measured it"])


# -- slow clients and connection exhaustion ---------------------------------------------------------

async def _trickle(url: str, head: bytes, drip: bytes, limit_s: float) -> tuple[int, float]:
    """Send `head`, then `drip` one byte a second until the server answers or closes:
    (status or LOST, seconds the connection lived)."""
    connection = Connection(url)
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(connection.host, connection.port)
    except OSError:
        return LOST, 0.0
    try:
        writer.write(head)
        for byte in drip:
            if time.perf_counter() - started > limit_s:
                break
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except TimeoutError:
                writer.write(bytes([byte]))
                continue
            if line.startswith(b"HTTP/1.1 "):
                return int(line.split()[1]), time.perf_counter() - started
            return LOST, time.perf_counter() - started
        return LOST, time.perf_counter() - started
    except OSError:
        return LOST, time.perf_counter() - started
    finally:
        writer.close()


async def _slow_clients(url: str, bodies: list[dict], count: int, seconds: float):
    slow_header = b"POST /sentiment HTTP/1.1\r\nHost: x\r\n"
    slow_body = (b"POST /sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n")
    attackers = [asyncio.create_task(_trickle(url, slow_header, b"X-Slow: " + b"a" * 100, 45))
                 for _ in range(count)]
    attackers += [asyncio.create_task(_trickle(url, slow_body, b'{"texts": ["' + b"a" * 180, 45))
                  for _ in range(count)]
    await asyncio.sleep(0.5)
    normal = await closed_loop(url, "/sentiment", bodies, CAPACITY_CONCURRENCY, seconds)
    ended = await asyncio.gather(*attackers)
    return normal, ended[:count], ended[count:]


def slow_clients(ctx: Context, count: int = 250) -> Scenario:
    bodies = ctx.bodies["sentiment"]
    baseline = run(closed_loop(ctx.url, "/sentiment", bodies, CAPACITY_CONCURRENCY, ctx.seconds))
    normal, headers, body = run(_slow_clients(ctx.url, bodies, count, ctx.seconds * 2))
    base_rate, rate = ok_rate(baseline, ctx.seconds), ok_rate(normal, ctx.seconds * 2)
    figures = {
        "baseline_ok_per_s": round(base_rate, 1), "during_ok_per_s": round(rate, 1),
        "baseline_p99_ms": p99_ms([a.seconds for a in baseline if a.status == 200]),
        "during_p99_ms": p99_ms([a.seconds for a in normal if a.status == 200]),
        "normal_statuses": statuses(normal),
        "slow_header_endings": dict(Counter(str(s) for s, _ in headers)),
        "slow_header_closed_after_s_max": round(max(t for _, t in headers), 1),
        "slow_body_endings": dict(Counter(str(s) for s, _ in body)),
        "slow_body_closed_after_s_max": round(max(t for _, t in body), 1),
    }
    ok = (rate >= 0.7 * base_rate and set(figures["normal_statuses"]) == {"200"}
          and figures["slow_header_endings"].get("408", 0) == count
          and figures["slow_body_endings"].get("408", 0) == count)
    return Scenario(
        "slow clients", "nginx: client_header_timeout / client_body_timeout (60 s) answer 408 and "
        "close; other clients unaffected",
        f"{count} slow-header + {count} slow-body connections (a byte a second): normal clients "
        f"{figures['during_ok_per_s']} ok/s vs {figures['baseline_ok_per_s']} before, p99 "
        f"{figures['during_p99_ms']} vs {figures['baseline_p99_ms']} ms; slow headers ended "
        f"{figures['slow_header_endings']} within {figures['slow_header_closed_after_s_max']} s, "
        f"slow bodies {figures['slow_body_endings']} within {figures['slow_body_closed_after_s_max']} s",
        ok=ok, figures=figures,
        detail=["defaults: RNNSERVE_HEADER_TIMEOUT_S=10, RNNSERVE_BODY_TIMEOUT_S=30; each attacker "
                "gives up after 45 s (then it shows as lost)"])


def raise_descriptor_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _hold_connections(url: str, idle: int, seconds: float) -> dict[str, int]:
    """`idle` connections, each with a request line sent and no more, reopened whenever the
    server closes one, for `seconds`."""
    connection = Connection(url)
    stop = time.perf_counter() + seconds
    held: Counter[str] = Counter()

    async def attacker() -> None:
        while time.perf_counter() < stop:
            try:
                reader, writer = await asyncio.open_connection(connection.host, connection.port)
            except OSError:
                held["refused"] += 1
                await asyncio.sleep(0.1)
                continue
            writer.write(b"GET /livez HTTP/1.1\r\n")
            held["opened"] += 1
            try:
                await asyncio.wait_for(reader.read(), max(0.01, stop - time.perf_counter()))
                held["closed_by_server"] += 1
            except (TimeoutError, OSError):
                pass
            finally:
                writer.close()

    await asyncio.gather(*(attacker() for _ in range(idle)))
    return dict(held)


def hold_connections(url: str, idle: int, seconds: float) -> dict[str, int]:
    """In a process of its own: the attacker's event loop must not slow the normal clients'."""
    raise_descriptor_limit()
    return asyncio.run(_hold_connections(url, idle, seconds))


async def _normal_and_probe(url: str, bodies: list[dict], seconds: float):
    """Keep-alive clients in a closed loop, and a new connection every 0.25 s."""
    stop = time.perf_counter() + seconds

    async def fresh_probe() -> list[Answer]:
        answers = []
        while time.perf_counter() < stop:
            probe = Connection(url)
            answers.append(await probe.request("POST", "/sentiment", json.dumps(bodies[0]).encode(), 10))
            probe.close()
            await asyncio.sleep(0.25)
        return answers

    probe = asyncio.create_task(fresh_probe())
    normal = await closed_loop(url, "/sentiment", bodies, CAPACITY_CONCURRENCY, seconds)
    return normal, await probe


def connection_exhaustion(ctx: Context, idle: int = 3000) -> Scenario:
    bodies = ctx.bodies["sentiment"]
    baseline = run(closed_loop(ctx.url, "/sentiment", bodies, CAPACITY_CONCURRENCY, ctx.seconds))
    during = ctx.seconds * 2
    with ProcessPoolExecutor(1) as pool:
        attack = pool.submit(hold_connections, ctx.url, idle, during + 2.0)
        time.sleep(2.0)  # the flood is in place
        normal, probes = run(_normal_and_probe(ctx.url, bodies, during))
        held = attack.result(timeout=during + 60)
    base_rate, rate = ok_rate(baseline, ctx.seconds), ok_rate(normal, during)
    figures = {"idle_connections": idle, "baseline_ok_per_s": round(base_rate, 1),
               "during_ok_per_s": round(rate, 1), "normal_statuses": statuses(normal),
               "new_connection_probe": statuses(probes), "attacker": held,
               "limit_rejections": {limit: metric(ctx.url, "rnnserve_limit_rejections_total", limit=limit)
                                    for limit in ("connections", "header_timeout")}}
    return Scenario(
        "connection exhaustion", "nginx: worker_connections cap (new connections refused past it), "
        "client_header_timeout frees idle ones; established clients go on",
        f"{idle} half-sent connections kept open: normal keep-alive clients {figures['during_ok_per_s']} "
        f"ok/s vs {figures['baseline_ok_per_s']} before ({figures['normal_statuses']}); a new "
        f"connection every 0.25 s got {figures['new_connection_probe']}",
        ok=set(figures["normal_statuses"]) == {"200"} and set(figures["new_connection_probe"]) == {"200"},
        figures=figures,
        detail=["defaults: RNNSERVE_MAX_CONNECTIONS=1024 per worker (2 workers), "
                "RNNSERVE_HEADER_TIMEOUT_S=10; the attacker (a process of its own, on the same two "
                "CPUs as the server) reopens at once each connection the server closes; the normal "
                "clients start after it is in place. As a trusted server: every normal and "
                "new-connection request answered 200"])


# -- disconnect ------------------------------------------------------------------------------------

async def _leave_after(url: str, path: str, body: dict, after_s: float) -> None:
    connection = Connection(url)
    try:
        await connection.request("POST", path, json.dumps(body).encode(), timeout_s=after_s)
    finally:
        connection.close()


def disconnect(ctx: Context, clients: int = 16) -> Scenario:
    def generated() -> float:
        return metric(ctx.url, "rnnserve_generated_tokens_total", endpoint="generate")

    def translated() -> float:
        return metric(ctx.url, "rnnserve_batch_size_sum", model="translator-de-en")

    def departed(endpoint: str) -> float:
        return metric(ctx.url, "rnnserve_errors_total", endpoint=endpoint, kind="disconnected")

    before = {"generated": generated(), "translated": translated(),
              "generate": departed("generate"), "translate": departed("translate")}
    generate = {"prompt": "KING:\n", "max_tokens": 2000, "temperature": 0.8}
    translate = {"texts": ctx.texts.german[:64], "source": "de", "beam_size": 4, "max_length": 256}

    async def leave_all() -> None:
        await asyncio.gather(*(_leave_after(ctx.url, "/generate", generate, 0.5) for _ in range(clients)),
                             *(_leave_after(ctx.url, "/translate", translate, 0.3) for _ in range(clients)))

    run(leave_all())
    deadline = time.monotonic() + 30
    while (departed("generate") - before["generate"] < clients or departed("translate")
           - before["translate"] < clients) and time.monotonic() < deadline:
        time.sleep(0.1)
    settled = {"generated": generated(), "translated": translated()}
    time.sleep(2.0)  # anything still computing for the departed would show here
    after = {"generated": generated(), "translated": translated()}
    figures = {
        "clients_per_endpoint": clients,
        "disconnected_counted": {"generate": departed("generate") - before["generate"],
                                 "translate": departed("translate") - before["translate"]},
        "characters_generated": settled["generated"] - before["generated"],
        "characters_asked": clients * 2000,
        "characters_after_settling": after["generated"] - settled["generated"],
        "texts_translated": settled["translated"] - before["translated"],
        "texts_asked": clients * 64,
        "texts_after_settling": after["translated"] - settled["translated"],
    }
    ok = (figures["characters_after_settling"] == 0 and figures["texts_after_settling"] == 0
          and figures["characters_generated"] < figures["characters_asked"]
          and figures["texts_translated"] < figures["texts_asked"])
    return Scenario(
        "disconnect", "Triton/TorchServe: a cancelled request's work is dropped (Triton's request "
        "cancellation; a queued item is never computed)",
        f"{clients} /generate clients left after 0.5 s, {clients} /translate after 0.3 s: counted "
        f"disconnected {figures['disconnected_counted']}; {figures['characters_generated']:.0f} of "
        f"{figures['characters_asked']} characters generated, {figures['texts_translated']:.0f} of "
        f"{figures['texts_asked']} texts translated, nothing more in the 2 s after",
        ok=ok, figures=figures)


# -- kill a worker ------------------------------------------------------------------------------------

def kill_a_worker(ctx: Context) -> Scenario:
    bodies = ctx.bodies["sentiment"]
    workers = ctx.server.processes()[1:]
    seconds = ctx.seconds * 3
    killed_at: list[float] = []

    async def load_and_kill():
        async def killer():
            await asyncio.sleep(seconds / 3)
            killed_at.append(time.perf_counter())
            os.kill(workers[-1].pid, signal.SIGKILL)

        task = asyncio.create_task(killer())
        answers = await closed_loop(ctx.url, "/sentiment", bodies, CAPACITY_CONCURRENCY, seconds)
        await task
        return answers

    started = time.perf_counter()
    answers = run(load_and_kill())
    kill = killed_at[0]
    back = wait_for_workers(ctx.server, len(workers), 60)
    before = [a for a in answers if ended(a) < kill]
    after = [a for a in answers if ended(a) >= kill]
    bins: dict[int, list[Answer]] = {}
    for answer in after:
        bins.setdefault(int((ended(answer) - kill) * 2), []).append(answer)
    rate_before = ok_rate(before, kill - started)
    # the first half second after the kill with answers flowing at half the rate before or more
    recovered = next((index / 2 for index, group in sorted(bins.items())
                      if sum(a.status == 200 for a in group) * 2 >= 0.5 * rate_before), None)
    figures = {"ok_per_s_before": round(rate_before, 1), "statuses_after_kill": statuses(after),
               "lost_requests": sum(a.status == LOST for a in after),
               "p99_ms_before": p99_ms([a.seconds for a in before if a.status == 200]),
               "p99_ms_after": p99_ms([a.seconds for a in after if a.status == 200]),
               "max_ms_after": round(max((a.seconds for a in after), default=0) * 1000, 1),
               "ok_per_s_each_half_second_after": [sum(a.status == 200 for a in bins.get(i, [])) * 2
                                                   for i in range(min(12, int(seconds * 4 / 3)))],
               "ok_rate_back_to_half_after_s": recovered,
               "worker_replaced_after_s": None if back is None else round(back - kill, 1)}
    return Scenario(
        "kill a worker", "TorchServe/Triton (several workers or model instances): the requests on "
        "the dead worker fail, the others go on at once, the worker is restarted",
        f"SIGKILL to 1 of 2 workers under {CAPACITY_CONCURRENCY} clients: {figures['lost_requests']} "
        f"requests lost, p99 {figures['p99_ms_before']} -> {figures['p99_ms_after']} ms (max "
        f"{figures['max_ms_after']} ms), ok rate >= half of before's within "
        f"{recovered} s, worker replaced after {figures['worker_replaced_after_s']} s",
        ok=recovered is not None and recovered <= 1.0 and figures["lost_requests"] <= CAPACITY_CONCURRENCY,
        figures=figures,
        detail=["one worker of two left serving until the supervisor replaces the killed one: half "
                "the CPU processes; the kill comes a third of the way into the load"])


def wait_for_workers(server: Server, count: int, timeout_s: float) -> float | None:
    """When `count` live workers answer again (their children listening), or None."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        alive = [p for p in server.processes()[1:] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if len(alive) >= count and all(p.net_connections("tcp") for p in alive):
            return time.perf_counter()
        time.sleep(0.1)
    return None


# -- SIGTERM drain ----------------------------------------------------------------------------------

def sigterm_drain(texts: ValidationTexts, workdir: Path, home: Path, tree: Path) -> Scenario:
    generate = {"prompt": "ROMEO:\n", "max_tokens": 1500, "temperature": 0.8}
    with serving(tree, home, workdir / "drain.log", {"RNNSERVE_WORKERS": WORKERS}) as server:
        process = server.process
        result: dict = {}

        async def drain():
            async def one(path: str, body: dict) -> Answer:
                connection = Connection(server.url)
                try:
                    return await connection.request("POST", path, json.dumps(body).encode())
                finally:
                    connection.close()

            tasks = [asyncio.create_task(one("/generate", generate)) for _ in range(8)]
            tasks += [asyncio.create_task(one("/translate", {"texts": texts.german[:16], "source": "de",
                                                             "beam_size": 4})) for _ in range(4)]
            await asyncio.sleep(1.0)
            result["sent_at"] = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*tasks)
            late = await one("/sentiment", {"texts": ["after the signal"]})
            return answers, late

        answers, late = run(drain())
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        exit_s = time.perf_counter() - result["sent_at"]
    complete = sum(a.status == 200 for a in answers)
    figures = {"in_flight": len(answers), "statuses": statuses(answers), "complete": complete,
               "answer_after_signal": "lost" if late.status == LOST else late.status,
               "exit_code": process.returncode, "exit_after_s": round(exit_s, 1),
               "longest_answer_s": round(max(a.seconds for a in answers), 1)}
    return Scenario(
        "SIGTERM drain", "uvicorn/nginx graceful stop: stop accepting, finish what is in flight "
        "(within a grace period), then exit 0",
        f"SIGTERM with 8 generations of 1,500 characters and 4 beam-4 translations in flight: "
        f"{figures['statuses']}, exit code {figures['exit_code']} after {figures['exit_after_s']} s",
        ok=figures["statuses"] == {"200": len(answers)} and process.returncode == 0, figures=figures)


# -- tampered artifact ------------------------------------------------------------------------------

def tensor_offset(safetensors: bytes, name: str) -> int:
    """Where tensor `name`'s bytes start in a safetensors file: an 8-byte header length, the
    JSON header, then the data."""
    header_length = int.from_bytes(safetensors[:8], "little")
    header = json.loads(safetensors[8:8 + header_length])
    return 8 + header_length + header[name]["data_offsets"][0]


def tampered_artifact(workdir: Path, reference: dict | None, tree: Path) -> Scenario:
    # the store's copy is damaged after a clean import (training.store import-shipped refuses a
    # damaged shipped folder before it reaches the store)
    home = import_models(SHIPPED_DIR, workdir / "tampered_home")
    weights, = (home / "models" / "sentiment-rnn").glob(f"*/{WEIGHTS_FILE}")
    data = bytearray(weights.read_bytes())
    offset = tensor_offset(data, "classifier.weight") + 1  # every text goes through it
    data[offset] ^= 0x7F  # the high byte of a float16 weight: sign kept, exponent and mantissa changed
    weights.write_bytes(bytes(data))
    log_path = workdir / "tampered.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(tree),
               RNNSERVE_WORKERS="1")
    from loadtest.server import free_port, ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "service.app:RNNServe",
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=tree, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    answered = None
    try:
        while process.poll() is None and time.perf_counter() - started < START_TIMEOUT_S:
            if ready(url):
                answered = httpx.post(f"{url}/sentiment", json={"texts": PROBE_TEXTS}, timeout=30)
                break
            time.sleep(0.2)
    finally:
        seconds = time.perf_counter() - started
        stop_server(process)
    exited_itself = answered is None and seconds < START_TIMEOUT_S
    text = log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if re.search(r"error|Error|sha256|corrupt|checksum", line)]
    served = answered.json() if answered is not None and answered.status_code == 200 else None
    shift = None
    if served is not None and reference is not None:
        shift = max(abs(a["probabilities"]["positive"] - b["probabilities"]["positive"])
                    for a, b in zip(served, reference, strict=True))
    figures = {"flipped_byte_at": offset, "file": f"sentiment-rnn/{WEIGHTS_FILE}",
               "exited_by_itself": exited_itself, "exit_code": process.returncode,
               "seconds": round(seconds, 1), "max_probability_shift": shift,
               "served_labels": served and [a["label"] for a in served],
               "untampered_labels": reference and [a["label"] for a in reference],
               "log_lines_naming_an_error": len(lines), "first_error_lines": lines[:3]}
    if exited_itself:
        observed = f"bentoml serve exited {process.returncode} after {seconds:.1f} s: {lines[:1]}"
    elif served is not None:
        observed = (f"served with 200 after {seconds:.1f} s; positive probabilities of "
                    f"{len(PROBE_TEXTS)} texts moved by up to {shift:.3g} from the untampered model's")
    else:
        observed = f"neither exited nor served within {START_TIMEOUT_S} s; answer {answered}"
    return Scenario(
        "tampered artifact", "Triton/TorchServe load a model or fail its load (model unavailable, "
        "reason logged); a checksum mismatch stops the load",
        observed, ok=exited_itself and process.returncode != 0, figures=figures,
        detail=["one byte flipped in the store's copy of the shipped sentiment weights; `bentoml "
                "serve` given up to 120 s"])


# -- the run -------------------------------------------------------------------------------------

SCENARIOS = ("schemathesis", "poison", "overload", "slow", "exhaustion", "disconnect", "kill",
             "drain", "tampered")


@contextmanager
def main_server(workdir: Path, home: Path, tree: Path, settings: dict[str, str]) -> Iterator[Server]:
    with serving(tree, home, workdir / "server.log", {"RNNSERVE_WORKERS": WORKERS, **settings}) as server:
        yield server


def run_scenarios(only: set[str], seconds: float, workdir: Path, tree: Path,
                  settings: dict[str, str]) -> list[Scenario]:
    """The scenarios in `only`, against the service in `tree` with `settings` (the main server's)."""
    texts = load_validation_texts()
    home = import_models(SHIPPED_DIR, workdir / "bentoml_home")
    results: list[Scenario] = []
    reference = None
    on_main: list[tuple[str, Callable[[Context], Scenario]]] = [
        ("schemathesis", schemathesis), ("poison", poison), ("overload", overload),
        ("slow", slow_clients), ("exhaustion", connection_exhaustion), ("disconnect", disconnect),
        ("kill", kill_a_worker)]
    if only & {name for name, _ in on_main} or "tampered" in only:
        with main_server(workdir, home, tree, settings) as server:
            ctx = Context(server, texts, workdir, seconds, request_bodies(texts))
            reference = httpx.post(f"{server.url}/sentiment", json={"texts": PROBE_TEXTS}, timeout=30).json()
            for name, scenario in on_main:
                if name in only:
                    results.append(report_one(name, lambda s=scenario: s(ctx)))
    if "drain" in only:
        results.append(report_one("drain", lambda: sigterm_drain(texts, workdir, home, tree)))
    if "tampered" in only:
        results.append(report_one("tampered", lambda: tampered_artifact(workdir, reference, tree)))
    return results


def report_one(name: str, scenario: Callable[[], Scenario]) -> Scenario:
    started = time.perf_counter()
    log.info("scenario %s ...", name)
    try:
        result = scenario()
    except Exception as error:  # one broken scenario must not lose the others' figures
        log.exception("scenario %s failed", name)
        result = Scenario(name, "-", f"the scenario itself failed: {error!r}", ok=False)
    result.figures["scenario_seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n== {result.name}: {'as a trusted server' if result.ok else 'FALLS SHORT'}\n"
          f"   trusted server: {result.trusted}\n   this server:    {result.observed}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS),
                        help="the scenarios to run (default: all)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of a load phase (overload runs twice this)")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "reports" / "reliability.md",
                        help="markdown report to write (a .json of the figures beside it)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    parser.add_argument("--update", action="store_true", help="replace only the scenarios run in "
                        "the report already there (with --only), keeping the others")
    parser.add_argument("--settings", nargs="*", default=[], metavar="NAME=VALUE",
                        help="RNNSERVE_* settings of the server the load scenarios run against")
    parser.add_argument("--ref", help="serve this commit's service (git archive) instead of the "
                        "working tree's, for a before/after; the suite itself is the working tree's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="rnnserve-reliability-"))
    try:
        tree = export_tree(args.ref, workdir / "tree") if args.ref else REPO_ROOT
        settings = dict(item.split("=", 1) for item in args.settings)
        results = run_scenarios(set(args.only), args.seconds, workdir, tree, settings)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder: {workdir}")
    command = "python -m loadtest.reliability " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(results, args.report, command.strip(), update=args.update)
    print(f"\nwrote {args.report}")


if __name__ == "__main__":
    main()
