"""training.truncation: the token cuts it compares read what they say, on made-up dev sets."""

from __future__ import annotations

import fake_data

from models.sentiment import EncodedText
from training import data, truncation

from support.tiny_models import make_tiny_sentiment


def test_cut_text_keeps_head_and_tail_or_head_only_with_their_subwords():
    text = EncodedText(list(range(10)), [(i,) for i in range(10)])
    assert truncation.cut_text(text, 4, "head+tail") == EncodedText([0, 1, 8, 9], [(0,), (1,), (8,), (9,)])
    assert truncation.cut_text(text, 4, "head").words == [0, 1, 2, 3]
    assert truncation.cut_text(text, 0, "head") is text and truncation.cut_text(text, 10, "head") is text
    assert truncation.cut_text(EncodedText([5, 6, 7]), 2, "head+tail") == EncodedText([5, 7])


def test_main_reports_every_cut_on_both_dev_sets(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "sst2_splits", fake_data.sst2_splits)
    monkeypatch.setattr(data, "fdu_mtl_splits", fake_data.fdu_mtl_splits)
    make_tiny_sentiment(subword_buckets=16).save(tmp_path)
    rows = truncation.main([str(tmp_path), "--cuts", "8", "0"])
    assert [(r["cut"], r["way"]) for r in rows] == [(8, "head+tail"), (8, "head"), (0, "all")]
    assert rows[0]["fdu_tokens_per_review"] == rows[1]["fdu_tokens_per_review"] == 8.0
    assert rows[2]["fdu_tokens_per_review"] > 8.0  # the made-up reviews run longer than 8 tokens
    assert all(0.0 <= r["sst2_dev"] <= 100.0 for r in rows)
    assert "| all | all |" in capsys.readouterr().out
