"""A real `bentoml serve` in a subprocess, with its own BentoML store, for the server tests, and
concurrent requests to it.

Store and server come from loadtest.server, which the benchmark uses too: one way to fill a
store and to start, wait for and stop a server. Tests that use it are marked `server`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

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


def fire_concurrently(server: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """All requests at once, each on its own connection, answers in request order."""
    def send(request: tuple[str, dict]) -> httpx.Response:
        with httpx.Client(base_url=server, timeout=120) as client:
            return client.post(request[0], json=request[1])

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))
