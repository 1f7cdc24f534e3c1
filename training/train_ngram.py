"""Give a trained sentiment RNN an n-gram part: fit TF-IDF + logistic regression on its training
texts, fit how the two parts' log-odds combine on dev, write the combined artifact.

    python -m training.train_ngram --rnn sentiment-rnn:v20261207-081500   # a store tag
    python -m training.train_ngram --rnn path/to/artifact --no-test --no-store --out /tmp/cand

The n-gram part (models.ngram) reads the token ids the RNN reads (its normaliser, its cut, its
vocabulary: a word it lacks is UNK), as word unigrams and bigrams; features seen in fewer than
--min-df training texts are dropped and at most --max-features of the most frequent kept, which
bounds the artifact (8 bytes per feature: an int32 key, float16 idf and coefficient). The word
and subword embedding tables, most of the recurrent part's bytes, are stored as int8 rows with a
float16 scale each (--int8-embeddings): that halves the artifact, which makes room for the
n-gram part's features within models/pretrained/'s budget; the dev scores below are those of the
artifact as saved. The
regression's C, and what one FDU-MTL review weighs in it against an SST-2 phrase, are chosen on
dev by the RNN's selection metric (the mean of SST-2 dev accuracy and the FDU-MTL dev accuracy
averaged over its domains) of the combined model they make: the part is there to be combined,
and a part that leans on reviews can be worth more beside an RNN that holds SST-2 up.

The combination, log-odds = mix_rnn x the RNN's + mix_ngram x the n-gram part's + mix_bias, is
fitted on the dev splits only (the RNN was selected on them, the n-gram part's C too; neither was
fitted on them), each SST-2 dev sentence weighing 1/2 of 1/872 and each FDU-MTL dev review 1/2
of 1/14 of 1/its domain's size, as the selection metric weighs them. Two ways are tried:
- logreg: a 3-parameter logistic regression on (RNN log-odds, n-gram log-odds): calibrated
  probabilities, weights fitted by likelihood;
- grid: mix_rnn = w, mix_ngram = 1 - w, no bias, w in 0, 0.05, ..., 1, the w with the best
  selection metric (the middle of a tied run).
--combination auto keeps whichever scores the higher dev selection metric (logreg on a tie).

A checkpoint of a run still training becomes an artifact first with train_sentiment itself, on a
copy of its checkpoint folder: `python -m training.train_sentiment <its flags> --checkpoint-dir
<copy> --resume --epochs <epochs it has done>` trains nothing more and writes the best epoch's.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from models.artifact import CARD_FILE, CONFIG_FILE, CURVE_FILE, METRICS_FILE, parameter_count, write_json
from models.ngram import NgramLogistic, ngram_keys
from models.sentiment import SentimentClassifier, SentimentRNN
from models.vocab import UNK_ID
from training import data
from training.artifact_writer import git_commit, model_card
from training.devices import hardware
from training.evaluate import folder_row, mixed_accuracy, part_log_odds, selection_metric, sentiment_scores
from training.flags import help_field, parse_config

log = logging.getLogger(__name__)

NAME = "sentiment-rnn"
COMBINATIONS = ("auto", "logreg", "grid")
GRID = tuple(round(0.05 * i, 2) for i in range(21))
# the n-gram part's regression: inverse regularisation strengths, and what one FDU-MTL review
# weighs against an SST-2 phrase (phrases far outnumber reviews, while the selection metric weighs
# the two dev sets alike); every pair is tried, the best on dev kept
C_GRID = (0.5, 1.0, 2.0, 4.0)
FDU_WEIGHTS = (1.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0)


@dataclass
class RunConfig:
    rnn: str = help_field("", "the trained sentiment RNN: an artifact folder or a store tag "
                          "(name:version)")
    max_features: int = help_field(200000, "most n-gram features kept, the most frequent (8 bytes "
                                   "each in the artifact)", minimum=1)
    min_df: int = help_field(2, "keep n-grams seen in at least this many training texts", minimum=1)
    sublinear_tf: bool = help_field(True, "tf = 1 + ln(count) instead of the count")
    int8_embeddings: bool = help_field(True, "store the word and subword embedding tables as int8 "
                                       "rows with a float16 scale each (half their bytes)")
    combination: str = help_field("auto", "how the parts' log-odds combine, fitted on dev "
                                  "(auto: the better on dev of logreg and grid)",
                                  choices=COMBINATIONS)
    test: bool = help_field(True, "score the combined artifact on test too (into its metrics and "
                            "card); --no-test while comparing candidates on dev")
    store: bool = help_field(True, "save the artifact into the BentoML store")
    out: str = help_field("", "also copy the artifact into this folder")


def locate_rnn(spec: str) -> Path:
    """The artifact folder of --rnn: a folder as it is, else a store tag."""
    if Path(spec).is_dir():
        return Path(spec)
    import bentoml

    return Path(bentoml.models.get(spec).path)


def rnn_source(folder: Path) -> str:
    """The store tag of an artifact folder (a shipped copy's, a store folder's), else its path."""
    return folder_row(folder)["tag"]


def token_ids(model: SentimentClassifier, texts: list[str]) -> list[list[int]]:
    """Each text's word ids as the classifier reads them (its encode without the subwords)."""
    return [model.vocab.encode(model.tokens(text)) or [UNK_ID] for text in texts]


def _as_given(keys: list[int]) -> list[int]:
    """TfidfVectorizer's analyzer: the documents are already lists of n-gram keys."""
    return keys


def fit_ngram(model: SentimentClassifier, train: list[tuple[str, int]], reviews: list[tuple[str, int]],
              dev_sets: dict[str, list[tuple[str, int]]], rnn_dev: dict[str, torch.Tensor],
              run: RunConfig) -> tuple[NgramLogistic, dict[str, float]]:
    """TF-IDF + logistic regression on the classifier's token ids of `train` (SST-2 phrases) and
    `reviews` (FDU-MTL), the pair of C and review weight (FDU_WEIGHTS: what one review counts
    for in the regression; the vocabulary and idf count texts) chosen by the dev selection metric
    of the combination it makes with the recurrent part, whose dev log-odds are `rnn_dev`
    (`dev_sets`: "sst2" and one set per FDU-MTL domain). Returns the n-gram part and its dev
    scores, alone and combined."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    size = len(model.vocab)

    def keys(pairs: list[tuple[str, int]]) -> list[list[int]]:
        return [ngram_keys(ids, size) for ids in token_ids(model, [text for text, _ in pairs])]

    vectorizer = TfidfVectorizer(analyzer=_as_given, min_df=run.min_df, max_features=run.max_features,
                                 sublinear_tf=run.sublinear_tf)
    features = vectorizer.fit_transform(keys(train + reviews))
    labels = [label for _, label in train + reviews]
    log.info("n-gram part: %d training texts, %d features (min_df %d, at most %d)",
             len(train) + len(reviews), features.shape[1], run.min_df, run.max_features)
    dev_features = {name: vectorizer.transform(keys(pairs)) for name, pairs in dev_sets.items()}
    dev_labels = {name: [label for _, label in pairs] for name, pairs in dev_sets.items()}
    best, best_dev = None, None
    for c, fdu_weight in [(c, w) for c in C_GRID for w in (FDU_WEIGHTS if reviews else (1.0,))]:
        weights = [1.0] * len(train) + [fdu_weight] * len(reviews)
        regression = LogisticRegression(C=c, max_iter=2000).fit(features, labels, sample_weight=weights)
        log_odds = {name: (rnn_dev[name], torch.from_numpy(regression.decision_function(matrix)).float())
                    for name, matrix in dev_features.items()}
        alone = {name: mixed_accuracy(pair, dev_labels[name], (0.0, 1.0, 0.0))
                 for name, pair in log_odds.items()}
        sst2 = alone.pop("sst2")
        fdu = round(sum(alone.values()) / len(alone), 2)
        combined = max(selection(log_odds, dev_labels, fit(log_odds, dev_labels))
                       for fit in (fit_logreg, fit_grid))
        dev = {"c": c, "fdu_weight": fdu_weight, "sst2_accuracy": sst2, "fdu_mean_accuracy": fdu,
               "selection": selection_metric(sst2, fdu), "combined_selection": combined}
        log.info("n-gram part, C=%s, review weight %s: dev %s", c, fdu_weight, dev)
        if best_dev is None or dev["combined_selection"] > best_dev["combined_selection"]:
            best, best_dev = regression, dev
    if list(best.classes_) != [0, 1]:
        raise ValueError(f"the training labels are {list(best.classes_)}, not 0 and 1")
    part = NgramLogistic.from_fitted(vectorizer.vocabulary_, vectorizer.idf_.tolist(),
                                     best.coef_[0].tolist(), float(best.intercept_[0]), size,
                                     run.sublinear_tf)
    return part, best_dev


def dev_weights(sst2_size: int, domain_sizes: list[int]) -> torch.Tensor:
    """Per dev text, its weight in the selection metric: SST-2 dev is half, the FDU-MTL domains
    share the other half alike."""
    weights = [0.5 / sst2_size] * sst2_size
    for size in domain_sizes:
        weights += [0.5 / len(domain_sizes) / size] * size
    return torch.tensor(weights, dtype=torch.float64)


def selection(log_odds: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: dict[str, list[int]],
              mix: tuple[float, float, float]) -> float:
    """The selection metric of `mix` on dev: the mean of SST-2 accuracy and the FDU-MTL mean."""
    scores = {name: mixed_accuracy(log_odds[name], labels[name], mix) for name in log_odds}
    sst2 = scores.pop("sst2")
    return selection_metric(sst2, sum(scores.values()) / len(scores))


def fit_logreg(log_odds: dict[str, tuple[torch.Tensor, torch.Tensor]],
               labels: dict[str, list[int]]) -> tuple[float, float, float]:
    """(mix_rnn, mix_ngram, mix_bias) by a logistic regression on the two log-odds, each dev text
    weighted as the selection metric weighs it; C is large: 3 parameters on ~2,900 texts."""
    from sklearn.linear_model import LogisticRegression

    names = list(log_odds)
    inputs = torch.cat([torch.stack(log_odds[name], dim=1) for name in names]).double().numpy()
    targets = [label for name in names for label in labels[name]]
    weights = dev_weights(len(labels["sst2"]), [len(labels[n]) for n in names if n != "sst2"])
    # the weights sum to 1: scaled to the text count, C keeps its usual meaning
    regression = LogisticRegression(C=1e4, max_iter=1000).fit(
        inputs, targets, sample_weight=(weights * len(targets)).numpy())
    (mix_rnn, mix_ngram), bias = regression.coef_[0].tolist(), float(regression.intercept_[0])
    return round(mix_rnn, 6), round(mix_ngram, 6), round(bias, 6)


def fit_grid(log_odds: dict[str, tuple[torch.Tensor, torch.Tensor]],
             labels: dict[str, list[int]]) -> tuple[float, float, float]:
    """(w, 1 - w, 0) for the w of GRID with the best dev selection metric, the middle of the best
    run of tied w."""
    scores = [selection(log_odds, labels, (w, round(1 - w, 2), 0.0)) for w in GRID]
    best = max(scores)
    tied = [w for w, score in zip(GRID, scores, strict=True) if score == best]
    w = tied[len(tied) // 2]
    return w, round(1 - w, 2), 0.0


def save_combined(model: SentimentClassifier, directory: Path, int8_embeddings: bool) -> SentimentClassifier:
    """Save as shipped (float16 weights, the embedding tables int8 rows if asked) and load it
    back: what is scored is what ships."""
    model.save(directory, dtype=torch.float16, int8_embeddings=int8_embeddings)
    return SentimentClassifier.load(directory)


def card_summary(source: Path, config: dict, ngram: dict, combination: dict, int8_embeddings: bool) -> str:
    """The RNN's own card summary, then what the n-gram part and the combination add."""
    card = (source / CARD_FILE).read_text(encoding="utf-8") if (source / CARD_FILE).is_file() else ""
    lines = card.split("\n## Test metrics")[0].splitlines()[1:]  # below its title
    rnn_summary = "\n".join(lines).strip()
    return (rnn_summary + "\n\n## The n-gram part and the combination\n\n"
            f"Beside the recurrent part: TF-IDF over word uni- and bigrams of the same token ids "
            f"({config['ngram_features']:,} features, min_df and max_features capped, sublinear tf "
            f"{'on' if config['ngram_sublinear_tf'] else 'off'}, idf smoothed, rows L2-normalised) "
            f"into a logistic regression (C={ngram['dev']['c']}, chosen on dev), fitted on the same "
            f"training texts (each once, an FDU-MTL review weighing {ngram['dev']['fdu_weight']} "
            "in the regression, chosen on dev). The answer's log-odds of positive are "
            f"{config['mix_rnn']} x the recurrent part's + {config['mix_ngram']} x the n-gram part's "
            f"+ {config['mix_bias']}, fitted on the dev splits only ({combination['method']}; "
            "training/train_ngram.py). /sentiment's explain shows this combined model: its "
            "trajectory is P(positive) of the combined model after each prefix, its importance "
            "the combined model's drop when one token is left out.\n\n"
            f"Recurrent part: {rnn_source(source)}."
            + ("\n\nStorage: float16 weights, the word and subword embedding tables as int8 rows "
               "with a float16 scale each (half their bytes); every score here is the artifact's as "
               "saved." if int8_embeddings else ""))


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = parse_config(RunConfig, argv, {"full": {}}, __doc__.splitlines()[0])
    if not run.rnn:
        raise SystemExit("--rnn: name the trained sentiment RNN (an artifact folder or a store tag)")
    started = time.perf_counter()
    source = locate_rnn(run.rnn)
    rnn = SentimentClassifier.load(source)
    if rnn.module.ngram is not None:
        raise SystemExit(f"--rnn {run.rnn}: it has an n-gram part already; give the RNN alone")
    rnn_metrics = json.loads((source / METRICS_FILE).read_text())
    sst2, fdu = data.sst2_splits(), data.fdu_mtl_splits()
    # the n-gram part's training texts: the RNN's run's data, each text once
    with_fdu = rnn_metrics.get("run_config", {}).get("data", "sst2") == "sst2+fdu_mtl"
    reviews = [pair for domain in sorted(fdu["train"]) for pair in fdu["train"][domain]] if with_fdu else []
    dev_sets = {"sst2": sst2["dev"], **{domain: fdu["dev"][domain] for domain in sorted(fdu["dev"])}}
    rnn_dev = {name: part_log_odds(rnn, pairs)[0] for name, pairs in dev_sets.items()}
    ngram, ngram_dev = fit_ngram(rnn, list(sst2["train"]), reviews, dev_sets, rnn_dev, run)

    config = replace(rnn.module.config, ngram_features=len(ngram.keys),
                     ngram_sublinear_tf=run.sublinear_tf)
    module = SentimentRNN(config)
    module.load_state_dict({**rnn.module.state_dict(),
                            **{f"ngram.{k}": v for k, v in ngram.state_dict().items()}})
    work = Path(tempfile.mkdtemp(prefix=f"{NAME}-ngram-"))
    model = save_combined(SentimentClassifier(module.eval(), rnn.vocab), work, run.int8_embeddings)

    # both parts' log-odds on dev, from the artifact as saved
    log_odds = {name: part_log_odds(model, pairs) for name, pairs in dev_sets.items()}
    labels = {name: [label for _, label in pairs] for name, pairs in dev_sets.items()}
    fitted = {"logreg": fit_logreg(log_odds, labels), "grid": fit_grid(log_odds, labels)}
    dev_selection = {method: selection(log_odds, labels, mix) for method, mix in fitted.items()}
    log.info("combinations fitted on dev: %s, dev selection %s", fitted, dev_selection)
    method = run.combination if run.combination != "auto" else max(
        ("logreg", "grid"), key=lambda m: (dev_selection[m], m == "logreg"))
    mix_rnn, mix_ngram, mix_bias = fitted[method]
    config = replace(config, mix_rnn=mix_rnn, mix_ngram=mix_ngram, mix_bias=mix_bias)
    model.module.config = config
    model = save_combined(model, work, run.int8_embeddings)

    def scores(split: str) -> dict:
        every = sentiment_scores(model, sst2[split], fdu[split])
        combined = every.pop("")
        return {**combined, "parts": every}

    validation = scores("dev")
    validation["selection"] = selection_metric(validation["accuracy"], validation["fdu_mean_accuracy"])
    log.info("combined (%s) on dev: %s", method, validation)
    test = scores("test") if run.test else {}
    if test:
        log.info("combined on test: %s", test)
    combination = {"method": method, "fitted_on": "dev (SST-2 dev + FDU-MTL dev)",
                   "candidates": {m: {"mix": list(mix), "dev_selection": dev_selection[m]}
                                  for m, mix in fitted.items()}}
    metrics = {
        "model": NAME, "task": "sentiment", "cell": config.cell,
        "validation": {k: v for k, v in validation.items() if k != "parts"},
        "test": {k: v for k, v in test.items() if k != "parts"},
        "parts": {part: {"validation": validation["parts"][part], "test": test.get("parts", {}).get(part, {})}
                  for part in validation["parts"]},
        "ngram": {"dev": ngram_dev, "features": config.ngram_features, "min_df": run.min_df,
                  "max_features": run.max_features, "sublinear_tf": run.sublinear_tf},
        "combination": combination,
        "storage": {"floats": "float16",
                    "embedding_tables": "int8 rows, float16 scales" if run.int8_embeddings else "float16"},
        "recurrent_part": {"source": rnn_source(source), "command": rnn_metrics.get("command"),
                           "best_epoch": rnn_metrics.get("best_epoch"),
                           "epochs_run": rnn_metrics.get("epochs_run"),
                           "validation": rnn_metrics.get("validation"), "test": rnn_metrics.get("test"),
                           "git_commit": rnn_metrics.get("git_commit")},
        "data_sha256": {**data.sha256_of("sst2"), **data.sha256_of("fdu_mtl")},
        "git_commit": git_commit(), "parameters": parameter_count(model.module),
        "training_seconds": round(rnn_metrics.get("training_seconds", 0.0)
                                  + time.perf_counter() - started, 1),
        "hardware": hardware(torch.device("cpu")),
        "best_epoch": rnn_metrics.get("best_epoch"), "epochs_run": rnn_metrics.get("epochs_run"),
        "run_config": {**rnn_metrics.get("run_config", {}), "ngram": asdict(run)},
        "command": " ".join(["python -m training.train_ngram", *(sys.argv[1:] if argv is None else argv)]),
        "torch": torch.__version__,
    }
    write_json(work / METRICS_FILE, metrics)
    card_config = json.loads((work / CONFIG_FILE).read_text())["model"]
    (work / CARD_FILE).write_text(model_card(
        NAME, card_summary(source, card_config, metrics["ngram"], combination,
                                  run.int8_embeddings), card_config, metrics),
        encoding="utf-8")
    if (source / CURVE_FILE).is_file():  # the recurrent part's training curve
        shutil.copy2(source / CURVE_FILE, work / CURVE_FILE)
    from models.integrity import record_checksums

    record_checksums(work)
    folder = work
    if run.out:
        folder = Path(run.out)
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(work, folder)
    if run.store:
        from training.store import save_to_store

        def copy(path: Path) -> None:
            for item in work.iterdir():
                shutil.copy2(item, path / item.name)

        stored = save_to_store(NAME, copy, labels={"task": "sentiment", "cell": config.cell},
                               metadata={"task": "sentiment", "cell": config.cell,
                                         "parameters": metrics["parameters"],
                                         **{f"test_{k}": v for k, v in metrics["test"].items()}})
        log.info("stored %s", stored.tag)
    log.info("artifact %s: dev %s, test %s", folder, metrics["validation"], metrics["test"])
    return {**metrics, "folder": str(folder)}


if __name__ == "__main__":
    main()
