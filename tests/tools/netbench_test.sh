#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-netbench's command line: values out of range, stray arguments and a sender that fails
# are refused with a message and a non-zero status, and never hang (a failed sender left its
# sink thread in accept() for ever).
#   netbench_test.sh KEEL_NETBENCH
set -uo pipefail
nb=${1:?usage: netbench_test.sh KEEL_NETBENCH}
fail=0
. "$(dirname "$0")/expect_status.sh"
expect_status 2 "ROUNDS '0' is not a number from 1" "$nb" rr 7000 1 0
expect_status 2 "PORT '70000' is not a number from 1 to 65535" "$nb" rr 70000 1 1
expect_status 2 "takes PORT CONNS ROUNDS" "$nb" rr 7000 1
expect_status 2 "SIZE '0' is not a number" "$nb" send 0 1
expect_status 2 "TOTAL_MIB 'abc' is not a number" "$nb" send 64 abc
expect_status 2 "unexpected argument '--bogus'" "$nb" send 64 1 --bogus
expect_status 2 "unexpected argument 'stray'" "$nb" send 64 1 zc stray
expect_status 0 "" "$nb" --help
# The sender's buffer does not fit its memory: keel_run fails, and the program says so.
expect_status 1 "the runtime failed: Cannot allocate memory" "$nb" send 33554432 1 --memory 16m
# A real run, with a keel option after the mode.
expect_status 0 "" "$nb" send 65536 4 plain --shards 1
exit $fail
