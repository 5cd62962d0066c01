"""The store: one directory holding one LMDB environment and the node's key.

Layout of a store directory (DESIGN.md "Storage")::

    <store>/lmdb/          LMDB environment (data.mdb, lock.mdb), named sub-databases
    <store>/node.key       this node's ed25519 seed, hex, mode 0600
    <store>/shares/        .mmfs share files
    <store>/mount.json     written by a running daemon: {"pid", "mountpoint"}

LMDB gives ACID transactions and many readers with one writer across processes. The map
is large and sparse (1 TiB by default). A write transaction must stay on the thread that
opened it, so every write here is begun, filled and committed inside one call.

Space (a map that grows, a reserve and low-space mode on a full disk) is
:mod:`mimeifs.engine.space`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from typing import Iterator

import lmdb

from ..ids import NodeKey
from .space import GROW_AT, RESERVE, Space, StoreFull, free_bytes  # noqa: F401

log = logging.getLogger("mimeifs.store")

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB, sparse
FORMAT_VERSION = b"2"  # 2: cur pages carry checksums (pages.py); 1 is upgraded on open

#: Engine sub-databases: name -> what a record holds (see each module's docstring).
ENGINE_DBS = {
    "meta": "counters and format version",
    "blocks": "chunk blake3 (32) -> codec 0/1 + chunk bytes or 2 + pack ref; b\"P\" + pack id (33) -> codec + pack (blocks.py)",
    "manifests": "file content hash (32) -> encoded manifest (objects.Manifest)",
    "trees": "tree hash (32) -> codec byte + encoded tree (objects.encode_tree)",
    "mimei": "MiMei ID (20) -> signed MiMei info (JSON)",
    "state": "MiMei ID (20) -> local state JSON (cur root inode, last, release)",
    "versions": "MiMei ID (20) + n (4, BE) -> signed version record (JSON)",
    "names": "mark (UTF-8) -> MiMei ID (20), for this node's own MiMei",
    "inodes": "inode (8, BE) -> packed inode record of a cur tree",
    "dirents": "parent inode (8) + name -> child inode (8)",
    "links": "child inode (8) + parent inode (8) + name -> b'' (reverse of dirents)",
    "pages": "inode (8) + page number (8) -> page bytes (cur data not yet chunked)",
    "xattrs": "inode (8) + name -> value",
    "orphans": "inode (8) -> b'' (unlinked while still open; freed on forget or next mount)",
    "refs": "source ID (20) + target ID (20) -> b'' (references of cur)",
    "refs_in": "target ID (20) + source ID (20) -> b'' (reverse of refs)",
    "vrefs": "target ID (20) + source ID (20) + n (4) -> b'' (references kept by versions)",
    "mac": "content hash (32) -> b'' (Mac files put on this node)",
    "kv": "db MiMei cur: namespace (20) + key -> type, expiry, payload (kv.py)",
    "kvel": "db MiMei cur: namespace (20) + key length (4) + key + tag + sub -> element (kv.py)",
    "kvmeta": "db namespace (20) -> key count; namespace + b'!' -> a version cache is built",
    "kvdirty": "db namespace (20) + key -> b'' (written since the last backup, kvsnap.py)",
    "kvb": "db namespace (20) + bucket's first key -> its chunks per data type (kvsnap.py)",
}


class StoreError(Exception):
    """A store cannot be opened or created (missing, already there, unreadable)."""


def scan_prefix(txn, db, prefix: bytes, values: bool = True):
    """Yield ``(key, value)`` (or keys, with ``values=False``) of every record whose key
    starts with ``prefix``, in key order. Keys and values are copied to ``bytes``."""
    n = len(prefix)
    with txn.cursor(db=db) as c:
        if not c.set_range(prefix):
            return
        for k, v in c.iternext(values=True):
            if k[:n] != prefix:
                return
            yield (bytes(k), bytes(v)) if values else bytes(k)


def default_store_path(cli_value: str | None = None) -> str:
    """The store path: ``--store``, else ``$MIMEIFS_STORE``, else the XDG data dir.

    The XDG default is ``$XDG_DATA_HOME/mimeifs`` or ``~/.local/share/mimeifs``.
    """
    if cli_value:
        return os.path.abspath(os.path.expanduser(cli_value))
    env = os.environ.get("MIMEIFS_STORE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "mimeifs")


class Store(Space):
    """An open store: LMDB environment, named sub-databases and the node key.

    Use :meth:`create` once, then :meth:`open`. Transactions: ``with store.read() as txn``
    and ``with store.write() as txn`` (committed on normal exit, aborted on exception).
    ``sync()`` forces committed data to disk (the env runs with ``sync=False`` so cur
    writes are cheap; versions call ``sync()`` before a backup returns).
    """

    def __init__(self, path: str, env: lmdb.Environment, key: NodeKey):
        self.path = path
        self.env = env
        self.key = key
        self.node_id = key.id
        self._dbs: dict[str, object] = {}
        self._lock = threading.Lock()
        self._psize = env.stat()["psize"]
        self._init_space()
        for name in ENGINE_DBS:
            self.db(name)
        self._keep_reserve()

    # -- lifecycle -------------------------------------------------------------------
    @staticmethod
    def _open_env(path: str, map_size: int | None) -> lmdb.Environment:
        if map_size is None:  # $MIMEIFS_MAP_SIZE (bytes) for small devices and tests
            map_size = int(os.environ.get("MIMEIFS_MAP_SIZE") or DEFAULT_MAP_SIZE)
        return lmdb.open(
            os.path.join(path, "lmdb"),
            map_size=map_size,
            max_dbs=64,
            max_readers=512,
            sync=False,  # durability points are explicit: Store.sync()
            metasync=False,
            readahead=True,  # sequential reads of big values want the OS readahead
            lock=True,
        )

    @classmethod
    def create(cls, path: str, map_size: int | None = None) -> "Store":
        """Create a new store at ``path`` with a fresh node key. ``map_size`` (bytes):
        the LMDB map to start with (default ``$MIMEIFS_MAP_SIZE`` or 1 TiB); it grows.

        Raises :class:`StoreError` if a store is already there.
        """
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, "node.key")):
            raise StoreError(f"a store already exists at {path}")
        os.makedirs(os.path.join(path, "lmdb"), exist_ok=True)
        os.makedirs(os.path.join(path, "shares"), exist_ok=True)
        key = NodeKey.generate()
        key.save(os.path.join(path, "node.key"))
        env = cls._open_env(path, map_size)
        store = cls(path, env, key)
        with store.write() as txn:
            txn.put(b"format", FORMAT_VERSION, db=store.db("meta"))
            txn.put(b"next_ino", struct.pack(">Q", 1 << 20), db=store.db("meta"))
        store.sync()
        return store

    @classmethod
    def open(cls, path: str, map_size: int | None = None) -> "Store":
        """Open an existing store. Raises :class:`StoreError` if there is none."""
        path = os.path.abspath(path)
        keyfile = os.path.join(path, "node.key")
        if not os.path.exists(keyfile):
            raise StoreError(f"no store at {path} (run: mimeifs --store {path} init)")
        try:
            key = NodeKey.load(keyfile)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read node key {keyfile}: {e}") from e
        env = cls._open_env(path, map_size)
        store = cls(path, env, key)
        with store.read() as txn:
            fmt = txn.get(b"format", db=store.db("meta"))
        if fmt == b"1":
            from .pages import seal_all  # format 1 -> 2: checksum every cur page
            with store.write() as txn:
                seal_all(txn, store.db("pages"))
                txn.put(b"format", FORMAT_VERSION, db=store.db("meta"))
            store.sync()
            fmt = FORMAT_VERSION
        if fmt != FORMAT_VERSION:
            raise StoreError(f"{path}: unknown store format {fmt!r}")
        return store

    def close(self) -> None:
        """Sync and close the environment."""
        with contextlib.suppress(lmdb.Error):
            self.env.sync(True)
        self.env.close()

    def sync(self) -> None:
        """Flush every committed transaction to disk (fdatasync)."""
        self.env.sync(True)

    # -- sub-databases and transactions ------------------------------------------------
    def db(self, name: str, txn: lmdb.Transaction | None = None):
        """The named sub-database ``name``, created on first use.

        The engine's are opened with the store. Another layer's first call for a new
        name must either come outside any transaction of this thread, or pass the
        thread's open *write* transaction as ``txn`` (LMDB allows one writer: opening
        a database with a second write transaction on the same thread deadlocks).
        """
        d = self._dbs.get(name)
        if d is None:
            with self._lock:
                d = self._dbs.get(name)
                if d is None:
                    d = self.env.open_db(name.encode(), txn=txn, create=True)
                    self._dbs[name] = d
        return d

    # -- transactions --------------------------------------------------------------------
    @contextlib.contextmanager
    def read(self, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        """A read-only transaction (a consistent snapshot).

        With ``buffers=True`` its ``get`` returns zero-copy memoryviews into the map,
        valid only until the transaction ends: copy (join) before leaving.
        """
        self._enter()
        try:
            txn = self._begin(False, buffers)
            try:
                yield txn
            finally:
                txn.abort()
        finally:
            self._leave()

    def begin_read(self, buffers: bool = False) -> lmdb.Transaction:
        """A read snapshot that outlives one call (a RESP connection's batch); end it
        with :meth:`end_read`. Like :meth:`read`, it passes the transaction gate, so a
        map resize waits for it (keep it short)."""
        self._enter()
        try:
            return self._begin(False, buffers)
        except BaseException:
            self._leave()
            raise

    def end_read(self, txn: lmdb.Transaction) -> None:
        """End a snapshot from :meth:`begin_read`."""
        try:
            txn.abort()
        finally:
            self._leave()

    def begin_write(self, room: bool = True) -> lmdb.Transaction:
        """Begin a write transaction that outlives one call (the importer's batches);
        end it with :meth:`end_write`. ``room`` as for :meth:`write`."""
        if room:
            self._check_room()
        if not getattr(self._depth, "n", 0):
            used, size = self.map_used()
            if used > size * GROW_AT:
                self.grow_map()
        self._enter()
        self._depth.freed = False
        try:
            return self._begin(True)
        except BaseException:
            self._leave()
            raise

    def end_write(self, txn: lmdb.Transaction, commit: bool = True, room: bool = True) -> None:
        """Commit (or abort) a transaction from :meth:`begin_write`. Raises
        :class:`StoreFull` if the commit found the map or the filesystem full."""
        err = None
        try:
            if commit:
                txn.commit()
            else:
                txn.abort()
        except lmdb.Error as e:
            err = e
        finally:
            self._leave()
        if err is not None:
            raise self.space_error(err) or err
        if commit and getattr(self._depth, "freed", False) and self.low_space is not None:
            self.low_space = None  # something was freed: let writers try again
            log.info("space was freed: writes accepted again")
        self._depth.freed = False

    @contextlib.contextmanager
    def write(self, room: bool = True) -> Iterator[lmdb.Transaction]:
        """A write transaction: committed on normal exit, aborted on an exception.

        ``room=False`` marks a transaction that frees space (unlink, rm, gc, orphans):
        it runs in low-space mode too (its commit ends that mode if it called
        :meth:`note_freed`). Raises
        :class:`StoreFull` (ENOSPC) when the map or the filesystem is full.
        """
        txn = self.begin_write(room)
        try:
            yield txn
        except BaseException as e:
            self.end_write(txn, commit=False)
            full = self.space_error(e) if isinstance(e, lmdb.Error) else None
            if full is not None:
                raise full from None
            raise
        self.end_write(txn, commit=True, room=room)
