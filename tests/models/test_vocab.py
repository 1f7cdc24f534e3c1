"""models.vocab: fixed special ids, reproducible builds, unknowns never raise."""

from __future__ import annotations

import pytest

from models.vocab import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK, UNK_ID, Vocab

SEQUENCES = [["b", "a", "c", "a"], ["c", "d", "a"], ["e"]]  # a:3, c:2, b/d/e:1


def test_specials_have_fixed_ids():
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    vocab = Vocab.build(SEQUENCES)
    assert [vocab.stoi[t] for t in (PAD, UNK, BOS, EOS)] == [0, 1, 2, 3]
    assert vocab.itos[: len(SPECIALS)] == list(SPECIALS)


def test_build_orders_by_frequency_then_alphabetically():
    vocab = Vocab.build(SEQUENCES)
    assert vocab.itos[len(SPECIALS):] == ["a", "c", "b", "d", "e"]


def test_build_is_independent_of_input_order():
    shuffled = [list(reversed(s)) for s in reversed(SEQUENCES)]
    assert Vocab.build(shuffled).itos == Vocab.build(SEQUENCES).itos


def test_build_never_duplicates_specials_found_in_data():
    vocab = Vocab.build([["<unk>", "x", "<pad>"]])
    assert vocab.itos == [*SPECIALS, "x"]


def test_min_freq_and_max_size():
    assert Vocab.build(SEQUENCES, min_freq=2).itos[len(SPECIALS):] == ["a", "c"]
    limited = Vocab.build(SEQUENCES, max_size=len(SPECIALS) + 2)
    assert len(limited) == len(SPECIALS) + 2
    assert limited.itos[len(SPECIALS):] == ["a", "c"]
    assert Vocab.build(SEQUENCES, max_size=len(SPECIALS)).itos == list(SPECIALS)


def test_max_size_smaller_than_the_specials_is_rejected():
    with pytest.raises(ValueError, match="max_size"):
        Vocab.build(SEQUENCES, max_size=2)


def test_unknown_tokens_map_to_unk():
    vocab = Vocab.build(SEQUENCES)
    assert vocab.encode(["a", "zzz", "", "A"]) == [vocab.stoi["a"], UNK_ID, UNK_ID, UNK_ID]
    assert vocab.encode([]) == []


def test_encode_decode_round_trip_skips_specials_by_default():
    vocab = Vocab.build(SEQUENCES)
    tokens = ["e", "a", "d", "c"]
    assert vocab.decode(vocab.encode(tokens)) == tokens
    ids = [BOS_ID, *vocab.encode(tokens), EOS_ID, PAD_ID]
    assert vocab.decode(ids) == tokens
    assert vocab.decode(ids, skip_specials=False) == [BOS, *tokens, EOS, PAD]


def test_save_load_round_trip(tmp_path):
    vocab = Vocab.build([["héllo", "wörld", "\n", " ", "日本"], ["héllo"]])
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded.itos == vocab.itos
    assert loaded.stoi == vocab.stoi


def test_constructor_rejects_missing_specials_and_duplicates():
    with pytest.raises(ValueError, match="must start with the specials"):
        Vocab(["a", "b"])
    with pytest.raises(ValueError, match=r"each token once; repeated: \['a'\]"):
        Vocab([*SPECIALS, "a", "b", "a"])
