#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# What the malloc choice costs on the echo path (docs/embedding.md): keel-echo (jemalloc
# arenas; jemalloc is the process's malloc) and keel-echo-libc (glibc malloc), one shard
# on CPU 0, alternating (which goes first reverses every round), ROUNDS rounds; pingpong
# and throughput from keel-bench on CPU 1. Prints one JSON line per run, then the medians
# with their min-max.
#   malloc.sh BIN_DIR [ROUNDS (5)] [PORT (17931)]
set -euo pipefail
bin=$1
rounds=${2:-5}
port=${3:-17931}
out=$(mktemp)
pid=
# The server goes with the script however it ends (a failed keel-bench under set -e, ^C).
trap '[ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null; rm -f "$out"' EXIT
trap 'exit 130' INT TERM
for r in $(seq 1 "$rounds"); do
	order="keel-echo keel-echo-libc"
	[ $((r % 2)) -eq 1 ] || order="keel-echo-libc keel-echo"
	for v in $order; do
		# keel's listeners take SO_REUSEPORT: a server left on the port would share the load
		# and pass the listening check below.
		! ss -ltn | grep -q ":$port " || { echo "port $port is in use (another server?)"; exit 1; }
		"$bin/$v" --port "$port" --addr 127.0.0.1 --shards 1 --cpuset 0 --idle-poll-us 0 \
			--log-level warn >/dev/null &
		pid=$!
		for _ in $(seq 1 100); do
			ss -ltn | grep -q ":$port " && break
			sleep 0.1
		done
		ss -ltn | grep -q ":$port " || { echo "$v did not listen on $port"; kill "$pid"; exit 1; }
		for m in pingpong throughput; do
			res=$(timeout 60 "$bin/keel-bench" "$m" --client epoll --port "$port" \
				--server-pid "$pid" --cpuset 1 --seconds 2 --warmup 0.5 --json | tr -d '\n')
			echo "{\"round\":$r,\"server\":\"$v\",\"mode\":\"$m\",\"res\":$res}" | tee -a "$out"
		done
		kill -TERM "$pid"
		wait "$pid" || true
		pid=
	done
done
python3 - "$out" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for m in ("pingpong", "throughput"):
    for v in ("keel-echo", "keel-echo-libc"):
        rs = [r["res"] for r in rows if r["mode"] == m and r["server"] == v]
        def med(k, f):
            xs = [x[k] for x in rs if x[k] is not None]
            if not xs:
                return "n/a"
            return (f + " (" + f + "-" + f + ")") % (st.median(xs), min(xs), max(xs))
        print(f"{m:10} {v:15} runs {len(rs)} msgs/s {med('msgs_per_sec', '%.0f')} "
              f"p50_us {med('lat_p50_us', '%.1f')} "
              f"server_ns_per_msg {med('server_cpu_ns_per_msg', '%.0f')}")
PY
