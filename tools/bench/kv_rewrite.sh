#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# BGREWRITEAOF under a write load (docs/kv.md, "Persistence"): how long the server stops
# answering, and how much memory the rewrite takes.
#   tools/bench/kv_rewrite.sh [--keys N] [--runs N] [--port P] [SERVER ...]
# (--port: redis-server's, default 7411; keel-kv takes a free one and says which.)
# SERVER: the path of a keel-kv binary (default build-release/bin/keel-kv), or "redis"
# (redis-server, which forks for its rewrite). Several compare builds, or keel-kv and Redis.
#
# Each run, for each server in turn (the order alternates between runs): the server alone on
# CPU 0, one shard, --appendonly yes --appendfsync everysec in a fresh directory; N SETs
# (default 2,000,000) of 200 B over N random key names from redis-benchmark (-r N: about
# 63 % of the names come up, so 1.26 M keys for 2 M; "keys" gives DBSIZE); then
# redis-benchmark SETs them again (-P 16, on CPU 1) while BGREWRITEAOF runs, and a loop of redis-cli PINGs (a new
# process each, one after another) times the longest round trip until INFO says the rewrite
# is over. A PING through a new redis-cli takes about 20 ms on a 2-vCPU VM with nothing
# else going on: that is the floor of "ping_max_ms".
#
# One line per server and run: keys, reply_ms (BGREWRITEAOF's own reply), rewrite_s, ping_max_ms,
# mem_mib (the peak growth of the server's memory, its forked children's included: Pss, so
# that pages a fork shares count once and pages copied on write twice), stalls_ms
# (keel-kv: the loop passes over --stall-ms it logged meanwhile; at most one line a second
# is logged), then the medians. Default 3 runs. A rewrite that fails stops the script (1).
# Exit 77 when redis-benchmark, redis-cli or redis-server (when named) is missing, or CPUs 0
# and 1 cannot both be used.
set -euo pipefail
keys=2000000 runs=3 port=7411 servers=()
while [ $# -gt 0 ]; do
	case $1 in
	--keys) keys=$2; shift ;;
	--runs) runs=$2; shift ;;
	--port) port=$2; shift ;;
	-h | --help) sed -n '3,20p' "$0"; exit 0 ;;
	-*) echo "kv_rewrite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) servers+=("$1") ;;
	esac
	shift
done
[ ${#servers[@]} -gt 0 ] || servers=(build-release/bin/keel-kv)
for p in redis-benchmark:redis-tools redis-cli:redis-tools; do
	command -v "${p%%:*}" >/dev/null ||
		{ echo "kv_rewrite.sh: ${p%%:*} is not installed (apt install ${p#*:})" >&2; exit 77; }
done
taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null ||
	{ echo "kv_rewrite.sh: needs CPUs 0 and 1 (server, load)" >&2; exit 77; }
for s in "${servers[@]}"; do
	if [ "$s" = redis ]; then
		command -v redis-server >/dev/null ||
			{ echo "kv_rewrite.sh: redis-server is not installed (apt install redis-server)" >&2; exit 77; }
	elif [ ! -x "$s" ]; then
		echo "kv_rewrite.sh: $s is not an executable keel-kv (build it, or name redis)" >&2
		exit 2
	fi
done

# The memory of @pid and of its children, in KiB: their proportional set sizes (Pss) added
# up, so that a page a fork shares is counted once and a page copied on write twice.
mem_tree() {
	local t=0 c v
	for c in "$1" $(pgrep -P "$1" || true); do
		# A child that is exiting has no Pss line any more.
		v=$(awk '/^Pss:/{print $2}' /proc/"$c"/smaps_rollup 2>/dev/null || true)
		t=$((t + ${v:-0}))
	done
	echo $t
}

results=$(mktemp /tmp/kv-rewrite.XXXXXX)
pid="" bp=""
# Whatever way the script ends, its server and load go with it (one() runs in this shell).
rundir="" # the data directory of the run in progress (one()), removed with it however it ends
trap 'kill $bp $pid 2>/dev/null || true; rm -f "$results"; [ -z "$rundir" ] || rm -rf "$rundir" "$rundir.log"' EXIT
trap 'exit 130' INT TERM
field() { # INFO persistence field
	redis-cli -p "$port" info persistence | tr -d '\r' | sed -n "s/^$1://p"
}
commands() { # INFO stats total_commands_processed
	redis-cli -p "$port" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'
}

one() { # server -> one result line, appended to $results
	local s=$1 dir l0 l1 t0 tb t1 a b r worst=0 mem0 peak n=0 stalls="" keys0 rw0
	dir=$(mktemp -d /tmp/kv-rewrite-dir.XXXXXX)
	rundir=$dir
	if [ "$s" = redis ]; then
		taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes \
			--appendfsync everysec --auto-aof-rewrite-percentage 0 --dir "$dir" \
			>"$dir.log" 2>&1 &
	else # a port of its own choosing (0), read from its log: no clash with other programs
		# No automatic rewrite in the load, as for redis (a build from before it has
		# none, nor the option: its usage says which).
		# The usage read whole first: grep -q quits at the match, and under pipefail the
		# program's SIGPIPE (141: every time with the ASan build) failed the test, so the
		# automatic rewrite stayed on, and a file past 64 MB in the load started one
		# before BGREWRITEAOF ("already in progress").
		local auto=() usage
		usage=$("$s" --help 2>&1 || true)
		[[ $usage == *--auto-aof-rewrite-percentage* ]] && auto=(--auto-aof-rewrite-percentage 0)
		"$s" --port 0 --addr 127.0.0.1 --shards 1 --cpuset 0 --idle-poll-us 0 \
			--appendonly yes --appendfsync everysec "${auto[@]}" --dir "$dir" >"$dir.log" 2>&1 &
	fi
	pid=$!
	local want=$port
	port=""
	for _ in $(seq 100); do
		if [ "$s" = redis ]; then
			redis-cli -p "$want" ping >/dev/null 2>&1 && port=$want
		else
			port=$(sed -n 's/^keel-kv: bound [^ ]* port \([0-9]*\);.*/\1/p' "$dir.log")
		fi
		[ -n "$port" ] && redis-cli -p "$port" ping >/dev/null 2>&1 && break
		kill -0 $pid 2>/dev/null || break
		sleep 0.1
	done
	[ -n "$port" ] && redis-cli -p "$port" ping >/dev/null 2>&1 ||
		{ echo "kv_rewrite.sh: $s did not answer:" >&2; cat "$dir.log" >&2; exit 1; }
	taskset -c 1 redis-benchmark -p "$port" -t set -n "$keys" -r "$keys" -d 200 -P 32 -q \
		>/dev/null 2>&1
	keys0=$(redis-cli -p "$port" dbsize)
	rw0=$(field aof_rewrites)
	mem0=$(mem_tree $pid) peak=$mem0
	taskset -c 1 redis-benchmark -p "$port" -t set -n 1000000000 -r "$keys" -d 200 -P 16 -q \
		>/dev/null 2>&1 &
	bp=$!
	sleep 1
	c0=$(commands)
	l0=$(wc -l <"$dir.log")
	t0=$(date +%s%N)
	a=$(redis-cli -p "$port" bgrewriteaof)
	tb=$(date +%s%N)
	case $a in
	"Background append only file rewriting"*) ;;
	*) echo "kv_rewrite.sh: $s: BGREWRITEAOF said: $a" >&2; exit 1 ;;
	esac
	while :; do
		a=$(date +%s%N)
		redis-cli -p "$port" ping >/dev/null
		b=$(date +%s%N)
		[ $((b - a)) -gt $worst ] && worst=$((b - a))
		r=$(mem_tree $pid)
		[ "$r" -gt "$peak" ] && peak=$r
		n=$((n + 1))
		[ "$(field aof_rewrite_in_progress)" = 0 ] && [ $n -gt 1 ] && break
	done
	t1=$(date +%s%N)
	l1=$(wc -l <"$dir.log")
	# The figures are of a rewrite under load: the load must have run all along (a
	# redis-benchmark that failed at once left an idle server's rewrite measured).
	c1=$(commands)
	kill -0 $bp 2>/dev/null && [ $((c1 - c0)) -gt 0 ] || {
		echo "kv_rewrite.sh: $s: the SET load did not run through the rewrite" \
			"($((c1 - c0)) commands processed; redis-benchmark $(kill -0 $bp 2>/dev/null &&
				echo running || echo ended))" >&2
		exit 1
	}
	# A rewrite that failed is no figure: keel-kv counts the ones done, Redis says so.
	if [ "$s" = redis ]; then
		a=$(field aof_last_bgrewrite_status)
		[ "$a" = ok ] || a="aof_last_bgrewrite_status $a"
	else
		a=ok
		[ "$(field aof_rewrites)" -gt "$rw0" ] || a="aof_rewrites still $rw0"
	fi
	[ "$a" = ok ] ||
		{ echo "kv_rewrite.sh: $s: the rewrite failed ($a):" >&2; cat "$dir.log" >&2; exit 1; }
	stalls=$(sed -n "$((l0 + 1)),${l1}p" "$dir.log" |
		sed -n 's/.*loop pass took \([0-9.]*\) ms.*/\1/p' | paste -sd, -)
	kill $bp 2>/dev/null || true
	wait $bp 2>/dev/null || true
	kill $pid 2>/dev/null || true
	wait $pid 2>/dev/null || true
	pid="" bp=""
	rm -rf "$dir" "$dir.log"
	rundir=""
	port=$want
	printf '%s keys=%d reply_ms=%d rewrite_s=%.2f ping_max_ms=%d mem_mib=%d stalls_ms=%s\n' "$s" "$keys0" \
		$(((tb - t0) / 1000000)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a) / 1e9 }')" \
		$((worst / 1000000)) $(((peak - mem0) / 1024)) "${stalls:-none}" >>"$results"
	tail -n 1 "$results"
}

for run in $(seq "$runs"); do
	order=("${servers[@]}")
	if [ $((run % 2)) -eq 0 ]; then # alternate: the last server first
		order=()
		for ((i = ${#servers[@]} - 1; i >= 0; i--)); do order+=("${servers[$i]}"); done
	fi
	for s in "${order[@]}"; do one "$s"; done
done
echo "medians of $runs runs ($keys SETs of 200 B over $keys names, SET load -P 16 during the rewrite):"
for s in "${servers[@]}"; do
	printf '  %s' "$s"
	for f in keys reply_ms rewrite_s ping_max_ms mem_mib; do
		printf ' %s=%s' $f "$(grep "^$s " "$results" | sed -n "s/.* $f=\([0-9.]*\).*/\1/p" |
			sort -g | awk '{v[NR] = $1} END {printf "%.10g\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')"
	done
	echo
done
