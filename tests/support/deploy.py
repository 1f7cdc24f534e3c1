"""Helpers for the deploy/ tests: paths, the metric names the service exports, PromQL names, processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from prometheus_client.metrics import MetricWrapperBase

from loadtest.server import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent

# BentoML's own metrics on /metrics (bentoml/_internal/server/http/instruments.py), as exposed.
BENTOML_METRICS = {
    "bentoml_service_request_total",
    "bentoml_service_request_in_progress",
    "bentoml_service_last_request_timestamp_seconds",
    *(f"bentoml_service_{histogram}_{suffix}"
      for histogram in ("request_duration_seconds", "adaptive_batch_size")
      for suffix in ("bucket", "sum", "count")),
}
# Made by Prometheus itself for every target.
PROMETHEUS_METRICS = {"up"}

# Words of PromQL that look like names: aggregation modifiers, set operators, literals.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset", "inf", "nan"}


def rnnserve_metrics() -> set[str]:
    """Every sample name the service's rnnserve_* metrics expose, read from service/metrics.py."""
    from service import metrics

    names = set()
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        for family in collector.describe():
            if family.type == "histogram":
                names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
            elif family.type == "counter":
                names.add(f"{family.name}_total")
            else:
                names.add(family.name)
    return names


def exported_metrics() -> set[str]:
    """What a dashboard or an alert may query about the service."""
    return rnnserve_metrics() | BENTOML_METRICS | PROMETHEUS_METRICS


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (Grafana variables allowed) selects.

    Drops what is not a metric name: strings, label matchers, range selectors, grouping label
    lists, Grafana variables, function calls and keywords.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)
    names = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*+(?!\s*\()", expr))
    return {name for name in names if name.lower() not in PROMQL_KEYWORDS}


def store_env(bentoml_home: Path) -> dict[str, str]:
    """The environment of a subprocess that uses its own BentoML store."""
    env = dict(os.environ)
    env.update(BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(REPO))
    return env


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Until `url` answers 200; fails early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it lingers; the same for its children (BentoML's workers)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        child.kill()


def processes_using(directory: Path) -> list[psutil.Process]:
    """Running processes whose command line or BENTOML_HOME lies under `directory`."""
    found = []
    for process in psutil.process_iter():
        try:
            mentions = " ".join(process.cmdline()) + " " + process.environ().get("BENTOML_HOME", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if str(directory) in mentions:
            found.append(process)
    return found


@contextmanager
def bentoml_server(target: str, env: dict[str, str], cwd: Path, log_path: Path) -> Iterator[str]:
    """`bentoml serve target` on a free loopback port; yields its URL once /readyz answers 200.

    Stopped on exit, also when the body fails. A server that never gets ready fails with its log.
    """
    port = free_port()
    with log_path.open("w") as log:
        command = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_http(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
            except (RuntimeError, TimeoutError) as error:
                log.flush()
                raise AssertionError(f"{error}\n--- server log ---\n{log_path.read_text()}") from None
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)
