#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Repeat `keel-bench xshard` and print the medians of keel and of its baseline (two threads,
# mutex queue + eventfd), measured side by side in each run, with their ratios.
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
	"$bin" xshard --shards 2 --seconds "$secs" --json >"$tmp/run$i.json"
done
# Each JSON has keel's fields first, then the same names inside "baseline".
field() { # name which(1=keel,2=baseline) -> median over runs
	for f in "$tmp"/run*.json; do
		grep "\"$1\"" "$f" | sed -n "${2}p" | sed 's/.*: *//; s/,$//'
	done | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'
}
printf '%s runs of %s s each, medians (%s, %s)\n\n' "$reps" "$secs" "$(uname -r)" "$(nproc) CPUs"
printf '| measure | keel | mutex+eventfd | keel/baseline |\n|---|---|---|---|\n'
for m in msgs_per_sec rtt_p50_us rtt_p99_us wake_rtt_p50_us wake_rtt_p99_us; do
	k=$(field "$m" 1)
	b=$(field "$m" 2)
	case $m in
	msgs_per_sec) r=$(awk -v k="$k" -v b="$b" 'BEGIN {printf "%.2fx", k / b}') ;;
	*) r=$(awk -v k="$k" -v b="$b" 'BEGIN {printf "%.2fx faster", b / k}') ;;
	esac
	printf '| %s | %s | %s | %s |\n' "$m" "$k" "$b" "$r"
done
