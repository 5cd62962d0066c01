"""``cur``: the writable working copy of a MiMei, as an inode table in LMDB.

DESIGN.md "Storage": cur is an inode table plus file data pages in LMDB; a backup
freezes it into the immutable DAG (``backup.py``) at a cost that grows with what changed.

Records (sub-databases of ``db.ENGINE_DBS``):

- ``inodes``: ino (8, BE) -> :data:`_IFIX` fixed part + symlink target.
  ``base`` is the content hash of the file's last frozen content (its manifest),
  ``aux`` is, for files, the *base limit* (base bytes at or past it read as holes after
  a shrinking truncate) and, for directories, the total file bytes below when frozen.
  ``frozen`` is the file's content hash / the directory's tree hash while unchanged
  since the last backup, all zeros when dirty. A change marks the inode and every
  ancestor directory dirty (stopping at one already dirty: a dirty directory's
  ancestors are dirty, the invariant ``backup.freeze`` relies on).
- ``pages``: ino + page number -> bytes written since the last backup, in
  :data:`PAGE`-sized pages (the last page of a file may be shorter; missing tail bytes
  read as zeros). A page present overrides the base; absent, the base shows below
  ``aux`` and zeros above.
- ``dirents`` parent + name -> child; ``links`` child + parent + name -> b''.

Every operation runs in one short LMDB write transaction (the env commits without
fsync; ``Store.sync`` is the durability point), so other processes — the CLI beside a
running mount — see each change at once. Errors are ``OSError`` with a POSIX errno.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from dataclasses import dataclass

from . import blocks, objects
from .db import scan_prefix
from .errors import EngineError

PAGE = 64 * 1024
ZERO32 = bytes(32)
ROOT_PARENT = 0  # parent inode recorded for a cur root
NAME_MAX = 255

_IFIX = struct.Struct(">IIIIIQqqqQQ32s32s20s")
_Q = struct.Struct(">Q")
# (mode, uid, gid, size, mtime_ns, frozen) of a packed inode, skipping the rest: what
# the re-import skip rule compares (see unchanged_file)
_HEAD = struct.Struct(">III8xQ8xq24x32x32s")
_I = struct.Struct(">I")


def ikey(ino: int) -> bytes:
    """The 8-byte big-endian key of an inode number."""
    return _Q.pack(ino)


def fserr(code: int, msg: str = "") -> EngineError:
    """An :class:`EngineError` carrying a POSIX errno (what doors turn into replies)."""
    return EngineError(code, msg or os.strerror(code))


@dataclass(slots=True)
class Inode:
    """One cur inode. Times are nanoseconds since the epoch; ``mimei`` is 20 bytes."""
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    flags: int          # bit 0: has xattrs
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    aux: int
    base: bytes
    frozen: bytes
    mimei: bytes
    target: bytes = b""

    def pack(self) -> bytes:
        return _IFIX.pack(self.mode, self.uid, self.gid, self.nlink, self.flags, self.size,
                          self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev, self.aux,
                          self.base, self.frozen, self.mimei) + self.target

    @classmethod
    def unpack(cls, ino: int, raw: bytes) -> "Inode":
        f = _IFIX.unpack_from(raw)
        return cls(ino, *f, target=bytes(raw[_IFIX.size:]))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


def same_attrs(raw: bytes | None, st) -> bool:
    """True if ``raw`` (a packed inode, or None) has the mode, owner and mtime of
    ``st`` — a tuple (mode, uid, gid, size, mtime_ns, ...) such as
    :class:`mimeifs.engine.scan.Stat`: what a re-import would copy onto it (decided
    without unpacking an :class:`Inode`)."""
    if raw is None:
        return False
    h = _HEAD.unpack_from(raw)
    return h[:3] == tuple(st[:3]) and h[4] == st[4]


def unchanged_file(raw: bytes | None, st) -> bool:
    """True if ``raw`` (a packed inode, or None) is a frozen regular file whose mode,
    owner, size and mtime equal those of ``st`` (a tuple as for :func:`same_attrs`).

    The re-import skip rule (size + mtime, as rsync and restic use), decided on the raw
    LMDB value with one ``unpack_from``: most entries of a re-import take only this
    path, so it is the importer's inner loop."""
    if raw is None or not stat.S_ISREG(st[0]):
        return False
    h = _HEAD.unpack_from(raw)
    return h[:5] == tuple(st[:5]) and h[5] != ZERO32


def clean_fields(raw: bytes) -> tuple | None:
    """For a packed inode that a backup can take as it is — a clean regular file or
    directory (``frozen`` set) without xattrs — (mode, uid, gid, size, mtime_ns, rdev,
    frozen hash), where size is a directory's total file bytes below (``aux``); None
    for any other inode. Decided on the raw bytes without building an :class:`Inode`:
    a backup reads every child of every dirty directory this way."""
    mode, uid, gid, _nl, flags, size, _a, mtime, _c, rdev, aux, _b, frozen, _m = _IFIX.unpack_from(raw)
    if flags & 1 or frozen == ZERO32:
        return None
    if stat.S_ISREG(mode):
        return mode, uid, gid, size, mtime, rdev, frozen
    if stat.S_ISDIR(mode):
        return mode, uid, gid, aux, mtime, rdev, frozen
    return None


def raw_mode(raw: bytes) -> int:
    """The st_mode of a packed inode."""
    return _I.unpack_from(raw)[0]


def now_ns() -> int:
    return time.time_ns()


def check_name(name: bytes) -> None:
    """Refuse names POSIX forbids: empty, '.', '..', with '/' or NUL, over 255 bytes."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise fserr(errno.EINVAL, f"bad name {name!r}")
    if len(name) > NAME_MAX:
        raise fserr(errno.ENAMETOOLONG)


class Worktree:
    """POSIX operations on cur inodes of every MiMei in a store.

    ``can_write(mimei20) -> bool`` decides whether this node may change a MiMei's cur
    (only MiMei this node's key authored: else ``EACCES``). Inode numbers come from a
    persistent counter, so they are stable across remounts.
    """

    def __init__(self, store, can_write, chunk_cache: blocks.ChunkCache,
                 obj_cache: objects.ObjectCache):
        self.store = store
        self.can_write = can_write
        self.chunks = chunk_cache
        self.objs = obj_cache
        s = store
        self.d_inodes, self.d_dirents, self.d_links = s.db("inodes"), s.db("dirents"), s.db("links")
        self.d_pages, self.d_xattrs, self.d_orphans = s.db("pages"), s.db("xattrs"), s.db("orphans")
        self.d_meta, self.d_blocks, self.d_manifests = s.db("meta"), s.db("blocks"), s.db("manifests")

    # ------------------------------------------------------------------ low level (txn)
    def get(self, txn, ino: int) -> Inode:
        """The inode ``ino``. Raises ENOENT."""
        raw = txn.get(ikey(ino), db=self.d_inodes)
        if raw is None:
            raise fserr(errno.ENOENT)
        return Inode.unpack(ino, raw)

    def save(self, txn, node: Inode) -> None:
        txn.put(ikey(node.ino), node.pack(), db=self.d_inodes)

    def alloc_ino(self, txn) -> int:
        n = _Q.unpack(txn.get(b"next_ino", db=self.d_meta))[0]
        txn.put(b"next_ino", _Q.pack(n + 1), db=self.d_meta)
        return n

    def new_inode(self, txn, mimei: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                  target: bytes = b"", t: int | None = None) -> Inode:
        """Allocate and save a fresh inode (not yet linked anywhere)."""
        t = now_ns() if t is None else t
        node = Inode(self.alloc_ino(txn), mode, uid, gid, 0, 0,
                     len(target) if stat.S_ISLNK(mode) else 0, t, t, t, rdev, 0,
                     ZERO32, ZERO32, mimei, target)
        self.save(txn, node)
        return node

    def child(self, txn, parent: int, name: bytes) -> int | None:
        raw = txn.get(ikey(parent) + name, db=self.d_dirents)
        return None if raw is None else _Q.unpack(raw)[0]

    def link_entry(self, txn, parent: int, name: bytes, node: Inode) -> None:
        """Add entry ``name`` -> ``node`` in ``parent``; bumps nlink (and the parent's)."""
        txn.put(ikey(parent) + name, ikey(node.ino), db=self.d_dirents)
        txn.put(ikey(node.ino) + ikey(parent) + name, b"", db=self.d_links)
        node.nlink += 2 if node.is_dir else 1
        self.save(txn, node)
        if node.is_dir and parent != ROOT_PARENT:
            p = self.get(txn, parent)
            p.nlink += 1
            self.save(txn, p)

    def unlink_entry(self, txn, parent: int, name: bytes, node: Inode) -> None:
        """Remove entry ``name`` from ``parent`` (the inode itself stays)."""
        txn.delete(ikey(parent) + name, db=self.d_dirents)
        txn.delete(ikey(node.ino) + ikey(parent) + name, db=self.d_links)
        node.nlink -= 2 if node.is_dir else 1
        if node.is_dir and parent != ROOT_PARENT:
            p = self.get(txn, parent)
            p.nlink -= 1
            self.save(txn, p)

    def parents(self, txn, ino: int) -> list[tuple[int, bytes]]:
        """(parent inode, name) of every link to ``ino``."""
        return [(_Q.unpack(k[8:16])[0], k[16:])
                for k in scan_prefix(txn, self.d_links, ikey(ino), values=False)]

    def is_within(self, txn, ino: int, ancestor: int) -> bool:
        """True if directory ``ino`` is ``ancestor`` or lies below it."""
        q = ino
        while q != ROOT_PARENT:
            if q == ancestor:
                return True
            ps = self.parents(txn, q)
            q = ps[0][0] if ps else ROOT_PARENT
        return False

    def dirty_up(self, txn, ino: int) -> None:
        """Mark every ancestor directory of ``ino`` dirty (stops at a dirty one)."""
        stack = [p for p, _ in self.parents(txn, ino)]
        while stack:
            p = stack.pop()
            if p == ROOT_PARENT:
                continue
            node = self.get(txn, p)
            if node.frozen == ZERO32:
                continue
            node.frozen = ZERO32
            self.save(txn, node)
            stack.extend(q for q, _ in self.parents(txn, p))

    def touched(self, txn, node: Inode, content: bool) -> None:
        """Record a change of ``node`` (content: its own hash changes) and dirty ancestors."""
        if content and node.frozen != ZERO32:
            node.frozen = ZERO32
        self.save(txn, node)
        self.dirty_up(txn, node.ino)

    def child_keys(self, txn, ino: int) -> list[tuple[bytes, bytes]]:
        """(name, child's 8-byte inode key) of a directory, sorted by name bytes. The
        key reads the child's inode without converting the number: what a re-import
        and a backup, which visit every child of a directory, want."""
        return [(k[8:], v) for k, v in scan_prefix(txn, self.d_dirents, ikey(ino))]

    def list_dir(self, txn, ino: int) -> list[tuple[bytes, int]]:
        """(name, child inode) of a directory, sorted by name bytes."""
        return [(n, _Q.unpack(k)[0]) for n, k in self.child_keys(txn, ino)]

    def drop_data(self, txn, ino: int, from_page: int = 0) -> None:
        """Delete the pages of ``ino`` numbered ``from_page`` and up."""
        pre = ikey(ino)
        with txn.cursor(db=self.d_pages) as c:
            if not c.set_range(pre + _Q.pack(from_page)):
                return
            while True:
                k = c.key()
                if not k or k[:8] != pre:
                    break
                c.delete()

    def free_inode(self, txn, node: Inode) -> None:
        """Delete an inode with no links left: record, pages, xattrs."""
        self.drop_data(txn, node.ino)
        if node.flags & 1:
            for k in self.xattr_keys(txn, node.ino):
                txn.delete(ikey(node.ino) + k, db=self.d_xattrs)
        txn.delete(ikey(node.ino), db=self.d_inodes)
        txn.delete(ikey(node.ino), db=self.d_orphans)

    def remove_tree(self, txn, parent: int, name: bytes, node: Inode, orphan_open) -> None:
        """Unlink ``name`` and free what no longer has links, recursively for directories.

        ``orphan_open(ino) -> bool``: whether an inode is still in use (then it is kept as
        an orphan until :meth:`forget`).
        """
        if node.is_dir:
            for cname, cino in self.list_dir(txn, node.ino):
                self.remove_tree(txn, node.ino, cname, self.get(txn, cino), orphan_open)
            node = self.get(txn, node.ino)
        self.unlink_entry(txn, parent, name, node)
        self.release_if_unlinked(txn, node, orphan_open)

    def release_if_unlinked(self, txn, node: Inode, orphan_open) -> None:
        if (node.nlink <= 0) or (node.is_dir and node.nlink <= 1):
            if orphan_open(node.ino):
                node.nlink = 0
                self.save(txn, node)
                txn.put(ikey(node.ino), b"", db=self.d_orphans)
            else:
                self.free_inode(txn, node)
        else:
            self.save(txn, node)

    def xattr_keys(self, txn, ino: int) -> list[bytes]:
        return [k[8:] for k in scan_prefix(txn, self.d_xattrs, ikey(ino), values=False)]

    def xattr_items(self, txn, ino: int) -> list[tuple[bytes, bytes]]:
        return [(k[8:], v) for k, v in scan_prefix(txn, self.d_xattrs, ikey(ino))]

    # ------------------------------------------------------------------ data
    def _base_bytes(self, txn, node: Inode, start: int, end: int) -> bytes:
        """Bytes of the base content in [start, end), clipped to the base limit."""
        end = min(end, node.aux)
        if node.base == ZERO32 or start >= end:
            return b""
        m = self.objs.manifest(txn, self.d_manifests, node.base)
        return m.read(txn, self.d_blocks, start, end - start, self.chunks)

    def page_bytes(self, txn, node: Inode, p: int) -> bytes:
        """Current bytes of page ``p`` (may be shorter than PAGE: the rest is zeros)."""
        raw = txn.get(ikey(node.ino) + _Q.pack(p), db=self.d_pages)
        if raw is not None:
            return raw
        start = p * PAGE
        return self._base_bytes(txn, node, start, min(start + PAGE, node.size))

    def read_node(self, txn, node: Inode, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file, clipped to its size.

        Works with a ``buffers=True`` transaction (pages are joined once, no other copy).
        """
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        if node.frozen != ZERO32:  # clean: no pages, whole base visible
            return self._base_bytes(txn, node, offset, end)
        parts = []
        pre = ikey(node.ino)
        pos = offset
        p = offset // PAGE
        while pos < end:
            pstart = p * PAGE
            raw = txn.get(pre + _Q.pack(p), db=self.d_pages)
            if raw is None:
                raw = self._base_bytes(txn, node, pstart, min(pstart + PAGE, node.size))
            s, e = pos - pstart, min(end, pstart + PAGE) - pstart
            seg = raw[s:e]
            parts.append(seg)
            if len(seg) < e - s:  # a short page: the rest is a hole
                parts.append(bytes(e - s - len(seg)))
            pos = pstart + e
            p += 1
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)

    def write_node(self, txn, node: Inode, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (extending, sparse where a gap opens)."""
        end = offset + len(data)
        mv = memoryview(data)
        pre = ikey(node.ino)
        p = offset // PAGE
        while p * PAGE < end:
            pstart = p * PAGE
            s, e = max(offset, pstart), min(end, pstart + PAGE)
            if s == pstart and (e == pstart + PAGE or e >= node.size):
                # covers the page from its start to its end or to (past) the old EOF:
                # no old byte of this page survives (LMDB copies the view: no copy here)
                page = mv[s - offset:e - offset]
            else:
                buf = bytearray(self.page_bytes(txn, node, p))
                if len(buf) < e - pstart:
                    buf.extend(bytes(e - pstart - len(buf)))
                buf[s - pstart:e - pstart] = mv[s - offset:e - offset]
                page = buf
            txn.put(pre + _Q.pack(p), page, db=self.d_pages)
            p += 1
        if end > node.size:
            node.size = end

    def truncate_node(self, txn, node: Inode, size: int) -> None:
        """Set the file size; shrinking drops pages past it and hides base bytes past it."""
        if size < node.size:
            last = size // PAGE
            pre = ikey(node.ino)
            if size % PAGE:
                data = self.page_bytes(txn, node, last)
                txn.put(pre + _Q.pack(last), bytes(data[:size % PAGE]), db=self.d_pages)
                self.drop_data(txn, node.ino, last + 1)
            else:
                self.drop_data(txn, node.ino, last)
            node.aux = min(node.aux, size)
        node.size = size

    # ------------------------------------------------------------------ public ops
    def writable(self, node: Inode) -> None:
        if not self.can_write(node.mimei):
            raise fserr(errno.EACCES, "this node's key did not author this MiMei")

    def getattr(self, ino: int) -> Inode:
        with self.store.read() as txn:
            return self.get(txn, ino)

    def lookup(self, parent: int, name: bytes) -> Inode:
        """The child ``name`` of directory ``parent``. Raises ENOENT, ENOTDIR."""
        with self.store.read() as txn:
            p = self.get(txn, parent)
            if not p.is_dir:
                raise fserr(errno.ENOTDIR)
            c = self.child(txn, parent, name)
            if c is None:
                raise fserr(errno.ENOENT)
            return self.get(txn, c)

    def readdir(self, ino: int) -> list[tuple[bytes, Inode]]:
        """Every entry of a directory with its inode, sorted by name."""
        with self.store.read() as txn:
            if not self.get(txn, ino).is_dir:
                raise fserr(errno.ENOTDIR)
            return [(n, self.get(txn, c)) for n, c in self.list_dir(txn, ino)]

    def read(self, ino: int, offset: int, size: int) -> bytes:
        with self.store.read(buffers=True) as txn:
            node = self.get(txn, ino)
            if node.is_dir:
                raise fserr(errno.EISDIR)
            return self.read_node(txn, node, offset, size)

    def readlink(self, ino: int) -> bytes:
        node = self.getattr(ino)
        if not node.is_lnk:
            raise fserr(errno.EINVAL)
        return node.target

    def make(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
             rdev: int = 0, target: bytes = b"") -> Inode:
        """Create a file, directory, symlink, device or fifo ``name`` in ``parent``.

        ``mode`` carries the type bits. Raises EEXIST, ENOENT, ENOTDIR, EACCES, EINVAL.
        """
        check_name(name)
        with self.store.write() as txn:
            p = self.get(txn, parent)
            if not p.is_dir:
                raise fserr(errno.ENOTDIR)
            if p.nlink == 0:
                raise fserr(errno.ENOENT, "directory was removed")
            self.writable(p)
            if self.child(txn, parent, name) is not None:
                raise fserr(errno.EEXIST)
            t = now_ns()
            node = self.new_inode(txn, p.mimei, mode, uid, gid, rdev, target, t)
            if node.is_reg:
                node.aux = 0
            self.link_entry(txn, parent, name, node)
            p = self.get(txn, parent)
            p.mtime_ns = p.ctime_ns = t
            self.touched(txn, p, content=True)
            return self.get(txn, node.ino)

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        """Hard link ``ino`` as ``name`` in ``parent``. Raises EPERM for directories."""
        check_name(name)
        with self.store.write() as txn:
            node = self.get(txn, ino)
            p = self.get(txn, parent)
            if node.is_dir:
                raise fserr(errno.EPERM)
            if not p.is_dir:
                raise fserr(errno.ENOTDIR)
            self.writable(p)
            if node.mimei != p.mimei:
                raise fserr(errno.EXDEV, "hard links stay inside one MiMei")
            if self.child(txn, parent, name) is not None:
                raise fserr(errno.EEXIST)
            t = now_ns()
            self.link_entry(txn, parent, name, node)
            node = self.get(txn, ino)
            node.ctime_ns = t
            self.save(txn, node)
            p = self.get(txn, parent)
            p.mtime_ns = p.ctime_ns = t
            self.touched(txn, p, content=True)
            return node

    def unlink(self, parent: int, name: bytes, is_open=lambda ino: False, rmdir: bool = False) -> None:
        """Remove a non-directory (or, with ``rmdir``, an empty directory)."""
        with self.store.write() as txn:
            p = self.get(txn, parent)
            self.writable(p)
            c = self.child(txn, parent, name)
            if c is None:
                raise fserr(errno.ENOENT)
            node = self.get(txn, c)
            if rmdir:
                if not node.is_dir:
                    raise fserr(errno.ENOTDIR)
                if self.list_dir(txn, c):
                    raise fserr(errno.ENOTEMPTY)
            elif node.is_dir:
                raise fserr(errno.EISDIR)
            t = now_ns()
            self.unlink_entry(txn, parent, name, node)
            node.ctime_ns = t
            self.release_if_unlinked(txn, node, is_open)
            p = self.get(txn, parent)
            p.mtime_ns = p.ctime_ns = t
            self.touched(txn, p, content=True)

    def rename(self, p1: int, n1: bytes, p2: int, n2: bytes, flags: int = 0,
               is_open=lambda ino: False) -> None:
        """rename(2) with RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2).

        Replacing an existing target is atomic (one transaction): the editor's
        write-temp-then-rename save. Raises ENOENT, EEXIST, ENOTEMPTY, EISDIR, ENOTDIR,
        EINVAL (directory into itself), EXDEV (across MiMei).
        """
        check_name(n2)
        with self.store.write() as txn:
            a = self.get(txn, p1)
            b = self.get(txn, p2)
            self.writable(a)
            self.writable(b)
            if a.mimei != b.mimei:
                raise fserr(errno.EXDEV)
            src = self.child(txn, p1, n1)
            if src is None:
                raise fserr(errno.ENOENT)
            snode = self.get(txn, src)
            dst = self.child(txn, p2, n2)
            if dst == src:
                return
            # no directory into its own subtree (either way round for an exchange)
            moves = [(snode, p2)]
            if flags & 2 and dst is not None:
                moves.append((self.get(txn, dst), p1))
            for moving, into in moves:
                if moving.is_dir and self.is_within(txn, into, moving.ino):
                    raise fserr(errno.EINVAL)
            t = now_ns()
            if flags & 2:  # exchange
                if dst is None:
                    raise fserr(errno.ENOENT)
                dnode = self.get(txn, dst)
                self.unlink_entry(txn, p1, n1, snode)
                self.unlink_entry(txn, p2, n2, dnode)
                self.link_entry(txn, p2, n2, snode)
                self.link_entry(txn, p1, n1, dnode)
                for x in (snode, dnode):
                    x = self.get(txn, x.ino)
                    x.ctime_ns = t
                    self.touched(txn, x, content=False)
            else:
                if dst is not None:
                    if flags & 1:
                        raise fserr(errno.EEXIST)
                    dnode = self.get(txn, dst)
                    if dnode.is_dir:
                        if not snode.is_dir:
                            raise fserr(errno.EISDIR)
                        if self.list_dir(txn, dst):
                            raise fserr(errno.ENOTEMPTY)
                    elif snode.is_dir:
                        raise fserr(errno.ENOTDIR)
                    self.unlink_entry(txn, p2, n2, dnode)
                    dnode.ctime_ns = t
                    self.release_if_unlinked(txn, dnode, is_open)
                snode = self.get(txn, src)
                self.unlink_entry(txn, p1, n1, snode)
                self.link_entry(txn, p2, n2, snode)
                snode = self.get(txn, src)
                snode.ctime_ns = t
                self.save(txn, snode)
            for pino in {p1, p2}:
                pn = self.get(txn, pino)
                pn.mtime_ns = pn.ctime_ns = t
                self.touched(txn, pn, content=True)

    def setattr(self, ino: int, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None) -> Inode:
        """chmod / chown / truncate / utimens in one transaction; returns the new inode."""
        with self.store.write() as txn:
            node = self.get(txn, ino)
            self.writable(node)
            t = now_ns()
            content = False
            if size is not None and size != node.size:
                if not node.is_reg:
                    raise fserr(errno.EISDIR if node.is_dir else errno.EINVAL)
                self.truncate_node(txn, node, size)
                node.mtime_ns = t
                content = True
            if mode is not None:
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
            if uid is not None:
                node.uid = uid
            if gid is not None:
                node.gid = gid
            if atime_ns is not None:
                node.atime_ns = atime_ns
            if mtime_ns is not None:
                node.mtime_ns = mtime_ns
            node.ctime_ns = t
            self.touched(txn, node, content=content)
            return node

    def write(self, ino: int, offset: int, data: bytes) -> int:
        """pwrite(2): returns the number of bytes written."""
        if offset < 0:
            raise fserr(errno.EINVAL)
        with self.store.write() as txn:
            node = self.get(txn, ino)
            if not node.is_reg:
                raise fserr(errno.EISDIR if node.is_dir else errno.EINVAL)
            self.writable(node)
            if not data:  # POSIX: a zero-length write changes nothing
                return 0
            self.write_node(txn, node, offset, data)
            node.mtime_ns = node.ctime_ns = now_ns()
            self.touched(txn, node, content=True)
        return len(data)

    def forget(self, ino: int) -> None:
        """The last user of ``ino`` let go: free it if it is an unlinked orphan."""
        with self.store.write() as txn:
            if txn.get(ikey(ino), db=self.d_orphans) is None:
                return
            try:
                node = self.get(txn, ino)
            except OSError:
                txn.delete(ikey(ino), db=self.d_orphans)
                return
            if node.nlink <= 0:
                self.free_inode(txn, node)
            else:
                txn.delete(ikey(ino), db=self.d_orphans)

    def reap_orphans(self) -> int:
        """Free every orphan (at mount time: nothing can hold them). Returns the count."""
        with self.store.write() as txn:
            inos = [_Q.unpack(k)[0] for k in txn.cursor(db=self.d_orphans).iternext(values=False)]
            for ino in inos:
                try:
                    node = self.get(txn, ino)
                    if node.nlink <= 0:
                        self.free_inode(txn, node)
                        continue
                except OSError:
                    pass
                txn.delete(ikey(ino), db=self.d_orphans)
        return len(inos)

    # ------------------------------------------------------------------ xattrs
    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self.store.read() as txn:
            self.get(txn, ino)
            v = txn.get(ikey(ino) + name, db=self.d_xattrs)
            if v is None:
                raise fserr(errno.ENODATA)
            return v

    def listxattr(self, ino: int) -> list[bytes]:
        with self.store.read() as txn:
            self.get(txn, ino)
            return self.xattr_keys(txn, ino)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """setxattr(2) with XATTR_CREATE (1) / XATTR_REPLACE (2)."""
        if not name or len(name) > 255:
            raise fserr(errno.ERANGE)
        if len(value) > 65536:
            raise fserr(errno.E2BIG)
        with self.store.write() as txn:
            node = self.get(txn, ino)
            self.writable(node)
            k = ikey(ino) + name
            exists = txn.get(k, db=self.d_xattrs) is not None
            if flags & 1 and exists:
                raise fserr(errno.EEXIST)
            if flags & 2 and not exists:
                raise fserr(errno.ENODATA)
            txn.put(k, value, db=self.d_xattrs)
            node.flags |= 1
            node.ctime_ns = now_ns()
            self.touched(txn, node, content=False)

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.store.write() as txn:
            node = self.get(txn, ino)
            self.writable(node)
            if not txn.delete(ikey(ino) + name, db=self.d_xattrs):
                raise fserr(errno.ENODATA)
            if not self.xattr_keys(txn, ino):
                node.flags &= ~1
            node.ctime_ns = now_ns()
            self.touched(txn, node, content=False)
