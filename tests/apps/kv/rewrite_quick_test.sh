#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/bench/kv_rewrite.sh on a small table, so that the script cannot rot: it must exit 0
# and print its result line and its medians for keel-kv. Skipped (77) when it says a program
# is missing. The figures mean nothing at this size.
#   rewrite_quick_test.sh TOOLS_BENCH_KV_REWRITE_SH KEEL_KV
set -uo pipefail
script=${1:?usage: rewrite_quick_test.sh KV_REWRITE_SH KEEL_KV}
kv=${2:?usage: rewrite_quick_test.sh KV_REWRITE_SH KEEL_KV}
out=$(mktemp /tmp/kv-rewrite-quick.XXXXXX)
trap 'rm -f "$out"' EXIT
timeout 120 bash "$script" --keys 20000 --runs 1 "$kv" >"$out" 2>&1
rc=$?
[ $rc = 77 ] && { cat "$out"; exit 77; }
[ $rc = 0 ] || { echo "FAIL: kv_rewrite.sh exited with $rc"; cat "$out"; exit 1; }
grep -Eq "^$kv keys=[0-9]+ reply_ms=[0-9]+ rewrite_s=[0-9.]+ ping_max_ms=[0-9]+ mem_mib=-?[0-9]+ stalls_ms=" "$out" ||
	{ echo "FAIL: no result line"; cat "$out"; exit 1; }
grep -Eq "^  $kv keys=[0-9.]+ reply_ms=[0-9.]+ rewrite_s=[0-9.]+ ping_max_ms=[0-9.]+ mem_mib=-?[0-9.]+$" "$out" ||
	{ echo "FAIL: no medians line"; cat "$out"; exit 1; }
echo PASS
