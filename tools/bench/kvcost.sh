#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-kv's user-space instructions per request, counted by callgrind (docs/kv.md,
# "Per-request cost"):
#   tools/bench/kvcost.sh [BUILD_DIR] [N] [TOP]
# (defaults build, 20000, 12; KVCOST_P="16" runs one pipeline depth only). keel-kv runs
# under callgrind with one shard and no idle polling (valgrind runs one thread at a time:
# tools/valgrind.sh says why one shard); the
# client is redis-benchmark -c 50 -d 100 -r 100000 -n N at -P 1 and -P 16. For each test
# (SET, GET) the server runs twice: once with the passes before it (SET: none; GET: one SET
# pass, so that keys exist) and once with one more pass of the test; the difference / N is
# what one more request costs, start-up, teardown and the other passes left out (the 50
# connections' accept and close stay in; the counts stop before the server is stopped).
# Printed per test: the total, split into keel-kv (apps/kv), keel's runtime (alloc, core,
# net), libc, and the rest (liburing, the dynamic loader); then the TOP functions by
# instructions per request (exclusive). The kernel is not seen: perf record on the server
# shows its share.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
n=${2:-20000}
top=${3:-12}
bin=$build/bin/keel-kv
for c in valgrind callgrind_annotate callgrind_control redis-benchmark; do
	command -v $c >/dev/null || {
		echo "tools/bench/kvcost.sh: $c missing (apt-get install valgrind redis-tools)"
		exit 1
	}
done
[ -x "$bin" ] || { echo "tools/bench/kvcost.sh: $bin missing: build first (cmake --build $build)"; exit 1; }
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

# count OUT PIPELINE TESTS...: one server under callgrind, one redis-benchmark pass per
# test; the per-function exclusive counts go to OUT (instructions TAB file:function [obj]).
count() {
	local out=$1 pl=$2 log=$tmp/log port=
	shift 2
	# Started up to 3 times: under valgrind the start-up sometimes stalls (the shard
	# waiting in io_uring_enter keeps valgrind's lock; tools/valgrind.sh).
	for try in 1 2 3; do
		rm -f "$tmp"/cg*
		valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$bin" --port 0 \
			--addr 127.0.0.1 --shards 1 --idle-poll-us 0 --stall-ms 1000 >"$log" 2>&1 &
		pid=$!
		for _ in $(seq 300); do
			port=$(sed -n 's/.*listening on .* port \([0-9]*\).*/\1/p' "$log" | head -1)
			[ -n "$port" ] && break
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		[ -n "$port" ] && break
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null || true
		pid=
		echo "keel-kv did not start under callgrind in 30 s (try $try of 3)" >&2
	done
	[ -n "$port" ] || { cat "$log"; exit 1; }
	for t in "$@"; do
		redis-benchmark -h 127.0.0.1 -p "$port" -t "$t" -n "$n" -P "$pl" -c 50 -d 100 \
			-r 100000 -q >"$tmp/rb" 2>&1 || { cat "$tmp/rb"; exit 1; }
		grep -q "requests per second" "$tmp/rb" || { cat "$tmp/rb"; exit 1; }
	done
	# Counted up to here (callgrind_control -d writes cg.1): the teardown, which frees
	# every key, is left out.
	callgrind_control -d "$pid" >/dev/null 2>&1
	kill -TERM "$pid"
	wait "$pid" || { cat "$log"; echo "keel-kv exited with an error under callgrind"; exit 1; }
	pid=
	[ -s "$tmp/cg.1" ] || { echo "callgrind_control -d wrote no $tmp/cg.1"; exit 1; }
	callgrind_annotate --inclusive=no --threshold=100 --auto=no "$tmp/cg.1" 2>/dev/null |
		awk '/file:function/ { on = 1; next } on && /^-+$/ { next } on && !NF { exit }
			on { v = $1; gsub(",", "", v); sub(/^ *[0-9,]+ *\([ 0-9.%]*\) */, "");
				print v "\t" $0 }' >"$out"
}

# report NAME A B: (B - A) / n, split and the top functions.
report() {
	awk -F'\t' -v n="$n" -v top="$top" -v name="$1" '
		FNR == NR { a[$2] += $1; next }
		{ b[$2] += $1 }
		END {
			for (f in b) d[f] = b[f] - a[f]
			for (f in a) if (!(f in b)) d[f] = -a[f]
			for (f in d) {
				g = "other"
				if (f ~ /apps\/kv\//) g = "keel-kv"
				else if (f ~ /(^|\/)(alloc|core|net)\//) g = "keel"
				else if (f ~ /libc\.so|libc-|\/libc\//) g = "libc"
				s[g] += d[f]; t += d[f]
			}
			printf "%s: %.0f instructions per request (keel-kv %.0f, keel %.0f, libc %.0f, other %.0f)\n",
				name, t / n, s["keel-kv"] / n, s["keel"] / n, s["libc"] / n, s["other"] / n
			k = 0
			while (k < top) {
				best = ""; bv = 0
				for (f in d) if (d[f] > bv) { bv = d[f]; best = f }
				if (best == "") break
				printf "  %7.1f  %s\n", bv / n, best
				delete d[best]; k++
			}
		}' "$2" "$3"
}

for pl in ${KVCOST_P:-1 16}; do
	count "$tmp/set.a" "$pl"
	count "$tmp/set.b" "$pl" set
	report "SET -P $pl" "$tmp/set.a" "$tmp/set.b"
	count "$tmp/get.a" "$pl" set
	count "$tmp/get.b" "$pl" set get
	report "GET -P $pl" "$tmp/get.a" "$tmp/get.b"
done
