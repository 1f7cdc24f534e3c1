"""A real `bentoml serve` in a subprocess, with its own BentoML store, for the server tests.

Store and server come from loadtest.server, which the benchmark uses too: one way to fill a
store and to start, wait for and stop a server. Tests that use it are marked `server`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from loadtest.server import import_models, serving
from training.store import SHIPPED_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_server(shipped_dir: Path | None, workdir: Path, **settings: str) -> Iterator[str]:
    """Import `shipped_dir` (None: models/pretrained) into a fresh store, serve it, yield the URL.

    SIGTERM at the end, then wait: nothing is left running. One worker unless `settings` say
    otherwise (the default is one per CPU).
    """
    settings = {"RNNSERVE_WORKERS": "1", **settings}
    bentoml_home = import_models(shipped_dir or SHIPPED_DIR, workdir / "bentoml_home")
    with serving(REPO_ROOT, bentoml_home, workdir / "server.log", settings) as server:
        yield server.url
