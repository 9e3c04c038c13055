#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build the libFuzzer harnesses (clang, ASan+UBSan) and run each for SECONDS.
#   tools/fuzz.sh [SECONDS]     default 60; 0: only replay the corpora (regression run)
#   tools/fuzz.sh --runs N      N inputs each from a fixed seed, starting from the kept corpus
#                               alone (the work corpus is emptied first): the same inputs on
#                               every run of the same build (what tools/test.sh uses, so CI
#                               cannot fail by chance)
# First every input kept in tests/fuzz/corpus/NAME is replayed (a crash found once stays a
# test); then each harness fuzzes for SECONDS, starting from that corpus. New inputs go to
# build-fuzz/corpus/NAME, not into the repository: copy an interesting one (and every crash
# input, once fixed) into tests/fuzz/corpus/NAME by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
keel_install_missing clang
# libFuzzer and the sanitizers' runtimes: on Debian 12 only in libclang-rt-N-dev, which
# clang merely recommends (so --no-install-recommends leaves it out and the link fails).
fuzzer_rt=libclang_rt.fuzzer-$(uname -m).a
if [ ! -e "$(clang -print-file-name="$fuzzer_rt")" ]; then
	clang_major=$(clang -dumpversion) && clang_major=${clang_major%%.*}
	keel_install_missing "libclang-rt-$clang_major-dev" || true
	[ -e "$(clang -print-file-name="$fuzzer_rt")" ] || {
		echo "tools/fuzz.sh: clang has no libFuzzer runtime ($fuzzer_rt): install" \
			"libclang-rt-$clang_major-dev (Debian) or your distribution's compiler-rt" >&2
		exit 1
	}
fi

secs=${1:-60}
limit=(-max_total_time="$secs")
if [ "$secs" = --runs ]; then
	runs=${2:?--runs needs a count}
	secs=$runs
	limit=(-runs="$runs" -seed=1)
fi
dir=build-fuzz
harnesses=(frame mapfile opts resp aof zcrx)

mkdir -p "$dir"
CC=clang cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEL_FUZZ=ON -DKEEL_TESTS=OFF \
	>"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
targets=()
for h in "${harnesses[@]}"; do targets+=(--target "fuzz_$h"); done
cmake --build "$dir" -j "$(nproc)" "${targets[@]}"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
status=0
for h in "${harnesses[@]}"; do
	bin=$dir/bin/fuzz_$h corpus=tests/fuzz/corpus/$h work=$dir/corpus/$h
	# --runs starts from the kept corpus alone, as its fixed seed promises: the inputs an
	# earlier local run added to $work made a second run fuzz other inputs.
	[ -z "${runs:-}" ] || rm -rf "$work"
	mkdir -p "$work"
	echo "== fuzz_$h: replay $(find "$corpus" -type f | wc -l) corpus inputs"
	if ! find "$corpus" -type f -print0 | xargs -0 -r "$bin" >"$dir/$h.replay.log" 2>&1; then
		tail -40 "$dir/$h.replay.log"
		echo "fuzz_$h: a corpus input fails (log: $dir/$h.replay.log)"
		status=1
		continue
	fi
	[ "$secs" -gt 0 ] || continue
	echo "== fuzz_$h: ${limit[*]}"
	if ! (cd "$dir" && "bin/fuzz_$h" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 "corpus/$h" "../$corpus") >"$dir/$h.log" 2>&1; then
		tail -60 "$dir/$h.log"
		echo "fuzz_$h: crash or failure; the input is in $dir (crash-*): fix it, then add it to $corpus"
		status=1
		continue
	fi
	grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$dir/$h.log" | tr '\n' ' '
	echo
done
[ $status -eq 0 ] && echo "tools/fuzz.sh: no failure" || echo "tools/fuzz.sh: FAILED"
exit $status
