"""Made-up stand-ins for training.data's readers, so training runs in tests need no dataset.

Also a torchrun entry point: `torchrun ... fake_data.py MODULE ARGS...` runs MODULE.main(ARGS)
with the readers replaced, in every process.
"""

from __future__ import annotations

import importlib
import random
import sys

POSITIVE = ["good", "great", "fine", "funny", "lovely"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak"]
FILLER = ["the", "film", "movie", "plot", "is", "was", "very", "a", "story"]
DICTIONARY = {"ein": "a", "mann": "man", "hund": "dog", "läuft": "runs", "sitzt": "sits",
              "frau": "woman", "rot": "red", "gross": "big", "im": "in the", "park": "park"}


def sentiment_pairs(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        pairs.append((" ".join(words).capitalize() + " .", label))
    return pairs


def parallel_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    source = list(DICTIONARY)
    pairs = []
    for _ in range(count):
        words = [rng.choice(source) for _ in range(rng.randint(2, 7))]
        pairs.append((" ".join(words), " ".join(DICTIONARY[w] for w in words)))
    return pairs


def text(chars: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    while sum(map(len, lines)) < chars:
        lines.append(" ".join(rng.choice(FILLER + POSITIVE) for _ in range(rng.randint(3, 9))))
    return "\n".join(lines)[:chars]


def sst2_splits() -> dict:
    return {"train": sentiment_pairs(400, 0), "dev": sentiment_pairs(60, 1),
            "test": sentiment_pairs(60, 2)}


FDU_DOMAINS = ("books", "toys_games")  # two stand-ins for the 14: per-domain code runs the same


def review_pairs(count: int, seed: int, domain: str) -> list[tuple[str, int]]:
    """Made-up reviews: several sentences, lowercased and tokenised as FDU-MTL writes them."""
    return [(" ".join(f"this {domain.split('_')[0]} " + text.lower() for text, _ in
                      sentiment_pairs(4, seed * 1000 + i)) + (" good" if label else " bad"), label)
            for i, (_, label) in enumerate(sentiment_pairs(count, seed))]


def fdu_mtl_splits() -> dict:
    return {split: {domain: review_pairs(count, seed + 10 * d, domain)
                    for d, domain in enumerate(FDU_DOMAINS)}
            for split, count, seed in (("train", 120, 3), ("dev", 20, 4), ("test", 20, 5))}


def shakespeare_splits() -> dict:
    return {"train": text(20000, 0), "val": text(3000, 1)}


def translation_splits(seed: int = 0) -> dict:
    return {"train": parallel_pairs(600, seed), "val": parallel_pairs(40, seed + 1),
            "test": parallel_pairs(40, seed + 2)}


def sha256_of(dataset: str) -> dict:
    return {f"{dataset}/made-up": "0" * 64}


def install(data_module) -> None:
    """Replace the readers of `training.data` (the module object) with the made-up ones."""
    data_module.sst2_splits = sst2_splits
    data_module.fdu_mtl_splits = fdu_mtl_splits
    data_module.shakespeare_splits = shakespeare_splits
    data_module.multi30k_splits = translation_splits
    data_module.ko_en_splits = translation_splits
    data_module.sha256_of = sha256_of


if __name__ == "__main__":
    from training import data

    install(data)
    importlib.import_module(sys.argv[1]).main(sys.argv[2:])
