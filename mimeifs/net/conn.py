"""One authenticated, encrypted stream between two nodes, multiplexing requests.

:func:`dial` and :func:`accept` run the TLS 1.3 handshake and the client authentication
of ``tlsid.py`` (hello with a fresh nonce, auth with a signature, ok) and return a
:class:`Connection` whose ``peer_id`` is proven. Either side may then send requests; each
carries a request ID and its replies carry it back (``wire.py``), so many requests are in
flight on one stream at once (Bitswap's want list, Hypercore's request IDs).

Flow control, so that one slow reader cannot starve others:

- every connection has its own writer task and a bounded queue of outgoing frames
  (``send_queue`` frames); a task serving a peer that reads slowly waits on *that*
  peer's queue only, never on a lock shared with other peers;
- a peer may have at most ``max_inflight`` of its requests served at once; past that it
  is answered ``busy`` at once (a flood costs it, not the node);
- a ``cancel`` stops the task serving that want.

A protocol violation (oversize or malformed frame) is answered with an ``error`` frame
when possible, reported through ``on_violation`` and closes the connection; the node
goes on.
"""

from __future__ import annotations

import logging
import os
from typing import Awaitable, Callable

import trio

from ..ids import NodeKey
from . import tlsid
from .tlsstream import TLSStream
from .wire import (E_BUSY, E_INTERNAL, E_MALFORMED, MAX_FRAME, REPLIES, FrameReader, ProtocolError,
                   RemoteError, encode)

log = logging.getLogger("mimeifs.net")

HANDSHAKE_TIMEOUT = 10.0


class ServeError(Exception):
    """Raised by a request handler to answer with an ``error`` frame (``code``, ``msg``)."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


Handler = Callable[["Connection", dict], Awaitable[None]]


class Connection:
    """A live stream to ``peer_id`` (40 hex, proven by the handshake).

    ``peer_listen``: the (host, port) the peer says it listens on, or None.
    Call :meth:`run` (in a nursery) with the handler for incoming requests; it returns
    when the stream ends. :meth:`request` / :meth:`want` are the client side.
    Counters: ``bytes_in``, ``bytes_out`` (wire bytes after TLS framing is removed).
    """

    def __init__(self, stream, reader: FrameReader, peer_id: str, outbound: bool,
                 peer_listen: tuple | None = None, max_frame: int = MAX_FRAME,
                 max_inflight: int = 64, send_queue: int = 16,
                 on_violation: Callable[[str, str], None] | None = None,
                 on_reply: Callable[[str, str, int], None] | None = None):
        self.stream, self.reader, self.peer_id = stream, reader, peer_id
        self.outbound, self.peer_listen, self.max_frame = outbound, peer_listen, max_frame
        self.max_inflight = max_inflight
        self.on_violation = on_violation or (lambda peer, why: None)
        self.on_reply = on_reply  # (peer, type, frame bytes) of every reply received
        self._out_send, self._out_recv = trio.open_memory_channel(send_queue)
        self._pending: dict[int, trio.MemorySendChannel] = {}
        self._serving: dict[int, trio.CancelScope] = {}
        self._next_id = 1
        self.bytes_out = 0
        self.closed = trio.Event()
        self._nursery = None

    @property
    def bytes_in(self) -> int:
        return self.reader.bytes_in

    # ------------------------------------------------------------------ lifecycle
    async def run(self, handler: Handler) -> None:
        """Serve the connection until the stream ends or breaks; then fail every pending
        request of ours with ``RemoteError(E_INTERNAL, 'connection closed')``."""
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                n.start_soon(self._writer)
                try:
                    await self._read_loop(handler, n)
                except ProtocolError as e:
                    self.on_violation(self.peer_id, str(e))
                    log.warning("peer %s: %s; closing", self.peer_id[:12], e)
                    with trio.move_on_after(1):
                        await self.stream.send_all(encode({"t": "error", "re": 0, "code": e.code, "msg": str(e)}))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    log.info("peer %s: stream broke: %s", self.peer_id[:12], e)
                n.cancel_scope.cancel()
        finally:
            self.closed.set()
            for ch in list(self._pending.values()):
                ch.close()
            self._pending.clear()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    try:
                        await self.stream.aclose()
                    except Exception:
                        pass

    async def aclose(self) -> None:
        """Close the stream (the :meth:`run` loop then ends)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        else:
            await self.stream.aclose()

    async def _writer(self) -> None:
        try:
            async for frame in self._out_recv:
                await self.stream.send_all(frame)
                self.bytes_out += len(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("peer %s: send failed: %s", self.peer_id[:12], e)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    async def _read_loop(self, handler: Handler, nursery) -> None:
        while True:
            msg = await self.reader.next()
            if msg is None:
                return
            t = msg["t"]
            if t in REPLIES:
                if self.on_reply is not None:
                    self.on_reply(self.peer_id, t, self.reader.last_size)
                ch = self._pending.get(msg["re"])
                if ch is not None:
                    try:
                        ch.send_nowait(msg)
                    except trio.WouldBlock:  # the requester stopped reading: drop its request
                        self._pending.pop(msg["re"], None)
                        ch.close()
                    except trio.BrokenResourceError:
                        self._pending.pop(msg["re"], None)
                continue
            if t == "cancel":
                cs = self._serving.get(msg["re"])
                if cs is not None:
                    cs.cancel()
                continue
            if t in ("hello", "auth"):
                raise ProtocolError(E_MALFORMED, f"{t} after the handshake")
            rid = msg["id"]
            if len(self._serving) >= self.max_inflight or rid in self._serving:
                self.on_violation(self.peer_id, "busy")
                await self.send({"t": "error", "re": rid, "code": E_BUSY,
                                 "msg": f"more than {self.max_inflight} requests in flight"})
                continue
            cs = trio.CancelScope()
            self._serving[rid] = cs
            nursery.start_soon(self._serve, handler, msg, cs)

    async def _serve(self, handler: Handler, msg: dict, cs: trio.CancelScope) -> None:
        rid = msg["id"]
        try:
            with cs:
                try:
                    await handler(self, msg)
                except ServeError as e:
                    await self.send({"t": "error", "re": rid, "code": e.code, "msg": str(e)})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                except Exception as e:  # never let a peer's request take the node down
                    log.exception("serving %s to %s", msg.get("t"), self.peer_id[:12])
                    await self.send({"t": "error", "re": rid, "code": E_INTERNAL, "msg": type(e).__name__})
        finally:
            self._serving.pop(rid, None)

    # ------------------------------------------------------------------ sending
    async def send(self, msg: dict) -> None:
        """Queue one message (waits while this peer's queue is full). Raises
        trio.ClosedResourceError / BrokenResourceError once the connection is gone."""
        if self.closed.is_set():
            raise trio.ClosedResourceError("connection closed")
        await self._out_send.send(encode(msg, self.max_frame))

    async def send_frame(self, frame: bytes) -> None:
        """Queue one frame already encoded with :func:`wire.encode`."""
        if self.closed.is_set():
            raise trio.ClosedResourceError("connection closed")
        await self._out_send.send(frame)

    async def reply(self, rid: int, t: str, **fields) -> None:
        """Send a reply of type ``t`` to request ``rid``."""
        await self.send({"t": t, "re": rid, **fields})

    def _open(self, buffer: int) -> tuple[int, trio.MemoryReceiveChannel]:
        rid = self._next_id
        self._next_id += 1
        s, r = trio.open_memory_channel(buffer)
        self._pending[rid] = s
        return rid, r

    async def request(self, t: str, timeout: float = 30.0, **fields) -> dict:
        """Send request ``t`` and wait for its one reply. Raises RemoteError (an
        ``error`` reply or a closed connection) or trio.TooSlowError."""
        rid, ch = self._open(2)
        try:
            await self.send({"t": t, "id": rid, **fields})
            with trio.fail_after(timeout):
                try:
                    msg = await ch.receive()
                except trio.EndOfChannel:
                    raise RemoteError(E_INTERNAL, "connection closed", self.peer_id) from None
        finally:
            self._pending.pop(rid, None)
        if msg["t"] == "error":
            raise RemoteError(msg.get("code", 0), str(msg.get("msg", ""))[:500], self.peer_id)
        return msg

    async def want(self, wants: list, idle_timeout: float = 20.0) -> tuple[list, list]:
        """Ask for ``wants`` ([(kind, key)]); returns ``(blocks, dont_have)`` as the peer
        sent them (unverified: the caller checks). Raises RemoteError, TooSlowError
        (no frame for ``idle_timeout`` seconds; a ``cancel`` is sent)."""
        rid, ch = self._open(256)
        blocks, dont = [], []
        done = False
        try:
            await self.send({"t": "want", "id": rid, "w": [[k, bytes(h)] for k, h in wants]})
            while True:
                with trio.fail_after(idle_timeout):
                    try:
                        msg = await ch.receive()
                    except trio.EndOfChannel:
                        raise RemoteError(E_INTERNAL, "connection closed", self.peer_id) from None
                t = msg["t"]
                if t == "block":
                    blocks.append(msg.get("b"))
                elif t == "blocks":
                    bs = msg.get("bs")
                    if not isinstance(bs, list):
                        raise RemoteError(E_MALFORMED, "a blocks frame without a list", self.peer_id)
                    blocks.extend(bs)
                elif t == "dont_have":
                    dont.extend(msg.get("w") or ())
                elif t == "done":
                    done = True
                    return blocks, dont
                elif t == "error":
                    done = True
                    raise RemoteError(msg.get("code", 0), str(msg.get("msg", ""))[:500], self.peer_id)
        finally:
            self._pending.pop(rid, None)
            if not done and not self.closed.is_set():
                with trio.move_on_after(1) as cs:
                    cs.shield = True
                    try:
                        await self.send({"t": "cancel", "re": rid})
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        pass


# ---------------------------------------------------------------------- handshakes
async def dial(host: str, port: int, key: NodeKey, ctx, expected: str | None = None,
               listen: tuple | None = None, timeout: float = HANDSHAKE_TIMEOUT, **kw) -> Connection:
    """Connect to ``host:port``, prove both identities (module ``tlsid``) and return the
    connection. ``expected``: the node ID the server must have. Raises OSError,
    trio.TooSlowError, tlsid.PeerIdentityError, RemoteError, ProtocolError."""
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(host, port)
        s = TLSStream(tcp, ctx, server_side=False)
        try:
            await s.do_handshake()
            pid = tlsid.peer_id_of_cert(s.getpeercert(binary_form=True))
            if expected and pid != expected:
                raise tlsid.PeerIdentityError(f"{host}:{port} is node {pid}, not {expected}")
            if pid == key.id:
                raise tlsid.PeerIdentityError("dialed this node itself")
            r = FrameReader(s, kw.get("max_frame", MAX_FRAME))
            hello = await r.next()
            if not hello or hello["t"] != "hello" or not isinstance(hello.get("nonce"), bytes) \
                    or len(hello["nonce"]) != tlsid.NONCE_BYTES:
                raise ProtocolError(E_MALFORMED, "expected a hello with a nonce")
            sig = key.sign(tlsid.auth_message(pid, hello["nonce"], key.id))
            await s.send_all(encode({"t": "auth", "id": 0, "key": key.public_key, "sig": sig,
                                     "listen": list(listen) if listen else None}))
            ok = await r.next()
            if not ok or ok["t"] == "error":
                raise RemoteError((ok or {}).get("code", E_MALFORMED), str((ok or {}).get("msg", "refused")), pid)
            if ok["t"] != "ok":
                raise ProtocolError(E_MALFORMED, "expected ok after auth")
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(s)
            raise
    return Connection(s, r, pid, outbound=True, peer_listen=(host, port), **kw)


async def accept(tcp, key: NodeKey, ctx, timeout: float = HANDSHAKE_TIMEOUT, **kw) -> Connection:
    """Run the server side of the handshake on an accepted TCP stream. Raises like
    :func:`dial`; the caller closes nothing (the stream is closed on failure)."""
    s = TLSStream(tcp, ctx, server_side=True)
    try:
        with trio.fail_after(timeout):
            await s.do_handshake()
            nonce = os.urandom(tlsid.NONCE_BYTES)
            await s.send_all(encode({"t": "hello", "id": 0, "nonce": nonce, "node": key.id, "v": 1}))
            r = FrameReader(s, kw.get("max_frame", MAX_FRAME))
            auth = await r.next()
            if not auth or auth["t"] != "auth":
                raise ProtocolError(E_MALFORMED, "expected auth")
            pid = tlsid.check_auth(key.id, nonce, auth.get("key"), auth.get("sig"))
            if pid == key.id:
                raise tlsid.PeerIdentityError("a connection from this node itself")
            listen = auth.get("listen")
            if not (isinstance(listen, list) and len(listen) == 2 and isinstance(listen[0], str)
                    and isinstance(listen[1], int) and 0 < listen[1] < 65536):
                listen = None
            await s.send_all(encode({"t": "ok", "re": 0}))
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(s)
        raise
    return Connection(s, r, pid, outbound=False, peer_listen=tuple(listen) if listen else None, **kw)
