"""MiMei as a whole: create, info, backup, release, restore, fork, log, references, rm.

Sources: seed 001/002 Part I §V (MiMei ID, MiMei info: author, app type, ext, mark,
create time, rights), §6.2 (versions cur / last / release), §6.3 (references:
MMAddRef / MMDelRef / MMGetRef), DESIGN.md "Storage" and "Identities and IDs".

Records (JSON, signed by the author's key with ``ids.NodeKey.sign_record``):

- info: ``{"type": "mimei", "id", "author", "app_type", "mimei_type", "ext", "mark",
  "created" (ns), "rights"}``
- version: ``{"type": "version", "mimei", "n", "kind" ("fs"|"file"), "root" (hex),
  "parent" (n-1 or null), "fork_of" ({"mimei", "n"} or null), "time" (ns), "size"
  (bytes of files), "memo", "refs" (sorted IDs), "author"}``
- release pointer: ``{"type": "release", "mimei", "n", "time", "author"}``

Local state (not signed; this node's bookkeeping) in ``state``: ``{"cur": root inode,
"last": n or null, "release": signed release pointer or null}``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
import struct
import threading
import time

from .. import ids
from . import backup as bk
from . import blocks, kvsnap, objects, remote
from .chunkstore import ChunkStore
from .db import Store, scan_prefix
from .fetch import Fetcher
from .marks import ID_PREFIX_MIN, MARK_MAX_BYTES, check_mark, ids_with_prefix, mark_problem, resolve_spec, text_problem  # noqa: F401
from .render import info_doc, info_json, iso_time, rm_refused  # noqa: F401
from .errors import MiMeiError  # noqa: F401  (the older name of EngineError)
from .references import References, id20 as _id20
from .worktree import ROOT_PARENT, Worktree

MIMEI_TYPES = ("fs", "file", "db")
_N = struct.Struct(">I")
log = logging.getLogger("mimeifs.engine")


def _vkey(mimei: str, m20: bytes, n) -> bytes:
    """Key of version n in ``versions``. Raises :class:`MiMeiError` (ENOENT) for an n
    that cannot be a version number (negative, not an integer, 2**32 or more)."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << 32:
        raise MiMeiError(errno.ENOENT, f"{mimei} has no version {n}")
    return m20 + _N.pack(n)


class Engine(References, remote.RemoteMiMei):
    """The store's MiMei: the facade the CLI and the mount call.

    Thread-safe for reads; writes serialize on LMDB's single writer. ``is_open(ino)``
    (set by a running mount) tells whether the kernel still holds an inode, so an
    unlinked file that is open stays readable until released.
    """

    def __init__(self, store: Store, fetcher: Fetcher | None = None,
                 chunk_cache_bytes: int = 128 << 20):
        self.store = store
        self.node_id = store.node_id
        self._own: dict[bytes, bool] = {}
        self._own_lock = threading.Lock()
        self.chunks = ChunkStore(store, fetcher, chunk_cache_bytes)
        self.objs = self.chunks.objs
        self.fetcher = fetcher
        self.wt = Worktree(store, self.can_write, self.chunks.cache, self.objs)
        self.is_open = lambda ino: False
        self._listeners: list = []
        s = store
        self.d_mimei, self.d_state, self.d_versions = s.db("mimei"), s.db("state"), s.db("versions")
        self.d_names, self.d_refs, self.d_refs_in = s.db("names"), s.db("refs"), s.db("refs_in")
        self.d_vrefs, self.d_mac = s.db("vrefs"), s.db("mac")
        self.d_trees, self.d_manifests, self.d_blocks = s.db("trees"), s.db("manifests"), s.db("blocks")

    # ------------------------------------------------------------------ change events
    def subscribe(self, fn) -> None:
        """Call ``fn(mimei_id)`` after records of a MiMei change from outside this
        process's own requests (a remote MiMei adopted or given newer versions; a db
        MiMei restored or removed, whose keys changed under its RESP clients). It runs
        on the thread that made the change and must not block; exceptions are logged."""
        self._listeners.append(fn)

    def changed(self, mimei: str) -> None:
        """Tell the listeners (:meth:`subscribe`) that ``mimei`` changed as a whole
        (its records, or its cur written through a door the others do not see)."""
        for fn in list(self._listeners):
            try:
                fn(mimei)
            except Exception:
                log.exception("change listener failed for %s", mimei)

    # ------------------------------------------------------------------ info / state
    def can_write(self, mimei20: bytes) -> bool:
        """True if this node's key authored the MiMei (its cur is writable here)."""
        v = self._own.get(mimei20)
        if v is None:
            with self.store.read() as txn:
                raw = txn.get(mimei20, db=self.d_mimei)
            v = raw is not None and json.loads(raw)["author"] == self.node_id
            with self._own_lock:
                self._own[mimei20] = v
        return v

    def _info(self, txn, m20: bytes) -> dict:
        raw = txn.get(m20, db=self.d_mimei)
        if raw is None:
            raise MiMeiError(errno.ENOENT, f"no MiMei {m20.hex()} in this store")
        return json.loads(raw)

    def _state(self, txn, m20: bytes) -> dict:
        raw = txn.get(m20, db=self.d_state)
        if raw is None:
            raise MiMeiError(errno.ENOENT, f"no MiMei {m20.hex()} in this store")
        return json.loads(raw)

    def _put_state(self, txn, m20: bytes, st: dict) -> None:
        txn.put(m20, json.dumps(st).encode(), db=self.d_state)

    def info(self, mimei: str) -> dict:
        """The signed MiMei info record. Raises :class:`MiMeiError` (ENOENT)."""
        with self.store.read() as txn:
            return self._info(txn, _id20(mimei))

    def info_file(self, mimei: str) -> bytes:
        """The content of ``<mnt>/mm/<id>/.info`` (:func:`info_json`). Raises ENOENT."""
        m20 = _id20(mimei)
        with self.store.read() as txn:
            return info_json(self._info(txn, m20), self._state(txn, m20))

    def state(self, mimei: str) -> dict:
        """Local state: ``{"cur": ino, "last": n|None, "release": record|None}``."""
        with self.store.read() as txn:
            return self._state(txn, _id20(mimei))

    def exists(self, mimei: str) -> bool:
        if not ids.is_id(mimei):
            return False
        with self.store.read() as txn:
            return txn.get(bytes.fromhex(mimei), db=self.d_state) is not None

    def list(self) -> list[str]:
        """IDs of every MiMei in the store, sorted."""
        with self.store.read() as txn:
            return [bytes(k).hex() for k in txn.cursor(db=self.d_state).iternext(values=False)]

    def names(self) -> dict[str, str]:
        """mark -> MiMei ID for this node's own MiMei."""
        with self.store.read() as txn:
            return {bytes(k).decode(): bytes(v).hex() for k, v in txn.cursor(db=self.d_names)}

    def mark_id(self, mark: str) -> str | None:
        """The ID of this node's own MiMei with ``mark`` (``name/<mark>``), or None
        (also for a string that cannot be a mark, see :func:`mark_problem`)."""
        if mark_problem(mark) is not None:
            return None
        with self.store.read() as txn:
            raw = txn.get(mark.encode(), db=self.d_names)
        return None if raw is None else bytes(raw).hex()

    def resolve(self, spec: str) -> str:
        """A MiMei ID from a SPEC: an ID, a mark, a path in a mount or a unique ID prefix
        (:func:`.marks.resolve_spec`). Raises :class:`MiMeiError` (ENOENT; EINVAL for an
        ambiguous prefix, naming the candidates)."""
        return resolve_spec(self, spec)

    def id_prefix(self, prefix: str) -> list[str]:
        """IDs of the MiMei in this store that start with ``prefix`` (see
        :func:`.marks.ids_with_prefix`), sorted."""
        with self.store.read() as txn:
            return ids_with_prefix(txn, self.d_state, prefix)

    # ------------------------------------------------------------------ create / rm
    def create(self, mimei_type: str, mark: str, app_type: str = "", ext: str = "",
               uid: int | None = None, gid: int | None = None, mode: int | None = None,
               exclusive: bool = False) -> str:
        """Create a MiMei of this node; returns its ID.

        A mark names one MiMei per author: the same (author, app type, type, mark)
        returns the existing ID (idempotent), while a mark this node already gave a MiMei
        of another type or app type is refused (EEXIST), as ``fork`` refuses it.
        ``mark == "auto"`` draws a fresh mark. ``exclusive`` refuses an existing MiMei
        too. Raises :class:`MiMeiError` (EINVAL for a bad type or mark, see
        :func:`mark_problem`; EEXIST).
        """
        if mimei_type not in MIMEI_TYPES:
            raise MiMeiError(errno.EINVAL, f"MiMei type must be fs, file or db, not {mimei_type!r}")
        if mark == "auto":
            mark = "auto-" + secrets.token_hex(8)
        check_mark(mark)
        for what, text, size in (("app type", app_type, MARK_MAX_BYTES), ("ext", ext, 64)):
            why = text_problem(what, text, size)
            if why is not None:
                raise MiMeiError(errno.EINVAL, why)
        mid = ids.mimei_id(self.node_id, app_type, mimei_type, mark)
        m20 = bytes.fromhex(mid)
        uid = os.getuid() if uid is None else uid
        gid = os.getgid() if gid is None else gid
        with self.store.write() as txn:
            if txn.get(m20, db=self.d_state) is not None:
                if exclusive:
                    raise MiMeiError(errno.EEXIST, f"a MiMei with mark {mark!r} exists: {mid}")
                return mid
            self._mark_free(txn, mark)
            info = self.store.key.sign_record({
                "type": "mimei", "id": mid, "author": self.node_id, "app_type": app_type,
                "mimei_type": mimei_type, "ext": ext, "mark": mark,
                "created": time.time_ns(), "rights": 0o644,
            })
            txn.put(m20, ids.canonical(info), db=self.d_mimei)
            if mimei_type == "fs":
                m = stat.S_IFDIR | (0o755 if mode is None else mode)
            elif mimei_type == "db":  # cur of a db lives in kv (kvsnap); its inode stays empty
                m = stat.S_IFDIR | 0o555
            else:
                m = stat.S_IFREG | (0o644 if mode is None else mode)
            root = self.wt.new_inode(txn, m20, m, uid, gid)
            self.wt.link_entry(txn, ROOT_PARENT, m20, root)
            self._put_state(txn, m20, {"cur": root.ino, "last": None, "release": None})
            txn.put(mark.encode(), m20, db=self.d_names)
        self._own.pop(m20, None)
        return mid

    def _mark_free(self, txn, mark: str) -> None:
        """Raise :class:`MiMeiError` (EEXIST) if ``mark`` already names a MiMei of this
        node (``name/<mark>``), saying which. A name left pointing at a MiMei this node
        did not author (a store that changed its key) does not count."""
        raw = txn.get(mark.encode(), db=self.d_names)
        if raw is None:
            return
        other = bytes(raw).hex()
        o = json.loads(txn.get(bytes(raw), db=self.d_mimei) or b'{"author": null}')
        if o["author"] != self.node_id:  # a stale name (another key's MiMei): taken over
            return
        raise MiMeiError(errno.EEXIST, f"mark {mark!r} already names {other} (type {o['mimei_type']}"
                         + (f", app type {o['app_type']!r}" if o["app_type"] else "")
                         + "): a mark names one MiMei per author; choose another mark")

    def rm(self, mimei: str) -> None:
        """Delete a MiMei (cur, versions, info). Its blocks are freed by ``gc``.

        Raises :class:`MiMeiError` ENOENT if unknown, EBUSY while another MiMei refers
        to it, naming who and saying what the user can do: remove a reference of a cur
        (``rm <mnt>/mm/<src>/.refs/<id>``); a version's references never change, so a
        MiMei a version refers to stays until that MiMei is removed.
        """
        m20 = _id20(mimei)
        who = self.referrer_detail(mimei)
        if who:
            raise MiMeiError(errno.EBUSY, rm_refused(mimei, who))
        with self.store.write(room=False) as txn:
            st = self._state(txn, m20)
            info = self._info(txn, m20)
            if st["cur"] is not None:
                root = self.wt.get(txn, st["cur"])
                self.wt.remove_tree(txn, ROOT_PARENT, m20, root, self.is_open)
            for n in range(0 if st["last"] is None else st["last"] + 1):
                raw = txn.get(m20 + _N.pack(n), db=self.d_versions)
                if raw is not None:
                    for t in json.loads(raw).get("refs", []):
                        txn.delete(bytes.fromhex(t) + m20 + _N.pack(n), db=self.d_vrefs)
                    txn.delete(m20 + _N.pack(n), db=self.d_versions)
            self._set_refs(txn, m20, [])
            kvsnap.clear_ns(txn, self.store, m20)
            txn.delete(m20, db=self.d_state)
            txn.delete(m20, db=self.d_mimei)
            mark = info["mark"].encode()
            if txn.get(mark, db=self.d_names) == m20:
                txn.delete(mark, db=self.d_names)
                for k, v in txn.cursor(db=self.d_mimei):  # another MiMei of ours with this mark
                    other = json.loads(v)
                    if other["mark"] == info["mark"] and other["author"] == self.node_id:
                        txn.put(mark, bytes(k), db=self.d_names)
                        break
        self._own.pop(m20, None)
        if info["mimei_type"] == "db":
            self.changed(mimei)  # the RESP door drops connections to it

    # ------------------------------------------------------------------ versions
    def backup(self, mimei: str, memo: str = "", progress=None, allow_empty: bool = True) -> dict:
        """Freeze cur into version n+1, signed; moves ``last``. Returns the record
        plus ``stats`` (new bytes, files re-chunked, trees written) and ``unchanged``.

        Unless ``allow_empty``, a cur whose content (root hash and kind) and references
        equal those of the last version makes no new version (git's "nothing to
        commit"): the last version's record comes back with ``unchanged: True``. The
        version is on disk (fsync) when this returns.
        """
        m20 = _id20(mimei)
        if not self.can_write(m20):
            raise MiMeiError(errno.EACCES, f"{mimei} was not authored by this node")
        with self.store.write() as txn:
            st = self._state(txn, m20)
            if self._info(txn, m20)["mimei_type"] == "db":
                kind = "db"
                root, size, stats = kvsnap.freeze(txn, self.store, m20, self.chunks.cache)
            else:
                kind, root, size, stats = bk.freeze(txn, self.wt, st["cur"], progress)
            refs = sorted(self._refs_out(txn, m20))
            if not allow_empty and st["last"] is not None:
                prev = json.loads(txn.get(_vkey(mimei, m20, st["last"]), db=self.d_versions))
                if prev["root"] == root.hex() and prev["kind"] == kind and sorted(prev.get("refs", [])) == refs:
                    return dict(prev, stats=stats, unchanged=True)
            n = 0 if st["last"] is None else st["last"] + 1
            rec = self.store.key.sign_record({
                "type": "version", "mimei": mimei, "n": n, "kind": kind, "root": root.hex(),
                "parent": st["last"], "fork_of": None, "time": time.time_ns(), "size": size,
                "memo": memo, "refs": refs, "author": self.node_id,
            })
            self._put_version(txn, m20, rec)
            st["last"] = n
            self._put_state(txn, m20, st)
        self.store.sync()
        return dict(rec, stats=stats, unchanged=False)

    def _put_version(self, txn, m20: bytes, rec: dict) -> None:
        n = rec["n"]
        txn.put(m20 + _N.pack(n), ids.canonical(rec), db=self.d_versions)
        for t in rec["refs"]:
            txn.put(bytes.fromhex(t) + m20 + _N.pack(n), b"", db=self.d_vrefs)

    def versions(self, mimei: str) -> list[dict]:
        """Every version record of ``mimei``, by n."""
        m20 = _id20(mimei)
        with self.store.read() as txn:
            self._state(txn, m20)
            return [json.loads(v) for _k, v in scan_prefix(txn, self.d_versions, m20)]

    def version(self, mimei: str, n: int) -> dict:
        """Version record n. Raises :class:`MiMeiError` (ENOENT)."""
        m20 = _id20(mimei)
        with self.store.read() as txn:
            raw = txn.get(_vkey(mimei, m20, n), db=self.d_versions)
        if raw is None:
            raise MiMeiError(errno.ENOENT, f"{mimei} has no version {n}")
        return json.loads(raw)

    def release(self, mimei: str, n: int | None = None) -> dict:
        """Mark version n (default: last) as released; returns the signed pointer."""
        m20 = _id20(mimei)
        if not self.can_write(m20):
            raise MiMeiError(errno.EACCES, f"{mimei} was not authored by this node")
        with self.store.write() as txn:
            st = self._state(txn, m20)
            if n is None:
                n = st["last"]
            if n is None or txn.get(_vkey(mimei, m20, n), db=self.d_versions) is None:
                raise MiMeiError(errno.ENOENT, f"{mimei} has no version {n} to release")
            rec = self.store.key.sign_record({"type": "release", "mimei": mimei, "n": n,
                                              "time": time.time_ns(), "author": self.node_id})
            st["release"] = rec
            self._put_state(txn, m20, st)
        self.store.sync()
        return rec

    def restore(self, mimei: str, n: int) -> list[tuple[int, bytes]]:
        """cur := v/n, its content and its references (clean: the next backup costs
        nothing if nothing changes). Raises ENOENT (no version n), EACCES.

        Returns the cur entries (parent inode, name) it removed or replaced, which a
        door must drop from its name caches (:func:`backup.checkout`)."""
        m20 = _id20(mimei)
        if not self.can_write(m20):
            raise MiMeiError(errno.EACCES, f"{mimei} was not authored by this node")
        rec = self.version(mimei, n)
        with self.store.write() as txn:
            st = self._state(txn, m20)
            if rec["kind"] == "db":
                kvsnap.checkout(txn, self.store, m20, bytes.fromhex(rec["root"]), self.chunks.cache)
                removed = []
            else:
                removed = bk.checkout(txn, self.wt, st["cur"], rec["kind"],
                                      bytes.fromhex(rec["root"]), rec["size"], self.is_open)
            self._set_refs(txn, m20, rec.get("refs", []))
        if rec["kind"] == "db":
            self.changed(mimei)  # the RESP door fails the EXECs that watched its keys
        return removed

    def fork(self, mimei: str, n: int | None, mark: str) -> str:
        """A new MiMei whose v/0 is version n (default: last) of ``mimei``.

        The papers' "variation". Its cur starts as that version, and both v/0 and cur
        reference what that version referenced. Returns the new ID; raises EEXIST if
        ``mark`` already names a MiMei of this node (one rule with :meth:`create`),
        EINVAL for a bad mark, ENOENT if there is no version.
        """
        info = self.info(mimei)
        if n is None:
            n = self.state(mimei)["last"]
            if n is None:
                raise MiMeiError(errno.ENOENT, f"{mimei} has no version to fork")
        src = self.version(mimei, n)
        if src["kind"] == "fs":
            self.ensure_trees(bytes.fromhex(src["root"]))
        elif src["kind"] == "db":
            kvsnap.ensure_version(self, bytes.fromhex(src["root"]))
        if mark == "auto":  # drawn once: the check below and create() must see one mark
            mark = "auto-" + secrets.token_hex(8)
        check_mark(mark)
        with self.store.read() as txn:
            self._mark_free(txn, mark)
        new_id = self.create(info["mimei_type"], mark, info["app_type"], info["ext"], exclusive=True)
        n20 = bytes.fromhex(new_id)
        with self.store.write() as txn:
            st = self._state(txn, n20)
            if src["kind"] == "db":
                kvsnap.checkout(txn, self.store, n20, bytes.fromhex(src["root"]), self.chunks.cache)
            else:
                bk.checkout(txn, self.wt, st["cur"], src["kind"], bytes.fromhex(src["root"]), src["size"])
            self._set_refs(txn, n20, src.get("refs", []))
            rec = self.store.key.sign_record({
                "type": "version", "mimei": new_id, "n": 0, "kind": src["kind"], "root": src["root"],
                "parent": None, "fork_of": {"mimei": mimei, "n": n}, "time": time.time_ns(),
                "size": src["size"], "memo": f"fork of {mimei}@{n}", "refs": sorted(self._refs_out(txn, n20)),
                "author": self.node_id,
            })
            self._put_version(txn, n20, rec)
            st["last"] = 0
            self._put_state(txn, n20, st)
        self.store.sync()
        return new_id

    # ------------------------------------------------------------------ reading versions
    def version_root(self, mimei: str, n: int) -> objects.Entry:
        """The root of version n as an entry (a directory for fs, a file for file)."""
        rec = self.version(mimei, n)
        h = bytes.fromhex(rec["root"])
        if rec["kind"] in ("fs", "db"):
            mode = stat.S_IFDIR | 0o555
        else:
            mode = stat.S_IFREG | 0o444
        return objects.Entry(b"", mode, 0, 0, rec["size"], rec["time"], 0, h, b"", ())

    def tree(self, h: bytes) -> objects.Tree:
        """A decoded tree by hash (fetched on a miss). Raises ChunkMissing, Corrupt."""
        return self.chunks.tree(h)

    def manifest(self, h: bytes) -> objects.Manifest:
        """The manifest of content ``h`` (fetched on a miss). Raises ChunkMissing, Corrupt."""
        return self.chunks.manifest(h)

    def read_content(self, h: bytes, offset: int, size: int) -> bytes:
        """Bytes of the file whose content hash is ``h`` (a version file or Mac file)."""
        return self.chunks.read(h, offset, size)

    def has_content(self, h: bytes) -> bool:
        with self.store.read() as txn:
            return txn.get(h, db=self.d_manifests) is not None

    # ------------------------------------------------------------------ Mac files
    def put_mac(self, path: str) -> str:
        """Store an OS file as a Mac file; returns its Mac ID (blake3, as ``b3sum``)."""
        from .importer import store_os_file
        with self.store.write() as txn:
            h, _size, _added = store_os_file(txn, self.store, path)
            txn.put(h, b"", db=self.d_mac)
        self.store.sync()
        return h.hex()

    def mac_list(self) -> list[str]:
        """Mac IDs put on this node."""
        with self.store.read() as txn:
            return [bytes(k).hex() for k in txn.cursor(db=self.d_mac).iternext(values=False)]
