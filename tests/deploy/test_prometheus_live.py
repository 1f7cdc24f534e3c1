"""A real Prometheus (Debian's) scrapes a real `bentoml serve` of tiny models; what it stores and
computes must agree with the traffic the test sent.

Both processes listen on loopback with their own ports, the server with its own BENTOML_HOME, and
Prometheus with a temporary storage directory; both are stopped at the end, also on failure.
Prometheus also loads deploy/prometheus/alerts.yml and evaluates it against the live series.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from loadtest.server import free_port, import_models

from support.deploy import (
    DEPLOY,
    REPO,
    bentoml_server,
    processes_using,
    rnnserve_metrics,
    stop,
    store_env,
    wait_for_http,
)

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus not found: install Debian's prometheus package "
                              "(apt-get install prometheus); .ci/run does"),
]

SCRAPE_INTERVAL_S = 1
RATE_WINDOW_S = 15
REQUESTS = 60  # /sentiment requests of the measured burst
TEXTS_PER_REQUEST = 3
SENTIMENT = 'job="rnn-serve", endpoint="/sentiment", http_response_code="200"'
# histogram buckets of bentoml_service_request_duration_seconds (BentoML's defaults)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def post(url: str, body: dict) -> tuple[int, float, bytes]:
    """(status, seconds, body) of one JSON POST."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, time.perf_counter() - start, response.read()
    except urllib.error.HTTPError as error:
        return error.code, time.perf_counter() - start, error.read()


def declared_too_large(url: str) -> int:
    """The status of a POST whose Content-Length passes the body limit (no body is sent)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", "/sentiment")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                    timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: float, timeout: float = 30) -> None:
        """Until `promql` evaluates to `expected`: the scrapes have caught up with the traffic."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(promql)
            if value == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{promql} = {value}, expected {expected} within {timeout} s")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)["data"]


@contextmanager
def running_prometheus(target: str, directory: Path) -> Iterator[Prometheus]:
    """Debian's prometheus on a free loopback port, scraping `target` every second, with the alerts."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                   "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "rnn-serve", "static_configs": [{"targets": [target]}]}],
    }
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    with (directory / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/-/ready", process, timeout=60)
            yield Prometheus(f"http://127.0.0.1:{port}")
        finally:
            stop(process)


def test_prometheus_agrees_with_the_traffic_sent(tiny_shipped_dir, tmp_path):
    home = tmp_path / "bentoml_home"
    import_models(tiny_shipped_dir, home)
    try:
        server = bentoml_server("service.app:RNNServe", store_env(home), REPO, tmp_path / "serve.log")
        with server as service, running_prometheus(urllib.parse.urlsplit(service).netloc, tmp_path) as prom:
            send_traffic_and_compare(service, prom)
    finally:
        leftovers = processes_using(tmp_path)
        for process in leftovers:
            process.kill()
    assert not leftovers, f"still running after the test: {[p.cmdline() for p in leftovers]}"


def send_traffic_and_compare(service: str, prom: Prometheus) -> None:
    prom.wait_for('up{job="rnn-serve"}', 1)

    # One request creates the series; then wait a full rate window so that the window below is
    # covered by samples and the burst is its only increase.
    assert post(f"{service}/sentiment", {"texts": ["warm up"]})[0] == 200
    prom.wait_for(f"sum(bentoml_service_request_total{{{SENTIMENT}}})", 1)
    time.sleep(RATE_WINDOW_S + 2 * SCRAPE_INTERVAL_S)

    bodies = [{"texts": [f"text {i} {j} was a good film" for j in range(TEXTS_PER_REQUEST)]}
              for i in range(REQUESTS)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda body: post(f"{service}/sentiment", body), bodies))
    assert [status for status, _, _ in answers] == [200] * REQUESTS
    latencies = sorted(seconds for _, seconds, _ in answers)
    # Other endpoints and one bad request, so that every rnnserve_ metric has a series.
    assert post(f"{service}/generate", {"prompt": "To be", "max_tokens": 5, "seed": 1})[0] == 200
    assert post(f"{service}/generate_stream", {"prompt": "To be", "max_tokens": 5, "seed": 1})[0] == 200
    assert post(f"{service}/translate", {"texts": ["ein Haus"], "source": "de"})[0] == 200
    assert post(f"{service}/sentiment", {"texts": []})[0] == 400
    # a session started and a limit tripped, so that their counters have series too
    assert post(f"{service}/generate", {"prompt": "To be", "max_tokens": 5, "seed": 1,
                                        "return_state": True})[0] == 200
    assert declared_too_large(service) == 413

    # Exact counts: every request and every text the service saw is in Prometheus.
    prom.wait_for(f"sum(bentoml_service_request_total{{{SENTIMENT}}})", REQUESTS + 1)
    texts = REQUESTS * TEXTS_PER_REQUEST + 1
    prom.wait_for('sum(rnnserve_input_length_count{job="rnn-serve", model="sentiment-rnn"})', texts)
    # rnnserve_batch_size sums the items of each batch: over all batches, every text once.
    prom.wait_for('sum(rnnserve_batch_size_sum{job="rnn-serve", model="sentiment-rnn"})', texts)
    batches = prom.scalar('sum(rnnserve_batch_size_count{job="rnn-serve", model="sentiment-rnn"})')
    assert 1 < batches <= REQUESTS + 1
    # the empty list's 400 and the declared body's 413
    prom.wait_for('sum(rnnserve_errors_total{job="rnn-serve", endpoint="sentiment", kind="validation"})', 2)

    # Request rate over the window that holds the burst: REQUESTS / window, give or take the
    # extrapolation to the window's edges (under one scrape interval each side).
    rate = prom.scalar(f"sum(rate(bentoml_service_request_total{{{SENTIMENT}}}[{RATE_WINDOW_S}s]))")
    expected = REQUESTS / RATE_WINDOW_S
    assert expected * 0.8 <= rate <= expected * 1.25, (rate, expected)

    # p95 latency from the histogram: the server's time is within the client's, so its p95 lies
    # at or below the bucket boundary above the client's p95.
    p95 = prom.scalar("histogram_quantile(0.95, sum by (le) (rate("
                      f"bentoml_service_request_duration_seconds_bucket{{{SENTIMENT}}}[{RATE_WINDOW_S}s])))")
    client_p95 = latencies[int(0.95 * (len(latencies) - 1))]
    bound = next(b for b in DURATION_BUCKETS if b >= client_p95)
    assert 0 < p95 <= bound, (p95, client_p95)
    log.info("Prometheus: %.2f requests/s (sent %.2f/s), p95 %.1f ms (client p95 %.1f ms), %d texts in %d "
             "batches", rate, expected, p95 * 1000, client_p95 * 1000, texts, batches)

    # Every rnnserve_ metric the dashboard and the alerts use is really exported.
    stored = set(prom.get("/api/v1/label/__name__/values"))
    assert rnnserve_metrics() <= stored, sorted(rnnserve_metrics() - stored)
    info = prom.query('rnnserve_model_info{job="rnn-serve"}')
    assert sorted(series["metric"]["model"] for series in info) == sorted(
        ["sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en"])

    # The alert rules load and evaluate against the live series without errors.
    groups = prom.get("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]

