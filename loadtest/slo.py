"""Check a locust run against the service's SLOs; exit 1 on any breach.

    python -m loadtest.slo reports/load/load_stats.csv

Per endpoint (locust's request name): the share of failed requests, and the p95 and p99 response
times. An endpoint with no requests in the run is skipped: the profile did not exercise it. The
numbers are for the shipped models on one 2-core machine under `make load`'s default profile;
docs/performance.md lists them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Objective:
    max_error_rate: float  # failed / all requests
    p95_ms: float
    p99_ms: float


SLOS = {
    "/sentiment": Objective(0.001, 100, 250),
    "/translate": Objective(0.001, 1000, 2000),
    "/generate": Objective(0.001, 2500, 4000),
    # the time to the first chunk, i.e. to the first token
    "/generate_stream": Objective(0.001, 250, 500),
    "/generate_stream (complete)": Objective(0.001, 2500, 4000),
}


@dataclass(frozen=True)
class Row:
    name: str
    requests: int
    failures: int
    p95_ms: float
    p99_ms: float


def read_stats(path: Path) -> dict[str, Row]:
    """The per-name rows of a locust `_stats.csv` (the Aggregated row left out)."""
    rows = {}
    with open(path, newline="") as file:
        for record in csv.DictReader(file):
            if record["Name"] == "Aggregated":
                continue
            rows[record["Name"]] = Row(record["Name"], int(record["Request Count"]),
                                       int(record["Failure Count"]), milliseconds(record["95%"]),
                                       milliseconds(record["99%"]))
    return rows


def milliseconds(value: str) -> float:
    """A locust percentile cell; "N/A" (no requests) counts as 0."""
    return 0.0 if value == "N/A" else float(value)


def breaches(rows: dict[str, Row], slos: dict[str, Objective] = SLOS) -> list[str]:
    """One line per objective missed."""
    found = []
    for name, row in rows.items():
        objective = slos.get(name)
        if objective is None or row.requests == 0:
            continue
        error_rate = row.failures / row.requests
        if error_rate > objective.max_error_rate:
            found.append(f"{name}: error rate {error_rate:.2%} > {objective.max_error_rate:.2%}")
        if row.p95_ms > objective.p95_ms:
            found.append(f"{name}: p95 {row.p95_ms:.0f} ms > {objective.p95_ms:.0f} ms")
        if row.p99_ms > objective.p99_ms:
            found.append(f"{name}: p99 {row.p99_ms:.0f} ms > {objective.p99_ms:.0f} ms")
    return found


def report(rows: dict[str, Row], slos: dict[str, Objective] = SLOS) -> str:
    """A table of the run: measured / objective for p95 and p99."""
    lines = [f"{'endpoint':30} {'requests':>8} {'errors':>8} {'p95 ms':>14} {'p99 ms':>14}"]
    for name, row in rows.items():
        objective = slos.get(name)
        p95, p99 = f"{row.p95_ms:.0f}", f"{row.p99_ms:.0f}"
        if objective is not None:
            p95, p99 = f"{p95} / {objective.p95_ms:.0f}", f"{p99} / {objective.p99_ms:.0f}"
        lines.append(f"{name:30} {row.requests:8d} {row.failures:8d} {p95:>14} {p99:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stats_csv", type=Path, help="locust's <prefix>_stats.csv")
    args = parser.parse_args(argv)
    rows = read_stats(args.stats_csv)
    if not any(row.requests for row in rows.values()):
        print(f"{args.stats_csv}: no requests recorded", file=sys.stderr)
        return 1
    print(report(rows))
    missed = breaches(rows)
    for line in missed:
        print(f"SLO breach: {line}", file=sys.stderr)
    print("SLOs met" if not missed else f"{len(missed)} SLO breach(es)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
