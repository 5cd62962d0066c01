"""pyfuse3 Operations: the mounted view of a store (DESIGN.md "The mounted view").

::

    /mm/<id>/cur          fs: a directory; file: a regular file (writable by its author)
    /mm/<id>/v/<n>        version n, read-only (EROFS on any write)
    /mm/<id>/last         symlink -> v/<newest>
    /mm/<id>/release      symlink -> v/<released>  (absent until one is released)
    /mm/<id>/.refs/<t>    symlink -> ../../<t>; ln -s adds a reference, rm removes it
    /mm/<id>/.info        MiMei info as JSON
    /name/<mark>          symlink -> ../mm/<id> (this node's own MiMei)
    /mac/<hash>           Mac files, read-only, content-addressed
    /shared/              folders of .mmfs shares (not built yet: empty)
    /.__mimeifs_ctrl__    control file: the CLI's door into the daemon (xattrs)

Inode numbers: cur inodes are the engine's persistent ones (stable across remounts);
every other node's number is derived from what it names (blake3 of a tag, the MiMei ID,
version and path), so it is stable across remounts too. Versions never change: they get
day-long entry/attribute timeouts and ``keep_cache``; cur gets 30 s, and the daemon
invalidates the kernel's caches after every whole-MiMei command and import.

Thin by design: every handler maps to one engine call. Errors are errno values; an
unexpected exception is logged and answered with EIO, never a dead daemon.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field

import blake3
import pyfuse3
import trio

from .. import ids
from ..engine import blocks, objects
from ..engine.mimei import Engine, MiMeiError
from ..engine.worktree import Inode
from .prefetch import DirPrefetch

log = logging.getLogger("mimeifs.fuse")

ROOT = pyfuse3.ROOT_INODE
MM, NAME, MAC, SHARED, CTRL = 2, 3, 4, 5, 6
CTRL_NAME = b".__mimeifs_ctrl__"
FIXED_DIRS = {b"mm": MM, b"name": NAME, b"mac": MAC, b"shared": SHARED}

LONG = 86400.0    # versions, Mac files, fixed dirs; per-MiMei nodes (invalidated on change)
CUR = 30.0        # cur: changes from outside the daemon (CLI import, restore) invalidate it
SHORT = 1.0       # name/<mark> links (marks come and go with create and rm)

_S_IFMT, _S_IFDIR = 0o170000, stat.S_IFDIR  # mode tests without a call per entry
_VIRT = 1 << 62
_MASK = (1 << 62) - 1
_MIMEI_XATTRS = (b"user.mimei.id", b"user.mimei.version", b"user.mimei.hash")
_SELINUX = b"security.selinux"


def _vino_hasher(parts) -> "blake3.blake3":
    h = blake3.blake3()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(4, "big") + b)
    return h


def vino(*parts) -> int:
    """A stable inode number for a virtual or version node named by ``parts``: the
    first 8 bytes of blake3 over the length-prefixed parts, in the virtual range."""
    return _VIRT | (int.from_bytes(_vino_hasher(parts).digest(length=8), "big") & _MASK)


def _ver_inos(d: "VNode", d_ino: int):
    """``name -> inode number`` for the entries of version directory ``d`` (inode
    ``d_ino``): equal to ``vino("ver", d.mimei, d.n, d_ino, name)``, with the prefix
    hashed once per directory and copied per name (listings ask for every entry)."""
    base = _vino_hasher(("ver", d.mimei, d.n, d_ino))

    def ino(name: bytes) -> int:
        h = base.copy()
        h.update(len(name).to_bytes(4, "big") + name)
        return _VIRT | (int.from_bytes(h.digest(length=8), "big") & _MASK)
    return ino


def _ver_ino(d: "VNode", d_ino: int, name: bytes) -> int:
    """Inode number of entry ``name`` of version directory ``d`` (inode ``d_ino``)."""
    return vino("ver", d.mimei, d.n, d_ino, name)


@dataclass(slots=True)
class VNode:
    """A node that is not a cur inode. ``kind`` is one of: mimei, vdir, ver, last,
    release, refs, ref, info, namelink, mac. ``entry`` holds a version's DAG entry."""
    kind: str
    mimei: str = ""
    n: int = -1
    entry: objects.Entry | None = None
    target: bytes = b""
    data: bytes = b""
    parent: int = ROOT


@dataclass
class DirHandle:
    ino: int
    entries: list = field(default_factory=list)


def handler(fn):
    """Turn engine errors into FUSEError; log and answer EIO for anything unexpected."""
    @functools.wraps(fn)
    async def wrapper(self, *a, **kw):
        try:
            return await fn(self, *a, **kw)
        except pyfuse3.FUSEError:
            raise
        except MiMeiError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except blocks.CorruptBlock as e:
            log.error("%s: corrupt data: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, a)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _err(code: int):
    return pyfuse3.FUSEError(code)


class Operations(pyfuse3.Operations):
    """The mimeifs filesystem. ``engine`` is an open :class:`Engine`."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, engine: Engine, mount_uid: int = 0):
        super().__init__()
        self.e = engine
        self.wt = engine.wt
        self.mount_uid = mount_uid
        self.vnodes: dict[int, VNode] = {}
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_dh = 1
        self._nlinks: dict[bytes, int] = {}  # tree hash -> st_nlink (trees never change)
        self.start_ns = time.time_ns()
        engine.is_open = self._in_use
        self.ctrl = None  # set by mount: a control.Controller
        self.prefetch = DirPrefetch(engine.read_content, pyfuse3.notify_store,
                                    lambda ino: self.opens.get(ino, 0) > 0)

    # ------------------------------------------------------------------ bookkeeping
    def _in_use(self, ino: int) -> bool:
        return self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0

    def _counted(self, attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        self.lookups[attr.st_ino] = self.lookups.get(attr.st_ino, 0) + 1
        return attr

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
    def _base_attr(self, ino: int, mode: int, size: int = 0, nlink: int = 1,
                   mtime_ns: int | None = None, timeout: float = LONG, uid: int | None = None,
                   gid: int | None = None, rdev: int = 0) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_uid = self.mount_uid if uid is None else uid
        a.st_gid = 0 if gid is None else gid
        a.st_rdev = rdev
        a.st_size = size
        a.st_blksize = 128 * 1024
        a.st_blocks = (size + 511) // 512
        t = self.start_ns if mtime_ns is None else mtime_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        return a

    def _cur_attr(self, n: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.ino
        a.generation = 0
        a.entry_timeout = CUR
        a.attr_timeout = CUR
        a.st_mode = n.mode
        a.st_nlink = max(n.nlink, 0)
        a.st_uid = n.uid
        a.st_gid = n.gid
        a.st_rdev = n.rdev
        a.st_size = n.size if not n.is_dir else 4096
        a.st_blksize = 128 * 1024
        a.st_blocks = (n.size + 511) // 512 if n.is_reg else 0
        a.st_atime_ns = n.atime_ns
        a.st_mtime_ns = n.mtime_ns
        a.st_ctime_ns = n.ctime_ns
        return a

    def _dir_nlink(self, tree_hash: bytes) -> int:
        """2 + subdirectories, ext4's convention (cur counts the same way)."""
        n = self._nlinks.get(tree_hash)
        if n is None:
            n = self._nlinks[tree_hash] = 2 + sum(
                1 for x in self.e.tree(tree_hash).entries if x.mode & _S_IFMT == _S_IFDIR)
        return n

    def _entry_attr(self, ino: int, e: objects.Entry) -> pyfuse3.EntryAttributes:
        if e.mode & _S_IFMT == _S_IFDIR:
            return self._base_attr(ino, e.mode, 4096, self._dir_nlink(e.hash), e.mtime_ns, LONG,
                                   e.uid, e.gid, e.rdev)
        return self._base_attr(ino, e.mode, e.size, 1, e.mtime_ns, LONG, e.uid, e.gid, e.rdev)

    def _vattr(self, ino: int, v: VNode) -> pyfuse3.EntryAttributes:
        k = v.kind
        if k == "ver":
            return self._entry_attr(ino, v.entry)
        # last, release, v/, .info change only through the daemon's own commands, which
        # invalidate them (invalidate_mimei): the kernel may keep them long
        if k in ("mimei", "vdir", "refs"):
            return self._base_attr(ino, stat.S_IFDIR | 0o755, 4096, 2, timeout=LONG)
        if k in ("last", "release", "ref", "namelink"):
            return self._base_attr(ino, stat.S_IFLNK | 0o777, len(v.target), 1,
                                   timeout=SHORT if k == "namelink" else LONG)
        if k == "info":
            return self._base_attr(ino, stat.S_IFREG | 0o444, len(v.data), 1, timeout=LONG)
        if k == "mac":
            return self._base_attr(ino, stat.S_IFREG | 0o444, v.entry.size, 1, timeout=LONG)
        raise _err(errno.ENOENT)

    def _fixed_attr(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino == CTRL:
            return self._base_attr(CTRL, stat.S_IFREG | 0o600, 0, 1, timeout=LONG, uid=self.mount_uid)
        return self._base_attr(ino, stat.S_IFDIR | 0o755, 4096, 2, timeout=LONG)

    def _register(self, ino: int, v: VNode) -> int:
        self.vnodes[ino] = v
        return ino

    # ------------------------------------------------------------------ per-MiMei nodes
    def _mimei_node(self, mid: str) -> int:
        return self._register(vino("mimei", mid), VNode("mimei", mid, parent=MM))

    def _mimei_children(self, mid: str) -> list[tuple[bytes, int]]:
        st = self.e.state(mid)
        out = [(b"cur", st["cur"]),
               (b"v", self._register(vino("vdir", mid), VNode("vdir", mid))),
               (b".refs", self._register(vino("refs", mid), VNode("refs", mid))),
               (b".info", self._register(vino("info", mid), VNode("info", mid)))]
        if st["last"] is not None:
            out.append((b"last", self._register(vino("last", mid), VNode(
                "last", mid, target=f"v/{st['last']}".encode()))))
        if st["release"] is not None:
            out.append((b"release", self._register(vino("release", mid), VNode(
                "release", mid, target=f"v/{st['release']['n']}".encode()))))
        return out

    def _child_of_vdir(self, mid: str, name: bytes) -> int:
        try:
            n = int(name)
        except ValueError:
            raise _err(errno.ENOENT)
        if str(n).encode() != name:
            raise _err(errno.ENOENT)
        root = self.e.version_root(mid, n)
        return self._register(vino("ver", mid, n, b""), VNode("ver", mid, n, root))

    def _lookup_ino(self, parent: int, name: bytes) -> int:
        """The inode number of ``name`` in ``parent`` (registering virtual nodes)."""
        if parent == ROOT:
            if name == CTRL_NAME:
                return CTRL
            ino = FIXED_DIRS.get(name)
            if ino is None:
                raise _err(errno.ENOENT)
            return ino
        if parent == MM:
            mid = name.decode(errors="replace")
            if not self.e.exists(mid):
                raise _err(errno.ENOENT)
            return self._mimei_node(mid)
        if parent == NAME:
            try:
                mid = self.e.mark_id(name.decode())
            except UnicodeDecodeError:
                mid = None
            if mid is None:
                raise _err(errno.ENOENT)
            return self._register(vino("namelink", name), VNode("namelink", mid,
                                                               target=b"../mm/" + mid.encode()))
        if parent == MAC:
            h = name.decode(errors="replace")
            if not ids.is_hash(h) or not self.e.has_content(bytes.fromhex(h)):
                raise _err(errno.ENOENT)
            m = self.e.manifest(bytes.fromhex(h))
            e = objects.Entry(name, stat.S_IFREG | 0o444, 0, 0, m.size, self.start_ns, 0, m.hash, b"", ())
            return self._register(vino("mac", h), VNode("mac", entry=e))
        if parent == SHARED or parent == CTRL:
            raise _err(errno.ENOENT if parent == SHARED else errno.ENOTDIR)
        v = self.vnodes.get(parent)
        if v is None:
            if parent >= _VIRT:
                raise _err(errno.ENOENT)
            return self.wt.lookup(parent, name).ino
        if v.kind == "mimei":
            for n, ino in self._mimei_children(v.mimei):
                if n == name:
                    return ino
            raise _err(errno.ENOENT)
        if v.kind == "vdir":
            return self._child_of_vdir(v.mimei, name)
        if v.kind == "refs":
            out, _ = self.e.refs(v.mimei)
            t = name.decode(errors="replace")
            if t not in out:
                raise _err(errno.ENOENT)
            return self._register(vino("ref", v.mimei, t), VNode("ref", v.mimei,
                                                                 target=b"../../" + name))
        if v.kind == "ver":
            if not v.entry.is_dir:
                raise _err(errno.ENOTDIR)
            t = self.e.tree(v.entry.hash)
            e = t.get(name)
            if e is None:
                raise _err(errno.ENOENT)
            return self._register(_ver_ino(v, parent, name),
                                  VNode("ver", v.mimei, v.n, e, parent=parent))
        raise _err(errno.ENOTDIR)

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino in (ROOT, MM, NAME, MAC, SHARED, CTRL):
            return self._fixed_attr(ino)
        v = self.vnodes.get(ino)
        if v is not None:
            if v.kind == "info":
                v.data = self._info_bytes(v.mimei)
            elif v.kind in ("mimei", "vdir", "refs", "last", "release") and not self.e.exists(v.mimei):
                raise _err(errno.ENOENT)
            return self._vattr(ino, v)
        if ino >= _VIRT:
            raise _err(errno.ENOENT)
        return self._cur_attr(self.wt.getattr(ino))

    def _info_bytes(self, mid: str) -> bytes:
        info = self.e.info(mid)
        st = self.e.state(mid)
        doc = {k: info[k] for k in ("id", "author", "app_type", "mimei_type", "ext", "mark",
                                    "created", "rights")}
        doc["last"] = st["last"]
        doc["release"] = None if st["release"] is None else st["release"]["n"]
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    # ------------------------------------------------------------------ lookup / getattr
    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            return self._counted(self._attr(parent_inode))
        ino = self._lookup_ino(parent_inode, name)
        return self._counted(self._attr(ino))

    @handler
    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    @handler
    async def readlink(self, inode, ctx):
        v = self.vnodes.get(inode)
        if v is not None:
            if v.kind == "ver":
                if not stat.S_ISLNK(v.entry.mode):
                    raise _err(errno.EINVAL)
                return v.entry.target
            if v.target:
                if v.kind in ("last", "release"):
                    st = self.e.state(v.mimei)
                    n = st["last"] if v.kind == "last" else (st["release"] or {}).get("n")
                    if n is None:
                        raise _err(errno.ENOENT)
                    return f"v/{n}".encode()
                return v.target
            raise _err(errno.EINVAL)
        if inode >= _VIRT or inode <= CTRL:
            raise _err(errno.EINVAL)
        return self.wt.readlink(inode)

    # ------------------------------------------------------------------ directories
    def _listing(self, ino: int) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
        if ino == ROOT:
            return [(n, self._fixed_attr(i)) for n, i in sorted(FIXED_DIRS.items())] + \
                   [(CTRL_NAME, self._fixed_attr(CTRL))]
        if ino == MM:
            return [(m.encode(), self._vattr(self._mimei_node(m), self.vnodes[vino("mimei", m)]))
                    for m in self.e.list()]
        if ino == NAME:
            out = []
            for mark, mid in sorted(self.e.names().items()):
                nb = mark.encode()
                i = self._register(vino("namelink", nb), VNode("namelink", mid, target=b"../mm/" + mid.encode()))
                out.append((nb, self._vattr(i, self.vnodes[i])))
            return out
        if ino == MAC:
            out = []
            for h in self.e.mac_list():
                i = self._lookup_ino(MAC, h.encode())
                out.append((h.encode(), self._vattr(i, self.vnodes[i])))
            return out
        if ino == SHARED:
            return []
        v = self.vnodes.get(ino)
        if v is None:
            if ino >= _VIRT or ino == CTRL:
                raise _err(errno.ENOTDIR)
            return [(n, self._cur_attr(node)) for n, node in self.wt.readdir(ino)]
        if v.kind == "mimei":
            return [(n, self._attr(i)) for n, i in self._mimei_children(v.mimei)]
        if v.kind == "vdir":
            out = []
            for rec in self.e.versions(v.mimei):
                nb = str(rec["n"]).encode()
                i = self._child_of_vdir(v.mimei, nb)
                out.append((nb, self._vattr(i, self.vnodes[i])))
            out.sort(key=lambda x: int(x[0]))
            return out
        if v.kind == "refs":
            out = []
            for t in self.e.refs(v.mimei)[0]:
                i = self._lookup_ino(ino, t.encode())
                out.append((t.encode(), self._vattr(i, self.vnodes[i])))
            return out
        if v.kind == "ver" and v.entry.is_dir:
            t = self.e.tree(v.entry.hash)
            out = []
            ino_of, vnodes, mid, n = _ver_inos(v, ino), self.vnodes, v.mimei, v.n
            for e in t.entries:
                i = ino_of(e.name)
                vnodes[i] = VNode("ver", mid, n, e, parent=ino)
                out.append((e.name, self._entry_attr(i, e)))
            return out
        raise _err(errno.ENOTDIR)

    @handler
    async def opendir(self, inode, ctx):
        self._attr(inode)
        fh = self._next_dh
        self._next_dh += 1
        self.dirs[fh] = DirHandle(inode)
        return fh

    @handler
    async def readdir(self, fh, start_id, token):
        d = self.dirs.get(fh)
        if d is None:
            raise _err(errno.EBADF)
        if start_id == 0 or not d.entries:
            d.entries = self._listing(d.ino)
        for i in range(start_id, len(d.entries)):
            name, attr = d.entries[i]
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                break
            self.lookups[attr.st_ino] = self.lookups.get(attr.st_ino, 0) + 1

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        self.e.store.sync()

    # ------------------------------------------------------------------ write guards
    def _cur_parent(self, ino: int) -> int:
        """``ino`` if it may take new entries (a cur directory, or ``.refs``); else EROFS."""
        if ino == CTRL:
            raise _err(errno.ENOTDIR)
        if ino in (ROOT, MM, NAME, MAC, SHARED):
            raise _err(errno.EROFS)
        if ino >= _VIRT:
            v = self.vnodes.get(ino)
            if v is None:
                raise _err(errno.ENOENT)
            if v.kind != "refs":
                raise _err(errno.EROFS)
        return ino

    @staticmethod
    def _mode(mode: int, ctx) -> int:
        return mode & ~(ctx.umask if ctx is not None else 0)

    def _gid_for(self, parent: int, ctx) -> tuple[int, bool]:
        p = self.wt.getattr(parent)
        if p.mode & stat.S_ISGID:
            return p.gid, True
        return ctx.gid, False

    async def _make(self, parent, name, mode, ctx, rdev=0, target=b""):
        parent = self._cur_parent(parent)
        if parent in self.vnodes:
            raise _err(errno.EPERM)
        gid, sgid = self._gid_for(parent, ctx)
        if stat.S_ISDIR(mode) and sgid:
            mode |= stat.S_ISGID
        node = self.wt.make(parent, name, mode, ctx.uid, gid, rdev, target)
        return self._counted(self._cur_attr(node))

    @handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._make(parent_inode, name, self._mode(mode, ctx), ctx, rdev)

    @handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._make(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(self._mode(mode, ctx)), ctx)

    @handler
    async def symlink(self, parent_inode, name, target, ctx):
        v = self.vnodes.get(parent_inode)
        if v is not None and v.kind == "refs":
            return self._counted(self._attr(self._add_ref(v.mimei, name, target)))
        return await self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, 0, target)

    def _add_ref(self, mid: str, name: bytes, target: bytes) -> int:
        t = name.decode(errors="replace")
        if not ids.is_id(t) or not target.rstrip(b"/").endswith(name):
            raise _err(errno.EINVAL)
        self.e.add_ref(mid, t)
        return self._register(vino("ref", mid, t), VNode("ref", mid, target=b"../../" + name))

    @handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = await self._make(parent_inode, name, stat.S_IFREG | stat.S_IMODE(self._mode(mode, ctx)), ctx)
        self.opens[attr.st_ino] = self.opens.get(attr.st_ino, 0) + 1
        return pyfuse3.FileInfo(fh=attr.st_ino), attr

    @handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        parent = self._cur_parent(new_parent_inode)
        if inode >= _VIRT or inode <= CTRL:
            raise _err(errno.EROFS if inode >= _VIRT else errno.EPERM)
        return self._counted(self._cur_attr(self.wt.link(inode, parent, new_name)))

    @handler
    async def unlink(self, parent_inode, name, ctx):
        v = self.vnodes.get(parent_inode)
        if v is not None and v.kind == "refs":
            self.e.del_ref(v.mimei, name.decode(errors="replace"))
            return
        self.wt.unlink(self._cur_parent(parent_inode), name, self._in_use)

    @handler
    async def rmdir(self, parent_inode, name, ctx):
        self.wt.unlink(self._cur_parent(parent_inode), name, self._in_use, rmdir=True)

    @handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        a = self._cur_parent(parent_inode_old)
        b = self._cur_parent(parent_inode_new)
        if a in self.vnodes or b in self.vnodes:
            raise _err(errno.EPERM)
        self.wt.rename(a, name_old, b, name_new, flags, self._in_use)

    @handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode >= _VIRT or inode <= CTRL:
            self._attr(inode)
            raise _err(errno.EROFS)
        node = self.wt.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self._cur_attr(node)

    # ------------------------------------------------------------------ files
    @handler
    async def open(self, inode, flags, ctx):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND)
        if inode == CTRL:
            return pyfuse3.FileInfo(fh=CTRL)
        if inode >= _VIRT:
            v = self.vnodes.get(inode)
            if v is None:
                raise _err(errno.ENOENT)
            if writing:
                raise _err(errno.EROFS)
            if v.kind in ("ver", "mac") and not (v.entry.is_file):
                raise _err(errno.EISDIR if v.entry.is_dir else errno.EINVAL)
            if v.kind not in ("ver", "mac", "info"):
                raise _err(errno.EISDIR)
            self.opens[inode] = self.opens.get(inode, 0) + 1
            if v.kind == "info":
                v.data = self._info_bytes(v.mimei)
                return pyfuse3.FileInfo(fh=inode, direct_io=True)
            if v.kind == "ver":
                d = v.parent
                self.prefetch.opened(d, lambda: self._readahead_list(d, inode))
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)
        if inode <= CTRL:
            raise _err(errno.EISDIR)
        node = self.wt.getattr(inode)
        if node.is_dir:
            raise _err(errno.EISDIR)
        if writing:
            self.wt.writable(node)
            if flags & os.O_TRUNC and node.size:
                # libfuse3 negotiates ATOMIC_O_TRUNC: no setattr(size=0) follows
                self.wt.setattr(inode, size=0)
        self.opens[inode] = self.opens.get(inode, 0) + 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    def _readahead_list(self, d_ino: int, skip: int):
        """(inode, hash, size) of the files of version directory ``d_ino`` that the
        kernel holds an inode for, but ``skip``: what :class:`DirPrefetch` may push."""
        d = self.vnodes.get(d_ino)
        if d is None or d.kind != "ver" or not d.entry.is_dir:
            return
        ino_of = _ver_inos(d, d_ino)
        for e in self.e.tree(d.entry.hash).entries:
            if e.is_file:
                ino = ino_of(e.name)
                if ino != skip and self.lookups.get(ino):
                    yield ino, e.hash, e.size

    @handler
    async def read(self, fh, off, size):
        if fh >= _VIRT:
            v = self.vnodes[fh]
            if v.kind == "info":
                return v.data[off:off + size]
            return await trio.to_thread.run_sync(self.e.read_content, v.entry.hash, off, size) \
                if size >= 1 << 20 else self.e.read_content(v.entry.hash, off, size)
        if fh == CTRL:
            return b""
        return self.wt.read(fh, off, size)

    @handler
    async def write(self, fh, off, buf):
        if fh >= _VIRT or fh == CTRL:
            raise _err(errno.EROFS if fh >= _VIRT else errno.EINVAL)
        return self.wt.write(fh, off, buf)

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
        if fh < _VIRT and not self.lookups.get(fh):  # a cur orphan may now be freed
            try:
                self.wt.forget(fh)
            except Exception:
                log.exception("release %d", fh)

    # ------------------------------------------------------------------ xattrs
    def _synth_xattrs(self, ino: int) -> dict[bytes, bytes]:
        v = self.vnodes.get(ino)
        if v is not None:
            out = {}
            if v.mimei:
                out[b"user.mimei.id"] = v.mimei.encode()
            if v.kind == "ver":
                out[b"user.mimei.version"] = str(v.n).encode()
                if v.entry.is_file:
                    out[b"user.mimei.hash"] = v.entry.hash.hex().encode()
            if v.kind == "mac":
                out[b"user.mimei.hash"] = v.entry.hash.hex().encode()
            return out
        if ino > CTRL and ino < _VIRT:
            return {b"user.mimei.id": self.wt.getattr(ino).mimei.hex().encode()}
        return {}

    @handler
    async def getxattr(self, inode, name, ctx):
        if name.startswith(b"system.") or name == _SELINUX:
            # POSIX ACLs and SELinux labels are not kept (setxattr refuses them). Saying
            # ENOTSUP, not ENODATA, matters: GNU ls -l then stops asking for them on this
            # st_dev (coreutils ls.c getfilecon_cache / file_has_acl_cache), which spares
            # two daemon round trips per listed file.
            raise _err(errno.EOPNOTSUPP)
        if inode >= _VIRT and name.startswith(b"security."):
            raise _err(errno.ENODATA)  # versions carry no security.*: no lookup needed
        if inode == CTRL and self.ctrl is not None:
            return self.ctrl.result(name, ctx)
        if inode >= _VIRT or inode <= CTRL:
            v = self._synth_xattrs(inode).get(name)
            if v is None:
                raise _err(errno.ENODATA)
            return v
        if name in _MIMEI_XATTRS:
            v = self._synth_xattrs(inode).get(name)
            if v is None:
                raise _err(errno.ENODATA)
            return v
        return self.wt.getxattr(inode, name)

    @handler
    async def listxattr(self, inode, ctx):
        if inode >= _VIRT or inode <= CTRL:
            return list(self._synth_xattrs(inode))
        return self.wt.listxattr(inode)

    @handler
    async def setxattr(self, inode, name, value, ctx):
        if inode == CTRL:
            if self.ctrl is None:
                raise _err(errno.ENOTSUP)
            await self.ctrl.command(name, value, ctx)
            return
        if inode >= _VIRT or inode <= CTRL:
            self._attr(inode)
            raise _err(errno.EROFS)
        if name in _MIMEI_XATTRS:
            return  # synthesized names: copying them in (rsync -X, tar --xattrs) is a no-op
        if name.startswith(b"system.") or name == _SELINUX:
            # POSIX ACLs and SELinux labels are not kept: refusing them makes cp -a / tar
            # fall back to chmod
            raise _err(errno.EOPNOTSUPP)
        self.wt.setxattr(inode, name, value)

    @handler
    async def removexattr(self, inode, name, ctx):
        if inode >= _VIRT or inode <= CTRL:
            raise _err(errno.EROFS)
        self.wt.removexattr(inode, name)

    # ------------------------------------------------------------------ fs
    @handler
    async def statfs(self, ctx):
        s = os.statvfs(self.e.store.path)
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
    async def invalidate_all(self, mimei: str | None = None, removed: bool = False) -> None:
        """Drop what the kernel caches of cur inodes and of a MiMei's changing nodes.

        After a whole-MiMei command: every cur inode the kernel holds, the MiMei's
        ``last``, ``release``, ``v/``, ``.info`` (attributes and directory entries), and
        with ``removed`` its entry in ``mm/``. Runs in a worker thread: pyfuse3's
        invalidation must not run on the request loop.
        """
        inos = [i for i in list(self.lookups) if CTRL < i < _VIRT]
        entries = []
        if mimei:
            mdir = vino("mimei", mimei)
            inos += [vino(k, mimei) for k in ("last", "release", "vdir", "info", "refs", "mimei")]
            # the "cur" dentry: d_invalidate drops every cached name below it (restore and
            # import --delete remove names the kernel may still hold)
            entries += [(mdir, n) for n in (b"last", b"release", b".info", b"v", b"cur")]
            if removed:
                entries.append((MM, mimei.encode()))

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
