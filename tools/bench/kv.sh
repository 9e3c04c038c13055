#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-kv against redis-server with redis-benchmark (docs/kv.md, "Measurements").
#   tools/bench/kv.sh [--runs N] [--aof | --persist none|aof|both] [--servers "keel1 redis ..."]
#                     [--out DIR] [--quick] [BUILD_BIN_DIR]
# Defaults: 5 runs, persistence off, servers "keel1 redis", out DIR build/kv-bench,
# BUILD_BIN_DIR build/bin.
#
# Servers: keel1 = keel-kv 1 shard, keel2 = 2 shards (copy hand-off), keel2x = 2 shards
# (export hand-off), all with --idle-poll-us 0 and --wait-coalesce-us 0 (they sleep in the
# kernel when idle, at once, as redis-server's epoll_wait does); keel1gather = 1 shard
# whose sleeps gather arrivals for keel's default 10 us (redis-server has no such policy:
# a column of its own; keel1 had it until the thirty-seventh session); keel1poll = 1 shard
# with keel's default idle polling and gathering (it spins a while before sleeping: not the
# same policy as redis-server, a column of its own); redis = redis-server, its default
# single event loop, --save ''. With 2 CPUs or more, a one-shard server and redis-server
# run on CPU 0 and redis-benchmark on CPU 1 (keel pins its shards itself; redis-server
# and the client floated); with keel2 and keel2x the client shares the shards' CPUs.
# Persistence: none = --appendonly no on both; aof = --appendonly yes --appendfsync everysec
# on both, each server in a fresh empty directory. --aof is --persist aof.
#
# Matrix, alternating server by server within every run, the servers' order reversed in
# every other run: for each persistence and -P 1 /
# -P 16 a fresh server, then redis-benchmark -c 50 -d 100 -r 100000 --csv for -t set, get,
# incr, mset in turn (-n 50000 at -P 1, 400000 at -P 16; MSET a quarter of that: each
# MSET writes 10 keys; requests/s counts commands). For each: requests/s and p99 (ms) from
# redis-benchmark's CSV; the server's CPU (utime+stime from /proc/PID/stat, before and after
# the benchmark) per request; the client's CPU over its wall time (bash's time): at 90 % or
# more the one-threaded redis-benchmark is the bottleneck ("client-bound"), and the row
# measures the client more than the server.
#
# Writes DIR/kv.csv (every measurement), DIR/kv.md (medians with min-max, ratio to
# redis-server, and the aims each keel-kv row misses: >= 1.3x requests/s at -P 16, >= 1.1x
# at -P 1, lower p99, no more server CPU per request) and DIR/kv.png (gnuplot: bars per
# row, min-max error bars). --quick: 1 run, -n 2000 / 20000, for the test that keeps this
# script working (tests/apps/kv, CTest kv_bench_quick): its figures mean nothing.
# Exit 77 when redis-server, redis-benchmark, redis-cli or gnuplot is missing (the message
# names the package).
set -euo pipefail
runs=5 persist=none servers="keel1 redis" out=build/kv-bench quick=0 bin=build/bin
while [ $# -gt 0 ]; do
	case $1 in
	--runs) runs=$2; shift ;;
	--aof) persist=aof ;;
	--persist) persist=$2; shift ;;
	--servers) servers=$2; shift ;;
	--out) out=$2; shift ;;
	--quick) quick=1 runs=1 ;;
	-h | --help) sed -n '3,30p' "$0"; exit 0 ;;
	-*) echo "kv.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) bin=$1 ;;
	esac
	shift
done
case $persist in
none | aof) persists=$persist ;;
both) persists="none aof" ;;
*) echo "kv.sh: --persist takes none, aof or both, not '$persist'" >&2; exit 2 ;;
esac
[ -x "$bin/keel-kv" ] || { echo "kv.sh: no $bin/keel-kv: build first, or name the build's bin directory" >&2; exit 2; }
for p in redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools gnuplot:gnuplot-nox; do
	command -v "${p%%:*}" >/dev/null ||
		{ echo "kv.sh: ${p%%:*} is not installed (apt install ${p#*:})" >&2; exit 77; }
done
mkdir -p "$out"
tmp=$(mktemp -d /tmp/kv-bench.XXXXXX)
pid=
cleanup() {
	[ -z "$pid" ] || { kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; } || true
	rm -rf "$tmp"
}
trap cleanup EXIT
tck=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % 22000)) # below the ephemeral range (32768-): no TIME_WAIT there
		# nothing bound, no TIME_WAIT (read whole: grep -q's early exit could SIGPIPE ss)
		[ -n "$(ss -tanH "sport = :$p")" ] || { echo $p; return; }
	done
}

start() { # server persistence -> $pid $port
	local kv=(--appendonly no) rd=(--appendonly no) dir=$tmp/data i
	rm -rf "$dir"
	mkdir -p "$dir"
	if [ "$2" = aof ]; then
		# No automatic rewrite on either: redis's runs in a child whose CPU
		# /proc/PID/stat's utime+stime leave out, and the same policy for both.
		kv=(--appendonly yes --appendfsync everysec --auto-aof-rewrite-percentage 0
			--dir "$dir")
		rd=(--appendonly yes --appendfsync everysec --auto-aof-rewrite-percentage 0
			--dir "$dir")
	fi
	port=$(free_port)
	local keel=("$bin/keel-kv" --port "$port" --addr 127.0.0.1 "${kv[@]}") one=() pin=()
	if [ "$(nproc)" -ge 2 ]; then
		one=(--cpuset 0)
		pin=(taskset -c 0)
		cli=(taskset -c 1)
	fi
	case $1 in
	keel1) "${keel[@]}" --shards 1 "${one[@]}" --idle-poll-us 0 --wait-coalesce-us 0 2>"$tmp/server.log" & ;;
	keel1gather) "${keel[@]}" --shards 1 "${one[@]}" --idle-poll-us 0 2>"$tmp/server.log" & ;;
	keel1poll) "${keel[@]}" --shards 1 "${one[@]}" 2>"$tmp/server.log" & ;;
	keel2) cli=(); "${keel[@]}" --shards 2 --idle-poll-us 0 --wait-coalesce-us 0 2>"$tmp/server.log" & ;;
	keel2x) cli=(); "${keel[@]}" --shards 2 --idle-poll-us 0 --wait-coalesce-us 0 --handoff export \
		2>"$tmp/server.log" & ;;
	redis) "${pin[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' "${rd[@]}" \
		--logfile "$tmp/server.log" & ;;
	*) echo "kv.sh: unknown server $1 (keel1, keel1gather, keel1poll, keel2, keel2x, redis)" >&2; exit 2 ;;
	esac
	pid=$!
	for i in $(seq 200); do
		[ "$(timeout 5 redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	echo "kv.sh: server $1 did not answer PING within 10 s on port $port:" >&2
	cat "$tmp/server.log" >&2
	exit 1
}

stop() {
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=
}

csv=$out/kv.csv
echo "run,persist,server,pipeline,test,rps,p99_ms,requests,server_cpu_s,client_cpu_s,wall_s" >"$csv"
TIMEFORMAT='%U %S %R' # the client's user and system CPU seconds, and its wall time
cli=()
rservers=$(echo "$servers" | tr ' ' '\n' | tac | tr '\n' ' ')
for run in $(seq "$runs"); do
	order=$servers
	[ $((run % 2)) -eq 1 ] || order=$rservers
	for pe in $persists; do
		for srv in $order; do
			for P in 1 16; do
				n=$((P == 1 ? 50000 : 400000))
				[ $quick = 0 ] || n=$((P == 1 ? 2000 : 20000))
				start "$srv" "$pe"
				for t in set get incr mset; do
					nt=$n
					[ $t != mset ] || nt=$((n / 4))
					c0=$(cpu_ticks "$pid")
					{ time "${cli[@]}" timeout 600 redis-benchmark -p "$port" -c 50 -P $P -n $nt -t $t -r 100000 \
						-d 100 --csv >"$tmp/bench.csv" 2>"$tmp/bench.err"; } 2>"$tmp/time" || {
						echo "kv.sh: redis-benchmark -t $t -P $P against $srv failed:" >&2
						cat "$tmp/bench.err" "$tmp/bench.csv" >&2
						exit 1
					}
					c1=$(cpu_ticks "$pid")
					read -r cu cs wall <"$tmp/time"
					# The header names the columns: "test","rps",...,"p99_latency_ms",...
					read -r rps p99 < <(tr -d '"' <"$tmp/bench.csv" | awk -F, '
						NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
						END { print $col["rps"], $col["p99_latency_ms"] }')
					[ -n "$p99" ] || { echo "kv.sh: no rps/p99 in redis-benchmark's CSV:" >&2; cat "$tmp/bench.csv" >&2; exit 1; }
					awk -v a="$c0" -v b="$c1" -v t="$tck" -v u="$cu" -v s="$cs" \
						-v l="$run,$pe,$srv,$P,$t,$rps,$p99,$nt" -v w="$wall" \
						'BEGIN { printf "%s,%.2f,%.2f,%s\n", l, (b - a) / t, u + s, w }' >>"$csv"
				done
				stop
			done
		done
	done
done

# Summary: medians over the runs; each non-redis server row beside redis-server's.
awk -F, -v dat="$tmp/chart.dat" '
function med(s,   a, m, i, j, t) {
	m = split(s, a, " ")
	for (i = 2; i <= m; i++)
		for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
}
function lo(s,   a, m, i, r) { m = split(s, a, " "); r = a[1]; for (i = 2; i <= m; i++) if (a[i] + 0 < r + 0) r = a[i]; return r }
function hi(s,   a, m, i, r) { m = split(s, a, " "); r = a[1]; for (i = 2; i <= m; i++) if (a[i] + 0 > r + 0) r = a[i]; return r }
function num(x) { return sprintf("%\047.0f", x) }
NR > 1 {
	k = $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
	rps[k] = rps[k] " " $6; p99[k] = p99[k] " " $7
	cpu[k] = cpu[k] " " ($9 * 1e6 / $8); cl[k] = cl[k] " " ($11 > 0 ? $10 / $11 : 0)
	nr[k]++
	if (!seen_p[$2]++) pl[++np] = $2
	if (!seen_s[$3]++) sl[++ns] = $3
}
END {
	print "| persistence | -P | test | server | runs | req/s median (min-max) | redis-server req/s median (min-max) | ratio | p99 ms (redis) | server CPU us/req (redis) | client CPU/wall (redis) | aims missed |"
	print "|---|---|---|---|---|---|---|---|---|---|---|---|"
	split("1 16", Ps, " "); split("set get incr mset", Ts, " ")
	for (a = 1; a <= np; a++) for (i = 1; i <= 2; i++) for (j = 1; j <= 4; j++) for (s = 1; s <= ns; s++) {
		if (sl[s] == "redis") continue
		k = pl[a] SUBSEP sl[s] SUBSEP Ps[i] SUBSEP Ts[j]; r = pl[a] SUBSEP "redis" SUBSEP Ps[i] SUBSEP Ts[j]
		if (!nr[k] || !nr[r]) continue
		ratio = med(rps[k]) / med(rps[r])
		miss = ""
		if (ratio < 1) miss = miss ", LOSES on req/s"
		else if (ratio < (Ps[i] == 16 ? 1.3 : 1.1)) miss = miss ", req/s under " (Ps[i] == 16 ? "1.3x" : "1.1x")
		if (med(p99[k]) >= med(p99[r])) miss = miss ", p99 not lower"
		if (med(cpu[k]) > med(cpu[r])) miss = miss ", more CPU/req"
		cb = (med(cl[k]) >= 0.9 || med(cl[r]) >= 0.9) ? " (client-bound)" : ""
		printf "| %s | %s | %s | %s | %d | %s (%s-%s) | %s (%s-%s) | %.2f | %.3f (%.3f) | %.2f (%.2f) | %.0f%% (%.0f%%)%s | %s |\n",
			pl[a] == "aof" ? "AOF everysec" : "off", Ps[i], toupper(Ts[j]), sl[s], nr[k],
			num(med(rps[k])), num(lo(rps[k])), num(hi(rps[k])), num(med(rps[r])), num(lo(rps[r])), num(hi(rps[r])),
			ratio, med(p99[k]), med(p99[r]), med(cpu[k]), med(cpu[r]), 100 * med(cl[k]), 100 * med(cl[r]), cb,
			miss == "" ? "none" : substr(miss, 3)
		printf "\"%s%s -P%s\" %s %s %s %s %s %s\n", toupper(Ts[j]), pl[a] == "aof" ? " aof" : "", Ps[i],
			med(rps[k]), lo(rps[k]), hi(rps[k]), med(rps[r]), lo(rps[r]), hi(rps[r]) >> dat
	}
}' "$csv" >"$out/kv.md"

first=$(echo $servers | tr ' ' '\n' | grep -v '^redis$' | head -1 || true)
gnuplot <<EOF
set terminal pngcairo size 1200,600 font ",10"
set output "$out/kv.png"
set title "redis-benchmark -c 50 -d 100: $first vs redis-server, median of $runs run(s), bars min-max"
set ylabel "requests/s (log scale)"
set logscale y
set style data histograms
set style histogram errorbars gap 2 lw 1
set style fill solid 0.7 border -1
set xtics rotate by -30
set key top left
set grid ytics
plot "$tmp/chart.dat" using 2:3:4:xtic(1) title "$first" lc rgb "#1f77b4", \
     "" using 5:6:7 title "redis-server" lc rgb "#d62728"
EOF
{
	echo "Command: tools/bench/kv.sh --runs $runs --persist $persist --servers \"$servers\"$([ $quick = 1 ] && echo ' --quick')"
	echo "Machine: $(nproc) CPUs, $(uname -r), $(redis-server --version | cut -d' ' -f1-3), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
	echo "Chart: $out/kv.png (with a chart per first keel server; other servers are in the table)"
	echo
	cat "$out/kv.md"
} >"$tmp/md" && mv "$tmp/md" "$out/kv.md"
cat "$out/kv.md"
