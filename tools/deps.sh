#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sourced by tools/test.sh and tools/demo.sh: install the Debian packages keel needs, only
# those that are missing, and only with apt-get (no downloads at build time).
keel_deps=(gcc make cmake pkg-config liburing-dev libhwloc-dev libjemalloc-dev libcriterion-dev
	clang-format cppcheck valgrind python3 iproute2 hwloc-nox gnuplot-nox iperf3)

keel_install_missing() {
	local missing=() p
	for p in "${keel_deps[@]}" "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing missing packages: ${missing[*]}"
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || {
			echo "missing packages (${missing[*]}), and not root with no sudo: run as root," \
				"or install them first" >&2
			return 1
		}
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update -qq
	# Through env: sudo's env_reset would drop a DEBIAN_FRONTEND set before it, and
	# iperf3's configuration then asks whether to start a daemon.
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}"
}
