#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/bench/scaling.sh's table (written again from compare.sh's summary.tsv files with
# --report-only): a row whose runs were client-bound measured the client, so its rate
# verdict says "rate moot (client-bound)" as compare.md's does; it printed "keel ahead". The
# paired verdicts have their column.
#   scaling_report_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp -d /tmp/keel-scaling-test.XXXXXX)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/shards-1"
: >"$out/shards-1/compare.md"
# compare.sh's summary.tsv columns; two rows, keel 1.20x the epoll server's rate (p 0.008),
# one client-bound in 5 of 5 repetitions of both servers, the other in none; over the
# pairs keel is ahead (p 0.016) and its CPU 1.0x (p 1).
{
	printf 'row\tmode\tsize\tinflight\tconns\tthreads\tpolicy\tserver\tn\tmedian\tmin\tmax\tp50_us\tp99_us\tserver_cpu_ns_per_msg\tserver_cores\tclient_cores_used\tclient_bound_reps\tlost\tratio_median\tratio_min\tratio_max\tserver_cpus_ns_per_msg\tp_rate\tp_cpu\tp_cpus\tserver_cpu_min\tserver_cpu_max\tcpu_ratio_median\tcpu_ratio_min\tcpu_ratio_max\tclient_cpu_ns_per_msg\ttotal_cpu_ns_per_msg\tp_total\ttotal_ratio_median\ttotal_ratio_min\ttotal_ratio_max\tlate\tlost_all\tp_rate_paired\tp_cpu_paired\n'
	for r in "pp64 5" "tp64 0"; do
		set -- $r
		printf '%s\tpingpong\t64\t1\t32\t1\tblock\tepoll\t5\t1000\t900\t1100\t30\t60\t5000\t0.9\t0.95\t%s\t0\t-\t-\t-\t5000\t-\t-\t-\t4900\t5100\t-\t-\t-\t2000\t7000\t-\t-\t-\t-\t0\t0\t-\t-\n' "$1" "$2"
		printf '%s\tpingpong\t64\t1\t32\t1\tblock\tkeel\t5\t1200\t1100\t1300\t25\t50\t5000\t0.9\t0.95\t%s\t0\t1.2\t1.1\t1.3\t5000\t0.0079\t0.5\t0.5\t4900\t5100\t1.0\t0.98\t1.02\t2000\t7000\t0.5\t1.0\t0.99\t1.01\t0\t0\t0.015625\t1\n' "$1" "$2"
	done
} >"$out/shards-1/summary.tsv"
bash "$root/tools/bench/scaling.sh" --report-only --shards 1 --cpus 2 --policies block \
	--out "$out" >/dev/null
fail=0
bound=$(grep '| pp64 |' "$out/scaling.md" || true)
free=$(grep '| tp64 |' "$out/scaling.md" || true)
if [[ $bound == *"rate moot (client-bound): keel ahead"* ]]; then
	echo "ok: the client-bound row's rate verdict is moot"
else
	echo "FAIL: the client-bound row: $bound"
	fail=1
fi
if [[ $free == *"keel ahead"* && $free != *"moot"* ]]; then
	echo "ok: the other row's verdict stands"
else
	echo "FAIL: the row not client-bound: $free"
	fail=1
fi
# the pairs column (after the rank-sum's), moot where the rank-sum's is
if [[ $free == *"| keel ahead (p 0.016); not shown (p 1.00) |"* &&
	$bound == *"| rate moot (client-bound): keel ahead (p 0.016); not shown (p 1.00) |"* ]]; then
	echo "ok: the paired verdicts"
else
	echo "FAIL: the paired verdicts: $free / $bound"
	fail=1
fi
grep -q '^- pairs (p): ' "$out/scaling.md" || { echo "FAIL: scaling.md does not say what pairs (p) is"; fail=1; }
exit $fail
