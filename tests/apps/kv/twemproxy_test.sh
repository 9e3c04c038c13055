#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Scale-out through twemproxy (docs/kv.md, "Scale-out with twemproxy"): two keel-kv
# processes and one nutcracker on loopback, keys spread by ketama consistent hashing.
#   twemproxy_test.sh KEEL_KV_BIN
# Checks: redis-benchmark -t set,get -n 20000 -P 16 through the proxy completes both tests
# with no error reply; 200 SETs and GETs by redis-cli through the proxy all succeed and read
# back their values; both backends hold keys (DBSIZE > 0 on each) and together exactly the
# keys written (the 200, plus redis-benchmark's one key: without -r it uses the literal key
# "key:__rand_int__"), each key on one backend only.
# Exit 77 (CTest: skipped) with the package to install when a program is missing. Every
# wait has a deadline; everything started here is killed on exit.
set -euo pipefail
kv=${1:?usage: twemproxy_test.sh KEEL_KV_BIN}
for p in nutcracker:nutcracker redis-cli:redis-tools redis-benchmark:redis-tools; do
	command -v "${p%%:*}" >/dev/null ||
		{ echo "SKIP: ${p%%:*} is not installed (apt install ${p#*:})"; exit 77; }
done

tmp=$(mktemp -d /tmp/kv-twemproxy.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*"
	for f in "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done
	exit 1
}

# Start one keel-kv on an ephemeral port; sets $port from its start-up line (10 s deadline).
start_kv() { # name
	# The log exists before the server starts: the child opens it after the fork, and a
	# first look that came before that failed the test ("sed: can't read ...").
	: >"$tmp/$1.log"
	"$kv" --port 0 --addr 127.0.0.1 --shards 1 --idle-poll-us 0 2>"$tmp/$1.log" &
	pids+=($!)
	local i
	for i in $(seq 200); do
		port=$(sed -n 's/^keel-kv: listening on .* port \([0-9]*\),.*/\1/p' "$tmp/$1.log")
		[ -n "$port" ] && return 0
		kill -0 "${pids[-1]}" 2>/dev/null || fail "keel-kv $1 exited before listening"
		sleep 0.05
	done
	fail "keel-kv $1 printed no 'listening' line within 10 s"
}

# A TCP port nobody listens on now (the proxy's bind may still lose a race: retried below).
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % 22000)) # below the ephemeral range (32768-): no TIME_WAIT there
		ss -tanH "sport = :$p" | grep -q . || { echo $p; return; } # nothing bound, no TIME_WAIT
	done
}

rcli() { timeout 20 redis-cli -h 127.0.0.1 "$@"; }

start_kv kv1
p1=$port
start_kv kv2
p2=$port

started=
for attempt in 1 2 3 4 5; do
	px=$(free_port)
	ps=$(free_port)
	[ "$px" != "$ps" ] || continue
	cat >"$tmp/nutcracker.yml" <<EOF
keel:
  listen: 127.0.0.1:$px
  hash: fnv1a_64
  distribution: ketama
  redis: true
  timeout: 10000
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:$p1:1 kv1
   - 127.0.0.1:$p2:1 kv2
EOF
	nutcracker -c "$tmp/nutcracker.yml" -s "$ps" -a 127.0.0.1 -o "$tmp/nutcracker.log" &
	pids+=($!)
	for i in $(seq 100); do
		if ss -ltnH "sport = :$px" | grep -q . && [ "$(rcli -p "$px" PING 2>/dev/null)" = PONG ]; then
			started=1
			break
		fi
		kill -0 "${pids[-1]}" 2>/dev/null || break
		sleep 0.05
	done
	[ -n "$started" ] && break
	kill -9 "${pids[-1]}" 2>/dev/null || true
done
[ -n "$started" ] || fail "nutcracker did not listen on a free port in 5 tries"
echo "keel-kv on $p1 and $p2, nutcracker on $px"

# redis-benchmark through the proxy (7.x stops at the first error reply). Twemproxy does not forward CONFIG, so redis-benchmark
# warns that it could not fetch the server's config: that line is expected, nothing else.
out=$(timeout 300 redis-benchmark -h 127.0.0.1 -p "$px" -t set,get -n 20000 -P 16 -c 20 -q 2>&1) ||
	fail "redis-benchmark through nutcracker exited with $?: $out"
echo "$out" | tr '\r' '\n' | grep -v '^ *$' | grep -v 'Could not fetch server CONFIG' >"$tmp/bench.out" || true
cat "$tmp/bench.out"
grep -qi 'error' "$tmp/bench.out" && fail "redis-benchmark through nutcracker reported an error"
for t in SET GET; do
	grep -q "^$t: [0-9.]* requests per second" "$tmp/bench.out" ||
		fail "redis-benchmark printed no $t result through nutcracker"
done

# redis-cli through the proxy: 200 SETs, then 200 GETs, one pipe each.
n=200
for i in $(seq $n); do echo "SET proxy:$i value-$i"; done | rcli -p "$px" >"$tmp/set.out"
[ "$(grep -cx OK "$tmp/set.out")" = $n ] || fail "not every SET through the proxy said OK: $(sort "$tmp/set.out" | uniq -c)"
for i in $(seq $n); do echo "GET proxy:$i"; done | rcli -p "$px" >"$tmp/get.out"
for i in $(seq $n); do echo "value-$i"; done | cmp -s - "$tmp/get.out" ||
	fail "GET through the proxy did not read back every value: $(head -5 "$tmp/get.out")"

# Where the keys landed: on both backends, each key once, nothing else.
d1=$(rcli -p "$p1" DBSIZE)
d2=$(rcli -p "$p2" DBSIZE)
echo "DBSIZE: kv1 $d1, kv2 $d2 (written: $n + 1)"
[ "$d1" -gt 0 ] && [ "$d2" -gt 0 ] || fail "keys did not spread: DBSIZE $d1 and $d2"
[ $((d1 + d2)) = $((n + 1)) ] || fail "the backends hold $((d1 + d2)) keys, $((n + 1)) were written"
{ rcli -p "$p1" KEYS '*'; rcli -p "$p2" KEYS '*'; } | sort >"$tmp/keys"
{ for i in $(seq $n); do echo "proxy:$i"; done; echo 'key:__rand_int__'; } | sort | cmp -s - "$tmp/keys" ||
	fail "the backends' keys are not the keys written (each once)"
echo "PASS"
