# shellcheck shell=bash
# SPDX-License-Identifier: MIT
# Sourced by the bench scripts that start `keel-bench serve` (compare.sh, profsplit.sh).
# serve_port LOG PID: prints the port that the server's first line in LOG names, waiting up
# to 10 s for it; status 1 when the server (PID) ended first or the time ran out.
serve_port() {
	local p
	for _ in $(seq 200); do
		p=$(sed -n 's/^keel-bench serve: .* on [0-9.]*:\([0-9]*\) .*/\1/p' "$1" 2>/dev/null)
		if [ -n "$p" ]; then
			echo "$p"
			return 0
		fi
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
