"""models.quantize: float16-weight, bfloat16 and int8 copies answer like the float models, and leave
them untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.generator import CharGenerator
from models.names import PRECISIONS
from models.quantize import COPIES, bfloat16, dynamic_float16, dynamic_int8, with_precision
from models.sentiment import SentimentClassifier
from models.translator import Translator
from models.vocab import BOS_ID

from support.tiny_models import make_tiny_generator, make_tiny_sentiment, make_tiny_translator

REVIEWS = ["good film", "the plot was not very funny but the actor is great", "a dull boring film"]


def teacher_forced_logits(translator: Translator) -> torch.Tensor:
    """The decoder's logits (B, T, V) for made-up source and target ids: no search involved."""
    source, lengths = translator.collate([translator.encode_source(text) for text in
                                          ("der film", "ein gutes buch ist nicht lang")])
    target_in, _ = translator.collate([[BOS_ID, 7, 9, 11], [BOS_ID, 5, 6, 8]])
    return translator.module(source, lengths, target_in).float()


def quantized_layers(module: nn.Module) -> set[str]:
    return {type(m).__module__ for m in module.modules() if "quantized" in type(m).__module__}


def as_shipped(module: nn.Module) -> nn.Module:
    """`module` with every weight rounded to float16 and held as float32: what loading a shipped
    artifact (stored in float16) gives."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(parameter.half().float())
    return module


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_float16_weights_answer_as_the_float_model_whatever_the_batchmates(cell):
    classifier = make_tiny_sentiment(cell=cell)
    as_shipped(classifier.module)
    before = {k: v.clone() for k, v in classifier.module.state_dict().items()}
    half = SentimentClassifier(dynamic_float16(classifier.module), classifier.vocab)
    assert quantized_layers(half.module) and not quantized_layers(classifier.module)
    for key, value in classifier.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    # weights that are float16 values already lose nothing: only the order of the sums changes
    probabilities = half.predict_proba(REVIEWS)
    assert probabilities.dtype == torch.float32
    torch.testing.assert_close(probabilities, classifier.predict_proba(REVIEWS), atol=1e-6, rtol=0)
    assert torch.equal(half.predict_proba(REVIEWS[:2])[0], half.predict_proba(REVIEWS[::2])[0])


def test_float16_generator_steps_alike_alone_and_in_a_batch():
    generator = make_tiny_generator(cell="lstm")
    as_shipped(generator.module)
    half = CharGenerator(dynamic_float16(generator.module), generator.vocab)
    logits, _ = half.module(torch.tensor([half.encode("To be")]))
    reference, _ = generator.module(torch.tensor([generator.encode("To be")]))
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    tokens = torch.tensor([3, 7, 11])
    state = tuple(torch.randn_like(part) for part in half.module.init_state(3))
    batched, _ = half.module.step(tokens, state)
    alone, _ = half.module.step(tokens[1:2], tuple(part[:, 1:2] for part in state))
    # FBGEMM's AVX512 kernels give a row the same bits in any batch; its AVX2 ones sum in another
    # order for one row than for three (here up to 9e-8 apart): float32 rounding, no more
    torch.testing.assert_close(batched[1:2], alone, atol=1e-6, rtol=0)
    assert half.generate("To be", max_tokens=20, seed=3) == half.generate("To be", max_tokens=20, seed=3)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_float16_translator_decodes_with_attention_rows_summing_to_one(cell):
    translator = make_tiny_translator(cell=cell)
    as_shipped(translator.module)
    half = Translator(dynamic_float16(translator.module), translator.source_spm, translator.target_spm)
    torch.testing.assert_close(teacher_forced_logits(half), teacher_forced_logits(translator),
                               atol=1e-5, rtol=0)
    for translation in half.translate(["der film", "ein gutes buch ist nicht lang"], beam_size=2,
                                      max_length=12):
        assert len(translation.target_tokens) <= 12
        for row in translation.attention:
            assert sum(row) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_int8_sentiment_is_close_to_float_and_the_float_model_is_untouched(cell):
    classifier = make_tiny_sentiment(cell=cell)
    before = {k: v.clone() for k, v in classifier.module.state_dict().items()}
    int8 = SentimentClassifier(dynamic_int8(classifier.module), classifier.vocab)
    assert quantized_layers(int8.module) and not quantized_layers(classifier.module)
    for key, value in classifier.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(int8.predict_proba(REVIEWS), classifier.predict_proba(REVIEWS),
                               atol=0.02, rtol=0)


def test_int8_generator_steps_from_its_own_zero_state():
    generator = make_tiny_generator(cell="lstm")
    int8 = CharGenerator(dynamic_int8(generator.module), generator.vocab)
    state = int8.module.init_state(3)
    assert all(part.dtype == torch.float32 and not bool(part.any()) for part in state)
    logits, _ = int8.module(torch.tensor([int8.encode("To be")]))
    reference, _ = generator.module(torch.tensor([generator.encode("To be")]))
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0)
    assert len(int8.generate("To be", max_tokens=20, seed=3)) == 20


def test_int8_translator_decodes_with_attention_rows_summing_to_one():
    translator = make_tiny_translator(cell="gru")
    int8 = Translator(dynamic_int8(translator.module), translator.source_spm, translator.target_spm)
    torch.testing.assert_close(teacher_forced_logits(int8), teacher_forced_logits(translator),
                               atol=0.02, rtol=0)
    translations = int8.translate(["der film", "ein gutes buch ist nicht lang"], beam_size=2,
                                  max_length=12)
    assert len(translations) == 2
    for translation in translations:
        assert isinstance(translation.translation, str)
        assert len(translation.target_tokens) <= 12
        for row in translation.attention:
            assert sum(row) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("copy", [dynamic_int8, dynamic_float16])
def test_the_elman_rnn_stays_float(copy):
    classifier = make_tiny_sentiment(cell="rnn")
    lowered = copy(classifier.module)
    assert type(lowered.rnn) is nn.RNN
    assert "quantized" in type(lowered.classifier).__module__


def test_with_precision():
    module = make_tiny_sentiment().module
    assert with_precision(module, "float32") is module
    assert quantized_layers(with_precision(module, "int8"))
    assert quantized_layers(with_precision(module, "float16"))
    assert {p.dtype for p in with_precision(module, "bfloat16").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="precision must be one of"):
        with_precision(module, "int4")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_bfloat16_sentiment_is_close_to_float_and_answers_in_float32(cell):
    classifier = make_tiny_sentiment(cell=cell)
    half = SentimentClassifier(bfloat16(classifier.module), classifier.vocab)
    probabilities = half.predict_proba(REVIEWS)
    assert probabilities.dtype == torch.float32
    torch.testing.assert_close(probabilities, classifier.predict_proba(REVIEWS), atol=0.02, rtol=0)
    # each value is rounded on its own: other batchmates, the same answer
    assert torch.equal(half.predict_proba(REVIEWS[:2])[0], half.predict_proba(REVIEWS[::2])[0])


def test_bfloat16_generator_steps_from_a_bfloat16_zero_state():
    generator = make_tiny_generator(cell="gru")
    half = CharGenerator(bfloat16(generator.module), generator.vocab)
    assert all(part.dtype == torch.bfloat16 for part in half.module.init_state(2))
    logits, _ = half.module(torch.tensor([half.encode("To be")]))
    reference, _ = generator.module(torch.tensor([generator.encode("To be")]))
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0)
    assert half.generate("To be", max_tokens=20, seed=3) == half.generate("To be", max_tokens=20, seed=3)


def test_bfloat16_translator_decodes_with_attention_rows_summing_to_one():
    translator = make_tiny_translator(cell="lstm")
    half = Translator(bfloat16(translator.module), translator.source_spm, translator.target_spm)
    torch.testing.assert_close(teacher_forced_logits(half), teacher_forced_logits(translator),
                               atol=0.02, rtol=0)
    for translation in half.translate(["der film", "ein gutes buch ist nicht lang"], beam_size=2,
                                      max_length=12):
        assert len(translation.target_tokens) <= 12
        for row in translation.attention:
            assert sum(row) == pytest.approx(1.0, abs=1e-2)


def test_every_precision_named_for_the_settings_is_made_here():
    # service.config checks RNNSERVE_PRECISION against models.names, which cannot import torch
    assert tuple(["float32", *COPIES]) == PRECISIONS
    for precision in PRECISIONS:
        assert isinstance(with_precision(make_tiny_sentiment().module, precision), nn.Module)
