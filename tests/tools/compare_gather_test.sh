#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.md shows, per row and server, the share of the server's blocking waits that
# gathered first (median and range over the repetitions): the adaptive policy decides per
# run, and a matrix once had keel's server gather in 52-84 % of its sleeps in every
# repetition of a row while the epoll server gathered in 0-63 %, with nothing in compare.md
# to say so. A stub keel-bench's serve reports W blocking waits of which G gathered, a
# chosen G per repetition and server.
#   compare_gather_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
mkdir -p "$tmp/bin" "$tmp/state"
for b in keel epoll; do echo 0 >"$tmp/state/serve-$b"; done
cat >"$tmp/bin/keel-bench" <<STUB
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	b=\$3 # serve --backend B
	echo "\$b" >"$tmp/state/backend"
	i=\$(cat "$tmp/state/serve-\$b")
	# compare.sh's probe of keel's banner (serve --seconds 0.1) is not a repetition
	[[ " \$* " == *" --seconds "* ]] || { i=\$((i + 1)); echo \$i >"$tmp/state/serve-\$b"; }
	if [ "\$b" = keel ]; then g=(60 70 80); else g=(0 50 10); fi
	echo "keel-bench serve: stub on 127.0.0.1:1 (a test's)"
	trap 'echo "served 0 bytes on 1 connections; 0 errors"
		echo "bytes in 0 out 0; datagrams in 0 out 0; 100 blocking waits, 0 busy polls, \${g[\$((i - 1))]} gathered"
		exit 0' TERM
	while :; do sleep 0.05; done
fi
. "$root/tests/tools/bench_stub.sh"
bench_stub_json 1000 1000 0
STUB
chmod +x "$tmp/bin/keel-bench"
bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --policies block --reps 3 \
	--seconds 0.1 --warmup 0 --epoll-gather-us 0 --no-iperf --no-plot --out "$tmp/out" \
	>"$tmp/log" 2>&1 || { echo "FAIL: compare.sh failed:"; cat "$tmp/log"; exit 1; }
shares=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
	{ printf "%s %s %s %s\n", $8, $col["gathered_share"], $col["gathered_share_min"], $col["gathered_share_max"] }' \
	"$tmp/out/summary.tsv" | sort | tr '\n' ';')
[ "$shares" = "epoll 0.1 0 0.5;keel 0.7 0.6 0.8;" ] ||
	{ echo "FAIL: summary.tsv's shares of sleeps that gathered are '$shares'"; fail=1; }
grep -q '^| row |.*| sleeps that gathered keel (min-max) / epoll (min-max) | flags |$' "$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md's table has no column of sleeps that gathered:"; grep '^| row |' "$tmp/out/compare.md"; fail=1; }
grep -q '^| pp1 |.*| 70 % (60-80) / 10 % (0-50) |' "$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md's pp1 row lacks the shares 70 % (60-80) / 10 % (0-50):"; grep '^| pp1 |' "$tmp/out/compare.md"; fail=1; }
grep -q "^- sleeps that gathered: " "$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md does not say what the shares are"; fail=1; }
[ $fail -eq 0 ] && echo "compare_gather: ok"
exit $fail
