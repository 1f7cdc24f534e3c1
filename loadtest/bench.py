"""The serving benchmark: the models' in-process ceiling, the service under a closed-loop load,
batching on vs off, resident memory and cold start, in one run on one machine.

    make bench            # python -m loadtest.bench: writes reports/bench/bench.{json,md}
    python -m loadtest.bench --models DIR --seconds 4 --compare HEAD~3 --settings RNNSERVE_WORKERS=2
                          # quicker; also /sentiment of an older commit and of other settings

1. Ceiling: each model called directly (no HTTP, no service code) at batch 1, 8, 16, 32, 64 with
   one torch thread: sentences/s for sentiment and greedy translation, tokens/s for generation
   (200 sampled characters per sequence, prompts primed one by one as the service does).
2. Service: `bentoml serve` of the same models in its own store, loaded by wrk (one thread, a
   closed loop of c connections, bodies from the validation splits in turn: loadtest/wrk_bodies.lua)
   at c = 1, 16, 64: requests/s and p50/p95/p99, with the CPU wrk itself used and the server's.
   While /generate runs at c=16, a probe streams /generate_stream requests one at a time and times
   their first chunk (time to first token).
3. The ratio service / ceiling, and the same service with batching off (RNNSERVE_MAX_BATCH_SIZE=1,
   RNNSERVE_MAX_ACTIVE_SEQUENCES=1).
4. Precisions (models.quantize: float32, float16 weights, bfloat16 and dynamic int8): validation
   quality, batch independence and ceiling of every model at each, and the service with every
   model at each (RNNSERVE_PRECISION=float32, =float16, =bfloat16, =int8) measured like the
   default one, each against its own ceiling. The default server (service.config's
   DEFAULT_PRECISION: each task its own precision) is measured against the ceiling of each model
   at its precision.
Also: the resident memory of every server process together, and the time from start to /readyz.

This module is the command line; each job has its own module: loadtest.endpoints (what is sent),
loadtest.ceiling, loadtest.precision_quality, loadtest.server (a server's lifecycle), loadtest.wrk
(the load driver), loadtest.targets and loadtest.bench_markdown (the report).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import torch

from loadtest.bench_markdown import write_markdown
from loadtest.ceiling import Pipelines, measure_ceiling, mixed_ceiling
from loadtest.endpoints import ENDPOINTS, request_bodies
from loadtest.payloads import load_validation_texts
from loadtest.precision_quality import measure_precisions
from loadtest.server import MODEL_FOLDERS, REPO_ROOT, export_tree, import_models, parse_settings
from loadtest.targets import targets
from loadtest.wrk import CONCURRENCY, Variant, measure_variant
from models.names import PRECISIONS
from models.quantize import cpu_has_bfloat16
from service.config import DEFAULT_PRECISION

log = logging.getLogger("loadtest.bench")

BATCHING_OFF = {"RNNSERVE_MAX_BATCH_SIZE": "1", "RNNSERVE_MAX_ACTIVE_SEQUENCES": "1"}


def busy_processes(seconds: float = 1.0, threshold: float = 20.0) -> list[str]:
    """Command lines of other processes using over `threshold`% of a core: they share the CPU."""
    processes = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid != os.getpid()]
    for process in processes:
        with suppress(psutil.Error):
            process.cpu_percent(None)
    time.sleep(seconds)
    busy = []
    for process in processes:
        with suppress(psutil.Error):
            percent = process.cpu_percent(None)
            if percent > threshold:
                busy.append(f"{' '.join(process.info['cmdline'] or [])[:160]} ({percent:.0f}% of a core)")
    return busy


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def machine_conditions() -> dict[str, Any]:
    others = busy_processes()
    import bentoml

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bfloat16_in_onednn": cpu_has_bfloat16(),
            "python": platform.python_version(), "torch": torch.__version__,
            "bentoml": bentoml.__version__, "load_average_at_start": os.getloadavg(),
            "busy_processes_at_start": others}



def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models" / "pretrained",
                        help="folder with the four model artifacts (the shipped ones by default)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench",
                        help="where bench.json and bench.md go")
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured wrk seconds before each (0: none)")
    parser.add_argument("--ceiling-seconds", type=float, default=1.5,
                        help="least seconds per ceiling measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the ceiling")
    parser.add_argument("--compare", nargs="*", default=[], metavar="REF",
                        help="also serve these commits (git archive, each with the models it shipped) "
                             "and measure them at c = 1, 16, 64 (--compare-endpoints: /sentiment by "
                             "default), for a before/after in the same run")
    parser.add_argument("--settings", nargs="*", default=[], metavar="VAR=VALUE[,VAR=VALUE]",
                        help="also serve the working tree with these settings (e.g. RNNSERVE_WORKERS=2) "
                             "and measure them like --compare")
    parser.add_argument("--base-settings", default="", metavar="VAR=VALUE[,VAR=VALUE]",
                        help="settings of every server measured, under each variant's own (e.g. "
                             "RNNSERVE_WORKERS=2 on a 2-core machine)")
    parser.add_argument("--compare-endpoints", nargs="+", choices=tuple(ENDPOINTS), default=["sentiment"],
                        help="the endpoints --compare and --settings measure")
    parser.add_argument("--skip-off", action="store_true", help="skip the batching-off server")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="serve and measure every model, server and ceiling at this one precision "
                             "(RNNSERVE_PRECISION), as if it were the default; no precisions section "
                             "(default: the service's default, "
                             f"{DEFAULT_PRECISION})")
    parser.add_argument("--skip-precisions", "--skip-quantization", action="store_true",
                        help="skip the precisions section: each precision's validation quality, "
                             "ceilings and server")
    parser.add_argument("--only", nargs="+", choices=tuple(ENDPOINTS), default=tuple(ENDPOINTS),
                        help="measure only these endpoints (development; the report needs all)")
    args = parser.parse_args(argv)

    missing = [name for name in MODEL_FOLDERS if not (args.models / name).is_dir()]
    if missing:
        parser.error(f"{args.models} lacks {', '.join(missing)}")
    if subprocess.run(["wrk", "--version"], capture_output=True).returncode not in (0, 1):
        parser.error("wrk not found: apt-get install wrk")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = machine_conditions()
    texts = load_validation_texts()
    bodies = request_bodies(texts)
    torch.set_num_threads(args.threads)
    uniform = args.precision is not None
    served = args.precision or DEFAULT_PRECISION
    pipelines = Pipelines.load(args.models)  # float32, as loaded
    precisions = (None if args.skip_precisions or uniform
                  else measure_precisions(pipelines, texts, args.ceiling_seconds))
    ceiling = (mixed_ceiling(precisions["ceilings"], served) if precisions
               else measure_ceiling(pipelines.at_precision(served), texts, args.ceiling_seconds))
    del pipelines

    base = {**parse_settings(args.base_settings),
            **({"RNNSERVE_PRECISION": args.precision} if uniform else {})}
    everything = {name: CONCURRENCY for name in args.only}
    variants = [Variant("batching on", REPO_ROOT, base, everything)]
    if not args.skip_off:
        # generation with one sequence at a time at c=64 would take minutes per point
        off = {"sentiment": CONCURRENCY, "translate": CONCURRENCY, "generate": (1, 16)}
        # one sequence at a time: 16 queued 200-character requests take many seconds each
        variants.append(Variant("batching off", REPO_ROOT, {**base, **BATCHING_OFF},
                                {name: off[name] for name in args.only}, longer={"generate": 20}))
    if precisions:
        variants += [Variant(precision, REPO_ROOT, {**base, "RNNSERVE_PRECISION": precision}, everything)
                     for precision in PRECISIONS]
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-") as tmp:
        workdir = Path(tmp)
        bentoml_home = workdir / "bentoml_home"
        import_models(args.models, bentoml_home)
        extra = []
        compared = {name: CONCURRENCY for name in args.compare_endpoints}
        for ref in args.compare:
            commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, check=True,
                                    capture_output=True, text=True).stdout.strip()
            tree = export_tree(commit, workdir / f"tree-{commit}")
            # A commit serves the models it shipped: today's may need code it does not have.
            home = import_models(tree / "models" / "pretrained", workdir / f"bentoml_home-{commit}")
            extra.append(Variant(f"commit {commit}", tree, base, compared,
                                 bentoml_home=home))
        for settings in args.settings:
            extra.append(Variant(settings, REPO_ROOT, {**base, **parse_settings(settings)},
                                 compared))
        comparisons = {v.name: measure_variant(v, bentoml_home, workdir, bodies, args.seconds, args.warmup)
                       for v in extra}
        service = {v.name: measure_variant(v, bentoml_home, workdir, bodies, args.seconds, args.warmup)
                   for v in variants}

    report = {
        "command": "python -m loadtest.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine, "busy_processes_at_end": busy_processes()},
        "models": str(args.models), "precision": served, "ceiling_threads": args.threads,
        "base_settings": base,
        "wrk": {"threads": 1, "seconds": args.seconds, "warmup_seconds": args.warmup},
        "ceiling": ceiling, "precisions": precisions, "service": service, "comparisons": comparisons,
        "targets": targets(ceiling, service["batching on"], service.get("batching off")),
        "targets_lower": ({precision: targets(precisions["ceilings"][precision], service[precision], None)
                           for precision in PRECISIONS} if precisions else None),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "bench.md")
    log.info("wrote %s and %s", args.out / "bench.json", args.out / "bench.md")
    for row in report["targets"]:
        log.info("%-80s %10.3g %-3s %s %g: %s", row["target"], row["measured"], row["unit"], row["direction"],
                 row["goal"], "met" if row["met"] else "NOT met")


if __name__ == "__main__":
    main()
