#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The top CMakeLists.txt names the Debian package of a dependency pkg-config cannot find
# (CMake's own error named only the pkg-config module): each of liburing, hwloc and jemalloc
# in turn is left out of a pkg-config directory that holds the other two's files.
#   cmake_deps_test.sh SOURCE_DIR
set -euo pipefail
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for dep in "liburing liburing-dev" "hwloc libhwloc-dev" "jemalloc libjemalloc-dev"; do
	set -- $dep
	rm -rf "$tmp/pc" "$tmp/build"
	mkdir -p "$tmp/pc"
	for m in liburing hwloc jemalloc; do
		[ "$m" = "$1" ] && continue
		cp "$(pkg-config --variable pcfiledir "$m")/$m.pc" "$tmp/pc/"
	done
	rc=0
	PKG_CONFIG_LIBDIR="$tmp/pc" PKG_CONFIG_PATH= cmake -S "$src" -B "$tmp/build" \
		>"$tmp/log" 2>&1 || rc=$?
	if [ "$rc" -eq 0 ]; then
		echo "FAIL: configured without $1"
		fail=1
	elif ! tr '\n' ' ' <"$tmp/log" | tr -s ' ' | grep -q "$1 not found by pkg-config: install $2"; then
		echo "FAIL: without $1 the error does not name $2:"
		cat "$tmp/log"
		fail=1
	fi
done
[ $fail -eq 0 ] && echo "cmake_deps: ok"
exit $fail
