#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install keel into a temporary prefix, then build docs/examples/first-app.c out of tree
# twice, with pkg-config and with find_package(keel), and run both; build
# docs/examples/net-hello.c and have it answer one client; check which malloc a
# host gets with pkg-config keel (the C library's) and keel-jemalloc (the opt-in).
#   install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log"
pc=$(find "$tmp/prefix" -name keel.pc | head -n 1)
[ -n "$pc" ] || { echo "keel.pc was not installed"; exit 1; }
[ -f "$tmp/prefix/include/keel/keel.h" ] || { echo "keel/keel.h was not installed"; exit 1; }

check_run() { # binary
	local out rc=0
	# A deadline (the program stops by itself at once) and no idle polling (the suite
	# runs beside other tests on two cores).
	out=$(timeout 60 "$1" --shards 2 --idle-poll-us 0 --log-level warn) || rc=$?
	echo "$out"
	[ "$rc" -ne 124 ] || { echo "$1 did not finish within 60 s"; exit 1; }
	[ "$rc" -eq 0 ] || { echo "$1 exited with status $rc"; exit 1; }
	[ "$(grep -c '^hello from shard' <<<"$out")" -eq 2 ] ||
		{ echo "expected two hellos from $1"; exit 1; }
}

echo "== pkg-config"
export PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror "$src/docs/examples/first-app.c" -o "$tmp/first-app-pc" \
	$(pkg-config --cflags --libs keel)
check_run "$tmp/first-app-pc"
# A mistyped option is refused (status 2, naming it), not run with the defaults.
rc=0
out=$("$tmp/first-app-pc" --shard 4 2>&1) || rc=$?
[ "$rc" -eq 2 ] && grep -q -- "--shard" <<<"$out" ||
	{ echo "first-app ran with a mistyped option (status $rc): $out"; exit 1; }

echo "== docs/examples/net-hello.c: built with pkg-config, answers a client on loopback"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror "$src/docs/examples/net-hello.c" -o "$tmp/net-hello" \
	$(pkg-config --cflags --libs keel)
"$tmp/net-hello" --shards 2 --idle-poll-us 0 --log-level warn 127.0.0.1 0 \
	>"$tmp/hello.log" 2>&1 &
hello_pid=$!
port=
for _ in $(seq 1 600); do
	port=$(sed -n 's/^listening on .* port \([0-9][0-9]*\)$/\1/p' "$tmp/hello.log")
	[ -n "$port" ] && break
	kill -0 "$hello_pid" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$port" ]; then
	cat "$tmp/hello.log"
	kill -KILL "$hello_pid" 2>/dev/null || true
	echo "net-hello did not say it listens"
	exit 1
fi
reply=
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'hi\n' >&3
read -r -t 30 reply <&3 || true
exec 3>&-
kill -TERM "$hello_pid"
rc=0
wait "$hello_pid" || rc=$?
[ "$reply" = "hello 127.0.0.1" ] ||
	{ cat "$tmp/hello.log"; echo "net-hello answered '$reply', expected 'hello 127.0.0.1'"; exit 1; }
[ "$rc" -eq 0 ] ||
	{ cat "$tmp/hello.log"; echo "net-hello exited with status $rc after SIGTERM"; exit 1; }

echo "== public headers expose no liburing (raw ring access is keel/ring.h, asked for)"
# shellcheck disable=SC2046
for h in "$tmp/prefix/include/keel/"*.h; do
	name=keel/$(basename "$h")
	case $name in keel/ring.h | keel/compat.h) continue ;; esac
	printf '#include <%s>\n' "$name" >"$tmp/hdr.c"
	deps=$(cc -std=c11 -H -fsyntax-only "$tmp/hdr.c" $(pkg-config --cflags keel) 2>&1) ||
		{ echo "$deps"; echo "$name does not compile on its own"; exit 1; }
	if grep -E 'liburing|linux/io_uring\.h' <<<"$deps"; then
		echo "$name pulls in liburing or the kernel io_uring ABI; only keel/ring.h may"
		exit 1
	fi
done
printf '#include <keel/ring.h>\nint main(void) { return keel_sqe_get() != 0; }\n' >"$tmp/hdr.c"
# shellcheck disable=SC2046
cc -std=c11 -fsyntax-only "$tmp/hdr.c" $(pkg-config --cflags keel) ||
	{ echo "keel/ring.h does not compile on its own"; exit 1; }

echo "== a C++ host: every public header compiles as C++, and first-app.c built as C++ runs"
# Each header is extern "C" (the names link), and its static assertions are C++'s too
# (KEEL_STATIC_ASSERT): <keel/keel.h> failed in g++ at buf.h's _Static_assert.
if command -v c++ >/dev/null; then
	for h in "$tmp/prefix/include/keel/"*.h; do
		printf '#include <keel/%s>\nint main() { return 0; }\n' "$(basename "$h")" \
			>"$tmp/hdr.cc"
		# shellcheck disable=SC2046
		c++ -std=c++17 -Wall -Werror -fsyntax-only "$tmp/hdr.cc" $(pkg-config --cflags keel) ||
			{ echo "keel/$(basename "$h") does not compile as C++"; exit 1; }
	done
	# shellcheck disable=SC2046
	c++ -std=c++17 -Wall -Werror -x c++ "$src/docs/examples/first-app.c" -x none \
		-o "$tmp/first-app-cxx" $(pkg-config --cflags --libs keel)
	check_run "$tmp/first-app-cxx"
else
	echo "[SKIPPED] install::a_cpp_host: no C++ compiler (c++) on this machine (apt-get install g++)"
fi

echo "== malloc: pkg-config keel leaves it to the C library"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror "$src/tests/install/malloc_check.c" -o "$tmp/malloc-default" \
	$(pkg-config --cflags --libs keel)
out=$("$tmp/malloc-default") || { echo "$out"; echo "malloc-default failed"; exit 1; }
echo "$out"
grep -q '^malloc: .*/libc\.so\.6$' <<<"$out" ||
	{ echo "a host linked with pkg-config keel must keep the C library's malloc"; exit 1; }
grep -q '^arena: none$' <<<"$out" ||
	{ echo "without keel_jemalloc_enable() keel's allocator must not use jemalloc"; exit 1; }

echo "== malloc: pkg-config keel-jemalloc opts in"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -DOPT_IN "$src/tests/install/malloc_check.c" -o "$tmp/malloc-jemalloc" \
	$(pkg-config --cflags --libs keel-jemalloc)
out=$("$tmp/malloc-jemalloc") || { echo "$out"; echo "malloc-jemalloc failed"; exit 1; }
echo "$out"
grep -q '^arena: [0-9]' <<<"$out" ||
	{ echo "keel_jemalloc_enable() must give the allocator a jemalloc arena"; exit 1; }
# The documented cost of opting in with Debian's unprefixed jemalloc (docs/embedding.md).
grep -q '^malloc: .*libjemalloc' <<<"$out" ||
	{ echo "expected jemalloc to replace malloc when opted in (docs/embedding.md)"; exit 1; }

echo "== apps/embed out of tree: a host with its own main() and threads, pkg-config keel"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -pthread "$src/apps/embed/main.c" -o "$tmp/keel-embed" \
	$(pkg-config --cflags --libs keel) -ldl
if readelf -d "$tmp/keel-embed" | grep -q 'NEEDED.*jemalloc'; then
	echo "keel-embed built with pkg-config keel links jemalloc; only keel-jemalloc may"
	exit 1
fi
# The in-tree end-to-end suite, run against this binary: puts, gets, worker-thread
# checksums, a restart that reads everything back, bad input. The host prints which
# malloc it got; the suite keeps its stderr, checked here through a start of its own.
KEEL_EMBED_BIN="$tmp/keel-embed" "$build/bin/test_embed" -j1 --timeout 300 ||
	{ echo "tests/embed failed against the out-of-tree keel-embed"; exit 1; }
mkdir -p "$tmp/embed-data"
printf 'dir %s\naddr 127.0.0.1\nport 0\nworkers 1\n' "$tmp/embed-data" >"$tmp/embed.conf"
"$tmp/keel-embed" --config "$tmp/embed.conf" --shards 1 --idle-poll-us 0 2>"$tmp/embed.log" &
embed_pid=$!
for _ in $(seq 1 600); do
	grep -q 'keel-embed: listening' "$tmp/embed.log" && break
	kill -0 "$embed_pid" 2>/dev/null || break
	sleep 0.1
done
kill -TERM "$embed_pid" 2>/dev/null || true
rc=0
wait "$embed_pid" || rc=$?
cat "$tmp/embed.log"
[ "$rc" -eq 0 ] || { echo "keel-embed exited with status $rc"; exit 1; }
grep -q '^keel-embed: listening' "$tmp/embed.log" || { echo "keel-embed did not start"; exit 1; }
grep -q '^keel-embed: malloc from .*/libc\.so\.6$' "$tmp/embed.log" ||
	{ echo "the host's malloc must stay the C library's with pkg-config keel"; exit 1; }

echo "== find_package(keel)"
mkdir -p "$tmp/consumer"
cp "$src/docs/examples/first-app.c" "$tmp/consumer/"
cat >"$tmp/consumer/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(consumer C)
find_package(keel REQUIRED)
add_executable(first-app first-app.c)
target_link_libraries(first-app PRIVATE keel::core)
CMAKE
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
	>"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; exit 1; }
cmake --build "$tmp/consumer/build" >>"$tmp/consumer.log" 2>&1 ||
	{ cat "$tmp/consumer.log"; exit 1; }
check_run "$tmp/consumer/build/first-app"
echo "install test: passed"
