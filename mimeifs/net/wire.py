"""Frames and messages of the block-exchange stream (anchors: IPFS Bitswap 1.2, Hypercore).

A frame is a 4-byte big-endian length ``N`` (``0 < N <= max_frame``) followed by ``N``
bytes of msgpack: one map, string keys. A length past the limit is refused *before* its
body is read; the body is decoded with every msgpack size cap set to the frame limit
(msgpack's defaults are 100 MiB; ``unpackb`` of one length-checked frame is the
streaming decoder here: the length prefix bounds what is buffered), so a peer cannot make this node allocate more than one
frame's worth. Anything that is not a map with a known ``t`` is malformed.

Messages (``t``; ``id`` = request ID chosen by the sender of a request, unique per
connection direction; ``re`` = the request ID a reply answers):

====================  ========================================================  =========
``t``                 fields                                                    reply
====================  ========================================================  =========
``want``              ``w``: [[kind, key], ...]; ``have``: bool (only say if)   stream
``where``             ``w``: [chunk hash, ...] (at most 8192)                   ``have``
``cancel``            ``re``: the want to stop (Bitswap's cancel)               none
``records``           ``m``: MiMei ID (hex)                                     ``recs``   
``pin`` / ``unpin``   ``m``; ``all``: bool (all versions)                       ``ok``/err
``iou``               ``iou``: signed IOU record (credit.py)                    ``ok``/err
``ping``              -                                                         ``ok``
``hello`` / ``auth``  the handshake only (conn.py): nonce; key, sig, listen      ``ok``
====================  ========================================================  =========

Replies to a ``want``: any number of ``block`` (``b``: a Block as a list, see
``engine/fetch.py``) or ``blocks`` (``bs``: a list of them, small blocks sharing a frame), ``have`` / ``dont_have`` (``w``: wants), then ``done``; or
``error``. A want of kind ``pack`` (key: a pack ID learned from ``where``) is answered
with the whole pack as stored and no members (the asker knows which it wants). The
reply to ``where`` is one ``have`` with ``at``: [[hash, pack ID or nil, offset, length,
pack size], ...] for the chunks held. ``error`` carries ``code`` (below) and ``msg``; ``ok`` may carry fields.
"""

from __future__ import annotations

import struct

import msgpack
import trio

#: Largest frame accepted or sent (bytes after the length prefix). A pack is ~1 MiB
#: uncompressed (blocks.PACK_TARGET) plus at most one 256 KiB chunk.
MAX_FRAME = 8 << 20
_LEN = struct.Struct(">I")

# Error codes (Bitswap has none; these follow Hypercore's and HTTP's spirit).
E_MALFORMED = 1     # frame or message not understood: the connection is closed
E_TOO_LARGE = 2     # frame over the limit: the connection is closed
E_NOT_FOUND = 3     # this node does not hold it
E_FORBIDDEN = 4     # the MiMei's rights do not let this peer read it
E_CREDIT = 5        # past the letter of credit (or none, or revoked)
E_BUSY = 6          # too many requests in flight from this peer
E_INTERNAL = 7      # this node failed; try another provider
E_DECLINED = 8      # a pin request declined by policy (space, credit)
E_BAD_RECORD = 9    # a record (IOU, ...) that does not verify

CODE_NAMES = {E_MALFORMED: "malformed", E_TOO_LARGE: "too-large", E_NOT_FOUND: "not-found",
              E_FORBIDDEN: "forbidden", E_CREDIT: "credit", E_BUSY: "busy", E_INTERNAL: "internal",
              E_DECLINED: "declined", E_BAD_RECORD: "bad-record"}

REQUESTS = frozenset({"want", "where", "cancel", "records", "pin", "unpin", "iou", "ping", "hello", "auth"})
REPLIES = frozenset({"block", "blocks", "have", "dont_have", "done", "recs", "ok", "error"})


class ProtocolError(Exception):
    """A peer broke the protocol (malformed or oversize frame); ``code`` is the wire
    error code. The connection is closed and the peer is counted against."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


class RemoteError(Exception):
    """A peer answered a request with an ``error`` message."""

    def __init__(self, code: int, msg: str, peer: str = ""):
        super().__init__(f"{peer[:12] + ': ' if peer else ''}{CODE_NAMES.get(code, code)}: {msg}")
        self.code, self.msg, self.peer = code, msg, peer


def encode(msg: dict, max_frame: int = MAX_FRAME) -> bytes:
    """One frame (length prefix + msgpack) for ``msg``. Raises ProtocolError if it
    would pass ``max_frame`` (the sender's bug, never put on the wire)."""
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > max_frame:
        raise ProtocolError(E_TOO_LARGE, f"frame of {len(body)} bytes over the {max_frame}-byte limit")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes, max_frame: int = MAX_FRAME) -> dict:
    """Decode one frame body with every msgpack cap set. Raises ProtocolError."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                              max_str_len=max_frame, max_bin_len=max_frame, max_array_len=max_frame,
                              max_map_len=max_frame, max_ext_len=0)
    except Exception as e:  # msgpack raises several types (ValueError, ExtraData, StackError...)
        raise ProtocolError(E_MALFORMED, f"undecodable frame: {type(e).__name__}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError(E_MALFORMED, "a frame is a map with a string 't'")
    t = msg["t"]
    if t not in REQUESTS and t not in REPLIES:
        raise ProtocolError(E_MALFORMED, f"unknown message type {t[:32]!r}")
    rid = msg.get("re" if t in REPLIES or t == "cancel" else "id")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 1 << 63:
        raise ProtocolError(E_MALFORMED, f"{t} without a valid request ID")
    return msg


class FrameReader:
    """Reads frames from a trio stream (``receive_some``, or ``read_exact`` of
    ``tlsstream.TLSStream``). ``await next()`` returns a decoded message, or None at a
    clean end of stream. Raises ProtocolError for an oversize length (before reading the
    body), a truncated frame, a body not completed within ``frame_timeout`` seconds of
    its length (a peer that stalls mid-frame), or a malformed body."""

    def __init__(self, stream, max_frame: int = MAX_FRAME, frame_timeout: float = 60.0):
        self.stream = stream
        self.frame_timeout = frame_timeout
        self.max_frame = max_frame
        self.buf = bytearray()
        self.bytes_in = 0
        self.last_size = 0

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            data = await self.stream.receive_some(max(n - len(self.buf), 1 << 18))
            if not data:
                return False
            self.bytes_in += len(data)
            self.buf += data
        return True

    async def next(self) -> dict | None:
        read_exact = getattr(self.stream, "read_exact", None)
        if read_exact is not None and not self.buf:
            return await self._next_exact(read_exact)
        if not await self._fill(4):
            if self.buf:
                raise ProtocolError(E_MALFORMED, "stream ended inside a frame length")
            return None
        (n,) = _LEN.unpack_from(self.buf)
        if n == 0 or n > self.max_frame:
            raise ProtocolError(E_TOO_LARGE, f"frame of {n} bytes refused (limit {self.max_frame})")
        if not await self._fill(4 + n):
            raise ProtocolError(E_MALFORMED, "stream ended inside a frame")
        body = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        self.last_size = 4 + n
        return decode_body(body, self.max_frame)

    async def _next_exact(self, read_exact) -> dict | None:
        """The same, decrypting each part straight into its buffer (``TLSStream``)."""
        hdr = await read_exact(4)  # a broken stream raises trio.BrokenResourceError
        if hdr is None:
            return None
        (n,) = _LEN.unpack_from(hdr)
        if n == 0 or n > self.max_frame:
            raise ProtocolError(E_TOO_LARGE, f"frame of {n} bytes refused (limit {self.max_frame})")
        try:
            with trio.fail_after(self.frame_timeout):
                body = await read_exact(n)
        except trio.TooSlowError:
            raise ProtocolError(E_MALFORMED, f"a frame of {n} bytes not completed within "
                                             f"{self.frame_timeout:g} s") from None
        if body is None:
            raise ProtocolError(E_MALFORMED, "stream ended after a frame length")
        self.bytes_in += 4 + n
        self.last_size = 4 + n
        return decode_body(body, self.max_frame)
