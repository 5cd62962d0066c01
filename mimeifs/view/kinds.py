"""One handler per node kind: what each node of the view is, lists, reads and links to.

Each handler answers for its kind only (``attr``, ``lookup``, ``children``, ``read``,
``readlink``, ``xattrs``); the defaults refuse the way POSIX does (ENOTDIR for a lookup
in a non-directory, EISDIR for a read of one, EINVAL for readlink of a non-link). The
:class:`~.view.View` dispatches on ``node.kind``. Handlers hold no state; the view
passes itself (``v``) for the engine, the owner and the caches.
"""

from __future__ import annotations

import errno
import stat

from .. import ids
from ..engine.errors import EngineError, NotFound
from .nodes import (CUR, FIXED_DIRS, LONG, MAC, MM, NAME, ROOT, SHARED, SHORT, Attr, Node,
                    ver_inos, vino)
from . import shares

_S_IFMT, _S_IFDIR = 0o170000, stat.S_IFDIR
DIR_MODE = stat.S_IFDIR | 0o755
LINK_MODE = stat.S_IFLNK | 0o777


def err(code: int, msg: str = "") -> EngineError:
    return EngineError(code, msg) if msg else EngineError(code)


class Kind:
    """Defaults for a node kind (see module docstring)."""

    def attr(self, v, node: Node) -> Attr:
        raise NotFound()

    def lookup(self, v, node: Node, name: bytes) -> Node:
        raise err(errno.ENOTDIR)

    def children(self, v, node: Node) -> list[tuple[bytes, Node, Attr]]:
        raise err(errno.ENOTDIR)

    def read(self, v, node: Node, offset: int, size: int) -> bytes:
        raise err(errno.EISDIR)

    def readlink(self, v, node: Node) -> bytes:
        raise err(errno.EINVAL)

    def xattrs(self, v, node: Node) -> dict[bytes, bytes]:
        return {b"user.mimei.id": node.mimei.encode()} if node.mimei else {}


def _dir_attr(v, ino: int, cache: str = LONG) -> Attr:
    return v.base_attr(ino, DIR_MODE, 4096, 2, cache=cache)


class Root(Kind):
    def attr(self, v, node):
        return _dir_attr(v, ROOT)

    def lookup(self, v, node, name):
        ino = FIXED_DIRS.get(name)
        if ino is None:
            raise NotFound()
        return v.fixed(ino)

    def children(self, v, node):
        return [(n, v.fixed(i), _dir_attr(v, i)) for n, i in sorted(FIXED_DIRS.items())]


class Fixed(Kind):
    """``mm/``, ``name/``, ``mac/``, ``shared/``."""

    def attr(self, v, node):
        return _dir_attr(v, node.ino)

    def lookup(self, v, node, name):
        if node.ino == MM:
            mid = name.decode(errors="replace")
            if not v.e.find(mid):
                raise NotFound()
            return v.mimei_node(mid)
        if node.ino == NAME:
            try:
                mid = v.e.mark_id(name.decode())
            except UnicodeDecodeError:
                mid = None
            if mid is None:
                raise NotFound()
            return v.named(vino("namelink", name), Node("namelink", mid, target=b"../mm/" + mid.encode()))
        if node.ino == MAC:
            h = name.decode(errors="replace")
            if not ids.is_hash(h) or not v.e.has_content(bytes.fromhex(h)):
                raise NotFound()
            m = v.e.manifest(bytes.fromhex(h))
            from ..engine.objects import Entry
            e = Entry(name, stat.S_IFREG | 0o444, 0, 0, m.size, v.start_ns, 0, m.hash, b"", ())
            return v.named(vino("mac", h), Node("mac", entry=e, parent=MAC))
        if node.ino == SHARED:
            return shares.shared_lookup(v, name)
        raise NotFound()

    def children(self, v, node):
        if node.ino == MM:
            return [(m.encode(), n, v.attr(n)) for m in v.e.list() for n in (v.mimei_node(m),)]
        if node.ino == NAME:
            out = []
            for mark, mid in sorted(v.e.names().items()):
                nb = mark.encode()
                n = v.named(vino("namelink", nb), Node("namelink", mid, target=b"../mm/" + mid.encode()))
                out.append((nb, n, v.attr(n)))
            return out
        if node.ino == MAC:
            return [(h.encode(), n, v.attr(n)) for h in v.e.mac_list()
                    for n in (self.lookup(v, node, h.encode()),)]
        if node.ino == SHARED:
            return shares.shared_children(v)
        return []

    def xattrs(self, v, node):
        return {}


class MiMeiDir(Kind):
    """``mm/<id>``: cur, v, .refs, .info, and last / release once they exist."""

    def attr(self, v, node):
        v.must_exist(node.mimei)
        return _dir_attr(v, node.ino)

    def _entries(self, v, node) -> list[tuple[bytes, Node]]:
        mid = node.mimei
        st = v.e.state(mid)
        out = []
        if st["cur"] is not None:
            out.append((b"cur", Node("cur", mid, ino=st["cur"], parent=node.ino)))
        out += [(b"v", v.named(vino("vdir", mid), Node("vdir", mid, parent=node.ino))),
                (b".refs", v.named(vino("refs", mid), Node("refs", mid, parent=node.ino))),
                (b".info", v.named(vino("info", mid), Node("info", mid, parent=node.ino)))]
        if st["last"] is not None:
            out.append((b"last", v.named(vino("last", mid), Node(
                "last", mid, target=f"v/{st['last']}".encode(), parent=node.ino))))
        if st["release"] is not None:
            out.append((b"release", v.named(vino("release", mid), Node(
                "release", mid, target=f"v/{st['release']['n']}".encode(), parent=node.ino))))
        return out

    def lookup(self, v, node, name):
        for n, child in self._entries(v, node):
            if n == name:
                return child
        raise NotFound()

    def children(self, v, node):
        return [(n, c, v.attr(c)) for n, c in self._entries(v, node)]


class VersionsDir(Kind):
    """``mm/<id>/v``: one entry per version number."""

    def attr(self, v, node):
        v.must_exist(node.mimei)
        return _dir_attr(v, node.ino)

    def lookup(self, v, node, name):
        try:
            n = int(name)
        except ValueError:
            raise NotFound() from None
        if str(n).encode() != name:
            raise NotFound()
        root = v.e.version_root(node.mimei, n)
        return v.named(vino("ver", node.mimei, n, b""), Node("ver", node.mimei, n, root, parent=node.ino))

    def children(self, v, node):
        out = []
        for rec in v.e.versions(node.mimei):
            nb = str(rec["n"]).encode()
            c = self.lookup(v, node, nb)
            out.append((nb, c, v.attr(c)))
        out.sort(key=lambda x: int(x[0]))
        return out


class Version(Kind):
    """Anything inside ``v/<n>``: a version's directories, files, symlinks, devices."""

    def attr(self, v, node):
        return v.entry_attr(node.ino, node.entry)

    def lookup(self, v, node, name):
        if not node.entry.is_dir:
            raise err(errno.ENOTDIR)
        e = v.e.tree(node.entry.hash).get(name)
        if e is None:
            raise NotFound()
        return Node("ver", node.mimei, node.n, e, parent=node.ino,
                    ino=vino("ver", node.mimei, node.n, node.ino, name))

    def children(self, v, node):
        if not node.entry.is_dir:
            raise err(errno.ENOTDIR)
        t = v.e.tree(node.entry.hash)
        ino_of, mid, n, d = ver_inos(node, node.ino), node.mimei, node.n, node.ino
        out = []
        for e in t.entries:
            i = ino_of(e.name)
            out.append((e.name, Node("ver", mid, n, e, parent=d, ino=i), v.entry_attr(i, e)))
        return out

    def read(self, v, node, offset, size):
        if not node.entry.is_file:
            raise err(errno.EISDIR if node.entry.is_dir else errno.EINVAL)
        return v.e.read_content(node.entry.hash, offset, size)

    def readlink(self, v, node):
        if not stat.S_ISLNK(node.entry.mode):
            raise err(errno.EINVAL)
        return node.entry.target

    def xattrs(self, v, node):
        out = {b"user.mimei.id": node.mimei.encode(), b"user.mimei.version": str(node.n).encode()}
        if node.entry.is_file:
            out[b"user.mimei.hash"] = node.entry.hash.hex().encode()
        return out


class Pointer(Kind):
    """``last`` and ``release``: symlinks to ``v/<n>``, read fresh from the state."""

    def attr(self, v, node):
        v.must_exist(node.mimei)
        return v.base_attr(node.ino, LINK_MODE, len(node.target), 1)

    def readlink(self, v, node):
        st = v.e.state(node.mimei)
        n = st["last"] if node.kind == "last" else (st["release"] or {}).get("n")
        if n is None:
            raise NotFound()
        return f"v/{n}".encode()


class Link(Kind):
    """``.refs/<target>`` and ``name/<mark>``: symlinks with a fixed target."""

    def attr(self, v, node):
        if node.kind == "ref":
            v.must_exist(node.mimei)
        return v.base_attr(node.ino, LINK_MODE, len(node.target), 1,
                           cache=SHORT if node.kind == "namelink" else LONG)

    def readlink(self, v, node):
        return node.target


class RefsDir(Kind):
    """``mm/<id>/.refs``: one symlink per referenced MiMei (``ln -s`` adds, ``rm`` drops)."""

    def attr(self, v, node):
        v.must_exist(node.mimei)
        return _dir_attr(v, node.ino)

    def _ref(self, v, node, t: str) -> Node:
        return v.named(vino("ref", node.mimei, t), Node("ref", node.mimei, target=b"../../" + t.encode(),
                                                       parent=node.ino))

    def lookup(self, v, node, name):
        t = name.decode(errors="replace")
        if t not in v.e.refs(node.mimei)[0]:
            raise NotFound()
        return self._ref(v, node, t)

    def children(self, v, node):
        return [(t.encode(), c, v.attr(c)) for t in v.e.refs(node.mimei)[0]
                for c in (self._ref(v, node, t),)]


class Info(Kind):
    """``mm/<id>/.info``: the MiMei info as JSON, made when read."""

    def attr(self, v, node):
        a = v.base_attr(node.ino, stat.S_IFREG | 0o444, len(self.render(v, node.mimei)), 1)
        a.generated = True
        return a

    def read(self, v, node, offset, size):
        return self.render(v, node.mimei)[offset:offset + size]

    @staticmethod
    def render(v, mid: str) -> bytes:
        return v.e.info_file(mid)  # engine.mimei.info_json: ISO 8601 times, octal rights


class MacFile(Kind):
    """``mac/<hash>``: a Mac file, read-only and content-addressed."""

    def attr(self, v, node):
        a = v.base_attr(node.ino, stat.S_IFREG | 0o444, node.entry.size, 1)
        a.immutable = True
        return a

    def read(self, v, node, offset, size):
        return v.e.read_content(node.entry.hash, offset, size)

    def xattrs(self, v, node):
        return {b"user.mimei.hash": node.entry.hash.hex().encode()}


class Cur(Kind):
    """Anything inside ``mm/<id>/cur``: the engine's inodes (reads here, writes in
    :mod:`.cur`)."""

    def attr(self, v, node):
        return v.cur_attr(v.e.wt.getattr(node.ino))

    def lookup(self, v, node, name):
        c = v.e.wt.lookup(node.ino, name)
        return Node("cur", node.mimei, ino=c.ino, parent=node.ino)

    def children(self, v, node):
        return [(n, Node("cur", node.mimei, ino=c.ino, parent=node.ino), v.cur_attr(c))
                for n, c in v.e.wt.readdir(node.ino)]

    def read(self, v, node, offset, size):
        return v.e.wt.read(node.ino, offset, size)

    def readlink(self, v, node):
        return v.e.wt.readlink(node.ino)

    def xattrs(self, v, node):
        return {b"user.mimei.id": v.e.wt.getattr(node.ino).mimei.hex().encode()}


KINDS: dict[str, Kind] = {
    "root": Root(), "fixed": Fixed(), "mimei": MiMeiDir(), "vdir": VersionsDir(),
    "ver": Version(), "last": Pointer(), "release": Pointer(), "ref": Link(),
    "namelink": Link(), "refs": RefsDir(), "info": Info(), "mac": MacFile(), "cur": Cur(),
    **shares.KINDS,
}

__all__ = ["KINDS", "Kind", "CUR", "LONG", "SHORT", "MM", "NAME", "MAC", "SHARED", "ROOT"]
