#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Where a server's CPU goes, by kind of work, under the one client compare.sh uses: keel's
# server and the epoll server each run alone on CPU 0, `keel-bench MODE --client epoll` on
# CPU 1, and `perf record` samples the server (2.5 s at 2999 Hz, after a warm-up). The
# samples' self time is split into: user space (the server, libc, liburing), io_uring (the
# kernel's io_uring code), epoll and poll, system-call entry and the file layer, scheduler
# and wake-ups, and the rest (the TCP/UDP/IP stack, copies, memory: work either server
# does, though not always the same amount). The split is by symbol name, so approximate:
# io_uring's own poll of a socket (sock_poll, tcp_poll) counts as poll, and the CPU per
# message includes perf's own sampling overhead.
#   tools/bench/profsplit.sh [BIN_DIR] [MODE SIZE INFLIGHT CONNS]
# Defaults: build-release/bin, pingpong 64 1 256. Needs perf (Debian: linux-perf) and root
# or kernel.perf_event_paranoid <= 1.
set -euo pipefail
bin=$(realpath -m "${1:-$(dirname "$0")/../../build-release/bin}")
cd "$(dirname "$0")/../.."
# shellcheck source=serve_port.sh
. tools/bench/serve_port.sh
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
sp= cp=
trap 'kill $sp $cp 2>/dev/null; rm -rf "$tmp"' EXIT

run() { # tag server-options...
	local tag=$1 port
	shift
	"$bin/keel-bench" serve --cpuset 0 --port 0 "$@" >"$tmp/$tag.srv" 2>&1 &
	sp=$!
	if ! port=$(serve_port "$tmp/$tag.srv" "$sp"); then
		echo "profsplit.sh: the $tag server did not start:" >&2
		cat "$tmp/$tag.srv" >&2
		exit 1
	fi
	"$bin/keel-bench" "$mode" --client epoll --port "$port" --server-pid "$sp" --size "$size" \
		--inflight "$inflight" --conns "$conns" --cpuset 1 --seconds 3.5 --warmup 0.3 \
		--json >"$tmp/$tag.json" &
	cp=$!
	sleep 0.8
	if ! perf record -F 2999 -o "$tmp/$tag.data" -p "$sp" -- sleep 2.5 >"$tmp/$tag.perf" 2>&1; then
		echo "profsplit.sh: perf record failed (root, or kernel.perf_event_paranoid <= 1?):" >&2
		cat "$tmp/$tag.perf" >&2
		exit 1
	fi
	wait "$cp" || {
		echo "profsplit.sh: the client failed against the $tag server" >&2
		exit 1
	}
	cp=
	kill "$sp" 2>/dev/null || true
	wait "$sp" 2>/dev/null || true
	sp=
	local ns
	ns=$(sed -n 's/.*"server_cpu_ns_per_msg": *\([0-9.]*\).*/\1/p' "$tmp/$tag.json")
	perf report -i "$tmp/$tag.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
		awk -v tag="$tag" -v ns="$ns" '
		/%/ && $1 ~ /%$/ {
			s = $1 + 0; n = $4; tot += s
			if ($3 == "[.]") c["user"] += s
			else if (n ~ /^io_/ && n !~ /^io_schedule/ || n ~ /^__io_|io_uring|^tctx/) c["io_uring"] += s
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
