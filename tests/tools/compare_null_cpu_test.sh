#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.sh refuses a run whose server CPU (or client load) the client could not sample,
# instead of taking "null" into the row's medians, and a run in which a connection got no
# echo in the window, a run whose server logged a keel error its count of errors does not
# hold, and server and client CPU lists that share a CPU (unless --allow-shared).
# keel-bench is replaced by a stub: a server that prints its listening
# line and stops cleanly on SIGTERM, and a client whose JSON says so.
#   compare_null_cpu_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
# stub CPU STALLED [LINE [CPUS]]: a keel-bench whose client reports server CPU @CPU (null:
# none), @STALLED connections that got no echo and the server CPUs' busy time @CPUS, and
# whose server logs @LINE as it starts.
stub() {
	cat >"$tmp/bin/keel-bench" <<STUB
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	echo "keel-bench serve: stub on 127.0.0.1:1 (a test's)"
	echo "${3:-}"
	trap 'echo "keel-bench serve: bytes in 0 out 0; 0 errors"; exit 0' TERM
	while :; do sleep 0.05; done
fi
. "$root/tests/tools/bench_stub.sh"
bench_stub_json 1000 $1 $2 ${4:-500}
STUB
	chmod +x "$tmp/bin/keel-bench"
}
# expect_refusal WHAT MESSAGE: compare.sh must fail naming MESSAGE.
expect_refusal() {
	local st=0
	bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --policies block \
		--reps 1 --seconds 0.1 --warmup 0 --epoll-gather-us 0 --no-iperf --no-plot \
		--out "$tmp/out" >"$tmp/log" 2>&1 || st=$?
	if [ "$st" -eq 0 ]; then
		echo "FAIL: compare.sh took a run with $1 as a figure"
		cat "$tmp/log"
		exit 1
	fi
	if ! grep -q "$2" "$tmp/log"; then
		echo "FAIL: compare.sh failed (status $st) without saying why it should ($2):"
		cat "$tmp/log"
		exit 1
	fi
	echo "compare.sh refused the run with $1 (status $st)"
}
stub null 0
expect_refusal "no server CPU" "could not sample the server's CPU"
# The server CPUs' busy time unread: that column's median left the run out, silently.
stub 1000 0 "" null
expect_refusal "no server CPUs busy time" "could not sample the server's CPU"
stub 1000 1
expect_refusal "a stalled connection" "got no echo in the window"
stub 1000 0 "keel error core[shard 0]: io_uring_enter failed: Bad address; will retry"
expect_refusal "a keel error logged" "keel logged an error"
# Server and client CPU lists that share a CPU are refused before any run, unless
# --allow-shared (then compare.md says so).
st=0
bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --server-cpus 0 --client-cpus 0-1 \
	--out "$tmp/out" >"$tmp/log" 2>&1 || st=$?
if [ "$st" -ne 2 ] || ! grep -q "share CPU(s) 0" "$tmp/log"; then
	echo "FAIL: compare.sh ran with server and client sharing CPU 0 (status $st):"
	cat "$tmp/log"
	exit 1
fi
echo "compare.sh refused server and client lists that share CPU 0"
stub 1000 0
bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --policies block --reps 1 \
	--seconds 0.1 --warmup 0 --epoll-gather-us 0 --no-iperf --no-plot --server-cpus 0 \
	--client-cpus 0-1 --allow-shared --out "$tmp/out" >"$tmp/log" 2>&1 ||
	{ echo "FAIL: compare.sh --allow-shared failed:"; cat "$tmp/log"; exit 1; }
grep -q "server and client share CPU(s) 0" "$tmp/out/compare.md" &&
	grep -q "below the method: 1 repetitions" "$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md does not say the CPUs are shared and the reps too few:"; cat "$tmp/out/compare.md"; exit 1; }
echo "compare.sh --allow-shared ran and said so"
