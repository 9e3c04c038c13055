#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: install what is missing, build Release, show this
# machine's map (keel-topo), then serve a TCP echo on loopback with keel (keel-echo on the
# shards of the automatic map that keel-topo --plan writes; nothing is applied) and with the
# epoll baseline (keel-bench serve --backend epoll, the same CPUs), and drive BOTH with the
# same client program (keel-bench --client epoll) on the next CPU: pingpong, and throughput
# with 64 messages of 64 B in flight, in two polling policies: both servers blocking when idle
# (keel --idle-poll-us 0, epoll --busy-poll-us 0) and both polling 50 us first, 5 alternating
# repetitions of each. Prints keel's and epoll's medians with their min-max and the ratio of
# the medians, with each server's CPU per message over the measured window; then the
# cross-shard message benchmark beside its SPSC ring + eventfd baseline. About 70 s after the
# build on 2 cores.
#   tools/demo.sh                 1 s per network measurement, 1 s per xshard measurement
#   KEEL_DEMO_SECONDS=3 KEEL_DEMO_REPS=7 tools/demo.sh
# The full matrix, with repetitions and a chart: tools/bench/compare.sh (docs/bench.md)
set -euo pipefail
# It takes no argument (KEEL_DEMO_SECONDS and KEEL_DEMO_REPS above): one was ignored.
case "${1:-}" in
'') ;;
-h | --help)
	sed -n '3,16p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "tools/demo.sh: takes no argument (got '$1'); see tools/demo.sh --help" >&2
	exit 2
	;;
esac
cd "$(dirname "$0")/.."
# The build goes in build-release/ here: a checkout that cannot be written fails now, by
# name, not after the build with an old log.
if ! { [ ! -e build-release ] || [ -w build-release ]; } || ! : >>.demo-write-probe 2>/dev/null; then
	echo "demo.sh: cannot write in $PWD (the Release build goes in build-release/ here):" \
		"run it from a writable copy (git clone $PWD /tmp/keel)" >&2
	exit 1
fi
rm -f .demo-write-probe
. tools/deps.sh
keel_install_missing

seconds=${KEEL_DEMO_SECONDS:-1}
reps=${KEEL_DEMO_REPS:-5}
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: KEEL_DEMO_REPS '$reps' is not a count" >&2; exit 2; }
# shellcheck source=bench/parity.sh
. tools/bench/parity.sh
echo "== building (Release) in build-release/"
build_failed() {
	cat build-release.log >&2
	echo "demo.sh: the Release build failed (above; the whole log is build-release.log)" >&2
	exit 1
}
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF -DKEEL_WERROR=OFF >build-release.log 2>&1 ||
	build_failed
cmake --build build-release -j "$(nproc)" >>build-release.log 2>&1 || build_failed
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
# It is kept in build-release/, so the command the banner shows can be run again.
map=()
srv_cpus=(0)
if [ -x "$bin/keel-topo" ]; then
	echo
	echo "== this machine's map (keel-topo)"
	"$bin/keel-topo" | sed -n '/^Map/,$p' | grep -E '^Map|^  shard' | head -n 17 >"$tmp/map.txt" || true
	cat "$tmp/map.txt"
	if grep -q MISMATCH "$tmp/map.txt"; then
		echo "  (MISMATCH: a NIC queue's IRQ is not on its shard's CPU yet; keel-topo --plan prints the"
		echo "  commands that would pin it, docs/topology.md; nothing is applied, and loopback uses no NIC)"
	fi
	if "$bin/keel-topo" --plan --map build-release/keel-map.json >"$tmp/plan.log" 2>&1; then
		mapfile -t c < <(sed -n 's/.*"shard": *[0-9]*, *"cpu": *\([0-9]*\).*/\1/p' build-release/keel-map.json)
		if [ ${#c[@]} -gt 0 ]; then
			map=(--map build-release/keel-map.json)
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

# Each server takes a free port itself (--port 0) and names it in its first line, written
# once every shard listens (keel-echo: "listening on ADDR port P"; keel-bench serve: "on
# ADDR:P"). Prints the port; fails, showing the server's log, if the server ended first or
# said nothing in 10 s.
listen_port() {
	local p
	for _ in $(seq 200); do
		p=$(sed -n -e 's/^keel-echo: listening on [0-9.]* port \([0-9]*\),.*/\1/p' \
			-e 's/^keel-bench serve: .* on [0-9.]*:\([0-9]*\) .*/\1/p' "$tmp/server.log")
		if [ -n "$p" ]; then
			echo "$p"
			return 0
		fi
		kill -0 "$server" 2>/dev/null || break
		sleep 0.05
	done
	echo "demo.sh: the server did not start listening (its log follows):" >&2
	cat "$tmp/server.log" >&2
	return 1
}
field() { sed -n "s/^ *\"$2\": *\([^,]*\),\{0,1\}$/\1/p" "$1" | head -n 1; }
drive() { # name policy port rep
	local mode
	for mode in pingpong throughput; do
		if ! "$bin/keel-bench" "$mode" --client epoll --size 64 --inflight $([ $mode = pingpong ] && echo 1 || echo 64) \
			--port "$3" --addr 127.0.0.1 --server-pid "$server" --server-cpus "$srv_list" --cpuset "$cli" --seconds "$seconds" \
			--warmup 0.3 --json >"$tmp/$1-$2-$mode-$4.json" 2>"$tmp/$1-$2-$mode-$4.err"; then
			echo "demo.sh: keel-bench $mode against the $1 server ($2) failed:" >&2
			cat "$tmp/$1-$2-$mode-$4.json" "$tmp/$1-$2-$mode-$4.err" >&2
			exit 1
		fi
	done
}
# One server of one policy for one repetition: start it, drive it, stop it.
serve() { # name policy rep
	local poll=0 port kopt
	[ "$2" = spin ] && poll=50
	# Emptied here, not by the server's redirection (done in the child, after the fork):
	# listen_port must not read the port of the server before.
	: >"$tmp/server.log"
	if [ "$1" = keel ]; then
		kopt=("${map[@]}")
		[ ${#map[@]} -gt 0 ] || kopt=(--shards "$shards" --cpuset "$srv_list")
		[ "$3" -eq 1 ] && echo "   [$2] keel server: $bin/keel-echo --port 0 --addr 127.0.0.1 --log-level warn --steer hash --idle-poll-us $poll ${kopt[*]}"
		"$bin/keel-echo" --port 0 --addr 127.0.0.1 --log-level warn --steer hash \
			--idle-poll-us "$poll" "${kopt[@]}" >"$tmp/server.log" 2>&1 &
	else
		[ "$3" -eq 1 ] && echo "   [$2] epoll server: $bin/keel-bench serve --backend epoll --shards $shards --cpuset $srv_list --busy-poll-us $poll --gather-us $egather${efixed[*]:+ ${efixed[*]}} --port 0 --addr 127.0.0.1"
		"$bin/keel-bench" serve --backend epoll --shards "$shards" --cpuset "$srv_list" --busy-poll-us "$poll" \
			--gather-us "$egather" "${efixed[@]}" --port 0 --addr 127.0.0.1 >"$tmp/server.log" 2>&1 &
	fi
	server=$!
	port=$(listen_port) || exit 1
	drive "$1" "$2" "$port" "$3"
	stop_server
}

echo
echo "== TCP echo on 127.0.0.1: $shards server shard(s) on CPU $srv_list, ONE client program for both servers"
echo "   (keel-bench --client epoll) on CPU $cli$cli_note; $reps alternating repetitions of ${seconds}s"
echo "   (+0.3 s warm-up) per server and policy; connections placed on shards by hash, as the epoll"
echo "   server's SO_REUSEPORT group places them"
# Both servers' sleeps gather alike (parity.sh): keel-echo's window (KEEL_WAIT_COALESCE_US,
# default 10) for the epoll server too, or for neither where keel's cannot gather.
egather=
epoll_gather_parity "$bin/keel-bench" demo.sh || exit 1
pi=0
for pol in block spin; do
	pi=$((pi + 1))
	for rep in $(seq "$reps"); do
		# Which server goes first alternates by repetition, and the other way round in the
		# second policy: with an odd count each server leads as often over both.
		if [ $(((rep + pi) % 2)) -eq 0 ]; then order="keel epoll"; else order="epoll keel"; fi
		for be in $order; do serve "$be" "$pol" "$rep"; done
	done
done

# The median (and min-max) of FIELD over the repetitions of one server, policy and mode.
stat() { # name policy mode field
	local r
	# A figure a run did not give (null) is left out, and said, not taken for 0.
	for r in $(seq "$reps"); do field "$tmp/$1-$2-$3-$r.json" "$4"; done |
		awk -v w="$1 $2 $3 $4" '$1 ~ /^-?[0-9]/ { print; next }
			{ printf "demo.sh: %s: a repetition gave no figure (%s): left out\n", w, $1 > "/dev/stderr" }' |
		sort -g | awk '{ v[NR] = $1 } END {
			if (NR == 0) { print "n/a n/a n/a"; exit }
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			print m, v[1], v[NR] }'
}
row() { # label policy mode field higher-is-better(1|0)
	local k e
	k=$(stat keel "$2" "$3" "$4")
	e=$(stat epoll "$2" "$3" "$4")
	awk -v l="$1" -v k="$k" -v e="$e" -v h="$5" 'BEGIN {
		split(k, a, " "); split(e, b, " ")
		# A figure no repetition gave is shown as n/a, never as a measured 0.
		if (a[1] == "n/a" || b[1] == "n/a") {
			ks = a[1] == "n/a" ? "n/a" : sprintf("%.2f", a[1])
			es = b[1] == "n/a" ? "n/a" : sprintf("%.2f", b[1])
			printf "  %-38s %26s %26s %7s\n", l, ks, es, "n/a"
			exit
		}
		r = h ? (b[1] > 0 ? a[1] / b[1] : 0) : (a[1] > 0 ? b[1] / a[1] : 0)
		f = a[1] >= 1000 ? "%.0f" : "%.2f"
		ks = sprintf(f " (" f "-" f ")", a[1], a[2], a[3])
		es = sprintf(f " (" f "-" f ")", b[1], b[2], b[3])
		printf "  %-38s %26s %26s %6.2fx\n", l, ks, es, r }'
}
for pol in block spin; do
	echo
	if [ $pol = block ]; then
		echo "policy BLOCK: both servers sleep in the kernel when idle (keel --idle-poll-us 0, epoll --busy-poll-us 0;"
		if [ "$egather" != 0 ]; then
			echo "  both servers' sleeps may gather arrivals for $egather us, adaptive: keel --wait-coalesce-us, epoll --gather-us)"
		else
			echo "  neither server's sleeps gather arrivals: keel's cannot here, so the epoll server's do not)"
		fi
	else
		echo "policy SPIN: both servers poll 50 us before sleeping (keel --idle-poll-us 50, epoll --busy-poll-us 50)"
	fi
	printf '  %-38s %26s %26s %7s\n' "median (min-max)" keel epoll ratio
	row "pingpong 64 B round trips/s" $pol pingpong msgs_per_sec 1
	row "pingpong p50 (us)" $pol pingpong lat_p50_us 0
	row "pingpong p99 (us)" $pol pingpong lat_p99_us 0
	row "pingpong server CPU ns/msg (window)" $pol pingpong server_cpu_ns_per_msg 0
	row "pingpong server + client CPU ns/msg" $pol pingpong total_cpu_ns_per_msg 0
	row "throughput 64 B x 64 msgs/s" $pol throughput msgs_per_sec 1
	row "throughput p50 (us)" $pol throughput lat_p50_us 0
	row "throughput server CPU ns/msg (window)" $pol throughput server_cpu_ns_per_msg 0
	row "throughput server + client CPU ns/msg" $pol throughput total_cpu_ns_per_msg 0
	for be in keel epoll; do
		for mode in pingpong throughput; do
			nb=0 nl=0
			for rep in $(seq "$reps"); do
				[ "$(field "$tmp/$be-$pol-$mode-$rep.json" client_bound)" = true ] && nb=$((nb + 1))
				[ "$(field "$tmp/$be-$pol-$mode-$rep.json" cpu_sample_late)" = true ] && nl=$((nl + 1))
			done
			[ $nb -gt 0 ] &&
				echo "  note: $mode against $be was CLIENT-BOUND in $nb of $reps runs (the client used its core): compare the CPU per message there (server + client counts the wake-up work a server leaves on the client's CPU)"
			[ $nl -gt 0 ] &&
				echo "  note: $mode against $be: the CPU sampler woke late in $nl of $reps runs (a loaded machine): those server CPU figures are over a shifted interval"
		done
	done
done
echo "(ratio > 1: keel is better; latency and CPU ratios are epoll/keel, of the medians; the same client;"
echo " server CPU is the server process's CPU over the measured window only; server + client adds the"
echo " client's over the same window; a ratio within the two servers' min-max spread is noise on a"
echo " shared machine: tools/bench/compare.sh gives a rank-sum test per row)"

echo
echo "== cross-shard messages: keel vs a lock-free SPSC ring + eventfd (1 s per measurement)"
"$bin/keel-bench" xshard --shards 2 --seconds 1

echo
echo "The full matrix (both policies, repetitions, medians and spread, chart): tools/bench/compare.sh"
