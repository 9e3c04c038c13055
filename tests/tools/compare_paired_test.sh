#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.sh's paired verdicts (compare.md's "pairs (p)" column, summary.tsv's p_rate_paired,
# p_cpu_paired and p_cpus_paired): a machine whose pace doubles and halves from one pair of runs
# to the next spreads each server's repetitions so that the rank-sum cannot tell them apart,
# while keel is 0.95x the epoll server's rate at 1.05x its CPU and 1.10x its CPUs busy in every
# pair. The rank-sum must say "not shown" for both, and the signed-rank test over the 7 pairs
# "keel behind" and "keel dearer" (both CPU figures) at its smallest p, 2 / 2^7; summary.tsv
# has the CPUs busy per-pair ratio (cpus_ratio_median 1.1), the figure to read on veth. keel-bench is replaced by a stub: a server that says which
# backend it is, and a client whose JSON gives the figures of that backend and pair.
#   compare_paired_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/state"
echo 0 >"$tmp/state/runs"
cat >"$tmp/bin/keel-bench" <<STUB
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	echo "\$3" >"$tmp/state/backend" # serve --backend B
	echo "keel-bench serve: stub on 127.0.0.1:1 (a test's)"
	trap 'echo "keel-bench serve: bytes in 0 out 0; 0 errors"; exit 0' TERM
	while :; do sleep 0.05; done
fi
# runs 1-2 are pair 1, 3-4 pair 2...: the odd pairs run at twice the pace
n=\$((\$(cat "$tmp/state/runs") + 1)); echo \$n >"$tmp/state/runs"
pair=\$(((n + 1) / 2)); pace=\$((pair % 2 ? 2 : 1))
if [ "\$(cat "$tmp/state/backend")" = keel ]; then rate=\$((950 * pace)); cpu=\$((2100 / pace)); cpus=\$((1100 / pace))
else rate=\$((1000 * pace)); cpu=\$((2000 / pace)); cpus=\$((1000 / pace)); fi
. "$root/tests/tools/bench_stub.sh"
bench_stub_json \$rate \$cpu 0 \$cpus
STUB
chmod +x "$tmp/bin/keel-bench"
bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --policies block --reps 7 \
	--seconds 0.1 --warmup 0 --epoll-gather-us 0 --no-iperf --no-plot --out "$tmp/out" \
	>"$tmp/log" 2>&1 || { echo "FAIL: compare.sh failed:"; cat "$tmp/log"; exit 1; }
fail=0
line=$(grep '^| pp1 |' "$tmp/out/compare.md") || { echo "FAIL: no pp1 row:"; cat "$tmp/out/compare.md"; exit 1; }
shown=$(awk -F'|' '{ print $20 }' <<<"$line")
pairs=$(awk -F'|' '{ print $21 }' <<<"$line")
[[ $shown == " not shown (p "*"); not shown (p "* ]] ||
	{ echo "FAIL: the rank-sum showed a difference the machine's pace hides: '$shown'"; fail=1; }
[ "$pairs" = " keel behind (p 0.016); keel dearer (p 0.016); CPUs busy: keel dearer (p 0.016) " ] ||
	{ echo "FAIL: pairs column '$pairs', expected keel behind and dearer (both CPU figures) at p 0.016"; fail=1; }
awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
	$8 == "keel" { r = $col["p_rate_paired"]; c = $col["p_cpu_paired"]; b = $col["p_cpus_paired"]
		if (r != 0.015625 || c != 0.015625 || b != 0.015625) { printf "FAIL: summary.tsv p_rate_paired %s p_cpu_paired %s p_cpus_paired %s\n", r, c, b; bad = 1 }
		if ($col["cpus_ratio_median"] != 1.1) { printf "FAIL: summary.tsv cpus_ratio_median %s, not 1.1\n", $col["cpus_ratio_median"]; bad = 1 } }
	END { exit bad }' "$tmp/out/summary.tsv" || fail=1
grep -q '^- pairs (p): ' "$tmp/out/compare.md" || { echo "FAIL: compare.md does not say what pairs (p) is"; fail=1; }
[ $fail -eq 0 ] && echo "compare_paired: ok"
exit $fail
