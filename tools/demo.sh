#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on an embedded default: install what is missing, build Release, show this
# machine's topology and the map keel would use, then run the cross-shard benchmark (two
# shards exchanging messages) beside its baseline (two threads with a mutex queue and an
# eventfd) and print the comparison table.
#   tools/demo.sh                 2 s per measurement
#   KEEL_DEMO_SECONDS=5 tools/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
keel_install_missing

seconds=${KEEL_DEMO_SECONDS:-2}
echo "== building (Release) in build-release/"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKEEL_TESTS=OFF -DKEEL_WERROR=OFF >build-release.log 2>&1 ||
	{ cat build-release.log; exit 1; }
cmake --build build-release -j "$(nproc)" >>build-release.log 2>&1 || { cat build-release.log; exit 1; }

echo
echo "== this machine (keel-topo)"
build-release/bin/keel-topo | sed -n '1,/^Map/p;/^  shard/p' | head -n 30

echo
echo "== cross-shard messages: keel vs mutex queue + eventfd (${seconds}s per measurement)"
build-release/bin/keel-bench xshard --shards 2 --seconds "$seconds"
