"""models.translator: masked attention, and beam search that decodes a sentence the same in any batch."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm
import torch

from models.artifact import ArtifactError
from models.translator import Seq2Seq, Translator, TranslatorConfig
from models.vocab import BOS_ID, EOS_ID, PAD_ID

from support.tiny_models import made_up_sentences, make_tiny_translator

TEXTS = [
    "the film was good",
    "a very long and dull story of an actor but the plot is funny",
    "bad",
    "",
    "it is not the movie",
]
# An untrained model rarely emits EOS, so it decodes up to its limit: keep the limits short.
LIMITS = [8, 10, 5, 3, 8]


@pytest.fixture(scope="module", params=[("gru", "additive"), ("lstm", "multiplicative"), ("rnn", "additive")],
                ids=lambda p: "-".join(p))
def translator(request) -> Translator:
    cell, attention = request.param
    return make_tiny_translator(cell=cell, attention=attention)


@pytest.mark.parametrize("attention", ["additive", "multiplicative"])
@torch.inference_mode()
def test_attention_sums_to_one_over_real_tokens_and_is_zero_on_padding(attention):
    pipeline = make_tiny_translator(attention=attention)
    sequences = [pipeline.encode_source(t) for t in TEXTS]
    source, lengths = pipeline.collate(sequences)  # (B, S), padded
    assert int(lengths.min()) < source.shape[1]
    torch.manual_seed(0)
    target_in = torch.randint(EOS_ID + 1, pipeline.config.target_vocab_size, (len(TEXTS), 6))
    target_in[:, 0] = BOS_ID
    enc, state = pipeline.module.encode(source, lengths)
    logits, _, weights = pipeline.module.decode(target_in, state, enc)
    assert logits.shape == (len(TEXTS), 6, pipeline.config.target_vocab_size)
    assert weights.shape == (len(TEXTS), 6, source.shape[1])
    for row, length in enumerate(lengths.tolist()):
        assert bool((weights[row, :, length:] == 0).all())
        assert bool((weights[row, :, :length] > 0).all())
        torch.testing.assert_close(weights[row, :, :length].sum(-1), torch.ones(6))


def test_unknown_attention_is_rejected():
    config = TranslatorConfig(source_vocab_size=10, target_vocab_size=10, attention="dot")
    with pytest.raises(ValueError, match="additive"):
        Seq2Seq(config)


def assert_same_hypotheses(batched, alone, source_lengths):
    for hyp, single, length in zip(batched, alone, source_lengths, strict=True):
        assert hyp.tokens == single.tokens
        assert hyp.attention.shape[0] == single.attention.shape[0] == len(hyp.tokens) + 1
        torch.testing.assert_close(hyp.attention[:, :length], single.attention[:, :length],
                                   rtol=1e-4, atol=1e-5)
        assert bool((hyp.attention[:, length:] == 0).all())


def test_batched_equals_one_by_one(translator):
    # beam 1 batched is checked against one-sentence greedy decoding in test_beam_size_one_is_greedy
    sequences = [translator.encode_source(t) for t in TEXTS]
    batched = translator.translate_ids(sequences, [3] * len(TEXTS), LIMITS)
    alone = [translator.translate_ids([s], [3], [m])[0] for s, m in zip(sequences, LIMITS, strict=True)]
    assert_same_hypotheses(batched, alone, [len(s) for s in sequences])


def test_mixed_beam_sizes_and_lengths_in_one_batch(translator):
    sequences = [translator.encode_source(t) for t in TEXTS[2:5]]
    beams, limits = [1, 4, 2], [7, None, 5]  # None: the default limit, 2 * source length + 10
    batched = translator.translate_ids(sequences, beams, limits)
    alone = [translator.translate_ids([s], [b], [m])[0]
             for s, b, m in zip(sequences, beams, limits, strict=True)]
    assert_same_hypotheses(batched, alone, [len(s) for s in sequences])


@torch.inference_mode()
def greedy(model: Seq2Seq, source_ids: list[int], max_length: int) -> list[int]:
    """Greedy decoding written out: argmax of every step; PAD and BOS never, EOS at the limit."""
    enc, state = model.encode(torch.tensor([source_ids]), torch.tensor([len(source_ids)]))
    token, out = BOS_ID, []
    for step in range(max_length):
        logits, state, _ = model.decode(torch.tensor([[token]]), state, enc)  # (1, 1, V)
        logp = torch.log_softmax(logits[0, 0], dim=-1)
        logp[PAD_ID] = logp[BOS_ID] = float("-inf")
        token = EOS_ID if step == max_length - 1 else int(logp.argmax())
        if token == EOS_ID:
            break
        out.append(token)
    return out


def test_beam_size_one_is_greedy(translator):
    sequences = [translator.encode_source(t) for t in TEXTS]
    hyps = translator.translate_ids(sequences, [1] * len(TEXTS), LIMITS)
    for hyp, source_ids, limit in zip(hyps, sequences, LIMITS, strict=True):
        assert hyp.tokens == greedy(translator.module, source_ids, limit)


def test_translation_attention_is_target_by_source(translator):
    for beam in (1, 3):
        for source_ids, result in zip([translator.encode_source(t) for t in TEXTS],
                                      translator.translate(TEXTS, beam_size=beam, max_length=8),
                                      strict=True):
            assert result.target_tokens[-1] == "</s>"
            assert len(result.source_tokens) == len(source_ids)
            assert result.source_tokens[-1] == "</s>"
            attention = torch.tensor(result.attention)
            assert attention.shape == (len(result.target_tokens), len(result.source_tokens))
            torch.testing.assert_close(attention.sum(-1), torch.ones(len(result.target_tokens)))
            assert result.translation == translator.target_spm.decode(
                [translator.target_spm.piece_to_id(p) for p in result.target_tokens[:-1]])


@pytest.mark.parametrize("max_length", [1, 2, 5])
def test_max_length_is_respected(tiny_translator, max_length):
    # max_length counts the EOS piece, like target_tokens does
    for beam in (1, 3):
        results = tiny_translator.translate(TEXTS, beam_size=beam, max_length=max_length)
        assert all(len(r.target_tokens) <= max_length for r in results)
    if max_length == 1:
        assert all(r.translation == "" and r.target_tokens == ["</s>"] for r in results)


def test_default_max_length_is_respected(tiny_translator):
    for text in ("bad", "the film was good"):
        ids = tiny_translator.encode_source(text)
        (hyp,) = tiny_translator.translate_ids([ids], [2], [None])
        assert len(hyp.tokens) + 1 <= tiny_translator.default_max_length(ids)


def test_encode_source_normalises_truncates_and_ends_with_eos(tiny_translator):
    assert tiny_translator.encode_source("") == [EOS_ID]
    assert tiny_translator.encode_source("  the   film ") == tiny_translator.encode_source("the film")
    assert tiny_translator.encode_source("the film")[-1] == EOS_ID
    long_text = " ".join(["the movie"] * 400)
    ids = tiny_translator.encode_source(long_text)
    assert len(ids) == tiny_translator.config.max_source_pieces and ids[-1] == EOS_ID


def test_unknown_source_text_translates(tiny_translator):
    (result,) = tiny_translator.translate(["日本語 ☃ ÄÖÜ"], beam_size=2, max_length=6)
    assert result.target_tokens[-1] == "</s>"


def sentencepiece_with_ids(pad: int, unk: int, bos: int, eos: int) -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(made_up_sentences(300, 0)), model_writer=model, vocab_size=60,
        pad_id=pad, unk_id=unk, bos_id=bos, eos_id=eos, hard_vocab_limit=False, minloglevel=2,
        num_threads=1,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.mark.parametrize("side", ["source", "target"])
def test_sentencepiece_with_other_special_ids_is_rejected(tiny_translator, side):
    wrong = sentencepiece_with_ids(pad=3, unk=0, bos=1, eos=2)  # sentencepiece's own default order
    right = tiny_translator.target_spm if side == "source" else tiny_translator.source_spm
    source, target = (wrong, right) if side == "source" else (right, wrong)
    config = TranslatorConfig(source_vocab_size=source.get_piece_size(),
                              target_vocab_size=target.get_piece_size(), embedding_dim=8,
                              hidden_size=4, attention_size=4, dropout=0.0)
    with pytest.raises(ArtifactError, match=f"{side}.model: special ids"):
        Translator(Seq2Seq(config), source, target)
