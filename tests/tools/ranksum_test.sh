#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/bench/ranksum.awk, the exact Wilcoxon rank-sum test compare.sh uses to say whether a
# row's keel and epoll repetitions differ, and the exact signed-rank test over its pairs:
# p-values against counts made by enumerating every split of the pooled values, or every
# sign pattern of the differences (written out below as fractions), ties included.
#   ranksum_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail=0
# expect NAME GOT HITS COUNT: the p-value GOT must be HITS / COUNT
expect() {
	if awk -v g="$2" -v h="$3" -v t="$4" 'BEGIN { d = g - h / t; exit !(d < 1e-9 && d > -1e-9) }'; then
		echo "ok: $1 (p $2)"
	else
		echo "FAIL: $1: p $2, expected $3/$4"
		fail=1
	fi
}
# check NAME "X values" "Y values" HITS SPLITS: ranksum_p must be HITS / SPLITS
check() {
	expect "$1" "$(awk -v xs="$2" -v ys="$3" -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { nx = split(xs, x, " "); ny = split(ys, y, " "); printf "%.12f\n", ranksum_p(x, nx, y, ny) }
AWK
)" "$4" "$5"
}
# scheck NAME "differences" HITS PATTERNS: signrank_p, the paired test, must be HITS /
# PATTERNS, counted over the 2^m sign patterns of the m nonzero differences
scheck() {
	expect "$1" "$(awk -v ds="$2" -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { n = split(ds, d, " "); printf "%.12f\n", signrank_p(d, n) }
AWK
)" "$3" "$4"
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
# 7 pairs all one way: the two most extreme of 128 patterns, either sign
scheck "7 pairs up" "0.01 0.02 0.03 0.04 0.05 0.06 0.07" 2 128
scheck "7 pairs down" "-0.07 -0.01 -0.03 -0.02 -0.05 -0.04 -0.06" 2 128
# 5 pairs all one way cannot reach 0.05
scheck "5 pairs up" "1 2 3 4 5" 2 32
# one of 7 against: positive ranks 1+2+3+5+6+7 = 24 against a mean of 14; 14 of 128
# patterns are as far (sums <= 4 or >= 24)
scheck "6 of 7 up" "1 2 3 -4 5 6 7" 14 128
# ties: magnitudes 1, 1, 2, 3 take ranks 1.5, 1.5, 3, 4; 12 of 16 patterns as far
scheck "tied magnitudes" "1 1 2 -3" 12 16
# zeros are left out: three nonzero differences all one way, 2 of 8 patterns (counted as
# tied smallest magnitudes, they would give 10 of 32)
scheck "zeros left out" "0 0 1 2 3" 2 8
scheck "mixed 6" "0.5 -0.25 0.125 1 2 -3" 44 64
# mirrored ratios: log(110/100) and log(100/110) as doubles (their magnitudes differ in the
# last bit) are a tie of magnitudes; with it, 6 of 64 patterns are as far (2 of 32 counted
# as two ranks, 0.0625 against the exact 0.09375)
mirror=$(awk 'BEGIN { printf "%.17g %.17g %.17g %.17g %.17g %.17g", log(110 / 100), log(100 / 110),
	log(1.3), log(1.4), log(1.5), log(1.6) }')
scheck "mirrored log ratios tie" "$mirror" 6 64
# an empty side has no test; the smallest p of n a side is 2 / C(2n, n), of n pairs 2 / 2^n
out=$(awk -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { split("1 2 3", x, " "); split("", y, " "); printf "%d ", ranksum_p(x, 3, y, 0)
	split("0 0", z, " "); printf "%d ", signrank_p(z, 2)
	printf "%.6f %.6f %.6f ", ranksum_min_p(2), ranksum_min_p(3), ranksum_min_p(5)
	printf "%.6f %.6f\n", signrank_min_p(5), signrank_min_p(7) }
AWK
)
want="-1 -1 0.333333 0.100000 0.007937 0.062500 0.015625"
if [ "$out" = "$want" ]; then echo "ok: empty side, smallest p"; else echo "FAIL: empty side / smallest p: '$out', expected '$want'"; fail=1; fi
# the words the tables print
out=$(awk -f "$root/tools/bench/ranksum.awk" -f /dev/stdin <<'AWK'
BEGIN { printf "%s|%s|%s|%s|%s", ranksum_verdict(0.0079, 120, 100, "ahead", "behind"),
	ranksum_verdict(0.0079, 80, 100, "ahead", "behind"), ranksum_verdict(0.05, 80, 100, "ahead", "behind"),
	ranksum_verdict("-", 80, 100, "ahead", "behind"), ranksum_verdict(0.01, "null", 100, "ahead", "behind")
	# a difference shown with equal medians (keel 10 10 10 10 11 12 13 against 7 8 9 10 10 10
	# 10, p 0.041): no direction from the medians, where "behind" was printed
	printf "|%s\n", ranksum_verdict(0.0408, 10, 10, "ahead", "behind") }
AWK
)
want="keel ahead (p 0.008)|keel behind (p 0.008)|not shown (p 0.05)|-|-|shown, medians equal (p 0.041)"
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
