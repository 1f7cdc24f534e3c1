"""models.text: raw user text and SST-style tokenised text become the same tokens."""

from __future__ import annotations

import pytest

from models.text import normalize_sentiment, normalize_translation, sentiment_tokens


@pytest.mark.parametrize(
    ("raw", "sst"),
    [
        ("It doesn't work (at all)!", "it does n't work -lrb- at all -rrb- !"),
        ("It's GREAT, isn't it?", "it 's great , is n't it ?"),
        ("I can't, they're sure I'm not.", "i ca n't , they 're sure i 'm not ."),
        ("We'd say [maybe] {not}", "we 'd say -lsb- maybe -rsb- -lcb- not -rcb-"),
        ("A well-made, 2-hour film...", "a well-made , 2-hour film ..."),
    ],
)
def test_raw_and_sst_text_give_the_same_tokens(raw, sst):
    assert sentiment_tokens(raw) == sentiment_tokens(sst)


def test_contraction_is_split_penn_treebank_style():
    assert sentiment_tokens("It doesn't work (at all)!") == [
        "it", "does", "n't", "work", "(", "at", "all", ")", "!"]


def test_escaped_slash_and_star_are_unescaped():
    assert sentiment_tokens("1\\/2 of it is \\*great\\*") == ["1", "/", "2", "of", "it", "is", "*",
                                                           "great", "*"]
    assert normalize_sentiment("a\\/b \\*") == "a/b *"


def test_curly_quotes_and_unicode_punctuation_fold_to_ascii():
    assert sentiment_tokens("It\u2019s \u201cgreat\u201d\u2026") == sentiment_tokens('it \'s "great" ...')
    assert sentiment_tokens("doesn\u2019t") == ["does", "n't"]
    assert sentiment_tokens("fine \u2014 ok") == ["fine", "--", "ok"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_has_no_tokens(text):
    assert sentiment_tokens(text) == []


def test_normalize_sentiment_lowercases_and_collapses_spaces():
    assert normalize_sentiment("  Hello \t  WORLD \n") == "hello world"


def test_normalize_translation_collapses_whitespace_and_strips_ends():
    assert normalize_translation("  Ein  Hund\tläuft \n im Park.  ") == "Ein Hund läuft im Park."
    assert normalize_translation("trailing   ") == "trailing"
    assert normalize_translation("") == ""


def test_normalize_translation_keeps_case_and_applies_nfkc():
    # U+FB01 (the "fi" ligature) and a full-width A are folded by NFKC; case is kept.
    assert normalize_translation("\ufb01ne \uff21") == "fine A"


def test_straight_and_curly_quotes_match_sst_backticks():
    sst = sentiment_tokens("a `` great '' film")
    assert sentiment_tokens('A "great" film') == sst
    assert sentiment_tokens("A \u201cgreat\u201d film") == sst


# ---- normaliser 2: raw user text and the review sets' tokenised lowercase text ----

@pytest.mark.parametrize(
    ("raw", "dataset"),
    [
        ("I DON'T like it, it's BAD!", "i do n't like it , it 's bad !"),
        ("Can't recommend it :( won't buy again", "ca n't recommend it sad wo n't buy again"),
        ("dont buy this, it isnt worth it", "do n't buy this , it is n't worth it"),
        ("Love it 😍😍 #bestpurchase", "love it love love bestpurchase"),
        ("@amazon my order https://amzn.to/3xYz arrived broken 👎", "my order arrived broken bad"),
        ("Sooooo goooood!!! 👍🏽", "soo good ! ! ! good"),
        ("&quot;Great&quot; value &amp; fast", "'' great '' value & fast"),
        ("Works great :) see www.example.com/item?id=3", "works great happy see"),
    ],
)
def test_normaliser_2_reads_user_text_as_the_datasets_write_it(raw, dataset):
    assert sentiment_tokens(raw, 2) == sentiment_tokens(dataset, 2)


@pytest.mark.parametrize(
    "dataset",
    ["i do n't like it , it 's bad !", "this is a great -lrb- and cheap -rrb- toy .",
     "the 2-pack was $ 5.99 ... not worth it", "ca n't beat it : )"],
)
def test_normaliser_2_leaves_plain_tokenised_text_as_normaliser_1_reads_it(dataset):
    assert sentiment_tokens(dataset, 2) == sentiment_tokens(dataset, 1)


def test_normaliser_1_is_unchanged_for_models_trained_with_it():
    # what the shipped classifier (normaliser 1) has always read: URLs and emoji in pieces
    assert sentiment_tokens("Dont 😍 @bob http://x.io") == [
        "dont", "😍", "@", "bob", "http", ":", "/", "/", "x", ".", "io"]
    assert sentiment_tokens("Dont 😍 @bob http://x.io", 1) == sentiment_tokens("Dont 😍 @bob http://x.io")


def test_emoji_without_a_word_and_their_joiners_are_dropped():
    assert sentiment_tokens("nice 👨\u200d👩\u200d👧 family \u00a9 pack", 2) == ["nice", "family", "pack"]
    assert sentiment_tokens("2 ^ 3", 2) == ["2", "3"]  # the one ASCII symbol of those categories


def test_emoticon_needs_to_stand_alone():
    assert sentiment_tokens("(at all): fine", 2) == ["(", "at", "all", ")", ":", "fine"]


def test_unknown_normaliser_version_is_refused():
    with pytest.raises(ValueError, match="normaliser version 9"):
        sentiment_tokens("text", 9)
