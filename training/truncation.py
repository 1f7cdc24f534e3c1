"""What a sentiment model's token cut costs and buys on dev: accuracy and tokens read per text.

    python -m training.truncation path/to/artifact --cuts 64 128 256 512 0

Each cut is tried two ways: the first and last cut // 2 tokens (what models.sentiment does) and
the first `cut` tokens only. Tokens read per text is what the recurrence's work grows with; the
dev splits are SST-2 dev and the FDU-MTL dev split carved from train (never test).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from models.sentiment import EncodedText, SentimentClassifier
from training import data

log = logging.getLogger(__name__)

CUT_WAYS = ("head+tail", "head")


def cut_text(encoded: EncodedText, cut: int, way: str) -> EncodedText:
    """`encoded` cut to `cut` tokens (0 = all), head and tail halves or the head alone."""
    if not cut or len(encoded) <= cut:
        return encoded
    head = cut // 2 if way == "head+tail" else cut
    keep = list(range(head)) + list(range(len(encoded) - (cut - head), len(encoded)))
    subwords = [encoded.subwords[i] for i in keep] if encoded.subwords else []
    return EncodedText([encoded.words[i] for i in keep], subwords)


def cut_scores(model: SentimentClassifier, pairs: list[tuple[str, int]], cut: int, way: str,
               batch_size: int = 128) -> tuple[float, float]:
    """(accuracy %, mean tokens read) of `model` on `pairs` with every text cut to `cut`."""
    texts = [cut_text(model.encode(text), cut, way) for text, _ in pairs]
    correct = 0
    for start in range(0, len(texts), batch_size):
        predicted = model.predict_ids(texts[start:start + batch_size]).argmax(dim=-1).tolist()
        correct += sum(p == label for p, (_, label) in zip(predicted, pairs[start:start + batch_size],
                                                            strict=True))
    return round(100.0 * correct / len(pairs), 2), round(sum(map(len, texts)) / len(texts), 1)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a sentiment artifact folder")
    parser.add_argument("--cuts", nargs="+", type=int, default=[64, 128, 256, 512, 0],
                        help="token cuts to try (0 = every token)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = SentimentClassifier.load(args.folder)
    # read every token; the cuts below are applied to the encoded texts
    model.module.config = replace(model.module.config, max_tokens=0)
    sst2_dev, fdu_dev = data.sst2_splits()["dev"], data.fdu_mtl_splits()["dev"]
    rows = []
    for cut in args.cuts:
        for way in CUT_WAYS if cut else ("all",):
            by_domain = {domain: cut_scores(model, pairs, cut, way) for domain, pairs in fdu_dev.items()}
            sst2, sst2_tokens = cut_scores(model, sst2_dev, cut, way)
            fdu_pairs = [pair for pairs in fdu_dev.values() for pair in pairs]
            row = {"cut": cut, "way": way, "sst2_dev": sst2, "fdu_dev_mean":
                   round(sum(a for a, _ in by_domain.values()) / len(by_domain), 2),
                   "fdu_tokens_per_review": round(sum(t * len(fdu_dev[d]) for d, (_, t) in by_domain.items())
                                                  / len(fdu_pairs), 1),
                   "sst2_tokens_per_sentence": sst2_tokens}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print("| cut (tokens) | kept | SST-2 dev | FDU-MTL dev mean | tokens per FDU review |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['cut'] or 'all'} | {row['way']} | {row['sst2_dev']} | {row['fdu_dev_mean']} | "
              f"{row['fdu_tokens_per_review']} |")
    return rows


if __name__ == "__main__":
    main()
