#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# What twemproxy costs in front of keel-kv (docs/kv.md, "Scale-out with twemproxy"):
# redis-benchmark with the same settings against
#   direct  one keel-kv (1 shard),
#   proxy1  nutcracker in front of that same keel-kv (the proxy's own cost),
#   proxy2  nutcracker in front of it and a second keel-kv (ketama over two backends),
# alternating configuration by configuration in every run.
#   tools/bench/kv_proxy.sh BUILD_BIN_DIR [RUNS]      (RUNS default 5)
# Per run and configuration: -c 50, -P 1 (-n 50000) and -P 16 (-n 400000), -t set then get,
# -r 100000 -d 100 --csv. Prints a markdown table: median requests/s with min-max, the
# ratio to direct, median p99 (ms, from redis-benchmark's CSV).
set -euo pipefail
bin=${1:?usage: kv_proxy.sh BUILD_BIN_DIR [RUNS]}
runs=${2:-5}
for p in nutcracker:nutcracker redis-cli:redis-tools redis-benchmark:redis-tools; do
	command -v "${p%%:*}" >/dev/null ||
		{ echo "${p%%:*} is not installed (apt install ${p#*:})" >&2; exit 77; }
done
tmp=$(mktemp -d /tmp/kv-proxy-bench.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % 22000)) # below the ephemeral range (32768-): no TIME_WAIT there
		# nothing bound, no TIME_WAIT (read whole: grep -q's early exit could SIGPIPE ss)
		[ -n "$(ss -tanH "sport = :$p")" ] || { echo $p; return; }
	done
}
wait_ping() { # port
	local i
	for i in $(seq 200); do
		[ "$(timeout 5 redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0
		sleep 0.05
	done
	echo "nothing answers PING on port $1 after 10 s" >&2
	exit 1
}
start_kv() { # -> $port
	port=$(free_port)
	"$bin/keel-kv" --port "$port" --addr 127.0.0.1 --shards 1 --idle-poll-us 0 2>/dev/null &
	pids+=($!)
	wait_ping "$port"
}
start_proxy() { # name, backend ports... -> $port
	local name=$1 i=0 b
	shift
	port=$(free_port)
	{
		echo "keel:"
		echo "  listen: 127.0.0.1:$port"
		echo "  hash: fnv1a_64"
		echo "  distribution: ketama"
		echo "  redis: true"
		echo "  timeout: 10000"
		echo "  auto_eject_hosts: false"
		echo "  servers:"
		for b; do echo "   - 127.0.0.1:$b:1 kv$((++i))"; done
	} >"$tmp/$name.yml"
	nutcracker -c "$tmp/$name.yml" -s "$(free_port)" -a 127.0.0.1 -o "$tmp/$name.log" &
	pids+=($!)
	wait_ping "$port"
}

start_kv
a=$port
start_kv
b=$port
start_proxy proxy1 "$a"
px1=$port
start_proxy proxy2 "$a" "$b"
px2=$port
declare -A target=([direct]=$a [proxy1]=$px1 [proxy2]=$px2)

csv=$tmp/out.csv
echo "run,config,pipeline,test,rps,p99_ms" >"$csv"
for run in $(seq "$runs"); do
	# The configurations' order reverses every other run: a drift of the machine favours
	# none of them.
	order="direct proxy1 proxy2"
	[ $((run % 2)) -eq 1 ] || order="proxy2 proxy1 direct"
	for cfg in $order; do
		for P in 1 16; do
			n=$((P == 1 ? 50000 : 400000))
			for t in set get; do
				# A failed run stops the script with redis-benchmark's own words, and
				# the columns are found by their names in the CSV's header (a CSV
				# without p99 was read as p99 0).
				if ! timeout 300 redis-benchmark -p "${target[$cfg]}" -c 50 -P $P -n $n -t $t \
					-r 100000 -d 100 --csv >"$tmp/bench.csv" 2>"$tmp/bench.err"; then
					echo "kv_proxy.sh: redis-benchmark -t $t -P $P against $cfg failed:" >&2
					cat "$tmp/bench.err" "$tmp/bench.csv" >&2
					exit 1
				fi
				read -r rps p99 < <(tr -d '"' <"$tmp/bench.csv" | awk -F, '
					NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
					END { print $col["rps"], $col["p99_latency_ms"] }')
				[ -n "${p99:-}" ] || {
					echo "kv_proxy.sh: no rps/p99 in redis-benchmark's CSV:" >&2
					cat "$tmp/bench.csv" >&2
					exit 1
				}
				echo "$run,$cfg,$P,$t,$rps,$p99" >>"$csv"
			done
		done
	done
done

echo "| config | -P | test | runs | median req/s | min-max req/s | vs direct | median p99 ms |"
echo "|---|---|---|---|---|---|---|---|"
awk -F, 'NR > 1 { k = $2 SUBSEP $3 SUBSEP $4; v[k] = v[k] " " $5; p[k] = p[k] " " $6; n[k]++ }
function med(s,   a, m, i, j, t) {
	m = split(s, a, " ")
	for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
function mn(s,   a, m, i, r) { m = split(s, a, " "); r = a[1]; for (i = 2; i <= m; i++) if (a[i] + 0 < r + 0) r = a[i]; return r }
function mx(s,   a, m, i, r) { m = split(s, a, " "); r = a[1]; for (i = 2; i <= m; i++) if (a[i] + 0 > r + 0) r = a[i]; return r }
END {
	split("1 16", Ps, " "); split("set get", Ts, " "); split("direct proxy1 proxy2", Cs, " ")
	for (i = 1; i <= 2; i++) for (j = 1; j <= 2; j++) for (c = 1; c <= 3; c++) {
		k = Cs[c] SUBSEP Ps[i] SUBSEP Ts[j]; d = Cs[1] SUBSEP Ps[i] SUBSEP Ts[j]
		printf "| %s | %s | %s | %d | %.0f | %.0f-%.0f | %.2f | %.3f |\n", Cs[c], Ps[i], toupper(Ts[j]),
			n[k], med(v[k]), mn(v[k]), mx(v[k]), med(v[k]) / med(v[d]), med(p[k])
	}
}' "$csv"
