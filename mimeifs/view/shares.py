"""``shared/``: the folders that ``.mmfs`` files define (DESIGN.md ".mmfs shares").

The view knows a share table only through a small protocol (``View.shares``, set by
the daemon; the table itself is :class:`mimeifs.shares.registry.Registry`)::

    folder: str                       # <store>/shares, where the .mmfs files live
    get(name: str) -> share | None    # a valid share: .name, .mimei (40 hex), .version
                                      # ("cur" | "last" | "release" | int), .readonly,
                                      # .key (str: name, MiMei and version; starts with
                                      # the name and a newline)
    names() -> list[str]              # the valid shares, sorted
    file_changed(fname: str) -> None  # a file of the folder changed: re-read it now

What ``shared/`` shows:

- ``shared/<name>/`` (kind ``share``) for every valid share: the MiMei at the share's
  version. Each node wraps the ``mm/`` node it shows (``Node.inner``) under a number
  of its own, :func:`share_ino` (a directory may have only one parent in the
  kernel's cache, so ``shared/<name>`` cannot reuse the numbers of
  ``mm/<id>/cur``). The key is in the number, so pointing a share at another MiMei
  or version gives every node a new number and nothing stale survives in a door's
  cache. Writes go to cur when the share shows this node's own cur and is not
  read-only, which is looked up at each write (EROFS otherwise).
- ``shared/<file>`` (kind ``mmfs``) for every regular file of the folder, read and
  written straight through to ``<store>/shares/<file>``: writing ``NAME.mmfs`` there
  (create, write, close, as ``cp`` or an editor does) defines the share, and the
  table re-reads the file at every change, so ``shared/NAME/`` appears at once;
  ``rm`` removes the share (never the MiMei). Other names are allowed (an editor's
  temporary file, ``sed -i``'s), except a share's name. Only regular files: mkdir,
  symlinks and devices there are EPERM, hard links EPERM, renames to or from
  elsewhere EXDEV.

Cache classes: a share's root and everything shown of a cur are ``short``
(another writer, the source sync or the mount's ``mm/<id>/cur``, may change them, and
a share may be edited); what is shown of a version keeps its ``long`` class.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from ..engine.errors import EngineError, NotFound
from .nodes import SHARED, SHORT, VIRT, Attr, Node, _vino_hasher, vino

SHARE, MMFS = "share", "mmfs"
_MASK = (1 << 62) - 1


# ---------------------------------------------------------------------- numbers
def share_ino(key: str, inner_ino: int) -> int:
    """The number of the node that shows node ``inner_ino`` under the share with
    ``key``: ``vino("share", key, inner_ino)``."""
    return vino("share", key, inner_ino)


def share_inos(key: str):
    """``inner_ino -> share_ino(key, inner_ino)`` with the prefix hashed once (a
    listing asks for every entry)."""
    base = _vino_hasher(("share", key))

    def ino(inner: int) -> int:
        h = base.copy()
        b = str(inner).encode()
        h.update(len(b).to_bytes(4, "big") + b)
        return VIRT | (int.from_bytes(h.digest(length=8), "big") & _MASK)
    return ino


def _name_of(key: str) -> str:
    return key.split("\n", 1)[0]


def is_shared_dir(node: Node) -> bool:
    return node.kind == "fixed" and node.ino == SHARED


def routed(node: Node) -> bool:
    """True if a write on ``node`` is this module's (``shared/`` and below)."""
    return node.kind in (SHARE, MMFS) or is_shared_dir(node)


def _table(v):
    t = getattr(v, "shares", None)
    if t is None:
        raise NotFound()
    return t


def current(v, node: Node):
    """The share ``node`` was found under, if it is still the same (else NotFound)."""
    key = node.share
    sh = _table(v).get(_name_of(key))
    if sh is None or sh.key != key:
        raise NotFound(f"share {_name_of(key)!r} changed or was removed")
    return sh


def fresh(v, node: Node) -> Node:
    """``node`` if its share is unchanged. A share's root whose share now shows
    another MiMei or version stands for the new root under its old number (a door
    may still hold the name for a moment before it hears of the change); any other
    node of a changed or removed share is gone (NotFound)."""
    key = node.share
    sh = _table(v).get(_name_of(key))
    if sh is not None and sh.key == key:
        return node
    if sh is None or node.parent != SHARED:
        raise NotFound(f"share {_name_of(key)!r} changed or was removed")
    new = share_root(v, sh)
    new.ino = node.ino
    return new


def wrap(key: str, inner: Node, parent: int, ino: int | None = None) -> Node:
    """The share node showing ``inner`` (found in share directory ``parent``)."""
    return Node(SHARE, inner.mimei, inner.n, inner.entry, b"", parent,
                share_ino(key, inner.ino) if ino is None else ino, key, inner)


def unwrap(v, node: Node, writing: bool) -> Node:
    """The ``mm/`` node a share node shows (others as they are). Raises EROFS when
    ``writing`` to a read-only share or to a version, NotFound for a stale node."""
    if node.kind != SHARE:
        return node
    node = fresh(v, node)
    sh = current(v, node)
    if writing and (sh.readonly or node.inner.kind != "cur"):
        raise EngineError(errno.EROFS)
    return node.inner


def _share_attr(a: Attr, node: Node) -> Attr:
    cache = SHORT if node.parent == SHARED or node.inner.kind == "cur" else a.cache
    return dataclasses.replace(a, ino=node.ino, cache=cache)


# ---------------------------------------------------------------------- shared/ itself
def share_root(v, sh) -> Node:
    """``shared/<name>``: the MiMei of share ``sh`` at its version. Raises NotFound
    while it is not available (no such version yet, an unknown remote MiMei), and
    ChunkMissing on a thread that may not wait for the network (the door asks again
    from a worker thread, where :meth:`Engine.find` asks the network node)."""
    mid = sh.mimei
    if not v.e.find(mid):
        raise NotFound(f"share {sh.name}: MiMei {mid} is not available")
    st = v.e.state(mid)
    if sh.version == "cur":
        if st["cur"] is None:
            raise NotFound(f"share {sh.name}: no cur of {mid} here")
        inner = Node("cur", mid, ino=st["cur"], parent=SHARED)
    else:
        if sh.version == "last":
            n = st["last"]
        elif sh.version == "release":
            n = None if st["release"] is None else st["release"]["n"]
        else:
            n = sh.version
        if n is None:
            raise NotFound(f"share {sh.name}: {mid} has no {sh.version} version yet")
        inner = Node("ver", mid, n, v.e.version_root(mid, n), parent=SHARED,
                     ino=vino("ver", mid, n, b""))
    return wrap(sh.key, inner, SHARED)


def _file_node(fname: str) -> Node:
    return Node(MMFS, target=os.fsencode(fname), parent=SHARED, ino=vino("mmfs", fname))


def _is_file(folder: str, fname: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(os.path.join(folder, fname)).st_mode)
    except (OSError, ValueError):
        return False


def _decode(name: bytes) -> str:
    s = os.fsdecode(name)
    if not s or "/" in s or "\0" in s or s in (".", ".."):
        raise NotFound()
    return s


def shared_lookup(v, name: bytes) -> Node:
    """``shared/<name>``: a share (preferred) or a file of the shares folder."""
    t = _table(v)
    s = _decode(name)
    sh = t.get(s)
    if sh is not None:
        return share_root(v, sh)
    if _is_file(t.folder, s):
        return _file_node(s)
    raise NotFound()


def shared_children(v) -> list[tuple[bytes, Node, Attr]]:
    """The shares that can be shown, then the folder's regular files, by name."""
    t = getattr(v, "shares", None)
    if t is None:
        return []
    out = []
    taken = set()
    for name in t.names():
        sh = t.get(name)
        if sh is None:
            continue
        try:
            node = share_root(v, sh)
            a = v.attr(node)
        except NotFound:
            continue
        taken.add(name)
        out.append((os.fsencode(name), node, a))
    try:
        files = sorted(os.listdir(t.folder))
    except OSError:
        files = []
    for f in files:
        if f in taken or not _is_file(t.folder, f):
            continue
        node = _file_node(f)
        try:
            out.append((os.fsencode(f), node, v.attr(node)))
        except NotFound:
            continue
    return out


# ---------------------------------------------------------------------- node kinds
class ShareKind:
    """``shared/<name>[/...]``: what the wrapped ``mm/`` node answers, renumbered."""

    def attr(self, v, node):
        node = fresh(v, node)
        return _share_attr(v.attr(node.inner), node)

    def lookup(self, v, node, name):
        node = fresh(v, node)
        return wrap(node.share, v.lookup(node.inner, name), node.ino)

    def children(self, v, node):
        node = fresh(v, node)
        ino_of, key, d = share_inos(node.share), node.share, node.ino
        out = []
        for name, c, a in v.children(node.inner):
            w = wrap(key, c, d, ino_of(c.ino))
            out.append((name, w, _share_attr(a, w)))
        return out

    def read(self, v, node, offset, size):
        return v.read(fresh(v, node).inner, offset, size)

    def readlink(self, v, node):
        return v.readlink(fresh(v, node).inner)

    def xattrs(self, v, node):
        return v.xattrs(fresh(v, node).inner)


class MmfsFile:
    """``shared/<file>``: a regular file of ``<store>/shares``, read through."""

    @staticmethod
    def path(v, node) -> str:
        return os.path.join(_table(v).folder, os.fsdecode(node.target))

    def attr(self, v, node):
        try:
            st = os.lstat(self.path(v, node))
        except OSError:
            raise NotFound() from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound()
        return Attr(node.ino, st.st_mode, st.st_size, 1, st.st_uid, st.st_gid, 0,
                    st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns, (st.st_size + 511) // 512,
                    SHORT)

    def lookup(self, v, node, name):
        raise EngineError(errno.ENOTDIR)

    def children(self, v, node):
        raise EngineError(errno.ENOTDIR)

    def read(self, v, node, offset, size):
        try:
            fd = os.open(self.path(v, node), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound() from None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def readlink(self, v, node):
        raise EngineError(errno.EINVAL)

    def xattrs(self, v, node):
        return {}


KINDS = {SHARE: ShareKind(), MMFS: MmfsFile()}


# ---------------------------------------------------------------------- for doors
def may_change(node: Node) -> bool:
    """True for a share node or shared file whose bytes may change while a door
    caches them (a door must not keep their pages)."""
    return node.kind == MMFS or (node.kind == SHARE and node.inner.kind == "cur")


def aliases(v, mimei: str, inos, entries) -> tuple[list[int], list[tuple[int, bytes]]]:
    """The share nodes that show cur nodes ``inos`` and cur directory entries
    ``entries`` ((parent number, name)) of ``mimei``: what a door must drop besides
    those when cur changes behind its back."""
    t = getattr(v, "shares", None)
    if t is None:
        return [], []
    out_i: list[int] = []
    out_e: list[tuple[int, bytes]] = []
    for name in t.names():
        sh = t.get(name)
        if sh is None or sh.mimei != mimei or sh.version != "cur":
            continue
        ino_of = share_inos(sh.key)
        out_i += [ino_of(i) for i in inos]
        out_e += [(ino_of(p), n) for p, n in entries]
    return out_i, out_e


def share_entries(v, mimei: str) -> list[tuple[int, bytes]]:
    """``(SHARED, name)`` of every share of ``mimei`` at ``last`` or ``release``: its
    root is another version once the MiMei's records change, so a door must look the
    name up again."""
    t = getattr(v, "shares", None)
    if t is None:
        return []
    out = []
    for n in t.names():
        sh = t.get(n)
        if sh is not None and sh.mimei == mimei and sh.version in ("last", "release"):
            out.append((SHARED, os.fsencode(n)))
    return out


__all__ = ["KINDS", "SHARE", "MMFS", "share_ino", "share_root", "shared_lookup",
           "shared_children", "routed", "unwrap", "fresh", "may_change", "aliases",
           "share_entries"]
