"""RESP framing for the db door: requests in, replies out.

Requests: RESP arrays of bulk strings (the Redis protocol spec,
https://redis.io/docs/reference/protocol-spec/) parsed by ``hiredis.Reader``, and inline
commands (``PING\\r\\n`` as telnet and ``redis-cli`` send) split as Redis's
``sdssplitargs`` does. hiredis has no limits of its own, so :class:`RequestParser` walks
each frame's headers first and feeds hiredis only whole frames that are within the
limits, modelled on Redis's ``proto-max-bulk-len`` (512 MB there), 1024*1024 arguments,
``PROTO_INLINE_MAX_SIZE`` (64 KiB) and ``client-query-buffer-limit`` (1 GiB there).
Nothing is allocated for a length a client only claims: bytes are buffered only as they
arrive, and a claim over a limit is refused at its header.

Replies: :func:`encode` writes RESP2, or RESP3 after ``HELLO 3`` (maps, sets, doubles,
nulls), from the reply types of ``engine.kv``.
"""

from __future__ import annotations

import re

import hiredis

from ..engine.kv import Double, Map, NilArray, ReplyError, Scored, SetReply, Status, fmt_double

MAX_BULK = 64 << 20          # bytes in one argument
MAX_ARGS = 1 << 20           # arguments in one command
MAX_INLINE = 64 << 10        # bytes in one inline command line
MAX_FRAME = 256 << 20        # bytes of one command (the query buffer bound)


class ProtocolError(Exception):
    """The client broke the protocol; the message is Redis's, the connection closes."""


def split_inline(line: bytes) -> list[bytes]:
    """Arguments of an inline command, as Redis's sdssplitargs: blanks separate,
    "double quotes" with \\n \\r \\t \\b \\a \\\\ \\" \\xHH escapes, 'single quotes' with \\'.
    Raises :class:`ProtocolError` on unbalanced quotes."""
    out, i, n = [], 0, len(line)
    esc = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
    hexd = b"0123456789abcdefABCDEF"
    while True:
        while i < n and line[i] in b" \t\n\r\v\f\x00":
            i += 1
        if i >= n:
            return out
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 3 < n and line[i + 1] == ord("x") and line[i + 2] in hexd and line[i + 3] in hexd:
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(esc.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                    inq = False
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                    insq = False
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in b" \t\n\r\v\f\x00":
                    break
                if c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            i += 1
        out.append(bytes(cur))


def check_frame(buf, pos: int) -> int | None:
    """Walk the headers of the RESP frame at ``buf[pos]``: its end if it is complete,
    None if more bytes must come. Raises :class:`ProtocolError` (Redis's words) for a
    malformed header or a length over the limits, whether or not its bytes came."""
    n, find = len(buf), buf.find
    e = find(b"\r\n", pos)
    if e < 0:
        if n - pos > 32:
            raise ProtocolError("ERR Protocol error: too big mbulk count string")
        return None
    try:
        count = int(buf[pos + 1:e])
    except ValueError:
        raise ProtocolError("ERR Protocol error: invalid multibulk length") from None
    if count > MAX_ARGS:
        raise ProtocolError("ERR Protocol error: invalid multibulk length")
    p = e + 2
    for _ in range(count):
        if p >= n:
            return None
        if buf[p] != 36:  # '$'
            got = chr(buf[p]) if 32 < buf[p] < 127 else "?"
            raise ProtocolError(f"ERR Protocol error: expected '$', got '{got}'")
        e = find(b"\r\n", p)
        if e < 0:
            if n - p > 32:
                raise ProtocolError("ERR Protocol error: too big bulk count string")
            return None
        try:
            ln = int(buf[p + 1:e])
        except ValueError:
            raise ProtocolError("ERR Protocol error: invalid bulk length") from None
        if not 0 <= ln <= MAX_BULK:
            raise ProtocolError("ERR Protocol error: invalid bulk length")
        p = e + 2 + ln + 2
        if p - pos > MAX_FRAME:
            raise ProtocolError("ERR Protocol error: command too big (query buffer limit)")
        if p > n:
            return None
    return p


_COUNT = re.compile(rb"\*(-?[0-9]{1,19})\r\n")
_BULK = re.compile(rb"\$([0-9]{1,19})\r\n")


class RequestParser:
    """Incremental request parser with limits. ``feed(data)`` then ``commands()`` gives
    every complete command (a list of bytes arguments; empty inline lines are skipped)
    and the protocol error that follows them, if any (the caller replies and closes).

    Every frame's headers are walked (two compiled regular expressions) before hiredis
    sees a byte of it: hiredis has no limits, and an aggregate header it should never
    meet inside a request (``*1\r\n*2000000000\r\n...``) costs it seconds. The walk
    also finds inline commands between frames; the whole frames of one read are then
    parsed by hiredis in one feed. A frame that is not whole yet is walked again when
    more bytes come, so a claimed length over the limits is refused at its header.
    """

    __slots__ = ("buf", "pos", "reader")

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0
        self.reader = hiredis.Reader()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def pending(self) -> int:
        return len(self.buf) - self.pos

    def commands(self) -> tuple[list[list[bytes]], ProtocolError | None]:
        """(complete commands, the protocol error that follows them or None)."""
        out: list = []
        try:
            self._commands(out)
        except ProtocolError as e:
            return out, e
        return out, None

    def _commands(self, out: list) -> None:
        buf, pos, n = self.buf, self.pos, len(self.buf)
        start = pos      # first frame not yet given to hiredis
        nframes = 0
        count_match, bulk_match = _COUNT.match, _BULK.match
        try:
            while pos < n:
                if buf[pos] != 42:  # not '*': an inline command
                    if nframes:
                        self._hiredis(start, pos, nframes, out)
                        nframes = 0
                    e = buf.find(b"\n", pos, pos + MAX_INLINE + 2)
                    if e < 0:
                        if n - pos > MAX_INLINE:
                            raise ProtocolError("ERR Protocol error: too big inline request")
                        break
                    args = split_inline(bytes(buf[pos:e]))
                    if args:
                        out.append(args)
                    pos = start = e + 1
                    continue
                m = count_match(buf, pos)
                if m is None:
                    if check_frame(buf, pos) is None:  # raises for a malformed header
                        break
                    raise ProtocolError("ERR Protocol error: invalid multibulk length")
                count = int(m.group(1))
                if count > MAX_ARGS:
                    raise ProtocolError("ERR Protocol error: invalid multibulk length")
                p = m.end()
                whole = True
                for _ in range(count):
                    mb = bulk_match(buf, p)
                    if mb is None:
                        if check_frame(buf, pos) is None:  # raises for a malformed one
                            whole = False
                            break
                        raise ProtocolError("ERR Protocol error: invalid bulk length")
                    ln = int(mb.group(1))
                    if ln > MAX_BULK:
                        raise ProtocolError("ERR Protocol error: invalid bulk length")
                    p = mb.end() + ln + 2
                    if p - pos > MAX_FRAME:
                        raise ProtocolError("ERR Protocol error: command too big (query buffer limit)")
                    if p > n:
                        whole = False
                        break
                if not whole:
                    break
                if count <= 0:  # '*0' / '*-1': nothing to run (Redis skips them)
                    if nframes:
                        self._hiredis(start, pos, nframes, out)
                        nframes = 0
                    start = p
                else:
                    nframes += 1
                pos = p
        except ProtocolError:
            if nframes:  # the whole frames before the bad one still run
                self._hiredis(start, pos, nframes, out)
            raise
        if nframes:
            self._hiredis(start, pos, nframes, out)
        if pos >= len(buf):
            buf.clear()
            self.pos = 0
        elif pos > 1 << 16:
            del buf[:pos]
            self.pos = 0
        else:
            self.pos = pos

    def _hiredis(self, start: int, end: int, nframes: int, out: list) -> None:
        r = self.reader
        r.feed(self.buf, start, end - start)
        for _ in range(nframes):
            cmd = r.gets()
            if type(cmd) is not list:
                raise ProtocolError("ERR Protocol error: unparsable request")
            out.append(cmd)


# ---------------------------------------------------------------------- replies
_OK = b"+OK\r\n"
_NULL2, _NULL3 = b"$-1\r\n", b"_\r\n"
_NULLA2 = b"*-1\r\n"


def encode(r, out: list, proto: int = 2) -> None:
    """Append the RESP encoding of reply ``r`` to ``out`` (a list of bytes)."""
    t = type(r)
    if t is bytes:
        out.append(b"$%d\r\n%b\r\n" % (len(r), r))
    elif t is int:
        out.append(b":%d\r\n" % r)
    elif t is Status:
        out.append(_OK if r == "OK" else b"+" + r.encode() + b"\r\n")
    elif r is None:
        out.append(_NULL3 if proto == 3 else _NULL2)
    elif t is list:
        out.append(b"*%d\r\n" % len(r))
        for x in r:
            if type(x) is bytes:
                out.append(b"$%d\r\n%b\r\n" % (len(x), x))
            else:
                encode(x, out, proto)
    elif t is ReplyError or isinstance(r, ReplyError):
        msg = str(r).replace("\r", " ").replace("\n", " ")
        out.append(b"-" + msg.encode(errors="replace") + b"\r\n")
    elif t is Double:
        if proto == 3:
            f = fmt_double(r)
            out.append(b"," + f + b"\r\n")
        else:
            f = fmt_double(r)
            out.append(b"$%d\r\n%b\r\n" % (len(f), f))
    elif t is Map:
        out.append((b"%%%d\r\n" % len(r)) if proto == 3 else (b"*%d\r\n" % (2 * len(r))))
        for k, v in r:
            encode(k, out, proto)
            encode(v, out, proto)
    elif t is SetReply:
        out.append((b"~%d\r\n" if proto == 3 else b"*%d\r\n") % len(r))
        for x in r:
            encode(x, out, proto)
    elif t is Scored:
        if proto == 3:
            out.append(b"*%d\r\n" % len(r))
            for m, s in r:
                out.append(b"*2\r\n")
                encode(m, out, proto)
                encode(s, out, proto)
        else:
            out.append(b"*%d\r\n" % (2 * len(r)))
            for m, s in r:
                encode(m, out, proto)
                encode(s, out, proto)
    elif isinstance(r, NilArray):
        out.append(_NULL3 if proto == 3 else _NULLA2)
    elif t is str:
        b = r.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    elif t is bool:
        out.append((b"#t\r\n" if r else b"#f\r\n") if proto == 3 else (b":1\r\n" if r else b":0\r\n"))
    elif isinstance(r, (list, tuple)):
        encode(list(r), out, proto)
    else:
        raise TypeError(f"no RESP encoding for {t.__name__}")
