"""The benchmark (loadtest.bench and its modules): targets and the markdown report from made-up
figures; the ceiling's arithmetic; wrk's result line."""

from __future__ import annotations

import shutil

import pytest
import torch

from loadtest import ceiling
from loadtest.bench_markdown import write_markdown
from loadtest.ceiling import CEILING_BATCHES, items_per_second, mixed_ceiling
from loadtest.precision_quality import batchmate_shift
from loadtest.server import parse_settings
from loadtest.targets import targets
from loadtest.wrk import run_wrk


def point(endpoint: str, concurrency: int, rps: float, p50: float, p99: float, units: float = 1.0) -> dict:
    return {"endpoint": endpoint, "concurrency": concurrency, "seconds": 8.0, "requests": int(rps * 8),
            "errors": 0, "requests_per_s": rps, "units_per_s": rps * units, "p50_ms": p50,
            "p95_ms": p99, "p99_ms": p99, "wrk_cpu_percent": 3.0, "server_cpu_percent": 100.0,
            "mean_batch": float(concurrency), "ttft_ms": {}}


CEILING = {name: {str(b): 100.0 * b for b in CEILING_BATCHES}
           for name in ("sentiment", "translate", "generate")}
SERVICE = {"settings": {}, "cold_start_s": 6.0, "rss_mb_idle": 900.0, "rss_mb_after_load": 1000.0,
           "points": [point("sentiment", 1, 400, 2.5, 5),
                      {**point("sentiment", 64, 2600, 40, 60), "gc_ms_per_s": 3.14, "gc_long_pauses": 2,
                       "connections": [33, 31]},
                      point("translate", 16, 1000, 10, 20),
                      {**point("generate", 16, 10, 800, 900, units=200),
                       "ttft_ms": {"p50": 30.0, "p95": 40.0, "count": 10}}]}
OFF = {**SERVICE, "points": [point("sentiment", 64, 500, 100, 200)]}


def test_targets_compare_with_the_ceiling_and_batching_off():
    rows = {row["target"]: row for row in targets(CEILING, SERVICE, OFF)}
    ratio = rows["/sentiment requests/s at c=64 / ceiling batch 32 (1 thread)"]
    assert ratio["measured"] == pytest.approx(2600 / 3200) and ratio["met"]
    assert not rows["/sentiment p99 at c=64"]["met"]  # 60 ms > 50
    assert rows["/sentiment p50 at c=1"]["met"]
    assert rows["/sentiment batching on / off at c=64"]["measured"] == pytest.approx(5.2)
    translate = rows["/translate sentences/s at c=16 / ceiling greedy batch 16"]
    assert translate["measured"] == pytest.approx(1000 / 1600)
    assert rows["/generate tokens/s at c=16 / ceiling batch 16"]["measured"] == pytest.approx(2000 / 1600)
    assert not rows["time to first token p50 (/generate_stream probe beside /generate at c=16)"]["met"]
    assert rows["resident memory, all server processes"]["met"] and rows["start to ready"]["met"]


def test_markdown_has_every_section(tmp_path):
    ceiling_int8 = {name: {b: 2 * value for b, value in by_batch.items()}
                    for name, by_batch in CEILING.items()}
    ceiling_bf16 = {name: {b: 1.5 * value for b, value in by_batch.items()}
                    for name, by_batch in CEILING.items()}
    quality = {"sentiment_dev_accuracy": 83.0}
    report = {"command": "python -m loadtest.bench", "finished": "now", "ceiling_threads": 1,
              "machine": {"cpus": 2, "torch": "2", "bentoml": "1", "load_average_at_start": [0.1, 0.1, 0.1],
                          "cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "bfloat16_in_onednn": False,
                          "busy_processes_at_start": ["python -m training.train_x"]},
              "ceiling": CEILING, "targets": targets(CEILING, SERVICE, OFF),
              "precisions": {"quality": {"float32": quality, "bfloat16": quality, "int8": quality},
                             "ceilings": {"bfloat16": ceiling_bf16, "int8": ceiling_int8}},
              "targets_lower": {"bfloat16": targets(ceiling_bf16, SERVICE, None),
                                "int8": targets(ceiling_int8, SERVICE, None)},
              "service": {"batching on": {**SERVICE, "rss_mb_idle_each": [70.0, 415.0, 415.0],
                                          "rss_mb_after_load_each": [70.0, 465.0, 465.0]},
                          "batching off": OFF, "bfloat16": SERVICE, "int8": SERVICE},
              "comparisons": {"commit abc": {**SERVICE, "points": [point("sentiment", 64, 1300, 80, 120)]}}}
    write_markdown(report, tmp_path / "bench.md")
    text = (tmp_path / "bench.md").read_text()
    for heading in ("## Targets", "## Ceiling", "## Service: batching on", "## Service: batching off",
                    "## Precisions", "## Service: int8", "## Service: bfloat16", "## Before / after",
                    "## What each step bought", "**Contention:**", "Every model at `RNNSERVE_PRECISION=int8`",
                    "Every model at `RNNSERVE_PRECISION=bfloat16`"):
        assert heading in text
    # the int8 server is divided by the int8 ceiling: c=64 sentiment 2600 / (2 x 6400)
    int8_section = text.split("## Service: int8")[1]
    assert ("| sentiment | 64 | 2600.0 | 2600 sentences | 40.0 | 60.0 | 60.0 | 0 | 64.0 | 0.20 | 100% | 3% "
            "| 33/31 | 3.1 (2) |" in int8_section)
    assert "| sentiment ceiling at batch 32, sentences/s | 3200 | 4800 (1.50x) | 6400 (2.00x) |" in text
    # connections and garbage collection pauses: "-" where not sampled or not exported (older commits)
    assert ("| sentiment | 1 | 400.0 | 400 sentences | 2.5 | 5.0 | 5.0 | 0 | 1.0 | 4.00 | 100% | 3% | - | - |"
            in text)
    assert "| commit abc | working tree | - | - | 2.00 |" in text
    assert '`RNNSERVE_PRECISION=float32` ("batching on"), against the ceiling' in text
    assert "Machine: 2 CPUs (AMD EPYC, torch's kernels for AVX2, no bfloat16 in oneDNN), torch 2," in text
    # memory per process where the report has it (older reports sum only)
    assert ("resident memory 900 MB idle (supervisor 70, workers 415 + 415), 1000 MB after the load "
            "(supervisor 70, workers 465 + 465) (all processes)" in text)
    assert "resident memory 900 MB idle, 1000 MB after the load (all processes)" in int8_section
    write_markdown({**report, "precision": "bfloat16", "precisions": None, "targets_lower": None},
                   tmp_path / "bf16.md")
    assert '`RNNSERVE_PRECISION=bfloat16` ("batching on")' in (tmp_path / "bf16.md").read_text()


def test_the_default_servers_ceiling_takes_each_endpoint_from_its_models_precision():
    ceilings = {precision: {name: {"1": float(i * 10 + j)} for j, name in enumerate(CEILING)}
                for i, precision in enumerate(("float32", "float16", "bfloat16", "int8"))}
    mixed = mixed_ceiling(ceilings, "sentiment=float32,generator=float16,translator=int8")
    assert mixed == {"sentiment": ceilings["float32"]["sentiment"],
                     "translate": ceilings["int8"]["translate"],
                     "generate": ceilings["float16"]["generate"]}
    assert mixed_ceiling(ceilings, "bfloat16") == ceilings["bfloat16"]


def test_items_per_second_counts_what_the_runs_return(monkeypatch):
    clock = iter(range(100))  # each run is one second on a fake clock
    monkeypatch.setattr(ceiling.time, "perf_counter", lambda: next(clock))
    runs = []

    def run(batch):
        runs.append(batch)
        return 7

    # the warm-up batch is not timed; then 3 runs of 7 items over 3 seconds
    assert items_per_second(run, list(range(100)), 10, 3) == 7.0
    assert len(runs) == 4 and runs[0] == runs[1] == list(range(10)) and runs[2] == list(range(10, 20))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_script_reports_its_result_line(tmp_path):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "keep-alive")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    Handler.protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"a": 1}\n{"b": 2}\n')
    try:
        result, cpu_seconds = run_wrk(f"http://127.0.0.1:{server.server_port}", "/x", bodies, 2, 1)
    finally:
        server.shutdown()
    assert result["requests"] > 0 and result["status_errors"] == 0 and cpu_seconds >= 0
    assert result["p50_us"] <= result["p99_us"]


def test_settings_parse_into_variables():
    assert parse_settings("") == {}
    assert parse_settings("RNNSERVE_WORKERS=2,RNNSERVE_PRECISION=int8") == {
        "RNNSERVE_WORKERS": "2", "RNNSERVE_PRECISION": "int8"}


class BatchDependent:
    """P(positive) = its own score, plus 0.1 x the batch's mean score (none alone: its own)."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def predict_proba(self, texts: list[str]) -> torch.Tensor:
        own = torch.tensor([self.scores[text] for text in texts])
        positive = own + 0.1 * (own.mean() - own)
        return torch.stack([1 - positive, positive], dim=1)


def test_batchmate_shift_measures_how_far_batchmates_move_an_answer():
    texts = [f"review {i}" for i in range(64)]
    scores = {text: 0.2 + 0.6 * (i % 2) for i, text in enumerate(texts)}  # 0.2, 0.8, ...
    shift = batchmate_shift(BatchDependent(scores), texts)
    # every batch of 32 has mean 0.5: each answer moves by 0.1 x 0.3
    assert shift == pytest.approx({"median": 0.03, "p99": 0.03, "max": 0.03}, abs=1e-6)
    assert batchmate_shift(BatchDependent({text: 0.5 for text in texts}), texts)["max"] == 0
