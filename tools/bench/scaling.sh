#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Shard scaling, keel's server against the epoll server, one client program for both: for each
# server shard count S (default 1,2,4,8,12) the servers run on CPUs 0..S-1 and the client on
# the remaining CPUs S..N-1 (as many client threads), through tools/bench/compare.sh (both
# policies, alternating repetitions, server CPU over the window, client-bound flag). Rows grow
# with S so that SO_REUSEPORT spreads the connections over every shard: pingpong 64 B with 32
# connections per shard, throughput 64 B x 64 in flight with 4 connections per shard.
# Out: OUT/scaling.md (one table: shards x row x policy), OUT/scaling.tsv, OUT/scaling.png
# (when gnuplot is there), OUT/shards-S/ (compare.sh's files). Installs nothing, builds
# nothing: give it a built bin directory (cmake --build; keel-bench is all it runs).
# Default: 5 shard counts x 2 rows x 2 policies x 2 servers x 5 reps x (1 s + 0.3 s warm-up)
# = 200 runs, about 5-6 minutes.
#   tools/bench/scaling.sh [options]
#     --bin DIR         directory of keel-bench (default build-release/bin)
#     --shards LIST     server shard counts (default 1,2,4,8,12)
#     --cpus N          CPUs to use, 0..N-1 (default: all online)
#     --reps N          repetitions (default 5)      --seconds S  window (default 1)
#     --warmup S        warm-up (default 0.3)        --out DIR    (default scaling-results)
#     --policies LIST   block,spin (default both)    --client B   epoll (default) or keel
#     --rows LIST       row specs for compare.sh with {S} for the shard count (default
#                       "pp64:pingpong:64:1:32*{S},tp64:throughput:64:64:4*{S}")
#     --epoll-gather-us N  the epoll server's gathering window (compare.sh's option; default
#                       keel's, so both servers sleep alike; 0: the epoll server never)
#     --allow-shared    when no CPU is left for the client (S >= N), run it on all CPUs
#                       (marked "shared" in the table; for trying the script on a small box)
#     --client-from C   the client on CPUs C..N-1 at every shard count (every S <= C): the
#                       client's capacity then stays the same as S grows, where the default
#                       gives it fewer CPUs at more shards (4 of 16 at 12: client-bound rows)
#     --max-seconds T   stop before a shard count whose runs would end past T seconds (the
#                       estimate below), and report the counts done (a device's time limit)
#     --report-only     run nothing: write scaling.md/.tsv again from OUT/shards-S/summary.tsv
#                       of the shard counts that have one
set -euo pipefail
# The figures are read and written with a '.' decimal point whatever the caller's locale
# (compare.sh does the same; a ',' locale made awk misread them).
export LC_ALL=C
root=$(cd "$(dirname "$0")/../.." && pwd)
cmdline="tools/bench/scaling.sh $*"

bin=$root/build-release/bin shards_list=1,2,4,8,12 ncpu=$(nproc) reps=5 secs=1 warmup=0.3
out=scaling-results policies=block,spin client=epoll shared=0 egather=() cfrom= maxs= report_only=0
rows='pp64:pingpong:64:1:32*{S},tp64:throughput:64:64:4*{S}'
usage() { sed -n '/^#   tools\/bench\/scaling.sh \[options\]/,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; }
# An option's value: refused (status 2) when missing, as every other bad value is.
need() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "scaling.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
	case $1 in
	--bin) need "$@"; bin=$2; shift ;;
	--shards) need "$@"; shards_list=$2; shift ;;
	--cpus) need "$@"; ncpu=$2; shift ;;
	--reps) need "$@"; reps=$2; shift ;;
	--seconds) need "$@"; secs=$2; shift ;;
	--warmup) need "$@"; warmup=$2; shift ;;
	--out) need "$@"; out=$2; shift ;;
	--policies) need "$@"; policies=$2; shift ;;
	--client) need "$@"; client=$2; shift ;;
	--rows) need "$@"; rows=$2; shift ;;
	--epoll-gather-us) need "$@"; egather=(--epoll-gather-us "$2"); shift ;;
	--allow-shared) shared=1 ;;
	--client-from) need "$@"; cfrom=$2; shift ;;
	--max-seconds) need "$@"; maxs=$2; shift ;;
	--report-only) report_only=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "scaling.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
	esac
	shift
done
[[ $ncpu =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: --cpus must be a positive integer" >&2; exit 2; }
# Checked here, not by the first compare.sh run after minutes of others ("abc: unbound
# variable" for --reps abc).
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: --reps must be a positive integer" >&2; exit 2; }
[[ $secs =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "scaling.sh: --seconds must be a number" >&2; exit 2; }
[[ $warmup =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "scaling.sh: --warmup must be a number" >&2; exit 2; }
case $client in epoll | keel) ;; *) echo "scaling.sh: --client must be epoll or keel" >&2; exit 2 ;; esac
IFS=, read -ra pol_check <<<"$policies"
for p in "${pol_check[@]}"; do
	case $p in block | spin) ;; *) echo "scaling.sh: --policies: '$p' is not block or spin" >&2; exit 2 ;; esac
done
[ -z "$cfrom" ] || [[ $cfrom =~ ^[1-9][0-9]*$ && $cfrom -lt $ncpu ]] ||
	{ echo "scaling.sh: --client-from must be a CPU number from 1 to $((ncpu - 1))" >&2; exit 2; }
[ -z "$maxs" ] || [[ $maxs =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: --max-seconds must be a positive integer" >&2; exit 2; }
[ -x "$bin/keel-bench" ] || [ $report_only -eq 1 ] || { echo "scaling.sh: no keel-bench in $bin (build first, or --bin DIR)" >&2; exit 1; }
IFS=, read -ra S <<<"$shards_list"
for s in "${S[@]}"; do
	[[ $s =~ ^[1-9][0-9]*$ ]] || { echo "scaling.sh: --shards: '$s' is not a positive integer" >&2; exit 2; }
	if [ -n "$cfrom" ] && [ "$s" -gt "$cfrom" ]; then
		echo "scaling.sh: $s shards reach into the client's CPUs $cfrom-$((ncpu - 1)) (--client-from)" >&2
		exit 2
	fi
	if [ "$s" -ge "$ncpu" ] && [ $shared -eq 0 ]; then
		echo "scaling.sh: $s shards leave no CPU of $ncpu for the client (fewer shards, --cpus, or --allow-shared)" >&2
		exit 2
	fi
done
mkdir -p "$out"
# The client's CPUs at S shards.
client_cpus() {
	if [ -n "$cfrom" ]; then
		echo "$cfrom-$((ncpu - 1))"
	elif [ "$1" -lt "$ncpu" ]; then
		echo "$1-$((ncpu - 1))"
	else
		echo "0-$((ncpu - 1)) (shared)"
	fi
}
# Seconds one shard count takes: its runs, each the window, the warm-up and about 0.6 s of
# starting and stopping (measured on the 2-CPU machines: 1 s windows took 1.9 s a run).
IFS=, read -ra rr <<<"$rows"
IFS=, read -ra pp <<<"$policies"
per_s=$(awk -v n=$((${#rr[@]} * ${#pp[@]} * 2 * reps)) -v w="$secs" -v u="$warmup" 'BEGIN { printf "%d", n * (w + u + 0.6) + 0.5 }')
echo "scaling.sh: ${#S[@]} shard counts, about $per_s s each, $((per_s * ${#S[@]})) s in all${maxs:+ (--max-seconds $maxs)}"
t0=$(date +%s)
done_s=()
for s in "${S[@]}"; do
	if [ $report_only -eq 1 ]; then
		[ ! -s "$out/shards-$s/summary.tsv" ] || done_s+=("$s")
		continue
	fi
	if [ -n "$maxs" ] && [ $(($(date +%s) - t0 + per_s)) -gt "$maxs" ]; then
		echo "scaling.sh: stopping before $s shard(s): its runs would end past --max-seconds $maxs" >&2
		break
	fi
	srv="0-$((s - 1))"
	cli=$(client_cpus "$s")
	cli=${cli% (shared)}
	allow=()
	[ "$s" -lt "$ncpu" ] || allow=(--allow-shared) # the client on all CPUs (--allow-shared)
	r=${rows//\{S\}/$s}
	# conns expressions like 32*4 -> 128
	spec=()
	IFS=, read -ra rr <<<"$r"
	for x in "${rr[@]}"; do
		IFS=: read -r n m sz inf c <<<"$x"
		spec+=("$n:$m:$sz:$inf:$((c))")
	done
	echo "== $s shard(s) on CPUs $srv, client on CPUs $cli ($(($(date +%s) - t0)) s so far)"
	bash "$root/tools/bench/compare.sh" --bin "$bin" --shards "$s" --server-cpus "$srv" --client-cpus "$cli" \
		--rows "$(IFS=,; echo "${spec[*]}")" --reps "$reps" --seconds "$secs" --warmup "$warmup" \
		--policies "$policies" --client "$client" "${egather[@]}" "${allow[@]}" \
		--out "$out/shards-$s" --no-plot --no-iperf >"$out/shards-$s.log" 2>&1 || {
		echo "scaling.sh: compare.sh failed for $s shard(s):" >&2
		tail -n 30 "$out/shards-$s.log" >&2
		exit 1
	}
	done_s+=("$s")
done
echo "scaling.sh: $(($(date +%s) - t0)) s"
if [ ${#done_s[@]} -eq 0 ] && [ $report_only -eq 1 ]; then
	echo "scaling.sh: --report-only: no $out/shards-S/summary.tsv for shard counts $shards_list" >&2
	exit 1
fi
[ ${#done_s[@]} -gt 0 ] || { echo "scaling.sh: no shard count fit in --max-seconds $maxs" >&2; exit 1; }
S=("${done_s[@]}")

tsv=$out/scaling.tsv
{
	head -n 1 "$out/shards-${S[0]}/summary.tsv" | sed 's/^/shards\tclient_cpus\t/'
	for s in "${S[@]}"; do
		c=$(client_cpus "$s")
		tail -n +2 "$out/shards-$s/summary.tsv" | sed "s/^/$s\t$c\t/"
	done
} >"$tsv"

md=$out/scaling.md
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) # no SIGPIPE under pipefail
{
	echo "# Shard scaling: keel vs epoll servers, one $client client"
	echo
	echo "- machine: $(nproc) CPUs (using $ncpu), ${cpu:-unknown CPU}, Linux $(uname -r)"
	echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); command: \`$cmdline\`"
	if [ -n "$cfrom" ]; then
		echo "- S shards on CPUs 0..S-1 (keel: hash steering, as the epoll server's SO_REUSEPORT group), the client on CPUs $cfrom-$((ncpu - 1)) at every S (--client-from), one thread per CPU (at most one per connection)"
	else
		echo "- S shards on CPUs 0..S-1 (keel: hash steering, as the epoll server's SO_REUSEPORT group), the client on the other CPUs with one thread per CPU (at most one per connection)"
	fi
	echo "- $reps alternating repetitions of ${secs} s (+${warmup} s warm-up); median (min-max); method: docs/bench.md"
	echo "- policies: block = keel --idle-poll-us 0 / epoll --busy-poll-us 0; spin = both 50 us"
	sed -n 's/^- keel.s sleeps: /- sleeps: keel: /p' "$out/shards-${S[0]}/compare.md" | head -n 1
	echo "- server cores: the server's CPU time over the window / window; client-bound: the client used >= 0.9 of its cores in total, or one client thread >= 0.9 of its core, or the client CPUs were >= 0.9 busy (/proc/stat)"
	echo "- shown (p): compare.sh's rank-sum verdicts, rate; server CPU (docs/bench.md); $reps repetitions a side can"
	echo "  reach p = $(awk -v n="$reps" -f "$root/tools/bench/ranksum.awk" \
		-f <(echo 'BEGIN { printf "%.4f", ranksum_min_p(n) }'))" \
		"(3 never reach 0.05: the default is 5)"
	echo "- pairs (p): compare.sh's paired verdicts, rate; server CPU (the signed-rank test of the per-pair ratios,"
	echo "  docs/bench.md); $reps pairs can reach p = $(awk -v n="$reps" -f "$root/tools/bench/ranksum.awk" -f <(echo 'BEGIN { printf "%.4f", signrank_min_p(n) }'))" \
		"(it takes --reps 6 to reach 0.05)"
	echo
	echo "| shards | client CPUs | row | mode | conns | policy | unit | keel median (min-max) | epoll median (min-max) | keel/epoll (min-max) | server cores keel / epoll | server CPU ns/msg keel / epoll | p99 µs keel / epoll | shown (p): rate; server CPU | pairs (p): rate; server CPU | flags |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	scaling_prog='
	function v(x) { return (x == "" || x == "null" || x == "-") ? "-" : sprintf("%.0f", x) }
	function g(x) { return (x == "" || x == "null" || x == "-") ? "-" : sprintf("%.2f", x) }
	function f1(x) { return (x == "" || x == "null" || x == "-") ? "-" : sprintf("%.1f", x) }
	NR == 1 { next }
	{ k = $1 SUBSEP $3 SUBSEP $9; L[k, $10] = $0; if (!(k in seen)) { seen[k] = 1; ord[++n] = k } }
	END {
		for (i = 1; i <= n; i++) {
			k = ord[i]; split(L[k, "keel"], K, "\t"); split(L[k, "epoll"], E, "\t")
			src = (K[1] != "") ? L[k, "keel"] : L[k, "epoll"]; split(src, A, "\t")
			mode = A[4]; unit = mode == "stream" ? "Gb/s" : mode == "pingpong" ? "round trips/s" : mode == "udp" ? "datagrams/s" : "msgs/s"
			fl = ""
			if (K[20] > 0) fl = fl "client-bound keel " K[20] "/" K[11] "; "
			if (E[20] > 0) fl = fl "client-bound epoll " E[20] "/" E[11] "; "
			if (A[2] ~ /shared/) fl = fl "client shares the server CPUs; "
			sub(/; $/, "", fl)
			sh = ranksum_shown(K[26], K[12], E[12], K[27], K[17], E[17])
			# a client-bound run measured the client: its rate verdict says nothing of
			# the servers (as in compare.md)
			if (K[20] > 0 || E[20] > 0) sh = "rate moot (client-bound): " sh
			# the paired verdicts (compare.sh: p_rate_paired, p_cpu_paired), the direction
			# the median per-pair ratio'"'"'s
			pr = ranksum_shown(K[42], K[22], 1, K[43], K[31], 1)
			if (pr != "-" && (K[20] > 0 || E[20] > 0)) pr = "rate moot (client-bound): " pr
			printf "| %s | %s | %s | %s | %s | %s | %s | %s (%s-%s) | %s (%s-%s) | %s (%s-%s) | %s / %s | %s / %s | %s / %s | %s | %s | %s |\n", \
				A[1], A[2], A[3], mode, A[7], A[9], unit, v(K[12]), v(K[13]), v(K[14]), v(E[12]), v(E[13]), v(E[14]), \
				g(K[22]), g(K[23]), g(K[24]), g(K[18]), g(E[18]), v(K[17]), v(E[17]), f1(K[16]), f1(E[16]), sh, pr, fl
		}
	}'
	awk -F'\t' -f "$root/tools/bench/ranksum.awk" -f <(printf '%s\n' "$scaling_prog") "$tsv"
} >"$md"

if command -v gnuplot >/dev/null; then
	dat=$out/scaling.dat
	awk -F'\t' 'NR > 1 { print $3 "-" $9 "-" $10, $1, $12, $13, $14 }' "$tsv" | sort -k1,1 -k2,2n >"$dat"
	series=$(cut -d' ' -f1 "$dat" | sort -u)
	plot=""
	for sname in $series; do
		plot+="${plot:+, }'< grep \"^$sname \" $dat' using 2:3:4:5 with yerrorlines title '$sname'"
	done
	term="pngcairo size 1000,550 font ',10'"
	echo 'set terminal' | gnuplot 2>&1 | grep -q pngcairo || term="png size 1000,550"
	gnuplot <<EOF || echo "scaling.sh: gnuplot failed; no scaling.png" >&2
set terminal $term
set output '$out/scaling.png'
set title "msgs/s by server shards (median, bars min-max); row-policy-server"
set xlabel "server shards"
set ylabel "round trips/s or msgs/s"
set logscale y
set logscale x 2
set xtics ($(IFS=,; echo "${S[*]}"))
set grid
set key outside right noenhanced
plot $plot
EOF
fi
cat "$md"
echo
echo "wrote $md and $tsv$([ -s "$out/scaling.png" ] && echo " and $out/scaling.png") ($(($(date +%s) - t0)) s)"
