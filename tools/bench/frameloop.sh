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
ir() { # size rounds -> instructions
	valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$tmp/frameloop" "$1" "$frames" \
		"$2" >"$tmp/out" 2>"$tmp/vg"
	sed -n 's/.*Collected : *//p' "$tmp/vg"
}
for s in $sizes; do
	a=$(ir "$s" "$rounds")
	sends=$(cat "$tmp/out")
	b=$(ir "$s" $((2 * rounds)))
	echo "size $s: $(((b - a) / (rounds * frames))) instructions per frame; $sends"
done
