#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/bench/ranksum.awk, the exact Wilcoxon rank-sum test compare.sh uses to say whether a
# row's keel and epoll repetitions differ: p-values against counts made by enumerating every
# split of the pooled values (written out below as fractions), ties included.
#   ranksum_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail=0
# check NAME "X values" "Y values" HITS SPLITS: p must be HITS / SPLITS
check() {
	local got
	got=$(awk -v xs="$2" -v ys="$3" -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { nx = split(xs, x, " "); ny = split(ys, y, " "); printf "%.12f\n", ranksum_p(x, nx, y, ny) }
AWK
)
	if awk -v g="$got" -v h="$4" -v t="$5" 'BEGIN { d = g - h / t; exit !(d < 1e-9 && d > -1e-9) }'; then
		echo "ok: $1 (p $got)"
	else
		echo "FAIL: $1: p $got, expected $4/$5"
		fail=1
	fi
}
# 5 against 5, fully separated: the two most extreme of C(10,5) = 252 splits
check "separated 5/5" "1 2 3 4 5" "6 7 8 9 10" 2 252
check "separated 5/5, other side" "60 70 80 90 100" "1 2 3 4 5" 2 252
# interleaved: the observed sum is near the mean; 174 of 252 splits are as far from it
check "interleaved 5/5" "1 3 5 7 9" "2 4 6 8 10" 174 252
# every value equal: every split has the same rank sum
check "all tied" "5 5 5" "5 5 5" 1 1
# ties inside and across the groups, unequal sizes (C(11,5) = 462 splits)
check "ties 5/6" "1 2 2 3 4" "3 4 5 5 6 7" 7 462
check "ties 7/8" "10 12 12 15 20 20 21" "11 12 18 20 25 26 30 31" 1196 6435
# a server-CPU-like row: keel's five figures mostly above epoll's, one tie across
check "cpu-like 5/5" "464 470 455 480 500" "433 440 470 420 431" 10 252
check "separated 7/7" "1 2 3 4 5 6 7" "8 9 10 11 12 13 14" 2 3432
# an empty side has no test; the smallest p of n a side is 2 / C(2n, n)
out=$(awk -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { split("1 2 3", x, " "); split("", y, " "); printf "%d ", ranksum_p(x, 3, y, 0)
	printf "%.6f %.6f %.6f\n", ranksum_min_p(2), ranksum_min_p(3), ranksum_min_p(5) }
AWK
)
want="-1 0.333333 0.100000 0.007937"
if [ "$out" = "$want" ]; then echo "ok: empty side, smallest p"; else echo "FAIL: empty side / smallest p: '$out', expected '$want'"; fail=1; fi
# the words the tables print
out=$(awk -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { printf "%s|%s|%s|%s|%s\n", ranksum_verdict(0.0079, 120, 100, "ahead", "behind"),
	ranksum_verdict(0.0079, 80, 100, "ahead", "behind"), ranksum_verdict(0.05, 80, 100, "ahead", "behind"),
	ranksum_verdict("-", 80, 100, "ahead", "behind"), ranksum_verdict(0.01, "null", 100, "ahead", "behind") }
AWK
)
want="keel ahead (p 0.008)|keel behind (p 0.008)|not shown (p 0.05)|-|-"
if [ "$out" = "$want" ]; then echo "ok: verdicts"; else echo "FAIL: verdicts '$out', expected '$want'"; fail=1; fi
# the two verdicts of a row in one cell
out=$(awk -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { printf "%s|%s|%s\n", ranksum_shown(0.0079, 120, 100, 0.3, 5, 6), ranksum_shown("-", 1, 2, "-", 1, 2),
	ranksum_shown(0.2, 1, 2, 0.002, 6, 5) }
AWK
)
want="keel ahead (p 0.008); not shown (p 0.30)|-|not shown (p 0.20); keel dearer (p 0.002)"
if [ "$out" = "$want" ]; then echo "ok: shown cell"; else echo "FAIL: shown cell '$out', expected '$want'"; fail=1; fi
[ $fail -eq 0 ] && echo "ranksum: ok"
exit $fail
