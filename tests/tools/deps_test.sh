#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/deps.sh (keel_install_missing) on a machine whose apt is busy, as on a freshly booted
# VM where unattended-upgrades holds apt's locks: it waits for the lock instead of failing,
# installs with dpkg's lock timeout, and still fails at once on any other error.
# apt-get, dpkg-query and sleep are stubs: nothing is installed, nothing is downloaded.
#   deps_test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
# dpkg-query: every package is missing.
printf '#!/bin/sh\nexit 1\n' >"$tmp/bin/dpkg-query"
# apt-get: "update" fails on the lock $LOCKED times (counted in $tmp/updates), or with another
# error when $OTHER is set; every call's arguments go to $tmp/calls.
cat >"$tmp/bin/apt-get" <<STUB
#!/usr/bin/env bash
echo "\$*" >>"$tmp/calls"
if [ "\$1" = update ]; then
	n=\$(cat "$tmp/updates" 2>/dev/null || echo 0)
	echo \$((n + 1)) >"$tmp/updates"
	if [ -n "\${OTHER:-}" ]; then
		echo "E: The repository 'http://example.invalid bookworm Release' does not have a Release file." >&2
		exit 100
	fi
	if [ "\$n" -lt "\$LOCKED" ] && [ "\${LC_ALL:-}" != C ]; then # apt in the user's language
		echo "E: Sperre /var/lib/apt/lists/lock konnte nicht erlangt werden." >&2
		exit 100
	fi
	if [ "\$n" -lt "\$LOCKED" ]; then
		echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (unattended-upgr)" >&2
		echo "E: Unable to lock directory /var/lib/apt/lists/" >&2
		exit 100
	fi
fi
exit 0
STUB
chmod +x "$tmp/bin/apt-get" "$tmp/bin/dpkg-query"
fail() { echo "deps_test: $*" >&2; exit 1; }

# run LOCKED [OTHER]: keel_install_missing as root (no sudo), sleep made instant; prints its
# output, returns its status.
run() {
	rm -f "$tmp/calls" "$tmp/updates"
	(
		export PATH="$tmp/bin:$PATH" LOCKED=$1 OTHER=${2:-}
		unset LC_ALL # apt in the user's language: the stub answers in German
		sleep() { :; }
		id() { echo 0; }
		. "$root/tools/deps.sh"
		keel_install_missing
	) 2>&1
}

# A user's PATH without sbin (Debian's ENV_PATH): deps.sh adds it, where nutcracker and
# ethtool are.
p=$(PATH=/usr/local/bin:/usr/bin:/bin && . "$root/tools/deps.sh" && echo "$PATH")
[[ :$p: == *:/usr/sbin:* ]] || fail "PATH without /usr/sbin after deps.sh: $p"

# Locked 3 times (apt asked in German: the lock is recognised in English only): waits, then updates and installs with dpkg's lock timeout.
out=$(run 3) || fail "a busy apt was not waited for:"$'\n'"$out"
[ "$(cat "$tmp/updates")" = 4 ] || fail "expected 4 updates (3 locked), got $(cat "$tmp/updates")"
grep -q "waiting" <<<"$out" || fail "the wait was not said:"$'\n'"$out"
grep -q '^install .*DPkg::Lock::Timeout=' "$tmp/calls" ||
	fail "install without dpkg's lock timeout:"$'\n'"$(cat "$tmp/calls")"

# Not locked: one update, no wait said.
out=$(run 0) || fail "a free apt failed:"$'\n'"$out"
[ "$(cat "$tmp/updates")" = 1 ] || fail "expected 1 update, got $(cat "$tmp/updates")"
! grep -q "waiting" <<<"$out" || fail "a wait said with apt free:"$'\n'"$out"

# Another error: fails at once, with apt's message, and installs nothing.
if out=$(run 0 other); then
	fail "an update that failed for another reason passed:"$'\n'"$out"
fi
[ "$(cat "$tmp/updates")" = 1 ] || fail "another error was retried ($(cat "$tmp/updates") updates)"
grep -q "Release file" <<<"$out" || fail "apt's error not shown:"$'\n'"$out"
! grep -q '^install' "$tmp/calls" || fail "installed after a failed update"

# Locked for longer than the wait: fails, naming the lock.
if out=$(run 1000); then
	fail "a lock held for ever was waited for for ever"
fi
grep -q "Could not get lock" <<<"$out" || fail "the lock not named:"$'\n'"$out"
echo "deps_test: ok"
