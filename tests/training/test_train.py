"""Training smoke runs on made-up data: complete artifacts, resume, bad flags, torchrun DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import fake_data
import pytest
import torch

from models.artifact import ArtifactError
from models.generator import CharGenerator, CharLM
from models.sentiment import SentimentClassifier, SentimentRNN
from models.translator import Translator
from models.vocab import Vocab
from training import (
    artifact_writer,
    data,
    evaluate,
    flags,
    loop,
    train_generator,
    train_sentiment,
    train_translator,
)
from training.experiments import averaged_vs_raw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACT_FILES = {"config.json", "weights.safetensors", "metrics.json", "README.md",
                  "training_curve.png"}


@pytest.fixture(autouse=True)
def made_up_data(monkeypatch):
    for name in ("sst2_splits", "fdu_mtl_splits", "shakespeare_splits", "multi30k_splits", "ko_en_splits",
                 "sha256_of"):
        monkeypatch.setattr(data, name, getattr(fake_data, {"multi30k_splits": "translation_splits",
                                                            "ko_en_splits": "translation_splits"}
                                               .get(name, name)))


def mark_checkpoint(directory: Path, seconds: float) -> None:
    """Set last.pt's training seconds to `seconds`: a run that resumes carries the figure on into
    its metrics, a run that starts afresh cannot."""
    state = torch.load(directory / "last.pt", weights_only=True)
    state["progress"] = json.dumps({**json.loads(state["progress"]), "seconds": seconds})
    torch.save(state, directory / "last.pt")


def check_artifact(folder: Path, extra: set[str], task: str) -> dict:
    assert ARTIFACT_FILES | extra <= {p.name for p in folder.iterdir()}
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("test", "validation", "data_sha256", "git_commit", "training_seconds", "parameters",
                "hardware", "command"):
        assert key in metrics, key
    assert json.loads((folder / "config.json").read_text())["task"] == task
    assert "Test metrics" in (folder / "README.md").read_text()
    return metrics


def test_sentiment_smoke_writes_a_complete_artifact(tmp_path):
    metrics = train_sentiment.main(["--profile", "quick", "--epochs", "2", "--no-store",
                                    "--checkpoint-dir", str(tmp_path / "ck"), "--cell", "gru",
                                    "--weight-drop", "0.2"])
    folder = Path(metrics["folder"])
    check_artifact(folder, {"vocab.json"}, "sentiment")
    model = SentimentClassifier.load(folder)
    assert model.module.config.weight_drop == 0.2
    assert model.predict_proba(["A great film!"]).shape == (1, 2)
    # the metrics are the loaded artifact's own, measured on the test splits
    assert metrics["test"]["accuracy"] == evaluate.sentiment_accuracy(model, data.sst2_splits()["test"])[
        "accuracy"]
    by_domain = evaluate.domain_accuracy(model, data.fdu_mtl_splits()["test"])
    assert metrics["test"]["fdu_mean_accuracy"] == by_domain["mean"]
    assert metrics["test"]["fdu_toys_games"] == by_domain["toys_games"]
    validation = metrics["validation"]
    assert validation["selection"] == round((validation["sst2_accuracy"]
                                             + validation["fdu_mean_accuracy"]) / 2, 2)
    assert metrics["epochs_run"] == 2
    # what it was trained on, and what not, is on its card; how it reads text is in its config
    card = (folder / "README.md").read_text()
    assert "toys games" in card and "Not trained on:" in card and "tweets" in card
    assert (model.module.config.normalizer, model.module.config.max_tokens) == (2, 64)


def test_sentiment_on_sst2_alone_selects_on_sst2_dev(tmp_path):
    metrics = train_sentiment.main(["--profile", "quick", "--no-store", "--data", "sst2",
                                    "--normalizer", "1", "--max-tokens", "0",
                                    "--checkpoint-dir", str(tmp_path / "ck")])
    assert metrics["validation"]["selection"] == metrics["validation"]["sst2_accuracy"]
    assert set(metrics["test"]) == {"accuracy"}
    assert "product reviews, tweets" in (Path(metrics["folder"]) / "README.md").read_text()


def test_fdu_reviews_are_repeated_per_epoch_and_phrases_are_not():
    run = train_sentiment.RunConfig(fdu_repeat=3)
    splits, fdu = data.sst2_splits(), data.fdu_mtl_splits()
    pairs = train_sentiment.training_pairs(run, splits["train"], fdu["train"])
    reviews = sum(len(v) for v in fdu["train"].values())
    assert len(pairs) == len(splits["train"]) + 3 * reviews
    assert pairs[: len(splits["train"])] == splits["train"]
    assert train_sentiment.training_pairs(train_sentiment.RunConfig(data="sst2"), splits["train"],
                                          fdu["train"]) == splits["train"]


def test_init_from_copies_the_weights_and_the_rows_of_shared_words(tmp_path):
    source = train_sentiment.main(["--profile", "quick", "--no-store", "--max-vocab", "30",
                                   "--checkpoint-dir", str(tmp_path / "ck")])["folder"]
    trained = SentimentClassifier.load(source)
    vocab = Vocab([*trained.vocab.itos[:10], "zebra"])
    module = SentimentRNN(replace(trained.module.config, vocab_size=len(vocab))).float()
    train_sentiment.init_from(source, module, vocab)
    torch.testing.assert_close(module.embedding.weight[:10], trained.module.embedding.weight[:10].float())
    assert not torch.equal(module.embedding.weight[10], torch.zeros_like(module.embedding.weight[10]))
    torch.testing.assert_close(module.rnn.weight_hh_l0, trained.module.rnn.weight_hh_l0.float())
    wider = SentimentRNN(replace(trained.module.config, vocab_size=len(vocab), embedding_dim=8))
    with pytest.raises(SystemExit, match="embedding_dim"):
        train_sentiment.init_from(source, wider, vocab)


def test_generator_smoke_writes_a_complete_artifact(tmp_path):
    metrics = train_generator.main(["--profile", "quick", "--steps", "20", "--eval-every", "10",
                                    "--weight-drop", "0.3", "--no-store",
                                    "--checkpoint-dir", str(tmp_path / "ck")])
    folder = Path(metrics["folder"])
    check_artifact(folder, {"vocab.json"}, "generator")
    shipped = CharGenerator.load(folder)
    assert shipped.module.config.weight_drop == 0.3
    assert len(shipped.generate("the ", 10, seed=1)) == 10
    assert metrics["test"] == evaluate.char_loss(shipped, data.shakespeare_splits()["val"])


def test_generator_ema_ships_the_average_and_resumes_averaging(tmp_path):
    flags = ["--profile", "quick", "--eval-every", "10", "--ema", "0.5", "--no-store",
             "--checkpoint-dir", str(tmp_path / "ck")]
    train_generator.main([*flags, "--steps", "10"])
    mark_checkpoint(tmp_path / "ck", 1e6)
    metrics = train_generator.main([*flags, "--steps", "20", "--resume"])
    assert metrics["training_seconds"] > 1e6  # it did resume
    last = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["model"]
    assert int(last["ema.n_averaged"]) == 20  # one update per step, across the resume
    best = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    shipped = CharGenerator.load(Path(metrics["folder"])).module.state_dict()
    for key, value in shipped.items():
        assert torch.equal(value, best[f"ema.module.{key}"].half().float()), key
    assert not all(torch.equal(best[f"ema.module.{k}"], best[f"model.{k}"]) for k in shipped)
    compared = averaged_vs_raw.main([str(tmp_path / "ck" / "best.pt"), "--profile", "quick"])
    # the averaged weights are what shipped (in fp16), the raw ones score differently
    assert compared["averaged"]["val_loss"] == pytest.approx(metrics["test"]["val_loss"], abs=2e-3)
    assert compared["raw"]["val_loss"] != compared["averaged"]["val_loss"]


def test_generator_init_from_goes_on_from_an_artifact_and_refuses_another_architecture(tmp_path):
    flags = ["--profile", "quick", "--no-store", "--eval-every", "10"]
    first = train_generator.main([*flags, "--steps", "10", "--checkpoint-dir", str(tmp_path / "a")])
    # at learning rate 0 a fine-tune ships its starting weights: the artifact's, not fresh ones
    tuned = train_generator.main([*flags, "--steps", "10", "--lr", "0", "--dropout", "0.5",
                                  "--init-from", first["folder"],
                                  "--checkpoint-dir", str(tmp_path / "b")])
    before = CharGenerator.load(first["folder"]).module.state_dict()
    after = CharGenerator.load(tuned["folder"]).module
    assert after.config.dropout == 0.5
    for key, value in before.items():
        assert torch.equal(value, after.state_dict()[key]), key
    assert tuned["test"] == first["test"]
    with pytest.raises(ArtifactError, match="architecture"):
        train_generator.main([*flags, "--steps", "10", "--hidden-size", "64",
                              "--init-from", first["folder"], "--checkpoint-dir", str(tmp_path / "c")])


@pytest.mark.skipif(not flags.cpu_has_bfloat16(), reason="this CPU has no bfloat16 in oneDNN")
def test_autocast_bfloat16_runs_the_steps_in_bfloat16_and_keeps_float32_weights(tmp_path,
                                                                               monkeypatch):
    seen = []
    forward = CharLM.forward

    def spy(self, tokens, state=None):
        logits, state = forward(self, tokens, state)
        seen.append((self.training, logits.dtype))
        return logits, state

    monkeypatch.setattr(CharLM, "forward", spy)
    metrics = train_generator.main(["--profile", "quick", "--steps", "10", "--eval-every", "10",
                                    "--autocast", "bfloat16", "--no-store",
                                    "--checkpoint-dir", str(tmp_path / "ck")])
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # validation
    last = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert {v.dtype for v in last["model"].values() if v.is_floating_point()} == {torch.float32}
    assert metrics["run_config"]["autocast"] == "bfloat16"
    assert 0 < metrics["test"]["val_loss"] < 10


def test_autocast_bfloat16_on_a_cpu_without_it_stops_with_the_flag_named(tmp_path, monkeypatch):
    monkeypatch.setattr(flags, "cpu_has_bfloat16", lambda: False)
    with pytest.raises(SystemExit, match="--autocast bfloat16: this CPU has no bfloat16"):
        train_generator.main(["--profile", "quick", "--steps", "10", "--eval-every", "10",
                              "--autocast", "bfloat16", "--no-store",
                              "--checkpoint-dir", str(tmp_path / "ck")])


def test_the_artifact_names_the_commit_its_run_started_from(tmp_path, monkeypatch):
    head = ["a" * 40]
    train_epoch = loop.train_epoch

    def train_and_move_head(*args, **kwargs):
        loss = train_epoch(*args, **kwargs)
        head[0] = "b" * 40  # someone commits while the run trains
        return loss

    monkeypatch.setattr(loop, "train_epoch", train_and_move_head)
    monkeypatch.setattr(artifact_writer.subprocess, "run",
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, head[0], ""))
    artifact_writer.git_commit.cache_clear()
    try:
        metrics = train_generator.main(["--profile", "quick", "--steps", "10", "--eval-every", "10",
                                        "--no-store", "--checkpoint-dir", str(tmp_path / "ck")])
    finally:
        artifact_writer.git_commit.cache_clear()
    assert metrics["git_commit"] == "a" * 40


def test_sentiment_ema_ships_the_average(tmp_path):
    metrics = train_sentiment.main(["--profile", "quick", "--ema", "0.9", "--no-store",
                                    "--checkpoint-dir", str(tmp_path / "ck")])
    best = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    shipped = SentimentClassifier.load(Path(metrics["folder"])).module.state_dict()
    for key, value in shipped.items():
        assert torch.equal(value, best[f"ema.module.{key}"].half().float()), key
    assert not torch.equal(best["ema.module.classifier.weight"], best["model.classifier.weight"])


def test_distillation_loss_mixes_the_labels_and_the_softened_teacher():
    torch.manual_seed(0)
    logits, teacher = torch.randn(5, 2), torch.randn(5, 2)
    labels = torch.tensor([0, 1, 1, 0, 1])
    loss = train_sentiment.distillation_loss
    hard = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.equal(loss(logits, labels, teacher, 0.0, 2.0), hard)
    # by hand: KL(p || q) of the teacher's and the student's softmax at T = 2, mean over rows
    p, q = torch.softmax(teacher / 2, -1), torch.softmax(logits / 2, -1)
    kl = (p * (p / q).log()).sum(-1).mean()
    torch.testing.assert_close(loss(logits, labels, teacher, 0.25, 2.0), 0.75 * hard + 0.25 * 4 * kl)
    # the teacher's term is nothing when the student agrees with it, and pulls the student to it
    assert loss(teacher, labels, teacher, 1.0, 2.0).abs() < 1e-6
    student = logits.clone().requires_grad_()
    loss(student, labels, teacher, 1.0, 2.0).backward()
    moved = (student - 0.5 * student.grad).detach()
    assert (torch.softmax(moved, -1) - torch.softmax(teacher, -1)).abs().sum() < \
        (torch.softmax(logits, -1) - torch.softmax(teacher, -1)).abs().sum()


def test_sentiment_distills_from_a_teacher_artifact(tmp_path):
    flags = ["--profile", "quick", "--no-store"]
    teacher = train_sentiment.main([*flags, "--checkpoint-dir", str(tmp_path / "teacher")])["folder"]
    texts = [text for text, _ in data.sst2_splits()["train"][:40]]
    # batched by length, the logits stay with their own text
    model = SentimentClassifier.load(teacher)
    alone = torch.cat([model.logits(model.collate([model.encode(text)])) for text in texts])
    torch.testing.assert_close(train_sentiment.teacher_logits(teacher, texts), alone.detach())
    metrics = train_sentiment.main([*flags, "--hidden-size", "32", "--distill-from", teacher,
                                    "--distill-weight", "0.7", "--checkpoint-dir", str(tmp_path / "student")])
    assert metrics["run_config"]["distill_from"] == teacher
    assert SentimentClassifier.load(metrics["folder"]).module.config.hidden_size == 32
    assert f"Distilled from {teacher}" in (Path(metrics["folder"]) / "README.md").read_text()
    # a shipped teacher (models/pretrained/) is named by its store tag
    (Path(teacher) / "bentoml.json").write_text(json.dumps({"name": "sentiment-rnn", "version": "v1"}))
    assert train_sentiment.teacher_name(teacher) == "sentiment-rnn:v1"
    with pytest.raises(ArtifactError):
        train_sentiment.main([*flags, "--distill-from", str(tmp_path),
                              "--checkpoint-dir", str(tmp_path / "none")])


def test_averaged_vs_raw_refuses_a_checkpoint_without_an_average(tmp_path):
    train_generator.main(["--profile", "quick", "--steps", "10", "--eval-every", "10", "--no-store",
                          "--checkpoint-dir", str(tmp_path / "ck")])
    with pytest.raises(SystemExit, match="no averaged weights"):
        averaged_vs_raw.main([str(tmp_path / "ck" / "last.pt"), "--profile", "quick"])


def test_translator_smoke_writes_a_complete_artifact(tmp_path):
    metrics = train_translator.main(["--profile", "quick", "--epochs", "1", "--no-store",
                                     "--source-vocab", "40", "--target-vocab", "40",
                                     "--checkpoint-dir", str(tmp_path / "ck")])
    folder = Path(metrics["folder"])
    check_artifact(folder, {"source.model", "target.model"}, "translator")
    out = Translator.load(folder).translate(["ein mann läuft"], beam_size=2)
    assert isinstance(out[0].translation, str)
    assert {"bleu", "bleu_lowercase", "bleu_greedy"} <= set(metrics["test"])


def test_resume_continues_from_the_checkpoint(tmp_path):
    flags = ["--profile", "quick", "--no-store", "--checkpoint-dir", str(tmp_path / "ck")]
    first = train_sentiment.main([*flags, "--epochs", "1"])
    mark_checkpoint(tmp_path / "ck", 1e6)
    resumed = train_sentiment.main([*flags, "--epochs", "2", "--resume"])
    assert first["epochs_run"] == 1 and resumed["epochs_run"] == 2
    assert resumed["training_seconds"] > 1e6  # the first epoch's progress carried on
    assert (tmp_path / "ck" / "best.pt").is_file()
    # without --resume the same folder starts afresh
    fresh = train_sentiment.main([*flags, "--epochs", "1"])
    assert fresh["training_seconds"] < 1e6


@pytest.mark.parametrize("flags, message", [
    (["--cell", "transformer"], "invalid choice"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr", "-1"], "--lr must be >= 0.0"),
    (["--epochs", "two"], "invalid int value"),
    (["--dropout", "1.5"], "--dropout must be <= 1.0, got 1.5"),
    (["--autocast", "float16"], "invalid choice"),
])
def test_bad_flags_exit_with_a_clear_error(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_sentiment.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_average_that_never_moves_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_generator.main(["--ema", "1"])
    assert exit_info.value.code == 2
    assert "--ema must be <= 0.9999, got 1.0" in capsys.readouterr().err


def test_a_weight_drop_that_drops_every_weight_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_generator.main(["--weight-drop", "1"])
    assert exit_info.value.code == 2
    assert "--weight-drop must be <= 0.99, got 1.0" in capsys.readouterr().err


@pytest.mark.parametrize("script", [train_sentiment, train_generator, train_translator])
def test_help_lists_every_flag(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--profile" in out and "--seed" in out and "--resume" in out


def test_cuda_device_is_refused_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        train_sentiment.main(["--profile", "quick", "--device", "cuda", "--no-store"])


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_with_ddp(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "fake_data.py"), "training.train_sentiment", "--profile", "quick",
         "--epochs", "1", "--weight-drop", "0.2",  # functional_call under DDP's hooks too
         "--no-store", "--checkpoint-dir", str(tmp_path / "ck")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1: train loss" in result.stderr
    for rank in (0, 1):  # both processes joined one gloo group
        assert f"distributed data parallel: rank {rank} of 2 (gloo)" in result.stderr
    assert (tmp_path / "ck" / "best.pt").is_file()
