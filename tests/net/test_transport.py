"""The block-exchange stream on loopback: TLS 1.3 bound to node keys, client
authentication, request IDs, frame limits, malformed frames, flow control."""

import functools
import os
import ssl
import struct

import msgpack
import pytest
import trio

from mimeifs.ids import NodeKey
from mimeifs.net import conn as C
from mimeifs.net import tlsid, wire


@pytest.fixture
def keys(tmp_path):
    a, b = NodeKey.generate(), NodeKey.generate()
    ca = tlsid.make_certificate(a, str(tmp_path / "a"))
    cb = tlsid.make_certificate(b, str(tmp_path / "b"))
    return a, b, ca, cb


async def _echo(conn, msg):
    if msg["t"] == "ping":
        await conn.reply(msg["id"], "ok", who=conn.peer_id)
    elif msg["t"] == "want":
        for k, h in msg["w"]:
            await conn.reply(msg["id"], "block", b=["chunk", h, b"x" * 10])
        await conn.reply(msg["id"], "done")
    elif msg["t"] == "records":
        await trio.sleep(30)  # a slow request, to be cancelled or timed out
    else:
        raise C.ServeError(wire.E_NOT_FOUND, "no such thing")


async def _server(nursery, key, cert, received, **kw):
    ctx = tlsid.server_context(*cert)

    async def handle(tcp):
        try:
            c = await C.accept(tcp, key, ctx, **kw)
        except Exception as e:
            received.append(e)
            return
        received.append(c)
        await c.run(_echo)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


def test_handshake_proves_both_node_ids(keys):
    a, b, ca, cb = keys

    async def main():
        got = []
        async with trio.open_nursery() as n:
            port = await _server(n, a, ca, got)
            c = await C.dial("127.0.0.1", port, b, tlsid.client_context(), expected=a.id)
            assert c.peer_id == a.id
            n.start_soon(c.run, _echo)
            r = await c.request("ping")
            assert r["who"] == b.id          # the server saw the client's proven ID
            assert got[0].peer_id == b.id
            assert c.stream.version() == "TLSv1.3"
            blocks, dont = await c.want([("chunk", b"\1" * 32), ("chunk", b"\2" * 32)])
            assert [x[1] for x in blocks] == [b"\1" * 32, b"\2" * 32] and dont == []
            with pytest.raises(wire.RemoteError) as ei:
                await c.request("pin", m="00" * 20)
            assert ei.value.code == wire.E_NOT_FOUND
            with pytest.raises(trio.TooSlowError):
                await c.request("records", timeout=0.2, m="00" * 20)
            await c.aclose()
            n.cancel_scope.cancel()

    trio.run(main)


def test_wrong_expected_id_is_refused(keys):
    a, b, ca, cb = keys

    async def main():
        got = []
        async with trio.open_nursery() as n:
            port = await _server(n, a, ca, got)
            with pytest.raises(tlsid.PeerIdentityError):
                await C.dial("127.0.0.1", port, b, tlsid.client_context(), expected=b.id)
            n.cancel_scope.cancel()

    trio.run(main)


async def _raw_client(port, b):
    """A TLS client that passes the handshake with b's key and then misbehaves."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    s = trio.SSLStream(tcp, tlsid.client_context(), server_hostname=None)
    await s.do_handshake()
    pid = tlsid.peer_id_of_cert(s.getpeercert(binary_form=True))
    r = wire.FrameReader(s)
    hello = await r.next()
    sig = b.sign(tlsid.auth_message(pid, hello["nonce"], b.id))
    await s.send_all(wire.encode({"t": "auth", "id": 0, "key": b.public_key, "sig": sig, "listen": None}))
    assert (await r.next())["t"] == "ok"
    return s, r


def test_forged_client_auth_is_refused(keys):
    a, b, ca, cb = keys
    mallory = NodeKey.generate()

    async def main():
        got = []
        async with trio.open_nursery() as n:
            port = await _server(n, a, ca, got)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            s = trio.SSLStream(tcp, tlsid.client_context(), server_hostname=None)
            await s.do_handshake()
            r = wire.FrameReader(s)
            hello = await r.next()
            # claims b's key but signs with mallory's: refused
            sig = mallory.sign(tlsid.auth_message(a.id, hello["nonce"], b.id))
            await s.send_all(wire.encode({"t": "auth", "id": 0, "key": b.public_key, "sig": sig, "listen": None}))
            with pytest.raises((trio.BrokenResourceError, wire.ProtocolError)):
                msg = await r.next()
                assert msg is None
                raise trio.BrokenResourceError
            await trio.sleep(0.1)
            assert isinstance(got[0], tlsid.PeerIdentityError)
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("bad", [
    struct.pack(">I", wire.MAX_FRAME + 1),                       # oversize length
    struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",              # not msgpack
    struct.pack(">I", 3) + msgpack.packb([1, 2]),                # not a map
    wire.encode({"t": "nonsense", "id": 1})[:0] + struct.pack(">I", len(msgpack.packb({"t": "nonsense", "id": 1}))) + msgpack.packb({"t": "nonsense", "id": 1}),
    # a map claiming 2**31 entries: the cap refuses it without allocating
    struct.pack(">I", 6) + b"\xdf\x80\x00\x00\x00" + b"\x00",
])
def test_malformed_and_oversize_frames_close_only_that_connection(keys, bad):
    a, b, ca, cb = keys

    async def main():
        got, violations = [], []
        async with trio.open_nursery() as n:
            ctx = tlsid.server_context(*ca)

            async def handle(tcp):
                c = await C.accept(tcp, a, ctx, on_violation=lambda p, why: violations.append((p, why)))
                got.append(c)
                await c.run(_echo)

            ls = await n.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = ls[0].socket.getsockname()[1]
            s, r = await _raw_client(port, b)
            await s.send_all(bad)
            msg = await r.next()
            assert msg["t"] == "error" and msg["code"] in (wire.E_MALFORMED, wire.E_TOO_LARGE)
            with trio.fail_after(5):
                await got[0].closed.wait()
            assert violations and violations[0][0] == b.id
            # the node still serves others
            good = await C.dial("127.0.0.1", port, b, tlsid.client_context(), expected=a.id)
            n.start_soon(good.run, _echo)
            assert (await good.request("ping"))["t"] == "ok"
            n.cancel_scope.cancel()

    trio.run(main)


def test_flood_is_answered_busy(keys):
    a, b, ca, cb = keys

    async def main():
        got = []
        async with trio.open_nursery() as n:
            port = await _server(n, a, ca, got, max_inflight=4)
            c = await C.dial("127.0.0.1", port, b, tlsid.client_context(), expected=a.id)
            n.start_soon(c.run, _echo)
            codes = []

            async def slow():
                try:
                    await c.request("records", timeout=1, m="00" * 20)
                except wire.RemoteError as e:
                    codes.append(e.code)
                except trio.TooSlowError:
                    codes.append("slow")

            async with trio.open_nursery() as m:
                for _ in range(8):
                    m.start_soon(slow)
            assert codes.count(wire.E_BUSY) == 4 and codes.count("slow") == 4
            n.cancel_scope.cancel()

    trio.run(main)


def test_slow_reader_does_not_starve_another_peer(keys):
    """A peer that never reads its replies fills only its own queue: another peer's
    requests are answered meanwhile."""
    a, b, ca, cb = keys
    big = os.urandom(1 << 20)

    async def handler(conn, msg):
        if msg["t"] == "want":
            for _ in range(64):
                await conn.reply(msg["id"], "block", b=["chunk", b"\0" * 32, big])
            await conn.reply(msg["id"], "done")
        else:
            await conn.reply(msg["id"], "ok")

    async def main():
        async with trio.open_nursery() as n:
            ctx = tlsid.server_context(*ca)

            async def handle(tcp):
                c = await C.accept(tcp, a, ctx)
                await c.run(handler)

            ls = await n.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = ls[0].socket.getsockname()[1]
            s, r = await _raw_client(port, b)  # asks for 64 MiB, never reads
            await s.send_all(wire.encode({"t": "want", "id": 1, "w": [["chunk", b"\0" * 32]]}))
            await trio.sleep(0.5)
            c = await C.dial("127.0.0.1", port, NodeKey.generate(), tlsid.client_context(), expected=a.id)
            n.start_soon(c.run, handler)
            with trio.fail_after(3):
                assert (await c.request("ping"))["t"] == "ok"
            n.cancel_scope.cancel()

    trio.run(main)
