#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel against the in-tree epoll baseline, side by side in one run: every row of the matrix
# (mode x size x connections) runs `keel-bench MODE --json` (client and server in one process,
# both of the same backend) for keel and epoll alternately, --reps times; the medians go to
# OUT/compare.md (a table per mode, ratios keel/epoll) and OUT/compare.png (gnuplot: keel/epoll
# ratio per row, 1.0 line). iperf3 (Debian's) is a reference row for stream bandwidth.
# Loopback (127.0.0.1) only. A failed run names its row and exits 1.
#   tools/bench/compare.sh [--quick] [--reps N] [--seconds S] [--out DIR] [--bin DIR]
#     --quick      a few rows, 0.3 s each, 1 repetition (for the tests)
#     --reps N     repetitions per backend and row (default 3)
#     --seconds S  measured window per run (default 2)
#     --out DIR    where compare.md and compare.png go (default bench-results)
#     --bin DIR    keel-bench's directory (default build-release/bin, built Release if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cmdline="tools/bench/compare.sh $*"

quick=0
reps=3
secs=2
out=bench-results
bin=
usage() { sed -n '9,14s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=1 ;;
	--reps) reps=${2:?--reps needs a value}; shift ;;
	--seconds) secs=${2:?--seconds needs a value}; shift ;;
	--out) out=${2:?--out needs a value}; shift ;;
	--bin) bin=${2:?--bin needs a value}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "compare.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --reps must be a positive integer" >&2; exit 2; }
[[ $secs =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "compare.sh: --seconds must be a number" >&2; exit 2; }
warmup=0.5
if [ $quick -eq 1 ]; then
	reps=1
	secs=0.3
	warmup=0.1
fi

. "$root/tools/deps.sh"
need=()
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v iperf3 >/dev/null || need+=(iperf3)
[ ${#need[@]} -eq 0 ] || keel_install_missing "${need[@]}"

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
[ -x "$kb" ] || { echo "compare.sh: no keel-bench in $bin" >&2; exit 1; }
mkdir -p "$out"

tmp=$(mktemp -d)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Rows: mode size inflight conns. inflight "-" = the mode's default.
if [ $quick -eq 1 ]; then
	rows=("pingpong 64 1 1" "throughput 64 64 1" "stream 65536 16 1" "pingpong 64 1 16")
else
	rows=()
	for c in 1 16; do
		rows+=("pingpong 64 1 $c" "pingpong 4096 1 $c" "throughput 64 64 $c" "throughput 4096 64 $c"
			"stream 65536 16 $c" "stream 1048576 16 $c")
	done
fi

field() { # file name -> value ("null" stays "null")
	sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n 1
}
median() { # values on stdin (nulls skipped) -> median, or "null"
	grep -v '^null$' | sort -g | awk '{v[NR] = $1} END {
		if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2];
		else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

run_one() { # backend mode size inflight conns rep
	local f="$tmp/$2-$3-$4-$5-$1-$6.json"
	if ! "$kb" "$2" --backend "$1" --size "$3" --inflight "$4" --conns "$5" --seconds "$secs" \
		--warmup "$warmup" --addr 127.0.0.1 --json >"$f" 2>"$f.err"; then
		echo "compare.sh: FAILED row mode=$2 size=$3 inflight=$4 conns=$5 backend=$1 rep=$6:" >&2
		cat "$f" "$f.err" >&2
		exit 1
	fi
	local m
	m=$(field "$f" msgs_per_sec)
	if [ -z "$m" ] || ! awk -v m="$m" 'BEGIN {exit !(m > 0)}'; then
		echo "compare.sh: FAILED row mode=$2 size=$3 conns=$5 backend=$1 rep=$6: no msgs_per_sec" >&2
		cat "$f" >&2
		exit 1
	fi
}

nrow=${#rows[@]}
echo "== keel vs epoll: $nrow rows x $reps reps x 2 backends, ${secs}s each (+${warmup}s warm-up)"
for rep in $(seq "$reps"); do
	for row in "${rows[@]}"; do
		read -r mode size infl conns <<<"$row"
		# Alternate which backend goes first, so that drift does not favour one.
		if [ $((rep % 2)) -eq 1 ]; then order="keel epoll"; else order="epoll keel"; fi
		for be in $order; do
			printf '  rep %s  %-10s size %-7s inflight %-2s conns %-2s %s\n' \
				"$rep" "$mode" "$size" "$infl" "$conns" "$be"
			run_one "$be" "$mode" "$size" "$infl" "$conns" "$rep"
		done
	done
done

med() { # backend mode size inflight conns field
	local f
	for f in "$tmp/$2-$3-$4-$5-$1-"*.json; do field "$f" "$6"; done | median
}

# iperf3 reference: one-way TCP bandwidth over loopback, integer seconds.
iperf_gbps=
ipsecs=$(awk -v s="$secs" 'BEGIN {n = int(s + 0.999); print (n < 1) ? 1 : n}')
free_port() {
	local p
	for p in $(seq 25201 25300); do
		ss -Htln 2>/dev/null | awk '{print $4}' | grep -q ":$p\$" || { echo "$p"; return 0; }
	done
	return 1
}
echo "== iperf3 reference (${ipsecs}s x $reps)"
for rep in $(seq "$reps"); do
	port=$(free_port) || { echo "compare.sh: no free port for iperf3" >&2; exit 1; }
	iperf3 -s -1 -p "$port" -B 127.0.0.1 >"$tmp/iperf3-s-$rep.log" 2>&1 &
	spid=$!
	pids+=("$spid")
	ok=0
	for _ in $(seq 100); do # until the server listens (5 s at most)
		ss -Htln 2>/dev/null | awk '{print $4}' | grep -q "^127.0.0.1:$port\$" && { ok=1; break; }
		kill -0 "$spid" 2>/dev/null || break
		sleep 0.05
	done
	if [ $ok -eq 1 ]; then
		timeout $((ipsecs + 15)) iperf3 -c 127.0.0.1 -p "$port" -t "$ipsecs" -J >"$tmp/iperf3-$rep.json" 2>&1 || ok=0
	fi
	kill "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	g=$(awk '/"sum_received"/ {f = 1} f && /"bits_per_second"/ {gsub(/[",]/, ""); print $2 / 1e9; exit}' \
		"$tmp/iperf3-$rep.json")
	if [ $ok -ne 1 ] || [ -z "$g" ]; then
		echo "compare.sh: FAILED row iperf3 reference rep=$rep:" >&2
		cat "$tmp/iperf3-$rep.json" "$tmp/iperf3-s-$rep.log" >&2
		exit 1
	fi
	echo "$g" >>"$tmp/iperf3.txt"
done
iperf_gbps=$(median <"$tmp/iperf3.txt")

# compare.md
fmt() { # value [printf format] -> formatted, "-" for null
	if [ "$1" = null ] || [ -z "$1" ]; then echo -; else awk -v v="$1" -v f="${2:-%.4g}" 'BEGIN {printf f, v}'; fi
}
ratio() { awk -v k="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", k / b; else print "-"}'; }
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
[ -n "$cpu" ] || cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
md=$out/compare.md
dat=$tmp/plot.dat
: >"$dat"
{
	echo "# keel vs epoll (keel-bench)"
	echo
	echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r)"
	echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "- command: \`$cmdline\`"
	echo "- $reps repetitions of ${secs} s (+${warmup} s warm-up) per backend and row, alternating; medians"
	echo "- each run: \`keel-bench MODE --backend B --json\`, client and server of the same backend in one"
	echo "  process on 127.0.0.1 (1 server shard, 1 client thread, pinned); see docs/bench.md"
	echo "- p50/p99: round-trip latency in µs (loaded latency in throughput mode); syscalls and CPU:"
	echo "  the server's, per message"
	for mode in pingpong throughput stream; do
		case $mode in
		pingpong) metric=msgs_per_sec; unit="round trips/s"; mfmt=%.0f ;;
		throughput) metric=msgs_per_sec; unit="msgs/s"; mfmt=%.0f ;;
		stream) metric=gbps; unit="Gb/s"; mfmt=%.3f ;;
		esac
		echo
		echo "## $mode ($unit)"
		echo
		echo "| mode | size | conns | inflight | keel $unit | epoll $unit | keel/epoll | p50 µs keel / epoll | p99 µs keel / epoll | srv syscalls/msg keel / epoll | srv CPU ns/msg keel / epoll |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|"
		for row in "${rows[@]}"; do
			read -r m size infl conns <<<"$row"
			[ "$m" = "$mode" ] || continue
			k=$(med keel "$m" "$size" "$infl" "$conns" "$metric")
			e=$(med epoll "$m" "$size" "$infl" "$conns" "$metric")
			r=$(ratio "$k" "$e")
			cols=()
			for fld in lat_p50_us:%.1f lat_p99_us:%.1f server_syscalls_per_msg:%.3f server_cpu_ns_per_msg:%.0f; do
				ff=${fld#*:}
				fld=${fld%%:*}
				cols+=("$(fmt "$(med keel "$m" "$size" "$infl" "$conns" "$fld")" "$ff") / $(fmt "$(med epoll "$m" "$size" "$infl" "$conns" "$fld")" "$ff")")
			done
			printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$m" "$size" "$conns" "$infl" \
				"$(fmt "$k" "$mfmt")" "$(fmt "$e" "$mfmt")" "$r" "${cols[@]}"
			echo "\"$m $size x$conns\" $r" >>"$dat"
		done
		if [ $mode = stream ]; then
			printf '| iperf3 (reference) | 128 KiB | 1 | - | %s (one way, no echo) | | reference | - | - | - | - |\n' \
				"$(fmt "$iperf_gbps" '%.3f')"
		fi
	done
} >"$md"

# compare.png: keel/epoll per row, 1.0 line.
png=$out/compare.png
term="pngcairo size 1000,500 font ',10'"
echo 'set terminal' | gnuplot 2>&1 | grep -q pngcairo || term="png size 1000,500"
gnuplot <<EOF
set terminal $term
set output '$png'
set title "keel / epoll (keel-bench, medians of $reps x ${secs} s; >1: keel ahead)"
set ylabel "keel / epoll (round trips/s, msgs/s or Gb/s)"
set xlabel "mode, size (bytes) x connections"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set yrange [0:*]
set grid ytics
set xtics rotate by -30 noenhanced
set key top left
plot '$dat' using 2:xtic(1) title 'keel / epoll' lc rgb '#2a6fbb', 1.0 with lines dt 2 lc rgb '#c0392b' lw 2 title 'epoll = 1.0'
EOF
[ -s "$png" ] || { echo "compare.sh: gnuplot wrote no $png" >&2; exit 1; }

cat "$md"
echo
echo "wrote $md and $png"
