#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-kv against redis-server, both with appendonly yes / appendfsync everysec, with
# redis-benchmark SET -P 16, alternating servers run by run (docs/kv.md, "Persistence").
#   apps/kv/bench_aof.sh BUILD_BIN_DIR [RUNS] [OUT_CSV]
# A fresh server and an empty directory for every measurement; keel-kv with
# --idle-poll-us 0 (it sleeps in the kernel when idle, as redis-server does).
set -euo pipefail
bin=${1:?usage: bench_aof.sh BUILD_BIN_DIR [RUNS] [OUT_CSV]}
runs=${2:-5}
out=${3:-/dev/stdout}
port=7391
n=${KV_BENCH_N:-400000}
command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing (apt install redis-tools)" >&2; exit 77; }
command -v redis-server >/dev/null || { echo "redis-server missing (apt install redis-server)" >&2; exit 77; }
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() {
	dir=$(mktemp -d /tmp/kv-aof-bench.XXXXXX)
	case $1 in
	keel1) "$bin/keel-kv" --port $port --addr 127.0.0.1 --shards 1 --idle-poll-us 0 --appendonly yes --appendfsync everysec --dir "$dir" 2>/dev/null & ;;
	keel2) "$bin/keel-kv" --port $port --addr 127.0.0.1 --shards 2 --idle-poll-us 0 --appendonly yes --appendfsync everysec --dir "$dir" 2>/dev/null & ;;
	redis) redis-server --port $port --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec --dir "$dir" --logfile /dev/null & ;;
	esac
	pid=$!
	for _ in $(seq 100); do
		redis-cli -p $port PING >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "server $1 did not start" >&2
	exit 1
}

stop() {
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	rm -rf "$dir"
}

echo "run,server,pipeline,test,rps,p50_ms,p99_ms,requests,server_cpu_s" >"$out"
for run in $(seq "$runs"); do
	for srv in keel1 keel2 redis; do
		start $srv
		c0=$(cpu_ticks "$pid")
		line=$(redis-benchmark -p $port -c 50 -P 16 -n "$n" -t set -r 100000 -d 100 --csv 2>/dev/null | tail -1)
		c1=$(cpu_ticks "$pid")
		IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$(tr -d '"' <<<"$line")"
		cpu=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN{printf "%.2f", (b-a)/t}')
		echo "$run,$srv,16,set,$rps,$p50,$p99,$n,$cpu" >>"$out"
		stop
	done
done
