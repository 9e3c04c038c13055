#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# tools/soak.sh's misbehaving and checking clients, against keel-echo (ECHO_PORT) and
# keel-kv (KV_PORT) until DEADLINE (a time.time() value):
#   - checked traffic: kv SET/GET pipelines and echo streams, every reply compared;
#   - random disconnects: connections dropped mid-request or mid-reply, with FIN or RST
#     (SO_LINGER 0), after a random part of a pipeline was sent;
#   - slow and silent peers: connections that never read, or send half a command and wait.
# A port of 0 leaves that server out (tools/faultsoak.sh drives one server at a time).
# Prints one line of counts at the end; exit 1 when a checked reply was wrong.
import random
import socket
import struct
import sys
import time

echo_port, kv_port, deadline, seed = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
n = {"kv_checked": 0, "echo_checked": 0, "dropped_fin": 0, "dropped_rst": 0, "silent": 0,
     "connect_errors": 0, "wrong": 0}


def conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    return s


def drop(s):
    if rnd.random() < 0.5:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        n["dropped_rst"] += 1
    else:
        n["dropped_fin"] += 1
    s.close()


def read_exact(s, k):
    got = b""
    while len(got) < k:
        d = s.recv(min(65536, k - len(got)))
        if not d:
            raise ConnectionError("EOF after %d of %d bytes" % (len(got), k))
        got += d
    return got


def kv_pipeline(tag, count):
    req, want = [], []
    for i in range(count):
        k = b"soak:%s:%d" % (tag, i)
        v = bytes([97 + (i + j) % 26 for j in range(1 + rnd.randrange(400))])
        req.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
        req.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
        want.append(b"+OK\r\n$%d\r\n%s\r\n" % (len(v), v))
    return b"".join(req), b"".join(want)


def kv_checked(it):
    s = conn(kv_port)
    req, want = kv_pipeline(b"c%d" % (it % 64), rnd.randrange(1, 400))  # a bounded key space
    s.sendall(req)
    got = read_exact(s, len(want))
    if got != want:
        n["wrong"] += 1
        print("chaos: kv reply mismatch on iteration %d" % it, file=sys.stderr)
    n["kv_checked"] += 1
    s.close()


def echo_checked(it):
    s = conn(echo_port)
    msg = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 4096))) * rnd.randrange(1, 64)
    s.sendall(msg)
    got = read_exact(s, len(msg))
    if got != msg:
        n["wrong"] += 1
        print("chaos: echo mismatch on iteration %d" % it, file=sys.stderr)
    n["echo_checked"] += 1
    s.close()


def a_port():
    if not kv_port or not echo_port:
        return kv_port or echo_port
    return kv_port if rnd.random() < 0.5 else echo_port


def dropper(it):
    port = a_port()
    s = conn(port)
    if port == kv_port:
        req, _ = kv_pipeline(b"d%d" % (it % 64), rnd.randrange(1, 300))
    else:
        req = b"x" * rnd.randrange(1, 1 << 20)
    cut = rnd.randrange(0, len(req) + 1)
    s.sendall(req[:cut])
    if rnd.random() < 0.5:
        try:
            s.settimeout(0.05)
            s.recv(rnd.randrange(1, 65536))
        except (socket.timeout, OSError):
            pass
    drop(s)


silent = []


def silent_peer(it):
    port = a_port()
    s = conn(port)
    if port == kv_port:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\nhal")  # half a command
    else:
        s.sendall(b"y" * rnd.randrange(1, 1 << 21))  # never read back
    silent.append(s)
    n["silent"] += 1
    while len(silent) > 20:
        drop(silent.pop(0))


checked = ([kv_checked] * 2 if kv_port else []) + ([echo_checked] * 2 if echo_port else [])
it = 0
while time.time() < deadline:
    it += 1
    f = rnd.choice(checked + [dropper, dropper, silent_peer])
    try:
        s = f(it)
    except (ConnectionError, socket.timeout, OSError) as e:
        if f in (kv_checked, echo_checked):
            n["wrong"] += 1
            print("chaos: checked connection failed: %s" % e, file=sys.stderr)
        else:
            n["connect_errors"] += 1
    time.sleep(rnd.random() * 0.02)
for s in silent:
    drop(s)
print("chaos: " + " ".join("%s=%d" % kv for kv in n.items()))
sys.exit(1 if n["wrong"] else 0)
