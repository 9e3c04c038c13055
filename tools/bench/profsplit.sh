#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Where a server's CPU goes, by kind of work, under the one client compare.sh uses: keel's
# server and the epoll server each run alone on CPU 0, `keel-bench MODE --client epoll` on
# CPU 1, and `perf record` samples the server (2.5 s at 2999 Hz, after a warm-up). The
# samples' self time is split into: user space (the server, libc, liburing), io_uring (the
# kernel's io_uring code), epoll and poll, system-call entry and the file layer, scheduler
# and wake-ups, and the rest (the TCP/UDP/IP stack, copies, memory: work either server
# does). The shares of the first four are what a server's design can change; the rest
# bounds how far below the other server's CPU per message it can go.
#   tools/bench/profsplit.sh [BIN_DIR] [MODE SIZE INFLIGHT CONNS]
# Defaults: build-release/bin, pingpong 64 1 256. Needs perf (Debian: linux-perf) and root
# or kernel.perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-build-release/bin}
mode=${2:-pingpong}
size=${3:-64}
inflight=${4:-1}
conns=${5:-256}
command -v perf >/dev/null || {
	echo "profsplit.sh: perf not found; install it (Debian: apt-get install linux-perf)" >&2
	exit 2
}
[ -x "$bin/keel-bench" ] || {
	echo "profsplit.sh: no $bin/keel-bench; build it (cmake --build build-release) or give BIN_DIR" >&2
	exit 2
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port=$((20000 + RANDOM % 20000))

run() { # tag server-options...
	local tag=$1 sp cp
	shift
	"$bin/keel-bench" serve --cpuset 0 --port "$port" "$@" >"$tmp/$tag.srv" 2>&1 &
	sp=$!
	sleep 0.3
	"$bin/keel-bench" "$mode" --client epoll --port "$port" --server-pid "$sp" --size "$size" \
		--inflight "$inflight" --conns "$conns" --cpuset 1 --seconds 3.5 --warmup 0.3 \
		--json >"$tmp/$tag.json" &
	cp=$!
	sleep 0.8
	perf record -F 2999 -o "$tmp/$tag.data" -p "$sp" -- sleep 2.5 >/dev/null 2>&1
	wait "$cp"
	kill "$sp"
	wait "$sp" 2>/dev/null || true
	port=$((port + 1))
	local ns
	ns=$(sed -n 's/.*"server_cpu_ns_per_msg": *\([0-9.]*\).*/\1/p' "$tmp/$tag.json")
	perf report -i "$tmp/$tag.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
		awk -v tag="$tag" -v ns="$ns" '
		/%/ && $1 ~ /%$/ {
			s = $1 + 0; d = $2; n = $4; tot += s
			if (d != "[kernel.kallsyms]") c["user"] += s
			else if (n ~ /^io_|^__io_|io_uring|^tctx/) c["io_uring"] += s
			else if (n ~ /epoll|^ep_|^sock_poll|^tcp_poll|^__pollwait/) c["epoll"] += s
			else if (n ~ /syscall|^entry_SYSCALL|fdget|^fput|^vfs_read|^vfs_write|^ksys_|^__sys_|^___sys_|^__x64_sys|^sock_read_iter|^sock_write_iter|^rw_verify|^security_|fsnotify|^import_iovec|^copy_msghdr|^sockfd_lookup|^__check_object_size|^__virt_addr_valid|^check_heap_object/) c["syscall"] += s
			else if (n ~ /sched|schedule|switch|^try_to_wake|wake_up|^enqueue_task|^dequeue_task|^pick_next|^update_curr|hrtimer|^tick_/) c["sched"] += s
			else c["rest"] += s
		}
		END {
			if (!tot) { print tag ": no samples"; exit }
			printf "| %s | %s |", tag, ns
			split("user io_uring epoll syscall sched rest", k, " ")
			for (i = 1; i <= 6; i++)
				printf " %.1f%% (%.0f) |", 100 * c[k[i]] / tot, ns * c[k[i]] / tot
			printf "\n"
		}'
}

printf '%s %s B x %s in flight, %s connections; %s, %s CPUs\n\n' "$mode" "$size" "$inflight" \
	"$conns" "$(uname -r)" "$(nproc)"
printf '| server | CPU ns/msg | user space | io_uring | epoll and poll | syscall entry, files | scheduler, wake-ups | the rest (stack, copies) |\n'
printf '|---|---|---|---|---|---|---|---|\n'
run keel --backend keel --idle-poll-us 0
run epoll --backend epoll --busy-poll-us 0 --gather-us 10
printf '\nshare of the samples (ns per message); blocking policy for both, as compare.sh block\n'
