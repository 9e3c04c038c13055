#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sourced by tools/test.sh and tools/demo.sh: install the Debian packages keel needs, only
# those that are missing, and only with apt-get (no downloads at build time).
keel_deps=(gcc g++ make cmake pkg-config liburing-dev libhwloc-dev libjemalloc-dev libcriterion-dev
	clang-format cppcheck valgrind python3 iproute2 hwloc-nox gnuplot-nox iperf3)
# Programs the tests run that Debian puts in sbin (nutcracker, ethtool), which a user's PATH
# (login.defs' ENV_PATH, and sudo's from such a shell) leaves out: found, not skipped.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac
export PATH

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
	keel_apt_update "${sudo[@]}" || return 1
	# Through env: sudo's env_reset would drop a DEBIAN_FRONTEND set before it, and
	# iperf3's configuration then asks whether to start a daemon. The lock timeout: dpkg
	# busy with another install (unattended-upgrades on a VM just booted) is waited for.
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		-o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}"
}

# apt-get update (run with the arguments before it: sudo or nothing). apt-get does not wait
# for the lists lock (DPkg::Lock::Timeout covers dpkg's only), which unattended-upgrades
# holds for minutes on a VM just booted: retried every 10 s for up to 10 minutes while apt
# says the lock is held. Any other failure ends it at once, with apt's message.
keel_apt_update() {
	local i out
	for ((i = 0; i < 60; i++)); do
		# LC_ALL=C: the lock message below is matched in English.
		if out=$("$@" env LC_ALL=C apt-get update -qq 2>&1); then
			[ -z "$out" ] || echo "$out"
			return 0
		fi
		if [[ $out != *"Could not get lock"* ]]; then
			echo "$out" >&2
			echo "apt-get update failed: the packages above were not installed" >&2
			return 1
		fi
		[ "$i" -gt 0 ] || echo "apt is busy (another apt-get, or unattended-upgrades, holds its" \
			"lock): waiting up to 10 minutes" >&2
		sleep 10
	done
	echo "$out" >&2
	echo "apt-get update: apt's lock was held for 10 minutes; run again once it is free" >&2
	return 1
}
