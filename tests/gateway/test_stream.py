"""Streaming a large file: blocks are read only while somebody is there to take them.
The gateway runs in-process on a real loopback socket (hypercorn on trio, as in the
daemon); the view's reads are counted."""

from __future__ import annotations

import os
import socket
import stat

import trio

from mimeifs.engine.db import Store
from mimeifs.engine.fetch import forbid_fetching_here
from mimeifs.engine.mimei import Engine
from mimeifs.gateway import web
from mimeifs.gateway.service import GatewayService
from mimeifs.view import View

from .conftest import free_port

SIZE = 64 << 20


class CountingView(View):
    reads = 0

    def read(self, node, offset, size):
        CountingView.reads += 1
        return super().read(node, offset, size)


def test_a_client_that_goes_away_stops_the_reads(tmp_path):
    e = Engine(Store.create(str(tmp_path / "s"), map_size=1 << 32))
    mid = e.create("fs", "big")
    ino = e.wt.make(e.state(mid)["cur"], b"big.bin", stat.S_IFREG | 0o644, 0, 0).ino
    block = os.urandom(1 << 20)
    for i in range(SIZE >> 20):
        e.wt.write(ino, i << 20, block)
    e.backup(mid)
    view = CountingView(e, os.getuid())
    port = free_port()
    svc = GatewayService(e, view, f"127.0.0.1:{port}", dav=False)
    seen = {}

    def client_reads_a_little_and_leaves():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"GET /mm/{mid}/0/big.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        while len(got) < 2 << 20:
            got += s.recv(1 << 20)
        s.close()
        return got

    def client_reads_all():
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(f"GET /mm/{mid}/0/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        n = 0
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            n += len(b)
        s.close()
        return n

    async def main():
        with forbid_fetching_here(), trio.fail_after(60):
            async with trio.open_nursery() as n:
                await n.start(svc.run)
                got = await trio.to_thread.run_sync(client_reads_a_little_and_leaves)
                assert got.startswith(b"HTTP/1.1 200")
                await trio.sleep(1.0)
                seen["after_leaving"] = CountingView.reads
                await trio.sleep(1.0)
                seen["later"] = CountingView.reads
                CountingView.reads = 0
                seen["whole"] = await trio.to_thread.run_sync(client_reads_all)
                seen["whole_reads"] = CountingView.reads
                svc.stop()

    trio.run(main)
    blocks = SIZE // web.BLOCK
    assert seen["whole_reads"] >= blocks  # a reader who stays gets every block
    assert seen["whole"] > SIZE
    # one who leaves after 2 MiB costs a few blocks, and nothing more is read later
    assert seen["after_leaving"] <= 8, seen
    assert seen["later"] == seen["after_leaving"]
    e.store.close()
