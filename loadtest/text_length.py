"""What one /sentiment text's length costs the classifier, in process: the basis for
RNNSERVE_MAX_SENTIMENT_CHARS.

    python -m loadtest.text_length                               # the shipped classifier
    python -m loadtest.text_length --folders a/artifact b/artifact --chars 1000 5000 20000

A text is first normalised and tokenised whole (models.text: time grows with its characters),
then cut to the model's max_tokens (head + tail), so the network's share stops growing at the
cut; a model that reads every token (max_tokens 0) pays for them all. For each artifact and
length this times `encode` and a lone `predict_ids` (batch of one, the c=1 case) on texts made
by joining FDU-MTL dev reviews (a validation split) up to that many characters, median of
--repeats, and gives the share of FDU-MTL dev reviews longer than each length (what a cap
refuses). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from models.sentiment import SentimentClassifier
from training import data

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "sentiment-rnn"


def text_of(chars: int, reviews: list[str]) -> str:
    """Dev reviews joined, cut to `chars` characters."""
    text, index = "", 0
    while len(text) < chars:
        text += reviews[index % len(reviews)] + " "
        index += 1
    return text[:chars]


def timed_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", type=Path, default=[DEFAULT_FOLDER],
                        help="sentiment artifact folders")
    parser.add_argument("--chars", nargs="+", type=int, default=[200, 1000, 2000, 5000, 10000, 20000, 50000],
                        help="text lengths in characters")
    parser.add_argument("--repeats", type=int, default=15, help="timings per figure (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reviews = [text for pairs in data.fdu_mtl_splits()["dev"].values() for text, _ in pairs]
    rows = []
    for folder in args.folders:
        model = SentimentClassifier.load(folder)
        model.predict_proba(["warm up"])
        for chars in args.chars:
            text = text_of(chars, reviews)
            encoded = model.encode(text)
            rows.append({"model": folder.name if folder.name != "sentiment-rnn" else str(folder),
                         "chars": chars, "tokens_read": len(encoded),
                         "encode_ms": round(timed_ms(lambda m=model, t=text: m.encode(t),
                                                     args.repeats), 2),
                         "predict_ms": round(timed_ms(lambda m=model, e=encoded: m.predict_ids([e]),
                                                      args.repeats), 2),
                         "fdu_dev_longer_pct": round(100 * sum(len(r) > chars for r in reviews)
                                                     / len(reviews), 2)})
            print(rows[-1], flush=True)
    print()
    print("| model | characters | tokens read | encode ms | model ms (alone) | FDU-MTL dev reviews longer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['chars']:,} | {r['tokens_read']} | {r['encode_ms']} | "
              f"{r['predict_ms']} | {r['fdu_dev_longer_pct']}% |")
    return rows


if __name__ == "__main__":
    main()
