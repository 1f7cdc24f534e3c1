"""What `/sentiment`'s `explain: true` costs: the same texts with and without it, one request at a
time, round after round.

    python -m loadtest.explain_cost --url http://127.0.0.1:3000 --rounds 10
    python -m loadtest.explain_cost --rounds 10          # serves the shipped models itself

Two payloads, from the SST-2 dev split: one text of 10 tokens, and 8 texts of 64 tokens (the
caps, RNNSERVE_MAX_EXPLAIN_TEXTS and RNNSERVE_MAX_EXPLAIN_TOKENS, at their defaults). A text of n
tokens with explain is one model batch of 2n texts, so its cost grows with n squared in words
read. Each round sends both variants of a payload back to back, in alternating order (so neither
always follows the other), and the report gives the median latency of each, the ratio of the
medians and the median of the rounds' ratios. Writes JSON and markdown (default
`reports/bench/explain-cost/explain_cost.{json,md}`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loadtest.server import REPO_ROOT, import_models, parse_settings, serving
from models.text import sentiment_tokens
from training import data

log = logging.getLogger(__name__)

SHORT_TOKENS = 10
LONG_TOKENS = 64
LONG_TEXTS = 8


def texts_of(sentences: list[str], tokens: int, count: int) -> list[str]:
    """`count` texts of exactly `tokens` tokens each: a dev sentence of that length, or
    consecutive sentences joined and cut to it (their tokens, re-joined by spaces)."""
    texts = [s for s in sentences if len(sentiment_tokens(s)) == tokens][:count]
    pending: list[str] = []
    for sentence in sentences:
        if len(texts) == count:
            break
        pending += sentiment_tokens(sentence)
        if len(pending) >= tokens:
            text = " ".join(pending[:tokens])
            if len(sentiment_tokens(text)) == tokens:
                texts.append(text)
            pending = []
    if len(texts) < count:
        raise ValueError(f"the dev split gave {len(texts)} of {count} texts of {tokens} tokens")
    return texts


def payloads(sentences: list[str]) -> dict[str, list[str]]:
    return {f"1 text of {SHORT_TOKENS} tokens": texts_of(sentences, SHORT_TOKENS, 1),
            f"{LONG_TEXTS} texts of {LONG_TOKENS} tokens": texts_of(sentences, LONG_TOKENS, LONG_TEXTS)}


def post_ms(connection: http.client.HTTPConnection, body: dict) -> float:
    """One /sentiment request on a kept-alive connection: milliseconds to the whole answer."""
    encoded = json.dumps(body).encode()
    started = time.perf_counter()
    connection.request("POST", "/sentiment", encoded, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    took = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"/sentiment answered {response.status}: {answer[:300]!r}")
    results = json.loads(answer)
    if len(results) != len(body["texts"]) or body["explain"] != ("trajectory" in results[0]):
        raise RuntimeError(f"/sentiment answered an unexpected body: {answer[:300]!r}")
    return took


def measure(url: str, texts: list[str], rounds: int) -> dict:
    """Per round the milliseconds without and with explain; their medians and ratios."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=120)
    try:
        for explain in (False, True):  # warm-up, unmeasured
            post_ms(connection, {"texts": texts, "explain": explain})
        per_round = []
        for number in range(rounds):
            order = (False, True) if number % 2 == 0 else (True, False)
            took = {explain: post_ms(connection, {"texts": texts, "explain": explain}) for explain in order}
            per_round.append({"plain_ms": took[False], "explain_ms": took[True]})
    finally:
        connection.close()
    plain = statistics.median(r["plain_ms"] for r in per_round)
    explain = statistics.median(r["explain_ms"] for r in per_round)
    return {"texts": len(texts), "tokens_each": len(sentiment_tokens(texts[0])),
            "plain_ms_median": plain, "explain_ms_median": explain, "ratio_of_medians": explain / plain,
            "ratio_median": statistics.median(r["explain_ms"] / r["plain_ms"] for r in per_round),
            "rounds": per_round}


def write_markdown(report: dict, path: Path) -> None:
    load_before, load_after = report["load_average"]
    lines = ["# What explain costs on /sentiment", "",
             f"Written by `{report['command']}` at {report['finished']} against {report['server']}: "
             f"{report['rounds']} rounds, one request at a time, each payload without and with "
             "`explain: true` back to back in alternating order; texts from the SST-2 dev split. "
             f"The machine's 1-minute load average was {load_before:.1f} before and {load_after:.1f} "
             f"after ({os.cpu_count()} CPUs).", "",
             "| payload | without, median ms | with explain, median ms | ratio of medians | "
             "median of round ratios |", "|---|---|---|---|---|"]
    for name, m in report["payloads"].items():
        lines.append(f"| {name} | {m['plain_ms_median']:.1f} | {m['explain_ms_median']:.1f} | "
                     f"{m['ratio_of_medians']:.1f}x | {m['ratio_median']:.1f}x |")
    for name, m in report["payloads"].items():
        lines += ["", f"{name}, per round (ms):", "", "| round | without | with explain | ratio |",
                  "|---|---|---|---|"]
        lines += [f"| {number} | {r['plain_ms']:.1f} | {r['explain_ms']:.1f} | "
                  f"{r['explain_ms'] / r['plain_ms']:.1f}x |" for number, r in enumerate(m["rounds"], 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@contextmanager
def shipped_server(models: Path, settings: dict[str, str]) -> Iterator[str]:
    """A server of the working tree with the artifacts of `models` in its own store: its URL."""
    with tempfile.TemporaryDirectory(prefix="rnnserve-explain-") as tmp:
        workdir = Path(tmp)
        home = import_models(models, workdir / "bentoml_home")
        with serving(REPO_ROOT, home, workdir / "server.log", settings) as server:
            yield server.url


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None,
                        help="a running server (default: serve the working tree with --models)")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models" / "pretrained",
                        help="without --url: the artifacts to serve")
    parser.add_argument("--settings", default="", metavar="VAR=VALUE[,VAR=VALUE]",
                        help="without --url: the server's settings ('' for the defaults)")
    parser.add_argument("--rounds", type=int, default=10, help="requests of each kind per payload")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench" / "explain-cost",
                        help="folder for explain_cost.json and explain_cost.md")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sentences = [text for text, _ in data.sst2_splits()["dev"]]
    chosen = payloads(sentences)

    def run(url: str) -> dict[str, dict]:
        measured = {}
        for name, texts in chosen.items():
            measured[name] = measure(url, texts, args.rounds)
            log.info("%s: %.1f ms without, %.1f ms with explain (medians), %.1fx", name,
                     measured[name]["plain_ms_median"], measured[name]["explain_ms_median"],
                     measured[name]["ratio_of_medians"])
        return measured

    load_before = os.getloadavg()[0]
    if args.url:
        server, measured = args.url, run(args.url)
    else:
        with shipped_server(args.models, parse_settings(args.settings)) as url:
            server = f"the working tree serving {args.models.name}/ ({args.settings or 'defaults'})"
            measured = run(url)
    report = {"command": "python -m loadtest.explain_cost "
                         + shlex.join(argv if argv is not None else sys.argv[1:]),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "server": server,
              "rounds": args.rounds, "load_average": [load_before, os.getloadavg()[0]],
              "payloads": measured}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_cost.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, args.out / "explain_cost.md")
    print((args.out / "explain_cost.md").read_text(encoding="utf-8").split("\n\n", 3)[2])
    return report


if __name__ == "__main__":
    main()
