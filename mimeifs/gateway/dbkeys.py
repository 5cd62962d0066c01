"""``GET /db/<id>/<ver>/<key>``: one key of a db MiMei as JSON, for HTML5 applications.

``<id>`` is a MiMei ID (or this node's mark), ``<ver>`` ``cur`` | ``last`` | ``release``
| a number, and ``<key>`` the rest of the path (percent-decoded, so a key may hold
``/``; the path arrives decoded). The answer is the key's JSON record in the db export format
(:func:`mimeifs.engine.kvsnap.key_line`): ``{"type": "string"|"hash"|"list"|"set"|"zset",
"key": ..., "value": ..., "expire_at": ms?}``; 404 for a missing or expired key, a MiMei
that is not a db or a version it does not have.

Read rights are the db door's (the RESP door answers NOAUTH before AUTH): the node's
gateway token, or a db token (``mimeifs db token SPEC[@N]``, :mod:`mimeifs.tokens`)
granting this MiMei at this version (a cur token reads cur, a version's token that
version; ``last`` and ``release`` are read with a token for the number they name). The
MiMei's file ``rights`` do not open a database. A version is opened as the RESP door
opens it (:func:`~mimeifs.engine.kvsnap.version_ns`: built from the version's files on
first use, fetched if missing), so the whole request runs in a worker thread.
"""

from __future__ import annotations

from .. import ids
from ..engine.errors import NotFound
from .places import _version_number


class DbKeys:
    """Reads keys of db MiMei for the gateway (see module docstring). ``guard`` checks
    the node token; db tokens are checked with the node key."""

    def __init__(self, view, guard):
        from ..tokens import Tokens
        self.view = view
        self.e = view.e
        self.guard = guard
        self.tokens = Tokens(self.e.store.key)

    def parse(self, path: str) -> tuple[str, str, bytes]:
        """(MiMei ID, version word, key) of ``/db/<id>/<ver>/<key>``; NotFound else."""
        parts = path.split("/", 4)  # "", "db", id, ver, key
        if len(parts) != 5 or parts[1] != "db" or not parts[4]:
            raise NotFound("a db key is /db/<id>/<ver>/<key>")
        spec, ver, key = parts[2], parts[3], parts[4]
        mid = spec if ids.is_id(spec) else self.e.mark_id(spec)
        if mid is None or not self.e.exists(mid):
            raise NotFound(f"no MiMei {spec!r}")
        if "\0" in key:
            raise NotFound("bad key")
        return mid, ver, key.encode("utf-8", "surrogateescape")

    def allowed(self, mid: str, version: str, given: str | None) -> bool:
        """The node token, or a db token for ``mid`` at ``version`` ("cur" or a number)."""
        if self.guard.valid(given):
            return True
        g = self.tokens.check(given) if given else None
        return g is not None and g.mimei == mid and g.version == version

    def read(self, path: str, given: str | None) -> tuple[int, dict, bytes]:
        """(status, facts, body) for a GET of ``path``; facts carry ``mimei``,
        ``version`` and ``immutable``. Blocking: call from a worker thread."""
        from ..engine import kvsnap
        from ..engine.kv import Keyspace
        mid, ver, key = self.parse(path)
        if self.e.info(mid).get("mimei_type") != "db":
            raise NotFound(f"{mid} is not a db MiMei")
        if ver == "cur":
            version, immutable = "cur", False
        elif ver in ("last", "release"):
            version, immutable = str(_version_number(self.view, mid, ver)), False
        elif ver.isdigit() and str(int(ver)) == ver:
            version, immutable = ver, True
        else:
            raise NotFound(f"no version {ver!r}")
        facts = {"mimei": mid, "version": version, "immutable": immutable}
        if not self.allowed(mid, version, given):
            return 401, facts, b'{"error":"a db needs the node token or a db token for this version"}\n'
        if version == "cur":
            ns = bytes.fromhex(mid)
        else:
            try:
                ns = kvsnap.version_ns(self.e, mid, int(version))
            except (KeyError, ValueError):
                raise NotFound(f"no db version {version} of {mid}") from None
        store = self.e.store
        with store.read() as txn:
            ks = Keyspace(store, ns, txn, False, track_dirty=False)
            h = ks.head(key)
            if h is None:
                return 404, facts, b'{"error":"no such key"}\n'
            return 200, facts, kvsnap.key_line(ks, key, *h)
