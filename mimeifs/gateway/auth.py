"""Who may do what through the gateway: the node's access token and the rights check.

The token is derived from the node's ed25519 key (:func:`node_token`: blake3
``derive_key`` over the node's deterministic signature of a fixed label, the way the
RESP door derives its key), 64 hex characters; ``mimeifs gateway token`` prints it.
A request carries it as HTTP Basic (RFC 7617: any user name, the token as password,
which is what WebDAV clients such as rclone and davfs2 send), as ``Authorization:
Bearer <token>`` (RFC 6750), or as ``?token=<token>`` in the URL (for an HTML5
application's own links).

Rules (issue 15): every request that writes needs the token; a read needs it only when
the MiMei's ``rights`` (the info record's POSIX-like mode) do not let others read
(``rights & 0o004 == 0``). Whether a MiMei's cur is writable at all is the view's
decision (its author only: EACCES otherwise).
"""

from __future__ import annotations

import base64
import binascii
import hmac

import blake3
import time
from urllib.parse import parse_qs

from ..engine.errors import EngineError

TOKEN_LABEL = b"mimeifs gateway token v1"
TOKEN_CONTEXT = "mimeifs 2026 gateway token"
#: Seconds a MiMei's rights are believed before its info record is read again.
RIGHTS_TTL = 1.0
#: Methods that change something (RFC 9110 and RFC 4918).
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH", "MKCOL", "COPY", "MOVE",
                           "PROPPATCH", "LOCK", "UNLOCK"})


def node_token(key) -> str:
    """The gateway token of node key ``key`` (a :class:`~mimeifs.ids.NodeKey`), 64 hex:
    blake3 ``derive_key`` (context :data:`TOKEN_CONTEXT`) over the node's signature of
    :data:`TOKEN_LABEL`. Ed25519 signatures are deterministic (RFC 8032), so the token
    survives restarts; the signature is never shown, so only this node knows it."""
    return blake3.blake3(key.sign(TOKEN_LABEL), derive_key_context=TOKEN_CONTEXT).hexdigest()


def presented(authorization: str | None, query: str) -> str | None:
    """The token a request presents (Basic password, Bearer, or ``token=`` in the
    query string ``query``), or None."""
    if authorization:
        scheme, _, cred = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return cred.strip()
        if scheme == "basic":
            try:
                raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return raw.partition(":")[2]
    if query and "token=" in query:
        vals = parse_qs(query).get("token")
        if vals:
            return vals[0]
    return None


class Guard:
    """Checks requests against the node token ``token`` and the rights of the MiMei
    in ``engine``."""

    def __init__(self, engine, token: str):
        self.e = engine
        self.token = token
        self._rights: dict[str, tuple[bool, float]] = {}

    def valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def public(self, mimei: str) -> bool:
        """True if others may read ``mimei`` (rights & 0o004); False if unknown. The
        answer is kept for :data:`RIGHTS_TTL` seconds (a new info record takes effect
        within that time)."""
        if not mimei:
            return True
        now = time.monotonic()
        hit = self._rights.get(mimei)
        if hit is not None and now - hit[1] < RIGHTS_TTL:
            return hit[0]
        try:
            pub = bool(int(self.e.info(mimei).get("rights", 0)) & 0o004)
        except (EngineError, ValueError, TypeError):
            pub = False
        if len(self._rights) > 65536:
            self._rights.clear()
        self._rights[mimei] = (pub, now)
        return pub

    def allowed(self, method: str, mimei: str, given: str | None) -> bool:
        """Whether a request with ``method`` on ``mimei`` ("" outside any MiMei) and
        the presented token ``given`` may go on."""
        if method.upper() in WRITE_METHODS or not self.public(mimei):
            return self.valid(given)
        return True
