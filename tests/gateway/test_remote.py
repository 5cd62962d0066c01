"""A remote MiMei through the gateway: this node holds only the signed records; the
bytes come through the engine's fetcher (here a second real store standing in for a
peer) when a request needs them. The gateway runs as the daemon runs it: a service on
a trio loop where fetching is forbidden, with real hypercorn on a loopback socket."""

from __future__ import annotations

import os
import stat
import urllib.request

import blake3
import trio

from mimeifs.engine.db import Store
from mimeifs.engine.fetch import forbid_fetching_here
from mimeifs.engine.mimei import Engine
from mimeifs.gateway.service import GatewayService
from mimeifs.view import View

from .conftest import free_port


class PeerFetcher:
    """Answers wants and records out of another engine, as a provider would."""

    def __init__(self, peer: Engine):
        self.peer = peer
        self.asked = 0

    def fetch_objects(self, wants):
        self.asked += 1
        return self.peer.chunks.export(wants)

    def fetch_mimei(self, mimei):
        return self.peer.records(mimei) if self.peer.exists(mimei) else None


def test_remote_mimei_is_fetched_off_the_event_loop(tmp_path):
    a = Engine(Store.create(str(tmp_path / "a"), map_size=1 << 32))
    mid = a.create("fs", "shared")
    root = a.state(mid)["cur"]
    big = os.urandom(900_000)
    ino = a.wt.make(root, b"big.bin", stat.S_IFREG | 0o644, 0, 0).ino
    a.wt.write(ino, 0, big)
    a.backup(mid)

    store_b = Store.create(str(tmp_path / "b"), map_size=1 << 32)
    fetcher = PeerFetcher(a)
    b = Engine(store_b, fetcher=fetcher)
    view = View(b, os.getuid())
    port = free_port()
    svc = GatewayService(b, view, f"127.0.0.1:{port}", dav=True)
    got = {}

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()

    async def main():
        with forbid_fetching_here(), trio.fail_after(60):  # as on the daemon's trio thread
            await serve_and_get()

    async def serve_and_get():
        async with trio.open_nursery() as n:
            await n.start(svc.run)
            got["v0"] = await trio.to_thread.run_sync(get, f"/mm/{mid}/0/big.bin")
            got["last"] = await trio.to_thread.run_sync(get, f"/mm/{mid}/last/big.bin")
            got["dav"] = await trio.to_thread.run_sync(get, f"/dav/mm/{mid}/0/big.bin")
            svc.stop()

    trio.run(main)
    status, headers, body = got["v0"]
    assert status == 200 and body == big
    assert headers["etag"] == f'"{blake3.blake3(big).hexdigest()}"'
    assert headers["x-mimei-id"] == mid
    assert got["last"][2] == big and got["dav"][2] == big
    assert b.is_remote(mid) and fetcher.asked > 0
    assert not svc.running
    a.store.close()
    store_b.close()
