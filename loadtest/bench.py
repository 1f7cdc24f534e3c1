"""The serving benchmark: the models' in-process ceiling, the service under a closed-loop load,
batching on vs off, resident memory and cold start, in one run on one machine.

    make bench            # python -m loadtest.bench: writes reports/bench/bench.{json,md}
    python -m loadtest.bench --models DIR --seconds 4 --compare HEAD~3 --settings RNNSERVE_WORKERS=2
                          # quicker; also /sentiment of an older commit and of other settings

1. Ceiling: each model called directly (no HTTP, no service code) at batch 1, 8, 16, 32, 64 with
   one torch thread: sentences/s for sentiment and greedy translation, tokens/s for generation
   (200 sampled characters per sequence, prompts primed one by one as the service does).
2. Service: `bentoml serve` of the same models in its own store, loaded by wrk (one thread, a
   closed loop of c connections, bodies from the validation splits in turn: loadtest/wrk_bodies.lua)
   at c = 1, 16, 64: requests/s and p50/p95/p99, with the CPU wrk itself used and the server's.
   While /generate runs at c=16, a probe streams /generate_stream requests one at a time and times
   their first chunk (time to first token).
3. The ratio service / ceiling, and the same service with batching off (RNNSERVE_MAX_BATCH_SIZE=1,
   RNNSERVE_MAX_ACTIVE_SEQUENCES=1).
4. Precisions (models.quantize: float32, float16 weights, bfloat16 and dynamic int8): validation
   quality, batch independence and ceiling of every model at each, and the service with every
   model at each (RNNSERVE_PRECISION=float32, =float16, =bfloat16, =int8) measured like the
   default one, each against its own ceiling. The default server (service.config's
   DEFAULT_PRECISION: each task its own precision) is measured against the ceiling of each model
   at its precision.
Also: the resident memory of every server process together, and the time from start to /readyz.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from prometheus_client.parser import text_string_to_metric_families

from loadtest.payloads import ValidationTexts, load_validation_texts
from models.generator import CharGenerator, sample_next
from models.names import PRECISIONS
from models.quantize import cpu_has_bfloat16, with_precision
from models.rnn import cat_states
from models.sentiment import SentimentClassifier
from models.translator import Translator
from service.config import DEFAULT_PRECISION, parse_precisions
from training import data
from training.evaluate import char_loss, sentiment_accuracy, translation_bleu

log = logging.getLogger("loadtest.bench")

REPO_ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = Path(__file__).with_name("wrk_bodies.lua")
CEILING_BATCHES = (1, 8, 16, 32, 64)
CONCURRENCY = (1, 16, 64)
GENERATE_TOKENS = 200
BATCHING_OFF = {"RNNSERVE_MAX_BATCH_SIZE": "1", "RNNSERVE_MAX_ACTIVE_SEQUENCES": "1"}
ENDPOINT_TASKS = {"sentiment": "sentiment", "translate": "translator", "generate": "generator"}
MODEL_FOLDERS = ("sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en")
READY_TIMEOUT_S = 180
GC_LONG_S = 0.025  # a garbage collection pause this long shows in the tail (a bucket bound)
GC_FLUSH_S = 0.3  # the service puts the pauses on /metrics every 0.25 s (service.metrics.GCPauses)


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    unit: str  # what the ceiling counts
    items_per_request: int  # units one request produces
    model: str  # rnnserve_batch_size's model label


ENDPOINTS = {
    "sentiment": Endpoint("sentiment", "/sentiment", "sentences", 1, "sentiment-rnn"),
    "translate": Endpoint("translate", "/translate", "sentences", 1, "translator-de-en"),
    "generate": Endpoint("generate", "/generate", "tokens", GENERATE_TOKENS, "char-generator"),
}


def request_bodies(texts: ValidationTexts) -> dict[str, list[dict]]:
    """What the benchmark sends: one sentence per request, greedy German, 200 characters."""
    return {
        "sentiment": [{"texts": [review]} for review in texts.reviews],
        "translate": [{"texts": [german], "source": "de"} for german in texts.german],
        "generate": [{"prompt": prompt, "max_tokens": GENERATE_TOKENS, "temperature": 0.8,
                      "seed": seed} for seed, prompt in enumerate(texts.prompts)],
    }


# -- 1. the ceiling ------------------------------------------------------------------------------

def items_per_second(run: Callable[[list], int], inputs: list, batch_size: int,
                     min_seconds: float) -> float:
    """Items/s of `run(batch) -> items` over consecutive batches of `inputs`, cycling, for at least
    `min_seconds` (and at least one batch) after one untimed warm-up batch."""
    batches = [inputs[i:i + batch_size] for i in range(0, len(inputs) - batch_size + 1, batch_size)]
    run(batches[0])
    items, started, index = 0, time.perf_counter(), 0
    while True:
        items += run(batches[index % len(batches)])
        index += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return items / elapsed


def generate_batch(pipeline: CharGenerator, prompts: list[str], tokens: int) -> int:
    """Sample `tokens` characters for every prompt as one batch; returns the characters made."""
    primed = [pipeline.prime(prompt) for prompt in prompts]  # (V,), state per prompt
    logits = torch.stack([p[0] for p in primed])  # (B, V)
    state = cat_states([p[1] for p in primed])
    batch = len(prompts)
    temperature, top_k = torch.full((batch,), 0.8), torch.zeros(batch, dtype=torch.long)
    generators = [torch.Generator().manual_seed(row) for row in range(batch)]
    for _ in range(tokens):
        next_tokens = sample_next(logits, temperature, top_k, generators)  # (B,)
        logits, state = pipeline.module.step(next_tokens, state)
    return batch * tokens


@dataclass(frozen=True)
class Pipelines:
    classifier: SentimentClassifier
    translator: Translator
    generator: CharGenerator

    @classmethod
    def load(cls, models_dir: Path) -> Pipelines:
        return cls(SentimentClassifier.load(models_dir / "sentiment-rnn"),
                   Translator.load(models_dir / "translator-de-en"),
                   CharGenerator.load(models_dir / "char-generator"))

    def at_precision(self, precision: str) -> Pipelines:
        """Copies at `precision` (models.quantize): one for every model, or TASK=PRECISION items
        over the service's default (service.config.parse_precisions), as the service makes them."""
        by_task = parse_precisions(precision)
        return Pipelines(
            SentimentClassifier(with_precision(self.classifier.module, by_task["sentiment"]),
                                self.classifier.vocab),
            Translator(with_precision(self.translator.module, by_task["translator"]),
                       self.translator.source_spm, self.translator.target_spm),
            CharGenerator(with_precision(self.generator.module, by_task["generator"]), self.generator.vocab))

    def runs(self, texts: ValidationTexts) -> dict[str, tuple[Callable[[list], int], list]]:
        """Per endpoint: run(batch) -> units made, and the inputs to batch."""
        classifier, translator, generator = self.classifier, self.translator, self.generator
        return {
            "sentiment": (lambda batch: len(classifier.predict_ids(batch)),
                          [classifier.encode(text) for text in texts.reviews]),
            "translate": (lambda batch: len(translator.translate_ids(batch, [1] * len(batch),
                                                                     [None] * len(batch))),
                          [translator.encode_source(text) for text in texts.german]),
            "generate": (lambda batch: generate_batch(generator, batch, GENERATE_TOKENS),
                         texts.prompts * (1 + max(CEILING_BATCHES) // max(1, len(texts.prompts)))),
        }


def measure_ceiling(pipelines: Pipelines, texts: ValidationTexts, min_seconds: float,
                    batch_sizes: tuple[int, ...] = CEILING_BATCHES) -> dict[str, dict[str, float]]:
    """Units/s per endpoint and batch size, in this process."""
    ceiling: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, (run, inputs) in pipelines.runs(texts).items():
            ceiling[name] = {}
            for batch_size in batch_sizes:
                ceiling[name][str(batch_size)] = items_per_second(run, inputs, batch_size, min_seconds)
                log.info("ceiling %s batch %d: %.1f %s/s", name, batch_size,
                         ceiling[name][str(batch_size)], ENDPOINTS[name].unit)
    return ceiling


BLEU_SENTENCES = 300  # of Multi30k val: enough to see a change, quick to decode
LOSS_WINDOWS = 64  # of Tiny Shakespeare val, 256 characters each


SHIFT_BATCH = 32  # batchmates per review when measuring how far they move its answer


def batchmate_shift(classifier: SentimentClassifier, texts: list[str]) -> dict[str, float]:
    """How much a review's P(positive) depends on what it is batched with: |batched - alone| over
    `texts`, batched SHIFT_BATCH at a time in order -> its median, 99th percentile and maximum."""
    alone = torch.cat([classifier.predict_proba([text])[:, 1] for text in texts])
    batched = torch.cat([classifier.predict_proba(texts[i:i + SHIFT_BATCH])[:, 1]
                         for i in range(0, len(texts), SHIFT_BATCH)])
    shift = (batched - alone).abs().double()
    quantiles = torch.quantile(shift, torch.tensor([0.5, 0.99], dtype=torch.double)).tolist()
    return {"median": quantiles[0], "p99": quantiles[1], "max": float(shift.max())}


def validation_quality(pipelines: Pipelines) -> dict[str, float]:
    """Validation-split quality of each model: the figures a lower precision must not spoil, and
    how far a review's answer moves with its batchmates (float32: rounding only)."""
    with torch.inference_mode():
        dev = data.sst2_splits()["dev"]
        shift = batchmate_shift(pipelines.classifier, [text for text, _ in dev])
        return {
            "sentiment_dev_accuracy": sentiment_accuracy(pipelines.classifier, dev)["accuracy"],
            **{f"sentiment_dev_batchmate_shift_{key}": float(f"{value:.2g}") for key, value in shift.items()},
            "generator_val_bits_per_char": char_loss(pipelines.generator, data.shakespeare_splits()["val"],
                                                     max_windows=LOSS_WINDOWS)["bits_per_char"],
            "translator_de_val_bleu_greedy": translation_bleu(
                pipelines.translator, data.multi30k_splits()["val"][:BLEU_SENTENCES])["bleu"],
        }


def measure_precisions(pipelines: Pipelines, texts: ValidationTexts, min_seconds: float) -> dict:
    """Every model at each precision, from the float32 `pipelines`: validation quality, and the
    ceiling at each batch size."""
    copies = {precision: pipelines.at_precision(precision) for precision in PRECISIONS}
    result = {"quality": {precision: validation_quality(p) for precision, p in copies.items()},
              "ceilings": {precision: measure_ceiling(p, texts, min_seconds)
                           for precision, p in copies.items()}}
    log.info("precisions: %s", result["quality"])
    return result


def mixed_ceiling(ceilings: dict[str, dict], precision: str) -> dict[str, dict[str, float]]:
    """The ceiling of servers at `precision` (per task) from the ceilings of each precision."""
    by_task = parse_precisions(precision)
    return {name: ceilings[by_task[task]][name] for name, task in ENDPOINT_TASKS.items()
            if name in ceilings[by_task[task]]}


# -- 2. the service ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `bentoml serve` of the service in `tree`, with the models in `bentoml_home`."""

    def __init__(self, process: subprocess.Popen, url: str, cold_start_s: float):
        self.process = process
        self.url = url
        self.cold_start_s = cold_start_s

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def rss_mb_each(self) -> list[float]:
        """Resident memory of the supervisor, then of each worker."""
        each = []
        for process in self.processes():
            with suppress(psutil.NoSuchProcess):
                each.append(process.memory_info().rss / 2**20)
        return each

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def connections_per_worker(self) -> list[int]:
        """Established client connections each worker holds, most first (workers with none too)."""
        port = int(self.url.rsplit(":", 1)[1])
        counts = []
        for process in self.processes()[1:]:
            with suppress(psutil.NoSuchProcess):
                counts.append(sum(1 for c in process.net_connections("tcp")
                                  if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port))
        return sorted(counts, reverse=True)

    def metrics(self) -> dict[tuple[str, str], float]:
        """From /metrics: rnnserve_batch_size sum and count per model label,
        ("in_progress", "") = the requests BentoML counts as in progress, ("gc", "sum") = seconds
        of garbage collection pauses and ("gc", "over") = pauses over GC_LONG_S, all generations."""
        connection = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=10)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        found: dict[tuple[str, str], float] = {("in_progress", ""): 0.0, ("gc", "sum"): 0.0,
                                               ("gc", "over"): 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == "rnnserve_batch_size" and sample.name.endswith(("_sum", "_count")):
                    key = (sample.labels["model"], sample.name.rsplit("_", 1)[1])
                    found[key] = found.get(key, 0.0) + sample.value
                elif sample.name == "bentoml_service_request_in_progress":
                    found[("in_progress", "")] += sample.value
                elif sample.name == "rnnserve_gc_pause_seconds_sum":
                    found[("gc", "sum")] += sample.value
                elif sample.name == "rnnserve_gc_pause_seconds_count":
                    found[("gc", "over")] += sample.value
                elif (sample.name == "rnnserve_gc_pause_seconds_bucket"
                      and float(sample.labels["le"]) == GC_LONG_S):
                    found[("gc", "over")] -= sample.value
        return found

    def wait_idle(self, timeout_s: float = 180) -> None:
        """Until no request is in progress: wrk leaves its last requests queued when it stops."""
        deadline = time.perf_counter() + timeout_s
        while self.metrics()[("in_progress", "")] > 0 and time.perf_counter() < deadline:
            time.sleep(0.2)


@contextmanager
def serving(tree: Path, bentoml_home: Path, log_path: Path, settings: dict[str, str]) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env.update(BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(tree),
               **settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "wb") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.app:RNNServe", "--host", "127.0.0.1",
             "--port", str(port)], cwd=tree, env=env, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        deadline = started + READY_TIMEOUT_S
        while not ready(url):
            if process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"the server did not get ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        yield Server(process, url, time.perf_counter() - started)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ready(url: str) -> bool:
    try:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=2)
        connection.request("GET", "/readyz")
        status = connection.getresponse().status
        connection.close()
        return status == 200
    except OSError:
        return False


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


def import_models(models: Path, bentoml_home: Path) -> Path:
    """A fresh model store at `bentoml_home` holding the artifacts of the `models` folder."""
    subprocess.run([sys.executable, "-m", "training.store", "import-shipped", "--dir", str(models)],
                   cwd=REPO_ROOT, check=True, capture_output=True,
                   env={**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"})
    return bentoml_home


def export_tree(ref: str, directory: Path) -> Path:
    """The committed files of `ref` in `directory` (git archive: the working tree is untouched)."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO_ROOT, check=True,
                             capture_output=True).stdout
    archive_path = directory.with_suffix(".tar")
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(directory, filter="data")
    return directory


# -- 3. targets and the report -------------------------------------------------------------------

def find_point(result: dict, endpoint: str, concurrency: int) -> dict | None:
    for point in result["points"]:
        if point["endpoint"] == endpoint and point["concurrency"] == concurrency:
            return point
    return None


def targets(ceiling: dict, service: dict, off: dict | None) -> list[dict]:
    """The issue's targets: measured, target and whether it is met."""
    rows = []

    def add(what: str, measured: float, target: float, higher_is_better: bool, unit: str) -> None:
        met = measured >= target if higher_is_better else measured <= target
        rows.append({"target": what, "measured": measured, "goal": target, "unit": unit,
                     "direction": ">=" if higher_is_better else "<=", "met": bool(met)})

    s64, s1 = find_point(service, "sentiment", 64), find_point(service, "sentiment", 1)
    if s64:
        add("/sentiment requests/s at c=64 / ceiling batch 32 (1 thread)",
            s64["requests_per_s"] / ceiling["sentiment"]["32"], 0.8, True, "x")
        add("/sentiment p99 at c=64", s64["p99_ms"], 50, False, "ms")
        add("/sentiment errors at c=64", s64["errors"], 0, False, "")
    if s1:
        add("/sentiment p50 at c=1", s1["p50_ms"], 3, False, "ms")
    off64 = find_point(off, "sentiment", 64) if off else None
    if s64 and off64:
        add("/sentiment batching on / off at c=64", s64["requests_per_s"] / off64["requests_per_s"], 3,
            True, "x")
    t16 = find_point(service, "translate", 16)
    if t16:
        add("/translate sentences/s at c=16 / ceiling greedy batch 16",
            t16["units_per_s"] / ceiling["translate"]["16"], 0.6, True, "x")
    g16 = find_point(service, "generate", 16)
    if g16:
        add("/generate tokens/s at c=16 / ceiling batch 16", g16["units_per_s"] / ceiling["generate"]["16"],
            0.6, True, "x")
        if g16["ttft_ms"]:
            add("time to first token p50 (/generate_stream probe beside /generate at c=16)",
                g16["ttft_ms"]["p50"], 25, False, "ms")
    add("resident memory, all server processes", service["rss_mb_after_load"], 1536, False, "MB")
    add("start to ready", service["cold_start_s"], 15, False, "s")
    return rows


def busy_processes(seconds: float = 1.0, threshold: float = 20.0) -> list[str]:
    """Command lines of other processes using over `threshold`% of a core: they share the CPU."""
    processes = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid != os.getpid()]
    for process in processes:
        with suppress(psutil.Error):
            process.cpu_percent(None)
    time.sleep(seconds)
    busy = []
    for process in processes:
        with suppress(psutil.Error):
            percent = process.cpu_percent(None)
            if percent > threshold:
                busy.append(f"{' '.join(process.info['cmdline'] or [])[:160]} ({percent:.0f}% of a core)")
    return busy


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def machine_conditions() -> dict[str, Any]:
    others = busy_processes()
    import bentoml

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bfloat16_in_onednn": cpu_has_bfloat16(),
            "python": platform.python_version(), "torch": torch.__version__,
            "bentoml": bentoml.__version__, "load_average_at_start": os.getloadavg(),
            "busy_processes_at_start": others}


def target_table(rows: list[dict]) -> list[str]:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['target']} | {row['measured']:.3g} {row['unit']} | {row['direction']} "
                     f"{row['goal']:g} {row['unit']} | {'yes' if row['met'] else '**no**'} |")
    return lines


def connection_split(point: dict) -> str:
    """"33/31": wrk's connections held by each worker mid-run; "-" when not sampled."""
    return "/".join(map(str, point.get("connections") or [])) or "-"


def gc_pauses(point: dict) -> str:
    """"3.1 (0)": garbage collection ms per second of load (long pauses); "-" when not exported."""
    if point.get("gc_ms_per_s") is None:
        return "-"
    return f"{point['gc_ms_per_s']:.1f} ({point['gc_long_pauses']})"


def memory_split(each: list[float] | None) -> str:
    """" (supervisor 73, workers 580 + 581)" from resident MB of the supervisor, then the workers."""
    if not each:
        return ""
    return f" (supervisor {each[0]:.0f}, workers {' + '.join(f'{mb:.0f}' for mb in each[1:])})"


def cpu_description(machine: dict) -> str:
    """" (AMD EPYC, torch's kernels for AVX2, no bfloat16 in oneDNN)"; "" for older reports."""
    if "cpu_capability" not in machine:
        return ""
    bfloat16 = "bfloat16 in oneDNN" if machine["bfloat16_in_onednn"] else "no bfloat16 in oneDNN"
    return (f" ({machine['cpu_model'] or 'unknown'}, torch's kernels for {machine['cpu_capability']}, "
            f"{bfloat16})")


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# Serving benchmark", "",
             f"Written by `{report['command']}` at {report['finished']}. Machine: "
             f"{report['machine']['cpus']} CPUs{cpu_description(report['machine'])}, torch "
             f"{report['machine']['torch']}, bentoml "
             f"{report['machine']['bentoml']}; load average at start "
             f"{', '.join(f'{x:.2f}' for x in report['machine']['load_average_at_start'])}.", ""]
    if report["machine"]["busy_processes_at_start"]:
        lines += ["**Contention:** other processes were busy on the same cores when this run started: "
                  + "; ".join(f"`{c}`" for c in report["machine"]["busy_processes_at_start"])
                  + ". The figures below share the CPU with them.", ""]
    if report["machine"].get("busy_processes_at_end"):
        at_end = report["machine"]["busy_processes_at_end"]
        lines += ["At the end of the run: " + "; ".join(f"`{c}`" for c in at_end) + ".", ""]
    base_settings = report.get("base_settings") or {}
    if base_settings:
        lines += ["Every server below runs with "
                  + ", ".join(f"`{k}={v}`" for k, v in base_settings.items())
                  + " besides its own settings.", ""]
    served = report.get("precision", "float32")  # RNNSERVE_PRECISION of the servers
    lines += ["## Targets", "", f"`RNNSERVE_PRECISION={served}` (\"batching on\"), against the ceiling "
              "of the same models at the same precisions.", "", *target_table(report["targets"])]
    for precision, rows in (report.get("targets_lower") or {}).items():
        lines += ["", f"Every model at `RNNSERVE_PRECISION={precision}` (\"{precision}\" below), against "
                  f"the {precision} ceiling of the same {precision} models; batching on/off compares the "
                  "\"batching on\" and \"batching off\" servers only.", "", *target_table(rows)]
    threads = report["ceiling_threads"]
    lines += ["", f"## Ceiling: in-process, no HTTP, {threads} torch thread{'s' if threads > 1 else ''}", "",
              "| endpoint | unit | " + " | ".join(f"batch {b}" for b in CEILING_BATCHES) + " |",
              "|---|---|" + "---|" * len(CEILING_BATCHES)]
    for name, by_batch in report["ceiling"].items():
        lines.append(f"| {name} | {ENDPOINTS[name].unit}/s | "
                     + " | ".join(f"{by_batch[str(b)]:.0f}" for b in CEILING_BATCHES) + " |")
    if report["precisions"]:
        precisions = report["precisions"]
        lower = [p for p in precisions["ceilings"] if p != "float32"]
        float32_ceiling = precisions["ceilings"].get("float32", report["ceiling"])
        lines += ["", "## Precisions (`RNNSERVE_PRECISION`)", "",
                  "`models.quantize`: float16 stores every LSTM, GRU and Linear weight in float16 "
                  "and computes in float32; bfloat16 copies every weight and activation to bfloat16; "
                  "int8 stores every LSTM, GRU and Linear weight in int8 and quantizes activations "
                  "with one scale per batch; same thread count. Quality on validation "
                  "splits (SST-2 dev accuracy %, Tiny Shakespeare val bits per character over "
                  f"{LOSS_WINDOWS} windows, greedy BLEU on the first {BLEU_SENTENCES} Multi30k val "
                  "sentences). Batchmate shift: |P(positive) of an SST-2 dev review in a batch of "
                  f"{SHIFT_BATCH} - the same review alone|, median / 99th percentile / max over the "
                  "872 reviews: how far an answer depends on what it is batched with.", "",
                  "| measure | float32 | " + " | ".join(lower) + " |", "|---|---|" + "---|" * len(lower)]
        for key, value in precisions["quality"]["float32"].items():
            lines.append(f"| {key} | {value} | "
                         + " | ".join(str(precisions["quality"][p][key]) for p in lower) + " |")
        for name, by_batch in float32_ceiling.items():
            for batch, base in by_batch.items():
                cells = [f"{precisions['ceilings'][p][name][batch]:.0f} "
                         f"({precisions['ceilings'][p][name][batch] / base:.2f}x)" for p in lower]
                lines.append(f"| {name} ceiling at batch {batch}, {ENDPOINTS[name].unit}/s | {base:.0f} | "
                             + " | ".join(cells) + " |")
    for variant, result in report["service"].items():
        lowered = report["precisions"] and variant in report["precisions"]["ceilings"]
        ceilings = report["precisions"]["ceilings"][variant] if lowered else report["ceiling"]
        lines += ["", f"## Service: {variant}", "",
                  f"Settings: {result['settings'] or 'defaults'}. Start to ready "
                  f"{result['cold_start_s']:.1f} s; resident memory {result['rss_mb_idle']:.0f} MB idle"
                  f"{memory_split(result.get('rss_mb_idle_each'))}, {result['rss_mb_after_load']:.0f} MB "
                  f"after the load{memory_split(result.get('rss_mb_after_load_each'))} (all processes).", "",
                  "| endpoint | c | req/s | units/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
                  f"| / {variant + ' ' if lowered else ''}ceiling at batch c | server CPU | wrk CPU "
                  f"| connections per worker | GC ms/s (pauses > {GC_LONG_S * 1000:.0f} ms) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in result["points"]:
            ceiling = ceilings[p["endpoint"]].get(str(p["concurrency"]))
            ratio = f"{p['units_per_s'] / ceiling:.2f}" if ceiling else "-"
            batch = f"{p['mean_batch']:.1f}" if p["mean_batch"] is not None else "-"
            lines.append(f"| {p['endpoint']} | {p['concurrency']} | {p['requests_per_s']:.1f} | "
                         f"{p['units_per_s']:.0f} {ENDPOINTS[p['endpoint']].unit} | {p['p50_ms']:.1f} | "
                         f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} | {batch} | {ratio} | "
                         f"{p['server_cpu_percent']:.0f}% | {p['wrk_cpu_percent']:.0f}% | "
                         f"{connection_split(p)} | {gc_pauses(p)} |")
            if p["ttft_ms"]:
                lines.append(f"| | | time to first token (probe): p50 {p['ttft_ms']['p50']:.1f} ms, "
                             f"p95 {p['ttft_ms']['p95']:.1f} ms over {p['ttft_ms']['count']} streams "
                             "| | | | | | | | | | | |")
    if report["comparisons"]:
        lines += ["", "## Before / after (same run)", "",
                  "Each row: the service at an earlier commit, or with other settings, against the "
                  "working tree with default settings (\"batching on\" above): same bodies, same "
                  "run; same models, except that a commit serves the models it shipped.", "",
                  "| variant | endpoint | c | req/s | p50 ms | p99 ms | req/s: defaults now / variant "
                  f"| connections per worker | GC ms/s (pauses > {GC_LONG_S * 1000:.0f} ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        current = report["service"]["batching on"]
        for variant, result in report["comparisons"].items():
            for p in result["points"]:
                now = find_point(current, p["endpoint"], p["concurrency"])
                ratio = (f"{now['requests_per_s'] / p['requests_per_s']:.2f}"
                         if now and p["requests_per_s"] else "-")
                lines.append(f"| {variant} | {p['endpoint']} | {p['concurrency']} | "
                             f"{p['requests_per_s']:.1f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {ratio} | "
                             f"{connection_split(p)} | {gc_pauses(p)} |")
                if p["ttft_ms"]:
                    then = now["ttft_ms"]["p50"] if now and now["ttft_ms"] else None
                    lines.append(f"| | | | time to first token (probe) p50 {p['ttft_ms']['p50']:.1f} ms"
                                 + (f", defaults now {then:.1f} ms" if then else "") + " | | | | | |")
    steps = [name for name in report["comparisons"] if name.startswith("commit ")]
    if steps:
        chain = [*steps, "batching on"]
        results = {**report["comparisons"], "batching on": report["service"]["batching on"]}
        lines += ["", "## What each step bought (/sentiment, same run)", "",
                  "| from | to | req/s ratio c=1 | c=16 | c=64 | p50 c=1 ms | p99 c=64 ms |",
                  "|---|---|---|---|---|---|---|"]
        for before, after in zip(chain, chain[1:], strict=False):
            then, now = results[before], results[after]
            ratios = []
            for concurrency in CONCURRENCY:
                a, b = find_point(then, "sentiment", concurrency), find_point(now, "sentiment", concurrency)
                ratios.append(f"{b['requests_per_s'] / a['requests_per_s']:.2f}" if a and b else "-")
            p1 = [find_point(r, "sentiment", 1) for r in (then, now)]
            p64 = [find_point(r, "sentiment", 64) for r in (then, now)]
            p50 = f"{p1[0]['p50_ms']:.1f} -> {p1[1]['p50_ms']:.1f}" if all(p1) else "-"
            p99 = f"{p64[0]['p99_ms']:.0f} -> {p64[1]['p99_ms']:.0f}" if all(p64) else "-"
            target = after if after != "batching on" else "working tree"
            lines.append(f"| {before} | {target} | {' | '.join(ratios)} | {p50} | {p99} |")
    lines += ["", "Units: sentences for sentiment and translation, characters (tokens) for generation. "
              "`/ ceiling at batch c` divides the service's units/s by the in-process figure at the batch "
              "size equal to the concurrency. CPU figures are percent of one core over the measured "
              "seconds. Connections per worker: how wrk's connections were spread over the server's "
              "workers, sampled once during the run. GC: milliseconds of garbage collection pauses "
              "per second of load, summed over the workers (rnnserve_gc_pause_seconds), with the "
              f"count of pauses longer than {GC_LONG_S * 1000:.0f} ms.", ""]
    path.write_text("\n".join(lines))


def parse_settings(text: str) -> dict[str, str]:
    """"A=1,B=2" -> {"A": "1", "B": "2"}; "" -> {}."""
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models" / "pretrained",
                        help="folder with the four model artifacts (the shipped ones by default)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench",
                        help="where bench.json and bench.md go")
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured wrk seconds before each (0: none)")
    parser.add_argument("--ceiling-seconds", type=float, default=1.5,
                        help="least seconds per ceiling measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the ceiling")
    parser.add_argument("--compare", nargs="*", default=[], metavar="REF",
                        help="also serve these commits (git archive, each with the models it shipped) "
                             "and measure them at c = 1, 16, 64 (--compare-endpoints: /sentiment by "
                             "default), for a before/after in the same run")
    parser.add_argument("--settings", nargs="*", default=[], metavar="VAR=VALUE[,VAR=VALUE]",
                        help="also serve the working tree with these settings (e.g. RNNSERVE_WORKERS=2) "
                             "and measure them like --compare")
    parser.add_argument("--base-settings", default="", metavar="VAR=VALUE[,VAR=VALUE]",
                        help="settings of every server measured, under each variant's own (e.g. "
                             "RNNSERVE_WORKERS=2 on a 2-core machine)")
    parser.add_argument("--compare-endpoints", nargs="+", choices=tuple(ENDPOINTS), default=["sentiment"],
                        help="the endpoints --compare and --settings measure")
    parser.add_argument("--skip-off", action="store_true", help="skip the batching-off server")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="serve and measure every model, server and ceiling at this one precision "
                             "(RNNSERVE_PRECISION), as if it were the default; no precisions section "
                             "(default: the service's default, "
                             f"{DEFAULT_PRECISION})")
    parser.add_argument("--skip-precisions", "--skip-quantization", action="store_true",
                        help="skip the precisions section: each precision's validation quality, "
                             "ceilings and server")
    parser.add_argument("--only", nargs="+", choices=tuple(ENDPOINTS), default=tuple(ENDPOINTS),
                        help="measure only these endpoints (development; the report needs all)")
    args = parser.parse_args(argv)

    missing = [name for name in MODEL_FOLDERS if not (args.models / name).is_dir()]
    if missing:
        parser.error(f"{args.models} lacks {', '.join(missing)}")
    if subprocess.run(["wrk", "--version"], capture_output=True).returncode not in (0, 1):
        parser.error("wrk not found: apt-get install wrk")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = machine_conditions()
    texts = load_validation_texts()
    bodies = request_bodies(texts)
    torch.set_num_threads(args.threads)
    uniform = args.precision is not None
    served = args.precision or DEFAULT_PRECISION
    pipelines = Pipelines.load(args.models)  # float32, as loaded
    precisions = (None if args.skip_precisions or uniform
                  else measure_precisions(pipelines, texts, args.ceiling_seconds))
    ceiling = (mixed_ceiling(precisions["ceilings"], served) if precisions
               else measure_ceiling(pipelines.at_precision(served), texts, args.ceiling_seconds))
    del pipelines

    base = {**parse_settings(args.base_settings),
            **({"RNNSERVE_PRECISION": args.precision} if uniform else {})}
    everything = {name: CONCURRENCY for name in args.only}
    variants = [Variant("batching on", REPO_ROOT, base, everything)]
    if not args.skip_off:
        # generation with one sequence at a time at c=64 would take minutes per point
        off = {"sentiment": CONCURRENCY, "translate": CONCURRENCY, "generate": (1, 16)}
        # one sequence at a time: 16 queued 200-character requests take many seconds each
        variants.append(Variant("batching off", REPO_ROOT, {**base, **BATCHING_OFF},
                                {name: off[name] for name in args.only}, longer={"generate": 20}))
    if precisions:
        variants += [Variant(precision, REPO_ROOT, {**base, "RNNSERVE_PRECISION": precision}, everything)
                     for precision in PRECISIONS]
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-") as tmp:
        workdir = Path(tmp)
        bentoml_home = workdir / "bentoml_home"
        import_models(args.models, bentoml_home)
        extra = []
        compared = {name: CONCURRENCY for name in args.compare_endpoints}
        for ref in args.compare:
            commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, check=True,
                                    capture_output=True, text=True).stdout.strip()
            tree = export_tree(commit, workdir / f"tree-{commit}")
            # A commit serves the models it shipped: today's may need code it does not have.
            home = import_models(tree / "models" / "pretrained", workdir / f"bentoml_home-{commit}")
            extra.append(Variant(f"commit {commit}", tree, base, compared,
                                 bentoml_home=home))
        for settings in args.settings:
            extra.append(Variant(settings, REPO_ROOT, {**base, **parse_settings(settings)},
                                 compared))
        comparisons = {v.name: measure_variant(v, bentoml_home, workdir, bodies, args.seconds, args.warmup)
                       for v in extra}
        service = {v.name: measure_variant(v, bentoml_home, workdir, bodies, args.seconds, args.warmup)
                   for v in variants}

    report = {
        "command": "python -m loadtest.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine, "busy_processes_at_end": busy_processes()},
        "models": str(args.models), "precision": served, "ceiling_threads": args.threads,
        "base_settings": base,
        "wrk": {"threads": 1, "seconds": args.seconds, "warmup_seconds": args.warmup},
        "ceiling": ceiling, "precisions": precisions, "service": service, "comparisons": comparisons,
        "targets": targets(ceiling, service["batching on"], service.get("batching off")),
        "targets_lower": ({precision: targets(precisions["ceilings"][precision], service[precision], None)
                           for precision in PRECISIONS} if precisions else None),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "bench.md")
    log.info("wrote %s and %s", args.out / "bench.json", args.out / "bench.md")
    for row in report["targets"]:
        log.info("%-80s %10.3g %-3s %s %g: %s", row["target"], row["measured"], row["unit"], row["direction"],
                 row["goal"], "met" if row["met"] else "NOT met")


if __name__ == "__main__":
    main()
