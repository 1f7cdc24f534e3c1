"""The models' in-process ceiling: each model called directly (no HTTP, no service code) at
batch 1, 8, 16, 32, 64, in units per second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from loadtest.endpoints import ENDPOINT_TASKS, ENDPOINTS, GENERATE_TOKENS
from loadtest.payloads import ValidationTexts
from models.generator import CharGenerator, sample_next
from models.quantize import with_precision
from models.rnn import cat_states
from models.sentiment import SentimentClassifier
from models.translator import Translator
from service.config import parse_precisions

log = logging.getLogger("loadtest.ceiling")


CEILING_BATCHES = (1, 8, 16, 32, 64)


def items_per_second(run: Callable[[list], int], inputs: list, batch_size: int,
                     min_seconds: float) -> float:
    """Items/s of `run(batch) -> items` over consecutive batches of `inputs`, cycling, for at least
    `min_seconds` (and at least one batch) after one untimed warm-up batch."""
    batches = [inputs[i:i + batch_size] for i in range(0, len(inputs) - batch_size + 1, batch_size)]
    run(batches[0])
    items, started, index = 0, time.perf_counter(), 0
    while True:
        items += run(batches[index % len(batches)])
        index += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return items / elapsed


def generate_batch(pipeline: CharGenerator, prompts: list[str], tokens: int) -> int:
    """Sample `tokens` characters for every prompt as one batch; returns the characters made."""
    primed = [pipeline.prime(prompt) for prompt in prompts]  # (V,), state per prompt
    logits = torch.stack([p[0] for p in primed])  # (B, V)
    state = cat_states([p[1] for p in primed])
    batch = len(prompts)
    temperature, top_k = torch.full((batch,), 0.8), torch.zeros(batch, dtype=torch.long)
    generators = [torch.Generator().manual_seed(row) for row in range(batch)]
    for _ in range(tokens):
        next_tokens = sample_next(logits, temperature, top_k, generators)  # (B,)
        logits, state = pipeline.module.step(next_tokens, state)
    return batch * tokens


@dataclass(frozen=True)
class Pipelines:
    classifier: SentimentClassifier
    translator: Translator
    generator: CharGenerator

    @classmethod
    def load(cls, models_dir: Path) -> Pipelines:
        return cls(SentimentClassifier.load(models_dir / "sentiment-rnn"),
                   Translator.load(models_dir / "translator-de-en"),
                   CharGenerator.load(models_dir / "char-generator"))

    def at_precision(self, precision: str) -> Pipelines:
        """Copies at `precision` (models.quantize): one for every model, or TASK=PRECISION items
        over the service's default (service.config.parse_precisions), as the service makes them."""
        by_task = parse_precisions(precision)
        return Pipelines(
            SentimentClassifier(with_precision(self.classifier.module, by_task["sentiment"]),
                                self.classifier.vocab),
            Translator(with_precision(self.translator.module, by_task["translator"]),
                       self.translator.source_spm, self.translator.target_spm),
            CharGenerator(with_precision(self.generator.module, by_task["generator"]), self.generator.vocab))

    def runs(self, texts: ValidationTexts) -> dict[str, tuple[Callable[[list], int], list]]:
        """Per endpoint: run(batch) -> units made, and the inputs to batch."""
        classifier, translator, generator = self.classifier, self.translator, self.generator
        return {
            "sentiment": (lambda batch: len(classifier.predict_ids(batch)),
                          [classifier.encode(text) for text in texts.reviews]),
            "translate": (lambda batch: len(translator.translate_ids(batch, [1] * len(batch),
                                                                     [None] * len(batch))),
                          [translator.encode_source(text) for text in texts.german]),
            "generate": (lambda batch: generate_batch(generator, batch, GENERATE_TOKENS),
                         texts.prompts * (1 + max(CEILING_BATCHES) // max(1, len(texts.prompts)))),
        }


def measure_ceiling(pipelines: Pipelines, texts: ValidationTexts, min_seconds: float,
                    batch_sizes: tuple[int, ...] = CEILING_BATCHES) -> dict[str, dict[str, float]]:
    """Units/s per endpoint and batch size, in this process."""
    ceiling: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, (run, inputs) in pipelines.runs(texts).items():
            ceiling[name] = {}
            for batch_size in batch_sizes:
                ceiling[name][str(batch_size)] = items_per_second(run, inputs, batch_size, min_seconds)
                log.info("ceiling %s batch %d: %.1f %s/s", name, batch_size,
                         ceiling[name][str(batch_size)], ENDPOINTS[name].unit)
    return ceiling


def mixed_ceiling(ceilings: dict[str, dict], precision: str) -> dict[str, dict[str, float]]:
    """The ceiling of servers at `precision` (per task) from the ceilings of each precision."""
    by_task = parse_precisions(precision)
    return {name: ceilings[by_task[task]][name] for name, task in ENDPOINT_TASKS.items()
            if name in ceilings[by_task[task]]}
