"""loadtest.interleaved: the summary and report of an A/B from made-up rounds."""

from __future__ import annotations

import pytest

from loadtest.interleaved import summarize, write_markdown


def side(rps: float, p50: float) -> dict[str, float]:
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": 2 * p50, "errors": 0}


ROUNDS = [{"a": side(300, 3.3), "b": side(330, 3.0)},
          {"a": side(200, 5.0), "b": side(240, 4.2)},  # a slow moment: both sides slower
          {"a": side(310, 3.2), "b": side(300, 3.3)}]


def test_summary_takes_medians_and_per_round_ratios():
    summary = summarize(ROUNDS)
    assert summary["a"]["requests_per_s"] == 300 and summary["b"]["p50_ms"] == 3.3
    assert summary["speedup_median"] == pytest.approx(1.1)
    assert summary["speedup_range"] == pytest.approx([300 / 310, 1.2])
    assert summary["b_faster_rounds"] == 2 and summary["rounds"] == 3


def test_report_lists_every_round(tmp_path):
    report = {"command": "python -m loadtest.interleaved --a X=1 --b ''", "finished": "now",
              "endpoint": "sentiment", "concurrency": 1, "seconds": 4, "a": {"X": "1"}, "b": {},
              "base_settings": {"RNNSERVE_WORKERS": "2"}, "rounds": ROUNDS, "summary": summarize(ROUNDS)}
    write_markdown(report, tmp_path / "ab.md")
    text = (tmp_path / "ab.md").read_text()
    assert "- B: defaults" in text and "B faster in 2 of 3 rounds" in text
    assert "| 2 | 200.0 | 240.0 | 5.00 | 4.20 | 1.200 |" in text


def test_a_window_with_no_request_is_an_empty_round_left_out(tmp_path):
    """A /generate window shorter than a request completes none: reported, never a division by 0."""
    rounds = [*ROUNDS, {"a": side(0.0, 0.0), "b": side(1.5, 3000.0)}]
    summary = summarize(rounds)
    assert summary["empty_rounds"] == [4] and summary["rounds"] == 3
    assert summary["speedup_median"] == pytest.approx(1.1)
    report = {"command": "python -m loadtest.interleaved --a-ref X --b-ref Y --a '' --b ''",
              "finished": "now", "endpoint": "generate", "concurrency": 64, "seconds": 4, "a": {},
              "b": {}, "a_ref": "X", "b_ref": "Y", "base_settings": {}, "rounds": rounds,
              "summary": summary}
    write_markdown(report, tmp_path / "ab.md")
    text = (tmp_path / "ab.md").read_text()
    assert "Rounds 4: a side completed no request" in text and "B faster in 2 of 3 rounds" in text
    assert "| 4 | 0.0 | 1.5 | 0.00 | 3000.00 | empty |" in text
    assert "- B: defaults, served from commit `Y`" in text


def test_no_round_with_requests_on_both_sides_gives_no_ratio(tmp_path):
    rounds = [{"a": side(0.0, 0.0), "b": side(0.0, 0.0)}, {"a": side(2.0, 500.0), "b": side(0.0, 0.0)}]
    summary = summarize(rounds)
    assert summary["speedup_median"] is None and summary["empty_rounds"] == [1, 2]
    report = {"command": "c", "finished": "now", "endpoint": "generate", "concurrency": 64,
              "seconds": 4, "a": {}, "b": {}, "base_settings": {}, "rounds": rounds, "summary": summary}
    write_markdown(report, tmp_path / "ab.md")
    assert "No round completed a request on both sides: no ratio." in (tmp_path / "ab.md").read_text()


def test_cpu_per_request_is_summarised_when_every_round_has_it(tmp_path):
    cpu = {"a": [2.0, 2.2, 2.0], "b": [1.8, 2.2, 2.1]}
    rounds = [{k: {**r[k], "cpu_ms_per_request": cpu[k][n]} for k in r} for n, r in enumerate(ROUNDS)]
    summary = summarize(rounds)
    assert summary["a"]["cpu_ms_per_request"] == 2.0 and summary["b"]["cpu_ms_per_request"] == 2.1
    assert summary["cpu_ratio_median"] == pytest.approx(1.0) and summary["b_less_cpu_rounds"] == 1
    assert "cpu_ratio_median" not in summarize(ROUNDS)  # reports written before it
    report = {"command": "c", "finished": "now", "endpoint": "generate", "concurrency": 1, "seconds": 4,
              "a": {}, "b": {}, "base_settings": {}, "rounds": rounds, "summary": summary}
    write_markdown(report, tmp_path / "ab.md")
    text = (tmp_path / "ab.md").read_text()
    assert "A 2.00 ms, B 2.10 ms (medians); B / A median 1.000, B used less in 1 of 3 rounds" in text
    assert "| 1 | 300.0 | 330.0 | 3.30 | 3.00 | 1.100 | 2.00 | 1.80 | 0.900 |" in text


def test_a_round_whose_cpu_time_read_zero_has_no_cpu_ratio(tmp_path):
    """A window shorter than the CPU clock's tick reads 0 CPU seconds: no division by 0 either."""
    cpu = {"a": [2.0, 0.0, 2.0], "b": [1.8, 0.5, 2.1]}
    rounds = [{k: {**r[k], "cpu_ms_per_request": cpu[k][n]} for k in r} for n, r in enumerate(ROUNDS)]
    summary = summarize(rounds)
    assert summary["cpu_rounds"] == 2 and summary["cpu_ratio_median"] == pytest.approx((0.9 + 1.05) / 2)
    report = {"command": "c", "finished": "now", "endpoint": "sentiment", "concurrency": 1, "seconds": 1,
              "a": {}, "b": {}, "base_settings": {}, "rounds": rounds, "summary": summary}
    write_markdown(report, tmp_path / "ab.md")
    text = (tmp_path / "ab.md").read_text()
    assert "B used less in 1 of 2 rounds" in text and "| 0.00 | 0.50 | empty |" in text
