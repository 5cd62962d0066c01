"""MiMei this node holds but did not author: verified records from elsewhere, read-only.

DESIGN.md "Network": "every version record [is checked] against its author's signature";
issue 10: "the engine can be told about a MiMei it does not hold (a signed info record and
version records from elsewhere, verified against the author's key) and show it read-only".

A remote MiMei's local state is ``{"cur": None, "last": n, "release": pointer|None,
"remote": True, "pinned": bool}``: it has versions, no cur. Its objects arrive lazily
through the chunk store's fetcher and are a *cache*: ``gc`` keeps them only while the
MiMei is pinned (:func:`set_pinned`), and ``check`` does not count a missing piece of an
unpinned one as damage.

Rules for records (BEP 44's "never downgrade", applied per version number):

- the info record verifies, its ``author`` is its signer, and its ``id`` is the MiMei ID
  derived from (author, app type, MiMei type, mark) (``ids.mimei_id``): a record cannot
  claim somebody else's MiMei;
- every version and release record verifies with the author's key and names this MiMei;
- a version number already held is never replaced (an author who signs two different
  ``v/3`` does not get to change what this node shows), so ``last`` only grows;
- a newer release pointer (by its signed time) replaces an older one.

One bad record refuses the whole set (:class:`~.errors.Corrupt`): a peer that forges is
not half-believed.
"""

from __future__ import annotations

import json
import struct

from .. import ids
from .errors import ChunkMissing, Corrupt, NotFound, PermissionDenied
from .fetch import FetchError, fetching_allowed

_N = struct.Struct(">I")
MAX_VERSIONS = 1 << 20
_KINDS = ("fs", "file", "db")


def _int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi


def verify_records(records: dict) -> tuple[str, dict, list[dict], dict | None]:
    """Check a record set ``{"info", "versions", "release"}`` from elsewhere.

    Returns (MiMei ID, info, versions sorted by n, release or None). Raises
    :class:`Corrupt` saying which record fails and why."""
    if not isinstance(records, dict) or not isinstance(records.get("info"), dict):
        raise Corrupt("records lack a MiMei info record")
    info = records["info"]
    try:
        author = ids.verify_record(info)
    except ids.BadSignature as e:
        raise Corrupt(f"MiMei info: {e}") from None
    try:
        mid = ids.mimei_id(author, info["app_type"], info["mimei_type"], info["mark"])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise Corrupt(f"MiMei info lacks a field: {e}") from None
    if info.get("type") != "mimei" or info.get("author") != author or info.get("id") != mid:
        raise Corrupt("MiMei info: its ID does not derive from its signing author")
    if info["mimei_type"] not in _KINDS:
        raise Corrupt(f"MiMei info: unknown type {info['mimei_type']!r}")
    versions = records.get("versions") or []
    if not isinstance(versions, list) or len(versions) > MAX_VERSIONS:
        raise Corrupt("versions must be a list")
    out = []
    for rec in versions:
        _check_signed(rec, author, mid, "version")
        if not _int(rec.get("n"), 0, 1 << 32) or rec.get("kind") not in _KINDS \
                or not ids.is_hash(rec.get("root")) or not _int(rec.get("size"), 0, 1 << 63):
            raise Corrupt(f"version record of {mid} is malformed")
        refs = rec.get("refs", [])
        if not isinstance(refs, list) or not all(ids.is_id(t) for t in refs):
            raise Corrupt(f"version {rec['n']} of {mid}: malformed refs")
        out.append(rec)
    out.sort(key=lambda r: r["n"])
    rel = records.get("release")
    if rel is not None:
        _check_signed(rel, author, mid, "release")
        if not _int(rel.get("n"), 0, 1 << 32):
            raise Corrupt(f"release pointer of {mid} is malformed")
    return mid, info, out, rel


def _check_signed(rec, author: str, mid: str, kind: str) -> None:
    try:
        ids.verify_record(rec, author)
    except ids.BadSignature as e:
        raise Corrupt(f"{kind} record of {mid}: {e}") from None
    if rec.get("type") != kind or rec.get("mimei") != mid or rec.get("author") != author:
        raise Corrupt(f"{kind} record does not belong to {mid}")


def adopt(engine, records: dict) -> str:
    """Store a verified record set (see :func:`verify_records`) as a remote MiMei, or
    add its newer versions; returns the MiMei ID. A MiMei this node authored or holds as
    its own is left as it is. Listeners (``engine.subscribe``) hear of a change."""
    mid, info, versions, rel = verify_records(records)
    m20 = bytes.fromhex(mid)
    if info["author"] == engine.node_id:
        return mid
    changed = False
    with engine.store.write() as txn:
        raw = txn.get(m20, db=engine.d_state)
        st = json.loads(raw) if raw is not None else None
        if st is not None and not st.get("remote"):
            return mid
        if st is None:
            st = {"cur": None, "last": None, "release": None, "remote": True, "pinned": False}
            txn.put(m20, ids.canonical(info), db=engine.d_mimei)
            changed = True
        for rec in versions:
            key = m20 + _N.pack(rec["n"])
            if txn.get(key, db=engine.d_versions) is None:
                engine._put_version(txn, m20, rec)
                changed = True
                if st["last"] is None or rec["n"] > st["last"]:
                    st["last"] = rec["n"]
        if rel is not None and txn.get(m20 + _N.pack(rel["n"]), db=engine.d_versions) is not None:
            old = st.get("release")
            if old is None or rel.get("time", 0) > old.get("time", 0):
                st["release"] = rel
                changed = True
        if changed:
            txn.put(m20, json.dumps(st).encode(), db=engine.d_state)
    if changed:
        engine.changed(mid)
    return mid


def records(engine, mimei: str) -> dict:
    """What a node hands a peer for ``mimei``: ``{"info", "versions", "release"}``, all
    signed by the author. Raises NotFound."""
    info = engine.info(mimei)
    st = engine.state(mimei)
    return {"info": info, "versions": engine.versions(mimei), "release": st.get("release")}


def find(engine, mimei: str) -> bool:
    """Whether ``mimei`` is in the store, asking the fetcher for its records if it is
    not (and adopting them). Raises ChunkMissing (kind "mimei") on a thread that may
    not wait for the network, so the door can ask again from a worker thread."""
    if engine.exists(mimei):
        return True
    if engine.fetcher is None or not ids.is_id(mimei):
        return False
    if not fetching_allowed():
        raise ChunkMissing([("mimei", bytes.fromhex(mimei))])
    try:
        got = engine.fetcher.fetch_mimei(mimei)
    except FetchError:
        return False
    if not got:
        return False
    try:
        return adopt(engine, got) == mimei
    except Corrupt:
        return False


def set_pinned(engine, mimei: str, pinned: bool) -> None:
    """Keep (or stop keeping) a remote MiMei's objects through ``gc``. Raises NotFound,
    PermissionDenied for a MiMei of this node's own (always kept)."""
    m20 = bytes.fromhex(mimei) if ids.is_id(mimei) else None
    if m20 is None:
        raise NotFound(f"not a MiMei ID: {mimei!r}")
    with engine.store.write() as txn:
        raw = txn.get(m20, db=engine.d_state)
        if raw is None:
            raise NotFound(f"no MiMei {mimei} in this store")
        st = json.loads(raw)
        if not st.get("remote"):
            raise PermissionDenied(f"{mimei} is this node's own MiMei: it is always kept")
        st["pinned"] = bool(pinned)
        txn.put(m20, json.dumps(st).encode(), db=engine.d_state)


def cached_only(state: dict) -> bool:
    """True for a remote MiMei that is not pinned (its objects are a cache)."""
    return bool(state.get("remote")) and not state.get("pinned")


class RemoteMiMei:
    """The Engine's methods for MiMei from elsewhere (mixed into
    :class:`~.mimei.Engine`); each delegates to this module's function of its name."""

    def adopt(self, records: dict) -> str:
        """Store verified records of another author's MiMei (read-only here); see
        :func:`.remote.adopt`. Raises Corrupt for a forged or malformed record."""
        return adopt(self, records)

    def records(self, mimei: str) -> dict:
        """The signed records a peer is handed for ``mimei`` (:func:`.remote.records`)."""
        return records(self, mimei)

    def find(self, mimei: str) -> bool:
        """Whether ``mimei`` is here, fetching its records if not (:func:`.remote.find`)."""
        return find(self, mimei)

    def is_remote(self, mimei: str) -> bool:
        """True if ``mimei`` is held here but authored elsewhere."""
        return bool(self.state(mimei).get("remote"))

    def set_pinned(self, mimei: str, pinned: bool) -> None:
        """Keep a remote MiMei's objects through gc (:func:`.remote.set_pinned`)."""
        set_pinned(self, mimei, pinned)

    def ensure_trees(self, root: bytes) -> int:
        """Fetch every tree below tree ``root`` this store lacks, one batch per level of
        the tree; returns how many trees the version has. Raises ChunkMissing if one
        cannot be had."""
        seen: set[bytes] = set()
        level = [root]
        while level:
            level = [h for h in dict.fromkeys(level) if h not in seen]
            seen.update(level)
            self.chunks.ensure([("tree", h) for h in level])
            level = [e.hash for h in level for e in self.tree(h).entries if e.is_dir]
        return len(seen)
