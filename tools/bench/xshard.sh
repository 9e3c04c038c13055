#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Repeat `keel-bench xshard` and print the medians of keel and of its baseline (two threads,
# a lock-free single-producer single-consumer ring + eventfd), measured side by side in each
# run, which of the two goes first alternating from run to run, with their ratios and
# min-max.
#   tools/bench/xshard.sh [REPS] [SECONDS]      (defaults 5 and 2; builds Release if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-5}
secs=${2:-2}
bin=build-release/bin/keel-bench
if [ ! -x "$bin" ]; then
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF -DKEEL_WERROR=OFF >/dev/null
	cmake --build build-release -j "$(nproc)" >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq "$reps"); do
	first=()
	[ $((i % 2)) -eq 0 ] && first=(--baseline-first)
	"$bin" xshard --shards 2 --seconds "$secs" "${first[@]}" --json >"$tmp/run$i.json"
done
# Each JSON has keel's fields first, then the same names inside "baseline".
field() { # name which(1=keel,2=baseline) -> "median min max" over runs
	for f in "$tmp"/run*.json; do
		grep "\"$1\"" "$f" | sed -n "${2}p" | sed 's/.*: *//; s/,$//'
	done | sort -g | awk '{v[NR]=$1} END {print ((NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2), v[1], v[NR]}'
}
printf '%s runs of %s s each, medians (%s, %s)\n\n' "$reps" "$secs" "$(uname -r)" "$(nproc) CPUs"
ratio() { # name -> "median min max" of the per-run keel/baseline ratios (latency: baseline/keel)
	for f in "$tmp"/run*.json; do
		k=$(grep "\"$1\"" "$f" | sed -n 1p | sed 's/.*: *//; s/,$//')
		b=$(grep "\"$1\"" "$f" | sed -n 2p | sed 's/.*: *//; s/,$//')
		awk -v k="$k" -v b="$b" -v m="$1" 'BEGIN {print (m == "msgs_per_sec") ? k / b : b / k}'
	done | sort -g | awk '{v[NR]=$1} END {printf "%.2f %.2f %.2f\n", ((NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2), v[1], v[NR]}'
}
printf '| measure | keel median (min-max) | spsc+eventfd median (min-max) | keel vs baseline: median of the per-run ratios (min-max); > 1 keel better |\n|---|---|---|---|\n'
for m in msgs_per_sec rtt_p50_us rtt_p99_us wake_rtt_p50_us wake_rtt_p99_us; do
	read -r k klo khi <<<"$(field "$m" 1)"
	read -r b blo bhi <<<"$(field "$m" 2)"
	read -r r rlo rhi <<<"$(ratio "$m")"
	printf '| %s | %s (%s-%s) | %s (%s-%s) | %sx (%s-%s) |\n' "$m" "$k" "$klo" "$khi" "$b" "$blo" "$bhi" "$r" "$rlo" "$rhi"
done
