#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: install what is missing, build Release, show this
# machine's map (keel-topo), then serve a TCP echo on loopback with keel (keel-echo on the
# shards of the automatic map that keel-topo --plan writes; nothing is applied) and with the
# epoll baseline (keel-bench serve --backend epoll, the same CPUs), and drive BOTH with the
# same client program (keel-bench --client epoll) on the next CPU: pingpong, and throughput
# with 64 messages of 64 B in flight, in two polling policies: both servers blocking when idle
# (keel --idle-poll-us 0, epoll --busy-poll-us 0) and both polling 50 us first. Prints keel,
# epoll and their ratio, with each server's CPU per message over the measured window; then
# the cross-shard message benchmark beside its SPSC ring + eventfd baseline. About 30 s after the
# build.
#   tools/demo.sh                 2 s per network measurement, 1 s per xshard measurement
#   KEEL_DEMO_SECONDS=5 tools/demo.sh
# The full matrix, with repetitions and a chart: tools/bench/compare.sh (docs/bench.md)
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
keel_install_missing

seconds=${KEEL_DEMO_SECONDS:-2}
echo "== building (Release) in build-release/"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF -DKEEL_WERROR=OFF >build-release.log 2>&1 ||
	{ cat build-release.log; exit 1; }
cmake --build build-release -j "$(nproc)" >>build-release.log 2>&1 || { cat build-release.log; exit 1; }
bin=build-release/bin

tmp=$(mktemp -d)
server=
stop_server() {
	if [ -n "$server" ]; then
		kill -TERM "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
		server=
	fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# The automatic map: keel-topo --plan writes it (and prints the commands that would make the
# machine match; nothing is applied). keel-echo runs on it; the epoll server on its CPUs.
map=()
srv_cpus=(0)
if [ -x "$bin/keel-topo" ]; then
	echo
	echo "== this machine's map (keel-topo)"
	"$bin/keel-topo" | sed -n '/^Map/,$p' | grep -E '^Map|^  shard' | head -n 17 || true
	if "$bin/keel-topo" --plan --map "$tmp/keel-map.json" >"$tmp/plan.log" 2>&1; then
		mapfile -t c < <(sed -n 's/.*"shard": *[0-9]*, *"cpu": *\([0-9]*\).*/\1/p' "$tmp/keel-map.json")
		if [ ${#c[@]} -gt 0 ]; then
			map=(--map "$tmp/keel-map.json")
			srv_cpus=("${c[@]}")
		fi
	fi
fi
shards=${#srv_cpus[@]}
srv_list=$(IFS=,; echo "${srv_cpus[*]}")
# The CPUs this process may use (a cpuset or taskset may leave some out), one per line.
allowed_cpus() {
	local part
	IFS=, read -ra parts <<<"$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)"
	for part in "${parts[@]}"; do
		if [[ $part == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
	done
}
# The client: the first allowed CPU no shard uses; when every one has a shard, the last,
# shared with its shard (said in the banner).
cli= cli_note=
for c in $(allowed_cpus); do
	[[ ",$srv_list," == *",$c,"* ]] || { cli=$c; break; }
done
if [ -z "$cli" ]; then
	cli=$(allowed_cpus | tail -n 1)
	cli_note=" (shared with a server shard: every allowed CPU has one)"
fi

free_port() {
	local p
	for p in $(seq 27000 27100); do
		ss -Htlnu 2>/dev/null | awk '{print $4}' | grep -q ":$p\$" || { echo "$p"; return 0; }
	done
	echo "demo.sh: no free port in 27000..27100" >&2
	return 1
}
wait_listen() { # port
	local i
	for i in $(seq 100); do
		ss -Htln 2>/dev/null | awk '{print $4}' | grep -q "^127.0.0.1:$1\$" && return 0
		kill -0 "$server" 2>/dev/null || break
		sleep 0.05
	done
	echo "demo.sh: the server on 127.0.0.1:$1 did not start:" >&2
	cat "$tmp/server.log" >&2
	return 1
}
field() { sed -n "s/^ *\"$2\": *\([^,]*\),\{0,1\}$/\1/p" "$1" | head -n 1; }
drive() { # name policy port
	local mode
	for mode in pingpong throughput; do
		if ! "$bin/keel-bench" "$mode" --client epoll --size 64 --inflight $([ $mode = pingpong ] && echo 1 || echo 64) \
			--port "$3" --addr 127.0.0.1 --server-pid "$server" --cpuset "$cli" --seconds "$seconds" \
			--json >"$tmp/$1-$2-$mode.json" 2>"$tmp/$1-$2-$mode.err"; then
			echo "demo.sh: keel-bench $mode against the $1 server ($2) failed:" >&2
			cat "$tmp/$1-$2-$mode.json" "$tmp/$1-$2-$mode.err" >&2
			exit 1
		fi
	done
}

echo
echo "== TCP echo on 127.0.0.1: $shards server shard(s) on CPU $srv_list, ONE client program for both servers"
echo "   (keel-bench --client epoll) on CPU $cli$cli_note, ${seconds}s per measurement; connections"
echo "   placed on shards by hash, as the epoll server's SO_REUSEPORT group places them"
# Both servers' sleeps gather alike: keel-echo's default window (or KEEL_WAIT_COALESCE_US),
# the same for the epoll server, under the same adaptive policy.
gather=${KEEL_WAIT_COALESCE_US:-10}
for pol in block spin; do
	poll=0
	[ $pol = spin ] && poll=50
	port=$(free_port)
	echo "   [$pol] keel server: keel-echo --port $port --steer hash --idle-poll-us $poll ${map[*]:---cpuset $srv_list}"
	if [ ${#map[@]} -gt 0 ]; then
		"$bin/keel-echo" --port "$port" --addr 127.0.0.1 --log-level warn --steer hash \
			--idle-poll-us "$poll" "${map[@]}" >"$tmp/server.log" 2>&1 &
	else
		"$bin/keel-echo" --port "$port" --addr 127.0.0.1 --log-level warn --steer hash \
			--idle-poll-us "$poll" --shards "$shards" --cpuset "$srv_list" >"$tmp/server.log" 2>&1 &
	fi
	server=$!
	wait_listen "$port"
	drive keel $pol "$port"
	stop_server

	port=$(free_port)
	echo "   [$pol] epoll server: keel-bench serve --backend epoll --shards $shards --cpuset $srv_list --busy-poll-us $poll --gather-us $gather"
	"$bin/keel-bench" serve --backend epoll --shards "$shards" --cpuset "$srv_list" --busy-poll-us "$poll" \
		--gather-us "$gather" --port "$port" --addr 127.0.0.1 >"$tmp/server.log" 2>&1 &
	server=$!
	wait_listen "$port"
	drive epoll $pol "$port"
	stop_server
done

row() { # label policy mode field higher-is-better(1|0)
	local k e
	k=$(field "$tmp/keel-$2-$3.json" "$4")
	e=$(field "$tmp/epoll-$2-$3.json" "$4")
	awk -v l="$1" -v k="$k" -v e="$e" -v h="$5" 'BEGIN {
		r = h ? (e > 0 ? k / e : 0) : (k > 0 ? e / k : 0)
		if (k >= 1000) printf "  %-40s %12.0f %12.0f %7.2fx\n", l, k, e, r
		else printf "  %-40s %12.2f %12.2f %7.2fx\n", l, k, e, r }'
}
for pol in block spin; do
	echo
	if [ $pol = block ]; then
		echo "policy BLOCK: both servers sleep in the kernel when idle (keel --idle-poll-us 0, epoll --busy-poll-us 0;"
		echo "  both servers' sleeps may gather arrivals for $gather us, adaptive: keel --wait-coalesce-us, epoll --gather-us)"
	else
		echo "policy SPIN: both servers poll 50 us before sleeping (keel --idle-poll-us 50, epoll --busy-poll-us 50)"
	fi
	printf '  %-40s %12s %12s %8s\n' "" keel epoll ratio
	row "pingpong 64 B round trips/s" $pol pingpong msgs_per_sec 1
	row "pingpong p50 (us)" $pol pingpong lat_p50_us 0
	row "pingpong p99 (us)" $pol pingpong lat_p99_us 0
	row "pingpong server CPU ns/msg (window)" $pol pingpong server_cpu_ns_per_msg 0
	row "throughput 64 B x 64 msgs/s" $pol throughput msgs_per_sec 1
	row "throughput p50 (us)" $pol throughput lat_p50_us 0
	row "throughput server CPU ns/msg (window)" $pol throughput server_cpu_ns_per_msg 0
	for be in keel epoll; do
		for mode in pingpong throughput; do
			[ "$(field "$tmp/$be-$pol-$mode.json" client_bound)" = true ] &&
				echo "  note: $mode against $be was CLIENT-BOUND (the client used its core): compare the server CPU per message there"
			[ "$(field "$tmp/$be-$pol-$mode.json" cpu_sample_late)" = true ] &&
				echo "  note: $mode against $be: the CPU sampler woke late (a loaded machine): its server CPU figure is over a shifted interval"
		done
	done
done
echo "(ratio > 1: keel is better; latency and CPU ratios are epoll/keel; one run each, same client;"
echo " server CPU is the server process's CPU over the measured window only)"

echo
echo "== cross-shard messages: keel vs a lock-free SPSC ring + eventfd (1 s per measurement)"
"$bin/keel-bench" xshard --shards 2 --seconds 1

echo
echo "The full matrix (both policies, repetitions, medians and spread, chart): tools/bench/compare.sh"
