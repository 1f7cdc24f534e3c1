"""The benchmark's markdown report (bench.md) from its JSON report."""

from __future__ import annotations

from pathlib import Path

from loadtest.ceiling import CEILING_BATCHES
from loadtest.endpoints import ENDPOINTS
from loadtest.precision_quality import BLEU_SENTENCES, LOSS_WINDOWS, SHIFT_BATCH
from loadtest.server import GC_LONG_S
from loadtest.targets import find_point
from loadtest.wrk import CONCURRENCY


def target_table(rows: list[dict]) -> list[str]:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['target']} | {row['measured']:.3g} {row['unit']} | {row['direction']} "
                     f"{row['goal']:g} {row['unit']} | {'yes' if row['met'] else '**no**'} |")
    return lines


def connection_split(point: dict) -> str:
    """"33/31": wrk's connections held by each worker mid-run; "-" when not sampled."""
    return "/".join(map(str, point.get("connections") or [])) or "-"


def gc_pauses(point: dict) -> str:
    """"3.1 (0)": garbage collection ms per second of load (long pauses); "-" when not exported."""
    if point.get("gc_ms_per_s") is None:
        return "-"
    return f"{point['gc_ms_per_s']:.1f} ({point['gc_long_pauses']})"


def memory_split(each: list[float] | None) -> str:
    """" (supervisor 73, workers 580 + 581)" from resident MB of the supervisor, then the workers."""
    if not each:
        return ""
    return f" (supervisor {each[0]:.0f}, workers {' + '.join(f'{mb:.0f}' for mb in each[1:])})"


def cpu_description(machine: dict) -> str:
    """" (AMD EPYC, torch's kernels for AVX2, no bfloat16 in oneDNN)"; "" for older reports."""
    if "cpu_capability" not in machine:
        return ""
    bfloat16 = "bfloat16 in oneDNN" if machine["bfloat16_in_onednn"] else "no bfloat16 in oneDNN"
    return (f" ({machine['cpu_model'] or 'unknown'}, torch's kernels for {machine['cpu_capability']}, "
            f"{bfloat16})")


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# Serving benchmark", "",
             f"Written by `{report['command']}` at {report['finished']}. Machine: "
             f"{report['machine']['cpus']} CPUs{cpu_description(report['machine'])}, torch "
             f"{report['machine']['torch']}, bentoml "
             f"{report['machine']['bentoml']}; load average at start "
             f"{', '.join(f'{x:.2f}' for x in report['machine']['load_average_at_start'])}.", ""]
    if report["machine"]["busy_processes_at_start"]:
        lines += ["**Contention:** other processes were busy on the same cores when this run started: "
                  + "; ".join(f"`{c}`" for c in report["machine"]["busy_processes_at_start"])
                  + ". The figures below share the CPU with them.", ""]
    if report["machine"].get("busy_processes_at_end"):
        at_end = report["machine"]["busy_processes_at_end"]
        lines += ["At the end of the run: " + "; ".join(f"`{c}`" for c in at_end) + ".", ""]
    base_settings = report.get("base_settings") or {}
    if base_settings:
        lines += ["Every server below runs with "
                  + ", ".join(f"`{k}={v}`" for k, v in base_settings.items())
                  + " besides its own settings.", ""]
    served = report.get("precision", "float32")  # RNNSERVE_PRECISION of the servers
    lines += ["## Targets", "", f"`RNNSERVE_PRECISION={served}` (\"batching on\"), against the ceiling "
              "of the same models at the same precisions.", "", *target_table(report["targets"])]
    for precision, rows in (report.get("targets_lower") or {}).items():
        lines += ["", f"Every model at `RNNSERVE_PRECISION={precision}` (\"{precision}\" below), against "
                  f"the {precision} ceiling of the same {precision} models; batching on/off compares the "
                  "\"batching on\" and \"batching off\" servers only.", "", *target_table(rows)]
    threads = report["ceiling_threads"]
    lines += ["", f"## Ceiling: in-process, no HTTP, {threads} torch thread{'s' if threads > 1 else ''}", "",
              "| endpoint | unit | " + " | ".join(f"batch {b}" for b in CEILING_BATCHES) + " |",
              "|---|---|" + "---|" * len(CEILING_BATCHES)]
    for name, by_batch in report["ceiling"].items():
        lines.append(f"| {name} | {ENDPOINTS[name].unit}/s | "
                     + " | ".join(f"{by_batch[str(b)]:.0f}" for b in CEILING_BATCHES) + " |")
    if report["precisions"]:
        precisions = report["precisions"]
        lower = [p for p in precisions["ceilings"] if p != "float32"]
        float32_ceiling = precisions["ceilings"].get("float32", report["ceiling"])
        lines += ["", "## Precisions (`RNNSERVE_PRECISION`)", "",
                  "`models.quantize`: float16 stores every LSTM, GRU and Linear weight in float16 "
                  "and computes in float32; bfloat16 copies every weight and activation to bfloat16; "
                  "int8 stores every LSTM, GRU and Linear weight in int8 and quantizes activations "
                  "with one scale per batch; same thread count. Quality on validation "
                  "splits (SST-2 dev accuracy %, Tiny Shakespeare val bits per character over "
                  f"{LOSS_WINDOWS} windows, greedy BLEU on the first {BLEU_SENTENCES} Multi30k val "
                  "sentences). Batchmate shift: |P(positive) of an SST-2 dev review in a batch of "
                  f"{SHIFT_BATCH} - the same review alone|, median / 99th percentile / max over the "
                  "872 reviews: how far an answer depends on what it is batched with.", "",
                  "| measure | float32 | " + " | ".join(lower) + " |", "|---|---|" + "---|" * len(lower)]
        for key, value in precisions["quality"]["float32"].items():
            lines.append(f"| {key} | {value} | "
                         + " | ".join(str(precisions["quality"][p][key]) for p in lower) + " |")
        for name, by_batch in float32_ceiling.items():
            for batch, base in by_batch.items():
                cells = [f"{precisions['ceilings'][p][name][batch]:.0f} "
                         f"({precisions['ceilings'][p][name][batch] / base:.2f}x)" for p in lower]
                lines.append(f"| {name} ceiling at batch {batch}, {ENDPOINTS[name].unit}/s | {base:.0f} | "
                             + " | ".join(cells) + " |")
    for variant, result in report["service"].items():
        lowered = report["precisions"] and variant in report["precisions"]["ceilings"]
        ceilings = report["precisions"]["ceilings"][variant] if lowered else report["ceiling"]
        lines += ["", f"## Service: {variant}", "",
                  f"Settings: {result['settings'] or 'defaults'}. Start to ready "
                  f"{result['cold_start_s']:.1f} s; resident memory {result['rss_mb_idle']:.0f} MB idle"
                  f"{memory_split(result.get('rss_mb_idle_each'))}, {result['rss_mb_after_load']:.0f} MB "
                  f"after the load{memory_split(result.get('rss_mb_after_load_each'))} (all processes).", "",
                  "| endpoint | c | req/s | units/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
                  f"| / {variant + ' ' if lowered else ''}ceiling at batch c | server CPU | wrk CPU "
                  f"| connections per worker | GC ms/s (pauses > {GC_LONG_S * 1000:.0f} ms) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in result["points"]:
            ceiling = ceilings[p["endpoint"]].get(str(p["concurrency"]))
            ratio = f"{p['units_per_s'] / ceiling:.2f}" if ceiling else "-"
            batch = f"{p['mean_batch']:.1f}" if p["mean_batch"] is not None else "-"
            lines.append(f"| {p['endpoint']} | {p['concurrency']} | {p['requests_per_s']:.1f} | "
                         f"{p['units_per_s']:.0f} {ENDPOINTS[p['endpoint']].unit} | {p['p50_ms']:.1f} | "
                         f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} | {batch} | {ratio} | "
                         f"{p['server_cpu_percent']:.0f}% | {p['wrk_cpu_percent']:.0f}% | "
                         f"{connection_split(p)} | {gc_pauses(p)} |")
            if p["ttft_ms"]:
                lines.append(f"| | | time to first token (probe): p50 {p['ttft_ms']['p50']:.1f} ms, "
                             f"p95 {p['ttft_ms']['p95']:.1f} ms over {p['ttft_ms']['count']} streams "
                             "| | | | | | | | | | | |")
    if report["comparisons"]:
        lines += ["", "## Before / after (same run)", "",
                  "Each row: the service at an earlier commit, or with other settings, against the "
                  "working tree with default settings (\"batching on\" above): same bodies, same "
                  "run; same models, except that a commit serves the models it shipped.", "",
                  "| variant | endpoint | c | req/s | p50 ms | p99 ms | req/s: defaults now / variant "
                  f"| connections per worker | GC ms/s (pauses > {GC_LONG_S * 1000:.0f} ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        current = report["service"]["batching on"]
        for variant, result in report["comparisons"].items():
            for p in result["points"]:
                now = find_point(current, p["endpoint"], p["concurrency"])
                ratio = (f"{now['requests_per_s'] / p['requests_per_s']:.2f}"
                         if now and p["requests_per_s"] else "-")
                lines.append(f"| {variant} | {p['endpoint']} | {p['concurrency']} | "
                             f"{p['requests_per_s']:.1f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {ratio} | "
                             f"{connection_split(p)} | {gc_pauses(p)} |")
                if p["ttft_ms"]:
                    then = now["ttft_ms"]["p50"] if now and now["ttft_ms"] else None
                    lines.append(f"| | | | time to first token (probe) p50 {p['ttft_ms']['p50']:.1f} ms"
                                 + (f", defaults now {then:.1f} ms" if then else "") + " | | | | | |")
    steps = [name for name in report["comparisons"] if name.startswith("commit ")]
    if steps:
        chain = [*steps, "batching on"]
        results = {**report["comparisons"], "batching on": report["service"]["batching on"]}
        lines += ["", "## What each step bought (/sentiment, same run)", "",
                  "| from | to | req/s ratio c=1 | c=16 | c=64 | p50 c=1 ms | p99 c=64 ms |",
                  "|---|---|---|---|---|---|---|"]
        for before, after in zip(chain, chain[1:], strict=False):
            then, now = results[before], results[after]
            ratios = []
            for concurrency in CONCURRENCY:
                a, b = find_point(then, "sentiment", concurrency), find_point(now, "sentiment", concurrency)
                ratios.append(f"{b['requests_per_s'] / a['requests_per_s']:.2f}" if a and b else "-")
            p1 = [find_point(r, "sentiment", 1) for r in (then, now)]
            p64 = [find_point(r, "sentiment", 64) for r in (then, now)]
            p50 = f"{p1[0]['p50_ms']:.1f} -> {p1[1]['p50_ms']:.1f}" if all(p1) else "-"
            p99 = f"{p64[0]['p99_ms']:.0f} -> {p64[1]['p99_ms']:.0f}" if all(p64) else "-"
            target = after if after != "batching on" else "working tree"
            lines.append(f"| {before} | {target} | {' | '.join(ratios)} | {p50} | {p99} |")
    lines += ["", "Units: sentences for sentiment and translation, characters (tokens) for generation. "
              "`/ ceiling at batch c` divides the service's units/s by the in-process figure at the batch "
              "size equal to the concurrency. CPU figures are percent of one core over the measured "
              "seconds. Connections per worker: how wrk's connections were spread over the server's "
              "workers, sampled once during the run. GC: milliseconds of garbage collection pauses "
              "per second of load, summed over the workers (rnnserve_gc_pause_seconds), with the "
              f"count of pauses longer than {GC_LONG_S * 1000:.0f} ms.", ""]
    path.write_text("\n".join(lines))
