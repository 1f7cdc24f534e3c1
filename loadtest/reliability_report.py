"""The reliability suite's results and its report: reports/reliability.md and a .json beside it."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Scenario:
    name: str
    trusted: str  # what a trusted server (nginx, Triton, TorchServe) does
    observed: str  # what this one did, with figures
    ok: bool  # behaves as the trusted server does
    figures: dict = field(default_factory=dict)
    detail: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def conditions() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
            f"{os.cpu_count()} CPUs (load average {load} at the end), Python {platform.python_version()}; "
            "client and server on the same machine")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(results: list[Scenario], path: Path, command: str, update: bool = False) -> None:
    """Write `results` to `path` (markdown) and its .json. With `update`, only the scenarios run
    are replaced in the report already there; each keeps the command and conditions of its run."""
    run = f"`{command}`, {conditions()}"
    for result in results:
        result.figures["run"] = run
    header = [f"Run: {conditions()}."]
    if update and path.with_suffix(".json").exists():
        fresh = {result.name: result for result in results}
        earlier = [Scenario(**entry) for entry in json.loads(path.with_suffix(".json").read_text())]
        results = [fresh.pop(r.name, r) for r in earlier] + list(fresh.values())
        header = ["A scenario rerun on its own states its command and conditions in its section; "
                  "the others are from this run:"]
        header += [line for line in path.read_text().splitlines() if line.startswith("Run: ")][:1]
        command = "python -m loadtest.reliability"
    lines = ["# Reliability", "",
             f"`{command}` (`make reliability`): real `bentoml serve` processes of the shipped models, "
             "two workers, loopback. Each scenario, what a trusted server does, and what this one did.",
             "", *header, "",
             "| scenario | trusted server | this server | as trusted |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {cell(r.trusted)} | {cell(r.observed)} | {'yes' if r.ok else '**no**'} |"
              for r in results]
    for result in results:
        run = [f"run: {result.figures['run']}"] if "run" in result.figures else []
        lines += ["", f"## {result.name}", "", *(f"- {line}" for line in [*run, *result.detail]), "",
                  "```json", json.dumps(result.figures, indent=1, default=str), "```"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
