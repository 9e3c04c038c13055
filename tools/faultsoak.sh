#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fault soak: for MINUTES, run after run, one server under a random KEEL_FAULTS spec and a
# random client load, then stop it and check how it ended; every failed run keeps a
# reproducer. Not in CI (long, random); docs/reliability.md ("Fault soak") has the figures,
# testing.md the spec. Needs a KEEL_FAULTS build (tools/test.sh configures build-asan so).
#   tools/faultsoak.sh MINUTES [BUILD_DIR]     (default build-asan)
#   FAULTSOAK_SEED=N: the campaign's own seed (default: the time), printed at the start: the
#     same seed draws the same servers, specs and loads again (timing still differs)
#   FAULTSOAK_DIR=DIR: where runs and failures go (default a new /tmp/keel-faultsoak.XXXXXX)
#   FAULTSOAK_SERVERS="KIND ...": draw only among these kinds (default all of them)
#   FAULTSOAK_KEEP=1: keep every run's directory, not only the failed ones'
# A run:
#   - a server, 2 shards, --idle-poll-us 0, on 127.0.0.1 (TCP port 0, read from its log;
#     UDP a free port, since each shard binds it): echo (keel-echo), udp (keel-echo --udp),
#     forward (keel-echo --forward), kv (keel-kv), kv-always and kv-everysec (keel-kv
#     --appendonly yes --appendfsync always|everysec in a new directory); with 0..2 of: a
#     small receive ring (--buf-count 16), SEND_ZC (--zc-threshold 1k), --max-files 64, a
#     16-entry ring and CQ, --mailbox-entries 16, a --feature turned off (multishot_recv,
#     recv_bundle, multishot_accept, pbuf_inc, direct_fd), --idle-timeout-ms 300, a 256k
#     --send-max, keel-kv's --handoff export;
#   - KEEL_FAULTS: 1..3 rules of the classes the server uses, each with a random action, a
#     probability and, mostly, n= (always n= for an error of p >= 0.2) and sometimes
#     after=, and a random seed; for keel-kv sometimes a KEEL_KV_TEST_FAULTS site (n= always);
#   - ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99 (clients: leaks off);
#   - 3..7 s of 1..2 loads at once: keel-bench throughput/pingpong/stream/connections (TCP),
#     udp (UDP), throughput/pingpong/connections (--forward: framed); redis-benchmark, chaos.py
#     (tools/soak/chaos.py, the other port 0) and kvmisc (redis-cli: BGREWRITEAOF, FLUSHALL,
#     WATCH/MULTI/EXEC, MSET/MGET/DEL/INCR/EXPIRE) on keel-kv.
# Checks, each a failure of its own kind (client errors alone are not: faults close
# connections):
#   NOSTART  the server exited before listening with a sanitizer report, or under rules
#            that cannot touch the start (recv, send, accept and keel-kv's run-time sites);
#            any other refused start is counted as "start refused" and kept only with
#            FAULTSOAK_KEEP=1;
#   CORRUPT  a client got a wrong byte: keel-bench's pattern check, a chaos.py echo
#            mismatch, or a keel-kv mismatch under rules that cannot make an error reply
#            (recv, send, accept, msgring only, no kvmisc);
#   FDLEAK   2..6 s after the load, the server holds more than 2 descriptors over its count
#            before the load, or a TCP socket on its port other than LISTEN/TIME-WAIT (one
#            left in CLOSE-WAIT: a connection it never closed; its accepted sockets are
#            direct descriptors, not in /proc/PID/fd);
#   NOANSWER every rule is n=-limited (or short), yet a clean request (an echo, a framed
#            echo, a datagram, PING and SET/GET on keel-kv) got no right answer in 8+ tries
#            (one per rule's n too, 30 s at most); unlimited specs are tried, not judged.
#            keel-kv answering PING but refusing writes (-MISCONF) under a rule that can
#            cost it its append-only file (write, fsync, read, alloc, its own sites) is
#            "writes-refused", not a failure: the file is rebuilt from memory, a failed
#            rebuild tried again 1, 2, 4 .. 64 s later (apps/kv/aof.c, rebuild);
#   HANG     not gone 10 s after SIGTERM: gdb's backtrace of every thread is saved, then
#            SIGABRT, then SIGKILL;
#   EXIT     exit status not 0, or a sanitizer/UBSan report or "keel_verify" in its log;
#            except keel-kv's status 1 under such a rule with "appendonly-N.aof at stop"
#            lines: a file lost and not yet rebuilt is reported at the stop by design
#            ("stop-unsynced");
#   RELOAD   (kv-always, kv-everysec, after an exit 0 or a stop-unsynced) the append-only
#            files do not replay in a clean restart, a key the faulted server acknowledged
#            (the probe's SET; not after a stop-unsynced) is not there, a second clean
#            restart sees another DBSIZE, or (no such rule, no kvmisc) the first sees
#            another DBSIZE than the faulted server said before its stop.
# A failure's directory (printed) holds repro.sh (the server's environment and command
# line: spec and seed), clients.sh (the client commands in the order they started),
# server.log, each client's output, what the checks saw (checks.txt), and for a HANG
# gdb-bt.txt. runs.txt has one line per run; the summary counts runs by server and result.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: tools/faultsoak.sh MINUTES [BUILD_DIR]}
build=${2:-build-asan}
for b in keel-kv keel-echo keel-bench; do
	[ -x "$build/bin/$b" ] || { echo "faultsoak: $build/bin/$b missing: build first"; exit 1; }
done
command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null ||
	{ echo "faultsoak: redis-benchmark or redis-cli missing (apt-get install redis-tools)"; exit 1; }
# A build without KEEL_FAULTS ignores the variable: no run would inject anything.
if ! grep -q "^KEEL_FAULTS:BOOL=ON" "$build/CMakeCache.txt" 2>/dev/null; then
	echo "faultsoak: $build is not a KEEL_FAULTS build (configure it with -DKEEL_FAULTS=ON)"
	exit 1
fi
out=${FAULTSOAK_DIR:-$(mktemp -d /tmp/keel-faultsoak.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
seed=${FAULTSOAK_SEED:-$(date +%s)}
[[ $seed =~ ^[0-9]+$ ]] || { echo "faultsoak: FAULTSOAK_SEED must be a number"; exit 1; }
RANDOM=$seed
read -r -a kinds <<<"${FAULTSOAK_SERVERS:-echo udp forward kv kv-always kv-everysec}"
for k in "${kinds[@]}"; do
	case $k in
	echo | udp | forward | kv | kv-always | kv-everysec) ;;
	*) echo "faultsoak: unknown server kind '$k' (echo udp forward kv kv-always kv-everysec)"; exit 1 ;;
	esac
done
help=$("$build/bin/keel-echo" --help 2>&1)
if ! grep -q -- --forward <<<"$help"; then
	read -r -a kinds <<<"${kinds[*]/forward/}"
fi
server_asan=detect_leaks=1:abort_on_error=0:exitcode=99
client_asan=detect_leaks=0:abort_on_error=0
gdb_ok=$(command -v gdb >/dev/null && echo 1)
srvpid= cpids=()
cleanup() {
	for p in $srvpid "${cpids[@]}"; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Draws go to REPLY, never through $(...): a subshell reseeds RANDOM, and the campaign's
# seed would no longer replay them.
pick() { REPLY=${*:RANDOM % $# + 1:1}; }

# One rule of CLASS, in REPLY; an error of p >= 0.2 always gets n=.
rule() {
	local c=$1 act p r
	case $c in
	recv) pick short short ECONNRESET ENOBUFS ENOBUFS EAGAIN EIO ENOMEM EINTR ECANCELED ETIMEDOUT ;;
	send) pick short short EPIPE ECONNRESET EAGAIN EIO ENOMEM EINTR ECANCELED ;;
	accept) pick EAGAIN EMFILE ENFILE ECONNABORTED ENOMEM EINTR ECANCELED ;;
	msgring) pick EAGAIN ENOMEM EOVERFLOW ;;
	alloc) pick ENOMEM ;;
	write) pick short short EIO ENOSPC EINTR EAGAIN ;;
	fsync) pick EIO ENOSPC EINTR ;;
	read) pick short EIO EINTR ;;
	esac
	act=$REPLY
	# Allocations are many; accepts, multishot receives and syncs are few (a multishot
	# receive is one operation per connection, or per UDP socket).
	case $c in
	alloc) pick 0.001 0.002 0.005 0.01 0.02 0.05 ;;
	accept | fsync | read) pick 0.05 0.1 0.2 0.5 1 ;;
	*) pick 0.001 0.005 0.01 0.02 0.05 0.1 0.2 0.5 1 ;;
	esac
	p=$REPLY
	r="$c:$act:p=$p"
	# An error on every operation, unlimited, would only measure a dead server.
	if [ "$act" != short ] && { [ $((RANDOM % 10)) -lt 6 ] || [[ $p =~ ^(0\.[25]|1)$ ]]; }; then
		r+=":n=$((1 + RANDOM % 20))"
	fi
	if [ $((RANDOM % 4)) -eq 0 ]; then
		pick 10 50 200 1000
		r+=":after=$REPLY"
	fi
	REPLY=$r
}

# The classes of operations each kind of server makes.
classes_of() {
	case $1 in
	echo | forward | kv) echo recv send accept alloc msgring ;;
	udp) echo recv send alloc ;;
	kv-always | kv-everysec) echo recv send accept alloc msgring write fsync read ;;
	esac
}

# The server's command (srv[]), environment (env[]), the spec; port and dir for the run.
make_server() { # KIND RUNDIR
	local kind=$1 dir=$2 cls rules=() nrules i c r site
	judged=1 limits=0
	srv=() env=("ASAN_OPTIONS=$server_asan")
	case $kind in
	echo) srv=("$build/bin/keel-echo" --port 0) ;;
	forward) srv=("$build/bin/keel-echo" --forward --port 0) ;;
	udp)
		port=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
		srv=("$build/bin/keel-echo" --udp --port "$port" --stats)
		;;
	kv*)
		srv=("$build/bin/keel-kv" --port 0 --dir "$dir/data")
		mkdir -p "$dir/data"
		[ "$kind" = kv-always ] && srv+=(--appendonly yes --appendfsync always)
		[ "$kind" = kv-everysec ] && srv+=(--appendonly yes --appendfsync everysec)
		;;
	esac
	srv+=(--addr 127.0.0.1 --shards 2 --idle-poll-us 0)
	# 0..2 options that take other paths: a small receive ring (ENOBUFS for real), SEND_ZC,
	# a small descriptor table, a tiny CQ (overflow), small cross-shard queues (overflow
	# nodes), one-shot receives and accepts (a short receive applies to them), plain
	# descriptors (then /proc/PID/fd counts the connections), timeouts and send caps
	# (aborts), keel-kv's exported hand-offs.
	local extra=(buf16 mailbox cq16 feat)
	[ "$kind" != udp ] && extra+=(zc maxfiles idle sendmax)
	[[ $kind == kv* ]] && extra+=(export)
	for ((i = RANDOM % 3; i > 0; i--)); do
		case ${extra[RANDOM % ${#extra[@]}]} in
		buf16) srv+=(--buf-count 16) ;;
		mailbox) srv+=(--mailbox-entries 16) ;;
		cq16) srv+=(--ring-entries 16 --cq-entries 16) ;;
		feat)
			pick multishot_recv=off recv_bundle=off multishot_accept=off pbuf_inc=off direct_fd=off
			srv+=(--feature "$REPLY")
			;;
		zc) srv+=(--zc-threshold 1k) ;;
		maxfiles) srv+=(--max-files 64) ;;
		idle) srv+=(--idle-timeout-ms 300) ;;
		sendmax) srv+=(--send-max 256k --high-watermark 64k --low-watermark 16k) ;;
		export) srv+=(--handoff export) ;;
		esac
	done
	read -r -a cls <<<"$(classes_of "$kind")"
	nrules=$((1 + RANDOM % 3))
	for ((i = 0; i < nrules; i++)); do
		c=${cls[RANDOM % ${#cls[@]}]}
		rule "$c"
		r=$REPLY
		rules+=("$r")
		if [[ $r =~ :n=([0-9]+) ]]; then
			limits=$((limits + BASH_REMATCH[1]))
		elif [[ $r != *:short:* ]]; then
			judged=
		fi
	done
	fseed=$((RANDOM * 32768 + RANDOM)) # drawn here, not in the $(...) below (reseeded)
	spec=$(IFS=,; echo "${rules[*]},seed=$fseed")
	# Rules that can cost keel-kv its append-only file (a rebuild, writes refused until it
	# is done, 1..64 s apart): a failed write, sync or read, no memory, or its own sites.
	disk=
	[[ $kind == kv-* && $spec =~ (write:[A-Z]|fsync:|read:[A-Z]|alloc:) ]] && disk=1
	env+=("KEEL_FAULTS=$spec")
	kvspec=
	if [[ $kind == kv* ]] && [ $((RANDOM % 3)) -eq 0 ]; then
		if [ "$kind" = kv ]; then
			pick store-oom reply-oom watch-keys-oom watch-entry-oom
		elif [ "$kind" = kv-always ]; then
			pick record-oom waiter-oom store-oom reply-oom ftruncate rewrite-rename rewrite-dirsync watch-keys-oom
		else
			pick record-oom store-oom reply-oom ftruncate rewrite-rename rewrite-dirsync watch-entry-oom
		fi
		site=$REPLY
		r=$((1 + RANDOM % 5))
		kvspec="$site:n=$r"
		[ "$kind" != kv ] && disk=1
		limits=$((limits + r))
		if [ $((RANDOM % 2)) -eq 0 ]; then
			pick 1 10 100 1000
			kvspec+=":after=$REPLY"
		fi
		env+=("KEEL_KV_TEST_FAULTS=$kvspec")
	fi
}

# Rules that may make a refused start: everything but recv, send, accept and keel-kv's
# run-time sites (keel-kv's start reads and writes its files; allocation is everywhere).
start_may_fail() { [[ $spec =~ (alloc|msgring|read|write|fsync): ]]; }

# The load: 1..2 clients at once for SECS; appends their commands to clients.sh.
clients_for() {
	case $1 in
	echo) echo bench-tcp bench-tcp chaos ;;
	forward) echo bench-fwd ;;
	udp) echo bench-udp ;;
	kv*) echo redis chaos kvmisc ;;
	esac
}
kvmisc_script='
p=$1 end=$2 i=0
while [ "$(date +%s)" -lt "$end" ]; do
	i=$((i + 1))
	case $((RANDOM % 7)) in
	0) timeout 5 redis-cli -p "$p" BGREWRITEAOF ;;
	1) timeout 5 redis-cli -p "$p" FLUSHALL ;;
	2) printf "WATCH w%s x%s\nMULTI\nSET w%s 1\nINCR x%s\nEXEC\n" $i $i $i $i | timeout 5 redis-cli -p "$p" ;;
	3) printf "WATCH w%s\nUNWATCH\nWATCH y%s z%s\nMULTI\nDISCARD\n" $i $i $i | timeout 5 redis-cli -p "$p" ;;
	4) timeout 5 redis-cli -p "$p" MSET a$i 1 b$i 2 c$i 3 d$i 4 ;;
	5) timeout 5 redis-cli -p "$p" MGET a$i b$i c$((i - 1)) d$((i - 1)) ;;
	6) timeout 5 redis-cli -p "$p" EXPIRE a$((i - 1)) 1; timeout 5 redis-cli -p "$p" DEL b$((i - 1)) c$i ;;
	esac
	sleep 0.0$((RANDOM % 10))
done'
# The commands name the port @PORT@ and the load's end time (date +%s) @END@: the run
# puts the values in, clients.sh the variables.
client_cmd() { # NAME SECS -> ccmd[]
	local name=$1 secs=$2 p=@PORT@ end=@END@
	local bench=(env "ASAN_OPTIONS=$client_asan" timeout $((secs + 30)) "$build/bin/keel-bench")
	local common=(--port "$p" --seconds "$secs" --warmup 0 --no-pin)
	case $name in
	bench-tcp)
		case $((RANDOM % 4)) in
		0) ccmd=("${bench[@]}" throughput --conns $((1 + RANDOM % 16)) --size $((1 + RANDOM % 16384)) --inflight $((1 + RANDOM % 64))) ;;
		1) ccmd=("${bench[@]}" pingpong --conns $((1 + RANDOM % 8)) --size $((1 + RANDOM % 4096))) ;;
		2) ccmd=("${bench[@]}" stream --conns $((1 + RANDOM % 8)) --size $((1 + RANDOM % 65536))) ;;
		3) ccmd=("${bench[@]}" connections --conns $((1 + RANDOM % 8)) --idle $((RANDOM % 100)) --churn $((1 + RANDOM % 50))) ;;
		esac
		ccmd+=("${common[@]}" --shards 1 --client keel --idle-poll-us 0)
		;;
	bench-fwd)
		case $((RANDOM % 3)) in
		0) ccmd=("${bench[@]}" throughput --conns $((1 + RANDOM % 8)) --size $((1 + RANDOM % 4096)) --inflight $((1 + RANDOM % 16))) ;;
		1) ccmd=("${bench[@]}" pingpong --conns $((1 + RANDOM % 8)) --size $((1 + RANDOM % 4096))) ;;
		2) ccmd=("${bench[@]}" connections --conns $((1 + RANDOM % 8)) --idle $((RANDOM % 50)) --churn $((1 + RANDOM % 50)) --size $((1 + RANDOM % 512))) ;;
		esac
		ccmd+=("${common[@]}" --shards 1 --client keel --idle-poll-us 0)
		;;
	bench-udp)
		ccmd=("${bench[@]}" udp --conns $((1 + RANDOM % 4)) --size $((16 + RANDOM % 1457)) --inflight $((1 + RANDOM % 64)) "${common[@]}")
		;;
	redis)
		pick set,get set,get,incr,mset,ping incr get,mset ping mset
		ccmd=(timeout "$secs" redis-benchmark -p "$p" -t "$REPLY" -n 10000000 -c $((1 + RANDOM % 50)) -P $((1 + RANDOM % 32)) -r $((1000 + RANDOM * 3)) -q)
		;;
	chaos)
		if [ "$kind" = echo ]; then
			ccmd=(python3 tools/soak/chaos.py "$p" 0 "$end" $RANDOM)
		else
			ccmd=(python3 tools/soak/chaos.py 0 "$p" "$end" $RANDOM)
		fi
		;;
	kvmisc) ccmd=(bash -c "$kvmisc_script" kvmisc "$p" "$end") ;;
	esac
}

# A clean request after the faulted load: KIND PORT TRIES KEYFILE -> status 0 when one was
# answered right, 2 when keel-kv answered PING but refused the writes (-MISCONF), else 1;
# prints what it saw. kv: PING, SET and GET of 4 keys (spread over the shards), whose
# acknowledged values go to KEYFILE for the RELOAD check.
probe() {
	timeout 40 python3 - "$@" <<'EOF'
import socket, struct, sys, time
kind, port, tries, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t_end = time.time() + 30
refused = False
def rd(s, k):
    got = b""
    while len(got) < k:
        d = s.recv(k - len(got))
        if not d:
            raise ConnectionError("EOF after %r" % got)
        got += d
    return got
for t in range(tries):
    if time.time() > t_end:
        break
    try:
        if kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            m = b"faultsoak-probe-%d" % t
            s.sendto(m, ("127.0.0.1", port))
            d, _ = s.recvfrom(2048)
            ok, why = d == m, d
        else:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.settimeout(2)
            if kind == "echo":
                m = b"faultsoak-probe-%d\n" % t
                s.sendall(m)
                d = rd(s, len(m))
                ok, why = d == m, d
            elif kind == "forward":
                m = b"faultsoak-probe-%d" % t
                f = struct.pack(">I", len(m)) + m
                s.sendall(f)
                d = rd(s, len(f))
                ok, why = d == f, d
            else:
                # PING, then SET/GET pairs; a write refused with -MISCONF (the append-only
                # file is being rebuilt) is an answer of a live server, said by status 2.
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                d = rd(s, 7)
                if d != b"+PONG\r\n":
                    raise ConnectionError("PING: %r" % d)
                req, want, kv = b"", b"", []
                for j in "abcd":
                    k, v = b"faultsoak:%s:%d" % (j.encode(), t), b"v%d%s" % (t, j.encode())
                    req += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)
                    req += b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k)
                    want += b"+OK\r\n$%d\r\n%s\r\n" % (len(v), v)
                    kv.append((k, v))
                s.sendall(req)
                s.settimeout(0.5)
                d = b""
                try:
                    while len(d) < len(want) and not (d.startswith(b"-MISCONF") and d.endswith(b"\r\n")):
                        c = s.recv(65536)
                        if not c:
                            break
                        d += c
                except socket.timeout:
                    pass
                ok, why = d == want, d
                if not ok and d.startswith(b"-MISCONF"):
                    refused = True
                if ok:
                    with open(keys, "w") as f:
                        for k, v in kv:
                            f.write("%s %s\n" % (k.decode(), v.decode()))
        s.close()
        if ok:
            print("probe: answered on try %d" % (t + 1))
            sys.exit(0)
        print("probe: try %d: wrong answer %r" % (t + 1, why[:200]))
    except (OSError, ConnectionError) as e:
        print("probe: try %d: %s" % (t + 1, e))
    time.sleep(0.2)
sys.exit(2 if refused else 1)
EOF
}

nfds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# TCP sockets on PORT in a state other than LISTEN and TIME-WAIT.
stray() { ss -Htan "( sport = :$1 )" 2>/dev/null | awk '$1 != "LISTEN" && $1 != "TIME-WAIT"' | wc -l; }

wait_listening() { # LOG PID -> sets port (TCP) or returns 1 when it exited or took 30 s
	local log=$1 pid=$2 p
	for _ in $(seq 300); do
		if grep -q "keel-echo: UDP on .* port [1-9]" "$log"; then
			return 0
		fi
		p=$(sed -n 's/.*listening on .* port \([1-9][0-9]*\).*/\1/p' "$log" | head -1)
		[ -n "$p" ] && { port=$p; return 0; }
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# Stop PID with SIGTERM: status in $st, 124 after a HANG (backtrace in DIR/gdb-bt.txt).
stop() { # PID DIR
	local pid=$1 dir=$2
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		# A zombie has exited: wait collects it.
		[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
		if [ -n "$gdb_ok" ]; then
			timeout 60 gdb -p "$pid" -batch -ex "thread apply all bt" >"$dir/gdb-bt.txt" 2>&1
		fi
		kill -ABRT "$pid" 2>/dev/null
		sleep 3
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		st=124
		return
	fi
	wait "$pid"
	st=$?
}

sanitizer_report() { grep -qE "AddressSanitizer|LeakSanitizer|runtime error:|keel_verify|Assertion .* failed|stack-overflow" "$1"; }

# A clean restart of keel-kv on DIR's data: prints "DBSIZE"; status 1 when it does not
# start, stop with 0 or answer.
kv_clean() { # DIR TAG
	local dir=$1 tag=$2 pid s k v got
	env "ASAN_OPTIONS=$server_asan" "${srv[@]}" >"$dir/$tag.log" 2>&1 &
	pid=$!
	srvpid=$pid
	if ! wait_listening "$dir/$tag.log" $pid; then
		stop $pid "$dir"
		srvpid=
		echo "$tag: did not start (status $st)"
		return 1
	fi
	s=$(timeout 10 redis-cli -p "$port" DBSIZE 2>&1 | tr -d '\r')
	echo "$tag: DBSIZE $s"
	dbsize=$s
	if [ -s "$dir/probe-keys.txt" ]; then
		while read -r k v; do
			got=$(timeout 10 redis-cli -p "$port" GET "$k" 2>&1 | tr -d '\r')
			[ "$got" = "$v" ] || { echo "$tag: $k is '$got', $v was acknowledged"; lost=1; }
		done <"$dir/probe-keys.txt"
	fi
	stop $pid "$dir"
	srvpid=
	[ $st -eq 0 ] || { echo "$tag: exited $st"; return 1; }
	sanitizer_report "$dir/$tag.log" && { echo "$tag: sanitizer report"; return 1; }
	return 0
}

secs_total=$((minutes * 60))
t0=$(date +%s)
end=$((t0 + secs_total))
echo "faultsoak: $minutes min on $build, seed $seed (FAULTSOAK_SEED=$seed replays the draws), servers: ${kinds[*]}; runs in $out"
: >"$out/runs.txt"
nrun=0 nfail=0
declare -A count
while [ "$(date +%s)" -lt "$end" ]; do
	nrun=$((nrun + 1))
	kind=${kinds[RANDOM % ${#kinds[@]}]}
	dir=$out/run-$(printf '%04d' $nrun)-$kind
	mkdir -p "$dir"
	port=
	make_server "$kind" "$dir"
	{
		echo "#!/usr/bin/env bash"
		echo "# faultsoak run $nrun (campaign seed $seed): $kind; from the repository root"
		[[ $kind == kv-* ]] && echo "rm -rf $(printf '%q' "$dir/data") && mkdir -p $(printf '%q' "$dir/data")"
		printf 'env'
		printf ' %q' "${env[@]}" "${srv[@]}"
		echo
	} >"$dir/repro.sh"
	: >"$dir/checks.txt"
	fails=()
	env "${env[@]}" "${srv[@]}" >"$dir/server.log" 2>&1 &
	srvpid=$!
	result=
	if ! wait_listening "$dir/server.log" $srvpid; then
		stop $srvpid "$dir"
		srvpid=
		echo "did not start: status $st" >>"$dir/checks.txt"
		if sanitizer_report "$dir/server.log" || ! start_may_fail || [ $st -eq 124 ]; then
			fails+=(NOSTART)
		else
			result="start-refused"
		fi
	else
		fd0=$(nfds $srvpid)
		secs=$((3 + RANDOM % 5))
		cend=$(($(date +%s) + secs))
		{
			echo "#!/usr/bin/env bash"
			echo "# The load of faultsoak run $nrun, from the repository root: clients.sh PORT"
			echo "# (the server's port: repro.sh's log says it; a UDP server's is in repro.sh)"
			echo 'PORT=${1:?usage: clients.sh PORT}'
			echo "END=\$((\$(date +%s) + $secs))"
		} >"$dir/clients.sh"
		read -r -a cl <<<"$(clients_for "$kind")"
		nclients=$((1 + RANDOM % 2))
		cpids=() cnames=() misc=
		for ((i = 0; i < nclients; i++)); do
			name=${cl[RANDOM % ${#cl[@]}]}
			[ "$name" = kvmisc ] && misc=1
			client_cmd "$name" "$secs"
			printf '%q ' "${ccmd[@]}" | sed 's/@PORT@/"$PORT"/g; s/@END@/"$END"/g' >>"$dir/clients.sh"
			echo "> client-$i-$name.txt 2>&1 &" >>"$dir/clients.sh"
			ccmd=("${ccmd[@]//@PORT@/$port}")
			ccmd=("${ccmd[@]//@END@/$cend}")
			nice "${ccmd[@]}" >"$dir/client-$i-$name.txt" 2>&1 &
			cpids+=($!) cnames+=("$name")
		done
		for ((i = 0; i < ${#cpids[@]}; i++)); do
			wait "${cpids[i]}"
			echo "client $i ${cnames[i]}: status $?" >>"$dir/checks.txt"
		done
		echo wait >>"$dir/clients.sh"
		cpids=()
		# Wrong bytes: keel-bench's pattern check and chaos.py's comparisons (kv replies only
		# where no rule can make an error reply and nothing flushes).
		if grep -qE "length field byte|payload byte|came back, only|none were sent|came back twice|a datagram of .* came back|byte [0-9]+ is 0x|echo mismatch" "$dir"/client-*.txt 2>/dev/null; then
			fails+=(CORRUPT)
		elif [[ $kind == kv* ]] && [ -z "$misc" ] && [ -z "$kvspec" ] &&
			! [[ $spec =~ (alloc|write|fsync|read): ]] && grep -q "kv reply mismatch" "$dir"/client-*.txt 2>/dev/null; then
			fails+=(CORRUPT)
		fi
		# Descriptors back: give the last closes up to 6 s.
		for w in $(seq 30); do
			fd1=$(nfds $srvpid) ns=0
			[ "$kind" != udp ] && ns=$(stray "$port")
			[ "$w" -ge 10 ] && [ "$fd1" -le $((fd0 + 2)) ] && [ "$ns" -eq 0 ] && break
			sleep 0.2
		done
		echo "descriptors: $fd0 before the load, $fd1 after; sockets on the port not LISTEN/TIME-WAIT: $ns" >>"$dir/checks.txt"
		if [ "$fd1" -gt $((fd0 + 2)) ] || [ "$ns" -gt 0 ]; then
			fails+=(FDLEAK)
			ss -tanp "( sport = :$port )" >>"$dir/checks.txt" 2>&1
			ls -l "/proc/$srvpid/fd" >>"$dir/checks.txt" 2>&1
		fi
		ptag=${kind%%-*}
		tries=$((8 + (limits < 40 ? limits : 40)))
		probe "$ptag" "$port" $tries "$dir/probe-keys.txt" >>"$dir/checks.txt" 2>&1
		pst=$?
		if [ $pst -eq 2 ] && [ -n "$disk" ]; then
			echo "probe: writes refused (-MISCONF): the file is rebuilt, tried again 1..64 s apart" >>"$dir/checks.txt"
			result="writes-refused"
		elif [ $pst -ne 0 ] && [ -n "$judged" ]; then
			fails+=(NOANSWER)
		elif [ $pst -ne 0 ]; then
			echo "probe: no answer, not judged (a rule without n=)" >>"$dir/checks.txt"
			result="noanswer-unjudged"
		fi
		# The keys the faulted server holds, for the RELOAD check: where no rule can refuse a
		# write whose record still reaches the file later (disk) and nothing expires keys
		# (kvmisc), a clean restart must find as many.
		db0=
		if [[ $kind == kv-* ]] && [ -z "$disk" ] && [ -z "$misc" ]; then
			for _ in 1 2 3 4 5; do
				db0=$(timeout 5 redis-cli -p "$port" DBSIZE 2>/dev/null | tr -d '\r')
				[[ $db0 =~ ^[0-9]+$ ]] && break
				db0=
			done
			echo "DBSIZE before the stop: ${db0:-(no answer)}" >>"$dir/checks.txt"
		fi
		stop $srvpid "$dir"
		srvpid=
		echo "exit status: $st" >>"$dir/checks.txt"
		# keel-kv stops with 1 when a shard's file failed (a write) or its stop's writes,
		# syncs or rebuild (of a file a failed sync lost) failed: "appendonly-N.aof at
		# stop" says so.
		aofstop=
		if [ $st -eq 1 ] && [ -n "$disk" ] && grep -q "aof at stop: " "$dir/server.log" &&
			grep -q "could not be written and synced at the stop" "$dir/server.log"; then
			aofstop=1
		fi
		if [ $st -eq 124 ]; then
			fails+=(HANG)
		elif sanitizer_report "$dir/server.log" || { [ $st -ne 0 ] && [ -z "$aofstop" ]; }; then
			fails+=(EXIT)
		elif [[ $kind == kv-* ]]; then
			[ -n "$aofstop" ] && result="stop-unsynced" && rm -f "$dir/probe-keys.txt"
			lost= dbsize=
			if kv_clean "$dir" reload1 >>"$dir/checks.txt" 2>&1; then
				d1=$dbsize
				if ! kv_clean "$dir" reload2 >>"$dir/checks.txt" 2>&1 || [ -n "$lost" ] ||
					[ "$dbsize" != "$d1" ] || { [ -n "$db0" ] && [ "$d1" != "$db0" ]; }; then
					fails+=(RELOAD)
				fi
			else
				fails+=(RELOAD)
			fi
		fi
	fi
	[ ${#fails[@]} -gt 0 ] && result=$(IFS=+; echo "${fails[*]}")
	result=${result:-ok}
	count["$kind $result"]=$((${count["$kind $result"]:-0} + 1))
	# What each rule injected, as the server said at its stop ("injected of" lines).
	inj=$(sed -n 's/.*KEEL_FAULTS rule \([0-9]*\) .*: \([0-9]*\) injected of \([0-9]*\).*/\2\/\3/p' "$dir/server.log" | paste -sd, -)
	used=$(grep -o 'keel-bench [a-z]*\|redis-benchmark\|chaos.py\|kvmisc' "$dir/clients.sh" 2>/dev/null | paste -sd, -)
	opts=$(printf '%s\n' "${srv[@]}" | sed '1,/^--idle-poll-us$/d' | sed 1d | paste -sd' ' -)
	line="run $nrun $kind $result spec=$spec${kvspec:+ kv=$kvspec} injected=${inj:-?} clients=${used:-none}${opts:+ opts=$opts}"
	echo "$line" >>"$out/runs.txt"
	if [ ${#fails[@]} -gt 0 ]; then
		nfail=$((nfail + 1))
		echo "faultsoak: FAIL $result: $line"
		echo "  reproducer: $dir (repro.sh, clients.sh, server.log, checks.txt)"
	elif [ -z "${FAULTSOAK_KEEP:-}" ]; then
		rm -rf "$dir"
	fi
done

echo "== faultsoak summary: $nrun runs in $((($(date +%s) - t0) / 60)) min, $nfail failed; seed $seed; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for k in "${!count[@]}"; do echo "$k ${count[$k]}"; done | sort | awk '{ printf "  %-12s %-24s %d\n", $1, $2, $3 }'
echo "runs: $out/runs.txt"
[ $nfail -eq 0 ] && echo "faultsoak: PASS" || echo "faultsoak: FAILED ($nfail runs; their directories are listed above)"
[ $nfail -eq 0 ]
