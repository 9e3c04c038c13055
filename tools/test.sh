#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install what is missing, build, and run every test: the normal build, the sanitizer build
# (ASan+UBSan, leaks included, with the fault-injection tests), a ThreadSanitizer build of
# the cross-thread tests and of keel-kv and keel-embed (run under their suites), the
# clang-format check, cppcheck (tools/cppcheck.sh), valgrind memcheck of keel-echo and keel-kv
# (tools/valgrind.sh), a Debug build (compiled only), and the fuzz harnesses (tools/fuzz.sh:
# corpus replay plus a fixed-seed run of each; KEEL_FUZZ_RUNS sets the inputs per harness).
#   tools/test.sh            everything
#   KEEL_TEST_QUICK=1 ...    the normal build and its tests, valgrind and cppcheck only
set -euo pipefail
# It takes no argument: one was ignored, and 'tools/test.sh --help' installed packages and
# ran the whole suite.
case "${1:-}" in
'') ;;
-h | --help)
	sed -n '3,10p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "tools/test.sh: takes no argument (got '$1'); see tools/test.sh --help" >&2
	exit 2
	;;
esac
cd "$(dirname "$0")/.."
# A step that stops the script (a build that fails, a directory that cannot be made) says so
# in the summary line too, not only above it.
summary=
trap 'rc=$?; [ $rc -eq 0 ] || [ -n "$summary" ] || echo "tools/test.sh: FAILED (stopped by the step above, status $rc)"' EXIT
. tools/deps.sh
# The programs the keel-kv tests drive (tests/apps/kv): redis-cli and redis-benchmark
# (redis-tools), redis-server (the bench script's comparison, tools/bench/kv.sh --quick) and
# twemproxy (nutcracker, the scale-out test); and fio, the disk benchmark's baseline
# (tests/tools: keel-bench disk's fio rows). Without them those tests skip with a reason.
keel_install_missing redis-server redis-tools nutcracker fio ethtool

jobs=$(nproc)
status=0
# Each step's line says when it began (seconds since the start), and the summary lists how
# long each took: where CI's time goes, read from its log.
t_start=$SECONDS
t_step=
t_name=
t_lines=
step() {
	step_end
	t_name=$1
	t_step=$SECONDS
	echo "== $1 (at $((SECONDS - t_start)) s)"
}
step_end() {
	if [ -n "$t_name" ]; then
		t_lines+="  $((SECONDS - t_step)) s  ${t_name%% (*}"$'\n'
	fi
	t_name=
}

# Tests that skipped themselves inside a CTest entry (a Criterion test's cr_skip_test, said
# by tests/common/criterion_main.c; a script's "[SKIPPED]" line) are in the entry's output,
# which CTest shows only when the entry fails: collected from its log after each ctest run
# and listed in the summary with their reasons.
skipped=
collect_skips() { # build dir
	local log=$1/Testing/Temporary/LastTest.log
	[ -f "$log" ] || return 0
	# Each with the build and the CTest entry that ran it ("Test: NAME" heads an entry's
	# output): the install entry runs keel-embed's suite again, against the installed tree.
	skipped+=$(awk -v d="$1" '/^[0-9]+\/[0-9]+ Test: / { t = $3 } /^\[SKIPPED\]/ { print d "/" t ": " $0 }' "$log")
	[ -z "$skipped" ] || [ "${skipped: -1}" = $'\n' ] || skipped+=$'\n'
}

build() { # dir, cmake args... [-- targets...] (every target without a --)
	local dir=$1 args=() targets=()
	shift
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		args+=("$1")
		shift
	done
	if [ $# -gt 0 ]; then
		shift
		targets=(--target "$@")
	fi
	cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${args[@]}" >"$dir.configure.log" 2>&1 ||
		{ cat "$dir.configure.log"; return 1; }
	cmake --build "$dir" -j "$jobs" "${targets[@]}"
}

step "format check (clang-format, .clang-format)"
mapfile -t srcs < <(git ls-files '*.c' '*.h' 2>/dev/null || find core alloc net apps tools tests -name '*.[ch]')
if ! command -v clang-format >/dev/null; then
	echo "format check failed: clang-format is not on the PATH (Debian: apt-get install clang-format)"
	status=1
elif ! clang-format --dry-run --Werror "${srcs[@]}"; then
	echo "format check failed: run clang-format -i on the files above"
	status=1
fi

step "build and test (RelWithDebInfo)"
mkdir -p build
build build
# CTest runs its entries side by side, one more than the CPUs (most of them wait on
# sockets and timers, not the CPU: on 2 CPUs, without compare_quick, 123-128 s in five
# runs at 3, 122-127 s in three at 4, 155-162 s in two at 2); the benchmark runs and the
# fault tests whose bounds were measured on an idle machine are RUN_SERIAL
# (docs/testing.md).
(cd build && ctest --output-on-failure -j "$((jobs + 1))") || status=1
collect_skips build

step "valgrind memcheck: a short keel-echo and keel-kv run (tools/valgrind.sh, one shard)"
tools/valgrind.sh build || status=1

step "static analysis (cppcheck: warning, portability, performance; tools/cppcheck.sh)"
tools/cppcheck.sh build/include || status=1

if [ "${KEEL_TEST_QUICK:-0}" != 1 ]; then
	step "sanitizer build (ASan+UBSan, fault injection compiled in) and tests"
	mkdir -p build-asan
	# KEEL_FAULTS adds tests/faults (CTest entry faults); no fault is injected elsewhere
	# unless a test or KEEL_FAULTS in the environment asks (docs/testing.md).
	build build-asan -DKEEL_SANITIZE=ON -DKEEL_FAULTS=ON
	# Criterion's workers must exit normally for LeakSanitizer to run. compare_quick is left
	# to the normal build: it checks compare.sh's tables and plot, and the servers and client
	# it drives (keel-bench serve and its client) run under ASan in tools_bench (38 s saved).
	# So are the tests labelled script, which run no program this tree builds (the scripts'
	# own tests, with stubs: 95 s of entries in the sixty-fifth session's CI run).
	# Side by side, one per CPU: under ASan the suites use the CPUs more, so two at a time
	# gain less (307-347 s in six runs against 428-458 s one at a time in clean-clone runs,
	# which still held a 30 s net test since cut to under one), and three no more (326 and
	# 330 s in two runs on 2 CPUs).
	(cd build-asan && KEEL_TEST_SCALE=small CRITERION_NO_EARLY_EXIT=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j "$jobs" -E '^compare_quick$' -LE '^script$') || status=1
	collect_skips build-asan

	step "ThreadSanitizer build: cross-thread tests"
	mkdir -p build-tsan
	# Only what runs under TSan: the three drivers labelled tsan, and the two servers. A
	# new test labelled tsan needs its target here: ctest fails it as "Not Run" (no
	# executable) until then, it is not skipped.
	build build-tsan -DKEEL_TSAN=ON -- tsan_runtime tsan_msg tsan_forward keel-kv keel-embed
	(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
		ctest --output-on-failure -j 1 -L tsan) || status=1
	# The multi-threaded servers under their own suites: the runner from build/ (Criterion
	# cannot start under TSan), the server it starts from build-tsan/. A race stops the
	# server with TSan's status 66, which the suite's exit-status checks fail on.
	step "ThreadSanitizer: keel-kv and keel-embed (build-tsan) under their suites (build)"
	# keel-kv's suite two tests at a time (each starts its own servers on ports of their
	# own): 112-125 s in three runs against 173 s one at a time, on 2 CPUs.
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 KEEL_KV_BIN="$PWD/build-tsan/bin/keel-kv" \
		build/bin/test_kv -j2 --timeout 300 || status=1
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 KEEL_EMBED_BIN="$PWD/build-tsan/bin/keel-embed" \
		build/bin/test_embed -j1 --timeout 300 || status=1

	# Built, not tested: gcc at -O0 warns (as errors) of what -O2's range facts rule out,
	# and KEEL_FAULTS's own message sends people to Debug (three format-truncation errors in
	# a test once kept it from building).
	step "Debug build (-O0): compiles"
	mkdir -p build-debug
	build build-debug -DCMAKE_BUILD_TYPE=Debug || status=1

	step "fuzz harnesses (clang libFuzzer, ASan+UBSan): corpus replay, then fixed-seed runs"
	tools/fuzz.sh --runs "${KEEL_FUZZ_RUNS:-20000}" || status=1
fi

step_end
echo "== time per step ($((SECONDS - t_start)) s in all)"
printf '%s' "$t_lines"
if [ -n "$skipped" ]; then
	echo "== tests that skipped themselves: $(printf '%s' "$skipped" | grep -c .) (each with its reason)"
	printf '%s' "$skipped" | sort | sed 's/^/  /'
fi
summary=1
if [ $status -ne 0 ]; then
	echo "tools/test.sh: FAILED"
else
	echo "tools/test.sh: all passed"
fi
exit $status
