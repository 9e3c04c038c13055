# shellcheck shell=bash
# SPDX-License-Identifier: MIT

# Sourced by the scripts that put keel's server beside the epoll server (compare.sh,
# demo.sh): the epoll server's sleeps gather as keel's do, or not at all.
#
# epoll_gather_parity KEEL_BENCH PROG: sets egather (us; from $egather when set, else
# KEEL_WAIT_COALESCE_US, else keel's default 10) and efixed (--gather-fixed when
# KEEL_WAIT_COALESCE_FIXED asks for it, as keel's runtime reads it). Where keel's sleeps
# cannot gather (Linux before 6.12: no IORING_FEAT_MIN_TIMEOUT), both are cleared, since a
# sleep policy one server has and the other not would favour it. Returns 1, saying why, when
# keel's answer cannot be read; PROG names the caller in messages.
# keel_banner OUTPUT: the line of `keel-bench serve`'s output that is its banner, or the
# first line where none is (the message then names what came instead).
keel_banner() {
	local l
	while IFS= read -r l; do
		[[ $l == "keel-bench serve: "* ]] && { printf '%s' "$l"; return 0; }
	done <<<"$1"
	printf '%s' "${1%%$'\n'*}"
}
epoll_gather_parity() {
	local kb=$1 prog=$2 ban why
	[ -n "${egather:-}" ] || egather=${KEEL_WAIT_COALESCE_US:-10}
	if ! [[ $egather =~ ^[0-9]+$ ]]; then
		echo "$prog: the epoll server's gathering window '$egather' is not a number of us" >&2
		return 1
	fi
	efixed=()
	if [ "$egather" != 0 ] && [ -n "${KEEL_WAIT_COALESCE_FIXED:-}" ] &&
		! [[ ${KEEL_WAIT_COALESCE_FIXED,,} =~ ^(0|false|no|off)$ ]]; then
		efixed=(--gather-fixed)
	fi
	[ "$egather" != 0 ] || return 0
	ban=$("$kb" serve --backend keel --seconds 0.1 --no-pin 2>&1) || true
	# The banner, past what keel logs ahead of it on stderr (warnings of the machine's)
	ban=$(keel_banner "$ban")
	if [[ $ban != *"sleeps gather"* && $ban != *"sleeps do not gather"* ]]; then
		echo "$prog: could not read whether keel's sleeps gather here from '$kb serve': $ban" >&2
		return 1
	fi
	if [[ $ban == *"sleeps do not gather"* ]]; then
		why=${ban##*min_wait: }
		echo "$prog: keel's sleeps do not gather here (${why%)}); the epoll server's will not either" >&2
		egather=0
		efixed=()
	fi
	return 0
}
