"""How a service recovers after an overload, judged from the answers the load drivers collected.

Why the drain matters: when an overload stops sending, the work it had admitted is still under
way (a generation of 200 characters at a full batch runs for seconds). Triton and TorchServe
finish accepted work; none preempts it to serve a newcomer. So a trusted server's recovery is
judged from the moment that work has ended (the drain): a newcomer then gets its first answer
within the capacity p99, and the answers per second are back near capacity. A window measured
from the moment the load falls mostly measures the drain instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from loadtest.rawhttp import LOST, Answer


def ended(answer: Answer) -> float:
    return answer.started + answer.seconds


def drain_end(answers: Sequence[Answer]) -> float | None:
    """When the last of `answers` (the overload's requests) ended; None without any."""
    return max(map(ended, answers), default=None)


def timeline(answers: Sequence[Answer], start: float, stop: float) -> list[dict[str, int]]:
    """Answers per second from `start` to `stop` (the last second may be partial), by status:
    one dict per second, {"s": its start in seconds after `start`, "200": ..., "429": ...}.
    An answer counts in the second it ended in; those ending outside [start, stop) are left out."""
    seconds = max(0, int(-(-(stop - start) // 1)))  # ceil
    counts = [Counter() for _ in range(seconds)]
    for answer in answers:
        at = ended(answer) - start
        if 0 <= at < stop - start:
            counts[int(at)]["lost" if answer.status == LOST else str(answer.status)] += 1
    return [{"s": second, **dict(sorted(count.items()))} for second, count in enumerate(counts)]


def after_drain(answers: Sequence[Answer], start: float, drained: float, stop: float,
                capacity_ok_per_s: float, capacity_p99_s: float | None, goal: float) -> dict:
    """The recovery clients' answers (`answers`, sent from `start` until `stop`) judged against the
    overload's drain (`drained`, when its last request ended):

    - drain_s: `drained` in seconds after `start` (0 when it came before);
    - first_ok_s: the first ok answer, in seconds after `start`; first_ok_after_drain_s: the same
      after `drained` (negative when one came before the drain ended);
    - ok_per_s_after_drain: ok answers that ended between `drained` and `stop`, per second;
    - recovered: the first ok came by `drained` + `capacity_p99_s` and ok_per_s_after_drain is at
      least `goal` x `capacity_ok_per_s`.
    """
    drained = max(drained, start)  # an overload that ended before the recovery began: no drain
    ok_ends = sorted(ended(a) for a in answers if a.status == 200)
    first_ok = ok_ends[0] if ok_ends else None
    window = stop - drained
    ok_after = sum(drained <= at <= stop for at in ok_ends)
    rate = ok_after / window if window > 0 else None
    in_time = first_ok is not None and first_ok <= drained + (capacity_p99_s or 0.0)
    return {
        "drain_s": round(drained - start, 2),
        "first_ok_s": None if first_ok is None else round(first_ok - start, 2),
        "first_ok_after_drain_s": None if first_ok is None else round(first_ok - drained, 2),
        "seconds_after_drain": round(window, 2),
        "ok_per_s_after_drain": None if rate is None else round(rate, 1),
        "recovered": bool(in_time and rate is not None and rate >= goal * capacity_ok_per_s),
    }
