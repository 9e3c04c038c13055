#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel's server against the in-tree epoll server, driven by ONE client program (docs/bench.md):
# for every row x policy x repetition, `keel-bench serve --backend keel` and then
# `--backend epoll` (which goes first alternates) run alone on the server CPUs, and the same
# client (`keel-bench MODE --client epoll --port P --server-pid PID`) on the client CPUs drives
# each. Policies: "block" (keel --idle-poll-us 0, epoll --busy-poll-us 0) and "spin" (both 50 us).
# Server CPU is the server process's CPU time over the measured window only, read by the client
# at the window's edges, the same way for both; the client's own CPU flags client-bound rows.
# Out: OUT/compare.md (median and min-max per row, keel/epoll ratios), OUT/compare.png (per-rep
# ratios with min-max error bars; needs gnuplot), OUT/results.tsv (every run), OUT/summary.tsv
# (medians), OUT/runs/ (every JSON and server log). Loopback, or a veth pair between two network
# namespaces the script creates and deletes (--net veth). Installs nothing.
#   tools/bench/compare.sh [options]
#     --quick             4 rows, both policies, 2 reps, 0.5 s windows, no iperf3 (compare_quick)
#     --reps N            alternating repetitions per row, policy and server (default 7: the
#                         paired test needs 6)
#     --seconds S         measured window per run (default 3)
#     --warmup S          uncounted warm-up before it (default 1)
#     --rows LIST         comma-separated row names (default: all, see below) or specs
#                         NAME:MODE:SIZE:INFLIGHT:CONNS
#     --policies LIST     block,spin (default both)
#     --spin-us N         busy/idle poll of the spin policy (default 50)
#     --epoll-gather-us N the epoll server's sleeps gather for N us first under keel's wait
#                         coalescing policy (keel-bench serve --gather-us; default: keel's
#                         window, KEEL_WAIT_COALESCE_US or 10, fixed with
#                         KEEL_WAIT_COALESCE_FIXED: both servers sleep alike; 0: never).
#                         A window other than keel's is an experiment: compare.md says
#                         "UNEQUAL sleep policies" in its header and every row's flags
#                         (set KEEL_WAIT_COALESCE_US too to move both)
#     --epoll-udp-gso     the epoll server echoes UDP with UDP_SEGMENT, as keel batches its
#                         UDP sends (keel-bench serve --udp-gso; default: sendmmsg)
#     --epoll-plain-writes the epoll server sends each reply as its connection is read
#                         (keel-bench serve --no-defer-writes; default: a wait's replies after
#                         all of its events are read, as Redis does)
#     --client B          the one client: epoll (default) or keel (udp always uses sockets)
#     --client-poll-us N  the epoll client (and udp's) polls N us before it blocks (keel-bench
#                         --client-poll-us; default 0): a client whose wake-ups do not make
#                         the round trip; it then uses its whole core (every row client-bound)
#     --servers LIST      keel,epoll (default both)
#     --shards N          server threads (default: the CPUs in --server-cpus)
#     --server-cpus LIST  server CPUs, e.g. 0 or 0-3 (default 0)
#     --client-cpus LIST  client CPUs, e.g. 1 or 4-15 (default 1); none of them a server CPU,
#                         unless --allow-shared (the client's work then counts in "server CPUs
#                         busy" and competes with the server; compare.md says so)
#     --client-threads N  client threads at most (default: the CPUs in --client-cpus); a row
#                         uses min(N, its connections)
#     --port P            server port (default 0: ephemeral, a new one per run)
#     --net lo|veth       lo (default): loopback, where the client's CPU runs the server's
#                         receive processing; veth (root, iproute2): server and client each in
#                         a network namespace of their own, joined by a veth pair whose
#                         receive processing RPS steers to the receiver's CPUs, as a NIC
#                         whose interrupts go to the server's cores (MTU 1500)
#     --out DIR           output directory (default bench-results)
#     --bin DIR           directory of keel-bench (default build-release/bin, built if missing)
#     --no-plot           no compare.png        --no-iperf    no iperf3 reference row
# Rows: pp1 pp16 pp256 pp1000 (pingpong 64 B, 1/16/256/1000 connections), tp64 tp4k
# (throughput 64 B / 4 KiB x 64 in flight), st64k st1m (stream 64 KiB / 1 MiB x 16),
# udp-pp (64 B datagrams, 1 in flight), udp-tp (1400 B datagrams, 32 in flight), udp-tp-gso
# (udp-tp against an epoll server that batches its sends with UDP_SEGMENT, as keel does:
# udp-tp's baseline is the issue's sendmmsg one, a datagram per message, which keel's
# batching leads by technique; this row shows what is left of the lead without that).
set -euo pipefail
# keel-bench writes numbers with a '.' decimal point, and awk and printf read and write them
# in the locale's: under one with a ',' (de_DE) the summary read 3.25 as 3, sorted the figures
# as text and printed commas, wrong medians, ratios and p-values without an error (a review).
export LC_ALL=C
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=serve_port.sh
. "$root/tools/bench/serve_port.sh"
# shellcheck source=parity.sh
. "$root/tools/bench/parity.sh"
cmdline="tools/bench/compare.sh $*"

quick=0 reps=7 secs=3 warmup=1 rows_arg= policies=block,spin spin=50 client=epoll egather= cpoll=0 net=lo
eudp=() edefer=()
servers=keel,epoll shards= server_cpus=0 client_cpus=1 client_threads= port=0 shared=0
out=bench-results bin= plot=1 iperf=1
usage() { sed -n '/^#   tools\/bench\/compare.sh \[options\]/,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; }
# --quick sets defaults; options given beside it still win.
for a in "$@"; do
	if [ "$a" = --quick ]; then
		quick=1 reps=2 secs=0.5 warmup=0.2 rows_arg=pp1,tp64,st64k,udp-pp iperf=0
	fi
done
while [ $# -gt 0 ]; do
	case $1 in
	--quick) ;;
	--reps) reps=${2:?--reps needs a value}; shift ;;
	--seconds) secs=${2:?--seconds needs a value}; shift ;;
	--warmup) warmup=${2:?--warmup needs a value}; shift ;;
	--rows) rows_arg=${2:?--rows needs a value}; shift ;;
	--policies) policies=${2:?--policies needs a value}; shift ;;
	--spin-us) spin=${2:?--spin-us needs a value}; shift ;;
	--epoll-gather-us) egather=${2:?--epoll-gather-us needs a value}; shift ;;
	--epoll-udp-gso) eudp=(--udp-gso) ;;
	--epoll-plain-writes) edefer=(--no-defer-writes) ;;
	--client) client=${2:?--client needs a value}; shift ;;
	--client-poll-us) cpoll=${2:?--client-poll-us needs a value}; shift ;;
	--servers) servers=${2:?--servers needs a value}; shift ;;
	--shards) shards=${2:?--shards needs a value}; shift ;;
	--server-cpus) server_cpus=${2:?--server-cpus needs a value}; shift ;;
	--client-cpus) client_cpus=${2:?--client-cpus needs a value}; shift ;;
	--allow-shared) shared=1 ;;
	--client-threads) client_threads=${2:?--client-threads needs a value}; shift ;;
	--port) port=${2:?--port needs a value}; shift ;;
	--net) net=${2:?--net needs lo or veth}; shift ;;
	--out) out=${2:?--out needs a value}; shift ;;
	--bin) bin=${2:?--bin needs a value}; shift ;;
	--no-plot) plot=0 ;;
	--no-iperf) iperf=0 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
	esac
	shift
done
die() { echo "compare.sh: $*" >&2; exit 2; }
num='^[0-9]*\.?[0-9]+$'
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
[[ $secs =~ $num ]] || die "--seconds must be a number"
[[ $warmup =~ $num ]] || die "--warmup must be a number"
[[ $spin =~ ^[0-9]+$ ]] || die "--spin-us must be an integer"
[[ $port =~ ^[0-9]+$ ]] && [ "${#port}" -le 5 ] && [ "$port" -le 65535 ] ||
	die "--port must be a port number, 0 to 65535"
case $client in epoll | keel) ;; *) die "--client must be epoll or keel" ;; esac
[[ $cpoll =~ ^[0-9]+$ ]] || die "--client-poll-us must be a number of microseconds"
case $net in lo | veth) ;; *) die "--net must be lo or veth" ;; esac
[ "$cpoll" -eq 0 ] || [ "$client" = epoll ] ||
	die "--client-poll-us is the epoll client's (a keel client polls with --idle-poll-us)"
# The longest a client run may take (run_one): its window and warm-up, plus a minute.
climit=$(awk -v s="$secs" -v w="$warmup" 'BEGIN {print int(s + w + 0.999) + 60}')

# CPU lists: "0-3,8" -> "0 1 2 3 8"; status 1 when it is not a CPU list
cpu_expand() {
	local part a b c out=()
	IFS=, read -ra parts <<<"$1"
	for part in "${parts[@]}"; do
		if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
			a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]}
			[ "$a" -le "$b" ] || return 1
		elif [[ $part =~ ^[0-9]+$ ]]; then
			a=$part b=$part
		else
			return 1
		fi
		for ((c = a; c <= b; c++)); do out+=("$c"); done
	done
	echo "${out[*]}"
}
# -> count
cpu_count() {
	local cpus
	cpus=$(cpu_expand "$1") || return 1
	set -- $cpus
	echo $#
}
# -> the hex mask sysfs takes ("00000000,0000010f": 32-bit words, highest first)
cpu_mask() {
	local c w top=0 out= words=()
	for c in $(cpu_expand "$1"); do
		words[c / 32]=$((${words[c / 32]:-0} | (1 << (c % 32))))
		[ $((c / 32)) -le $top ] || top=$((c / 32))
	done
	for ((w = top; w >= 0; w--)); do
		out+=$(printf '%s%08x' "${out:+,}" "${words[w]:-0}")
	done
	echo "$out"
}
nsrv=$(cpu_count "$server_cpus") || die "--server-cpus '$server_cpus' is not a CPU list (e.g. 0-3,8)"
ncli=$(cpu_count "$client_cpus") || die "--client-cpus '$client_cpus' is not a CPU list (e.g. 4-15)"
common=$(comm -12 <(cpu_expand "$server_cpus" | tr ' ' '\n' | sort -u) \
	<(cpu_expand "$client_cpus" | tr ' ' '\n' | sort -u) | sort -n | tr '\n' ' ')
[ -z "$common" ] || [ "$shared" -eq 1 ] ||
	die "--server-cpus and --client-cpus share CPU(s) ${common% }: the client's work would count as the server's and compete with it (separate lists, or --allow-shared to run so anyway)"
[ -n "$shards" ] || shards=$nsrv
[ -n "$client_threads" ] || client_threads=$ncli
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "--shards must be a positive integer"
[[ $client_threads =~ ^[1-9][0-9]*$ ]] || die "--client-threads must be a positive integer"

declare -A known=(
	[pp1]="pingpong:64:1:1" [pp16]="pingpong:64:1:16" [pp256]="pingpong:64:1:256"
	[pp1000]="pingpong:64:1:1000" [tp64]="throughput:64:64:1" [tp4k]="throughput:4096:64:1"
	[st64k]="stream:65536:16:1" [st1m]="stream:1048576:16:1" [udp-pp]="udp:64:1:1"
	[udp-tp]="udp:1400:32:1" [udp-tp-gso]="udp:1400:32:1")
# The epoll server sleeps as keel's does unless told otherwise: the same window, adaptive
# or fixed alike (a sleep policy one server has and the other not would favour it).
[ -z "$egather" ] || [[ $egather =~ ^[0-9]+$ ]] ||
	{ echo "compare.sh: --epoll-gather-us: '$egather' is not a number of us" >&2; exit 2; }
[ -n "$rows_arg" ] || rows_arg=pp1,pp16,pp256,pp1000,tp64,tp4k,st64k,st1m,udp-pp,udp-tp,udp-tp-gso
rows=() # name mode size inflight conns
declare -A row_seen=() # a name twice would merge two rows' runs (their files and medians)
IFS=, read -ra names <<<"$rows_arg"
for r in "${names[@]}"; do
	if [[ $r == *:* ]]; then
		IFS=: read -r n m s i c <<<"$r"
		[[ $n =~ ^[A-Za-z0-9_.-]+$ && $m =~ ^(pingpong|throughput|stream|udp)$ && $s =~ ^[0-9]+$ && $i =~ ^[0-9]+$ && $c =~ ^[0-9]+$ ]] ||
			die "--rows: '$r' is not NAME:MODE:SIZE:INFLIGHT:CONNS (NAME letters, digits, ._-; MODE pingpong|throughput|stream|udp)"
		rows+=("$n $m $s $i $c")
	elif [ -n "${known[$r]:-}" ]; then
		n=$r
		IFS=: read -r m s i c <<<"${known[$r]}"
		rows+=("$r $m $s $i $c")
	else
		die "--rows: unknown row '$r' (known: ${!known[*]})"
	fi
	[ -z "${row_seen[$n]:-}" ] || die "--rows: '$n' is named twice: give each row a name of its own"
	row_seen[$n]=1
done
IFS=, read -ra pols <<<"$policies"
for p in "${pols[@]}"; do [[ $p =~ ^(block|spin)$ ]] || die "--policies: '$p' is not block or spin"; done
IFS=, read -ra srvs <<<"$servers"
for s in "${srvs[@]}"; do [[ $s =~ ^(keel|epoll)$ ]] || die "--servers: '$s' is not keel or epoll"; done

if [ -z "$bin" ]; then
	bin=$root/build-release/bin
	if [ ! -x "$bin/keel-bench" ]; then
		echo "== building Release in build-release/"
		cmake -S "$root" -B "$root/build-release" -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF \
			-DKEEL_WERROR=OFF >/dev/null
		cmake --build "$root/build-release" -j "$(nproc)" >/dev/null
	fi
fi
kb=$bin/keel-bench
[ -x "$kb" ] || { echo "compare.sh: no keel-bench in $bin (--bin DIR)" >&2; exit 1; }
# Policies both servers must share. Adaptive idle polling has no epoll counterpart.
if [ -n "${KEEL_IDLE_POLL_ADAPTIVE:-}" ] && ! [[ ${KEEL_IDLE_POLL_ADAPTIVE,,} =~ ^(0|false|no|off)$ ]]; then
	echo "compare.sh: KEEL_IDLE_POLL_ADAPTIVE is set: the epoll server has no adaptive polling," \
		"so the spin rows would not compare like with like; unset it" >&2
	exit 2
fi
# Gathering: what keel's runtime decides here, not the option (parity.sh).
egather_opt=$egather
epoll_gather_parity "$kb" compare.sh || exit 1
# --epoll-gather-us set only the epoll server's window: one that differs from keel's (its
# KEEL_WAIT_COALESCE_US, or 10 us) gives the two servers different sleep policies, an
# experiment (does gathering help the epoll server?), not a comparison at equal footing:
# compare.md then says so in its header and in every row's flags.
unequal=0
# (Where keel's sleeps cannot gather, parity turned the epoll server's off too; and a
# window of 0 is asked of keel-bench, since parity asks only for a window above 0.)
kwin=${KEEL_WAIT_COALESCE_US:-10}
if [ -n "$egather_opt" ] && [ "$egather" = "$egather_opt" ] && [ "$egather" != "$kwin" ]; then
	# Bounded: a serve that does not stop by itself (a stub's) leaves keel's window as set.
	ban=$(timeout -k 1 3 "$kb" serve --backend keel --seconds 0.1 --no-pin 2>&1) || true
	[[ $(keel_banner "$ban") != *"sleeps do not gather"* ]] || kwin=0
fi
if [ -n "$egather_opt" ] && [ "$egather" = "$egather_opt" ] && [ "$egather" != "$kwin" ]; then
	unequal=1
	echo "compare.sh: --epoll-gather-us $egather_opt: keel's sleeps gather $kwin us," \
		"the epoll server's $egather: unequal sleep policies, every row is flagged" >&2
fi
have_gnuplot=0
command -v gnuplot >/dev/null && have_gnuplot=1
[ $plot -eq 0 ] || [ $have_gnuplot -eq 1 ] ||
	echo "compare.sh: gnuplot is not installed: no compare.png (apt-get install gnuplot-nox)" >&2
have_iperf=0
[ $iperf -eq 1 ] && command -v iperf3 >/dev/null && have_iperf=1

maxconns=0
for row in "${rows[@]}"; do read -r _ _ _ _ c <<<"$row"; [ "$c" -gt $maxconns ] && maxconns=$c; done
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((maxconns + 64)) ]; then
	echo "compare.sh: RLIMIT_NOFILE hard limit $hard is below $maxconns connections + 64;" \
		"raise it (ulimit -Hn, /etc/security/limits.conf) or drop the row" >&2
	exit 1
fi

mkdir -p "$out/runs"
runs=$out/runs
rm -f "$runs"/*.json "$runs"/*.log "$runs"/*.err
tsv=$out/results.tsv
printf 'row\tmode\tsize\tinflight\tconns\tthreads\tpolicy\tserver\trep\tmetric\tmsgs_per_sec\tgbps\tp50_us\tp99_us\tserver_cpu_ns_per_msg\tserver_cores\tclient_cores_used\tclient_cores\tclient_bound\tlost\tserver_cpus_ns_per_msg\tclient_cpu_ns_per_msg\ttotal_cpu_ns_per_msg\tlate\tlost_all\tgathered_share\n' >"$tsv"

server=
stop_server() {
	local i
	if [ -n "$server" ]; then
		kill -TERM "$server" 2>/dev/null || true
		for i in $(seq 500); do # 10 s for it to stop, then it is killed and said
			kill -0 "$server" 2>/dev/null || break
			sleep 0.02
		done
		if kill -0 "$server" 2>/dev/null; then
			echo "compare.sh: the server (pid $server) did not stop 10 s after SIGTERM: killed" >&2
			kill -KILL "$server" 2>/dev/null || true
		fi
		wait "$server" 2>/dev/null || true
		server=
	fi
}
# --net veth: the server's and the client's network namespaces (created below), the
# commands that run in them, and the server's address.
ns_srv= ns_cli= in_srv=() in_cli=() addr=127.0.0.1 rps_srv= rps_cli=
net_down() {
	[ -z "$ns_srv" ] || ip netns del "$ns_srv" 2>/dev/null || true
	[ -z "$ns_cli" ] || ip netns del "$ns_cli" 2>/dev/null || true
	ns_srv= ns_cli=
}
trap 'stop_server; net_down' EXIT
trap 'exit 130' INT TERM

# A veth pair between two namespaces of this run, 10.201.0.1 (server) and 10.201.0.2
# (client). RPS makes the receiving side's CPUs run its receive processing (without it, the
# sender's CPU runs it, as on loopback): the server's CPUs for what the client sends, the
# client's for the replies.
net_up() {
	local tag=$$-$RANDOM
	[ "$(id -u)" -eq 0 ] || die "--net veth needs root (it creates two network namespaces and a veth pair)"
	command -v ip >/dev/null || die "--net veth needs ip (apt-get install iproute2)"
	ns_srv=keel-cmp-srv-$tag
	ip netns add "$ns_srv" || { ns_srv=; die "--net veth: ip netns add failed (no network namespaces here?)"; }
	ns_cli=keel-cmp-cli-$tag
	ip netns add "$ns_cli" || { ns_cli=; die "--net veth: ip netns add failed"; }
	ip link add kcmp0 netns "$ns_srv" type veth peer name kcmp1 netns "$ns_cli" &&
		ip -n "$ns_srv" addr add 10.201.0.1/24 dev kcmp0 &&
		ip -n "$ns_cli" addr add 10.201.0.2/24 dev kcmp1 &&
		ip -n "$ns_srv" link set kcmp0 up && ip -n "$ns_cli" link set kcmp1 up &&
		ip -n "$ns_srv" link set lo up && ip -n "$ns_cli" link set lo up ||
		die "--net veth: setting up the veth pair failed"
	ip netns exec "$ns_srv" sh -c "echo $(cpu_mask "$server_cpus") >/sys/class/net/kcmp0/queues/rx-0/rps_cpus" &&
		ip netns exec "$ns_cli" sh -c "echo $(cpu_mask "$client_cpus") >/sys/class/net/kcmp1/queues/rx-0/rps_cpus" ||
		die "--net veth: could not set RPS on the veth pair (/sys/class/net/*/queues/rx-0/rps_cpus)"
	# Read back for compare.md: the masks the kernel took.
	rps_srv=$(ip netns exec "$ns_srv" cat /sys/class/net/kcmp0/queues/rx-0/rps_cpus)
	rps_cli=$(ip netns exec "$ns_cli" cat /sys/class/net/kcmp1/queues/rx-0/rps_cpus)
	in_srv=(ip netns exec "$ns_srv")
	in_cli=(ip netns exec "$ns_cli")
	addr=10.201.0.1
}

field() { # file name -> value ("null" stays null; strings unquoted)
	sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n 1
}

# start_server backend policy log row -> sets server (pid) and sport
start_server() {
	local be=$1 pol=$2 log=$3 row=$4 poll=0 ug=("${eudp[@]}")
	[ "$pol" = spin ] && poll=$spin
	[[ $row == *-gso ]] && ug=(--udp-gso) # the row that batches the epoll server's sends too
	local popt=(--idle-poll-us "$poll")
	[ "$be" = epoll ] &&
		popt=(--busy-poll-us "$poll" --gather-us "$egather" "${efixed[@]}" "${ug[@]}" "${edefer[@]}")
	"${in_srv[@]}" "$kb" serve --backend "$be" --addr "$addr" --port "$port" --shards "$shards" \
		--cpuset "$server_cpus" "${popt[@]}" >"$log" 2>&1 &
	server=$!
	sport=$(serve_port "$log" "$server") && return 0
	echo "compare.sh: the $be server ($pol) did not start:" >&2
	cat "$log" >&2
	exit 1
}

run_one() { # name mode size inflight conns policy backend rep
	local name=$1 mode=$2 size=$3 infl=$4 conns=$5 pol=$6 be=$7 rep=$8
	local base="$runs/$name-$pol-$be-$rep" threads=$client_threads copt=()
	[ "$threads" -gt "$conns" ] && threads=$conns
	[ "$mode" = udp ] || copt=(--client "$client")
	[ "$client" = keel ] && [ "$mode" != udp ] && copt+=(--idle-poll-us 0)
	[ "$cpoll" -gt 0 ] && copt+=(--client-poll-us "$cpoll")
	start_server "$be" "$pol" "$base.log" "$name"
	# A client that hangs (a server that stopped answering) ends with an error, not a
	# stall: its window and warm-up, plus a minute for connecting and the rest.
	local st=0
	timeout --foreground -k 5 "$climit" "${in_cli[@]}" "$kb" "$mode" "${copt[@]}" --addr "$addr" \
		--port "$sport" --server-pid "$server" --server-cpus "$server_cpus" \
		--cpuset "$client_cpus" --threads "$threads" --size "$size" --inflight "$infl" \
		--conns "$conns" --seconds "$secs" --warmup "$warmup" --json >"$base.json" \
		2>"$base.err" || st=$?
	if [ "$st" -ne 0 ]; then
		stop_server
		if [ "$st" -eq 124 ] || [ "$st" -eq 137 ]; then
			echo "compare.sh: the client did not finish in $climit s (killed)" >&2
		fi
		echo "compare.sh: FAILED row $name ($mode size $size inflight $infl conns $conns)" \
			"policy $pol server $be rep $rep:" >&2
		cat "$base.json" "$base.err" "$base.log" >&2
		exit 1
	fi
	stop_server
	if ! grep -q '; 0 errors$' "$base.log"; then
		echo "compare.sh: FAILED row $name policy $pol server $be rep $rep: the server reported errors:" >&2
		cat "$base.log" >&2
		exit 1
	fi
	# keel's runtime logs what it does not count as an error of the server's (a failed
	# io_uring_enter, completions a full CQ dropped): such a run is no figure either, as
	# the epoll server's counted errors are not.
	if grep -q '^keel error' "$base.log" "$base.err" 2>/dev/null; then
		echo "compare.sh: FAILED row $name policy $pol server $be rep $rep: keel logged an error:" >&2
		grep '^keel error' "$base.log" "$base.err" >&2
		exit 1
	fi
	local metric=msgs_per_sec
	[ "$mode" = stream ] && metric=gbps
	local v=()
	for f in msgs_per_sec gbps lat_p50_us lat_p99_us server_cpu_ns_per_msg server_cpu_util \
		client_cpu_util client_cores client_bound lost server_cpus_ns_per_msg \
		client_cpu_ns_per_msg total_cpu_ns_per_msg late lost_all; do
		x=$(field "$base.json" $f)
		v+=("${x:-null}")
	done
	# The share of the server's blocking waits (its whole life) that gathered first (keel's
	# coalesced sleeps, the epoll server's --gather-us sleeps: the serve report's "N blocking
	# waits, M busy polls, G gathered"): the adaptive policy decides it per run, and the two
	# servers need not decide alike. null: no such line, or no blocking wait.
	local gshare
	gshare=$(sed -n 's/.*; \([0-9][0-9]*\) blocking waits, [0-9][0-9]* busy polls, \([0-9][0-9]*\) gathered$/\1 \2/p' \
		"$base.log" | awk 'NR == 1 { print ($1 > 0) ? $2 / $1 : "null" }')
	v+=("${gshare:-null}")
	# A run in which a connection got no echo in the window is no figure either: the
	# server stopped answering it, or served it grossly unfairly, and the rate hides it.
	local stalled
	stalled=$(field "$base.json" stalled_conns)
	if [ -n "$stalled" ] && [ "$stalled" != null ] && [ "$stalled" -gt 0 ]; then
		echo "compare.sh: FAILED row $name policy $pol server $be rep $rep: $stalled" \
			"connection(s) got no echo in the window (the server stopped answering them," \
			"or starved them)" >&2
		cat "$base.json" "$base.err" "$base.log" >&2
		exit 1
	fi
	# A run whose CPU sampler woke more than 2 % of the window (10 ms at least) late measured the CPU over
	# another interval than the messages: no figure either.
	if [ "$(field "$base.json" cpu_sample_late)" = true ]; then
		echo "compare.sh: FAILED row $name policy $pol server $be rep $rep: the CPU sampler" \
			"woke $(field "$base.json" cpu_sample_late_ms) ms after an edge of the window;" \
			"run it again on a quieter machine" >&2
		exit 1
	fi
	# A run whose server CPU, server CPUs' busy time or client load could not be read is no
	# figure: the medians and the client-bound count would take it as one (the busy time's
	# median left the run out, silently).
	if [ "${v[4]}" = null ] || [ "${v[8]}" = null ] || [ "${v[10]}" = null ]; then
		echo "compare.sh: FAILED row $name policy $pol server $be rep $rep: the client could" \
			"not sample the server's CPU or its own load over the window (server_cpu_ns_per_msg" \
			"${v[4]}, server_cpus_ns_per_msg ${v[10]}, client_bound ${v[8]}); run it again on a" \
			"quieter machine" >&2
		cat "$base.json" "$base.err" >&2
		exit 1
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$name" "$mode" "$size" "$infl" "$conns" \
		"$threads" "$pol" "$be" "$rep" "$metric" >>"$tsv"
	printf '\t%s' "${v[@]}" >>"$tsv"
	printf '\n' >>"$tsv"
}

[ "$net" = lo ] || net_up
nrow=${#rows[@]}
echo "== one $client client for every server: $nrow rows x ${#pols[@]} policies x ${#srvs[@]} servers x $reps reps," \
	"${secs}s each (+${warmup}s warm-up); server CPUs $server_cpus ($shards shards), client CPUs $client_cpus"
t0=$(date +%s)                              # when the runs began (compare.md, the duration)
load_before=$(cut -d' ' -f1-3 /proc/loadavg) # the machine's state before the first run
for rep in $(seq "$reps"); do
	ri=0
	for row in "${rows[@]}"; do
		read -r name mode size infl conns <<<"$row"
		ri=$((ri + 1)) pi=0
		for pol in "${pols[@]}"; do
			pi=$((pi + 1))
			# Alternate which server goes first, so that drift does not favour one; with
			# an odd --reps one server goes first once more in a row and policy, keel in
			# half of them and epoll in the other half.
			order=("${srvs[@]}")
			if [ $(((rep + ri + pi) % 2)) -eq 1 ] && [ ${#srvs[@]} -eq 2 ]; then
				order=("${srvs[1]}" "${srvs[0]}")
			fi
			for be in "${order[@]}"; do
				printf '  rep %s  %-8s %-10s size %-7s inflight %-2s conns %-4s %-5s %s\n' \
					"$rep" "$name" "$mode" "$size" "$infl" "$conns" "$pol" "$be"
				run_one "$name" "$mode" "$size" "$infl" "$conns" "$pol" "$be" "$rep"
			done
		done
	done
done

# iperf3 reference (optional): one-way TCP over loopback, the same CPUs.
iperf_gbps=
if [ $have_iperf -eq 1 ] && [ "$net" = lo ]; then
	ipsecs=$(awk -v s="$secs" 'BEGIN {n = int(s + 0.999); print (n < 1) ? 1 : n}')
	ip=$((25201 + RANDOM % 500))
	echo "== iperf3 reference (${ipsecs}s, port $ip)"
	taskset -c "$server_cpus" iperf3 -s -1 -p "$ip" -B 127.0.0.1 >"$runs/iperf3-s.log" 2>&1 &
	server=$!
	for _ in $(seq 100); do
		grep -q 'listening' "$runs/iperf3-s.log" 2>/dev/null && break
		sleep 0.05
	done
	if timeout $((ipsecs + 15)) taskset -c "$client_cpus" iperf3 -c 127.0.0.1 -p "$ip" -t "$ipsecs" -J \
		>"$runs/iperf3.json" 2>&1; then
		iperf_gbps=$(awk '/"sum_received"/ {f = 1} f && /"bits_per_second"/ {gsub(/[",]/, ""); print $2 / 1e9; exit}' \
			"$runs/iperf3.json")
	fi
	stop_server
	[ -n "$iperf_gbps" ] || echo "compare.sh: iperf3 reference failed (see $runs/iperf3.json); no reference row" >&2
fi

# summary.tsv: per row, policy and server: median/min/max of the metric, medians of the rest,
# client-bound reps; per row and policy the per-rep keel/epoll ratios (median, min, max).
sum=$out/summary.tsv
summary_prog='
# Row @row, policy @pol: the keel/epoll ratio of each pair of repetitions of @src (src[row,
# pol, server, rep]) whose epoll figure is above 0 into a[1..]; returns how many.
function pair_ratios(src, row, pol, a,   r, nr) {
	delete a
	for (r = 1; r <= 1000; r++)
		if (((row, pol, "keel", r) in src) && ((row, pol, "epoll", r) in src) && src[row, pol, "epoll", r] > 0)
			a[++nr] = src[row, pol, "keel", r] / src[row, pol, "epoll", r]
	return nr + 0
}
# Those ratios into out[1..3] as median, min and max; returns how many.
function rep_ratios(src, row, pol, out,   nr, a) {
	nr = pair_ratios(src, row, pol, a)
	if (nr) { out[1] = med(a, nr); out[2] = a[1]; out[3] = a[nr] }
	return nr
}
# Their logarithms (the ratios above 0) into @out, for the signed-rank test; returns how many.
function rep_logs(src, row, pol, out,   nr, a, i, m) {
	nr = pair_ratios(src, row, pol, a)
	delete out
	for (i = 1; i <= nr; i++)
		if (a[i] > 0)
			out[++m] = log(a[i])
	return m + 0
}
# The @c figures of key @k in @src (src[k, 1..c]) into @dst, leaving out "null" (and, with
# @positive, figures not above 0); returns how many.
function figures(src, k, c, dst, positive,   i, nd) {
	delete dst
	for (i = 1; i <= c; i++)
		if (src[k, i] != "null" && (!positive || src[k, i] > 0))
			dst[++nd] = src[k, i]
	return nd + 0
}
function med(a, n,   i, j, t) {
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
NR == 1 { next }
{
	k = $1 SUBSEP $7 SUBSEP $8
	if (!(k in n)) { order[++nk] = k; n[k] = 0; cb[k] = 0 }
	i = ++n[k]
	v = ($10 == "gbps") ? $12 : $11
	m[k, i] = v; p50[k, i] = $13; p99[k, i] = $14; cpu[k, i] = $15; sc[k, i] = $16; cc[k, i] = $17
	bcpu[k, i] = ($21 == "null" || $21 == "") ? -1 : $21
	ccpu[k, i] = ($22 == "null" || $22 == "") ? "null" : $22
	tcpu[k, i] = ($23 == "null" || $23 == "") ? "null" : $23
	late[k] += ($24 == "null" || $24 == "") ? 0 : $24
	lostall[k] += ($25 == "null" || $25 == "") ? 0 : $25
	# A CPU figure of 0 (no tick of the server CPU in a short window) or null is not a
	# measurement: it is in no median, ratio or test (as figures(..., 1) leaves it out).
	if (tcpu[k, i] != "null" && $23 > 0) tcpurep[$1, $7, $8, $9] = $23
	gsh[k, i] = ($26 == "null" || $26 == "") ? "null" : $26
	if ($19 == "true") cb[k]++
	lost[k] += ($20 == "null") ? 0 : $20
	info[k] = $2 OFS $3 OFS $4 OFS $5 OFS $6
	byrep[$1, $7, $8, $9] = v
	if ($15 != "null" && $15 > 0) cpurep[$1, $7, $8, $9] = $15
	if (bcpu[k, i] > 0) bcpurep[$1, $7, $8, $9] = $21
	reps[$1, $7, $9] = 1
}
END {
	print "row", "mode", "size", "inflight", "conns", "threads", "policy", "server", "n", "median", "min", "max", \
		"p50_us", "p99_us", "server_cpu_ns_per_msg", "server_cores", "client_cores_used", "client_bound_reps", \
		"lost", "ratio_median", "ratio_min", "ratio_max", "server_cpus_ns_per_msg", "p_rate", "p_cpu", \
		"p_cpus", "server_cpu_min", "server_cpu_max", "cpu_ratio_median", "cpu_ratio_min", \
		"cpu_ratio_max", "client_cpu_ns_per_msg", "total_cpu_ns_per_msg", "p_total", \
		"total_ratio_median", "total_ratio_min", "total_ratio_max", "late", "lost_all", \
		"p_rate_paired", "p_cpu_paired", "gathered_share", "gathered_share_min", \
		"gathered_share_max", "cpus_ratio_median", "cpus_ratio_min", "cpus_ratio_max", \
		"p_cpus_paired"
	for (o = 1; o <= nk; o++) {
		k = order[o]; split(k, kk, SUBSEP); c = n[k]
		delete a; for (i = 1; i <= c; i++) a[i] = m[k, i]; md = med(a, c); lo = a[1]; hi = a[c]
		delete a; for (i = 1; i <= c; i++) a[i] = (p50[k, i] == "null") ? -1 : p50[k, i]; mp50 = med(a, c)
		delete a; for (i = 1; i <= c; i++) a[i] = (p99[k, i] == "null") ? -1 : p99[k, i]; mp99 = med(a, c)
		nb = figures(cpu, k, c, a, 1); mcpu = nb ? med(a, nb) : 0; clo = nb ? a[1] : 0; chi = nb ? a[nb] : 0
		delete a; for (i = 1; i <= c; i++) a[i] = sc[k, i]; msc = med(a, c)
		delete a; for (i = 1; i <= c; i++) a[i] = cc[k, i]; mcc = med(a, c)
		# over the repetitions that have the figure: a 0 (no busy tick in a short window) is
		# none, as for the server CPU and in the rank-sum below
		delete a; nb = 0; for (i = 1; i <= c; i++) if (bcpu[k, i] > 0) a[++nb] = bcpu[k, i]
		mbcpu = nb ? med(a, nb) : -1
		# the client CPU per message and that of both processes together (keel-bench
		# client_cpu_ns_per_msg, total_cpu_ns_per_msg): over the repetitions that have them
		nb = figures(ccpu, k, c, a, 1); mccpu = nb ? med(a, nb) : "null"
		nb = figures(tcpu, k, c, a, 1); mtcpu = nb ? med(a, nb) : "null"
		# the share of blocking waits that gathered (0 is a figure here: none did)
		nb = figures(gsh, k, c, a, 0); mgsh = nb ? med(a, nb) : "null"
		glo = nb ? a[1] : "null"; ghi = nb ? a[nb] : "null"
		# per-rep keel/epoll ratios of this row and policy (on the keel line): the rate,
		# and the server CPU per message (the figure of client-bound rows)
		# and the server CPUs busy per message (the figure to read on veth)
		rm = rl = rh = cm = cl = ch = tm = tl = th = bm = bl = bh = "-"
		if (kk[3] == "keel") {
			if (rep_ratios(byrep, kk[1], kk[2], q)) { rm = q[1]; rl = q[2]; rh = q[3] }
			if (rep_ratios(cpurep, kk[1], kk[2], q)) { cm = q[1]; cl = q[2]; ch = q[3] }
			if (rep_ratios(bcpurep, kk[1], kk[2], q)) { bm = q[1]; bl = q[2]; bh = q[3] }
			if (rep_ratios(tcpurep, kk[1], kk[2], q)) { tm = q[1]; tl = q[2]; th = q[3] }
		}
		# keel against epoll, rank-sum test over the repetitions (ranksum.awk): the rate
		# and the server CPU per message (on the keel line)
		# and the busy time of the server CPUs per message (the figure that does not favour the
		# server that sleeps more: on veth the one the verdict should rest on)
		prate = pcpu = pcpus = ptot = "-"
		ke = kk[1] SUBSEP kk[2] SUBSEP "epoll"
		if (kk[3] == "keel" && (ke in n)) {
			nx = figures(m, k, c, x, 0); ny = figures(m, ke, n[ke], y, 0)
			prate = ranksum_p(x, nx, y, ny)
			nx = figures(cpu, k, c, x, 1); ny = figures(cpu, ke, n[ke], y, 1)
			pcpu = ranksum_p(x, nx, y, ny)
			nx = figures(bcpu, k, c, x, 1); ny = figures(bcpu, ke, n[ke], y, 1)
			pcpus = ranksum_p(x, nx, y, ny)
			nx = figures(tcpu, k, c, x, 1); ny = figures(tcpu, ke, n[ke], y, 1)
			ptot = ranksum_p(x, nx, y, ny)
			if (prate < 0) prate = "-"
			if (ptot < 0) ptot = "-"
			if (pcpu < 0) pcpu = "-"
			if (pcpus < 0) pcpus = "-"
		}
		# the same two figures paired: the signed-rank test over the per-pair ratios
		# (ranksum.awk), which the pace of the machine, shared by the two runs of a pair, does
		# not move
		pprate = ppcpu = ppcpus = "-"
		if (kk[3] == "keel") {
			nx = rep_logs(byrep, kk[1], kk[2], x); pprate = signrank_p(x, nx)
			nx = rep_logs(cpurep, kk[1], kk[2], x); ppcpu = signrank_p(x, nx)
			nx = rep_logs(bcpurep, kk[1], kk[2], x); ppcpus = signrank_p(x, nx)
			if (pprate < 0) pprate = "-"
			if (ppcpu < 0) ppcpu = "-"
			if (ppcpus < 0) ppcpus = "-"
		}
		print kk[1], info[k], kk[2], kk[3], c, md, lo, hi, (mp50 < 0 ? "null" : mp50), (mp99 < 0 ? "null" : mp99), \
			mcpu, msc, mcc, cb[k], lost[k], rm, rl, rh, (mbcpu < 0 ? "null" : mbcpu), prate, pcpu, pcpus, \
			clo, chi, cm, cl, ch, mccpu, mtcpu, ptot, tm, tl, th, late[k], lostall[k], pprate, ppcpu, \
			mgsh, glo, ghi, bm, bl, bh, ppcpus
	}
}'
# Numbers print with 10 significant digits, not awk's 6: the median of an even count of
# rates above a million (1234562.5) printed as 1.23456e+06, below its own minimum.
awk -F'\t' -v OFS='\t' -v OFMT=%.10g -v CONVFMT=%.10g -f "$root/tools/bench/ranksum.awk" \
	-f <(printf '%s\n' "$summary_prog") "$tsv" >"$sum"

# compare.md
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) # no SIGPIPE under pipefail
[ -n "$cpu" ] || cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
md=$out/compare.md
client_desc="keel-bench MODE --client $client --port P --server-pid PID"
[ "$client" = keel ] && client_desc="$client_desc --idle-poll-us 0"
[ "$cpoll" -gt 0 ] && client_desc="$client_desc --client-poll-us $cpoll"
{
	echo "# keel vs epoll servers, one client (keel-bench)"
	echo
	echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r); load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- date: $(date -u -d "@$t0" '+%Y-%m-%d %H:%M:%S') to $(date -u '+%H:%M:%S UTC')"
	echo "- command: \`$cmdline\`"
	echo "- servers: \`keel-bench serve --backend keel|epoll --shards $shards --cpuset $server_cpus\`, alone on CPUs $server_cpus"
	echo "- client (the same program for both servers): \`$client_desc --cpuset $client_cpus\`" \
		"(udp: the sockets client), at most $client_threads threads, on CPUs $client_cpus"
	if [ "$net" = veth ]; then
		echo "- network: a veth pair (MTU 1500) between two network namespaces of this run, server 10.201.0.1, client"
		echo "  10.201.0.2; RPS steers each side's receive processing to its own CPUs (server $server_cpus, client"
		echo "  $client_cpus), as a NIC whose interrupts go to the server's cores: the server's CPU pays its receive path"
		echo "  (rps_cpus read back: server $rps_srv, client $rps_cli)"
	else
		echo "- network: loopback; the sender's CPU runs the receiver's receive processing (the client's CPU the server's)"
	fi
	echo "- policies: **block** = keel \`--idle-poll-us 0\`, epoll \`--busy-poll-us 0\`; **spin** = both $spin us of polling before blocking"
	# keel's runtime reads KEEL_* variables (its options' defaults): any set changed the keel
	# server alone, so they are part of the setup.
	kenv=$(env | grep '^KEEL_' | sort | tr '\n' ' ' || true)
	if [ "$client" = keel ]; then
		echo "- KEEL_* environment (read by keel's server, and by the keel client program, which drives both servers): ${kenv:-none}"
	else
		echo "- KEEL_* environment (read by keel's server only): ${kenv:-none}"
	fi
	if [ ${#eudp[@]} -gt 0 ]; then
		echo "- UDP sends: keel batches datagrams to one destination with UDP_SEGMENT (udp_gso_segs, docs/net.md); so does the epoll server (--udp-gso)"
	else
		echo "- UDP sends: keel batches datagrams to one destination with UDP_SEGMENT (udp_gso_segs, docs/net.md); the epoll server uses sendmmsg, a datagram per message (--epoll-udp-gso: UDP_SEGMENT too), except in rows named *-gso, where it batches with UDP_SEGMENT as keel does"
	fi
	if [ ${#edefer[@]} -gt 0 ]; then
		echo "- TCP replies: the epoll server sends each connection's reply as it reads it (--epoll-plain-writes; by default after all of a wait's events, as Redis does); keel submits its sends with the pass's other requests"
	else
		echo "- TCP replies: the epoll server sends a wait's replies after all of its events are read, as Redis does (keel-bench serve's default; --epoll-plain-writes: each as its connection is read); keel submits its sends with the pass's other requests"
	fi
	# One server only (--servers) leaves the other's glob unmatched: nothing, not an exit.
	gather=$(awk '/^keel-bench serve: keel .*, sleeps gather / { sub(/^.*, sleeps /, ""); print; exit }' \
		"$runs"/*-keel-1.log 2>/dev/null || true)
	egath=$(awk '/^keel-bench serve: epoll .*, sleeps gather / { sub(/^.*, sleeps /, ""); print; exit }' \
		"$runs"/*-epoll-1.log 2>/dev/null || true)
	echo "- keel's sleeps: ${gather:-end at the first completion} (--wait-coalesce-us, architecture.md step 8); the epoll server's: ${egath:-end at the first event} (keel-bench serve --gather-us, the same policy)"
	echo "- sleeps that gathered: the share of each server's blocking waits over its whole life that gathered first"
	echo "  (its serve report's \"gathered\" over its \"blocking waits\"), median (min-max) over the repetitions; the"
	echo "  adaptive policy decides each run anew, so where keel's and epoll's shares differ the two servers did not"
	echo "  sleep alike in that row, and its figures compare that too"
	[ "$unequal" = 0 ] ||
		echo "- **UNEQUAL sleep policies**: --epoll-gather-us $egather_opt set the epoll server's gathering window alone (keel's: $kwin us); this run is an experiment, not a comparison at equal footing"
	echo "- $reps alternating repetitions of ${secs} s (+${warmup} s warm-up) per row, policy and server; median (min-max)"
	[ "$reps" -ge 5 ] ||
		echo "- **below the method: $reps repetitions (< 5) a side; a look, not a result** (docs/bench.md)"
	[ -z "$common" ] ||
		echo "- **server and client share CPU(s) ${common% }** (--allow-shared): the client's work counts in \"server CPUs busy\" and competes with the server"
	echo "- server CPU: the server process's CPU time over the measured window only (clock_getcpuclockid of its pid, read"
	echo "  by the client at the window's edges), per message echoed in the window; cores = CPU time / window"
	echo "- server CPUs busy: all the work on the server's CPUs over the same window (/proc/stat: user, nice, system,"
	echo "  irq, softirq; tick-sampled), per message: unlike the process's clock it includes the receive softirqs that"
	echo "  ran while the server slept (charged to the idle task), so it does not favour the server that sleeps more;"
	echo "  its keel/epoll is the median of the per-repetition ratios (min-max), the figure to read on veth"
	echo "- client CPU: the client process's CPU time over the same window, per message; server + client: the two"
	echo "  processes' together. On loopback the client's send runs the server socket's wake-up (io_uring's poll"
	echo "  wake-up for keel's server, epoll's callback for the other), which no server clock holds: the client being the"
	echo "  same program for both, a difference in its CPU per message is the server's doing (docs/bench.md, step 3)"
	echo "- keel/epoll: median of the per-repetition ratios (min-max); > 1: keel's server moved more (for the server"
	echo "  CPU per message: > 1, keel's server spent more)"
	echo "- **client-bound**: the client used >= 0.9 of its cores in total, or one client thread >= 0.9 of its core, or the client's CPUs were"
	echo "  >= 0.9 busy (/proc/stat: softirqs included), in some repetition; there the throughput"
	echo "  compares the client, and the CPU per message is the figure that counts, server + client the fair one of"
	echo "  them (its rate verdict says \"rate moot\")"
	echo "- p50/p99: round-trip latency in µs (loaded latency with many in flight)"
	echo "- shown (p): whether keel's repetitions differ from epoll's by more than their spread explains, for the"
	echo "  rate and for server CPU per message: the exact two-sided Wilcoxon rank-sum test (tools/bench/ranksum.awk),"
	echo "  shown at p < 0.05. \"not shown\" is a row within its noise, neither lead nor loss; the median ratio is"
	echo "  still the figure. With $reps repetitions a side the smallest possible p is $(awk -v n="$reps" \
		-f "$root/tools/bench/ranksum.awk" -f <(echo 'BEGIN { printf "%.4f", ranksum_min_p(n) }'))"
	echo "- pairs (p): the rate, the server CPU and the server CPUs busy tested over the pairs, the exact two-sided Wilcoxon signed-rank test of"
	echo "  the per-pair keel/epoll ratios (ranksum.awk): a pair's two runs ran back to back, so a change of the"
	echo "  machine's pace that moves both, and spreads each server's repetitions enough to hide a difference"
	echo "  from the rank-sum, drops out of their ratio; the direction is the median ratio's. With $reps pairs the"
	echo "  smallest possible p is $(awk -v n="$reps" -f "$root/tools/bench/ranksum.awk" -f <(echo 'BEGIN { printf "%.4f", signrank_min_p(n) }')): it takes 6 pairs to reach 0.05"
} >"$md"
md_prog='
function fmtv(v, mode) { if (v == "null" || v == "-" || v == "") return "-"; return (mode == "stream") ? sprintf("%.3f", v) : sprintf("%.0f", v) }
function f1(v) { return (v == "null" || v == "-" || v == "") ? "-" : sprintf("%.1f", v) }
function f2(v) { return (v == "null" || v == "-" || v == "") ? "-" : sprintf("%.2f", v) }
# a median share of sleeps and its range, in per cent: "62 % (52-84)"; "-" without one
function share(m, lo, hi) { if (m == "null" || m == "-" || m == "") return "-"; return sprintf("%.0f %% (%.0f-%.0f)", 100 * m, 100 * lo, 100 * hi) }
function unit(mode) { return mode == "stream" ? "Gb/s" : mode == "pingpong" ? "round trips/s" : mode == "udp" ? "datagrams/s" : "msgs/s" }
NR == 1 { next }
{
	k = $1 SUBSEP $7 SUBSEP $8; have[k] = 1; line[k] = $0
	if (!($1 in seen)) { seen[$1] = 1; rows[++nr] = $1 }
}
END {
	np = split(pols, P, " ")
	for (p = 1; p <= np; p++) {
		pol = P[p]
		print ""
		print "## policy: " pol (pol == "block" ? " (both servers block in the kernel when idle)" : " (both servers poll " spin " us before blocking)")
		print ""
		print "| row | mode | size | inflight | conns | client threads | unit | keel median (min-max) | epoll median (min-max) | keel/epoll (min-max) | p50 µs keel / epoll | p99 µs keel / epoll | server CPU ns/msg keel (min-max) / epoll (min-max); keel/epoll (min-max) | server CPUs busy ns/msg keel / epoll; keel/epoll (min-max) | server cores keel / epoll | client cores used keel / epoll | client CPU ns/msg keel / epoll | server + client CPU ns/msg keel / epoll; keel/epoll (min-max) | shown (p): rate; server CPU; CPUs busy; server + client | pairs (p): rate; server CPU; CPUs busy | sleeps that gathered keel (min-max) / epoll (min-max) | flags |"
		print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
		for (r = 1; r <= nr; r++) {
			kk = rows[r] SUBSEP pol SUBSEP "keel"; ke = rows[r] SUBSEP pol SUBSEP "epoll"
			if (!(kk in have) && !(ke in have)) continue
			split((kk in have) ? line[kk] : "", K, "\t"); split((ke in have) ? line[ke] : "", E, "\t")
			src = (kk in have) ? line[kk] : line[ke]; split(src, S, "\t")
			mode = S[2]
			flags = ""
			if (K[18] > 0) flags = flags "client-bound keel " K[18] "/" K[9] "; "
			if (E[18] > 0) flags = flags "client-bound epoll " E[18] "/" E[9] "; "
			if (K[19] > 0 || E[19] > 0) flags = flags "lost " (K[19] + 0) " / " (E[19] + 0) "; "
			if (mode == "udp" && (K[39] > 0 || E[39] > 0 || K[38] > 0 || E[38] > 0))
				flags = flags "over the whole runs lost " (K[39] + 0) " / " (E[39] + 0) ", late " (K[38] + 0) " / " (E[38] + 0) "; "
			# The issue'"'"'s UDP baseline sends a datagram per message; keel batches with
			# UDP_SEGMENT: a lead there is the technique the baseline lacks, not keel'"'"'s.
			if (mode == "udp" && !egso && S[1] !~ /-gso$/ && S[4] + 0 > 1)
				flags = flags "baseline without UDP_SEGMENT (sendmmsg): a technique row, not keel'"'"'s lead; the *-gso row is like for like; "
			if (unequal) flags = flags "UNEQUAL sleep policies (--epoll-gather-us); "
			sub(/; $/, "", flags)
			sh = ranksum_shown(K[24], K[10], E[10], K[25], K[15], E[15])
			# A rate lead where the client held either server back belongs to the client.
			if (K[18] > 0 || E[18] > 0) sh = "rate moot (client-bound): " sh
			shb = ranksum_verdict(K[26], K[23], E[23], "dearer", "cheaper")
			if (shb != "-") sh = sh "; CPUs busy: " shb
			shb = ranksum_verdict(K[34], K[33], E[33], "dearer", "cheaper")
			if (shb != "-") sh = sh "; server + client: " shb
			# the paired verdicts: the direction is the median per-pair ratio'"'"'s
			pr = ranksum_shown(K[40], K[20], 1, K[41], K[29], 1)
			if (pr != "-" && (K[18] > 0 || E[18] > 0)) pr = "rate moot (client-bound): " pr
			shb = ranksum_verdict(K[48], K[45], 1, "dearer", "cheaper")
			if (shb != "-") pr = (pr == "-" ? "" : pr "; ") "CPUs busy: " shb
			printf "| %s | %s | %s | %s | %s | %s | %s | %s (%s-%s) | %s (%s-%s) | %s (%s-%s) | %s / %s | %s / %s | %s (%s-%s) / %s (%s-%s); %s (%s-%s) | %s / %s; %s (%s-%s) | %s / %s | %s / %s | %s / %s | %s / %s; %s (%s-%s) | %s | %s | %s / %s | %s |\n", \
				S[1], mode, S[3], S[4], S[5], S[6], unit(mode), \
				fmtv(K[10], mode), fmtv(K[11], mode), fmtv(K[12], mode), fmtv(E[10], mode), fmtv(E[11], mode), fmtv(E[12], mode), \
				f2(K[20]), f2(K[21]), f2(K[22]), f1(K[13]), f1(E[13]), f1(K[14]), f1(E[14]), \
				fmtv(K[15], "x"), fmtv(K[27], "x"), fmtv(K[28], "x"), fmtv(E[15], "x"), fmtv(E[27], "x"), \
				fmtv(E[28], "x"), f2(K[29]), f2(K[30]), f2(K[31]), fmtv(K[23], "x"), fmtv(E[23], "x"), \
				f2(K[45]), f2(K[46]), f2(K[47]), \
				f2(K[16]), f2(E[16]), f2(K[17]), f2(E[17]), fmtv(K[32], "x"), fmtv(E[32], "x"), \
				fmtv(K[33], "x"), fmtv(E[33], "x"), f2(K[35]), f2(K[36]), f2(K[37]), sh, pr, \
				share(K[42], K[43], K[44]), share(E[42], E[43], E[44]), (flags == "" ? "" : flags)
		}
	}
}'
awk -F'\t' -v pols="${pols[*]}" -v spin="$spin" -v egso="${#eudp[@]}" -v unequal="$unequal" -f "$root/tools/bench/ranksum.awk" -f <(printf '%s\n' "$md_prog") \
	"$sum" >>"$md"
if [ -n "$iperf_gbps" ]; then
	printf '\niperf3 reference (one way, no echo, one stream, CPUs %s / %s): %.3f Gb/s\n' "$server_cpus" "$client_cpus" \
		"$iperf_gbps" >>"$md"
elif [ $iperf -eq 1 ] && [ "$net" != lo ]; then
	printf '\niperf3 reference: loopback only, not run with --net %s\n' "$net" >>"$md"
elif [ $iperf -eq 1 ]; then
	printf '\niperf3 reference: not run (iperf3 is not installed)\n' >>"$md"
fi

# compare.png: per-rep keel/epoll ratio, median with min-max error bars, one series per policy.
if [ $plot -eq 1 ] && [ $have_gnuplot -eq 1 ]; then
	dat=$out/plot.dat
	# A row client-bound in some repetition (either server, either policy: column 18) is
	# labelled "*": its rate ratio compares the client, as compare.md says ("rate moot").
	awk -F'\t' -v pols="${pols[*]}" '
	NR == 1 { next }
	$18 ~ /^[0-9]+$/ && $18 > 0 { cb[$1] = 1 }
	$8 == "keel" && $20 != "-" { r[$1, $7] = $20 " " $21 " " $22; if (!($1 in seen)) { seen[$1] = 1; rows[++nr] = $1 } }
	END {
		np = split(pols, P, " ")
		for (i = 1; i <= nr; i++) {
			s = "\"" rows[i] (rows[i] in cb ? " *" : "") "\""
			for (p = 1; p <= np; p++) s = s " " (((rows[i], P[p]) in r) ? r[rows[i], P[p]] : "NaN NaN NaN")
			print s
		}
	}' "$sum" >"$dat"
	png=$out/compare.png
	term="pngcairo size 1100,550 font ',10'"
	echo 'set terminal' | gnuplot 2>&1 | grep -q pngcairo || term="png size 1100,550"
	plotcmd=""
	col=2
	for p in "${pols[@]}"; do
		t="both $p"
		[ "$p" = spin ] && t="both spin $spin us"
		[ "$p" = block ] && t="both blocking"
		xt=
		[ $col -eq 2 ] && xt=":xtic(1)"
		plotcmd+="${plotcmd:+, }'$dat' using $col:$((col + 1)):$((col + 2))$xt title '$t'"
		col=$((col + 3))
	done
	gnuplot <<EOF
set terminal $term
set output '$png'
set title "keel server / epoll server, same $client client: median of $reps per-rep ratios, bars min-max (>1: keel ahead)\n* client-bound in some repetition: the rate compares the client; see the server CPU in compare.md"
set ylabel "keel / epoll (round trips/s, msgs/s, datagrams/s or Gb/s)"
set style data histograms
set style histogram errorbars gap 2 lw 1
set style fill solid 0.7 border -1
set yrange [0:*]
set grid ytics
set xtics rotate by -30 noenhanced
set key top left
plot $plotcmd, 1.0 with lines dt 2 lc rgb '#c0392b' lw 2 title 'epoll = 1.0'
EOF
	[ -s "$png" ] || { echo "compare.sh: gnuplot wrote no $png" >&2; exit 1; }
fi

cat "$md"
echo
echo "wrote $md${plot:+ }$([ $plot -eq 1 ] && [ $have_gnuplot -eq 1 ] && echo "and $out/compare.png"), $tsv, $sum" \
	"($(($(date +%s) - t0)) s)"
