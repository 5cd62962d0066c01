"""The protocol-free view: the one place that decides what a path in the store means.

borg's ``vfs.py`` idea: FUSE, HTTP/WebDAV and shares are doors onto this tree, and none
of them re-decides what ``mm/<id>/v/3/a/b`` is. The view resolves a path or a (parent,
name) pair to a :class:`~.nodes.Node`, gives its :class:`~.nodes.Attr`, its children,
its bytes, its link target and its extended attributes, and carries out cur's writes
(:class:`~.cur.CurWrites`). Errors are :class:`~mimeifs.engine.errors.EngineError` with
an errno; each door maps them once.

Thread contract: every method is synchronous and may be called from any thread. On a
thread where fetching is forbidden (:func:`mimeifs.engine.fetch.forbid_fetching_here`,
a door's event loop) a method that needs an object this store lacks raises
:class:`~mimeifs.engine.errors.ChunkMissing`; the door then runs the same call in a
worker thread, where the engine fetches it. The view keeps no per-client state: a door
that hands out numbers (FUSE inodes) keeps its own table of the nodes it gave out.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..engine.errors import EngineError, NotFound
from ..engine.mimei import Engine
from ..engine.worktree import Inode
from . import share_writes as _share_writes
from . import shares as _shares
from .cur import CurWrites
from .kinds import KINDS
from .nodes import FIXED_DIRS, LONG, CUR, ROOT, VIRT, Attr, Node, vino

_S_IFMT, _S_IFDIR = 0o170000, stat.S_IFDIR
_MIMEI_XATTRS = (b"user.mimei.id", b"user.mimei.version", b"user.mimei.hash")


class View(CurWrites):
    """The store as a tree. ``engine`` is an open :class:`Engine`; ``owner_uid`` owns
    the nodes that are not cur inodes (the mounting user); ``in_use(number) -> bool``
    tells whether a door still holds a cur inode open (an unlinked file stays readable
    until its last close).

    ``shares`` is the share table ``shared/`` shows (see :mod:`.shares`; None: an
    empty ``shared/``), set by whoever composes the view. Doors that cache nodes
    :meth:`subscribe` to hear what changed behind their back (:meth:`changed`)."""

    def __init__(self, engine: Engine, owner_uid: int = 0, in_use=lambda ino: False):
        self.e = engine
        self.owner_uid = owner_uid
        self.in_use = in_use
        self.start_ns = time.time_ns()
        self._nlinks: dict[bytes, int] = {}  # tree hash -> st_nlink (trees never change)
        self.shares = None
        self._listeners: list = []

    # ------------------------------------------------------------------ change events
    def subscribe(self, fn) -> None:
        """Call ``fn(mimei, inos, entries)`` when nodes changed other than through a
        door's own request: ``inos`` numbers whose attributes or bytes changed,
        ``entries`` (directory number, name) pairs that now name something else or
        nothing; ``inos`` None means every node of MiMei ``mimei``. Runs on the
        caller's thread and must not block."""
        self._listeners.append(fn)

    def changed(self, mimei: str | None, inos=None, entries=()) -> None:
        """Tell the subscribers that cur nodes ``inos`` / ``entries`` of ``mimei``
        changed (None: all of them), adding the share nodes that show them."""
        entries = list(entries)
        if inos is not None and mimei:
            more_i, more_e = _shares.aliases(self, mimei, inos, entries)
            inos = list(inos) + more_i
            entries += more_e
        if mimei:
            entries += _shares.share_entries(self, mimei)
        for fn in list(self._listeners):
            fn(mimei, inos, entries)

    # ------------------------------------------------------------------ nodes
    def root(self) -> Node:
        return Node("root", ino=ROOT)

    def fixed(self, ino: int) -> Node:
        """The root (``ino`` 1) or a fixed directory (mm 2, name 3, mac 4, shared 5)."""
        if ino == ROOT:
            return self.root()
        if ino not in FIXED_DIRS.values():
            raise NotFound()
        return Node("fixed", ino=ino, parent=ROOT)

    def cur(self, ino: int) -> Node:
        """The cur node with engine inode number ``ino`` (checked when used)."""
        return Node("cur", ino=ino)

    @staticmethod
    def named(ino: int, node: Node) -> Node:
        node.ino = ino
        return node

    def mimei_node(self, mid: str) -> Node:
        return Node("mimei", mid, ino=vino("mimei", mid), parent=FIXED_DIRS[b"mm"])

    def must_exist(self, mid: str) -> None:
        if not self.e.exists(mid):
            raise NotFound(f"no MiMei {mid}")

    @staticmethod
    def is_cur(ino: int) -> bool:
        """True for a number that names a cur inode (not a fixed or derived node)."""
        return 6 < ino < VIRT

    # ------------------------------------------------------------------ reading
    def attr(self, node: Node) -> Attr:
        """The attributes of ``node``. Raises NotFound once it is gone."""
        return KINDS[node.kind].attr(self, node)

    def lookup(self, parent: Node, name: bytes) -> Node:
        """The child ``name`` of ``parent``. Raises NotFound, ENOTDIR, ENAMETOOLONG."""
        if len(name) > 255:
            raise EngineError(errno.ENAMETOOLONG)
        return KINDS[parent.kind].lookup(self, parent, name)

    def children(self, node: Node) -> list[tuple[bytes, Node, Attr]]:
        """Every entry of directory ``node`` as (name, node, attributes), in a stable
        order (offsets into it stay valid while the directory does not change)."""
        return KINDS[node.kind].children(self, node)

    def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a file node, clipped to its size."""
        return KINDS[node.kind].read(self, node, offset, size)

    def readlink(self, node: Node) -> bytes:
        return KINDS[node.kind].readlink(self, node)

    def xattrs(self, node: Node) -> dict[bytes, bytes]:
        """The synthesized ``user.mimei.*`` attributes of ``node`` (id, version, hash)."""
        return KINDS[node.kind].xattrs(self, node)

    def resolve(self, path: str | bytes) -> Node:
        """The node at ``path`` (``/``-separated, relative to the view's root; empty
        parts and ``.`` are skipped). ``..`` and NUL are refused (NotFound), so no
        path leaves the view. Symlinks are not followed."""
        if isinstance(path, str):
            path = path.encode()
        node = self.root()
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b".." or b"\0" in part:
                raise NotFound(f"bad path component {part!r}")
            node = self.lookup(node, part)
        return node

    def open_check(self, node: Node, writing: bool) -> None:
        """Whether ``node`` may be opened as a file (for writing): EISDIR for
        directories, EROFS for anything but cur, EACCES for another author's cur."""
        if _shares.routed(node) and not _shares.is_shared_dir(node):
            return _share_writes.open_check(self, node, writing)
        if node.kind == "cur":
            n = self.e.wt.getattr(node.ino)
            if n.is_dir:
                raise EngineError(errno.EISDIR)
            if writing:
                self.e.wt.writable(n)
            return
        if node.kind in ("root", "fixed"):
            raise EngineError(errno.EISDIR)
        if writing:
            raise EngineError(errno.EROFS)
        if node.kind in ("ver", "mac") and not node.entry.is_file:
            raise EngineError(errno.EISDIR if node.entry.is_dir else errno.EINVAL)
        if node.kind not in ("ver", "mac", "info"):
            raise EngineError(errno.EISDIR)

    @staticmethod
    def may_change(node: Node) -> bool:
        """True if the bytes of file ``node`` may change while a door holds them (cur,
        a share of cur, a file of ``shared/``): a door must not keep their pages."""
        return node.kind == "cur" or _shares.may_change(node)

    @staticmethod
    def shown(node: Node) -> Node:
        """The ``mm/`` node a share node shows (any other node: itself)."""
        return node.inner if node.kind == _shares.SHARE else node

    def statfs(self) -> os.statvfs_result:
        """statvfs of the store's filesystem (what a mount reports as its own)."""
        return os.statvfs(self.e.store.path)

    # ------------------------------------------------------------------ attributes
    def base_attr(self, ino: int, mode: int, size: int = 0, nlink: int = 1,
                  mtime_ns: int | None = None, cache: str = LONG, uid: int | None = None,
                  gid: int | None = None, rdev: int = 0) -> Attr:
        t = self.start_ns if mtime_ns is None else mtime_ns
        return Attr(ino, mode, size, nlink, self.owner_uid if uid is None else uid,
                    0 if gid is None else gid, rdev, t, t, t, (size + 511) // 512, cache)

    def cur_attr(self, n: Inode) -> Attr:
        """Attributes of cur inode ``n``; ``blocks`` is the data it really holds (a
        sparse file's holes are not counted: :meth:`Worktree.st_blocks`)."""
        return Attr(n.ino, n.mode, n.size if not n.is_dir else 4096, max(n.nlink, 0), n.uid,
                    n.gid, n.rdev, n.mtime_ns, n.atime_ns, n.ctime_ns,
                    self.e.wt.st_blocks(n), CUR)

    def dir_nlink(self, tree_hash: bytes) -> int:
        """2 + subdirectories, ext4's convention (cur counts the same way)."""
        n = self._nlinks.get(tree_hash)
        if n is None:
            n = self._nlinks[tree_hash] = 2 + sum(
                1 for x in self.e.tree(tree_hash).entries if x.mode & _S_IFMT == _S_IFDIR)
        return n

    def entry_attr(self, ino: int, e) -> Attr:
        """Attributes of a version entry ``e`` (:class:`objects.Entry`) numbered ``ino``."""
        if e.mode & _S_IFMT == _S_IFDIR:
            a = Attr(ino, e.mode, 4096, self.dir_nlink(e.hash), e.uid, e.gid, e.rdev,
                     e.mtime_ns, e.mtime_ns, e.mtime_ns, 8, LONG, True)
        else:
            a = Attr(ino, e.mode, e.size, 1, e.uid, e.gid, e.rdev, e.mtime_ns, e.mtime_ns,
                     e.mtime_ns, (e.size + 511) // 512, LONG, True)
        return a

    def mimei_numbers(self, mid: str) -> list[int]:
        """Numbers of the nodes of ``mimei`` that change with whole-MiMei commands
        (``last``, ``release``, ``v``, ``.info``, ``.refs`` and the MiMei directory)."""
        return [vino(k, mid) for k in ("last", "release", "vdir", "info", "refs", "mimei")]
