"""cur's namespace: inode records, directory entries, links, xattrs and dirty marks,
inside a caller's LMDB transaction.

Part of ``cur`` (see :mod:`mimeifs.engine.worktree`). Records (sub-databases of
``db.ENGINE_DBS``): ``inodes`` (:mod:`mimeifs.engine.inode`), ``dirents`` parent +
name -> child, ``links`` child + parent + name -> b'', ``xattrs`` ino + name -> value,
``orphans`` ino -> b''. A change marks the inode and every ancestor directory dirty
(stopping at one already dirty: a dirty directory's ancestors are dirty, the invariant
``backup.freeze`` relies on).

Every method takes the open transaction ``txn``; none commits. Backup, importer and
maintenance change records only through the named operations at the end of this
class (``set_content``, ``set_dir_frozen``, ``checkout_entry``, ``new_child``,
``set_source_attrs``, ``add_xattrs``, ``inodes``), never by writing records or flag
bits themselves.
"""

from __future__ import annotations

import errno
import stat
from typing import Iterator

from .db import scan_prefix
from .inode import ROOT_PARENT, ZERO32, Inode, _Q, fserr, ikey, now_ns

XATTRS = 1  # Inode.flags bit: the inode has xattrs


class InodeTable:
    """Mixin of :class:`mimeifs.engine.worktree.Worktree`: record-level operations.

    Expects ``self.d_inodes``, ``d_dirents``, ``d_links``, ``d_xattrs``, ``d_orphans``,
    ``d_meta`` (LMDB handles) and ``self.drop_data`` (:class:`~.pages.DataPages`).
    """

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

    def free_inode(self, txn, node: Inode) -> None:
        """Delete an inode with no links left: record, pages, xattrs."""
        self.store.note_freed()
        self.drop_data(txn, node.ino)
        if node.flags & XATTRS:
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


    # ------------------------------------------------------------------ named record ops
    def inodes(self, txn) -> Iterator[Inode]:
        """Every cur inode of every MiMei, by inode number (what check and gc walk)."""
        with txn.cursor(db=self.d_inodes) as c:
            for k, v in c:
                yield Inode.unpack(_Q.unpack(k)[0], v)

    def set_content(self, txn, node: Inode, h: bytes, size: int) -> None:
        """Make ``node`` a clean file whose content is manifest ``h`` of ``size`` bytes:
        its pages are dropped, base and frozen become ``h``. Saves ``node`` (its other
        fields as the caller left them); does not dirty the ancestors."""
        self.drop_data(txn, node.ino)
        node.size = node.aux = size
        node.base = node.frozen = h
        self.save(txn, node)

    def set_dir_frozen(self, txn, ino: int, h: bytes, total: int) -> None:
        """Record that directory ``ino`` is clean: its tree hash ``h`` and the total
        file bytes below it (what a backup learns)."""
        node = self.get(txn, ino)
        node.frozen, node.aux = h, total
        self.save(txn, node)

    def add_xattrs(self, txn, node: Inode, items) -> None:
        """Store xattrs ``items`` ((name, value) bytes pairs) on ``node`` and set its
        xattr flag (``node`` is saved by the caller)."""
        pre = ikey(node.ino)
        for k, v in items:
            txn.put(pre + k, v, db=self.d_xattrs)
        node.flags |= XATTRS

    def new_child(self, txn, parent: int, name: bytes, mode: int, uid: int, gid: int,
                  rdev: int = 0, target: bytes = b"", dirty: bool = True) -> Inode:
        """A fresh inode linked as ``name`` in directory ``parent`` (same MiMei); with
        ``dirty`` its ancestors are marked dirty. Returns the saved inode."""
        node = self.new_inode(txn, self.get(txn, parent).mimei, mode, uid, gid, rdev, target)
        self.link_entry(txn, parent, name, node)
        if dirty:
            self.dirty_up(txn, node.ino)
        return node

    def checkout_entry(self, txn, parent: Inode, e) -> Inode:
        """Create the clean cur inode of version entry ``e`` (an ``objects.Entry``) as a
        child of ``parent``: it shares the version's blocks (base = frozen = its hash).
        Returns the saved inode."""
        t = e.mtime_ns
        if stat.S_ISLNK(e.mode):
            node = self.new_inode(txn, parent.mimei, e.mode, e.uid, e.gid, 0, e.target, t)
        else:
            node = self.new_inode(txn, parent.mimei, e.mode, e.uid, e.gid, e.rdev, b"", t)
        if e.is_file:
            node.size, node.aux, node.base, node.frozen = e.size, e.size, e.hash, e.hash
        elif e.is_dir:
            node.aux, node.frozen = e.size, e.hash
        if e.xattrs:
            self.add_xattrs(txn, node, e.xattrs)
        self.link_entry(txn, parent.ino, e.name, node)
        return node

    def set_source_attrs(self, txn, node: Inode, mode: int, uid: int, gid: int,
                         mtime_ns: int) -> bool:
        """Copy permission bits, owner and mtime from an imported source onto ``node``;
        if any changed, save it and dirty its ancestors. Returns whether it changed."""
        mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        if (node.mode, node.uid, node.gid, node.mtime_ns) == (mode, uid, gid, mtime_ns):
            return False
        node.mode, node.uid, node.gid, node.mtime_ns = mode, uid, gid, mtime_ns
        self.save(txn, node)
        self.dirty_up(txn, node.ino)
        return True
