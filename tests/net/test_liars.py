"""Peers that lie, against real daemons: malformed and oversize frames, a flood, forged
and downgraded version records in the DHT. Nothing bad is stored or shown, and the
daemon stays up."""

from __future__ import annotations

import os
import shutil
import struct

import msgpack
import pytest
import trio

from mimeifs.ids import NodeKey
from mimeifs.net import conn as C
from mimeifs.net import records as R
from mimeifs.net import tlsid, wire
from mimeifs.net.dht import DHT

pytestmark = pytest.mark.timeout(240)

from .procs import Node, wait_for
from .test_nodes import FAST

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)


@pytest.fixture
def author(tmp_path):
    a = Node(tmp_path / "a", "a")
    (a.path / "config.toml").write_text(FAST)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("hello\n" * 1000)
    mid = a.run("create", "--type", "fs", "--mark", "m").strip()
    a.run("import", str(src), mid, "--backup")
    (src / "g.txt").write_text("second\n")
    a.run("import", str(src), mid, "--backup")
    a.serve()
    yield a, mid, src
    a.stop()


async def _authed(port, key):
    """A TLS connection that passed the handshake with ``key``, as raw stream + reader."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    s = trio.SSLStream(tcp, tlsid.client_context(), server_hostname=None)
    await s.do_handshake()
    pid = tlsid.peer_id_of_cert(s.getpeercert(binary_form=True))
    r = wire.FrameReader(s)
    hello = await r.next()
    await s.send_all(wire.encode({"t": "auth", "id": 0, "key": key.public_key, "listen": None,
                                  "sig": key.sign(tlsid.auth_message(pid, hello["nonce"], key.id))}))
    assert (await r.next())["t"] == "ok"
    return s, r


BAD_FRAMES = {
    "oversize": struct.pack(">I", wire.MAX_FRAME + 1) + b"x" * 100,
    "garbage": struct.pack(">I", 8) + b"\xc1" * 8,
    "huge-map-claim": struct.pack(">I", 6) + b"\xdf\xff\xff\xff\xff\x00",
    "no-type": struct.pack(">I", 1) + msgpack.packb({}),
    "bad-want": wire.encode({"t": "want", "id": 1, "w": [["chunk", b"short"]]}),
}


def test_malformed_oversize_and_flood_keep_the_daemon_up(author):
    a, mid, src = author
    liar = NodeKey.generate()

    async def main():
        for name, frame in BAD_FRAMES.items():
            s, r = await _authed(a.port, liar)
            await s.send_all(frame)
            msg = await r.next()
            assert msg["t"] == "error", name
            assert msg["code"] in (wire.E_MALFORMED, wire.E_TOO_LARGE), (name, msg)
            await s.aclose()
        # a flood of requests: past the in-flight limit the answer is busy, not a crash
        s, r = await _authed(a.port, NodeKey.generate())
        for i in range(300):
            await s.send_all(wire.encode({"t": "records", "id": i + 1, "m": mid}))
        codes = []
        with trio.move_on_after(10):
            while len(codes) < 300:
                msg = await r.next()
                codes.append(msg["t"] if msg["t"] != "error" else msg["code"])
        assert len(codes) == 300 and "recs" in codes
        await s.aclose()
        # an honest peer is still served
        good = await C.dial("127.0.0.1", a.port, NodeKey.generate(), tlsid.client_context(), expected=a.id)
        async with trio.open_nursery() as n:
            n.start_soon(good.run, None)
            assert (await good.request("ping"))["node"] == a.id
            n.cancel_scope.cancel()

    trio.run(main)
    assert a.alive()
    st = a.json("net", "status")
    assert liar.id in st["bad_peers"]


def test_forged_and_downgraded_version_records_are_not_believed(author, tmp_path):
    a, mid, src = author
    akey = NodeKey.load(str(a.path / "node.key"))        # the author's own key
    b = Node(tmp_path / "b", "b")
    (b.path / "config.toml").write_text(FAST)
    try:
        b.mount(tmp_path / "mb", a)
        last = tmp_path / "mb" / "mm" / mid / "last"
        wait_for(lambda: os.path.exists(last) and os.readlink(last) == "v/1", 20, "B to see v/1")
        info = b.json("info", mid) if False else None
        mallory = NodeKey.generate()
        d = DHT(mallory.id, "127.0.0.1", 0, wait_timeout=1.0)
        d.start()
        try:
            d.bootstrap([("127.0.0.1", a.port)])
            import json as _json
            raw_info = _json.loads(a.run("info", mid, "--signed"))
            v1 = _json.loads(a.run("log", mid, "--json"))
            # forged: a v/9 of A's MiMei signed by mallory
            forged = mallory.sign_record({"type": "version", "mimei": mid, "n": 9, "kind": "fs",
                                          "root": "00" * 32, "parent": 8, "fork_of": None, "time": 1,
                                          "size": 0, "memo": "", "refs": [], "author": akey.id})
            val = R.msgpack.packb({"k": "ver", "info": raw_info, "version": forged}, use_bin_type=True)
            # downgraded: a real v/0 record signed by the author (BEP 44: never taken over v/1)
            v0 = akey.sign_record({"type": "version", "mimei": mid, "n": 0, "kind": "fs", "root": "11" * 32,
                                   "parent": None, "fork_of": None, "time": 2, "size": 0, "memo": "",
                                   "refs": [], "author": akey.id})
            down = R.msgpack.packb({"k": "ver", "info": raw_info, "version": v0}, use_bin_type=True)
            answers = []
            for target in (a, b):
                async def store(value, port=target.port):
                    return await d.server.protocol.store(("127.0.0.1", port), d.server.node.id, R.ver_key(mid), value)
                answers.append(d._run(store(val)))
                d._run(store(down))
            assert all(ok and ans is False for ok, ans in answers)       # the forgery is refused
            got = d.newest_version(mid)
            assert got["version"]["n"] == 1 and got["version"]["root"] == v1[-1]["root"]
        finally:
            d.stop()
        import time
        time.sleep(2)  # several follow rounds
        assert os.readlink(last) == "v/1"
        assert not os.path.exists(tmp_path / "mb" / "mm" / mid / "v" / "9")
        assert (last / "g.txt").read_text() == "second\n"
        assert a.alive() and b.alive()
    finally:
        b.stop()
