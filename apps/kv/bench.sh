#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-kv against redis-server with redis-benchmark, alternating servers run by run.
#   apps/kv/bench.sh [--aof] BUILD_BIN_DIR [RUNS] [OUT_CSV]
# --aof: both servers with appendonly yes / appendfsync everysec, each in a fresh empty
# directory, keel-kv 1 and 2 shards against redis-server, SET -P 16 only (docs/kv.md,
# "Persistence").
# Servers: keel-kv 1 shard, keel-kv 2 shards (copy hand-off), keel-kv 2 shards (export
# hand-off), redis-server (save "", appendonly no). keel-kv runs with --idle-poll-us 0
# (it sleeps in the kernel when idle, as redis-server does). For each server, run and
# setting: a fresh server, then redis-benchmark -t set and -t get (-c 50, -P 1 or 16),
# each with the server's CPU time (utime+stime from /proc/PID/stat) over its window and
# the client's CPU time and wall time (bash's time): a client busy for most of its wall
# time is the bottleneck (redis-benchmark is one thread).
# Prints one CSV line per measurement; summarise with apps/kv/bench_summary.py.
set -euo pipefail
aof=0
if [ "${1:-}" = --aof ]; then
	aof=1
	shift
fi
bin=${1:?usage: bench.sh [--aof] BUILD_BIN_DIR [RUNS] [OUT_CSV]}
runs=${2:-5}
out=${3:-/dev/stdout}
port=7390
command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing (apt install redis-tools)" >&2; exit 77; }
command -v redis-server >/dev/null || { echo "redis-server missing (apt install redis-server)" >&2; exit 77; }
tck=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() {
	local kv=() rd=(--appendonly no)
	dir=
	if [ $aof = 1 ]; then
		dir=$(mktemp -d /tmp/kv-aof-bench.XXXXXX)
		kv=(--appendonly yes --appendfsync everysec --dir "$dir")
		rd=(--appendonly yes --appendfsync everysec --dir "$dir")
	fi
	case $1 in
	keel1) "$bin/keel-kv" --port $port --addr 127.0.0.1 --shards 1 --idle-poll-us 0 "${kv[@]}" 2>/dev/null & ;;
	keel2) "$bin/keel-kv" --port $port --addr 127.0.0.1 --shards 2 --idle-poll-us 0 "${kv[@]}" 2>/dev/null & ;;
	keel2x) "$bin/keel-kv" --port $port --addr 127.0.0.1 --shards 2 --idle-poll-us 0 --handoff export 2>/dev/null & ;;
	redis) redis-server --port $port --bind 127.0.0.1 --save '' "${rd[@]}" --logfile /dev/null & ;;
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
	[ -z "$dir" ] || rm -rf "$dir"
}

servers="keel1 keel2 keel2x redis" pipelines="1 16" tests="set get"
[ $aof = 0 ] || { servers="keel1 keel2 redis" pipelines=16 tests=set; }

echo "run,server,pipeline,test,rps,p50_ms,p99_ms,requests,server_cpu_s,client_cpu_s,wall_s" >"$out"
TIMEFORMAT='%U %S %R' # the client's user and system CPU seconds, and its wall time
for run in $(seq "$runs"); do
	for srv in $servers; do
		for P in $pipelines; do
			n=$((P == 1 ? 50000 : 400000))
			start $srv
			for t in $tests; do
				c0=$(cpu_ticks "$pid")
				{ time redis-benchmark -p $port -c 50 -P $P -n $n -t $t -r 100000 -d 100 --csv >/tmp/kvbench.$$ 2>/dev/null; } 2>/tmp/kvbench.time.$$
				c1=$(cpu_ticks "$pid")
				line=$(tail -1 /tmp/kvbench.$$)
				read -r cu cs wall </tmp/kvbench.time.$$
				ccpu=$(awk -v u="$cu" -v s="$cs" 'BEGIN{printf "%.2f", u+s}')
				# "SET","400000.00","0.783","0.100","0.700","1.000","1.500","3.000"
				IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$(tr -d '"' <<<"$line")"
				cpu=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN{printf "%.2f", (b-a)/t}')
				echo "$run,$srv,$P,$t,$rps,$p50,$p99,$n,$cpu,$ccpu,$wall" >>"$out"
			done
			stop
		done
	done
done
rm -f /tmp/kvbench.$$ /tmp/kvbench.time.$$
