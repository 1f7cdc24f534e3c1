"""models.sentiment: probabilities per sentence, independent of what a sentence is batched with."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

from models import projected_lstm, sentiment
from models.integrity import record_checksums
from models.quantize import with_precision
from models.rnn import CELLS
from models.sentiment import (
    LABELS,
    EncodedText,
    SentimentClassifier,
    SentimentConfig,
    SentimentRNN,
    explanation,
    explanation_inputs,
    subword_ids,
    truncate_tokens,
)
from models.text import sentiment_tokens
from models.vocab import PAD_ID, UNK_ID, Vocab

from support.tiny_models import make_tiny_sentiment

TEXTS = [
    "good",
    "the plot was not very funny but the actor is great and the story long",
    "a dull , boring film",
    "It wasn't AWFUL (honestly)!",
]


@pytest.fixture(scope="module", params=[*CELLS, "gru+subwords"])
def classifier(request) -> SentimentClassifier:
    cell, _, subwords = request.param.partition("+")
    return make_tiny_sentiment(cell=cell, subword_buckets=64 if subwords else 0)


def test_probabilities_have_one_column_per_label_and_sum_to_one(classifier):
    probs = classifier.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), len(LABELS))
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(len(TEXTS)))


def test_batched_equals_one_by_one(classifier):
    # the texts have very different lengths, so every short one is padded in the batch
    batched = classifier.predict_proba(TEXTS)
    alone = torch.cat([classifier.predict_proba([t]) for t in TEXTS])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_batch_order_does_not_matter(classifier):
    forward = classifier.predict_proba(TEXTS)
    backward = classifier.predict_proba(TEXTS[::-1])
    torch.testing.assert_close(forward, backward.flip(0), rtol=1e-5, atol=1e-6)


def test_padding_value_never_reaches_the_model(tiny_sentiment):
    # pack_padded_sequence must skip the padding: whatever id fills it, the answer is the same
    sequences = [tiny_sentiment.encode(t) for t in TEXTS]
    batch = tiny_sentiment.collate(sequences)
    assert int(batch.tokens[0, 1:].ne(PAD_ID).sum()) == 0
    with torch.inference_mode():
        expected = tiny_sentiment.module(batch.tokens, batch.lengths)
        filled = batch.tokens.masked_fill(batch.tokens == PAD_ID, tiny_sentiment.vocab.stoi["good"])
        torch.testing.assert_close(tiny_sentiment.module(filled, batch.lengths), expected)


def test_unknown_words_and_empty_text_do_not_raise(tiny_sentiment):
    assert tiny_sentiment.encode("").words == [UNK_ID]
    assert tiny_sentiment.encode("qwertyuiop zxcvb").words == [UNK_ID, UNK_ID]
    probs = tiny_sentiment.predict_proba(["", "qwertyuiop", "   ", "日本語 ☃"])
    assert probs.shape == (4, len(LABELS))
    assert bool(torch.isfinite(probs).all())
    # all of these are "nothing known": the same single-UNK input
    torch.testing.assert_close(probs[0], probs[2])
    torch.testing.assert_close(probs[0], probs[1])


def test_encode_uses_the_shared_normalisation(tiny_sentiment):
    assert tiny_sentiment.encode("GOOD Film") == tiny_sentiment.encode("good film")
    assert UNK_ID not in tiny_sentiment.encode("good film").words


def test_subword_ids_are_the_hashed_ngrams_of_the_marked_word():
    ids = subword_ids("good", 1000, 3, 5)
    # "<good>": 4 trigrams, 3 four-grams, 2 five-grams
    assert len(ids) == 9 and all(0 <= i < 1000 for i in ids)
    assert ids[0] == zlib.crc32(b"<go") % 1000  # crc32: the same in every process, unlike hash()
    assert subword_ids("go", 1000, 3, 5)[0] == ids[0]  # shared prefix, shared bucket
    assert subword_ids("a", 1000, 3, 5) == (zlib.crc32(b"<a>") % 1000,)


def test_long_words_are_hashed_alike_but_never_cached():
    long_word = "x" * 999 + "y"  # what a client could send, once per distinct word, to fill memory
    cached_before = sentiment._cached_ngrams.cache_info().currsize
    ids = subword_ids(long_word, 1000, 3, 5)
    assert len(ids) == 3 * len(f"<{long_word}>") - 9  # every 3-, 4- and 5-gram
    assert ids[-1] == zlib.crc32(b"xxxy>") % 1000
    assert sentiment._cached_ngrams.cache_info().currsize == cached_before
    subword_ids("qzqzq-only-here", 1000, 3, 5)
    assert sentiment._cached_ngrams.cache_info().currsize == cached_before + 1


def test_subwords_tell_unknown_words_apart():
    words_only, with_subwords = make_tiny_sentiment(), make_tiny_sentiment(subword_buckets=64)
    unknown = ["qwertyuiop", "zxcvb"]
    assert all(w not in with_subwords.vocab.stoi for w in unknown)
    plain = words_only.predict_proba(unknown)
    torch.testing.assert_close(plain[0], plain[1])  # both just UNK
    probs = with_subwords.predict_proba(unknown)
    assert not torch.allclose(probs[0], probs[1])
    encoded = with_subwords.encode("the zxcvb")
    assert encoded.words[1] == UNK_ID and encoded.subwords[1] == subword_ids("zxcvb", 64, 3, 5)
    # an empty text is still one UNK, here with an empty bag of subwords
    assert with_subwords.encode("") == EncodedText([UNK_ID], [()])


def test_subword_padding_bags_are_empty_and_change_nothing():
    model = make_tiny_sentiment(subword_buckets=64)
    batch = model.collate([model.encode(t) for t in TEXTS])
    ids, offsets = batch.subwords
    assert offsets.shape == (batch.tokens.numel(),)
    sizes = torch.diff(torch.cat([offsets, torch.tensor([len(ids)])])).view_as(batch.tokens)
    assert bool((sizes[batch.tokens == PAD_ID] == 0).all())
    assert bool((sizes[batch.tokens != PAD_ID] > 0).all())


def test_a_subword_model_needs_its_subwords():
    model = make_tiny_sentiment(subword_buckets=64)
    batch = model.collate([model.encode("good film")])
    with pytest.raises(ValueError, match="subwords"):
        model.module(batch.tokens, batch.lengths)


def test_weight_drop_acts_in_training_only_and_through_packing():
    torch.manual_seed(0)
    config = SentimentConfig(vocab_size=20, embedding_dim=4, hidden_size=6, dropout=0.0)
    plain = SentimentRNN(config)
    dropped = SentimentRNN(SentimentConfig(**{**config.__dict__, "weight_drop": 0.5}))
    dropped.load_state_dict(plain.state_dict())
    tokens, lengths = torch.randint(4, 20, (3, 7)), torch.tensor([7, 2, 5])  # packed: unequal
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(tokens, lengths), plain(tokens, lengths))
    plain.train(), dropped.train()
    logits = dropped(tokens, lengths)
    assert not torch.allclose(logits, plain(tokens, lengths))
    logits.sum().backward()
    assert dropped.rnn.weight_hh_l0.grad.abs().sum() > 0
    assert dropped.rnn.weight_hh_l0_reverse.grad.abs().sum() > 0


def lstm_classifier(subword_buckets: int = 64, bidirectional: bool = True) -> SentimentClassifier:
    tiny = make_tiny_sentiment(cell="lstm", subword_buckets=subword_buckets)
    if bidirectional:
        return tiny
    config = SentimentConfig(**{**tiny.module.config.__dict__, "bidirectional": False})
    return SentimentClassifier(SentimentRNN(config).eval(), tiny.vocab)


# every length from 1 to 14 words, unknown words, an empty text, one text repeated
PROJECTED_TEXTS = [*TEXTS, "", "qwertyuiop zxcvb good", "not", *TEXTS[1:2],
                   "the story was long and the film dull but great"]


@pytest.mark.parametrize("subword_buckets", [0, 64])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("words", [6, projected_lstm.PROJECTED_WORDS])
@pytest.mark.parametrize("recurrence", ["compiled", "python"])
def test_projected_lstm_equals_the_module(subword_buckets, bidirectional, words, recurrence):
    # words=6: most of the vocabulary is missing from the table and projected per batch
    classifier = lstm_classifier(subword_buckets, bidirectional)
    projected = projected_lstm.ProjectedLSTM(classifier.module, classifier.vocab, words=words)
    if recurrence == "python":  # the fallback where TorchScript cannot compile
        projected.recurrence = projected_lstm.pooled_recurrence
    encoded = [classifier.encode(text) for text in PROJECTED_TEXTS]
    with torch.inference_mode():
        expected = classifier.logits(classifier.collate(encoded))
        torch.testing.assert_close(projected.logits(encoded), expected, rtol=1e-5, atol=1e-5)
        # one by one too: the lengths, and so the steps each text shares, change nothing
        alone = torch.cat([projected.logits([text]) for text in encoded])
        torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-5)


def test_the_recurrence_is_compiled_by_torchscript():
    # the pinned torch compiles it: the fallback to the Python loop would only cost speed
    assert isinstance(projected_lstm.compiled_recurrence(), torch.jit.ScriptFunction)


def test_predict_uses_the_projected_path_from_a_few_texts_and_gets_the_same_answers(monkeypatch):
    classifier = lstm_classifier()
    texts = PROJECTED_TEXTS[: sentiment.PROJECTED_MIN_BATCH]
    assert classifier.projected() is not None
    with torch.inference_mode():
        encoded = [classifier.encode(t) for t in texts]
        expected = torch.softmax(classifier.logits(classifier.collate(encoded)), -1)
    calls = []
    logits = projected_lstm.ProjectedLSTM.logits
    monkeypatch.setattr(projected_lstm.ProjectedLSTM, "logits",
                        lambda self, batch: calls.append(len(batch)) or logits(self, batch))
    torch.testing.assert_close(classifier.predict_proba(texts), expected, rtol=1e-5, atol=1e-6)
    assert len(texts) == sentiment.PROJECTED_MIN_BATCH
    classifier.predict_proba(texts[:1])  # a lone text: torch's own LSTM
    classifier.predict_proba(texts[:-1])  # one text short of the minimum: torch's too
    assert calls == [len(texts)]


def test_projected_path_follows_the_weights_and_the_module():
    classifier = lstm_classifier()
    first = classifier.projected()
    assert classifier.projected() is first  # built once
    before = classifier.predict_proba(PROJECTED_TEXTS)
    with torch.no_grad():
        classifier.module.rnn.weight_hh_l0.mul_(-1)  # what an optimizer step or load_state_dict does
    assert classifier.projected() is not first
    with torch.inference_mode():
        expected = torch.softmax(classifier.logits(classifier.collate(
            [classifier.encode(t) for t in PROJECTED_TEXTS])), -1)
    after = classifier.predict_proba(PROJECTED_TEXTS)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after, before)
    classifier.module.train()
    assert classifier.projected() is None  # dropout is on: only the module itself is right
    classifier.module.eval()


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_projected_path_is_for_float32_lstms_only(cell):
    assert not projected_lstm.ProjectedLSTM.supports(make_tiny_sentiment(cell=cell).module)
    lstm = lstm_classifier().module
    assert projected_lstm.ProjectedLSTM.supports(lstm)
    assert not projected_lstm.ProjectedLSTM.supports(with_precision(lstm, "int8"))
    assert not projected_lstm.ProjectedLSTM.supports(with_precision(lstm, "bfloat16"))
    with pytest.raises(ValueError, match="float32 single-layer LSTM"):
        projected_lstm.ProjectedLSTM(with_precision(lstm, "float16"), lstm_classifier().vocab)


# -- explanations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("subword_buckets", [0, 64])
def test_explanation_inputs_are_the_prefixes_then_the_texts_with_one_word_left_out(subword_buckets):
    classifier = make_tiny_sentiment(cell="lstm", subword_buckets=subword_buckets)
    text = classifier.encode("good film but dull plot")
    inputs = explanation_inputs(text)
    assert [len(t) for t in inputs] == [1, 2, 3, 4, 5] + [4] * 5
    assert inputs[4] == text
    assert inputs[5 + 2].words == text.words[:2] + text.words[3:]
    if subword_buckets:
        assert inputs[5 + 2].subwords == text.subwords[:2] + text.subwords[3:]
    # a one-word text left empty reads as the empty text: the prior
    assert explanation_inputs(classifier.encode("good"))[1] == classifier.encode("")


def test_explanation_trajectory_ends_at_the_answer_and_importance_is_occlusion():
    classifier = make_tiny_sentiment(cell="lstm", subword_buckets=64)
    text = "the plot was long but the actor was great"
    inputs = explanation_inputs(classifier.encode(text))
    probabilities = classifier.predict_ids(inputs).tolist()
    trajectory, importance = explanation(probabilities)
    positive = LABELS.index("positive")
    whole = classifier.predict_proba([text])[0, positive].item()
    assert len(trajectory) == len(importance) == 9
    assert trajectory[-1] == pytest.approx(whole, abs=1e-6)
    without_great = classifier.predict_proba(["the plot was long but the actor was"])[0, positive].item()
    assert importance[-1] == pytest.approx(whole - without_great, abs=1e-6)


# ---- how text becomes tokens is part of the model's config ----

def reading(normalizer: int, max_tokens: int, subword_buckets: int = 0) -> SentimentClassifier:
    """A tiny classifier that reads with normaliser `normalizer`, at most `max_tokens` tokens."""
    torch.manual_seed(0)
    vocab = Vocab.build([sentiment_tokens("do n't buy love it a b c d e f g h", 2)])
    config = SentimentConfig(vocab_size=len(vocab), embedding_dim=8, hidden_size=6, dropout=0.0,
                             subword_buckets=subword_buckets, normalizer=normalizer,
                             max_tokens=max_tokens)
    return SentimentClassifier(SentimentRNN(config).eval(), vocab)


def test_encode_reads_with_the_configs_normaliser():
    new, old = reading(2, 0), reading(1, 0)
    assert new.vocab.decode(new.encode("Dont buy \U0001F60D").words) == ["do", "n't", "buy", "love"]
    assert old.encode("Dont buy \U0001F60D").words == old.vocab.encode(["dont", "buy", "\U0001F60D"])


def test_truncate_tokens_keeps_the_head_and_the_tail():
    words = [str(i) for i in range(10)]
    assert truncate_tokens(words, 0) == words
    assert truncate_tokens(words, 10) == words
    assert truncate_tokens(words, 4) == ["0", "1", "8", "9"]
    assert truncate_tokens(words, 5) == ["0", "1", "7", "8", "9"]


def test_a_long_text_is_read_as_its_head_and_tail_words_and_subwords_alike():
    model = reading(2, 4, subword_buckets=32)
    encoded = model.encode("a b c d e f g h")
    assert model.vocab.decode(encoded.words) == ["a", "b", "g", "h"]
    assert encoded.subwords == [subword_ids(w, 32, 3, 5) for w in ("a", "b", "g", "h")]
    assert len(reading(2, 0).encode("a b c d e f g h")) == 8


def test_an_artifact_saved_before_the_reading_fields_keeps_its_reading(tmp_path):
    reading(1, 0).save(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    for key in ("normalizer", "max_tokens"):
        del config["model"][key]
    path.write_text(json.dumps(config))
    record_checksums(tmp_path, ["config.json"])  # as an older artifact's, written with it
    loaded = SentimentClassifier.load(tmp_path)
    assert (loaded.module.config.normalizer, loaded.module.config.max_tokens) == (1, 0)
    assert len(loaded.encode(" ".join(["a"] * 600))) == 600


SHIPPED_SENTIMENT = Path(__file__).resolve().parents[2] / "models" / "pretrained" / "sentiment-rnn"


@pytest.mark.skipif(not (SHIPPED_SENTIMENT / "config.json").is_file(), reason="no shipped classifier")
def test_the_shipped_classifier_reads_text_as_it_was_trained_to():
    """The shipped config's reading fields, or where it predates them normaliser 1 and every
    token: its answers never change with the normaliser that new models are trained with."""
    shipped = SentimentClassifier.load(SHIPPED_SENTIMENT)
    config = json.loads((SHIPPED_SENTIMENT / "config.json").read_text())["model"]
    expected = (config.get("normalizer", 1), config.get("max_tokens", 0))
    assert (shipped.module.config.normalizer, shipped.module.config.max_tokens) == expected
    text = "Dont buy it @seller http://x.io \U0001F621 " + "so bad " * 200
    tokens = truncate_tokens(sentiment_tokens(text, expected[0]), expected[1])
    assert shipped.encode(text).words == shipped.vocab.encode(tokens)
