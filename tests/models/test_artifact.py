"""models.artifact, through every pipeline's save/load: a folder rebuilds the same model or fails loudly."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import integrity
from models.artifact import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    ROW_SCALE_SUFFIX,
    WEIGHTS_FILE,
    ArtifactError,
    check_vocab_size,
    quantize_rows,
    read_config,
    record_checksums,
    write_json,
)
from models.generator import VOCAB_FILE as GENERATOR_VOCAB
from models.generator import CharGenerator
from models.integrity import EXPONENT_MASKS, ITEM_SIZES, has_non_finite
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


def test_int8_rows_are_within_half_a_step_and_a_zero_row_stays_zero():
    weight = torch.randn(6, 40) * torch.tensor([[0.01], [1.0], [30.0], [0.0], [2.0], [5.0]])
    rows, scale = quantize_rows(weight, torch.float16)
    assert rows.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (6, 1)
    assert rows.abs().max() == 127
    restored = rows.float() * scale.float()
    assert torch.all((restored - weight).abs() <= scale.float() / 2 + 1e-6)
    assert torch.equal(restored[3], torch.zeros(40))


@pytest.mark.parametrize("subword_buckets", [0, 50])
def test_int8_embeddings_halve_the_tables_and_answer_as_the_float_weights(subword_buckets, tmp_path):
    pipeline = make_tiny_sentiment(subword_buckets=subword_buckets)
    pipeline.save(tmp_path / "fp16", dtype=torch.float16)
    pipeline.save(tmp_path / "int8", dtype=torch.float16, int8_embeddings=True)
    stored = load_file(tmp_path / "int8" / WEIGHTS_FILE)
    tables = ["embedding.weight"] + (["subwords.weight"] if subword_buckets else [])
    for name in tables:
        assert stored[name].dtype == torch.int8
        assert stored[name + ROW_SCALE_SUFFIX].shape == (stored[name].shape[0], 1)
    assert sorted(k for k in stored if k.endswith(ROW_SCALE_SUFFIX)) == [t + ROW_SCALE_SUFFIX for t in tables]
    sizes = {kind: (tmp_path / kind / WEIGHTS_FILE).stat().st_size for kind in ("fp16", "int8")}
    assert sizes["int8"] < sizes["fp16"]
    loaded = SentimentClassifier.load(tmp_path / "int8")
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    for name in tables:  # each value within half its row's step
        step = stored[name + ROW_SCALE_SUFFIX].float()
        assert torch.all((loaded.module.state_dict()[name] - pipeline.module.state_dict()[name]).abs()
                         <= step / 2 + 1e-3 * step + 1e-6)
    torch.testing.assert_close(sentiment_outputs(loaded)[0], sentiment_outputs(pipeline)[0],
                               atol=0.02, rtol=0)


def test_an_int8_artifact_saved_again_stores_the_same_rows_and_scales(tmp_path):
    """train_ngram saves, loads and saves again: the second save must not move the weights."""
    save = partial(SentimentClassifier.save, dtype=torch.float16, int8_embeddings=True)
    save(make_tiny_sentiment(subword_buckets=50), tmp_path / "first")
    save(SentimentClassifier.load(tmp_path / "first"), tmp_path / "second")
    first, second = (load_file(tmp_path / name / WEIGHTS_FILE) for name in ("first", "second"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_int8_rows_whose_scales_do_not_fit_are_refused(tmp_path):
    make_tiny_sentiment().save(tmp_path, dtype=torch.float16, int8_embeddings=True)
    path = tmp_path / WEIGHTS_FILE
    state = load_file(path)
    key = "embedding.weight" + ROW_SCALE_SUFFIX
    state[key] = state[key][:-1].contiguous()  # one scale short
    save_file(state, path)
    record_checksums(tmp_path)
    with pytest.raises(ArtifactError, match="does not scale the rows"):
        SentimentClassifier.load(tmp_path)


def test_only_2d_tensors_of_the_module_can_be_int8_rows(tmp_path):
    from models.artifact import save_module

    pipeline = make_tiny_sentiment()
    with pytest.raises(ValueError, match="not 2-D tensors"):
        save_module(tmp_path, "sentiment", pipeline.module.config, pipeline.module, int8_rows=("nope",))


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
    record_checksums(tmp_path)  # a writer that wrote them inconsistent, not damage after writing
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
    record_checksums(tmp_path)
    with pytest.raises(ArtifactError, match="do not fit"):
        case.cls.load(tmp_path)


def test_other_format_version_is_rejected(tmp_path):
    make_tiny_sentiment().save(tmp_path)
    write_json(tmp_path / CONFIG_FILE, {"format_version": 999, "task": "sentiment", "model": {}})
    record_checksums(tmp_path)
    with pytest.raises(ArtifactError, match="format_version"):
        read_config(tmp_path, "sentiment")


def test_check_vocab_size():
    check_vocab_size("vocab.json", 10, 10)
    with pytest.raises(ArtifactError, match="vocab.json: tokenizer has 9 entries, embedding has 10 rows"):
        check_vocab_size("vocab.json", 9, 10)


# -- integrity: checksums recorded at write, verified at load; non-finite weights refused ----------

def test_save_records_the_sha256_and_size_of_every_file(case, tmp_path):
    case.make().save(tmp_path)
    recorded = json.loads((tmp_path / CHECKSUMS_FILE).read_text())["files"]
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != CHECKSUMS_FILE}
    assert recorded == {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                        for name, data in files.items()}


def flip_byte(path: Path, position: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * position)] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_any_file_is_refused_naming_the_file(case, tmp_path):
    case.make().save(tmp_path)
    pristine = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name in sorted(pristine.keys() - {CHECKSUMS_FILE}):
        flip_byte(tmp_path / name)
        with pytest.raises(ArtifactError, match=rf"/{name}: sha256 .* the file changed after it was written"):
            case.cls.load(tmp_path)
        (tmp_path / name).write_bytes(pristine[name])
    case.cls.load(tmp_path)  # every file restored: loads again


def test_truncated_weights_are_refused_naming_the_file(case, tmp_path):
    case.make().save(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    with pytest.raises(ArtifactError, match=rf"/{WEIGHTS_FILE}: {size // 2:,} bytes where "
                                            rf"{CHECKSUMS_FILE} recorded {size:,}: the file is truncated"):
        case.cls.load(tmp_path)


def test_a_file_missing_from_the_checksums_is_refused(case, tmp_path):
    case.make().save(tmp_path)
    manifest = json.loads((tmp_path / CHECKSUMS_FILE).read_text())
    del manifest["files"][WEIGHTS_FILE]
    write_json(tmp_path / CHECKSUMS_FILE, manifest)
    with pytest.raises(ArtifactError, match=rf"/{WEIGHTS_FILE}: not in {CHECKSUMS_FILE}"):
        case.cls.load(tmp_path)


def test_an_extra_file_is_refused_but_the_stores_own_files_are_not(case, tmp_path):
    pipeline = case.make()
    pipeline.save(tmp_path)
    # what BentoML's store and training.store put beside an artifact
    (tmp_path / "model.yaml").write_text("name: x\n")
    write_json(tmp_path / "bentoml.json", {"name": "x"})
    assert_identical(case.outputs(pipeline), case.outputs(case.cls.load(tmp_path)))
    (tmp_path / "extra.bin").write_bytes(b"\0")
    with pytest.raises(ArtifactError, match=rf"/extra.bin: not in {CHECKSUMS_FILE}: the artifact was"):
        case.cls.load(tmp_path)


def test_a_file_listed_but_gone_is_refused(tmp_path):
    make_tiny_sentiment().save(tmp_path)
    (tmp_path / SENTIMENT_VOCAB).unlink()
    with pytest.raises(ArtifactError,
                       match=rf"missing artifact file: .*/{SENTIMENT_VOCAB} \({CHECKSUMS_FILE} lists it\)"):
        SentimentClassifier.load(tmp_path)


@pytest.mark.parametrize("text", ["not json", '{"files": {"config.json": {"sha256": 1}}}', "[]"])
def test_an_unreadable_checksums_file_is_refused(tmp_path, text):
    make_tiny_sentiment().save(tmp_path)
    (tmp_path / CHECKSUMS_FILE).write_text(text)
    with pytest.raises(ArtifactError, match=rf"/{CHECKSUMS_FILE}: not a readable checksums file"):
        SentimentClassifier.load(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_at_write(case, tmp_path, bad):
    pipeline = case.make()
    name, parameter = next(iter(pipeline.module.named_parameters()))
    with torch.no_grad():
        parameter.view(-1)[3] = bad
    with pytest.raises(ArtifactError, match=rf"refusing to write weights: tensor '{name}' holds 1 NaN"):
        pipeline.save(tmp_path)
    assert not (tmp_path / WEIGHTS_FILE).exists()


def test_weights_that_overflow_fp16_are_refused_at_write(tmp_path):
    pipeline = make_tiny_sentiment()
    with torch.no_grad():
        pipeline.module.embedding.weight[0, 0] = 1e5  # fp16 tops out at 65504
    pipeline.save(tmp_path / "fp32")
    with pytest.raises(ArtifactError,
                       match=r"'embedding.weight' holds 1 NaN or infinite values \(as torch.float16\)"):
        pipeline.save(tmp_path / "fp16", dtype=torch.float16)


def write_weights_with_a_nan(folder: Path, dtype: torch.dtype) -> str:
    """Rewrite the weights with one NaN, as a writer without our checks would."""
    state = load_file(folder / WEIGHTS_FILE)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state[name].view(-1)[-1] = float("nan")
    save_file(state, str(folder / WEIGHTS_FILE))
    return name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_checksums", [True, False])
def test_non_finite_weights_are_refused_at_load(case, tmp_path, dtype, with_checksums):
    case.make().save(tmp_path)
    name = write_weights_with_a_nan(tmp_path, dtype)
    if with_checksums:
        record_checksums(tmp_path)
    else:
        (tmp_path / CHECKSUMS_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"/{WEIGHTS_FILE}: tensor '{name}' holds NaN or infinite"):
        case.cls.load(tmp_path)


def test_without_checksums_an_artifact_loads_with_a_warning(case, tmp_path, caplog):
    pipeline = case.make()
    pipeline.save(tmp_path)
    (tmp_path / CHECKSUMS_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="models.artifact"):
        loaded = case.cls.load(tmp_path)
    assert f"no {CHECKSUMS_FILE}" in caplog.text and "cannot be verified" in caplog.text
    assert_identical(case.outputs(pipeline), case.outputs(loaded))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[: len(data) - 100], "the header describes .* the file is truncated"),
    (lambda data: data + b"\0" * 8, "the header describes .* the file is truncated or was appended to"),
    (lambda data: data[:5], "not a safetensors file: 5 bytes"),
    (lambda data: b"\xff" * 8 + data[8:], "not a safetensors file: its header claims"),
    (lambda data: data[:8] + b"#" + data[9:], "not a safetensors file: unreadable header"),
])
def test_damaged_weights_without_checksums_get_a_clear_error(tmp_path, damage, message):
    # an artifact stored before checksums were recorded: the layout of the weights is still read
    make_tiny_sentiment().save(tmp_path)
    (tmp_path / CHECKSUMS_FILE).unlink()
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ArtifactError, match=rf"/{WEIGHTS_FILE}: {message}"):
        SentimentClassifier.load(tmp_path)


def test_recording_named_files_keeps_the_other_entries(tmp_path):
    make_tiny_sentiment().save(tmp_path)
    before = json.loads((tmp_path / CHECKSUMS_FILE).read_text())["files"]
    write_json(tmp_path / "metrics.json", {"accuracy": 1.0})
    record_checksums(tmp_path, ["metrics.json"])
    after = json.loads((tmp_path / CHECKSUMS_FILE).read_text())["files"]
    assert after.keys() == before.keys() | {"metrics.json"}
    assert all(after[name] == entry for name, entry in before.items())
    SentimentClassifier.load(tmp_path)


# -- models.integrity's byte-level check of float weights, against torch's own isfinite -----------

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_16_bit_pattern_is_judged_as_torch_judges_it(dtype):
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    finite = torch.isfinite(patterns.view(DTYPES[dtype]).float()).tolist()
    data = patterns.numpy().tobytes()
    judged = [has_non_finite(data, 2 * i, 2 * i + 2, 2, EXPONENT_MASKS[dtype]) for i in range(2**16)]
    assert judged == [not f for f in finite]
    assert sum(judged) == 2 * 2 ** (7 if dtype == "BF16" else 10)  # +-inf and the NaNs


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("chunk_bytes", [integrity.CHUNK_BYTES, 30])  # 30: many chunks, uneven
def test_one_non_finite_value_among_extremes_is_found_where_it_lies(dtype, bad, chunk_bytes, monkeypatch):
    monkeypatch.setattr(integrity, "CHUNK_BYTES", chunk_bytes)
    info = torch.finfo(DTYPES[dtype])
    values = torch.tensor([info.max, info.min, info.tiny, -info.tiny, 0.0, -0.0, 1.0] * 50,
                          dtype=DTYPES[dtype])
    width = ITEM_SIZES[dtype]
    prefix = b"abc"  # the tensor starts at an odd offset, as in a safetensors file
    data = prefix + values.view(torch.uint8).numpy().tobytes()
    assert not has_non_finite(data, len(prefix), len(data), width, EXPONENT_MASKS[dtype])
    values[123] = bad
    data = prefix + values.view(torch.uint8).numpy().tobytes()
    assert has_non_finite(data, len(prefix), len(data), width, EXPONENT_MASKS[dtype])
    start = len(prefix) + 124 * width  # the same bytes after it: none there
    assert not has_non_finite(data, start, len(data), width, EXPONENT_MASKS[dtype])
