#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Instructions per framed send (tools/bench/frameloop.c), counted by callgrind:
#   tools/bench/frameloop.sh [BUILD_DIR] [ROUNDS] [FRAMES] [SIZES...]
# (defaults build, 200 rounds, 16 frames a round, sizes 16 64 512 4096). For each size the
# workload runs at ROUNDS and 2 x ROUNDS; the difference / (ROUNDS x FRAMES) is what one
# more frame costs, sender and receiver together, without start-up and teardown.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
rounds=${2:-200}
frames=${3:-16}
shift $(($# < 3 ? $# : 3))
sizes=${*:-16 64 512 4096}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -O2 -g -std=gnu11 -I"$build/include" -Icore/include -Ialloc/include -Inet/include \
	tools/bench/frameloop.c -o "$tmp/frameloop" "$build/net/libkeel_net.a" \
	"$build/core/libkeel_core.a" "$build/alloc/libkeel_alloc.a" -luring -lhwloc -ljemalloc \
	-lpthread -lm
# Writes the count to $tmp/ir (a failed run, which valgrind still reports "Collected" for,
# ends the script with the program's own message: $(...) would have hidden its status).
ir() { # size rounds
	if ! valgrind --tool=callgrind --error-exitcode=99 --callgrind-out-file="$tmp/cg" \
		"$tmp/frameloop" "$1" "$frames" "$2" >"$tmp/out" 2>"$tmp/vg"; then
		grep -v '^==' "$tmp/vg" >&2 || true
		echo "frameloop.sh: frameloop $1 $frames $2 failed (its output above)" >&2
		exit 1
	fi
	sed -n 's/.*Collected : *//p' "$tmp/vg" >"$tmp/ir"
	[ -s "$tmp/ir" ] || { echo "frameloop.sh: no instruction count from callgrind" >&2; exit 1; }
}
for s in $sizes; do
	ir "$s" "$rounds"
	a=$(cat "$tmp/ir")
	sends=$(cat "$tmp/out")
	ir "$s" $((2 * rounds))
	b=$(cat "$tmp/ir")
	echo "size $s: $(((b - a) / (rounds * frames))) instructions per frame; $sends"
done
