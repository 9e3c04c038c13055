#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# keel-topo inside a network namespace this test creates, on a veth pair with 4 rx queues:
# the report, the JSON and the plan see the 4 queues. Needs root and iproute2; exits 77
# (ctest: skipped) with the reason otherwise. The namespace is always deleted.
set -euo pipefail
bin=${1:?usage: netns_veth.sh PATH/TO/keel-topo}

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to create a network namespace"
command -v ip >/dev/null || skip "needs ip (iproute2)"

ns="keel-topo-test-$$-$RANDOM"
ip netns add "$ns" || skip "ip netns add failed (no netns support here)"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -f "${map:-}"; }
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }

in_ns ip link add kt0 numrxqueues 4 numtxqueues 4 type veth peer name kt1 \
	numrxqueues 4 numtxqueues 4
in_ns ip link set kt0 up
in_ns ip link set kt1 up

fail() { echo "FAIL: $*"; exit 1; }

out=$(in_ns "$bin" --iface kt0) || fail "keel-topo --iface kt0 exited $?: $out"
echo "$out"
grep -q "^  kt0" <<<"$out" || fail "kt0 is not in the report"
grep -q "rx queues 4, tx queues 4" <<<"$out" || fail "the report does not show 4 rx queues"
grep -q "virtual interface" <<<"$out" || fail "kt0 is not reported as virtual"
grep -q -- "-> kt0 rxq 0" <<<"$out" || fail "no shard owns kt0 rx queue 0"
grep -q "eth0" <<<"$out" && fail "an interface from outside the namespace is listed"

json=$(in_ns "$bin" --iface kt0 --json) || fail "--json exited $?"
if command -v python3 >/dev/null; then
	python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
n = [x for x in d["nics"] if x["name"] == "kt0"][0]
assert n["rx_queues"] == 4 and len(n["rxq"]) == 4, n
assert n["virtual"] is True and n["driver"] == "veth", n
assert d["map"]["iface"] == "kt0"
' <<<"$json" || fail "JSON of kt0 is wrong: $json"
else
	grep -q '"rx_queues": 4' <<<"$json" || fail "JSON lacks rx_queues 4"
fi

map=$(mktemp /tmp/keel-topo-netns-XXXXXX.json)
plan=$(in_ns "$bin" --iface kt0 --shards 2 --plan --map "$map") ||
	fail "--plan exited $?"
echo "$plan"
grep -q "^ethtool -L kt0 rx 2$" <<<"$plan" || fail "no channels command in the plan (veth has rx/tx channels, no combined)"
grep -q '"iface": "kt0"' "$map" || fail "the map file does not name kt0"

# --apply runs the plan's commands itself (no shell) inside the namespace.
have=4
if command -v ethtool >/dev/null; then
	in_ns "$bin" --iface kt0 --shards 2 --plan --apply --map "$map" ||
		fail "--plan --apply exited $?"
	in_ns ethtool -l kt0 | awk '/^Current/ {cur=1} cur && /^RX:/ {print $2; exit}' |
		grep -qx 2 || fail "--apply did not set kt0 to 2 rx channels: $(in_ns ethtool -l kt0)"
	have=2
else
	echo "SKIP part: ethtool is not installed, --plan --apply not run (tools/test.sh installs it)"
fi

# The plan's map matches inside the namespace once applied (veth has no IRQs to disagree);
# not applied, kt0 has more queues than the map serves, and --check says so ...
check_map() { # sets chk (what --check said) and rc (its status)
	set +e
	chk=$(in_ns "$bin" --check --map "$map")
	rc=$?
	set -e
}
check_map
if [ "$have" -eq 2 ]; then
	[ $rc -eq 0 ] || fail "--check of the fresh map failed: $chk"
else
	[ $rc -eq 1 ] && grep -q "kt0 has 4 rx queues, the map serves 2" <<<"$chk" ||
		fail "--check of a map serving 2 of kt0's 4 queues exited $rc: $chk"
fi
# ... as for a map serving fewer queues than kt0 has after the plan ...
sed -i 's/"rx_queues": 2/"rx_queues": 1/; s/"rxq": 1/"rxq": null/' "$map"
check_map
[ $rc -eq 1 ] || fail "--check of a map serving 1 queue exited $rc: $chk"
grep -q "kt0 has $have rx queues, the map serves 1" <<<"$chk" || fail "wrong mismatch: $chk"
sed -i 's/"rx_queues": 1/"rx_queues": 2/; s/"rxq": null/"rxq": 1/' "$map"
# ... and a map needing more queues than kt0 has does not (a shard on queue 7: rx_queues is
# the highest rxq + 1, the parser refuses any other).
sed -i 's/"rx_queues": 2/"rx_queues": 8/; s/"rxq": 1/"rxq": 7/' "$map"
check_map
[ $rc -eq 1 ] || fail "--check of a map needing 8 queues exited $rc: $chk"
grep -q "kt0 has $have rx queues, the map needs 8" <<<"$chk" || fail "wrong mismatch: $chk"
echo "PASS"
