#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Summarise apps/kv/bench.sh's CSV: median requests/s with min-max, median p99, server
# CPU per request, and the ratio to redis-server, as a markdown table.
import csv, statistics, sys
from collections import defaultdict

rows = defaultdict(list)
for r in csv.DictReader(open(sys.argv[1])):
    rows[(r["server"], int(r["pipeline"]), r["test"])].append(r)

def med(k, f):
    return statistics.median(float(r[f]) for r in rows[k])

print("| server | -P | test | runs | median req/s | min-max req/s | vs redis | median p99 ms | server CPU us/req | client CPU / wall |")
print("|---|---|---|---|---|---|---|---|---|---|")
for P in (1, 16):
    for t in ("set", "get"):
        for s in ("redis", "keel1", "keel2", "keel2x"):
            k = (s, P, t)
            if not rows[k]:
                continue
            rps = [float(r["rps"]) for r in rows[k]]
            cpu = statistics.median(float(r["server_cpu_s"]) * 1e6 / float(r["requests"]) for r in rows[k])
            busy = (f"{statistics.median(float(r['client_cpu_s']) / float(r['wall_s']) for r in rows[k]):.0%}"
                    if "wall_s" in rows[k][0] and float(rows[k][0]["wall_s"]) > 0 else "-")
            ratio = med(k, "rps") / med(("redis", P, t), "rps") if rows[("redis", P, t)] else float("nan")
            print(f"| {s} | {P} | {t.upper()} | {len(rps)} | {statistics.median(rps):,.0f} | "
                  f"{min(rps):,.0f}-{max(rps):,.0f} | {ratio:.2f} | {med(k, 'p99_ms'):.3f} | {cpu:.2f} | {busy} |")
