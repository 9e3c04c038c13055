#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# compare.sh's parity probe (tools/bench/parity.sh) finds keel's banner among the lines keel
# logs before it: `keel-bench serve` prints its warnings (a memlock fallback, a topology
# line) on stderr ahead of the banner, and the probe read only the first line, so on such a
# machine compare.sh stopped with "could not read whether keel's sleeps gather". A stub
# keel-bench whose serve warns first.
#   compare_parity_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/state"
cat >"$tmp/bin/keel-bench" <<STUB
#!/usr/bin/env bash
if [ "\$1" = serve ]; then
	echo "\$3" >"$tmp/state/backend" # serve --backend B
	echo "keel warn core: a warning of the machine's, ahead of the banner (a test's)" >&2
	echo "keel-bench serve: \$3 echo server on 127.0.0.1:1 (a test's), 1 shard, sleeps gather up to 10 us (adaptive)"
	case " \$* " in *" --seconds "*) exit 0 ;; esac # the probe's serve ends by itself
	trap 'echo "keel-bench serve: bytes in 0 out 0; 0 errors"; exit 0' TERM
	while :; do sleep 0.05; done
fi
. "$root/tests/tools/bench_stub.sh"
bench_stub_json 1000 1000 0
STUB
chmod +x "$tmp/bin/keel-bench"
if ! bash "$root/tools/bench/compare.sh" --bin "$tmp/bin" --rows pp1 --policies block --reps 1 \
	--seconds 0.1 --warmup 0 --no-iperf --no-plot --out "$tmp/out" >"$tmp/log" 2>&1; then
	echo "FAIL: compare.sh failed:"
	cat "$tmp/log"
	exit 1
fi
grep -q "keel's sleeps: gather up to 10 us" "$tmp/out/compare.md" ||
	{ echo "FAIL: compare.md does not say keel's sleeps gather:"; grep -i gather "$tmp/out/compare.md"; exit 1; }
echo "compare_parity: ok"
