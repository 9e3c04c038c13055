#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/bench/kv.sh --quick end to end, so that the benchmark script cannot rot: it must exit
# 0 and write a CSV with every measurement, a markdown table with a row per test and -P,
# and a PNG chart. Skipped (77) when kv.sh says a program is missing.
#   bench_quick_test.sh TOOLS_BENCH_KV_SH BUILD_BIN_DIR
set -uo pipefail
script=${1:?usage: bench_quick_test.sh KV_SH BIN_DIR}
bin=${2:?usage: bench_quick_test.sh KV_SH BIN_DIR}
out=$(mktemp -d /tmp/kv-bench-quick.XXXXXX)
trap 'rm -rf "$out"' EXIT
timeout 240 bash "$script" --quick --out "$out" "$bin"
rc=$?
[ $rc = 77 ] && exit 77
[ $rc = 0 ] || { echo "FAIL: kv.sh --quick exited with $rc"; exit 1; }
# 2 servers x 2 pipelines x 4 tests, one run.
lines=$(($(wc -l <"$out/kv.csv") - 1))
[ "$lines" = 16 ] || { echo "FAIL: kv.csv has $lines measurements, not 16"; cat "$out/kv.csv"; exit 1; }
for P in 1 16; do
	for t in SET GET INCR MSET; do
		grep -q "^| off | $P | $t | keel1 | 1 | [0-9]" "$out/kv.md" ||
			{ echo "FAIL: no -P $P $t row in kv.md"; cat "$out/kv.md"; exit 1; }
	done
done
[ "$(head -c 4 "$out/kv.png" | od -An -c | tr -d ' ')" = '211PNG' ] ||
	{ echo "FAIL: kv.png is not a PNG"; exit 1; }
echo PASS
