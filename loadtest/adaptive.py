"""What BentoML's own adaptive batching does for the sentiment model (the measurement behind
service/batching.py): the same model behind `@bentoml.api(batchable=True)`, under wrk.

    python -m loadtest.adaptive          # writes reports/bench/adaptive.{json,md}

The service below is only for this measurement; the real service is service.app:RNNServe.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bentoml
from prometheus_client.parser import text_string_to_metric_families

from loadtest.server import free_port, ready
from loadtest.wrk import run_wrk
from models.sentiment import SentimentClassifier

REPO = Path(__file__).resolve().parent.parent


@bentoml.service(workers=1)
class AdaptiveSentiment:
    ref = bentoml.models.BentoModel("sentiment-rnn:latest")

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.model = SentimentClassifier.load(self.ref.path)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=60000)
    def sentiment(self, texts: list[str]) -> list[float]:
        """P(positive) per text; BentoML concatenates concurrent requests' lists."""
        return self.model.predict_proba(texts)[:, 1].tolist()


def adaptive_batches(url: str) -> tuple[float, float]:
    """(sum, count) of bentoml_service_adaptive_batch_size: requests per batch."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bentoml_service_adaptive_batch_size_sum":
                total += sample.value
            elif sample.name == "bentoml_service_adaptive_batch_size_count":
                count += sample.value
    return total, count


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64],
                        help="closed-loop connections")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench",
                        help="folder for adaptive.json and adaptive.md")
    args = parser.parse_args(argv)
    from training.data import sst2_splits

    bodies = Path(tempfile.mkdtemp()) / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"texts": [text]}) + "\n"
                              for text, _ in sst2_splits()["dev"]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                               "loadtest.adaptive:AdaptiveSentiment", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        deadline = time.time() + 120
        while not ready(url):
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the adaptive-batching service did not start")
            time.sleep(0.2)
        for concurrency in args.concurrency:
            before = adaptive_batches(url)
            result, _ = run_wrk(url, "/sentiment", bodies, concurrency, args.seconds)
            after = adaptive_batches(url)
            batches = after[1] - before[1]
            rows.append({"concurrency": concurrency,
                         "requests_per_s": round(result["requests"] / (result["duration_us"] / 1e6), 1),
                         "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
                         "errors": result["status_errors"] + result["timeouts"],
                         "mean_requests_per_batch": round((after[0] - before[0]) / batches, 2)
                         if batches else None})
            print(json.dumps(rows[-1]), flush=True)
            time.sleep(2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adaptive.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# BentoML adaptive batching on the sentiment model", "",
             "`python -m loadtest.adaptive`: the shipped sentiment model behind "
             "`@bentoml.api(batchable=True, max_batch_size=64)`, one worker, one torch thread, "
             "one sentence per request, wrk closed loop.", "",
             "| c | requests/s | p50 ms | p99 ms | errors | requests per batch |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['requests_per_s']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['errors']} | {r['mean_requests_per_batch']} |" for r in rows]
    (args.out / "adaptive.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
