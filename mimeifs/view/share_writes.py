"""Writes in ``shared/`` and below (routed here by :class:`~.cur.CurWrites`): files of
the shares folder written through to ``<store>/shares``, and writes through a share
into the cur it shows (see :mod:`.shares` for what is allowed where).

Every function takes the view ``v`` first and raises
:class:`~mimeifs.engine.errors.EngineError` (or ``OSError``) with an errno.
"""

from __future__ import annotations

import errno
import os
import stat

from ..engine.errors import EngineError, NotFound
from .nodes import Attr, Node
from .shares import (MMFS, SHARE, MmfsFile, _decode, _file_node, _is_file, _share_attr,
                     _table, fresh, is_shared_dir, unwrap, wrap)

def _changed(v, fname: str) -> None:
    _table(v).file_changed(fname)


def _new_file_name(v, name: bytes) -> str:
    t = _table(v)
    s = os.fsdecode(name)
    if not s or "/" in s or "\0" in s or s in (".", ".."):
        raise EngineError(errno.EINVAL)
    if len(name) > 255:
        raise EngineError(errno.ENAMETOOLONG)
    if t.get(s) is not None:
        raise EngineError(errno.EEXIST, f"{s} is a share")
    return s


def make(v, parent: Node, name: bytes, mode: int, uid: int, gid: int, rdev: int,
         target: bytes) -> Node:
    """Create ``name`` in ``shared/`` (a regular file of the folder) or in a share."""
    if is_shared_dir(parent):
        if not stat.S_ISREG(mode):
            raise EngineError(errno.EPERM, "shared/ holds .mmfs files (and shares)")
        s = _new_file_name(v, name)
        fd = os.open(os.path.join(_table(v).folder, s),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, stat.S_IMODE(mode))
        os.close(fd)
        _changed(v, s)
        return _file_node(s)
    if parent.kind != SHARE:
        raise EngineError(errno.ENOTDIR)
    parent = fresh(v, parent)
    c = v.make(unwrap(v, parent, True), name, mode, uid, gid, rdev, target)
    return wrap(parent.share, c, parent.ino)


def link(v, node: Node, parent: Node, name: bytes) -> Node:
    if is_shared_dir(parent) or node.kind == MMFS or parent.kind != SHARE:
        raise EngineError(errno.EPERM)
    parent = fresh(v, parent)
    c = v.link(unwrap(v, node, True), unwrap(v, parent, True), name)
    return wrap(parent.share, c, parent.ino)


def unlink(v, parent: Node, name: bytes) -> None:
    if is_shared_dir(parent):
        t = _table(v)
        s = _decode(name)
        if t.get(s) is not None:
            raise EngineError(errno.EISDIR)
        if not _is_file(t.folder, s):
            raise NotFound()
        os.unlink(os.path.join(t.folder, s))
        _changed(v, s)
        return
    v.unlink(unwrap(v, parent, True), name)


def rmdir(v, parent: Node, name: bytes) -> None:
    if is_shared_dir(parent):
        s = _decode(name)
        if _table(v).get(s) is not None:
            raise EngineError(errno.EPERM, f"remove {s}.mmfs to remove the share")
        raise NotFound()
    v.rmdir(unwrap(v, parent, True), name)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def rename(v, p1: Node, n1: bytes, p2: Node, n2: bytes, flags: int) -> None:
    a, b = is_shared_dir(p1), is_shared_dir(p2)
    if a or b:
        if not (a and b):
            raise EngineError(errno.EXDEV)
        if flags & _RENAME_EXCHANGE:
            raise EngineError(errno.EINVAL)
        t = _table(v)
        s1 = _decode(n1)
        if t.get(s1) is not None:
            raise EngineError(errno.EPERM, f"rename {s1}.mmfs to rename the share")
        if not _is_file(t.folder, s1):
            raise NotFound()
        s2 = _new_file_name(v, n2)
        dst = os.path.join(t.folder, s2)
        if flags & _RENAME_NOREPLACE and os.path.lexists(dst):
            raise EngineError(errno.EEXIST)
        os.rename(os.path.join(t.folder, s1), dst)
        _changed(v, s1)
        _changed(v, s2)
        return
    v.rename(unwrap(v, p1, True), n1, unwrap(v, p2, True), n2, flags)


def setattr(v, node: Node, **fields) -> Attr:
    if node.kind == MMFS:
        path = MmfsFile.path(v, node)
        if fields.get("size") is not None:
            os.truncate(path, fields["size"])
        if fields.get("mode") is not None:
            os.chmod(path, stat.S_IMODE(fields["mode"]))
        if fields.get("uid") is not None or fields.get("gid") is not None:
            os.chown(path, -1 if fields.get("uid") is None else fields["uid"],
                     -1 if fields.get("gid") is None else fields["gid"])
        at, mt = fields.get("atime_ns"), fields.get("mtime_ns")
        if at is not None or mt is not None:
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns if at is None else at,
                               st.st_mtime_ns if mt is None else mt))
        _changed(v, os.fsdecode(node.target))
        return v.attr(node)
    if node.kind != SHARE:
        raise EngineError(errno.EROFS)
    return _share_attr(v.setattr(unwrap(v, node, True), **fields), node)


def truncate_for_open(v, node: Node) -> None:
    if node.kind == MMFS:
        os.truncate(MmfsFile.path(v, node), 0)
        _changed(v, os.fsdecode(node.target))
        return
    v.truncate_for_open(unwrap(v, node, True))


def write(v, node: Node, offset: int, data) -> int:
    if node.kind == MMFS:
        fd = os.open(MmfsFile.path(v, node), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            n = os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        _changed(v, os.fsdecode(node.target))
        return n
    if node.kind != SHARE:
        raise EngineError(errno.EROFS)
    return v.write(unwrap(v, node, True), offset, data)


def getxattr(v, node: Node, name: bytes) -> bytes:
    if node.kind == SHARE:
        return v.getxattr(unwrap(v, node, False), name)
    if name.startswith(b"system.") or name == b"security.selinux":
        raise EngineError(errno.EOPNOTSUPP)
    raise EngineError(errno.ENODATA)


def listxattr(v, node: Node) -> list[bytes]:
    if node.kind == SHARE:
        return v.listxattr(unwrap(v, node, False))
    return []


def setxattr(v, node: Node, name: bytes, value: bytes) -> None:
    if node.kind == SHARE:
        return v.setxattr(unwrap(v, node, True), name, value)
    raise EngineError(errno.EOPNOTSUPP if node.kind == MMFS else errno.EROFS)


def removexattr(v, node: Node, name: bytes) -> None:
    if node.kind == SHARE:
        return v.removexattr(unwrap(v, node, True), name)
    raise EngineError(errno.EOPNOTSUPP if node.kind == MMFS else errno.EROFS)


def open_check(v, node: Node, writing: bool) -> None:
    """As :meth:`View.open_check`, for ``shared/`` nodes."""
    if node.kind == MMFS:
        MmfsFile().attr(v, node)
        return
    v.open_check(unwrap(v, node, writing), writing)
