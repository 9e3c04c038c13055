#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Static analysis of keel's own code (alloc core net apps tools) with cppcheck. The checks:
#   warning      likely bugs (uninitialised use, null dereference, bad format strings, leaks
#                cppcheck can follow, out-of-bounds it can prove)
#   portability  code whose meaning depends on the platform (e.g. a bare NULL through varargs)
#   performance  needless copies and inefficient calls
#   error        always on (definite bugs)
# "style" and "information" are off: they are taste, and clang-format plus review cover it.
# A finding that is wrong is silenced at its line with "// cppcheck-suppress ID" and a comment
# saying why. Exits 1 on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cppcheck >/dev/null || { . tools/deps.sh; keel_install_missing cppcheck; }
gen=${1:-build/include}
[ -f "$gen/keel/config.h" ] || { echo "cppcheck.sh: no $gen/keel/config.h: build first (or pass the generated include directory)"; exit 1; }
out=$(cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance --std=c11 \
	--inline-suppr --suppress=missingIncludeSystem -j "$(nproc)" \
	-I core/include -I alloc/include -I net/include -I "$gen" \
	--template='{file}:{line}: {severity}: {id}: {message}' \
	alloc core net apps tools 2>&1) && rc=0 || rc=$?
if [ $rc -ne 0 ] || [ -n "$out" ]; then
	echo "$out"
	echo "cppcheck.sh: findings above (fix them, or silence a wrong one at its line with a reason)"
	exit 1
fi
echo "cppcheck.sh: clean"
