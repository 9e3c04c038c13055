#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The client of tools/valgrind.sh: echo or kv traffic on a few connections, every reply
# checked. Exit 0 when every reply was right.
import socket
import sys


def echo(port, conns):
    ok = 0
    for c in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        msg = (b"%d-echo-" % c) * 3000
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(65536)
            if not d:
                break
            got += d
        ok += got == msg
        s.close()
    return ok


def kv(port, conns):
    ok = 0
    for c in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        req, want = b"", b""
        for i in range(300):
            k, v = b"c%dk%d" % (c, i), b"v" * (1 + i % 70)
            req += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)
            req += b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k)
            want += b"+OK\r\n$%d\r\n%s\r\n" % (len(v), v)
        req += b"MGET c%dk1 c%dk2 nokey\r\nDEL c%dk1\r\nPING\r\n" % (c, c, c)
        want += b"*3\r\n$2\r\nvv\r\n$3\r\nvvv\r\n$-1\r\n:1\r\n+PONG\r\n"
        s.sendall(req)
        got = b""
        while len(got) < len(want):
            d = s.recv(65536)
            if not d:
                break
            got += d
        ok += got == want
        s.close()
    return ok


mode, port, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = echo(port, conns) if mode == "echo" else kv(port, conns)
print("%s: %d of %d connections answered correctly" % (mode, ok, conns))
sys.exit(0 if ok == conns else 1)
