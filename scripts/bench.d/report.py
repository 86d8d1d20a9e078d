#!/usr/bin/env python3
"""Turns scripts/bench's raw results ("<run> <key> <value>" lines) into the markdown table:
min / median / max per server over the runs, and the ncps/nginx ratio (computed per run, so
both servers of a run saw the same machine load), with the targets of the step-8 issue.

    report.py results.txt   (env: NARINFO_CONNS, NAR_CONNS, SMALL_NAR_CONNS, CONCURRENT, LARGE_MB, SECS, CLOSURE_PATHS)
"""
import os
import statistics
import sys
from collections import defaultdict

values = defaultdict(dict)  # key -> run -> value
for line in open(sys.argv[1]):
    run, key, value = line.split()
    values[key][run] = float(value)

narinfo_conns = os.environ["NARINFO_CONNS"].split()
nar_conns = os.environ["NAR_CONNS"].split()
small_nar_conns = os.environ["SMALL_NAR_CONNS"].split()
many = os.environ["CONCURRENT"]
large = os.environ["LARGE_MB"]
closure_paths = os.environ["CLOSURE_PATHS"]


def rps(v):
    return f"{v:,.0f}".replace(",", " ")


def us(v):
    return f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms"


def count(v):
    return f"{v:.0f}"


def ms(v):
    return f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms"


def mbs(v):
    return f"{v:,.0f}".replace(",", " ")


def secs(v):
    return f"{v:.2f} s"


def mib(v):
    return f"{v:.0f} MiB"


def spread(key, fmt):
    runs = values.get(key)
    if not runs:
        return "—", None
    v = sorted(runs.values())
    med = statistics.median(v)
    if len(v) == 1:
        return fmt(med), med
    return f"{fmt(v[0])} / **{fmt(med)}** / {fmt(v[-1])}", med


def ratios(a, b):
    ra, rb = values.get(a, {}), values.get(b, {})
    r = sorted(ra[k] / rb[k] for k in ra if k in rb and rb[k] > 0)
    return r


rows = []  # (label, ncps key, nginx key or None, format, target)
for c in narinfo_conns:
    gated = c in ("16", "128")
    rows.append((f"warm narinfo, {c} conn: requests/s", f"ni_c{c}_rps_ncps", f"ni_c{c}_rps_nginx",
                 rps, ("ge", 1.0) if gated else None))
    rows.append((f"warm narinfo, {c} conn: p50", f"ni_c{c}_p50_ncps", f"ni_c{c}_p50_nginx", us, None))
    rows.append((f"warm narinfo, {c} conn: p99", f"ni_c{c}_p99_ncps", f"ni_c{c}_p99_nginx",
                 us, ("le", 1.5) if gated else None))
for c in small_nar_conns:
    for form, server in (("whole file", "ncps"), ("chunked", "cdc")):
        rows.append((f"warm small NARs, {c} conn: requests/s, {form}", f"snar_c{c}_rps_{server}",
                     f"snar_c{c}_rps_nginx", rps, None))
        rows.append((f"warm small NARs, {c} conn: p99, {form}", f"snar_c{c}_p99_{server}",
                     f"snar_c{c}_p99_nginx", us, None))
for c in nar_conns:
    rows.append((f"warm NAR ({large} MB), {c} conn: MB/s, whole file", f"nar_c{c}_mbps_ncps",
                 f"nar_c{c}_mbps_nginx", mbs, ("ge", 0.9)))
    rows.append((f"warm NAR ({large} MB), {c} conn: MB/s, chunked", f"nar_c{c}_mbps_cdc",
                 f"nar_c{c}_mbps_nginx", mbs, ("ge", 0.7)))
rows.append(("warm large NAR: time to first byte, whole file", "nar_ttfb_ncps", "nar_ttfb_nginx",
             ms, None))
rows.append(("warm large NAR: time to first byte, chunked", "nar_ttfb_cdc", "nar_ttfb_nginx",
             ms, None))
rows.append(("peak RSS during the warm NAR rows, whole file", "nar_rss_ncps", None, mib, None))
rows.append(("peak RSS during the warm NAR rows, chunked", "nar_rss_cdc", None, mib, None))
rows.append((f"{many} concurrent warm downloads: MB/s (sum), whole file", "many_mbps_ncps",
             "many_mbps_nginx", mbs, None))
rows.append((f"{many} concurrent warm downloads: MB/s (sum), chunked", "many_mbps_cdc",
             "many_mbps_nginx", mbs, None))
rows.append((f"{many} concurrent warm downloads: connections answered within "
             f"{os.environ['SECS']} s, whole file", "many_answered_ncps", "many_answered_nginx",
             count, None))
rows.append((f"{many} concurrent warm downloads: connections answered within "
             f"{os.environ['SECS']} s, chunked", "many_answered_cdc", "many_answered_nginx",
             count, None))
rows.append((f"{many} concurrent warm downloads: peak RSS, whole file", "many_rss_ncps",
             "many_rss_nginx", mib, ("abs", 100)))
rows.append((f"{many} concurrent warm downloads: peak RSS, chunked", "many_rss_cdc",
             "many_rss_nginx", mib, ("abs", 100)))
rows.append((f"cold closure ({closure_paths} paths, nix copy): time, whole file", "cold_closure_s_ncps",
             "cold_closure_s_nginx", secs, ("le", 1.1)))
rows.append((f"cold closure ({closure_paths} paths, nix copy): time, chunked", "cold_closure_s_cdc",
             "cold_closure_s_nginx", secs, None))
rows.append((f"cold closure ({closure_paths} paths, nix copy): time, chunked lazily", "cold_closure_s_lazy",
             "cold_closure_s_nginx", secs, ("le", 1.1)))
rows.append(("peak RSS during the cold closure, whole file", "cold_closure_rss_ncps", None, mib, None))
rows.append(("peak RSS during the cold closure, chunked", "cold_closure_rss_cdc", None, mib, None))
rows.append(("peak RSS during the cold closure, chunked lazily", "cold_closure_rss_lazy", None, mib, None))
rows.append((f"cold large NAR ({large} MB, 1 download): MB/s, whole file", "cold_large_mbps_ncps",
             "cold_large_mbps_nginx", mbs, None))
rows.append((f"cold large NAR ({large} MB, 1 download): MB/s, chunked", "cold_large_mbps_cdc",
             "cold_large_mbps_nginx", mbs, None))
rows.append((f"cold large NAR ({large} MB, 1 download): MB/s, chunked lazily", "cold_large_mbps_lazy",
             "cold_large_mbps_nginx", mbs, ("ge", 0.6)))
rows.append(("peak RSS during the cold large NAR, whole file", "cold_large_rss_ncps", None, mib, None))
rows.append(("peak RSS during the cold large NAR, chunked", "cold_large_rss_cdc", None, mib, None))
rows.append(("peak RSS during the cold large NAR, chunked lazily", "cold_large_rss_lazy", None, mib, None))

print("| measurement | ncps: min / **median** / max | nginx: min / **median** / max "
      "| ncps/nginx: median (min–max) | target | met |")
print("|---|---|---|---|---|---|")
for label, a, b, fmt, target in rows:
    a_text, a_med = spread(a, fmt)
    b_text, _ = spread(b, fmt) if b else ("—", None)
    r = ratios(a, b) if b else []
    if r:
        med = statistics.median(r)
        ratio_text = f"{med:.2f}× ({r[0]:.2f}–{r[-1]:.2f})" if len(r) > 1 else f"{med:.2f}×"
    else:
        med, ratio_text = None, "—"
    target_text, met = "", ""
    if target:
        kind, x = target
        if kind == "ge":
            target_text = f"≥ {x}×"
            met = "" if med is None else ("yes" if med >= x else "**no**")
        elif kind == "le":
            target_text = f"≤ {x}×"
            met = "" if med is None else ("yes" if med <= x else "**no**")
        else:
            target_text = f"≤ {x} MiB"
            met = "" if a_med is None else ("yes" if a_med <= x else "**no**")
    print(f"| {label} | {a_text} | {b_text} | {ratio_text} | {target_text} | {met} |")

direct = values.get("cold_closure_s_direct")
if direct:
    text, _ = spread("cold_closure_s_direct", secs)
    print()
    print(f"The same cold closure straight from the upstream, no proxy (the floor): {text}.")

errors = {k: v for k, v in values.items() if k.startswith("errors_")}
if errors:
    print()
    print("**Errors during measurements (those numbers are suspect):** " + ", ".join(
        f"{k[7:]}: {int(sum(v.values()))}" for k, v in sorted(errors.items())))
