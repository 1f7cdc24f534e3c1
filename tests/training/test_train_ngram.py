"""training.train_ngram on made-up data: a trained RNN gets an n-gram part and a combination
fitted on dev, and the artifact says so."""

from __future__ import annotations

import json
from pathlib import Path

import fake_data
import pytest
import torch

from models.integrity import verify_artifact
from models.sentiment import SentimentClassifier
from training import data, evaluate, train_ngram, train_sentiment


@pytest.fixture(autouse=True)
def made_up_data(monkeypatch):
    for name in ("sst2_splits", "fdu_mtl_splits", "sha256_of"):
        monkeypatch.setattr(data, name, getattr(fake_data, name))


@pytest.fixture(scope="module")
def rnn_folder(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("sst2_splits", "fdu_mtl_splits", "sha256_of"):
            patch.setattr(data, name, getattr(fake_data, name))
        metrics = train_sentiment.main(["--profile", "quick", "--no-store", "--checkpoint-dir",
                                        str(tmp_path_factory.mktemp("ck"))])
    return Path(metrics["folder"])


def test_the_combined_artifact_is_complete_and_scored_as_it_answers(rnn_folder, tmp_path):
    metrics = train_ngram.main(["--rnn", str(rnn_folder), "--no-store", "--max-features", "300",
                                "--out", str(tmp_path / "combined")])
    folder = Path(metrics["folder"])
    assert folder == tmp_path / "combined"
    assert verify_artifact(folder)  # checksums.json covers every file written
    checksums = json.loads((folder / "checksums.json").read_text())["files"]
    assert {p.name for p in folder.iterdir()} - {"checksums.json"} == set(checksums)
    model = SentimentClassifier.load(folder)
    config = model.module.config
    assert config.ngram_features == len(model.module.ngram.keys) <= 300
    assert metrics["combination"]["method"] in ("logreg", "grid")
    chosen = metrics["combination"]["candidates"][metrics["combination"]["method"]]["mix"]
    assert [config.mix_rnn, config.mix_ngram, config.mix_bias] == chosen
    # the test figures are the loaded artifact's answers, and each part is scored alone too
    test = evaluate.sentiment_scores(model, data.sst2_splits()["test"], data.fdu_mtl_splits()["test"])
    assert metrics["test"] == test[""]
    assert metrics["test"]["accuracy"] == evaluate.sentiment_accuracy(
        model, data.sst2_splits()["test"])["accuracy"]
    assert set(metrics["parts"]) == {"recurrent part", "n-gram part"}
    assert metrics["parts"]["recurrent part"]["test"] == evaluate.evaluate_folder(rnn_folder, "test")
    card = (folder / "README.md").read_text()
    assert "The n-gram part and the combination" in card and "toys games" in card
    assert metrics["recurrent_part"]["source"] == str(rnn_folder)
    # the recurrent part's weights are the RNN's, as it was stored (float16)
    rnn = SentimentClassifier.load(rnn_folder)
    assert torch.equal(model.module.classifier.weight, rnn.module.classifier.weight)


def test_the_combination_is_fitted_on_dev_only(rnn_folder, monkeypatch):
    seen = []
    real = train_ngram.part_log_odds

    def spy(model, pairs, *args, **kwargs):
        seen.append(pairs)
        return real(model, pairs, *args, **kwargs)

    monkeypatch.setattr(train_ngram, "part_log_odds", spy)
    train_ngram.main(["--rnn", str(rnn_folder), "--no-store", "--no-test", "--combination", "grid"])
    dev = [data.sst2_splits()["dev"], *data.fdu_mtl_splits()["dev"].values()]
    assert seen and all(pairs in dev for pairs in seen)


def test_grid_keeps_the_middle_of_a_tied_run():
    log_odds = {"sst2": (torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0])),
                "books": (torch.tensor([2.0]), torch.tensor([3.0]))}
    labels = {"sst2": [1, 0], "books": [1]}
    assert train_ngram.fit_grid(log_odds, labels) == (0.5, 0.5, 0.0)  # every w ties


def test_dev_weights_halve_between_sst2_and_the_domains_alike():
    weights = train_ngram.dev_weights(4, [2, 8])
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[:4].sum().item() == pytest.approx(0.5)
    assert weights[4:6].sum().item() == pytest.approx(weights[6:].sum().item())


def test_an_rnn_that_has_an_n_gram_part_already_is_refused(rnn_folder, tmp_path):
    train_ngram.main(["--rnn", str(rnn_folder), "--no-store", "--no-test", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="n-gram part already"):
        train_ngram.main(["--rnn", str(tmp_path / "c"), "--no-store"])
    with pytest.raises(SystemExit, match="--rnn"):
        train_ngram.main(["--no-store"])


@pytest.mark.parametrize("prefer", ["strongest", "weakest"])
def test_the_n_gram_part_is_chosen_by_the_combination_it_makes(rnn_folder, monkeypatch, prefer):
    """A stand-in selection metric that scores a combination by how far the n-gram part's dev
    log-odds stray from 0 (larger C: further) decides which C is kept."""
    monkeypatch.setattr(train_ngram, "C_GRID", (0.05, 50.0))

    def spread(log_odds, labels, mix):
        value = float(torch.cat([pair[1] for pair in log_odds.values()]).abs().mean())
        return value if prefer == "strongest" else -value

    monkeypatch.setattr(train_ngram, "selection", spread)
    metrics = train_ngram.main(["--rnn", str(rnn_folder), "--no-store", "--no-test", "--max-features", "300"])
    assert metrics["ngram"]["dev"]["c"] == (50.0 if prefer == "strongest" else 0.05)
