"""A real `bentoml serve` in a subprocess, with its own BentoML store, for the server tests.

The server is the benchmark's (`loadtest.bench.serving`): one way to start, wait for and stop it.
Not a conftest.py: tests elsewhere import tests/conftest.py as `conftest`, and a second module of
that name would shadow it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from loadtest.bench import serving

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_server(shipped_dir: Path | None, workdir: Path, **settings: str) -> Iterator[str]:
    """Import `shipped_dir` (None: models/pretrained) into a fresh store, serve it, yield the URL.

    SIGTERM at the end, then wait: nothing is left running.
    """
    bentoml_home = workdir / "bentoml_home"
    store_cmd = [sys.executable, "-m", "training.store", "import-shipped"]
    if shipped_dir is not None:
        store_cmd += ["--dir", str(shipped_dir)]
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(store_cmd, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    with serving(REPO_ROOT, bentoml_home, workdir / "server.log", settings) as server:
        yield server.url
