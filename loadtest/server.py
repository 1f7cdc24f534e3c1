"""A real `bentoml serve` of the service in a subprocess, with its own model store: start, wait
until ready, read its processes and /metrics, stop. The benchmark, the interleaved A/B and the
tests' server helper all start servers through it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FOLDERS = ("sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en")
READY_TIMEOUT_S = 180
GC_LONG_S = 0.025  # a garbage collection pause this long shows in the tail (a bucket bound)


def parse_settings(text: str) -> dict[str, str]:
    """"A=1,B=2" -> {"A": "1", "B": "2"}; "" -> {}."""
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


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
        stop_server(process)


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM, so that the server drains; SIGKILL if it is still up 30 s later."""
    if process.poll() is None:
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
