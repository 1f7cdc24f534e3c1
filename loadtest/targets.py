"""The serving targets: each measured figure against its goal."""

from __future__ import annotations


def find_point(result: dict, endpoint: str, concurrency: int) -> dict | None:
    for point in result["points"]:
        if point["endpoint"] == endpoint and point["concurrency"] == concurrency:
            return point
    return None


def targets(ceiling: dict, service: dict, off: dict | None) -> list[dict]:
    """The issue's targets: measured, target and whether it is met."""
    rows = []

    def add(what: str, measured: float, target: float, higher_is_better: bool, unit: str) -> None:
        met = measured >= target if higher_is_better else measured <= target
        rows.append({"target": what, "measured": measured, "goal": target, "unit": unit,
                     "direction": ">=" if higher_is_better else "<=", "met": bool(met)})

    s64, s1 = find_point(service, "sentiment", 64), find_point(service, "sentiment", 1)
    if s64:
        add("/sentiment requests/s at c=64 / ceiling batch 32 (1 thread)",
            s64["requests_per_s"] / ceiling["sentiment"]["32"], 0.8, True, "x")
        add("/sentiment p99 at c=64", s64["p99_ms"], 50, False, "ms")
        add("/sentiment errors at c=64", s64["errors"], 0, False, "")
    if s1:
        add("/sentiment p50 at c=1", s1["p50_ms"], 3, False, "ms")
    off64 = find_point(off, "sentiment", 64) if off else None
    if s64 and off64:
        add("/sentiment batching on / off at c=64", s64["requests_per_s"] / off64["requests_per_s"], 3,
            True, "x")
    t16 = find_point(service, "translate", 16)
    if t16:
        add("/translate sentences/s at c=16 / ceiling greedy batch 16",
            t16["units_per_s"] / ceiling["translate"]["16"], 0.6, True, "x")
    g16 = find_point(service, "generate", 16)
    if g16:
        add("/generate tokens/s at c=16 / ceiling batch 16", g16["units_per_s"] / ceiling["generate"]["16"],
            0.6, True, "x")
        if g16["ttft_ms"]:
            add("time to first token p50 (/generate_stream probe beside /generate at c=16)",
                g16["ttft_ms"]["p50"], 25, False, "ms")
    add("resident memory, all server processes", service["rss_mb_after_load"], 1536, False, "MB")
    add("start to ready", service["cold_start_s"], 15, False, "s")
    return rows
