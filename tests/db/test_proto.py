"""The request parser alone: any split of a pipelined stream of RESP and inline commands
gives the same commands; garbage only ever gives a ProtocolError, quickly."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mimeifs.resp.proto import MAX_ARGS, ProtocolError, RequestParser, split_inline

ARG = st.binary(max_size=40)
RESP_CMD = st.lists(ARG, min_size=1, max_size=6)
INLINE_CMD = st.lists(st.text("abcxyz019:-_", min_size=1, max_size=8), min_size=1, max_size=4)


def enc(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(RESP_CMD, INLINE_CMD), min_size=1, max_size=12), st.data())
def test_any_split_gives_the_same_commands(cmds, data):
    stream, want = b"", []
    for c in cmds:
        if c and isinstance(c[0], str):
            stream += " ".join(c).encode() + b"\r\n"
            want.append([x.encode() for x in c])
        else:
            stream += enc(c)
            want.append(c)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    p, got, last = RequestParser(), [], 0
    for cut in cuts + [len(stream)]:
        p.feed(stream[last:cut])
        last = cut
        out, err = p.commands()
        assert err is None
        got += out
    assert got == want and p.pending() == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(
    [b"*", b"$", b"\r\n", b"*2000000000\r\n", b"$-1\r\n", b"*1\r\n", b":5\r\n", b"+OK\r\n", b"$3\r\nabc\r\n",
     b"*-1\r\n", b"\n", b'"', b"'", b"$99999999999\r\n"])), max_size=20))
def test_garbage_is_a_protocol_error_or_commands(pieces):
    p = RequestParser()
    t = time.monotonic()
    for piece in pieces:
        p.feed(piece)
        out, err = p.commands()
        assert all(isinstance(c, list) and all(isinstance(a, bytes) for a in c) for c in out)
        if err is not None:
            assert isinstance(err, ProtocolError) and str(err).startswith("ERR Protocol error")
            break
    assert time.monotonic() - t < 1.0


def test_limits_and_claims():
    for data in (b"*%d\r\n" % (MAX_ARGS + 1), b"*2000000000\r\nabc", b"*1\r\n$1073741824\r\n",
                 b"*1\r\n$4\r\nPING\r\n*2000000000\r\nabc", b"x" * (65 << 10),
                 # aggregates inside a request never reach hiredis (it spends seconds on them)
                 b"*1\r\n*2000000000\r\nabc", b"*1\r\n~2000000000\r\nabc", b"*1\r\n>2000000000\r\nx",
                 b"*1\r\n$+3\r\nabc\r\n"):
        p = RequestParser()
        p.feed(data)
        t = time.monotonic()
        out, err = p.commands()
        assert isinstance(err, ProtocolError), data[:30]
        assert time.monotonic() - t < 0.5
        assert out == ([[b"PING"]] if data.startswith(b"*1\r\n$4") else [])


def test_inline_quoting_as_redis():
    assert split_inline(b'set "a b" \'c\\\'d\' "\\x41\\n"') == [b"set", b"a b", b"c'd", b"A\n"]
    assert split_inline(b"  \t ") == []
