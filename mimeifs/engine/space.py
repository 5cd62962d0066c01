"""The store's space: a map that grows, a reserve and low-space mode on a full disk.

Issue 11 items 3 and 4. *The map*: before each write transaction the store grows the map
(``env.set_mapsize``, doubling) once three quarters of it are in use, with no
transaction of this process open (a gate every transaction passes); a transaction that
still fills it fails with :class:`StoreFull` (ENOSPC) after the map has grown, and a map
another process grew is adopted. *The disk*: ``<store>/reserve`` holds :data:`RESERVE`
bytes while there is room. When a commit fails because the store's filesystem is full,
the reserve is released (so deletes, ``gc`` and the daemon's own bookkeeping can still
commit), the caller gets :class:`StoreFull`, and the store enters *low-space mode*: a
transaction that may grow the store (``write(room=True)``, the default) is refused at
once with ENOSPC, without touching LMDB, until a transaction that freed stored data (it
called :meth:`Space.note_freed`) commits or the filesystem plus the free pages inside
the data file hold twice the reserve. ``mount.json`` is rewritten in place
(:meth:`Space.write_runfile`), so a full store still mounts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time

import lmdb

from .errors import NoSpace

log = logging.getLogger("mimeifs.store")

RESERVE = 8 << 20  # bytes kept in <store>/reserve for deletes on a full filesystem
GROW_AT = 0.75     # grow the map once this share of it is in use
RUNFILE = 4096     # bytes of mount.json (padded): rewritten in place, no new blocks


class StoreFull(NoSpace):
    """The store's filesystem or its LMDB map is full: ``errno`` is ENOSPC and the
    message says which and what the user can do."""


def free_bytes(path: str) -> int:
    """Bytes this process may still write on the filesystem holding ``path`` (root may
    use the blocks reserved for root)."""
    s = os.statvfs(path)
    return (s.f_bfree if os.geteuid() == 0 else s.f_bavail) * s.f_frsize


class Space:
    """Mixin of :class:`~mimeifs.engine.db.Store`: the gate, the map and the disk.

    Expects ``self.env``, ``self.path``, ``self._dbs``, ``self._psize`` and
    :meth:`_init_space` called once the environment is open."""

    def _init_space(self) -> None:
        self._gate = threading.Condition()
        self._active = 0
        self._resizing = False
        self._depth = threading.local()
        self.low_space: str | None = None  # why growing writes are refused, or None
        self._space_checked = 0.0

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
