#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The scripts' arguments: tools/test.sh and tools/demo.sh take none (one was ignored, and
# 'tools/test.sh --help' installed packages and ran the whole suite), and say their usage
# with --help; scaling.sh checks its values before any run (--reps abc died at its first
# compare.sh run with "abc: unbound variable"); compare.sh refuses a port past 65535.
# Each refusal must come at once (status 2, before anything is built or run).
#   script_args_test.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail=0
err=$(mktemp)
trap 'rm -f "$err"' EXIT
# expect STATUS PATTERN SCRIPT ARGS...: SCRIPT ARGS exits STATUS within 20 s, its stdout and
# stderr matching PATTERN (grep -E)
expect() {
	local want=$1 pat=$2 rc
	shift 2
	timeout 20 bash "$root/$1" "${@:2}" > "$err" 2>&1 < /dev/null
	rc=$?
	if [ "$rc" -ne "$want" ] || ! grep -Eq -- "$pat" "$err"; then
		echo "FAIL: $*: status $rc (want $want): $(head -c 300 "$err")"
		fail=1
	else
		echo "ok: $* (status $rc)"
	fi
}
expect 2 "takes no argument \\(got 'foo'\\)" tools/test.sh foo
expect 0 "KEEL_TEST_QUICK=1" tools/test.sh --help
expect 2 "takes no argument \\(got 'x'\\)" tools/demo.sh x
expect 0 "KEEL_DEMO_SECONDS" tools/demo.sh --help
expect 2 "--reps must be a positive integer" tools/bench/scaling.sh --reps abc
expect 2 "--policies: 'foo' is not block or spin" tools/bench/scaling.sh --policies foo
expect 2 "--reps needs a value" tools/bench/scaling.sh --reps
expect 2 "--port must be a port number, 0 to 65535" tools/bench/compare.sh --port 70000
exit $fail
