"""pyfuse3 Operations: the FUSE door onto the view (:mod:`mimeifs.view`).

What a path means is the view's business; this module keeps only what is FUSE's:

- inode numbers: cur inodes are the engine's persistent ones; every other node's number
  is the view's stable derived one (:func:`mimeifs.view.nodes.vino`), and the node is
  kept in :attr:`Operations.vnodes` while the kernel holds it (dropped at FORGET);
- the kernel's caches: versions, Mac files and per-MiMei nodes get day-long entry and
  attribute timeouts and ``keep_cache``; cur 30 s; ``name/<mark>`` 1 s; the daemon
  invalidates what changed after every whole-MiMei command, import, or newer version
  of a remote MiMei (:meth:`Operations.invalidate_all`), and what the view says
  changed behind the kernel's back (a share's source sync, an edited share:
  :meth:`Operations.invalidate_view`); ``shared/`` nodes are the view's (:mod:`mimeifs.view.shares`);
- pyfuse3's types and the control file ``/.__mimeifs_ctrl__`` (:mod:`.control`);
- errors: an :class:`~mimeifs.engine.errors.EngineError` or ``OSError`` becomes its
  errno; anything else is a bug, logged with its traceback and answered EIO.

Concurrency: every handler runs on the trio thread, where fetching is forbidden. A
request that needs an object this store lacks (a remote MiMei read lazily) gets
``ChunkMissing`` there and is answered from a worker thread instead
(:meth:`Operations._call`), where the engine fetches; other requests go on meanwhile.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from dataclasses import dataclass, field

import pyfuse3
import trio

from ..engine.errors import ChunkMissing
from ..engine.mimei import Engine
from ..view import View
from ..view.nodes import CUR, FIXED_DIRS, LONG, MM, ROOT, SHORT, VIRT, Attr, Node, ver_inos
from ..view.shares import share_entries
from .prefetch import DirPrefetch

log = logging.getLogger("mimeifs.fuse")

CTRL = 6
CTRL_NAME = b".__mimeifs_ctrl__"
_VIRT = VIRT

#: Kernel cache timeouts (s) of the view's cache classes.
TIMEOUTS = {LONG: 86400.0, CUR: 30.0, SHORT: 1.0}


@dataclass
class DirHandle:
    node: Node
    entries: list = field(default_factory=list)


def handler(fn):
    """Map engine errors to FUSEError once; log and answer EIO for anything else."""
    @functools.wraps(fn)
    async def wrapper(self, *a, **kw):
        try:
            return await fn(self, *a, **kw)
        except pyfuse3.FUSEError:
            raise
        except ChunkMissing as e:
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as e:
            if e.errno == errno.EIO:
                log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s(%s) failed", fn.__name__, brief(a))
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def brief(args) -> str:
    """A request's arguments for a log line: payloads (bytes over 64, e.g. a write's
    buffer or an xattr value) as their size, never their bytes (issue 11 item 5: a full
    disk must not fill up with logged buffers)."""
    out = []
    for x in args:
        if isinstance(x, (bytes, bytearray, memoryview)) and len(x) > 64:
            out.append(f"<{len(x)} bytes>")
        else:
            r = repr(x)
            out.append(r if len(r) <= 200 else r[:200] + "...")
    return ", ".join(out)


def _err(code: int):
    return pyfuse3.FUSEError(code)


def entry_attributes(a: Attr) -> pyfuse3.EntryAttributes:
    """The view's attributes as pyfuse3's, with the kernel timeouts of their class."""
    r = pyfuse3.EntryAttributes()
    r.st_ino = a.ino
    r.generation = 0
    r.entry_timeout = r.attr_timeout = TIMEOUTS[a.cache]
    r.st_mode = a.mode
    r.st_nlink = a.nlink
    r.st_uid = a.uid
    r.st_gid = a.gid
    r.st_rdev = a.rdev
    r.st_size = a.size
    r.st_blksize = 128 * 1024
    r.st_blocks = a.blocks
    r.st_atime_ns = a.atime_ns
    r.st_mtime_ns = a.mtime_ns
    r.st_ctime_ns = a.ctime_ns
    return r


class Operations(pyfuse3.Operations):
    """The mimeifs filesystem over ``view`` (a :class:`View`; one is made over
    ``engine`` when not given). ``mount_uid`` owns the fixed and derived nodes and may
    use the control file; ``ctrl`` is the control file's handler (or None)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, engine: Engine, mount_uid: int = 0, view: View | None = None,
                 ctrl_factory=None, dir_readahead: bool = True):
        super().__init__()
        self.e = engine
        self.wt = engine.wt
        self.mount_uid = mount_uid
        self.view = view or View(engine, mount_uid, self._in_use)
        self.view.in_use = self._in_use
        engine.is_open = self._in_use
        self.vnodes: dict[int, Node] = {}
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_dh = 1
        self.ctrl = ctrl_factory(self) if ctrl_factory else None
        self.prefetch = DirPrefetch(engine.read_content, pyfuse3.notify_store,
                                    lambda ino: self.opens.get(ino, 0) > 0)
        self.prefetch.enabled = dir_readahead

    # ------------------------------------------------------------------ bookkeeping
    def _in_use(self, ino: int) -> bool:
        if self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0:
            return True
        for fh in self.opens:  # open through a share under a number of its own (few)
            if fh >= _VIRT:
                n = self.vnodes.get(fh)
                if n is not None and n.inner is not None and n.inner.kind == "cur" \
                        and n.inner.ino == ino:
                    return True
        return False

    def _node(self, ino: int) -> Node:
        """The view node the kernel means by ``ino``."""
        if ino >= _VIRT:
            n = self.vnodes.get(ino)
            if n is None:
                raise _err(errno.ENOENT)
            return n
        if ino > CTRL:
            return self.view.cur(ino)
        if ino == CTRL:
            raise _err(errno.ENOTDIR)
        return self.view.fixed(ino)

    def _keep(self, node: Node) -> Node:
        if node.ino >= _VIRT:
            self.vnodes[node.ino] = node
        return node

    def _counted(self, a: Attr) -> pyfuse3.EntryAttributes:
        self.lookups[a.ino] = self.lookups.get(a.ino, 0) + 1
        return entry_attributes(a)

    async def _call(self, fn, *args):
        """``fn(*args)`` on this thread; if it lacks an object, again in a worker thread
        where the engine may fetch it (see the module docstring)."""
        try:
            return fn(*args)
        except ChunkMissing:
            if self.e.fetcher is None:
                raise
        return await trio.to_thread.run_sync(fn, *args)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if ino >= _VIRT:
                # the kernel forgets a node only after all its children: drop ours too,
                # or walking big versions would grow this map for the daemon's life
                if not self.opens.get(ino):
                    self.vnodes.pop(ino, None)
            elif ino > CTRL and not self.opens.get(ino):
                try:
                    self.wt.forget(ino)
                except Exception:
                    log.exception("forget %d", ino)

    # ------------------------------------------------------------------ attributes
    def _ctrl_attr(self) -> Attr:
        return self.view.base_attr(CTRL, stat.S_IFREG | 0o600, 0, 1, uid=self.mount_uid)

    def _attr(self, ino: int) -> Attr:
        if ino == CTRL:
            return self._ctrl_attr()
        return self.view.attr(self._node(ino))

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            return self._counted(self._attr(parent_inode))
        if parent_inode == ROOT and name == CTRL_NAME:
            return self._counted(self._ctrl_attr())
        node = self._keep(await self._call(self.view.lookup, self._node(parent_inode), name))
        return self._counted(await self._call(self.view.attr, node))

    @handler
    async def getattr(self, inode, ctx=None):
        return entry_attributes(self._attr(inode))

    @handler
    async def readlink(self, inode, ctx):
        if inode == CTRL:
            raise _err(errno.EINVAL)
        return self.view.readlink(self._node(inode))

    # ------------------------------------------------------------------ directories
    @handler
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        self.view.attr(node)
        fh = self._next_dh
        self._next_dh += 1
        self.dirs[fh] = DirHandle(node)
        return fh

    def _listing(self, node: Node) -> list[tuple[bytes, Node, Attr]]:
        out = self.view.children(node)
        if node.kind == "root":
            out.append((CTRL_NAME, None, self._ctrl_attr()))
        return out

    @handler
    async def readdir(self, fh, start_id, token):
        d = self.dirs.get(fh)
        if d is None:
            raise _err(errno.EBADF)
        if start_id == 0 or not d.entries:
            d.entries = await self._call(self._listing, d.node)
        vnodes, lookups = self.vnodes, self.lookups
        for i in range(start_id, len(d.entries)):
            name, node, a = d.entries[i]
            if not pyfuse3.readdir_reply(token, name, entry_attributes(a), i + 1):
                break
            if node is not None and a.ino >= _VIRT:
                vnodes[a.ino] = node
            lookups[a.ino] = lookups.get(a.ino, 0) + 1

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        self.e.store.sync()

    # ------------------------------------------------------------------ namespace writes
    def _parent(self, ino: int) -> Node:
        if ino == CTRL:
            raise _err(errno.ENOTDIR)
        return self._node(ino)

    @staticmethod
    def _mode(mode: int, ctx) -> int:
        return mode & ~(ctx.umask if ctx is not None else 0)

    async def _make(self, parent, name, mode, ctx, rdev=0, target=b""):
        node = self._keep(self.view.make(self._parent(parent), name, mode, ctx.uid, ctx.gid,
                                         rdev, target))
        return self._counted(self.view.attr(node))

    @handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._make(parent_inode, name, self._mode(mode, ctx), ctx, rdev)

    @handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._make(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(self._mode(mode, ctx)), ctx)

    @handler
    async def symlink(self, parent_inode, name, target, ctx):
        return await self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, 0, target)

    @handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = await self._make(parent_inode, name, stat.S_IFREG | stat.S_IMODE(self._mode(mode, ctx)), ctx)
        self.opens[attr.st_ino] = self.opens.get(attr.st_ino, 0) + 1
        return pyfuse3.FileInfo(fh=attr.st_ino), attr

    @handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        parent = self._parent(new_parent_inode)
        node = self._node(inode) if inode != CTRL else Node("fixed", ino=CTRL)
        return self._counted(self.view.attr(self.view.link(node, parent, new_name)))

    @handler
    async def unlink(self, parent_inode, name, ctx):
        self.view.unlink(self._parent(parent_inode), name)

    @handler
    async def rmdir(self, parent_inode, name, ctx):
        self.view.rmdir(self._parent(parent_inode), name)

    @handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.view.rename(self._parent(parent_inode_old), name_old,
                         self._parent(parent_inode_new), name_new, flags)

    @handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode == CTRL:
            raise _err(errno.EROFS)
        a = await self._call(functools.partial(
            self.view.setattr, self._node(inode),
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None))
        return entry_attributes(a)

    # ------------------------------------------------------------------ files
    @handler
    async def open(self, inode, flags, ctx):
        if inode == CTRL:
            return pyfuse3.FileInfo(fh=CTRL)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        node = self._node(inode)
        self.view.open_check(node, writing)
        if writing and flags & os.O_TRUNC:  # open_check let only a writable file through
            await self._call(self.view.truncate_for_open, node)
        self.opens[inode] = self.opens.get(inode, 0) + 1
        if node.kind in ("info", "mmfs"):
            return pyfuse3.FileInfo(fh=inode, direct_io=True)
        if node.kind == "ver":
            d = node.parent
            self.prefetch.opened(d, lambda: self._readahead_list(d, inode))
        return pyfuse3.FileInfo(fh=inode, keep_cache=not self.view.may_change(node))

    def _readahead_list(self, d_ino: int, skip: int):
        """(inode, hash, size) of the files of version directory ``d_ino`` that the
        kernel holds an inode for, but ``skip``: what :class:`DirPrefetch` may push."""
        d = self.vnodes.get(d_ino)
        if d is None or d.kind != "ver" or not d.entry.is_dir:
            return
        try:
            tree = self.e.tree(d.entry.hash)
        except ChunkMissing:  # a remote version's tree not here: no readahead
            return
        ino_of = ver_inos(d, d_ino)
        for e in tree.entries:
            if e.is_file:
                ino = ino_of(e.name)
                if ino != skip and self.lookups.get(ino):
                    yield ino, e.hash, e.size

    @handler
    async def read(self, fh, off, size):
        if fh == CTRL:
            return b""
        node = self._node(fh)
        if size >= 1 << 20 and self.view.shown(node).kind in ("ver", "mac"):
            return await trio.to_thread.run_sync(self.view.read, node, off, size)
        return await self._call(self.view.read, node, off, size)

    @handler
    async def write(self, fh, off, buf):
        if fh == CTRL:
            raise _err(errno.EINVAL)
        return await self._call(self.view.write, self._node(fh), off, buf)

    async def flush(self, fh):
        # Nothing to do at close (every write is already committed); ENOSYS tells the
        # kernel to stop sending FLUSH, one round trip fewer per close(2).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @handler
    async def fsync(self, fh, datasync):
        self.e.store.sync()

    async def release(self, fh):
        if fh == CTRL:
            return
        left = self.opens.get(fh, 0) - 1
        if left > 0:
            self.opens[fh] = left
            return
        self.opens.pop(fh, None)
        ino = fh
        if fh >= _VIRT:  # a cur file opened through a share stands for its engine inode
            n = self.vnodes.get(fh)
            ino = n.inner.ino if n is not None and n.inner is not None and n.inner.kind == "cur" else 0
        if ino and ino < _VIRT and not self._in_use(ino):  # a cur orphan may now be freed
            try:
                self.wt.forget(ino)
            except Exception:
                log.exception("release %d", fh)

    # ------------------------------------------------------------------ xattrs
    @handler
    async def getxattr(self, inode, name, ctx):
        if inode == CTRL:
            if name.startswith(b"system.") or name == b"security.selinux":
                raise _err(errno.EOPNOTSUPP)
            if self.ctrl is None:
                raise _err(errno.ENODATA)
            return self.ctrl.result(name, ctx)
        return self.view.getxattr(self._node(inode), name)

    @handler
    async def listxattr(self, inode, ctx):
        if inode == CTRL:
            return []
        return self.view.listxattr(self._node(inode))

    @handler
    async def setxattr(self, inode, name, value, ctx):
        if inode == CTRL:
            if self.ctrl is None:
                raise _err(errno.ENOTSUP)
            await self.ctrl.command(name, value, ctx)
            return
        self.view.setxattr(self._node(inode), name, value)

    @handler
    async def removexattr(self, inode, name, ctx):
        if inode == CTRL:
            raise _err(errno.EROFS)
        self.view.removexattr(self._node(inode), name)

    # ------------------------------------------------------------------ fs
    @handler
    async def statfs(self, ctx):
        s = self.view.statfs()
        r = pyfuse3.StatvfsData()
        r.f_bsize = s.f_bsize
        r.f_frsize = s.f_frsize
        r.f_blocks = s.f_blocks
        r.f_bfree = s.f_bfree
        r.f_bavail = s.f_bavail
        r.f_files = s.f_files
        r.f_ffree = s.f_ffree
        r.f_favail = s.f_favail
        r.f_namemax = 255
        return r

    # ------------------------------------------------------------------ invalidation
    async def invalidate_all(self, mimei: str | None = None, removed: bool = False,
                             names=()) -> None:
        """Drop what the kernel caches of cur inodes and of a MiMei's changing nodes.

        After a whole-MiMei command: every cur inode the kernel holds, the MiMei's
        ``last``, ``release``, ``v/``, ``.info`` (attributes and directory entries), and
        with ``removed`` its entry in ``mm/``; ``names``: cur entries (parent inode,
        name) the command removed (restore), each dropped by name, since invalidating
        the ``cur`` dentry alone leaves a name held by an open file in the cache, and
        writes through it would go to the unlinked inode. Runs in a worker thread:
        pyfuse3's invalidation must not run on the request loop.
        """
        inos = [i for i in list(self.lookups) if CTRL < i < _VIRT]
        entries = list(names)
        if mimei:
            mdir = self.view.mimei_node(mimei).ino
            inos += self.view.mimei_numbers(mimei)
            # the "cur" dentry: d_invalidate drops every cached name below it (restore and
            # import --delete remove names the kernel may still hold)
            entries += [(mdir, n) for n in (b"last", b"release", b".info", b"v", b"cur")]
            if removed:
                entries.append((MM, mimei.encode()))
            entries += share_entries(self.view, mimei)  # shared/<name> at its last / release
        await _invalidate(inos, entries)

    async def invalidate_view(self, mimei: str | None, inos, entries) -> None:
        """Drop what the kernel holds of view nodes that changed behind its back (the
        view's change events, :meth:`View.subscribe`): ``inos`` and ``entries``
        ((directory number, name)) it has looked up; ``inos`` None is every node of
        MiMei ``mimei`` (:meth:`invalidate_all` plus the share nodes that show it)."""
        lookups = self.lookups
        if inos is None:
            inos = [i for i, n in list(self.vnodes.items())
                    if n.kind == "share" and n.mimei == mimei]
            await self.invalidate_all(mimei)
        inos = [i for i in inos if i in lookups]
        entries = [(p, n) for p, n in entries if p in lookups or p < CTRL]
        if not inos and not entries:
            return
        await _invalidate(inos, entries)


async def _invalidate(inos, entries) -> None:
    """Drop the kernel's caches of inodes ``inos`` and of directory entries ``entries``
    ((parent, name)), in a worker thread: pyfuse3's invalidation must not run on the
    request loop. What the kernel no longer holds is skipped silently."""
    def run():
        for i in inos:
            try:
                pyfuse3.invalidate_inode(i, attr_only=False)
            except (OSError, pyfuse3.FUSEError):
                pass
        for parent, name in entries:
            try:
                pyfuse3.invalidate_entry(parent, name)
            except (OSError, pyfuse3.FUSEError):
                pass
    await trio.to_thread.run_sync(run)


__all__ = ["Operations", "CTRL", "CTRL_NAME", "FIXED_DIRS", "entry_attributes"]
