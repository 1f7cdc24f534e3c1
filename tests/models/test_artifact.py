"""models.artifact, through every pipeline's save/load: a folder rebuilds the same model or fails loudly."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.artifact import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    check_vocab_size,
    read_config,
    write_json,
)
from models.generator import VOCAB_FILE as GENERATOR_VOCAB
from models.generator import CharGenerator
from models.sentiment import VOCAB_FILE as SENTIMENT_VOCAB
from models.sentiment import SentimentClassifier
from models.translator import SOURCE_SPM, Translator
from models.vocab import BOS_ID, Vocab
from training.subwords import train_sentencepiece

from support.tiny_models import (
    made_up_sentences,
    make_tiny_generator,
    make_tiny_sentiment,
    make_tiny_translator,
)


def sentiment_outputs(pipeline: SentimentClassifier) -> list:
    return [pipeline.predict_proba(["a good film", "not very funny but long", "", "zzz"])]


def generator_outputs(pipeline: CharGenerator) -> list:
    with torch.inference_mode():
        logits, state = pipeline.module(torch.tensor([pipeline.encode("The plot, a story.")]))
    return [logits, *state, pipeline.generate("It was", 20, temperature=1.0, seed=3)]


def translator_outputs(pipeline: Translator) -> list:
    sequences = [pipeline.encode_source(t) for t in ("the film was good", "a plot")]
    source, lengths = pipeline.collate(sequences)
    target_in = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 8, 9, 10]])
    with torch.inference_mode():
        logits = pipeline.module(source, lengths, target_in)
    hyps = pipeline.translate_ids(sequences, [2, 1], [8, 8])
    return [logits, *[h.tokens for h in hyps], *[h.attention for h in hyps]]


@dataclass(frozen=True)
class Case:
    task: str
    make: Callable
    cls: type
    outputs: Callable[..., list]


CASES = {
    "sentiment": Case("sentiment", make_tiny_sentiment, SentimentClassifier, sentiment_outputs),
    "sentiment-subwords": Case("sentiment", partial(make_tiny_sentiment, subword_buckets=50),
                               SentimentClassifier, sentiment_outputs),
    "generator": Case("generator", make_tiny_generator, CharGenerator, generator_outputs),
    "translator": Case("translator", make_tiny_translator, Translator, translator_outputs),
}


def assert_identical(expected: list, actual: list) -> None:
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual, strict=True):
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b)
        else:
            assert a == b


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


def test_fp32_save_load_gives_bit_identical_outputs(case, tmp_path):
    pipeline = case.make()
    pipeline.save(tmp_path)
    assert all(t.dtype in (torch.float32, torch.int64) for t in load_file(tmp_path / WEIGHTS_FILE).values())
    loaded = case.cls.load(tmp_path)
    assert not loaded.module.training
    assert_identical(case.outputs(pipeline), case.outputs(loaded))


def test_fp16_save_load_is_stable_and_close(case, tmp_path):
    pipeline = case.make()
    pipeline.save(tmp_path / "first", dtype=torch.float16)
    stored = load_file(tmp_path / "first" / WEIGHTS_FILE)
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    first = case.cls.load(tmp_path / "first")
    # fp16 storage is cast back to the module's own dtype on load
    assert all(p.dtype == torch.float32 for p in first.module.parameters())
    first.save(tmp_path / "second", dtype=torch.float16)
    second = case.cls.load(tmp_path / "second")
    assert_identical(case.outputs(first), case.outputs(second))
    # rounding to fp16 moves the weights, but only by fp16's precision
    for name, value in pipeline.module.state_dict().items():
        torch.testing.assert_close(first.module.state_dict()[name], value, atol=1e-3, rtol=1e-3)


def corrupt_tokenizer(case: Case, pipeline, folder: Path) -> None:
    """Overwrite the tokenizer with one of a different size than the embedding."""
    if case.task == "translator":
        other = train_sentencepiece(made_up_sentences(300, 7, words=["x", "y", "z"]), vocab_size=12)
        assert other.get_piece_size() != pipeline.config.source_vocab_size
        (folder / SOURCE_SPM).write_bytes(other.serialized_model_proto())
    else:
        name = SENTIMENT_VOCAB if case.task == "sentiment" else GENERATOR_VOCAB
        Vocab(pipeline.vocab.itos[:-1]).save(folder / name)


def test_tokenizer_that_disagrees_with_the_embedding_is_rejected(case, tmp_path):
    pipeline = case.make()
    pipeline.save(tmp_path)
    corrupt_tokenizer(case, pipeline, tmp_path)
    with pytest.raises(ArtifactError, match="embedding has"):
        case.cls.load(tmp_path)


@pytest.mark.parametrize(("saved", "loader"), [(a, b) for a in CASES for b in CASES
                                               if CASES[a].task != CASES[b].task])
def test_loading_an_artifact_of_another_task_is_rejected(saved, loader, tmp_path):
    CASES[saved].make().save(tmp_path)
    with pytest.raises(ArtifactError, match=f"task {CASES[saved].task!r}, not {CASES[loader].task!r}"):
        CASES[loader].cls.load(tmp_path)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, CONFIG_FILE])
def test_missing_file_is_rejected(case, missing, tmp_path):
    case.make().save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ArtifactError, match=missing):
        case.cls.load(tmp_path)


def test_weights_that_do_not_fit_the_config_are_rejected(case, tmp_path):
    case.make().save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["model"]["hidden_size"] += 1
    write_json(tmp_path / CONFIG_FILE, config)
    with pytest.raises(ArtifactError, match="do not fit"):
        case.cls.load(tmp_path)


def test_other_format_version_is_rejected(tmp_path):
    write_json(tmp_path / CONFIG_FILE, {"format_version": 999, "task": "sentiment", "model": {}})
    with pytest.raises(ArtifactError, match="format_version"):
        read_config(tmp_path, "sentiment")


def test_check_vocab_size():
    check_vocab_size("vocab.json", 10, 10)
    with pytest.raises(ArtifactError, match="vocab.json: tokenizer has 9 entries, embedding has 10 rows"):
        check_vocab_size("vocab.json", 9, 10)
