"""What the view is made of: nodes, their attributes, and their stable numbers.

A :class:`Node` names one thing in the tree (DESIGN.md "The mounted view")::

    /                      kind "root"
    /mm, /name, /mac, /shared                   "fixed"
    /mm/<id>               "mimei"      /mm/<id>/v           "vdir"
    /mm/<id>/v/<n>[/...]   "ver"        /mm/<id>/last        "last"
    /mm/<id>/release       "release"    /mm/<id>/.refs       "refs"
    /mm/<id>/.refs/<t>     "ref"        /mm/<id>/.info       "info"
    /mm/<id>/cur[/...]     "cur"        /name/<mark>         "namelink"
    /mac/<hash>            "mac"
    /shared/<name>[/...]   "share"      /shared/<file>       "mmfs"

Every node has a number (``ino``) that is stable across runs: cur inodes keep the
engine's persistent inode numbers (below :data:`VIRT`); every other node's number is
derived from what it names (:func:`vino`: blake3 of the length-prefixed parts), in the
range at and above :data:`VIRT`. FUSE uses them as inode numbers; other doors as ETags
or not at all. :class:`Attr` is a plain description of a node (POSIX-like fields plus
how long it may be cached), which each door turns into its own form.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3

from ..engine import objects

ROOT, MM, NAME, MAC, SHARED = 1, 2, 3, 4, 5
#: The fixed directories below the root, by name.
FIXED_DIRS = {b"mm": MM, b"name": NAME, b"mac": MAC, b"shared": SHARED}
#: Numbers at or below this are fixed nodes (a door may use a few of its own: FUSE's
#: control file is 6).
LAST_FIXED = 6

VIRT = 1 << 62
_MASK = (1 << 62) - 1

#: Cache classes, how long a door may keep a node's attributes and entry:
#: ``long`` (never changes, or changes only through the daemon's own commands, which
#: invalidate it), ``cur`` (may change from another process: the CLI importing), and
#: ``short`` (marks come and go with create and rm).
LONG, CUR, SHORT = "long", "cur", "short"


def _vino_hasher(parts) -> "blake3.blake3":
    h = blake3.blake3()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(4, "big") + b)
    return h


def vino(*parts) -> int:
    """A stable number for a node that is not a cur inode, named by ``parts``: the
    first 8 bytes of blake3 over the length-prefixed parts, in the range >= VIRT."""
    return VIRT | (int.from_bytes(_vino_hasher(parts).digest(length=8), "big") & _MASK)


@dataclass(slots=True)
class Node:
    """One node of the view. ``kind`` as in the module docstring; ``mimei`` (40 hex)
    and ``n`` (version) where they apply; ``entry`` a version's or Mac file's DAG
    entry; ``target`` a symlink's target; ``parent`` the number of the directory it
    was found in; ``ino`` its own number. A ``share`` node (:mod:`.shares`) shows
    ``inner``, the node of ``mm/`` it stands for, under the share ``share`` (the
    share's key)."""
    kind: str
    mimei: str = ""
    n: int = -1
    entry: objects.Entry | None = None
    target: bytes = b""
    parent: int = ROOT
    ino: int = 0
    share: str = ""
    inner: "Node | None" = None


def ver_inos(d: Node, d_ino: int):
    """``name -> number`` for the entries of version directory ``d`` (number
    ``d_ino``): equal to ``vino("ver", d.mimei, d.n, d_ino, name)``, with the prefix
    hashed once per directory and copied per name (a listing asks for every entry)."""
    base = _vino_hasher(("ver", d.mimei, d.n, d_ino))

    def ino(name: bytes) -> int:
        h = base.copy()
        h.update(len(name).to_bytes(4, "big") + name)
        return VIRT | (int.from_bytes(h.digest(length=8), "big") & _MASK)
    return ino


@dataclass(slots=True)
class Attr:
    """A node's attributes. Times in ns since the epoch; ``size`` and ``blocks`` (512
    byte units) as stat(2) gives them; ``cache`` one of LONG, CUR, SHORT;
    ``immutable`` for versions and Mac files (a door may cache their bytes for ever);
    ``generated`` for content made at read time (``.info``: its size may change)."""
    ino: int
    mode: int
    size: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    blocks: int = 0
    cache: str = LONG
    immutable: bool = False
    generated: bool = False
