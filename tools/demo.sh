#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: install what is missing, build Release, show this
# machine's map (keel-topo), then serve a TCP echo on loopback with keel (keel-echo on the
# automatic map that keel-topo --plan writes; nothing is applied) and with the epoll baseline
# (keel-bench serve --backend epoll, as many threads), drive each with the same keel-bench
# client on the next CPU (pingpong, and throughput with 64 messages of 64 B in flight), and
# print keel, epoll and their ratio; then the cross-shard message benchmark beside its
# mutex+eventfd baseline. About 25 s after the build.
#   tools/demo.sh                 3 s per network measurement, 1 s per xshard measurement
#   KEEL_DEMO_SECONDS=5 tools/demo.sh
# The full matrix, with repetitions and a chart: tools/bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
keel_install_missing

seconds=${KEEL_DEMO_SECONDS:-3}
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
# machine match; nothing is applied). keel-echo runs on it; without one, one shard per CPU.
map=()
shards=$(nproc)
if [ -x "$bin/keel-topo" ]; then
	echo
	echo "== this machine's map (keel-topo)"
	"$bin/keel-topo" | sed -n '/^Map/,$p' | grep -E '^Map|^  shard' | head -n 17 || true
	if "$bin/keel-topo" --plan --map "$tmp/keel-map.json" >"$tmp/plan.log" 2>&1; then
		map=(--map "$tmp/keel-map.json")
		n=$("$bin/keel-topo" --map "$tmp/keel-map.json" | grep -c '^  shard' || true)
		[ "${n:-0}" -gt 0 ] && shards=$n
	fi
fi

free_port() {
	local p
	for p in $(seq 27000 27100); do
		ss -Htln 2>/dev/null | awk '{print $4}' | grep -q ":$p\$" || { echo "$p"; return 0; }
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
drive() { # name port
	local mode
	for mode in pingpong throughput; do
		if ! "$bin/keel-bench" "$mode" --size 64 --inflight $([ $mode = pingpong ] && echo 1 || echo 64) \
			--port "$2" --addr 127.0.0.1 --shards "$shards" --seconds "$seconds" --json >"$tmp/$1-$mode.json" 2>"$tmp/$1-$mode.err"; then
			echo "demo.sh: keel-bench $mode against the $1 server failed:" >&2
			cat "$tmp/$1-$mode.json" "$tmp/$1-$mode.err" >&2
			exit 1
		fi
	done
}

echo
echo "== TCP echo on 127.0.0.1: $shards server shard(s) on CPU 0.., the keel-bench client on CPU $shards (mod $(nproc)), ${seconds}s per measurement"
port=$(free_port)
echo "   keel server: keel-echo --port $port --addr 127.0.0.1 ${map[*]:-(one shard per CPU)}"
"$bin/keel-echo" --port "$port" --addr 127.0.0.1 --log-level warn "${map[@]}" >"$tmp/server.log" 2>&1 &
server=$!
wait_listen "$port"
drive keel "$port"
stop_server

port=$(free_port)
echo "   epoll server: keel-bench serve --backend epoll --shards $shards --port $port"
"$bin/keel-bench" serve --backend epoll --shards "$shards" --port "$port" --addr 127.0.0.1 >"$tmp/server.log" 2>&1 &
server=$!
wait_listen "$port"
drive epoll "$port"
stop_server

echo
printf '%-34s %12s %12s %8s\n' "" keel epoll ratio
row() { # label mode field higher-is-better(1|0)
	local k e
	k=$(field "$tmp/keel-$2.json" "$3")
	e=$(field "$tmp/epoll-$2.json" "$3")
	awk -v l="$1" -v k="$k" -v e="$e" -v h="$4" 'BEGIN {
		r = h ? (e > 0 ? k / e : 0) : (k > 0 ? e / k : 0)
		if (k >= 1000) printf "%-34s %12.0f %12.0f %7.2fx\n", l, k, e, r
		else printf "%-34s %12.2f %12.2f %7.2fx\n", l, k, e, r }'
}
row "pingpong 64 B round trips/s" pingpong msgs_per_sec 1
row "pingpong p50 (us)" pingpong lat_p50_us 0
row "pingpong p99 (us)" pingpong lat_p99_us 0
row "throughput 64 B x 64 msgs/s" throughput msgs_per_sec 1
row "throughput p50 (us)" throughput lat_p50_us 0
echo "(ratio > 1: keel is better; latency ratios are epoll/keel; same client, the servers differ)"

echo
echo "== cross-shard messages: keel vs mutex queue + eventfd (1 s per measurement)"
"$bin/keel-bench" xshard --shards 2 --seconds 1

echo
echo "The full matrix (both backends, medians, chart): tools/bench/compare.sh"
