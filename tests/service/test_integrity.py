"""A damaged model stops `bentoml serve` before any worker starts: one line, exit status 1.

Without this a worker that fails to load restarts every 10 s for good (BentoML's supervisor
respawns it) and the server never answers /readyz.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from serving_helpers import REPO_ROOT

from loadtest.bench import free_port, import_models
from models.integrity import WEIGHTS_FILE

pytestmark = pytest.mark.slow

EXIT_TIMEOUT_S = 120  # a bound on the wait, far above the few seconds the refusal takes


def flip_a_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


@pytest.mark.parametrize(("damage", "what"), [
    (flip_a_byte, "sha256 .* the file changed after it was written"),
    (lambda data: data[: len(data) // 2], "bytes where checksums.json recorded .*: the file is truncated"),
])
def test_serve_exits_non_zero_naming_the_model_and_the_file(tiny_shipped_dir, tmp_path,
                                                            damage: Callable[[bytes], bytes], what):
    home = import_models(tiny_shipped_dir, tmp_path / "bentoml_home")
    weights = home / "models" / "sentiment-rnn" / "vtest" / WEIGHTS_FILE
    weights.write_bytes(damage(weights.read_bytes()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(REPO_ROOT))
    server = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service.app:RNNServe", "--host", "127.0.0.1",
         "--port", str(free_port())],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert server.returncode == 1, server.stderr
    errors = [line for line in server.stderr.splitlines() if "sentiment-rnn" in line]
    assert len(errors) == 1, server.stderr
    assert re.search(rf"^Error: .*`serve` failed: model sentiment-rnn:vtest is damaged: "
                     rf"{re.escape(str(weights))}: .*{what}", errors[0]), errors[0]
    # stopped before the supervisor started: no worker ever ran
    assert "Starting production" not in server.stderr + server.stdout
    assert "initialized" not in server.stderr + server.stdout
