"""Request bodies for the load test and the benchmark, drawn from VALIDATION splits only.

The test splits stay untouched: they score the models (reports/quality.md), and a load test
that replays them would leak nothing but would still make them less of a held-out set to look
at. Texts are read through training.data ($RNNSERVE_DATA_DIR or the download cache), never
committed: only the code that picks them is.

Imports neither locust nor the service, so the locustfile, the benchmark and tests share it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training import data

# the service's request limits (service.config defaults); bodies stay inside them
MAX_TEXT_CHARS = 500
MAX_PROMPT_CHARS = 300


@dataclass(frozen=True)
class ValidationTexts:
    reviews: list[str]  # SST-2 dev sentences
    german: list[str]  # Multi30k val, German side
    korean: list[str]  # Tatoeba ko-en val, Korean side
    prompts: list[str]  # Tiny Shakespeare val passages: a speaker's name and some of the speech


def load_validation_texts() -> ValidationTexts:
    return ValidationTexts(
        reviews=[text[:MAX_TEXT_CHARS] for text, _ in data.sst2_splits()["dev"]],
        german=[de[:MAX_TEXT_CHARS] for de, _ in data.multi30k_splits()["val"]],
        korean=[ko[:MAX_TEXT_CHARS] for ko, _ in data.ko_en_splits()["val"]],
        prompts=shakespeare_prompts(data.shakespeare_splits()["val"]),
    )


def shakespeare_prompts(text: str) -> list[str]:
    """Every speech of `text` as a prompt: its speaker line plus up to two lines of it."""
    prompts = []
    for speech in text.split("\n\n"):
        lines = speech.split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            prompts.append("\n".join(lines[:3])[:MAX_PROMPT_CHARS] + "\n")
    return prompts


class Bodies:
    """Varied request bodies, one random draw per call."""

    def __init__(self, texts: ValidationTexts, seed: int | None = None):
        self.texts = texts
        self.rng = random.Random(seed)

    def sentiment(self) -> dict:
        """Mostly one sentence, sometimes a small batch, rarely a large one."""
        count = self.rng.choices([1, self.rng.randint(2, 8), self.rng.randint(16, 64)],
                                 weights=[8, 3, 1])[0]
        return {"texts": self.rng.sample(self.texts.reviews, count)}

    def generate(self) -> dict:
        body = {"prompt": self.rng.choice(self.texts.prompts),
                "max_tokens": self.rng.choice([20, 50, 100, 200]),
                "temperature": self.rng.choice([0.5, 0.8, 1.0, 1.2]),
                "top_k": self.rng.choice([0, 0, 5, 20])}
        if self.rng.random() < 0.3:
            body["seed"] = self.rng.randrange(2**31)
        return body

    def translate(self) -> dict:
        source = self.rng.choices(["de", "ko"], weights=[3, 1])[0]
        pool = self.texts.german if source == "de" else self.texts.korean
        body = {"texts": self.rng.sample(pool, self.rng.choices([1, 2, 4, 8], weights=[8, 3, 2, 1])[0]),
                "source": source,
                "beam_size": self.rng.choices([1, 2, 4], weights=[6, 2, 2])[0]}
        if self.rng.random() < 0.2:
            body["max_length"] = self.rng.choice([16, 32, 64])
        if self.rng.random() < 0.1:
            body["return_attention"] = True
        return body
