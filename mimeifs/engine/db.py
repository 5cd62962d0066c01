"""The store: one directory holding one LMDB environment and the node's key.

Layout of a store directory (DESIGN.md "Storage")::

    <store>/lmdb/          LMDB environment (data.mdb, lock.mdb), named sub-databases
    <store>/node.key       this node's ed25519 seed, hex, mode 0600
    <store>/shares/        .mmfs share files
    <store>/mount.json     written by a running daemon: {"pid", "mountpoint"}

LMDB gives ACID transactions and many readers with one writer across processes. The map
is large and sparse (1 TiB by default). A write transaction must stay on the thread that
opened it, so every write here is begun, filled and committed inside one call.

Space (issue 11 items 3 and 4). *The map*: before each write transaction the store grows
the map (``env.set_mapsize``, doubling) once three quarters of it are in use, with no
transaction of this process open (a gate every transaction passes); a transaction that
still fills it fails with :class:`StoreFull` (ENOSPC) after the map has grown, and a
map another process grew is adopted. *The disk*: ``<store>/reserve`` holds
:data:`RESERVE` bytes while there is room. When a commit fails because the store's
filesystem is full, the reserve is released (so deletes, ``gc``, ``mount.json`` and the
daemon's own bookkeeping can still commit), the caller gets :class:`StoreFull`, and the
store enters *low-space mode*: a transaction that may grow the store (``write(room=True)``,
the default) is refused at once with ENOSPC, without touching LMDB, until a
transaction that freed stored data (it called :meth:`Store.note_freed`) commits or the
filesystem has twice the reserve free again. Deleting transactions say
``write(room=False)`` so that they run in low-space mode.

Named sub-databases are opened on first use with :meth:`Store.db`; the engine's names are
listed in :data:`ENGINE_DBS`. Other layers use their own prefix (``ledger.``, ``credit.``,
``net.``) and never touch the engine's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import time
from typing import Iterator

import lmdb

from ..ids import NodeKey
from .errors import NoSpace

log = logging.getLogger("mimeifs.store")

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB, sparse
RESERVE = 8 << 20  # bytes kept in <store>/reserve for deletes on a full filesystem
GROW_AT = 0.75     # grow the map once this share of it is in use
RUNFILE = 4096     # bytes of mount.json (padded): rewritten in place, no new blocks
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
}


class StoreError(Exception):
    """A store cannot be opened or created (missing, already there, unreadable)."""


class StoreFull(NoSpace):
    """The store's filesystem or its LMDB map is full: ``errno`` is ENOSPC and the
    message says which and what the user can do."""


def free_bytes(path: str) -> int:
    """Bytes this process may still write on the filesystem holding ``path`` (root may
    use the blocks reserved for root)."""
    s = os.statvfs(path)
    return (s.f_bfree if os.geteuid() == 0 else s.f_bavail) * s.f_frsize


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


class Store:
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
        # the gate: transactions of this process in flight, and a map resize waiting
        self._gate = threading.Condition()
        self._active = 0
        self._resizing = False
        self._depth = threading.local()
        self._psize = env.stat()["psize"]
        self.low_space: str | None = None  # why growing writes are refused, or None
        self._space_checked = 0.0
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

    # -- the gate: no transaction open while the map is resized ---------------------
    def _enter(self) -> None:
        d = self._depth
        n = getattr(d, "n", 0)
        d.n = n + 1
        with self._gate:
            while self._resizing and n == 0:  # a thread inside a transaction goes on
                self._gate.wait()
            self._active += 1

    def _leave(self) -> None:
        self._depth.n -= 1
        with self._gate:
            self._active -= 1
            if self._resizing and self._active == 0:
                self._gate.notify_all()

    def _resize(self, size: int) -> bool:
        """``env.set_mapsize(size)`` (0: adopt another process's size) once no
        transaction of this process is open (waits up to 2 s: new transactions wait
        meanwhile). Returns whether done."""
        if getattr(self._depth, "n", 0):
            return False  # this thread is inside a transaction: never wait for itself
        with self._gate:
            if self._resizing:
                return False
            self._resizing = True
            try:
                deadline = time.monotonic() + 2.0
                while self._active:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._gate.wait(left)
                self.env.set_mapsize(size)
                return True
            finally:
                self._resizing = False
                self._gate.notify_all()

    def map_used(self) -> tuple[int, int]:
        """(bytes of the map in use, map size)."""
        i = self.env.info()
        return (i["last_pgno"] + 1) * self._psize, i["map_size"]

    def map_free(self) -> int:
        """Bytes of the data file's pages that no database of this process uses (what
        LMDB reuses before it grows the file: pages freed by deletes, roughly)."""
        with self.read() as txn:
            used = 2  # the meta pages
            for st in [self.env.stat()] + [txn.stat(d) for d in list(self._dbs.values())]:
                used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return max(0, self.env.info()["last_pgno"] + 1 - used) * self._psize

    def room(self) -> int:
        """Bytes the store can still grow by: free on its filesystem plus free pages
        inside its data file."""
        return free_bytes(self.path) + self.map_free()

    def grow_map(self, need: int = 0) -> bool:
        """Double the map (at least to twice what is used plus ``need``)."""
        used, size = self.map_used()
        new = max(size * 2, 2 * (used + need))
        if self._resize(new):
            log.info("LMDB map grown from %d to %d bytes (%d in use)", size, new, used)
            return True
        return False

    def _begin(self, write: bool, buffers: bool = False):
        try:
            return self.env.begin(write=write, buffers=buffers)
        except lmdb.MapResizedError:  # another process grew the map: adopt its size
            self._leave()
            try:
                self._resize(0)
            finally:
                self._enter()
            return self.env.begin(write=write, buffers=buffers)

    # -- the disk: a reserve and low-space mode --------------------------------------
    def _reserve_path(self) -> str:
        return os.path.join(self.path, "reserve")

    def _keep_reserve(self) -> None:
        """Create ``<store>/reserve`` if it is missing and there is room for it (with
        room to spare); else enter low-space mode if the filesystem is nearly full."""
        p = self._reserve_path()
        try:
            if os.path.getsize(p) >= RESERVE:
                return
        except OSError:
            pass
        try:
            free = free_bytes(self.path)
            if free < 2 * RESERVE and self.room() < RESERVE:
                self.low_space = f"the store's filesystem is full ({free} bytes free)"
        except OSError:
            return
        if free < 2 * RESERVE:
            return
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(p)

    def release_reserve(self) -> bool:
        """Delete ``<store>/reserve`` (on a full filesystem). Returns whether it was there."""
        try:
            os.unlink(self._reserve_path())
        except OSError:
            return False
        log.warning("store filesystem full: released the %d-byte reserve so deletes "
                    "and gc can commit", RESERVE)
        return True

    def write_runfile(self, name: str, data: bytes) -> None:
        """Write ``<store>/<name>`` (``mount.json``), padded with spaces to
        :data:`RUNFILE` bytes so it never needs new blocks once it has had them: the
        blocks of the last one (kept as ``<name>.spare`` by :meth:`drop_runfile`) are
        overwritten in place. On a full filesystem without a spare, the reserve is
        released and the write tried once more. Raises OSError."""
        path = os.path.join(self.path, name)
        spare = path + ".spare"
        data = data.ljust(RUNFILE)
        for attempt in (0, 1):
            try:
                if os.path.exists(spare):
                    with open(spare, "r+b") as f:
                        f.write(data)
                    os.replace(spare, path)
                else:
                    with open(path, "wb") as f:
                        f.write(data)
                return
            except OSError as e:
                if e.errno != errno.ENOSPC or attempt or not self.release_reserve():
                    raise

    def drop_runfile(self, name: str) -> None:
        """Remove ``<store>/<name>``, keeping its blocks as ``<name>.spare`` for the
        next :meth:`write_runfile` (which then works on a full filesystem)."""
        path = os.path.join(self.path, name)
        with contextlib.suppress(OSError):
            os.replace(path, path + ".spare")

    def _check_room(self) -> None:
        """Raise :class:`StoreFull` while in low-space mode (re-checked every 0.5 s)."""
        why = self.low_space
        if why is None:
            return
        now = time.monotonic()
        if now - self._space_checked > 0.5:
            self._space_checked = now
            with contextlib.suppress(OSError):
                if self.room() >= 2 * RESERVE:
                    self.low_space = None
                    self._keep_reserve()
                    log.info("store filesystem has room again: writes accepted")
                    return
        raise StoreFull(f"{why}: delete files or versions (then run gc) to make room")

    def _disk_full(self, e: Exception) -> bool:
        """Whether LMDB error ``e`` comes from a full filesystem (LMDB reports a short
        write as EIO, so the free space decides)."""
        if "No space" in str(e):
            return True
        try:
            return free_bytes(self.path) < 1 << 20
        except OSError:
            return False

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

    def note_freed(self) -> None:
        """Called inside a write transaction that frees stored data (an inode's pages,
        a record, dead blocks): its commit ends low-space mode."""
        self._depth.freed = True

    def space_error(self, e: BaseException) -> StoreFull | None:
        """For an LMDB error that means "full" (the map, or the filesystem), do what
        the store does about it (grow the map; release the reserve and enter low-space
        mode) and return the :class:`StoreFull` to raise instead; else None. Call it
        outside any transaction of this thread."""
        if isinstance(e, lmdb.MapFullError):
            used, size = self.map_used()
            grown = self.grow_map(need=size)
            log.warning("LMDB map full at %d bytes%s", size, "; grown" if grown else "")
            return StoreFull(f"the store's LMDB map was full ({size} bytes)"
                             + ("; it has grown: run the command again" if grown else ""))
        if not isinstance(e, lmdb.Error) or not self._disk_full(e):
            return None
        free = -1
        with contextlib.suppress(OSError):
            free = free_bytes(self.path)
        self.low_space = f"the store's filesystem is full ({free} bytes free)"
        log.error("write refused: %s (LMDB: %s)", self.low_space, e)
        self.release_reserve()
        return StoreFull(f"{self.low_space}: delete files or versions (then run gc) "
                         "to make room")

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
