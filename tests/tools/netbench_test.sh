#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-netbench's command line: values out of range, stray arguments and a sender that fails
# are refused with a message and a non-zero status, and never hang (a failed sender left its
# sink thread in accept() for ever).
#   netbench_test.sh KEEL_NETBENCH
set -uo pipefail
nb=${1:?usage: netbench_test.sh KEEL_NETBENCH}
fail=0
err=$(mktemp)
trap 'rm -f "$err"' EXIT
# expect STATUS PATTERN ARGS...: keel-netbench ARGS exits STATUS within 60 s, its stderr
# matching PATTERN (grep -E)
expect() {
	local want=$1 pat=$2 rc
	shift 2
	timeout 60 "$nb" "$@" > /dev/null 2> "$err"
	rc=$?
	if [ "$rc" -ne "$want" ] || { [ -n "$pat" ] && ! grep -Eq -- "$pat" "$err"; }; then
		echo "FAIL: keel-netbench $*: status $rc (want $want), stderr: $(head -c 300 "$err")"
		fail=1
	else
		echo "ok: keel-netbench $* (status $rc)"
	fi
}
expect 2 "ROUNDS '0' is not a number from 1" rr 7000 1 0
expect 2 "PORT '70000' is not a number from 1 to 65535" rr 70000 1 1
expect 2 "takes PORT CONNS ROUNDS" rr 7000 1
expect 2 "SIZE '0' is not a number" send 0 1
expect 2 "TOTAL_MIB 'abc' is not a number" send 64 abc
expect 2 "unexpected argument '--bogus'" send 64 1 --bogus
expect 2 "unexpected argument 'stray'" send 64 1 zc stray
expect 0 "" --help
# The sender's buffer does not fit its memory: keel_run fails, and the program says so.
expect 1 "keel_run: Cannot allocate memory" send 33554432 1 --memory 16m
# A real run, with a keel option after the mode.
expect 0 "" send 65536 4 plain --shards 1
exit $fail
