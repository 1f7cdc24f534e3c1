"""A burst of long /generate requests at once: which are refused at once, which finish, how late.

    python -m loadtest.generation_shedding --url http://127.0.0.1:3000 --requests 300 --max-tokens 2000
    python -m loadtest.generation_shedding --serve --requests 300 --max-tokens 2000   # its own server
    python -m loadtest.generation_shedding --serve --ref main ...   # the same against main's service

With --serve it starts a one-worker server of the shipped models itself (RNNSERVE_TIMEOUT_S=60,
its own model store), so a before/after runs the same way on the same machine.

Every request is sent at the same moment on its own connection. The service should refuse with
429 (at once) the ones that cannot finish before RNNSERVE_TIMEOUT_S, and finish the others in
time: no 504. Prints one line per status: how many, and the slowest and median answer.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from loadtest.server import REPO_ROOT, export_tree, import_models, serving
from training.store import SHIPPED_DIR


def burst(url: str, requests: int, max_tokens: int) -> dict[int, list[float]]:
    """Seconds each answer took, by status."""
    def send(index: int) -> tuple[int, float]:
        with httpx.Client(base_url=url, timeout=600) as client:
            started = time.perf_counter()
            response = client.post("/generate", json={"prompt": f"Speaker {index}:\n",
                                                      "max_tokens": max_tokens, "seed": index})
            return response.status_code, time.perf_counter() - started

    seconds: dict[int, list[float]] = defaultdict(list)
    with ThreadPoolExecutor(max_workers=requests) as pool:
        for status, took in pool.map(send, range(requests)):
            seconds[status].append(took)
    return dict(seconds)


@contextlib.contextmanager
def own_server(ref: str | None, settings: dict[str, str]) -> Iterator[str]:
    """The URL of a one-worker server of `ref`'s service (default: the working tree's)."""
    workdir = Path(tempfile.mkdtemp(prefix="rnnserve-generation-shedding-"))
    try:
        tree = export_tree(ref, workdir / "tree") if ref else REPO_ROOT
        home = import_models(SHIPPED_DIR, workdir / "bentoml_home")
        with serving(tree, home, workdir / "server.log",
                     {"RNNSERVE_WORKERS": "1", "RNNSERVE_TIMEOUT_S": "60", **settings}) as server:
            yield server.url
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the server")
    parser.add_argument("--requests", type=int, default=300, help="requests sent at once")
    parser.add_argument("--max-tokens", type=int, default=2000, help="characters each asks for")
    parser.add_argument("--serve", action="store_true", help="start a one-worker server of the "
                        "shipped models (RNNSERVE_TIMEOUT_S=60) instead of using --url")
    parser.add_argument("--ref", help="with --serve: serve this commit's service (git archive)")
    parser.add_argument("--settings", nargs="*", default=[], metavar="NAME=VALUE",
                        help="with --serve: RNNSERVE_* settings of the server")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.settings)
    with own_server(args.ref, settings) if args.serve else contextlib.nullcontext(args.url) as url:
        answers = burst(url, args.requests, args.max_tokens)
    for status, took in sorted(answers.items()):
        print(f"HTTP {status}: {len(took)} answers, median {statistics.median(took):.2f} s, "
              f"slowest {max(took):.2f} s")


if __name__ == "__main__":
    main()
