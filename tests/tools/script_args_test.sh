#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The scripts' arguments: tools/test.sh and tools/demo.sh take none (one was ignored, and
# 'tools/test.sh --help' installed packages and ran the whole suite), and say their usage
# with --help; scaling.sh checks its values before any run (--reps abc died at its first
# compare.sh run with "abc: unbound variable"); compare.sh refuses a port past 65535 and a
# row named twice.
# Each refusal must come at once (status 2, before anything is built or run).
#   script_args_test.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail=0
. "$root/tests/tools/expect_status.sh"
expect_status 2 "takes no argument \\(got 'foo'\\)" bash "$root/tools/test.sh" foo
expect_status 0 "KEEL_TEST_QUICK=1" bash "$root/tools/test.sh" --help
expect_status 2 "takes no argument \\(got 'x'\\)" bash "$root/tools/demo.sh" x
expect_status 0 "KEEL_DEMO_SECONDS" bash "$root/tools/demo.sh" --help
expect_status 2 "--reps must be a positive integer" bash "$root/tools/bench/scaling.sh" --reps abc
expect_status 2 "--policies: 'foo' is not block or spin" bash "$root/tools/bench/scaling.sh" --policies foo
expect_status 2 "--reps needs a value" bash "$root/tools/bench/scaling.sh" --reps
expect_status 2 "--port must be a port number, 0 to 65535" bash "$root/tools/bench/compare.sh" --port 70000
# A row named twice merged both rows' runs into one row's medians and files.
expect_status 2 "--rows: 'pp1' is named twice" bash "$root/tools/bench/compare.sh" --rows pp1,pp1:pingpong:64:1:16
expect_status 2 "--rows: 'x' is named twice" bash "$root/tools/bench/compare.sh" --rows x:udp:64:1:1,x:udp:64:1:1
exit $fail
