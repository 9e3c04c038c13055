#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.sh's medians and verdict words, with a stub keel-bench whose i-th run of each
# backend gives a chosen rate:
# - 6 repetitions of rates above a million: the median of an even count (1234562.5) is
#   kept whole in summary.tsv and shown as 1234562 in compare.md, not as awk's 1.23456e+06
#   (1234560, below the row's own minimum, 1234561);
# - 7 repetitions whose medians are equal while the rank-sum shows a difference (p 0.041):
#   the cell says so, not "keel behind" (every keel figure is at or above every epoll one);
# - server CPU figures of 0 (no tick in a short window) are not measurements: they are in
#   neither the median nor the per-pair ratios (as in the tests), where they made keel's
#   median 0 and its CPU ratio 0; nor in the server CPUs' busy median (it kept them).
#   compare_median_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
# run REPS "KEEL RATES" "EPOLL RATES" ["KEEL CPUS" "EPOLL CPUS"]: compare.sh over a stub
# giving them in turn (the server CPU per message 1000 unless given); out in $tmp/out
run() {
	rm -rf "$tmp/bin" "$tmp/state" "$tmp/out"
	mkdir -p "$tmp/bin" "$tmp/state"
	echo 0 >"$tmp/state/keel"
	echo 0 >"$tmp/state/epoll"
	cat >"$tmp/bin/keel-bench" <<STUB
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	echo "\$3" >"$tmp/state/backend" # serve --backend B
	echo "keel-bench serve: stub on 127.0.0.1:1 (a test's)"
	trap 'echo "keel-bench serve: bytes in 0 out 0; 0 errors"; exit 0' TERM
	while :; do sleep 0.05; done
fi
b=\$(cat "$tmp/state/backend")
i=\$((\$(cat "$tmp/state/\$b") + 1)); echo \$i >"$tmp/state/\$b"
if [ "\$b" = keel ]; then rates=($2); cpus=(${4:-}); else rates=($3); cpus=(${5:-}); fi
. "$root/tests/tools/bench_stub.sh"
bench_stub_json \${rates[\$((i - 1))]} \${cpus[\$((i - 1))]:-1000} 0 \${cpus[\$((i - 1))]:-1000}
STUB
	chmod +x "$tmp/bin/keel-bench"
	bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --policies block --reps "$1" \
		--seconds 0.1 --warmup 0 --epoll-gather-us 0 --no-iperf --no-plot --out "$tmp/out" \
		>"$tmp/log" 2>&1 || { echo "FAIL: compare.sh failed:"; cat "$tmp/log"; exit 1; }
}
run 6 "1234561 1234561 1234562 1234563 1234564 1234564" "1000001 1000002 1000002 1000003 1000003 1000004"
med=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
	$8 == "keel" { print $col["median"] }' "$tmp/out/summary.tsv")
[ "$med" = 1234562.5 ] || { echo "FAIL: keel's median in summary.tsv is '$med', not 1234562.5"; fail=1; }
grep -q '^| pp1 |.*| 1234562 (1234561-1234564) |' "$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md's pp1 row lacks the median 1234562 (1234561-1234564):"; grep '^| pp1 |' "$tmp/out/compare.md"; fail=1; }
run 7 "1000 1000 1000 1000 1100 1200 1300" "700 800 900 1000 1000 1000 1000"
line=$(grep '^| pp1 |' "$tmp/out/compare.md") || { echo "FAIL: no pp1 row"; exit 1; }
shown=$(awk -F'|' '{ print $20 }' <<<"$line")
[[ $shown == " shown, medians equal (p 0.041);"* ]] ||
	{ echo "FAIL: equal medians, shown difference: '$shown'"; fail=1; }
run 7 "1000 1000 1000 1000 1000 1000 1000" "1000 1000 1000 1000 1000 1000 1000" \
	"0 0 0 0 900 1000 1100" "1000 1000 1000 1000 1000 1000 1000"
cols=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
	$8 == "keel" { print $col["server_cpu_ns_per_msg"], $col["server_cpu_min"], $col["cpu_ratio_median"] }' \
	"$tmp/out/summary.tsv")
[ "$cols" = "1000 900 1" ] ||
	{ echo "FAIL: keel's CPU median, minimum and ratio are '$cols', not '1000 900 1' (zeros left out)"; fail=1; }
# ... and the server CPUs' busy time of the same runs (the stub gives it the same figures):
# its median kept the zeros (0), where its rank-sum left them out
busy=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
	$8 == "keel" { print $col["server_cpus_ns_per_msg"] }' "$tmp/out/summary.tsv")
[ "$busy" = 1000 ] ||
	{ echo "FAIL: keel's server CPUs busy median is '$busy', not 1000 (zeros left out)"; fail=1; }
[ $fail -eq 0 ] && echo "compare_median: ok"
exit $fail
