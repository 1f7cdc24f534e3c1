"""models.sentiment: probabilities per sentence, independent of what a sentence is batched with."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_sentiment

from models.rnn import CELLS
from models.sentiment import LABELS, SentimentClassifier, SentimentConfig, SentimentRNN
from models.vocab import PAD_ID, UNK_ID

TEXTS = [
    "good",
    "the plot was not very funny but the actor is great and the story long",
    "a dull , boring film",
    "It wasn't AWFUL (honestly)!",
]


@pytest.fixture(scope="module", params=CELLS)
def classifier(request) -> SentimentClassifier:
    return make_tiny_sentiment(cell=request.param)


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
    tokens, lengths = tiny_sentiment.collate(sequences)
    assert int(tokens[0, 1:].ne(PAD_ID).sum()) == 0
    with torch.inference_mode():
        expected = tiny_sentiment.module(tokens, lengths)
        filled = tokens.masked_fill(tokens == PAD_ID, tiny_sentiment.vocab.stoi["good"])
        torch.testing.assert_close(tiny_sentiment.module(filled, lengths), expected)


def test_unknown_words_and_empty_text_do_not_raise(tiny_sentiment):
    assert tiny_sentiment.encode("") == [UNK_ID]
    assert tiny_sentiment.encode("qwertyuiop zxcvb") == [UNK_ID, UNK_ID]
    probs = tiny_sentiment.predict_proba(["", "qwertyuiop", "   ", "日本語 ☃"])
    assert probs.shape == (4, len(LABELS))
    assert bool(torch.isfinite(probs).all())
    # all of these are "nothing known": the same single-UNK input
    torch.testing.assert_close(probs[0], probs[2])
    torch.testing.assert_close(probs[0], probs[1])


def test_encode_uses_the_shared_normalisation(tiny_sentiment):
    assert tiny_sentiment.encode("GOOD Film") == tiny_sentiment.encode("good film")
    assert UNK_ID not in tiny_sentiment.encode("good film")


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
