#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Instruction and system-call counts of the loop's wake-up path (tools/bench/wakeloop.c):
#   tools/bench/wakeloop.sh [BUILD_DIR] [ROUNDS]    (defaults build and 2000)
# Needs valgrind and strace. Prints, per workload: the loop's counters per round, the
# io_uring_enter and clock_gettime calls per round, and the instructions per round that
# callgrind counts in the whole process.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
rounds=${2:-2000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -O2 -g -std=gnu11 -I"$build/include" -Icore/include -Ialloc/include -Inet/include \
	tools/bench/wakeloop.c -o "$tmp/wakeloop" "$build/core/libkeel_core.a" \
	"$build/alloc/libkeel_alloc.a" -luring -lhwloc -ljemalloc -lpthread -lm
# callgrind: the timer workload at ROUNDS and at 2 x ROUNDS; the difference is what ROUNDS
# more wake-ups cost, without start-up and teardown. (Under valgrind 3.19 the two-shard
# workload hangs: a shard blocked in io_uring_enter keeps valgrind's thread lock.)
# Writes "instructions clock_gettime_calls" to $tmp/counts; a failed run ends the script
# (inside $(...) or <(...) its status was lost, and a number printed all the same).
callgrind() { # rounds
	local ir
	if ! valgrind --tool=callgrind --error-exitcode=99 --callgrind-out-file="$tmp/cg" \
		"$tmp/wakeloop" timer "$1" >/dev/null 2>"$tmp/vg"; then
		grep -v '^==' "$tmp/vg" >&2 || true
		echo "wakeloop.sh: wakeloop timer $1 failed (its output above)" >&2
		exit 1
	fi
	ir=$(sed -n 's/.*Collected : *//p' "$tmp/vg")
	[ -n "$ir" ] || { echo "wakeloop.sh: no instruction count from callgrind" >&2; exit 1; }
	# Calls into clock_gettime: callgrind names a function once, then only by its number.
	awk -v ir="$ir" '
		/^c?fn=\(/ {
			id = $0; sub(/^c?fn=\(/, "", id); sub(/\).*/, "", id)
			rest = $0
			if (sub(/^c?fn=\([0-9]+\) /, "", rest)) name[id] = rest
			tgt = ($0 ~ /^cfn=/) && (name[id] ~ /clock_gettime/)
		}
		/^calls=/ && tgt { split($0, a, /[= ]/); c += a[2] }
		END { print ir, c + 0 }' "$tmp/cg" >"$tmp/counts"
}
for w in timer pingpong; do
	echo "== $w, $rounds rounds"
	"$tmp/wakeloop" "$w" "$rounds"
	strace -f -c -e trace=io_uring_enter -o "$tmp/strace" "$tmp/wakeloop" "$w" "$rounds" >/dev/null
	awk -v n="$rounds" '$NF == "io_uring_enter" {printf "io_uring_enter (strace): %.2f per round\n", $4 / n}' "$tmp/strace"
done
callgrind "$rounds"
read -r ir1 ck1 <"$tmp/counts"
callgrind $((2 * rounds))
read -r ir2 ck2 <"$tmp/counts"
awk -v a="$ir1" -v b="$ir2" -v ca="$ck1" -v cb="$ck2" -v n="$rounds" 'BEGIN {
	printf "== timer, callgrind (%d more rounds)\n", n
	printf "instructions: %.0f per round\n", (b - a) / n
	printf "clock_gettime calls: %.2f per round\n", (cb - ca) / n }'
