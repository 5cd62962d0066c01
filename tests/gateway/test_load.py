"""1,000 concurrent connections and slow clients against `mimeifs mount --http` do not
stall the mount: FUSE reads and fresh HTTP requests are answered while they hang on.
Loopback only; bounded by timeouts; every socket is closed at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import Node, pid_alive, wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                                reason="needs /dev/fuse")

N_CONN = 1000
BIG = 3 << 20


@pytest.fixture
def mounted(tmp_path):
    n = Node(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("small\n")
    (src / "big.bin").write_bytes(os.urandom(BIG))
    n.run("init")
    n.mid = n.create("load")
    n.run("import", src, n.mid, "--backup")
    n.src = src
    mnt = Path(tempfile.mkdtemp(prefix="mimeifs-gw-mnt-", dir="/tmp"))
    try:
        n.mount(mnt)
        yield n
    finally:
        n.stop()
        try:
            os.rmdir(mnt)
        except OSError:
            pass


def timed(fn, *a):
    t = time.monotonic()
    v = fn(*a)
    return v, time.monotonic() - t


def test_thousand_connections_and_slow_clients_do_not_stall_the_mount(mounted):
    n = mounted
    mm = n.mnt / "mm" / n.mid
    socks: list[socket.socket] = []
    try:
        for i in range(N_CONN):
            s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # readers that barely read
            socks.append(s)
        for i, s in enumerate(socks):
            if i % 3 == 0:    # slow loris: a request line and half the headers, never finished
                s.sendall(f"GET /mm/{n.mid}/0/a.txt HTTP/1.1\r\nHost: x\r\n".encode())
            elif i % 3 == 1:  # asks for the big file and never reads it
                s.sendall(f"GET /mm/{n.mid}/0/big.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            # else: connected and silent
        time.sleep(0.5)
        # the mount answers at once, the version's big file reads whole
        names, dt = timed(os.listdir, mm / "cur")
        assert sorted(names) == ["a.txt", "big.bin"] and dt < 5, dt
        data, dt = timed((mm / "v" / "0" / "big.bin").read_bytes)
        assert data == (n.src / "big.bin").read_bytes() and dt < 10, dt
        (mm / "cur" / "written.txt").write_text("while loaded\n")
        assert (mm / "cur" / "written.txt").read_text() == "while loaded\n"
        # a fresh HTTP client is served next to the thousand
        t = time.monotonic()
        r = n.curl(f"/mm/{n.mid}/cur/written.txt")
        assert r.status == 200 and r.body == b"while loaded\n"
        r = n.curl(f"/mm/{n.mid}/0/big.bin")
        assert r.status == 200 and len(r.body) == BIG
        assert time.monotonic() - t < 15
        # a slow loris that finally finishes gets its answer
        s = socks[0]
        s.sendall(b"\r\n")
        s.settimeout(10)
        got = b""
        while b"small\n" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
        # a stalled reader still gets the right bytes once it reads (its first 256 KiB:
        # through a 4 KiB receive window the rest would take delayed-ACK time)
        s = socks[1]
        s.settimeout(10)
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"content-length: {BIG}".encode() in head
        body = bytearray(body)
        while len(body) < 256 << 10:
            chunk = s.recv(1 << 20)
            assert chunk
            body += chunk
        assert bytes(body) == (n.src / "big.bin").read_bytes()[:len(body)]
    finally:
        for s in socks:
            s.close()
    assert pid_alive(n.pid) and os.path.ismount(n.mnt)
    assert n.curl(f"/mm/{n.mid}/0/a.txt").body == b"small\n"
    p = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{n.port} )"],
                       capture_output=True, text=True)
    if p.returncode == 0:  # the daemon let go of the closed connections
        deadline = time.monotonic() + 20
        while p.stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.2)
            p = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{n.port} )"],
                               capture_output=True, text=True)
        assert len(p.stdout.strip().splitlines()) < 10, p.stdout[:2000]


def test_webdav_writes_show_through_the_mount_at_once(mounted):
    n = mounted
    cur = n.mnt / "mm" / n.mid / "cur"
    assert (cur / "a.txt").read_text() == "small\n"  # now in the kernel's caches
    tok = n.token
    r = n.curl(f"/dav/mm/{n.mid}/cur/a.txt", "-u", f"me:{tok}", "--data-binary", "changed over WebDAV\n",
               method="PUT")
    assert r.status in (201, 204), r
    # the daemon drops the kernel's caches of cur right after the request, from a worker
    # thread (ms); on a loaded machine allow 15 s, half of the 30 s they would otherwise live
    wait_for(lambda: (cur / "a.txt").read_text() == "changed over WebDAV\n", 15, "the new content")
    r = n.curl(f"/dav/mm/{n.mid}/cur/a.txt", "-u", f"me:{tok}", "-H",
               f"Destination: {n.url(f'/dav/mm/{n.mid}/cur/b.txt')}", method="MOVE")
    assert r.status in (201, 204), r
    assert sorted(os.listdir(cur)) == ["b.txt", "big.bin"]
    # and the kernel's entry for the old name goes
    wait_for(lambda: not (cur / "a.txt").exists(), 15, "the kernel to forget a.txt")
    # and the other way: a write through the mount is what HTTP serves next
    (cur / "b.txt").write_text("from the mount\n")
    assert n.curl(f"/mm/{n.mid}/cur/b.txt").body == b"from the mount\n"
