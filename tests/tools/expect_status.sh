# shellcheck shell=bash
# SPDX-License-Identifier: MIT
# Sourced by the command-line tests (netbench_test.sh, script_args_test.sh).
# expect_status STATUS PATTERN CMD...: CMD exits STATUS within 60 s, its stdout and stderr
# matching PATTERN (grep -E; empty: not checked); says ok or FAIL, and sets fail=1 on FAIL.
expect_status() {
	local want=$1 pat=$2 rc out
	shift 2
	out=$(timeout 60 "$@" 2>&1 < /dev/null)
	rc=$?
	if [ "$rc" -ne "$want" ] || { [ -n "$pat" ] && ! grep -Eq -- "$pat" <<<"$out"; }; then
		echo "FAIL: $*: status $rc (want $want): $(head -c 300 <<<"$out")"
		fail=1
	else
		echo "ok: $* (status $rc)"
	fi
}
