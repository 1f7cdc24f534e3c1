"""An A/B of two server settings that machine drift cannot fake: both servers run at once and
are measured in alternation, round after round, on the same request bodies.

    python -m loadtest.interleaved --a RNNSERVE_INLINE_MAX_TOKENS=0 --b "" \\
        --base-settings RNNSERVE_WORKERS=2 --concurrency 1 --rounds 12
    python -m loadtest.interleaved --a-ref main --a "" --b "" --base-settings RNNSERVE_WORKERS=2
    python -m loadtest.interleaved --a-ref MERGE^1 --b-ref MERGE --a "" --b ""

On these shared machines the same server reads up to ~1.2x apart at c=1 from one run to the next
(docs/performance.md), so a small change measured server after server is noise. Here each round
runs wrk against A and B back to back (ABBA order: neither always goes first), and the report gives
the medians, the ratio B / A of each round, and in how many rounds B was faster; and the same for
the servers' CPU time per request, which the machine's other load moves less than req/s. A round
in which either side completed no request (a window shorter than a request) has no ratio: it is
reported as empty and left out of the medians. Writes JSON and markdown (default
`reports/bench/interleaved.{json,md}`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from loadtest.endpoints import ENDPOINTS, request_bodies
from loadtest.payloads import load_validation_texts
from loadtest.server import REPO_ROOT, Server, export_tree, import_models, parse_settings, serving
from loadtest.wrk import run_wrk, wrk_figures

log = logging.getLogger(__name__)


def is_empty(round_: dict[str, dict[str, float]]) -> bool:
    """True when A or B completed no request in its window: the round has no ratio."""
    return any(round_[side]["requests_per_s"] <= 0 for side in ("a", "b"))


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict:
    """Medians per side and the per-round ratios B / A (req/s; and p50, p99 latency), over the
    rounds in which both sides completed a request; the others are counted in `empty_rounds`
    (their numbers, from 1). With no such round every figure is None."""
    counted = [r for r in rounds if not is_empty(r)]
    empty = [number for number, r in enumerate(rounds, 1) if is_empty(r)]
    if not counted:
        return {"a": None, "b": None, "rounds": 0, "empty_rounds": empty, "speedup_median": None,
                "speedup_range": None, "p50_ratio_median": None, "b_faster_rounds": 0}
    sides = {side: {key: statistics.median(r[side][key] for r in counted)
                    for key in ("requests_per_s", "p50_ms", "p99_ms")} for side in ("a", "b")}
    speedups = [r["b"]["requests_per_s"] / r["a"]["requests_per_s"] for r in counted]
    p50_ratios = [r["b"]["p50_ms"] / r["a"]["p50_ms"] for r in counted]
    summary = {**sides, "rounds": len(counted), "empty_rounds": empty,
               "speedup_median": statistics.median(speedups),
               "speedup_range": [min(speedups), max(speedups)],
               "p50_ratio_median": statistics.median(p50_ratios),
               "b_faster_rounds": sum(s > 1 for s in speedups)}
    # older reports lack the CPU time; a window too short for a clock tick reads 0 and has no ratio
    with_cpu = [r for r in counted if r["a"].get("cpu_ms_per_request", 0) > 0
                and "cpu_ms_per_request" in r["b"]]
    if with_cpu:
        cpu_ratios = [r["b"]["cpu_ms_per_request"] / r["a"]["cpu_ms_per_request"] for r in with_cpu]
        for side in ("a", "b"):
            summary[side]["cpu_ms_per_request"] = statistics.median(r[side]["cpu_ms_per_request"]
                                                                    for r in with_cpu)
        summary["cpu_rounds"] = len(with_cpu)
        summary["cpu_ratio_median"] = statistics.median(cpu_ratios)
        summary["b_less_cpu_rounds"] = sum(c < 1 for c in cpu_ratios)
    return summary


def measure(server: Server, path: str, bodies: Path, concurrency: int, seconds: int) -> dict[str, float]:
    """wrk's figures, and the server's CPU time (all its processes) per request completed in the
    window: the machine's other load delays what wrk sees more than it adds to that."""
    cpu_before = server.cpu_seconds()
    result, _ = run_wrk(server.url, path, bodies, concurrency, seconds)
    cpu_seconds = server.cpu_seconds() - cpu_before
    figures = wrk_figures(result)
    good = figures["requests_per_s"] * figures["seconds"]
    return {**figures, "cpu_ms_per_request": 1000 * cpu_seconds / good if good else 0.0}


def write_markdown(report: dict, path: Path) -> None:
    s = report["summary"]
    empty = s.get("empty_rounds", [])
    lines = ["# Interleaved A/B", "",
             f"Written by `{report['command']}` at {report['finished']}: "
             f"`{report['endpoint']}` at c={report['concurrency']}, {len(report['rounds'])} rounds of "
             f"{report['seconds']} s per side, ABBA order, both servers running throughout.", "",
             f"- A: {report['a'] or 'defaults'}"
             + (f", served from commit `{report['a_ref']}`" if report.get("a_ref") else ""),
             f"- B: {report['b'] or 'defaults'}, "
             + (f"served from commit `{report['b_ref']}`" if report.get("b_ref") else "the working tree"),
             f"- both: {report['base_settings'] or 'defaults'}", ""]
    if empty:
        lines += [f"Rounds {', '.join(map(str, empty))}: a side completed no request in its "
                  f"{report['seconds']} s window, so the round has no ratio and is left out of the "
                  "figures below (a longer --seconds avoids it).", ""]
    if s["speedup_median"] is None:
        lines += ["No round completed a request on both sides: no ratio.", ""]
    else:
        lines += ["| side | req/s (median) | p50 ms (median) | p99 ms (median) |", "|---|---|---|---|"]
        for side in ("a", "b"):
            lines.append(f"| {side.upper()} | {s[side]['requests_per_s']:.1f} | {s[side]['p50_ms']:.2f} | "
                         f"{s[side]['p99_ms']:.1f} |")
        lines += ["", f"B / A req/s: median {s['speedup_median']:.3f}x (rounds {s['speedup_range'][0]:.3f}-"
                  f"{s['speedup_range'][1]:.3f}x); B faster in {s['b_faster_rounds']} of {s['rounds']} "
                  f"rounds; p50 B / A median {s['p50_ratio_median']:.3f}.", ""]
        if "cpu_ratio_median" in s:
            lines += [f"Server CPU time per request (all its processes): A "
                      f"{s['a']['cpu_ms_per_request']:.2f} ms, B {s['b']['cpu_ms_per_request']:.2f} ms "
                      f"(medians); B / A median {s['cpu_ratio_median']:.3f}, B used less in "
                      f"{s['b_less_cpu_rounds']} of {s['cpu_rounds']} rounds.", ""]
    with_cpu = "cpu_ratio_median" in s
    lines += ["| round | A req/s | B req/s | A p50 ms | B p50 ms | B / A |"
              + (" A CPU ms/req | B CPU ms/req | CPU B / A |" if with_cpu else ""),
              "|---|---|---|---|---|---|" + ("---|---|---|" if with_cpu else "")]
    for number, r in enumerate(report["rounds"], 1):
        ratio = "empty" if is_empty(r) else f"{r['b']['requests_per_s'] / r['a']['requests_per_s']:.3f}"
        line = (f"| {number} | {r['a']['requests_per_s']:.1f} | {r['b']['requests_per_s']:.1f} | "
                f"{r['a']['p50_ms']:.2f} | {r['b']['p50_ms']:.2f} | {ratio} |")
        if with_cpu:
            a_cpu, b_cpu = r["a"].get("cpu_ms_per_request", 0), r["b"].get("cpu_ms_per_request", 0)
            cpu = "empty" if is_empty(r) or a_cpu <= 0 else f"{b_cpu / a_cpu:.3f}"
            line += f" {a_cpu:.2f} | {b_cpu:.2f} | {cpu} |"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, metavar="VAR=VALUE[,VAR=VALUE]",
                        help="settings of server A ('' for the defaults)")
    parser.add_argument("--b", required=True, metavar="VAR=VALUE[,VAR=VALUE]",
                        help="settings of server B ('' for the defaults)")
    parser.add_argument("--base-settings", default="", metavar="VAR=VALUE[,VAR=VALUE]",
                        help="settings of both, under their own")
    parser.add_argument("--a-ref", default=None, metavar="REF",
                        help="serve A from this commit's files (git archive) instead of the working "
                             "tree: a before/after of a change, both on the working tree's models")
    parser.add_argument("--b-ref", default=None, metavar="REF",
                        help="serve B from this commit's files instead of the working tree: with "
                             "--a-ref, one past change alone (its merge's first parent against it)")
    parser.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="sentiment")
    parser.add_argument("--concurrency", type=int, default=1, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=12, help="A and B runs each")
    parser.add_argument("--seconds", type=int, default=4, help="measured seconds per wrk run")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models" / "pretrained")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench",
                        help="folder for interleaved.json and interleaved.md")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.concurrency < 1 or args.seconds < 1:
        parser.error("--rounds, --concurrency and --seconds must be at least 1")
    base = parse_settings(args.base_settings)
    settings = {"a": {**base, **parse_settings(args.a)}, "b": {**base, **parse_settings(args.b)}}
    endpoint = ENDPOINTS[args.endpoint]
    bodies = request_bodies(load_validation_texts())[args.endpoint]

    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="rnnserve-ab-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        home = import_models(args.models, workdir / "bentoml_home")
        bodies_file = workdir / "bodies.jsonl"
        bodies_file.write_text("".join(json.dumps(b) + "\n" for b in bodies))
        trees = {side: export_tree(ref, workdir / f"{side}-tree") if ref else REPO_ROOT
                 for side, ref in (("a", args.a_ref), ("b", args.b_ref))}
        servers = {side: stack.enter_context(serving(trees[side], home, workdir / f"server-{side}.log",
                                                     settings[side]))
                   for side in ("a", "b")}
        for server in servers.values():  # warm-up, unmeasured
            run_wrk(server.url, endpoint.path, bodies_file, args.concurrency, 2)
        for number in range(args.rounds):
            order = ("a", "b") if number % 2 == 0 else ("b", "a")
            measured = {}
            for side in order:
                measured[side] = measure(servers[side], endpoint.path, bodies_file, args.concurrency,
                                         args.seconds)
                servers[side].wait_idle()
            rounds.append(measured)
            if is_empty(measured):
                log.warning("round %d: a side completed no request in %d s: no ratio, left out "
                            "(a longer --seconds avoids it)", number + 1, args.seconds)
            log.info("round %d: A %.1f req/s p50 %.2f ms %.2f CPU ms/req, B %.1f req/s p50 %.2f ms "
                     "%.2f CPU ms/req", number + 1, *(measured[side][key] for side in ("a", "b")
                                                      for key in ("requests_per_s", "p50_ms",
                                                                  "cpu_ms_per_request")))

    report = {"command": "python -m loadtest.interleaved "
                         + shlex.join(argv if argv is not None else sys.argv[1:]),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "endpoint": args.endpoint, "concurrency": args.concurrency, "seconds": args.seconds,
              "a": parse_settings(args.a), "b": parse_settings(args.b), "base_settings": base,
              "a_ref": args.a_ref, "b_ref": args.b_ref,
              "rounds": rounds, "summary": summarize(rounds)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interleaved.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, args.out / "interleaved.md")
    s = report["summary"]
    if s["speedup_median"] is None:
        log.warning("no round completed a request on both sides: no ratio (a longer --seconds)")
    else:
        log.info("B / A: %.3fx req/s (median of %d rounds), B faster in %d; p50 A %.2f B %.2f ms; "
                 "%d empty rounds", s["speedup_median"], s["rounds"], s["b_faster_rounds"],
                 s["a"]["p50_ms"], s["b"]["p50_ms"], len(s["empty_rounds"]))
    return report


if __name__ == "__main__":
    main()
