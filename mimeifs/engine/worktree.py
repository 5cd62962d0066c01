"""``cur``: the writable working copy of a MiMei, as an inode table in LMDB.

DESIGN.md "Storage": cur is an inode table plus file data pages in LMDB; a backup
freezes it into the immutable DAG (``backup.py``) at a cost that grows with what changed.

The parts, one module each:

- :mod:`~mimeifs.engine.inode`: the packed inode record and raw-byte helpers;
- :mod:`~mimeifs.engine.inodetable`: directory entries, links, xattrs, dirty marks and
  the named record operations backup, importer and maintenance use;
- :mod:`~mimeifs.engine.pages`: file bytes (pages over a base manifest);
- this module: the POSIX operations, each one short LMDB write transaction (the env
  commits without fsync; ``Store.sync`` is the durability point), so other processes —
  the CLI beside a running mount — see each change at once.

Errors are :class:`~mimeifs.engine.errors.EngineError` with a POSIX errno.
"""

from __future__ import annotations

import errno
import stat

from . import blocks, objects
from .inode import (NAME_MAX, PAGE, ROOT_PARENT, ZERO32, Inode, _Q, check_len, check_name,  # noqa: F401
                    clean_fields, fserr, ikey, now_ns, raw_mode, same_attrs, unchanged_file)
from .inodetable import XATTRS, InodeTable
from .pages import SPARSE_MIN, DataPages

MIMEI_ID_XATTR = b"user.mimei.id"


class Worktree(InodeTable, DataPages):
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
        self._held_cache: dict[tuple, int] = {}  # (ino, ctime, size, frozen) -> held bytes

    # ------------------------------------------------------------------ public ops
    def writable(self, node: Inode) -> None:
        if not self.can_write(node.mimei):
            raise fserr(errno.EACCES, "this node's key did not author this MiMei")

    def getattr(self, ino: int) -> Inode:
        with self.store.read() as txn:
            return self.get(txn, ino)

    def st_blocks(self, node: Inode) -> int:
        """``st_blocks`` (512-byte units) of a cur inode: the data it really holds, so
        ``du`` of a sparse file shows its holes (:meth:`held_bytes`). 0 for anything
        but a regular file."""
        if not node.is_reg:
            return 0
        if node.size < SPARSE_MIN:
            return (node.size + 511) // 512
        key = (node.ino, node.ctime_ns, node.size, node.frozen)
        cache = self._held_cache
        held = cache.get(key)
        if held is None:
            with self.store.read(buffers=True) as txn:
                held = self.held_bytes(txn, node)
            if len(cache) > 4096:
                cache.clear()
            cache[key] = held
        return (held + 511) // 512

    def lookup(self, parent: int, name: bytes) -> Inode:
        """The child ``name`` of directory ``parent``. Raises ENOENT, ENOTDIR,
        ENAMETOOLONG."""
        check_len(name)
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
        check_len(name)
        with self.store.write(room=False) as txn:
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
        check_len(n1)
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
        """chmod / chown / truncate / utimens in one transaction; returns the new inode.
        A truncate to 0 runs on a full store (it frees space)."""
        with self.store.write(room=size != 0) as txn:
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
        with self.store.write(room=False) as txn:
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
        with self.store.write(room=False) as txn:
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

    def xattr_names(self, ino: int) -> list[bytes]:
        """What ``listxattr(2)`` of a cur inode shows: its stored xattrs plus the
        synthesized ``user.mimei.id`` (which getxattr answers for every cur inode)."""
        with self.store.read() as txn:
            node = self.get(txn, ino)
            names = self.xattr_keys(txn, ino) if node.flags & XATTRS else []
            return [MIMEI_ID_XATTR] + [n for n in names if n != MIMEI_ID_XATTR]

    def mimei_id_xattr(self, ino: int) -> bytes:
        """The value of ``user.mimei.id`` on a cur inode: its MiMei ID in hex."""
        return self.getattr(ino).mimei.hex().encode()

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
            node.flags |= XATTRS
            node.ctime_ns = now_ns()
            self.touched(txn, node, content=False)

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.store.write(room=False) as txn:
            node = self.get(txn, ino)
            self.writable(node)
            if not txn.delete(ikey(ino) + name, db=self.d_xattrs):
                raise fserr(errno.ENODATA)
            if not self.xattr_keys(txn, ino):
                node.flags &= ~XATTRS
            node.ctime_ns = now_ns()
            self.touched(txn, node, content=False)

