"""The gateway's small pure parts: bind addresses, byte ranges, tokens, URL places."""

from __future__ import annotations

import base64

import pytest

from mimeifs.engine.errors import NotFound
from mimeifs.gateway.auth import Guard, presented
from mimeifs.gateway.places import split
from mimeifs.gateway.service import parse_bind
from mimeifs.gateway.web import parse_range
from mimeifs.ids import NodeKey


def test_parse_bind_defaults_to_loopback():
    assert parse_bind("8080") == "127.0.0.1:8080"
    assert parse_bind(":8080") == "127.0.0.1:8080"
    assert parse_bind("127.0.0.1:0") == "127.0.0.1:0"
    assert parse_bind("[::1]:9000") == "[::1]:9000"
    assert parse_bind("0.0.0.0:80") == "0.0.0.0:80"  # only when the user names it
    for bad in ("", "host", "1.2.3.4:", "1.2.3.4:99999", "::1:80", "x:-1"):
        with pytest.raises(ValueError):
            parse_bind(bad)


@pytest.mark.parametrize("header,size,want", [
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=90-", 100, (90, 10)),
    ("bytes=-10", 100, (90, 10)),
    ("bytes=-1000", 100, (0, 100)),
    ("bytes=50-5000", 100, (50, 50)),
    ("bytes=100-", 100, "unsatisfiable"),
    ("bytes=-0", 100, "unsatisfiable"),
    ("bytes=0-0", 0, "unsatisfiable"),
    ("bytes=5-1", 100, None),
    ("bytes=0-1,3-4", 100, None),
    ("items=0-1", 100, None),
    ("bytes=a-b", 100, None),
    ("bytes=7", 100, None),
])
def test_parse_range(header, size, want):
    assert parse_range(header, size) == want


def test_token_is_derived_and_presented_three_ways():
    k1, k2 = NodeKey.from_seed(b"\1" * 32), NodeKey.from_seed(b"\2" * 32)
    from mimeifs.gateway.auth import node_token
    t1 = node_token(k1)
    assert t1 == node_token(NodeKey.from_seed(b"\1" * 32)) and t1 != node_token(k2)
    assert len(t1) == 64 and k1.public_key.hex() not in t1
    basic = "Basic " + base64.b64encode(f"anyone:{t1}".encode()).decode()
    assert presented(basic, "") == t1
    assert presented(f"Bearer {t1}", "") == t1
    assert presented(None, f"a=1&token={t1}") == t1
    assert presented("Basic !!!notbase64", "") is None
    assert presented(None, "") is None
    g = Guard(engine=None, token=t1)
    assert g.valid(t1) and not g.valid(t1[:-1] + "0") and not g.valid(None)
    assert g.allowed("GET", "", None)  # listing levels are public
    assert not g.allowed("PUT", "", None) and g.allowed("PUT", "", t1)


@pytest.mark.parametrize("path", ["/a/../b", "/..", "/a/b\0c", "/%00"[:2] + "\0"])
def test_split_refuses_dotdot_and_nul(path):
    with pytest.raises(NotFound):
        split(path)


def test_split_skips_empty_and_dot():
    assert split("//mm/./x//y/") == ["mm", "x", "y"]
    assert split("/...") == ["..."]  # a name, not a parent


def test_check_bind_says_why():
    import socket

    from mimeifs.gateway.service import check_bind
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_bind(f"127.0.0.1:{port}")
    check_bind(f"127.0.0.1:{port}")  # free again
