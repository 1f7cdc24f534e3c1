"""A burst of long /generate requests at once: which are refused at once, which finish, how late.

    python -m loadtest.generation_shedding --url http://127.0.0.1:3000 --requests 300 --max-tokens 2000

Every request is sent at the same moment on its own connection. The service should refuse with
429 (at once) the ones that cannot finish before RNNSERVE_TIMEOUT_S, and finish the others in
time: no 504. Prints one line per status: how many, and the slowest and median answer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the server")
    parser.add_argument("--requests", type=int, default=300, help="requests sent at once")
    parser.add_argument("--max-tokens", type=int, default=2000, help="characters each asks for")
    args = parser.parse_args(argv)
    for status, took in sorted(burst(args.url, args.requests, args.max_tokens).items()):
        print(f"HTTP {status}: {len(took)} answers, median {statistics.median(took):.2f} s, "
              f"slowest {max(took):.2f} s")


if __name__ == "__main__":
    main()
