#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.sh's figures under a locale whose decimal point is a comma (de_DE.UTF-8): keel-bench
# writes '.', and the summary's awk read "3.25" as 3 and sorted the figures as text, so the
# medians, min-max, ratios and p-values came out wrong without an error (a review). The
# script runs in the C locale whatever the caller's: keel's five rates 3.25, 12.5, 9.75,
# 10.25 and 8.5 give the median 9.75, min 3.25 and max 12.5. The locale is built in a
# temporary directory (localedef, the locales package's sources); without them: skipped.
#   compare_locale_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
skip() { echo "SKIP: $*"; exit 77; }
command -v localedef >/dev/null || skip "no localedef to build a de_DE.UTF-8 locale"
[ -e /usr/share/i18n/locales/de_DE ] ||
	skip "no de_DE locale source (/usr/share/i18n/locales: the locales package)"
mkdir -p "$tmp/loc"
localedef -i de_DE -f UTF-8 "$tmp/loc/de_DE.UTF-8" >/dev/null 2>&1 ||
	skip "localedef could not build de_DE.UTF-8"
[ "$(LOCPATH=$tmp/loc LC_ALL=de_DE.UTF-8 awk 'BEGIN { printf "%.2f", 3.25 }' 2>/dev/null)" = "3,25" ] ||
	skip "awk does not print with the locale's decimal point here (nothing to show)"
mkdir -p "$tmp/bin" "$tmp/state"
echo 0 >"$tmp/state/runs"
cat >"$tmp/bin/keel-bench" <<STUB
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	echo "\$3" >"$tmp/state/backend" # serve --backend B
	echo "keel-bench serve: stub on 127.0.0.1:1 (a test's)"
	trap 'echo "keel-bench serve: bytes in 0 out 0; 0 errors"; exit 0' TERM
	while :; do sleep 0.05; done
fi
n=\$((\$(cat "$tmp/state/runs") + 1)); echo \$n >"$tmp/state/runs"
set -- 3.25 3.25 12.5 12.5 9.75 9.75 10.25 10.25 8.5 8.5
rate=\${!n}
[ "\$(cat "$tmp/state/backend")" = keel ] || rate=10
. "$root/tests/tools/bench_stub.sh"
bench_stub_json \$rate 1000 0
STUB
chmod +x "$tmp/bin/keel-bench"
LOCPATH=$tmp/loc LC_ALL=de_DE.UTF-8 bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" \
	--rows pp1 --policies block --reps 5 --seconds 0.1 --warmup 0 --epoll-gather-us 0 \
	--no-iperf --no-plot --out "$tmp/out" >"$tmp/log" 2>&1 ||
	{ echo "FAIL: compare.sh failed:"; cat "$tmp/log"; exit 1; }
fail=0
got=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
	$8 == "keel" { print $col["median"], $col["min"], $col["max"] }' "$tmp/out/summary.tsv")
[ "$got" = "9.75 3.25 12.5" ] ||
	{ echo "FAIL: keel's median, min and max in summary.tsv are '$got', not '9.75 3.25 12.5'"; fail=1; }
grep -q '^| pp1 | pingpong | 64 | 1 | 1 | 1 | round trips/s | 10 (3-12) | 10 (10-10) | 0.97 (0.33-1.25) |' \
	"$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md's pp1 row:"; grep '^| pp1 ' "$tmp/out/compare.md"; fail=1; }
[ $fail -eq 0 ] && echo "compare_locale: ok"
exit $fail
