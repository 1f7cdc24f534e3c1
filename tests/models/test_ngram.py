"""models.ngram and the combined classifier: the n-gram part computes scikit-learn's TF-IDF and
logistic regression exactly, and joins the recurrent part's log-odds as its config says."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from models.ngram import LOOKUP_MAX_TEXTS, NgramLogistic, flat_ids, ngram_keys
from models.sentiment import PROJECTED_MIN_BATCH, SentimentClassifier, SentimentRNN
from models.vocab import UNK_ID

from support.tiny_models import made_up_sentences, make_tiny_sentiment, with_ngram_part

VOCAB = 40


def made_up_ids(count: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Texts of word ids with repeats (tf > 1), labelled by whether the "good" ids 4-9 outnumber
    the "bad" ids 10-15 in them."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        text = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 14))]
        texts.append(text)
        labels.append(int(sum(4 <= i < 10 for i in text) >= sum(10 <= i < 16 for i in text)))
    return texts, labels


def as_given(keys):
    return keys


def fitted(texts, labels, sublinear_tf: bool, max_features: int | None = None, min_df: int = 1,
           c: float = 4.0) -> tuple[TfidfVectorizer, LogisticRegression]:
    vectorizer = TfidfVectorizer(analyzer=as_given, sublinear_tf=sublinear_tf, min_df=min_df,
                                 max_features=max_features)
    features = vectorizer.fit_transform([ngram_keys(t, VOCAB) for t in texts])
    return vectorizer, LogisticRegression(C=c, max_iter=1000).fit(features, labels)


def from_sklearn(vectorizer, regression, sublinear_tf: bool) -> NgramLogistic:
    return NgramLogistic.from_fitted(vectorizer.vocabulary_, vectorizer.idf_.tolist(),
                                     regression.coef_[0].tolist(), float(regression.intercept_[0]),
                                     VOCAB, sublinear_tf)


def test_the_defaults_the_torch_side_assumes_are_sklearns():
    params = TfidfVectorizer().get_params()
    assert (params["smooth_idf"], params["norm"], params["use_idf"], params["sublinear_tf"]) == \
        (True, "l2", True, False)


def test_ngram_keys_are_unigrams_then_bigrams_and_never_collide():
    assert ngram_keys([3], VOCAB) == [3]
    keys = {key for a in range(VOCAB) for b in range(VOCAB) for key in ngram_keys([a, b], VOCAB)[2:]}
    assert len(keys) == VOCAB * VOCAB and min(keys) >= VOCAB  # bigrams apart from unigrams


@pytest.mark.parametrize("sublinear_tf", [False, True])
@pytest.mark.parametrize("max_features,min_df", [(None, 1), (60, 2)])
def test_the_decision_is_sklearns_tfidf_and_logistic_regression(sublinear_tf, max_features, min_df):
    texts, labels = made_up_ids(300, 0)
    vectorizer, regression = fitted(texts, labels, sublinear_tf, max_features, min_df)
    part = from_sklearn(vectorizer, regression, sublinear_tf)
    unseen, _ = made_up_ids(50, 1)
    unseen += [[0], [39, 39, 39, 39], [5] * 9 + [12]]  # a lone id, repeats: tf 4, tf 9
    expected = regression.decision_function(vectorizer.transform([ngram_keys(t, VOCAB) for t in unseen]))
    assert len(unseen) > LOOKUP_MAX_TEXTS  # the tensor path, then the dictionary path, text by text
    got = part(*flat_ids(unseen), len(unseen))
    by_lookup = torch.cat([part(*flat_ids(unseen[i:i + 3]), len(unseen[i:i + 3]))
                           for i in range(0, len(unseen), 3)])
    from_lists = torch.cat([part.log_odds(unseen[i:i + 3]) for i in range(0, len(unseen), 3)])
    assert torch.equal(from_lists, by_lookup) and torch.equal(part.log_odds(unseen), got)
    for decisions in (got, by_lookup):
        assert decisions.dtype == torch.float32
        assert torch.allclose(decisions.double(), torch.tensor(expected), atol=1e-5, rtol=1e-5)
    if max_features is not None:
        assert len(part.keys) == max_features


def test_a_text_with_no_kept_feature_gets_the_intercept_alone():
    texts, labels = made_up_ids(200, 2)
    vectorizer, regression = fitted(texts, labels, True, max_features=5)
    part = from_sklearn(vectorizer, regression, True)
    absent = next(i for i in range(VOCAB) if i not in vectorizer.vocabulary_)
    [value] = part(*flat_ids([[absent]]), 1).tolist()
    assert value == pytest.approx(float(regression.intercept_[0]), abs=1e-6)


def test_bigrams_do_not_cross_from_one_text_into_the_next():
    texts, labels = made_up_ids(300, 3)
    vectorizer, regression = fitted(texts, labels, False)
    part = from_sklearn(vectorizer, regression, False)
    batch = [[4, 11], [7], [11, 4, 4]]
    together = part(*flat_ids(batch), len(batch))
    alone = torch.cat([part(*flat_ids([t]), 1) for t in batch])
    assert torch.allclose(together, alone, atol=1e-6)


def test_the_dictionary_path_follows_a_loaded_state_and_a_change_of_dtype():
    texts, labels = made_up_ids(300, 4)
    part = from_sklearn(*fitted(texts, labels, True), True)
    other = from_sklearn(*fitted(texts, [1 - label for label in labels], True), True)
    text = [[4, 5, 11, 4]]
    before = part(*flat_ids(text), 1)  # builds the dictionary
    part.load_state_dict(other.state_dict())
    assert torch.allclose(part(*flat_ids(text), 1), other(*flat_ids(text), 1))
    assert not torch.allclose(part(*flat_ids(text), 1), before)
    part.half()  # new tensors: the dictionary holds the float16-rounded values
    assert part(*flat_ids(text), 1).item() == pytest.approx(other(*flat_ids(text), 1).item(), abs=1e-2)
    many = text * (LOOKUP_MAX_TEXTS + 1)
    assert torch.allclose(part(*flat_ids(many), len(many))[:1], part(*flat_ids(text), 1), atol=1e-6)


def test_a_vocabulary_too_large_for_int32_keys_is_refused():
    with pytest.raises(ValueError, match="int32"):
        NgramLogistic(3, 50_000)


# ---- the combined classifier ----

@pytest.fixture(scope="module", params=["gru", "lstm"])
def combined(request) -> SentimentClassifier:
    return with_ngram_part(make_tiny_sentiment(request.param, subword_buckets=64), (0.7, 1.3, -0.2))


TEXTS = made_up_sentences(12, 9) + ["", "Not good at all!", "zzz unknown words"]


def test_the_answer_is_the_sigmoid_of_the_mixed_log_odds(combined):
    encoded = [combined.encode(t) for t in TEXTS]
    recurrent, ngram = combined.part_log_odds(encoded)
    expected = torch.sigmoid(0.7 * recurrent + 1.3 * ngram - 0.2)
    assert torch.allclose(combined.predict_ids(encoded)[:, 1], expected, atol=1e-5)
    # the n-gram part is what its module computes on the texts' ids; the recurrent part the RNN's
    assert torch.allclose(ngram, combined.module.ngram(*flat_ids([e.words for e in encoded]), len(encoded)))
    batch = combined.collate(encoded)
    rnn = combined.module(batch.tokens, batch.lengths, batch.subwords)
    assert torch.allclose(recurrent, rnn[:, 1] - rnn[:, 0], atol=1e-5)


def test_batched_equals_one_by_one_on_both_paths(combined):
    assert len(TEXTS) >= PROJECTED_MIN_BATCH  # the batch takes the fast path where it applies
    together = combined.predict_proba(TEXTS)
    alone = torch.cat([combined.predict_proba([t]) for t in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)
    # logits(batch), the padded path, gives the same answers
    logits = combined.logits(combined.collate([combined.encode(t) for t in TEXTS]))
    assert torch.allclose(torch.softmax(logits, dim=-1), together, atol=1e-5)


def test_mixing_the_recurrent_part_alone_answers_as_the_rnn(combined):
    rnn = SentimentClassifier(SentimentRNN(replace(combined.module.config, ngram_features=0)).eval(),
                              combined.vocab)
    rnn.module.load_state_dict({k: v for k, v in combined.module.state_dict().items()
                                if not k.startswith("ngram.")})
    alone = SentimentClassifier(combined.module, combined.vocab)
    alone.module = SentimentRNN(replace(combined.module.config, mix_rnn=1.0, mix_ngram=0.0, mix_bias=0.0))
    alone.module.load_state_dict(combined.module.state_dict())
    alone.module.eval()
    assert torch.allclose(alone.predict_proba(TEXTS), rnn.predict_proba(TEXTS), atol=1e-5)


def test_save_and_load_give_the_same_answers_and_config(combined, tmp_path):
    combined.save(tmp_path / "model")
    loaded = SentimentClassifier.load(tmp_path / "model")
    assert loaded.module.config == combined.module.config
    assert torch.equal(loaded.predict_proba(TEXTS), combined.predict_proba(TEXTS))
    config = json.loads((tmp_path / "model" / "config.json").read_text())["model"]
    assert (config["mix_rnn"], config["mix_ngram"], config["mix_bias"]) == (0.7, 1.3, -0.2)
    checksums = json.loads((tmp_path / "model" / "checksums.json").read_text())["files"]
    assert {"weights.safetensors", "config.json", "vocab.json"} <= set(checksums)


def test_float16_storage_rounds_the_n_gram_part_by_a_little_only(combined, tmp_path):
    combined.save(tmp_path / "half", dtype=torch.float16)
    loaded = SentimentClassifier.load(tmp_path / "half")
    _, exact = combined.part_log_odds([combined.encode(t) for t in TEXTS])
    _, rounded = loaded.part_log_odds([loaded.encode(t) for t in TEXTS])
    assert torch.allclose(rounded, exact, atol=1e-2)
    assert loaded.module.ngram.keys.dtype == torch.int32  # keys are never rounded


def test_the_empty_text_reads_as_one_unknown_word_to_the_n_gram_part(combined):
    empty, unknown = combined.encode(""), combined.encode("qqqq")
    assert empty.words == unknown.words == [UNK_ID]
    _, ngram = combined.part_log_odds([empty, unknown])
    assert ngram[0] == ngram[1]


def test_the_n_gram_part_is_counted_with_the_parameters(combined):
    ngram = combined.module.ngram
    assert not any(p.requires_grad for p in ngram.parameters())
    assert sum(p.numel() for p in ngram.parameters()) == 2 * len(ngram.keys) + 1
    assert math.isfinite(float(ngram.intercept))
