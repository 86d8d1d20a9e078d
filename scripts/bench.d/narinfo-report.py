#!/usr/bin/env python3
"""Turns scripts/bench-narinfo's raw results ("<run> <key> <value>" lines) into a markdown
table: min / median / max per server over the runs, and ncps/nginx per run (both servers of a
run saw the same machine load). Throughput ratios are ncps/nginx (above 1: ncps serves more);
latency ratios are ncps/nginx too (below 1: ncps answers sooner).

    narinfo-report.py results.txt   (env: RATES)
"""
import os
import statistics
import sys
from collections import defaultdict

values = defaultdict(dict)  # key -> run -> value
for line in open(sys.argv[1]):
    run, key, value = line.split()
    values[key][run] = float(value)


def rps(v):
    return f"{v:,.0f}".replace(",", " ")


def us(v):
    return f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms"


def spread(key, fmt):
    runs = values.get(key)
    if not runs:
        return "—"
    v = sorted(runs.values())
    med = statistics.median(v)
    if len(v) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(v[0])}–{fmt(v[-1])})"


def ratio(key):
    ncps, nginx = values.get(f"{key}_ncps", {}), values.get(f"{key}_nginx", {})
    per_run = sorted(ncps[r] / nginx[r] for r in ncps if r in nginx and nginx[r])
    if not per_run:
        return "—"
    med = statistics.median(per_run)
    if len(per_run) == 1:
        return f"{med:.2f}×"
    return f"{med:.2f}× ({per_run[0]:.2f}–{per_run[-1]:.2f}×)"


rows = [
    ("single", "one narinfo (memo)"),
    ("hot", "cycling over a hot set (memo)"),
    ("all", "uniform over every path (database)"),
]
print("| access pattern | measure | ncps | nginx | ncps/nginx |")
print("|---|---|---|---|---|")
for key, label in rows:
    for measure, fmt in (("rps", rps), ("p50", us), ("p99", us)):
        name = {"rps": "requests/s", "p50": "p50", "p99": "p99"}[measure]
        k = f"{key}_{measure}"
        print(
            f"| {label} | {name} | {spread(k + '_ncps', fmt)} | {spread(k + '_nginx', fmt)} | {ratio(k)} |"
        )
for rate in os.environ.get("RATES", "").split():
    label = f"fixed {rate}/s, uniform over every path"
    for measure, fmt, name in (
        ("rps", rps, "requests/s achieved"),
        ("p50", us, "p50"),
        ("p99", us, "p99"),
        ("p999", us, "p99.9"),
    ):
        k = f"rate{rate}_{measure}"
        print(
            f"| {label} | {name} | {spread(k + '_ncps', fmt)} | {spread(k + '_nginx', fmt)} | {ratio(k)} |"
        )
