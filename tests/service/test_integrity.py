"""A model that cannot be served stops `bentoml serve`: one line naming the model's file and what
is wrong, exit status 1, and never a worker restarted every 10 s for good (BentoML's default).

The server tests wait on the process (bounded), never on a clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from loadtest.server import free_port, import_models, serving
from models.artifact import CONFIG_FILE, WEIGHTS_FILE, ArtifactError, record_checksums
from service.integrity import SUPERVISOR_PID_ENV, stop_server_on_failure

from support.server import REPO_ROOT

EXIT_TIMEOUT_S = 120  # a bound on each wait, far above the seconds a refusal takes
CANNOT_START = "this worker cannot start, stopping the server: "


def flip_a_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(REPO_ROOT),
               RNNSERVE_WORKERS="1")  # the default is one per CPU
    return env


def serve_until_it_exits(home: Path) -> subprocess.CompletedProcess:
    """`bentoml serve` run to its end; its log (stdout and stderr together) in .stdout."""
    return subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service.app:RNNServe", "--host", "127.0.0.1",
         "--port", str(free_port())], cwd=REPO_ROOT, env=server_env(home), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=EXIT_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize(("damage", "what"), [
    (flip_a_byte, "sha256 .* the file changed after it was written"),
    (lambda data: data[: len(data) // 2], "bytes where checksums.json recorded .*: the file is truncated"),
])
def test_a_damaged_model_stops_serve_before_any_worker_starts(tiny_shipped_dir, tmp_path,
                                                              damage: Callable[[bytes], bytes], what):
    home = import_models(tiny_shipped_dir, tmp_path / "bentoml_home")
    weights = home / "models" / "sentiment-rnn" / "vtest" / WEIGHTS_FILE
    weights.write_bytes(damage(weights.read_bytes()))
    server = serve_until_it_exits(home)
    assert server.returncode == 1, server.stdout
    errors = [line for line in server.stdout.splitlines() if "sentiment-rnn" in line]
    assert len(errors) == 1, server.stdout
    assert re.search(rf"^Error: .*`serve` failed: model sentiment-rnn:vtest is damaged: "
                     rf"{re.escape(str(weights))}: .*{what}", errors[0]), errors[0]
    # refused before the supervisor started: no worker ever ran
    assert "Starting production" not in server.stdout
    assert CANNOT_START not in server.stdout


@pytest.mark.slow
@pytest.mark.server
def test_a_model_only_a_worker_can_find_wrong_stops_the_server_once(tiny_shipped_dir, tmp_path):
    # config.json and the weights disagree, each file intact: only loading with torch shows it
    home = import_models(tiny_shipped_dir, tmp_path / "bentoml_home")
    folder = home / "models" / "char-generator" / "vtest"
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model"]["hidden_size"] += 1
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    record_checksums(folder)
    server = serve_until_it_exits(home)
    assert server.returncode == 1, server.stdout
    failures = [line for line in server.stdout.splitlines() if CANNOT_START in line]
    assert len(failures) == 1, server.stdout  # one worker, started once, never restarted
    assert f"ArtifactError: {folder}: weights do not fit config.json" in failures[0]
    assert "Traceback" not in server.stdout


@pytest.mark.slow
@pytest.mark.server
def test_a_worker_restarted_onto_a_file_damaged_since_start_up_stops_the_server(tiny_shipped_dir, tmp_path):
    home = import_models(tiny_shipped_dir, tmp_path / "bentoml_home")
    weights = home / "models" / "sentiment-rnn" / "vtest" / WEIGHTS_FILE
    log_path = tmp_path / "server.log"
    with serving(REPO_ROOT, home, log_path, {"RNNSERVE_WORKERS": "1"}) as server:
        weights.write_bytes(weights.read_bytes()[:-100])
        worker, = psutil.Process(server.process.pid).children()
        worker.send_signal(signal.SIGKILL)  # BentoML's supervisor starts another worker
        assert server.process.wait(timeout=EXIT_TIMEOUT_S) == 1
    failures = [line for line in log_path.read_text().splitlines() if CANNOT_START in line]
    assert len(failures) == 1
    assert re.search(rf"ArtifactError: {re.escape(str(weights))}: .* the file is truncated", failures[0])


def failing_start() -> None:
    raise ArtifactError("a model that cannot load")


def test_outside_an_armed_supervisor_a_failed_start_is_only_raised(monkeypatch):
    # RNNServe() built in-process (tests, scripts): no supervisor of ours to signal
    monkeypatch.delenv(SUPERVISOR_PID_ENV, raising=False)
    with pytest.raises(ArtifactError, match="a model that cannot load"):
        stop_server_on_failure(failing_start)()
    monkeypatch.setenv(SUPERVISOR_PID_ENV, str(os.getpid()))  # a pid that is not our parent's
    with pytest.raises(ArtifactError, match="a model that cannot load"):
        stop_server_on_failure(failing_start)()
