"""The view's write operations: cur is the only writable place, and ``.refs`` takes links.

Rules (DESIGN.md "The mounted view"): everything but a cur inode and ``.refs`` is
read-only (EROFS); in ``.refs`` a symlink named after a MiMei ID adds a reference
(``ln -s ../../<id> .refs/<id>``), ``rm`` removes it, and nothing else may be made there
(EPERM). New entries in a set-group-ID directory take its group (and a new directory
its set-group-ID bit), as POSIX and ext4 do. Writes in ``shared/`` and below are
:mod:`.shares`' (each method routes them there first). The synthesized ``user.mimei.*`` extended
attributes are read-only: setting them in cur is a silent no-op, so copying a version
back into cur with ``rsync -X`` or ``tar --xattrs`` works. POSIX ACLs and SELinux labels
are not kept (EOPNOTSUPP).
"""

from __future__ import annotations

import errno
import stat

from .. import ids
from ..engine.errors import EngineError, NotFound
from . import share_writes as shares
from .shares import routed
from .nodes import Node, vino

_MIMEI_XATTRS = (b"user.mimei.id", b"user.mimei.version", b"user.mimei.hash")
_SELINUX = b"security.selinux"


def _unsupported(name: bytes) -> bool:
    return name.startswith(b"system.") or name == _SELINUX


class CurWrites:
    """Mixed into :class:`~.view.View`: cur's writes, the refs links, extended
    attributes. Every method raises :class:`EngineError` with an errno."""

    # ------------------------------------------------------------------ guards
    def _writable_dir(self, parent: Node) -> Node:
        """``parent`` if it may take new entries (a cur directory or ``.refs``)."""
        if parent.kind in ("cur", "refs"):
            return parent
        raise EngineError(errno.EROFS)

    def _cur_dir(self, parent: Node) -> int:
        p = self._writable_dir(parent)
        if p.kind != "cur":
            raise EngineError(errno.EPERM)
        return p.ino

    # ------------------------------------------------------------------ namespace
    def make(self, parent: Node, name: bytes, mode: int, uid: int, gid: int,
             rdev: int = 0, target: bytes = b"") -> Node:
        """Create ``name`` in ``parent`` (``mode`` carries the type bits). A symlink in
        ``.refs`` adds a reference. Raises EEXIST, EROFS, EPERM, EACCES, EINVAL."""
        if routed(parent):
            return shares.make(self, parent, name, mode, uid, gid, rdev, target)
        if parent.kind == "refs" and stat.S_ISLNK(mode):
            return self._add_ref(parent, name, target)
        pino = self._cur_dir(parent)
        p = self.e.wt.getattr(pino)
        if p.mode & stat.S_ISGID:
            gid = p.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        node = self.e.wt.make(pino, name, mode, uid, gid, rdev, target)
        return Node("cur", ino=node.ino, parent=pino)

    def _add_ref(self, refs: Node, name: bytes, target: bytes) -> Node:
        t = name.decode(errors="replace")
        if not ids.is_id(t) or not target.rstrip(b"/").endswith(name):
            raise EngineError(errno.EINVAL, "a reference is a link named after a MiMei ID")
        self.e.add_ref(refs.mimei, t)
        return self.named(vino("ref", refs.mimei, t),
                          Node("ref", refs.mimei, target=b"../../" + name, parent=refs.ino))

    def link(self, node: Node, parent: Node, name: bytes) -> Node:
        """A hard link to cur file ``node`` as ``name`` in cur directory ``parent``."""
        if routed(parent) or routed(node):
            return shares.link(self, node, parent, name)
        self._writable_dir(parent)
        if node.kind != "cur":
            raise EngineError(errno.EROFS if node.kind not in ("root", "fixed") else errno.EPERM)
        if parent.kind != "cur":
            raise EngineError(errno.EPERM)
        self.e.wt.link(node.ino, parent.ino, name)
        return Node("cur", ino=node.ino, parent=parent.ino)

    def unlink(self, parent: Node, name: bytes) -> None:
        """Remove a non-directory ``name``; in ``.refs``, drop that reference."""
        if routed(parent):
            return shares.unlink(self, parent, name)
        if parent.kind == "refs":
            self.e.del_ref(parent.mimei, name.decode(errors="replace"))
            return
        self.e.wt.unlink(self._cur_dir(parent), name, self.in_use)

    def rmdir(self, parent: Node, name: bytes) -> None:
        """Remove the empty directory ``name``."""
        if routed(parent):
            return shares.rmdir(self, parent, name)
        if parent.kind == "refs":
            raise NotFound()
        self.e.wt.unlink(self._cur_dir(parent), name, self.in_use, rmdir=True)

    def rename(self, p1: Node, n1: bytes, p2: Node, n2: bytes, flags: int = 0) -> None:
        """rename(2) / renameat2 with ``flags`` (RENAME_NOREPLACE, RENAME_EXCHANGE)."""
        if routed(p1) or routed(p2):
            return shares.rename(self, p1, n1, p2, n2, flags)
        a, b = self._writable_dir(p1), self._writable_dir(p2)
        if a.kind != "cur" or b.kind != "cur":
            raise EngineError(errno.EPERM)
        self.e.wt.rename(a.ino, n1, b.ino, n2, flags, self.in_use)

    # ------------------------------------------------------------------ attributes, data
    def setattr(self, node: Node, **fields):
        """Change mode, uid, gid, size, atime_ns, mtime_ns (None = keep) of a cur
        node; returns its new :class:`~.nodes.Attr`. EROFS anywhere else."""
        if routed(node):
            return shares.setattr(self, node, **fields)
        if node.kind != "cur":
            self.attr(node)
            raise EngineError(errno.EROFS)
        return self.cur_attr(self.e.wt.setattr(node.ino, **fields))

    def truncate_for_open(self, node: Node) -> None:
        """O_TRUNC at open of a cur file (libfuse negotiates atomic O_TRUNC: no setattr
        follows)."""
        if routed(node):
            return shares.truncate_for_open(self, node)
        n = self.e.wt.getattr(node.ino)
        if n.size:
            self.e.wt.setattr(node.ino, size=0)

    def write(self, node: Node, offset: int, data) -> int:
        """Write ``data`` at ``offset`` into a cur file; returns the bytes written."""
        if routed(node):
            return shares.write(self, node, offset, data)
        if node.kind != "cur":
            raise EngineError(errno.EROFS)
        return self.e.wt.write(node.ino, offset, data)

    # ------------------------------------------------------------------ extended attributes
    def getxattr(self, node: Node, name: bytes) -> bytes:
        """The value of extended attribute ``name``. ENODATA if unset; EOPNOTSUPP for
        POSIX ACLs and SELinux labels (GNU ``ls -l`` then stops asking per file:
        coreutils caches "not supported" per device, not "no data")."""
        if routed(node):
            return shares.getxattr(self, node, name)
        if _unsupported(name):
            raise EngineError(errno.EOPNOTSUPP)
        if node.kind != "cur":
            if name.startswith(b"security."):
                raise EngineError(errno.ENODATA)
        elif name not in _MIMEI_XATTRS:
            return self.e.wt.getxattr(node.ino, name)
        v = self.xattrs(node).get(name)
        if v is None:
            raise EngineError(errno.ENODATA)
        return v

    def listxattr(self, node: Node) -> list[bytes]:
        """Names of ``node``'s extended attributes; in cur the stored ones and the
        synthesized ``user.mimei.id`` (getxattr answers it, so listxattr names it)."""
        if routed(node):
            return shares.listxattr(self, node)
        if node.kind != "cur":
            return list(self.xattrs(node))
        return self.e.wt.xattr_names(node.ino)

    def setxattr(self, node: Node, name: bytes, value: bytes) -> None:
        if routed(node):
            return shares.setxattr(self, node, name, value)
        if node.kind != "cur":
            self.attr(node)
            raise EngineError(errno.EROFS)
        if name in _MIMEI_XATTRS:
            return
        if _unsupported(name):
            raise EngineError(errno.EOPNOTSUPP)
        self.e.wt.setxattr(node.ino, name, value)

    def removexattr(self, node: Node, name: bytes) -> None:
        if routed(node):
            return shares.removexattr(self, node, name)
        if node.kind != "cur":
            raise EngineError(errno.EROFS)
        self.e.wt.removexattr(node.ino, name)
