#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/bench/compare.sh --quick end to end (loopback only): both files exist, compare.md has
# a row for each mode of the quick matrix with both backends' figures non-zero, and
# compare.png is a PNG. Skips (77) when gnuplot or iperf3 is missing (tools/test.sh installs
# them).
#   compare_quick.sh BIN_DIR OUT_DIR
set -euo pipefail
bin=$1
out=$2
for t in gnuplot iperf3 ss; do
	command -v "$t" >/dev/null || { echo "SKIP: $t is not installed (tools/test.sh installs it)"; exit 77; }
done
root=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$out"
bash "$root/tools/bench/compare.sh" --quick --bin "$bin" --out "$out"
md=$out/compare.md
png=$out/compare.png
[ -s "$md" ] || { echo "FAIL: no $md"; exit 1; }
[ -s "$png" ] || { echo "FAIL: no $png"; exit 1; }
magic=$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')
[ "$magic" = 89504e470d0a1a0a ] || { echo "FAIL: $png is not a PNG ($magic)"; exit 1; }
fail=0
for row in "pingpong 64 1" "pingpong 64 16" "throughput 64 1" "stream 65536 1"; do
	read -r mode size conns <<<"$row"
	line=$(grep "^| $mode | $size | $conns |" "$md" || true)
	[ -n "$line" ] || { echo "FAIL: no row $row in $md"; fail=1; continue; }
	# columns: mode size conns inflight keel epoll ratio ...
	awk -F'|' -v r="$row" '{k = $6 + 0; e = $7 + 0; q = $8 + 0
		if (k <= 0 || e <= 0 || q <= 0) { printf "FAIL: row %s: keel %s epoll %s ratio %s\n", r, $6, $7, $8; exit 1 }}' \
		<<<"$line" || fail=1
done
grep -q '^| iperf3 (reference) | .* [0-9.]*[1-9][0-9.]* (one way' "$md" || { echo "FAIL: no iperf3 row"; fail=1; }
[ $fail -eq 0 ] && echo "compare_quick: ok"
exit $fail
