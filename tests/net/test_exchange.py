"""Two and three nodes in one process on loopback (real TLS sockets, real UDP DHT,
real LMDB stores): lazy fetch, records, metering and IOUs, credit, rights, liars."""

from __future__ import annotations

import trio
import pytest

from mimeifs.engine.errors import ChunkMissing, EngineError
from mimeifs.net import wire
from mimeifs.net.serve import Serving

pytestmark = pytest.mark.timeout(180)

from .conftest import author_tree, make_node, read_version, sample_files, write_files


async def start(nursery, *nodes):
    for n in nodes:
        await nursery.start(n.run)


def run_nodes(tmp_path, body, specs):
    """Create nodes from ``specs`` ({name: config kwargs}), run ``body(nodes)``."""
    async def main():
        nodes = {}
        for name, kw in specs.items():
            nodes[name] = make_node(tmp_path / name, **kw)
        try:
            async with trio.open_nursery() as n:
                for name, node in nodes.items():
                    await n.start(node.run)
                    if node.listen_addr and not any(v.listen_addr for k, v in nodes.items() if k < name):
                        pass
                await body(nodes, n)
                n.cancel_scope.cancel()
        finally:
            for node in nodes.values():
                node.store.close()
    trio.run(main)


async def connect_all(nodes):
    first = nodes[0]
    for n in nodes[1:]:
        await n.connect(None, first.listen_addr)
        await trio.to_thread.run_sync(n.dht.bootstrap, [first.listen_addr])
    await trio.to_thread.run_sync(first.dht.bootstrap, [nodes[1].listen_addr])


async def wait_for(pred, timeout=15.0, step=0.1):
    with trio.fail_after(timeout):
        while not await pred():
            await trio.sleep(step)


def test_lazy_read_metering_and_ious_agree(tmp_path):
    files = sample_files()

    async def body(nodes, nursery):
        a, b = nodes["a"], nodes["b"]
        mid = await trio.to_thread.run_sync(author_tree, a.engine, files)
        await connect_all([a, b])

        async def announced():
            return bool(await b.client.providers(mid, fresh=True))
        await wait_for(announced)
        # B finds the MiMei by ID and reads version 1 lazily
        assert await trio.to_thread.run_sync(b.engine.find, mid)
        assert b.engine.is_remote(mid)
        got = await trio.to_thread.run_sync(read_version, b.engine, mid)
        assert got == files
        # A's next version appears on B within seconds (follow loop)
        await trio.to_thread.run_sync(write_files, a.engine, mid, {"new.txt": b"second version"})
        await trio.to_thread.run_sync(a.engine.backup, mid)

        n1 = b.engine.state(mid)["last"]

        async def followed():
            return b.engine.state(mid)["last"] == n1 + 1
        await wait_for(followed)
        assert (await trio.to_thread.run_sync(read_version, b.engine, mid))["new.txt"] == b"second version"
        # metering: what A served B equals the IOU B signed and A kept
        await b.settle_accounts()
        await a.settle_accounts()
        used = a.book.used(b.id)
        assert used > len(files["big.bin"]) // 2          # packs are compressed; random data is not
        assert b.book.iou_out(a.id)["amount"] == used
        ious = {r["peer"]: r for r in a.book.show()}
        assert ious[b.id]["iou_in"]["amount"] == used

    run_nodes(tmp_path, body, {"a": {}, "b": {}})


def test_credit_cap_refuses_then_grant_resumes_and_revoke_stops(tmp_path):
    files = sample_files(big=2 << 20)

    async def body(nodes, nursery):
        a, b = nodes["a"], nodes["b"]
        mid = await trio.to_thread.run_sync(author_tree, a.engine, files)
        await connect_all([a, b])
        await wait_for(lambda: _has_prov(b, mid))
        await trio.to_thread.run_sync(b.engine.find, mid)  # records fit in the 64 KiB default letter
        rec = b.engine.version(mid, b.engine.state(mid)["last"])
        with pytest.raises(EngineError):
            await trio.to_thread.run_sync(read_version, b.engine, mid)
        assert b.refused_by[a.id]["reason"].startswith("credit exhausted")
        assert b.id in a.meter.refusals
        st = a.status()
        assert b.id in st["refused"]
        # a raised cap resumes service
        await trio.to_thread.run_sync(a.book.grant, b.id, 100 << 20)
        assert await trio.to_thread.run_sync(read_version, b.engine, mid) == files
        # revoked: refused at once
        await trio.to_thread.run_sync(a.book.revoke, b.id)
        c = await b.connect(a.id, a.listen_addr)
        with pytest.raises(wire.RemoteError) as ei:
            await c.want([("chunk", bytes.fromhex(rec["root"]))])
        assert ei.value.code == wire.E_CREDIT and "revoked" in ei.value.msg

    run_nodes(tmp_path, body, {"a": {"default_credit": 64 << 10}, "b": {}})


async def _has_prov(node, mid):
    return bool(await node.client.providers(mid, fresh=True))


class LyingServing(Serving):
    """Serves every block with one byte flipped, and records with a forged version."""

    @staticmethod
    def _flip(b):
        b = list(b)
        data = bytearray(b[2])
        data[len(data) // 2] ^= 1
        b[2] = bytes(data)
        return b

    async def _charged(self, conn, rid, t, **fields):
        if t == "block":
            fields["b"] = self._flip(fields["b"])
        elif t == "blocks":
            fields["bs"] = [self._flip(b) for b in fields["bs"]]
        return await super()._charged(conn, rid, t, **fields)


def test_lying_peer_is_marked_bad_and_the_honest_one_used(tmp_path):
    files = sample_files(big=1 << 20)

    async def body(nodes, nursery):
        a, liar, b = nodes["a"], nodes["liar"], nodes["b"]
        liar.serving = LyingServing(liar)
        mid = await trio.to_thread.run_sync(author_tree, a.engine, files)
        await connect_all([a, liar, b])
        await wait_for(lambda: _has_prov(liar, mid))
        # the liar pins (honestly fetched), then lies to b
        await liar.client.pin(mid)
        await wait_for(lambda: _prov_count(b, mid, 2))
        await b.connect(liar.id, liar.listen_addr)
        await trio.to_thread.run_sync(b.engine.find, mid)
        got = await trio.to_thread.run_sync(read_version, b.engine, mid)
        assert got == files
        assert b.is_bad(liar.id) and "bad block" in b.bad[liar.id][1]
        assert b.engine.chunks.stats["refused"] >= 1  # refused by accept: nothing of it stored

    run_nodes(tmp_path, body, {"a": {}, "liar": {}, "b": {"want_batch": 1}})


def test_pin_takes_whole_packs_and_refuses_a_liars(tmp_path):
    """A pin wants whole packs from the provider that says where its chunks are; a
    provider whose packs do not verify is marked bad and the pin completes from the
    honest one, byte for byte."""
    files = sample_files(big=3 << 20)

    async def body(nodes, nursery):
        a, liar, b = nodes["a"], nodes["liar"], nodes["b"]
        mid = await trio.to_thread.run_sync(author_tree, a.engine, files)
        await connect_all([a, liar, b])
        await wait_for(lambda: _has_prov(a, mid))
        await liar.client.pin(mid)          # honest so far: whole packs from a
        assert await trio.to_thread.run_sync(read_version, liar.engine, mid) == files
        served = a.meter.served[liar.id]
        assert served >= sum(len(v) for v in files.values()) // 2  # the random big file crossed
        assert liar.client.whole_packs >= 3       # the 3 MiB random file went as packs
        liar.serving = PackLiar(liar)
        await wait_for(lambda: _prov_count(b, mid, 2))
        b.client.candidates = _liar_first(b.client.candidates, liar.id)
        await b.client.pin(mid)
        assert await trio.to_thread.run_sync(read_version, b.engine, mid) == files
        assert b.is_bad(liar.id) and "bad pack" in b.bad[liar.id][1]
        assert b.engine.chunks.stats["refused"] >= 1

    run_nodes(tmp_path, body, {"a": {}, "liar": {}, "b": {}})


class PackLiar(LyingServing):
    """Flips a byte in every whole pack it serves, and nothing else."""

    @staticmethod
    def _flip(b):
        return LyingServing._flip(b) if b[0] == "pack" else b


def _liar_first(candidates, liar_id):
    async def ordered(*args, **kw):
        got = await candidates(*args, **kw)
        return sorted(got, key=lambda p: p[0] != liar_id)
    return ordered


async def _prov_count(node, mid, n):
    return len(await node.client.providers(mid, fresh=True)) >= n


def test_private_mimei_is_neither_announced_nor_served(tmp_path):
    async def body(nodes, nursery):
        a, b = nodes["a"], nodes["b"]
        mid = await trio.to_thread.run_sync(author_tree, a.engine, {"secret": b"x" * 100})
        await trio.to_thread.run_sync(_set_rights, a.engine, mid, 0o600)
        await connect_all([a, b])
        await trio.sleep(1.0)
        assert await b.client.providers(mid, fresh=True) == []
        c = await b.connect(a.id, a.listen_addr)
        with pytest.raises(wire.RemoteError) as ei:
            await c.request("records", m=mid)
        assert ei.value.code == wire.E_FORBIDDEN and "guests" in ei.value.msg
        assert not await trio.to_thread.run_sync(b.engine.find, mid)

    run_nodes(tmp_path, body, {"a": {}, "b": {}})


def _set_rights(engine, mid, rights):
    """Re-sign the info record with other rights (what a rights command would do)."""
    import json
    info = engine.info(mid)
    body = {k: v for k, v in info.items() if k not in ("key", "sig")}
    body["rights"] = rights
    rec = engine.store.key.sign_record(body)
    with engine.store.write() as txn:
        txn.put(bytes.fromhex(mid), json.dumps(rec).encode(), db=engine.d_mimei)
