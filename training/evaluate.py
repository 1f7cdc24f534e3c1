"""Evaluate the served models on their test splits: one JSON line per model, then a table.

    python -m training.evaluate                  # every model in the store, else the shipped copy
    python -m training.evaluate --split val      # validation instead of test
    python -m training.evaluate --models sentiment-rnn --source shipped \
        --folders path/to/candidate --baseline   # shipped vs a candidate vs TF-IDF + LR

The metric functions here are also what training selects models with (on validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import sacrebleu
import torch
from torch.nn import functional as F
from tqdm import tqdm

from models.generator import CharGenerator
from models.sentiment import SentimentClassifier
from models.translator import Translator

log = logging.getLogger(__name__)

WINDOW = 256  # generator loss: windows of 256 characters, each from a zero state (nanoGPT's block)


@torch.inference_mode()
def sentiment_accuracy(model: SentimentClassifier, pairs: list[tuple[str, int]],
                       batch_size: int = 256) -> dict[str, float]:
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        predicted = model.predict_proba([text for text, _ in chunk]).argmax(dim=-1)
        correct += int((predicted == torch.tensor([label for _, label in chunk])).sum())
    return {"accuracy": round(100.0 * correct / len(pairs), 2)}


# A combined classifier (an n-gram part beside the recurrent one) is also scored by each part
# alone, so what the recurrent model adds is visible: (mix_rnn, mix_ngram, mix_bias) per part.
PARTS = {"recurrent part": (1.0, 0.0, 0.0), "n-gram part": (0.0, 1.0, 0.0)}


@torch.inference_mode()
def part_log_odds(model: SentimentClassifier, pairs: list[tuple[str, int]],
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each part's log-odds of positive for `pairs`' texts (N,): the recurrent part's, and the
    n-gram part's (None where the model has none)."""
    recurrent, ngram = [], []
    for start in range(0, len(pairs), batch_size):
        r, d = model.part_log_odds([model.encode(text) for text, _ in pairs[start:start + batch_size]])
        recurrent.append(r)
        ngram.append(d)
    return torch.cat(recurrent), None if ngram[0] is None else torch.cat(ngram)


def mixed_accuracy(log_odds: tuple[torch.Tensor, torch.Tensor | None], labels: list[int],
                   mix: tuple[float, float, float]) -> float:
    """Accuracy (%) of the decision mix[0] x recurrent + mix[1] x n-gram + mix[2] > 0 (positive),
    which is the classifier's argmax (a tie reads as negative, as argmax takes the first)."""
    recurrent, ngram = log_odds
    z = mix[0] * recurrent + mix[2]
    if ngram is not None:
        z = z + mix[1] * ngram
    correct = int(((z > 0).long() == torch.tensor(labels)).sum())
    return round(100.0 * correct / len(labels), 2)


def model_mix(model: SentimentClassifier) -> tuple[float, float, float]:
    config = model.module.config
    return config.mix_rnn, config.mix_ngram, config.mix_bias


def sentiment_scores(model: SentimentClassifier, sst2: list[tuple[str, int]],
                     fdu: dict[str, list[tuple[str, int]]]) -> dict[str, dict[str, float]]:
    """SST-2 accuracy, the FDU-MTL mean over domains and each domain's, for the whole classifier
    (key "") and, where it has an n-gram part, for each part alone (PARTS): every part's log-odds
    are computed once and the mixes read from them."""
    sets = {"sst2": sst2, **{f"fdu_{domain}": pairs for domain, pairs in sorted(fdu.items())}}
    log_odds = {name: part_log_odds(model, pairs) for name, pairs in sets.items()}
    mixes = {"": model_mix(model), **(PARTS if model.module.ngram is not None else {})}
    scores = {}
    for name, mix in mixes.items():
        by_set = {key: mixed_accuracy(log_odds[key], [label for _, label in sets[key]], mix)
                  for key in sets}
        domains = [by_set[key] for key in by_set if key != "sst2"]
        scores[name] = {"accuracy": by_set.pop("sst2"),
                        **({"fdu_mean_accuracy": round(sum(domains) / len(domains), 2)}
                           if domains else {}), **by_set}
    return scores


def domain_accuracy(model: SentimentClassifier,
                    domains: dict[str, list[tuple[str, int]]]) -> dict[str, float]:
    """Accuracy (%) per domain, and "mean": their unweighted mean, the benchmark's figure for
    FDU-MTL (each domain counts the same whatever its size)."""
    scores = {domain: sentiment_accuracy(model, pairs)["accuracy"]
              for domain, pairs in sorted(domains.items())}
    return {**scores, "mean": round(sum(scores.values()) / len(scores), 2)}


def selection_metric(sst2_accuracy: float, fdu_mean_accuracy: float) -> float:
    """What picks a sentiment model on dev: the mean of SST-2 dev accuracy and the FDU-MTL dev
    mean over domains, so each set counts the same whatever its size."""
    return round((sst2_accuracy + fdu_mean_accuracy) / 2, 2)


@torch.inference_mode()
def char_loss(model: CharGenerator, text: str, window: int = WINDOW, batch_size: int = 64,
              max_windows: int | None = None) -> dict[str, float]:
    """Mean cross-entropy (nats/char) over non-overlapping windows, each from a zero state."""
    ids = torch.tensor(model.encode(text))
    count = (len(ids) - 1) // window
    if max_windows is not None:
        count = min(count, max_windows)
    inputs = ids[: count * window].view(count, window)  # (N, W)
    targets = ids[1: count * window + 1].view(count, window)  # (N, W)
    total = 0.0
    for start in range(0, count, batch_size):
        logits, _ = model.module(inputs[start:start + batch_size])  # (B, W, V)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(),
                                       targets[start:start + batch_size].flatten(), reduction="sum"))
    loss = total / (count * window)
    return {"val_loss": round(loss, 4), "bits_per_char": round(loss / math.log(2), 4)}


@torch.inference_mode()
def translation_bleu(model: Translator, pairs: list[tuple[str, str]], beam_size: int = 1,
                     batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """sacreBLEU (13a) of detokenised output against the raw references, cased and lowercased."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))  # similar lengths batch well
    hypotheses = [""] * len(pairs)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=f"translate beam={beam_size}", disable=not progress):
        chunk = order[start:start + batch_size]
        for i, out in zip(chunk, model.translate([pairs[i][0] for i in chunk], beam_size),
                          strict=True):
            hypotheses[i] = out.translation
    references = [[target for _, target in pairs]]
    return {"bleu": round(sacrebleu.corpus_bleu(hypotheses, references).score, 2),
            "bleu_lowercase": round(sacrebleu.corpus_bleu(hypotheses, references,
                                                          lowercase=True).score, 2)}


MODEL_NAMES = ("sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en")
# {metric: (target, higher is better)} from the quality issues; ko-en has no target. Sentiment:
# "accuracy" is SST-2 test, "fdu_mean_accuracy" the FDU-MTL test mean over its 14 domains.
TARGETS = {"sentiment-rnn": {"accuracy": (86.0, True), "fdu_mean_accuracy": (88.0, True)},
           "char-generator": {"val_loss": (1.40, False)},
           "translator-de-en": {"bleu": (37.0, True)}}


def locate(name: str, source: str) -> tuple[str, Path]:
    """(tag, folder) of model `name`: the store's latest, else (or with source=shipped) the repo's."""
    from training.store import SHIPPED_DIR, STORE_INFO_FILE

    if source in ("auto", "store"):
        import bentoml

        try:
            model = bentoml.models.get(f"{name}:latest")
            return str(model.tag), Path(model.path)
        except bentoml.exceptions.NotFound:
            if source == "store":
                raise
    folder = SHIPPED_DIR / name
    info = json.loads((folder / STORE_INFO_FILE).read_text())
    return f"{info['name']}:{info['version']}", folder


def evaluate_folder(folder: Path, split: str) -> dict[str, float]:
    """The headline metrics of the artifact in `folder` on `split` (test or val)."""
    from training import data

    task = json.loads((folder / "config.json").read_text())["task"]
    if task == "sentiment":
        name = "test" if split == "test" else "dev"
        scores = sentiment_scores(SentimentClassifier.load(folder), data.sst2_splits()[name],
                                  data.fdu_mtl_splits()[name])
        return {**scores.pop(""), **({"parts": scores} if scores else {})}
    if task == "generator":  # no test split: the nanoGPT validation split is the report split
        return char_loss(CharGenerator.load(folder), data.shakespeare_splits()["val"])
    model = Translator.load(folder)
    splits = data.multi30k_splits() if model.config.source_lang == "de" else data.ko_en_splits()
    beam = json.loads((folder / "metrics.json").read_text())["run_config"].get("test_beam", 5)
    greedy = translation_bleu(model, splits[split], beam_size=1, progress=True)
    beamed = translation_bleu(model, splits[split], beam_size=beam, progress=True)
    return {**beamed, "beam_size": beam, "bleu_greedy": greedy["bleu"],
            "bleu_lowercase_greedy": greedy["bleu_lowercase"]}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | tag | metric | value | target | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        targets = TARGETS.get(row["model"], {})
        for key, value in row.items():
            if key in ("model", "tag"):
                continue
            target, higher = targets.get(key, (None, True))
            met = "" if target is None else ("yes" if (value >= target if higher else value <= target)
                                             else "no")
            lines.append(f"| {row['model']} | {row['tag']} | {key} | {value} | "
                         f"{'' if target is None else target} | {met} |")
    return "\n".join(lines)


def sentiment_table(rows: list[dict]) -> str:
    """The sentiment rows side by side, one column per model (RNNs and baselines): SST-2 test,
    the FDU-MTL mean and each domain, with the targets."""
    rows = [row for row in rows if "fdu_mean_accuracy" in row]
    if not rows:
        return ""
    targets = TARGETS["sentiment-rnn"]
    keys = ["accuracy", "fdu_mean_accuracy", *(k for k in rows[0] if k.startswith("fdu_")
                                               and k != "fdu_mean_accuracy")]
    names = {"accuracy": "SST-2 test", "fdu_mean_accuracy": "**FDU-MTL mean (14 domains)**"}
    header = " | ".join(f"{r['model']} `{r['tag']}`" for r in rows)
    lines = [f"| test accuracy (%) | target | {header} |", "|---|---|" + "---|" * len(rows)]
    for key in keys:
        target = targets.get(key, ("", True))[0]
        name = names.get(key, key.removeprefix("fdu_").replace("_", " "))
        lines.append(f"| {name} | {target} | " + " | ".join(str(r.get(key, "")) for r in rows) + " |")
    return "\n".join(lines)


def folder_row(folder: Path) -> dict:
    """The name and tag of an artifact folder: its bentoml.json tag when it has one (a shipped
    copy), its store tag when it is a store model's folder (<store>/models/<name>/<version>/,
    beside the store's model.yaml), else its path."""
    from training.store import STORE_INFO_FILE

    name = json.loads((folder / "metrics.json").read_text())["model"]
    info = folder / STORE_INFO_FILE
    if info.is_file():
        tag = json.loads(info.read_text())
        return {"model": name, "tag": f"{tag['name']}:{tag['version']}"}
    if (folder / "model.yaml").is_file():
        return {"model": name, "tag": f"{folder.parent.name}:{folder.name}"}
    return {"model": name, "tag": str(folder)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                        help="which models to evaluate")
    parser.add_argument("--source", choices=("auto", "store", "shipped"), default="auto",
                        help="auto: the store's latest, else the copy in models/pretrained")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test for reports; val for model selection")
    parser.add_argument("--folders", nargs="+", type=Path, default=[],
                        help="also evaluate these artifact folders (a candidate not in the store)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=False,
                        help="with sentiment-rnn, also train and test the TF-IDF + logistic "
                             "regression baseline on SST-2 and on SST-2 + FDU-MTL (minutes)")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write the table, targets and command to this markdown file "
                             "(reports/quality.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []

    def add(row: dict) -> None:
        """One row per model, then one per part of a combined sentiment classifier."""
        parts = row.pop("parts", {})
        for added in (row, *({**row, **scores, "model": f"{row['model']} ({part})"}
                             for part, scores in parts.items())):
            print(json.dumps(added), flush=True)
            rows.append(added)

    for name in args.models:
        tag, folder = locate(name, args.source)
        add({"model": name, "tag": tag, **evaluate_folder(folder, args.split)})
    for folder in args.folders:
        add({**folder_row(folder), **evaluate_folder(folder, args.split)})
    if args.baseline and "sentiment-rnn" in args.models and args.split == "test":
        from training.baseline import baseline_rows

        for row in baseline_rows():
            add(row)
    print()
    print(markdown_table(rows))
    print()
    print(sentiment_table(rows))
    if args.report:
        write_report(args.report, rows, argv)
    return rows


def write_report(path: Path, rows: list[dict], argv: list[str] | None) -> None:
    """reports/quality.md: the measured table beside the issue's targets and the command."""
    import platform
    import sys

    command = " ".join(["python -m training.evaluate", *(sys.argv[1:] if argv is None else argv)])
    lines = ["# Model quality", "",
             f"Measured by `{command}` with torch {torch.__version__} on "
             f"{platform.machine()} ({torch.get_num_threads()} torch threads). "
             "Sentiment: SST-2 test accuracy (stsa.binary.test, %). Generator: nats/char on the "
             "Tiny Shakespeare validation split (its report split), windows of 256 characters "
             "each from a zero state. Translators: sacreBLEU 13a on test, cased and lowercased, "
             "beam search and greedy.", "", markdown_table(rows), ""]
    if sentiment := sentiment_table(rows):
        lines += ["## Sentiment across domains", "",
                  "SST-2 test (stsa.binary.test) and the FDU-MTL test files (400 reviews per "
                  "domain; the mean weighs each domain alike). tfidf-logreg: the bag-of-words "
                  "baseline (training/baseline.py), trained on the named sets' training texts with "
                  "its C chosen on the same dev sets as the RNN. For a classifier with an n-gram "
                  "part (training/train_ngram.py), its recurrent part and its n-gram part are "
                  "also scored alone.", "", sentiment, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
