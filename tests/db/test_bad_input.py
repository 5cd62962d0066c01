"""Bad input never takes the RESP server down and never makes it allocate what a client
only claims: malformed RESP, huge and 1 GiB claimed lengths, unknown commands, half-sent
frames, 10,000 idle connections."""

from __future__ import annotations

import os
import resource
import socket
import time

from .conftest import Raw


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def alive(m) -> None:
    c = m.client()
    assert c.cmd("PING") == b"PONG"
    assert c.cmd("SET", "alive", "1") == b"OK"
    c.close()


def answer(m, data: bytes, auth: bool = True) -> bytes:
    """Send raw bytes and return what comes back until the server closes or 1 s passes."""
    s = socket.create_connection(("127.0.0.1", m.port))
    if auth:
        s.sendall(f"AUTH {m.token}\r\n".encode())
        assert s.recv(100) == b"+OK\r\n"
    s.sendall(data)
    s.settimeout(1)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def test_malformed_and_unknown(mm_db):
    assert answer(mm_db, b"*1\r\n$4\r\nPING\r\n*x\r\n").startswith(b"+PONG\r\n-ERR Protocol error: invalid multibulk length")
    assert b"-ERR Protocol error: expected '$', got 'x'" in answer(mm_db, b"*2\r\n$3\r\nGET\r\nxyz\r\n")
    assert b"invalid bulk length" in answer(mm_db, b"*2\r\n$3\r\nGET\r\n$-5\r\n")
    assert b"invalid bulk length" in answer(mm_db, b"*2\r\n$3\r\nGET\r\n$abc\r\n")
    assert answer(mm_db, b"FOO bar\r\nPING\r\n") == \
        b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n+PONG\r\n"
    assert answer(mm_db, b"*0\r\n*-1\r\nPING\r\n") == b"+PONG\r\n"
    assert b"too big inline" in answer(mm_db, b"x" * (70 << 10))
    assert b"NOAUTH" in answer(mm_db, b"GET a\r\n", auth=False)
    alive(mm_db)


def test_huge_claimed_lengths_allocate_nothing(mm_db):
    pid = mm_db.proc.pid
    before = rss_kib(pid)
    for claim in (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n", b"*2000000000\r\n",
                  b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$600000000\r\n", b"*1048577\r\n",
                  b"*1\r\n$4\r\nECHO\r\n*2000000000\r\n", b"*1\r\n*2000000000\r\n"):
        out = answer(mm_db, claim + b"abc")
        assert b"-ERR Protocol error" in out, out
    # a claim within the limits that is never sent: the server waits, holding what came
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", mm_db.port))
        s.sendall(f"AUTH {mm_db.token}\r\n".encode() + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$60000000\r\nabc")
        socks.append(s)
    time.sleep(0.5)
    assert rss_kib(pid) - before < 100_000  # 50 claims of 60 MB would be 3 GB
    for s in socks:
        s.close()
    alive(mm_db)


def test_half_frames_and_resets(mm_db):
    for data in (b"*3\r\n$3\r\nSET\r\n$1\r\n", b"*3\r\n$3\r\nSE", b"*", b"$5\r\nhel", b'SET "abc'):
        s = socket.create_connection(("127.0.0.1", mm_db.port))
        s.sendall(data)
        s.close()
    s = socket.create_connection(("127.0.0.1", mm_db.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(b"*2\r\n$4\r\nECHO\r\n$100\r\nabc")
    s.close()  # RST
    # a frame sent a byte at a time is answered once it is whole
    c = Raw(mm_db.port)
    for b in b"*1\r\n$4\r\nPING\r\n":
        c.send_raw(bytes([b]))
    assert c.read() == b"PONG"
    c.close()
    alive(mm_db)


def test_ten_thousand_idle_connections(mm_db):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 + 200
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))
    n = min(10_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)
    assert n == 10_000, "the hard open-files limit is below 10,200"
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", mm_db.port)))
        for s in socks[::500]:  # they are really being served
            s.sendall(b"PING\r\n")
            s.settimeout(30)
            assert s.recv(10) == b"+PONG\r\n"
        alive(mm_db)
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    alive(mm_db)
    assert os.path.exists(f"/proc/{mm_db.proc.pid}")


def test_values_beyond_the_bulk_limit_are_refused(mm_db):
    c = mm_db.client()
    before = rss_kib(mm_db.proc.pid)
    r = c.cmd("SETRANGE", "big", str(100 << 20), "x")  # Redis would build 100 MB here
    assert r[0] == "ERR" and "maximum allowed size" in r[1]
    c.cmd("SET", "k", "x" * (1 << 20))
    for _ in range(3):
        c.cmd("APPEND", "k", "y" * (16 << 20))
    assert "maximum allowed size" in c.cmd("APPEND", "k", "y" * (16 << 20))[1]
    assert c.cmd("STRLEN", "k") == (1 << 20) + 3 * (16 << 20)
    assert c.cmd("DEL", "k") == 1
    assert rss_kib(mm_db.proc.pid) - before < 400_000
    c.close()
    alive(mm_db)
