"""What the classifier's batched path buys: `ProjectedLSTM` against torch's packed LSTM, in process,
and what compiling its recurrence by TorchScript buys over the same steps run as a Python loop.

    python -m loadtest.projected_lstm                 # the shipped classifier, 1 torch thread
    python -m loadtest.projected_lstm --out reports/bench/projected-lstm/in-process.md

Three paths compute the same probabilities (models/projected_lstm.py): torch's packed
LSTM, `ProjectedLSTM` as served (its recurrence compiled by TorchScript) and `ProjectedLSTM` with
`pooled_recurrence` run as a Python loop. This measures sentences/s at each batch size, the paths
in alternation (median of `--rounds` rounds, so that machine drift hits all alike), on SST-2 dev
reviews (a validation split) batched two ways:
- in dev order, lengths mixed, as the benchmark's ceiling batches them;
- similar lengths together, as the service's batcher forms batches (consecutive reviews of the
  dev set sorted by length, from a seeded random start).
It also gives the largest |difference| between torch's probabilities and either ProjectedLSTM's
over every dev review, batched 32 at a time, and the size of the projected-input table. Writes
markdown to `--out` and prints it.
"""

from __future__ import annotations

import copy
import random
import statistics
import time
from collections.abc import Callable

import torch

from loadtest.in_process import command_line, measurement_parser, publish
from loadtest.payloads import load_validation_texts
from models.projected_lstm import pooled_recurrence
from models.sentiment import EncodedText, SentimentClassifier

BATCHES = (1, 4, 8, 16, 32, 64)
BATCHES_PER_TIMING = 20
PROFILING_RUNS = 3  # TorchScript's profiling executor optimises after the first calls


Batches = list[list[EncodedText]]


def sentences_per_second(run: Callable[[list[EncodedText]], object], batches: Batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return sum(map(len, batches)) / (time.perf_counter() - started)


def ratio(fast: list[float], slow: list[float]) -> float:
    """Median over rounds of fast / slow, each round's pair timed back to back."""
    return statistics.median(f / s for f, s in zip(fast, slow, strict=True))


def batches_of(reviews: list[EncodedText], size: int, similar_lengths: bool, seed: int) -> Batches:
    if not similar_lengths:
        return [reviews[i:i + size] for i in range(0, len(reviews) - size + 1, size)][:BATCHES_PER_TIMING]
    ordered = sorted(reviews, key=len)
    rng = random.Random(seed)
    starts = [rng.randrange(len(ordered) - size + 1) for _ in range(BATCHES_PER_TIMING)]
    return [ordered[start:start + size] for start in starts]


def measure(classifier: SentimentClassifier, reviews: list[EncodedText], rounds: int) -> list[str]:
    projected = classifier.projected()
    if projected is None:
        raise SystemExit("this classifier has no ProjectedLSTM path (a float32 single-layer LSTM only)")

    def torch_path(batch: list[EncodedText]) -> torch.Tensor:
        return classifier.logits(classifier.collate(batch))

    python_loop = copy.copy(projected)
    python_loop.recurrence = pooled_recurrence
    paths = {"torch": torch_path, "projected": projected.logits, "python": python_loop.logits}
    lines = ["| batch | batches of | torch's packed LSTM, sentences/s | ProjectedLSTM, sentences/s | "
             "ProjectedLSTM / torch | ProjectedLSTM, Python loop, sentences/s | "
             "TorchScript / Python loop |", "|---|---|---|---|---|---|---|"]
    for size in BATCHES:
        for similar in (False, True):
            batches = batches_of(reviews, size, similar, seed=size)
            for run in paths.values():  # warm-up, and TorchScript's profiling runs
                for _ in range(PROFILING_RUNS):
                    run(batches[0])
            speeds: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(rounds):
                for name, run in paths.items():
                    speeds[name].append(sentences_per_second(run, batches))
            median = {name: statistics.median(values) for name, values in speeds.items()}
            kind = "similar lengths" if similar else "mixed lengths (dev order)"
            lines.append(f"| {size} | {kind} | {median['torch']:.0f} | {median['projected']:.0f} | "
                         f"{ratio(speeds['projected'], speeds['torch']):.2f}x | {median['python']:.0f} | "
                         f"{ratio(speeds['projected'], speeds['python']):.2f}x |")
    gap = 0.0
    for start in range(0, len(reviews), 32):
        batch = reviews[start:start + 32]
        expected = torch.softmax(torch_path(batch), -1)
        for run in (projected.logits, python_loop.logits):
            gap = max(gap, (expected - torch.softmax(run(batch), -1)).abs().max().item())
    table_mb = projected.table.numel() * projected.table.element_size() / 1e6
    return [*lines, "", "Largest |P(label) difference| between torch's path and either ProjectedLSTM "
            f"over the {len(reviews)} dev reviews, 32 at a time: {gap:.1e}. Projected-input table: "
            f"{projected.words} words, {table_mb:.1f} MB."]


def main(argv: list[str] | None = None) -> None:
    parser = measurement_parser(__doc__.splitlines()[0], "sentiment-rnn")
    parser.add_argument("--rounds", type=int, default=5, help="timings of each path per figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    classifier = SentimentClassifier.load(args.models / "sentiment-rnn")
    reviews = [classifier.encode(text) for text in load_validation_texts().reviews]
    with torch.inference_mode():
        lines = measure(classifier, reviews, args.rounds)
    config = classifier.module.config
    publish("The classifier's batched path: ProjectedLSTM against torch's packed LSTM, and its "
            "recurrence by TorchScript against a Python loop",
            command_line("loadtest.projected_lstm", argv),
            f"{args.threads} torch thread(s), {BATCHES_PER_TIMING} batches per timing, {args.rounds} "
            f"rounds; medians. Model: {config.hidden_size} units, "
            f"{'bidirectional ' if config.bidirectional else ''}{config.cell}", lines, args.out)


if __name__ == "__main__":
    main()
