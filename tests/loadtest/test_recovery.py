"""loadtest.recovery: judging a recovery from the overload's drain, not from when the load fell."""

from __future__ import annotations

from loadtest.rawhttp import LOST, Answer
from loadtest.recovery import after_drain, drain_end, timeline


def answer(status: int, started: float, ended: float) -> Answer:
    return Answer(status, started, ended - started)


def test_drain_end_is_when_the_last_request_ended():
    assert drain_end([answer(200, 0, 3), answer(429, 1, 9.5), answer(200, 8, 9)]) == 9.5
    assert drain_end([]) is None


def test_timeline_counts_each_answer_in_the_second_it_ended_by_status():
    answers = [answer(429, 10, 10.2), answer(429, 10, 10.9), answer(200, 10, 11.5),
               answer(LOST, 10, 12.1), answer(200, 9, 9.9), answer(200, 12, 13.0)]
    assert timeline(answers, start=10, stop=12.5) == [
        {"s": 0, "429": 2}, {"s": 1, "200": 1}, {"s": 2, "lost": 1}]  # 9.9 and 13.0 outside


def test_a_recovery_that_waits_out_the_drain_then_serves_at_capacity_has_recovered():
    # the overload's work drains 8 s after the load fell; until then only 429s
    answers = [answer(429, t / 10, t / 10 + 0.05) for t in range(80)]
    answers += [answer(200, 8 + t / 10, 8.5 + t / 10) for t in range(50)]  # ~10 ok/s from 8.5 s
    judged = after_drain(answers, start=0, drained=8, stop=13, capacity_ok_per_s=12,
                         capacity_p99_s=1.0, goal=0.7)
    assert judged == {"drain_s": 8, "first_ok_s": 8.5, "first_ok_after_drain_s": 0.5,
                      "seconds_after_drain": 5, "ok_per_s_after_drain": 9.2, "recovered": True}


def test_a_first_ok_later_than_the_capacity_p99_after_the_drain_is_no_recovery():
    answers = [answer(200, 10 + t / 10, 11.5 + t / 10) for t in range(40)]
    judged = after_drain(answers, start=0, drained=10, stop=15, capacity_ok_per_s=8,
                         capacity_p99_s=1.0, goal=0.7)
    assert judged["first_ok_after_drain_s"] == 1.5 and judged["ok_per_s_after_drain"] == 7.2
    assert not judged["recovered"]


def test_too_few_ok_answers_after_the_drain_is_no_recovery():
    answers = [answer(200, 2, 2.1)] + [answer(429, 2 + t / 10, 2.2 + t / 10) for t in range(30)]
    judged = after_drain(answers, start=0, drained=2, stop=7, capacity_ok_per_s=10,
                         capacity_p99_s=0.5, goal=0.7)
    assert judged["first_ok_after_drain_s"] == 0.1 and judged["ok_per_s_after_drain"] == 0.2
    assert not judged["recovered"]


def test_an_overload_that_drained_before_the_recovery_began_counts_from_its_start():
    answers = [answer(200, 5 + t / 10, 5.1 + t / 10) for t in range(50)]
    judged = after_drain(answers, start=5, drained=4.2, stop=10, capacity_ok_per_s=10,
                         capacity_p99_s=0.2, goal=0.7)
    assert judged["drain_s"] == 0 and judged["first_ok_s"] == 0.1
    assert judged["seconds_after_drain"] == 5 and judged["recovered"]


def test_no_ok_answer_at_all_is_no_recovery():
    judged = after_drain([answer(429, 0, 0.1)], start=0, drained=1, stop=6, capacity_ok_per_s=10,
                         capacity_p99_s=0.5, goal=0.7)
    assert judged["first_ok_s"] is None and judged["ok_per_s_after_drain"] == 0
    assert not judged["recovered"]
