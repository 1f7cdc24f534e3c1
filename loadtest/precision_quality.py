"""Every model at each precision: validation quality, batch independence and ceiling."""

from __future__ import annotations

import logging

import torch

from loadtest.ceiling import Pipelines, measure_ceiling
from loadtest.payloads import ValidationTexts
from models.names import PRECISIONS
from models.sentiment import SentimentClassifier
from training import data
from training.evaluate import char_loss, sentiment_accuracy, translation_bleu

log = logging.getLogger("loadtest.precision_quality")


BLEU_SENTENCES = 300  # of Multi30k val: enough to see a change, quick to decode
LOSS_WINDOWS = 64  # of Tiny Shakespeare val, 256 characters each
SHIFT_BATCH = 32  # batchmates per review when measuring how far they move its answer


def batchmate_shift(classifier: SentimentClassifier, texts: list[str]) -> dict[str, float]:
    """How much a review's P(positive) depends on what it is batched with: |batched - alone| over
    `texts`, batched SHIFT_BATCH at a time in order -> its median, 99th percentile and maximum."""
    alone = torch.cat([classifier.predict_proba([text])[:, 1] for text in texts])
    batched = torch.cat([classifier.predict_proba(texts[i:i + SHIFT_BATCH])[:, 1]
                         for i in range(0, len(texts), SHIFT_BATCH)])
    shift = (batched - alone).abs().double()
    quantiles = torch.quantile(shift, torch.tensor([0.5, 0.99], dtype=torch.double)).tolist()
    return {"median": quantiles[0], "p99": quantiles[1], "max": float(shift.max())}


def validation_quality(pipelines: Pipelines) -> dict[str, float]:
    """Validation-split quality of each model: the figures a lower precision must not spoil, and
    how far a review's answer moves with its batchmates (float32: rounding only)."""
    with torch.inference_mode():
        dev = data.sst2_splits()["dev"]
        shift = batchmate_shift(pipelines.classifier, [text for text, _ in dev])
        return {
            "sentiment_dev_accuracy": sentiment_accuracy(pipelines.classifier, dev)["accuracy"],
            **{f"sentiment_dev_batchmate_shift_{key}": float(f"{value:.2g}") for key, value in shift.items()},
            "generator_val_bits_per_char": char_loss(pipelines.generator, data.shakespeare_splits()["val"],
                                                     max_windows=LOSS_WINDOWS)["bits_per_char"],
            "translator_de_val_bleu_greedy": translation_bleu(
                pipelines.translator, data.multi30k_splits()["val"][:BLEU_SENTENCES])["bleu"],
        }


def measure_precisions(pipelines: Pipelines, texts: ValidationTexts, min_seconds: float) -> dict:
    """Every model at each precision, from the float32 `pipelines`: validation quality, and the
    ceiling at each batch size."""
    copies = {precision: pipelines.at_precision(precision) for precision in PRECISIONS}
    result = {"quality": {precision: validation_quality(p) for precision, p in copies.items()},
              "ceilings": {precision: measure_ceiling(p, texts, min_seconds)
                           for precision, p in copies.items()}}
    log.info("precisions: %s", result["quality"])
    return result
