#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# valgrind memcheck on a short keel-echo and keel-kv run (docs/reliability.md, "valgrind"):
# each server starts under memcheck (one shard, no idle polling), serves a few connections
# of checked traffic (tools/valgrind/client.py), stops on SIGTERM, and must report no error
# and no leak (--error-exitcode, --errors-for-leak-kinds=definite,indirect).
#   tools/valgrind.sh [BUILD_DIR]     default build
# Why one shard: valgrind 3.19 runs one thread at a time, and a shard waiting in
# io_uring_enter keeps that lock (the syscall is not treated as blocking), so with two
# shards the other threads starve: the runtime never reports it started and cross-shard
# requests never complete. docs/reliability.md has the evidence.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
command -v valgrind >/dev/null || { echo "tools/valgrind.sh: valgrind is not installed (apt-get install valgrind)"; exit 1; }
for b in keel-echo-libc keel-kv; do
	[ -x "$build/bin/$b" ] || { echo "tools/valgrind.sh: $build/bin/$b missing: build first (cmake --build $build)"; exit 1; }
done
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
status=0

# run NAME MODE BINARY: start under memcheck, wait for the port, drive, SIGTERM, check.
run() {
	local name=$1 mode=$2 bin=$3 log=$tmp/$1.log port= rc=0
	# keel-echo-libc: glibc's malloc, so memcheck sees every allocation (keel-echo's
	# jemalloc arenas would hide the shards' own).
	valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect \
		--show-leak-kinds=definite,indirect "$bin" --port 0 --addr 127.0.0.1 --shards 1 \
		--idle-poll-us 0 --stall-ms 1000 >"$log" 2>&1 &
	pid=$!
	for _ in $(seq 600); do
		# A port from 1: "port 0: <error>" is a failed start's line.
		port=$(sed -n 's/.*listening on .* port \([1-9][0-9]*\).*/\1/p' "$log" | head -1)
		[ -n "$port" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$port" ]; then
		cat "$log"
		echo "$name: did not start under valgrind within 60 s"
		kill -KILL "$pid" 2>/dev/null || true # one still starting is not left behind
		wait "$pid" 2>/dev/null || true
		pid=
		status=1
		return
	fi
	python3 tools/valgrind/client.py "$mode" "$port" 4 || rc=1
	# A server that crashed is gone (kill fails: its log is what tells why); one that does
	# not stop within 120 s is killed, and said.
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1200); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "$name: did not stop within 120 s of SIGTERM: killed"
		kill -KILL "$pid" 2>/dev/null || true
		rc=1
	fi
	wait "$pid" || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
	pid=
	grep -E "ERROR SUMMARY|definitely lost|indirectly lost|All heap blocks" "$log" | sed "s/^/$name: /" ||
		echo "$name: no memcheck summary in its log (killed before it could write one)"
	if [ "$rc" -ne 0 ]; then
		grep -v "Warning: set address range perms" "$log" | tail -60
		echo "$name: FAILED (status $rc; log above)"
		status=1
	else
		echo "$name: memcheck clean"
	fi
}

run keel-echo echo "$build/bin/keel-echo-libc"
run keel-kv kv "$build/bin/keel-kv"
[ $status -eq 0 ] && echo "tools/valgrind.sh: no error" || echo "tools/valgrind.sh: FAILED"
exit $status
