"""Tokens that open a db MiMei over RESP: which MiMei, which version, which right.

A token is ``mmdb1.<mimei id>.<version>.<right>.<mac>`` where version is ``cur``,
``last``, ``release`` or a number, right is ``rw`` or ``ro``, and mac is the first 16
bytes (hex) of HMAC-SHA256 (RFC 2104, Python's ``hmac``) over the preceding fields, keyed
by a key derived from this node's ed25519 key (blake3 ``derive_key`` of the node's
deterministic signature of a fixed context string), so only this node mints them and
they survive restarts. A token has no spaces and fits ``redis-cli -a``,
``redis://:TOKEN@host`` and any client that only knows a password.
"""

from __future__ import annotations

import hmac
import re
from typing import NamedTuple

import blake3

_CTX = b"mimeifs 2026 db token key v1"
_TOKEN_RE = re.compile(r"mmdb1\.([0-9a-f]{40})\.(cur|last|release|[0-9]{1,10})\.(rw|ro)\.([0-9a-f]{32})\Z")


class Grant(NamedTuple):
    """What a token allows: ``mimei`` (40 hex), ``version`` ("cur", "last", "release"
    or a number as a string) and ``writable`` (only meaningful for cur)."""
    mimei: str
    version: str
    writable: bool


def _key(node_key) -> bytes:
    material = node_key.sign(_CTX)  # ed25519 signatures are deterministic (RFC 8032)
    return blake3.blake3(material, derive_key_context="mimeifs 2026 db token hmac").digest()


class Tokens:
    """Mints and checks tokens with the node key ``node_key`` (``ids.NodeKey``)."""

    def __init__(self, node_key):
        self._k = _key(node_key)

    def _mac(self, body: str) -> str:
        return hmac.new(self._k, body.encode(), "sha256").hexdigest()[:32]

    def mint(self, mimei: str, version: str = "cur", read_only: bool = False) -> str:
        """A token for ``mimei`` at ``version``; versions are always read-only."""
        version = str(version)
        right = "ro" if read_only or version != "cur" else "rw"
        body = f"mmdb1.{mimei}.{version}.{right}"
        return f"{body}.{self._mac(body)}"

    def check(self, token: bytes | str) -> Grant | None:
        """The grant of a valid token, else None (constant-time MAC comparison)."""
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                return None
        m = _TOKEN_RE.match(token)
        if m is None:
            return None
        body = token[:token.rindex(".")]
        if not hmac.compare_digest(self._mac(body), m.group(4)):
            return None
        return Grant(m.group(1), m.group(2), m.group(3) == "rw")
