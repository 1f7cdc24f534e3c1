"""A real `bentoml serve` in a subprocess, with its own BentoML store, for the server tests.

Not a conftest.py: tests elsewhere import tests/conftest.py as `conftest`, and a second module of
that name would shadow it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120  # the 2 shared cores can be busy with training


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(bentoml_home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env.update(BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="true", **settings)
    return env


@contextlib.contextmanager
def running_server(shipped_dir: Path | None, workdir: Path, **settings: str) -> Iterator[str]:
    """Import `shipped_dir` (None: models/pretrained) into a fresh store, serve it, yield the URL.

    SIGTERM at the end, then wait: nothing is left running.
    """
    env = server_env(workdir / "bentoml_home", **settings)
    store_cmd = [sys.executable, "-m", "training.store", "import-shipped"]
    if shipped_dir is not None:
        store_cmd += ["--dir", str(shipped_dir)]
    subprocess.run(store_cmd, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.app:RNNServe", "--host", "127.0.0.1",
             "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log_path)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready in {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
