"""loadtest.slo: reading locust's stats CSV and finding breaches."""

from __future__ import annotations

import csv

from loadtest.slo import SLOS, Objective, breaches, main, read_stats

COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "95%", "99%"]


def write_stats(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for name, requests, failures, p95, p99 in rows:
            writer.writerow(["POST", name, requests, failures, p95, p95, p99])
        writer.writerow(["", "Aggregated", 0, 0, 0, 0, 0])


def test_breaches_name_each_missed_objective(tmp_path):
    path = tmp_path / "stats.csv"
    write_stats(path, [("/sentiment", 1000, 5, 40, 300), ("/translate", 100, 0, 100, 200),
                       ("/generate", 0, 0, "N/A", "N/A")])
    rows = read_stats(path)
    assert "Aggregated" not in rows
    slos = {name: Objective(0.001, 50, 250) for name in ("/sentiment", "/translate", "/generate")}
    assert breaches(rows, slos) == ["/sentiment: error rate 0.50% > 0.10%",
                                    "/sentiment: p99 300 ms > 250 ms",
                                    "/translate: p95 100 ms > 50 ms"]


def test_main_exits_nonzero_on_a_breach_and_on_an_empty_run(tmp_path):
    met, missed, empty = tmp_path / "met.csv", tmp_path / "missed.csv", tmp_path / "empty.csv"
    write_stats(met, [("/sentiment", 100, 0, 10, 20)])
    write_stats(missed, [("/sentiment", 100, 0, 10_000, 20_000)])
    write_stats(empty, [])
    assert main([str(met)]) == 0
    assert main([str(missed)]) == 1
    assert main([str(empty)]) == 1



def test_objectives_are_consistent():
    assert all(o.p95_ms <= o.p99_ms and 0 <= o.max_error_rate < 1 for o in SLOS.values())
