#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Soak: keel-kv under redis-benchmark and keel-echo under keel-bench (TCP, and UDP on a second
# keel-echo) for MINUTES, with random client disconnects, sampling both servers' RSS and descriptor count; prints a summary and
# exits 1 when a check failed. Not in CI (too long); docs/reliability.md has the figures.
#   tools/soak.sh MINUTES [BUILD_DIR]      (default build)
#   SOAK_IDLE_POLL_US=N: the servers' shards poll N us before they sleep (default 0: they
#   sleep at once; a polling shard takes other paths through its loop and its ring)
# Load, all at once, each in a loop of short runs (every run's end closes its connections):
#   - redis-benchmark on keel-kv: SET/GET/INCR/MSET/PING, random clients (5..50), pipeline
#     depth (1..32) and key space; its errors ("Error ...", a non-zero exit) are counted;
#   - keel-bench throughput and connections on keel-echo: random connections, sizes and
#     depths; keel-bench checks every echoed byte against the stream it sent and fails the
#     run on a difference (tools/keel-bench/proto.c);
#   - keel-bench udp on keel-echo --udp: random sockets, sizes (16..1472 B) and datagrams in
#     flight; every echo is checked byte for byte (a datagram lost is counted, not failed:
#     UDP may drop); the echoes go out batched with UDP_SEGMENT (docs/net.md, "UDP");
#   - tools/soak/chaos.py: checked kv pipelines and echo streams (every reply compared),
#     connections dropped mid-request or mid-reply with FIN or RST, peers that never read or
#     stop half-way through a command.
# Checks (stated in the summary):
#   - every reply correct: no keel-bench failure, no redis-benchmark error, no chaos mismatch;
#   - RSS flat after warm-up: warm-up is the first quarter of the run; the largest RSS of the
#     last quarter is at most the largest of the second quarter + 10% + 8 MiB;
#   - descriptors flat: the largest count of the last quarter is at most the largest of the
#     second quarter + 32, and once the load has stopped the count is back to its value
#     before the load (+ 2);
#   - both servers stop on SIGTERM with status 0.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: tools/soak.sh MINUTES [BUILD_DIR]}
build=${2:-build}
for b in keel-kv keel-echo keel-bench; do
	[ -x "$build/bin/$b" ] || { echo "soak: $build/bin/$b missing: build first"; exit 1; }
done
command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null ||
	{ echo "soak: redis-benchmark or redis-cli missing (apt-get install redis-tools)"; exit 1; }
out=${SOAK_DIR:-$(mktemp -d /tmp/keel-soak.XXXXXX)}
mkdir -p "$out"
secs=$((minutes * 60))
poll=${SOAK_IDLE_POLL_US:-0}
[[ $poll =~ ^[0-9]+$ ]] || { echo "soak: SOAK_IDLE_POLL_US must be a number of microseconds"; exit 1; }
pids=()
kvpid= echopid= udppid= chaos=
cleanup() {
	# chaos.py too: a background job ignores SIGINT, and it would go on to the end time.
	for p in "${pids[@]}" $kvpid $echopid $udppid $chaos; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT

start() { # NAME BINARY ARGS... -> sets REPLY to the port, $! to the pid
	local name=$1 log=$out/$1.log port=
	shift
	"$@" --port 0 --addr 127.0.0.1 --shards 2 --idle-poll-us "$poll" >"$log" 2>&1 &
	pids+=($!) # killed on exit even when it never says its port
	for _ in $(seq 100); do
		port=$(sed -n 's/.*listening on .* port \([1-9][0-9]*\).*/\1/p' "$log" | head -1)
		[ -n "$port" ] && break
		sleep 0.1
	done
	[ -n "$port" ] || { cat "$log"; echo "soak: $name did not start"; exit 1; }
	REPLY=$port
}
start keel-kv "$build/bin/keel-kv"
kvpid=$! kvport=$REPLY
start keel-echo "$build/bin/keel-echo"
echopid=$! echoport=$REPLY
# keel-echo --udp prints no port (each shard binds it with SO_REUSEPORT): give it a free one.
udpport=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$build/bin/keel-echo" --udp --port "$udpport" --addr 127.0.0.1 --shards 2 --idle-poll-us "$poll" \
	--stats >"$out/keel-echo-udp.log" 2>&1 &
udppid=$!
for _ in $(seq 100); do # bound once /proc/net/udp lists the port
	grep -qi ":$(printf '%04X' "$udpport") " /proc/net/udp && break
	sleep 0.1
done
kill -0 $udppid 2>/dev/null || { cat "$out/keel-echo-udp.log"; echo "soak: keel-echo --udp did not start"; exit 1; }

sample() { # PID -> "rss_kb fds"
	echo "$(awk '/^VmRSS:/{print $2}' "/proc/$1/status") $(ls "/proc/$1/fd" | wc -l)"
}
fd_kv0=$(sample $kvpid | cut -d' ' -f2)
fd_echo0=$(sample $echopid | cut -d' ' -f2)
fd_udp0=$(sample $udppid | cut -d' ' -f2)
t0=$(date +%s)
end=$((t0 + secs))
echo "soak: $minutes min; shards poll $poll us; keel-kv port $kvport (pid $kvpid), keel-echo port $echoport (pid $echopid), keel-echo --udp port $udpport (pid $udppid); logs in $out"

# Sampler: every 5 s, seconds since start, then RSS KiB and descriptors of keel-kv and
# keel-echo, then keel-kv's keys (DBSIZE) and its own count of key/value bytes (INFO
# used_memory): RSS that grows with the data set is not a leak; then keel-echo --udp's.
kvdata() {
	local k m
	k=$(timeout 10 redis-cli -p "$kvport" DBSIZE 2>/dev/null | tr -d '\r')
	m=$(timeout 10 redis-cli -p "$kvport" INFO memory 2>/dev/null | tr -d '\r' | sed -n 's/^used_memory://p')
	echo "${k:--1} ${m:--1}"
}
(
	while [ "$(date +%s)" -lt "$end" ]; do
		echo "$(($(date +%s) - t0)) $(sample $kvpid) $(sample $echopid) $(kvdata) $(sample $udppid)"
		sleep 5
	done
) >"$out/samples.txt" &
pids+=($!)

# redis-benchmark loop on keel-kv.
(
	runs=0 errs=0 reqs=0
	while [ "$(date +%s)" -lt "$end" ]; do
		c=$((5 + RANDOM % 46)) p=$((1 + RANDOM % 32)) r=$((1000 + RANDOM * 3))
		o=$(timeout 120 redis-benchmark -p "$kvport" -t set,get,incr,mset,ping -n 20000 -c $c -P $p \
			-r $r -q 2>&1 | tr '\r' '\n')
		st=$?
		runs=$((runs + 1))
		if [ $st -ne 0 ] || grep -qiE "error" <<<"$o"; then
			errs=$((errs + 1))
			{ echo "run $runs (-c $c -P $p -r $r): status $st"; grep -iE "error" <<<"$o" | head -5; } >>"$out/redis-errors.txt"
		fi
		reqs=$((reqs + 6 * 20000))
	done
	echo "redis-benchmark runs=$runs requests=$reqs failed_runs=$errs"
) >"$out/redis.txt" 2>&1 &
pids+=($!)

# keel-bench loop on keel-echo: throughput with random shapes, and connection churn.
(
	runs=0 errs=0
	while [ "$(date +%s)" -lt "$end" ]; do
		if [ $((RANDOM % 3)) -eq 0 ]; then
			args=(connections --conns $((1 + RANDOM % 8)) --idle $((RANDOM % 200)) --churn $((1 + RANDOM % 50)))
		else
			args=(throughput --conns $((1 + RANDOM % 16)) --size $((1 + RANDOM % 16384)) --inflight $((1 + RANDOM % 64)))
		fi
		runs=$((runs + 1))
		if ! timeout 120 "$build/bin/keel-bench" "${args[@]}" --port "$echoport" --seconds $((1 + RANDOM % 5)) \
			--warmup 0 --no-pin --shards 1 --client keel --idle-poll-us 0 >"$out/bench.last" 2>&1; then
			errs=$((errs + 1))
			{ echo "run $runs: ${args[*]}"; tail -5 "$out/bench.last"; } >>"$out/bench-errors.txt"
		fi
	done
	echo "keel-bench runs=$runs failed_runs=$errs"
) >"$out/bench.txt" 2>&1 &
pids+=($!)

# keel-bench udp loop on keel-echo --udp.
(
	runs=0 errs=0
	while [ "$(date +%s)" -lt "$end" ]; do
		args=(udp --conns $((1 + RANDOM % 4)) --size $((16 + RANDOM % 1457)) --inflight $((1 + RANDOM % 64)))
		runs=$((runs + 1))
		if ! timeout 120 "$build/bin/keel-bench" "${args[@]}" --port "$udpport" --seconds $((1 + RANDOM % 5)) \
			--warmup 0 --no-pin >"$out/udp.last" 2>&1; then
			errs=$((errs + 1))
			{ echo "run $runs: ${args[*]}"; tail -5 "$out/udp.last"; } >>"$out/udp-errors.txt"
		fi
	done
	echo "keel-bench-udp runs=$runs failed_runs=$errs"
) >"$out/udp.txt" 2>&1 &
pids+=($!)

python3 tools/soak/chaos.py "$echoport" "$kvport" "$end" "$t0" >"$out/chaos.txt" 2>&1 &
chaos=$!

wait "${pids[@]}" 2>/dev/null
wait $chaos
chaos_st=$?
chaos=
pids=()
sleep 3 # the last connections close
final_kv=$(sample $kvpid) final_echo=$(sample $echopid) final_udp=$(sample $udppid)

status=0
fail() { echo "soak: FAIL: $*"; status=1; }
read -r _ redis_runs redis_reqs redis_fail <<<"$(sed 's/[a-z_-]*=//g' "$out/redis.txt" | tail -1)"
read -r _ bench_runs bench_fail <<<"$(sed 's/[a-z_-]*=//g' "$out/bench.txt" | tail -1)"
[ "${redis_fail:-1}" = 0 ] || fail "redis-benchmark: ${redis_fail:-?} runs with errors ($out/redis-errors.txt)"
[ "${bench_fail:-1}" = 0 ] || fail "keel-bench: ${bench_fail:-?} runs failed ($out/bench-errors.txt)"
read -r _ udp_runs udp_fail <<<"$(sed 's/[a-z_-]*=//g' "$out/udp.txt" | tail -1)"
[ "${udp_fail:-1}" = 0 ] || fail "keel-bench udp: ${udp_fail:-?} runs failed ($out/udp-errors.txt)"
[ $chaos_st -eq 0 ] || fail "chaos client: wrong or failed checked replies ($out/chaos.txt)"

# Flatness over the quarters of the samples (columns: t kv_rss kv_fds echo_rss echo_fds kv_keys
# kv_used_memory udp_rss udp_fds).
flat=$(awk -v fkv0="$fd_kv0" -v fe0="$fd_echo0" -v fu0="$fd_udp0" -v fkv="${final_kv#* }" \
	-v fe="${final_echo#* }" -v fu="${final_udp#* }" '
	{ t[NR] = $1; for (c = 2; c <= 9; c++) v[NR, c] = $c }
	END {
		n = NR; q = int(n / 4); if (q < 1) q = 1
		split("kv_rss kv_fds echo_rss echo_fds - - udp_rss udp_fds", name, " ")
		for (c = 2; c <= 9; c++) {
			if (c == 6 || c == 7)
				continue
			m2 = 0; m4 = 0; lo = 1e18; hi = 0
			for (i = q + 1; i <= 2 * q; i++) if (v[i, c] > m2) m2 = v[i, c]
			for (i = n - q + 1; i <= n; i++) if (v[i, c] > m4) m4 = v[i, c]
			for (i = q + 1; i <= n; i++) { if (v[i, c] < lo) lo = v[i, c]; if (v[i, c] > hi) hi = v[i, c] }
			rss = (c == 2 || c == 4 || c == 8)
			ok = rss ? (m4 <= m2 * 1.10 + 8192) : (m4 <= m2 + 32)
			printf "%s first=%d after_warmup_min=%d max=%d q2_max=%d q4_max=%d %s\n", name[c - 1], v[1, c], lo, hi, m2, m4, ok ? "flat" : "GROWING"
		}
		printf "fds_after_load kv=%d (before %d) echo=%d (before %d) udp=%d (before %d) %s\n", fkv, fkv0, fe, fe0, fu, fu0, (fkv <= fkv0 + 2 && fe <= fe0 + 2 && fu <= fu0 + 2) ? "back" : "LEAKED"
		printf "kv_data keys %d -> %d (end of warm-up -> end), used_memory %d -> %d bytes\n", v[q + 1, 6], v[n, 6], v[q + 1, 7], v[n, 7]
		printf "samples=%d warmup_samples=%d\n", n, q
	}' "$out/samples.txt")
grep -qE "GROWING|LEAKED" <<<"$flat" && fail "a server's RSS or descriptors grew (see below)"

kill -TERM $kvpid $echopid $udppid
wait $kvpid; kv_st=$?
wait $echopid; echo_st=$?
wait $udppid; udp_st=$?
kvpid= echopid= udppid=
[ $kv_st -eq 0 ] || fail "keel-kv exited with status $kv_st ($out/keel-kv.log)"
[ $echo_st -eq 0 ] || fail "keel-echo exited with status $echo_st ($out/keel-echo.log)"
[ $udp_st -eq 0 ] || fail "keel-echo --udp exited with status $udp_st ($out/keel-echo-udp.log)"

echo "== soak summary: $minutes min, $(nproc) CPUs, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(cat "$out/redis.txt")"
echo "$(cat "$out/bench.txt")"
echo "$(cat "$out/udp.txt"); lost: $(sed -n 's/.* \([0-9]*\) lost .*/\1/p' "$out"/udp.last | head -1) in the last run"
grep "net: UDP" "$out/keel-echo-udp.log"
echo "$(tail -1 "$out/chaos.txt")"
echo "$flat"
echo "servers exited: keel-kv $kv_st, keel-echo $echo_st, keel-echo --udp $udp_st"
echo "samples: $out/samples.txt (t kv_rss_kb kv_fds echo_rss_kb echo_fds kv_keys kv_used_memory udp_rss_kb udp_fds)"
[ $status -eq 0 ] && echo "soak: PASS" || echo "soak: FAILED"
exit $status
