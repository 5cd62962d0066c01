"""What a gateway URL path names: a place in the view, or one of the gateway's own
listing levels.

The gateway's URL space (issue 15; seed 001 §VII, Leither's ``mid:ver/path``) is::

    /                                  listing: mm, name, mac
    /mm/                               listing: every MiMei ID in the store
    /mm/<id>/                          listing: cur, last, release, 0, 1, ...
    /mm/<id>/<ver>/<path>              <ver> = cur | last | release | <n>  (also v/<n>)
    /<id>:<ver>/<path>                 Leither's form of the same
    /name/                             listing: this node's marks
    /name/<mark>/...                   as /mm/<id>/... for this node's MiMei <mark>
    /mac/ , /mac/<hash>                Mac files

``cur`` maps to the view's ``mm/<id>/cur``, a number ``n`` to ``mm/<id>/v/<n>``, and
``last`` / ``release`` to the number the view's ``last`` / ``release`` link names at
the time of the request. Path segments arrive percent-decoded; an empty segment or
``.`` is skipped, and ``..``, NUL or a segment that is not UTF-8 is refused (NotFound)
before the view is asked, so no URL names anything outside the view (the view refuses
the same again in :meth:`~mimeifs.view.View.resolve`).

Errors are :class:`~mimeifs.engine.errors.EngineError` (NotFound for a bad path). Calls
are synchronous and may raise ``ChunkMissing`` on a thread that may not fetch; the door
then runs them again in a worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import ids
from ..engine.errors import NotFound
from ..view import Node, View

_LEITHER = re.compile(r"^([0-9a-f]{40}):(cur|last|release|[0-9]+)$")
VERSION_WORDS = ("cur", "last", "release")


@dataclass
class Place:
    """One resolved URL path.

    ``node`` is the view node (None for a gateway listing level, whose entries are
    ``names``); ``mimei`` the 40-hex ID where one applies; ``version`` ``"cur"`` or
    the version number as text ("" outside a MiMei); ``label`` the version word the URL
    used (``last``, ``release``, ``cur`` or the number); ``rest`` the path inside the
    version (bytes, ``/``-joined); ``immutable`` true for numbered versions and Mac files
    named by number or hash (never for cur, last or release)."""
    node: Node | None = None
    names: list[str] = field(default_factory=list)
    mimei: str = ""
    version: str = ""
    label: str = ""
    rest: bytes = b""
    immutable: bool = False


def split(path: str) -> list[str]:
    """The segments of a decoded URL path. Raises NotFound for ``..``, NUL, or a
    segment that would be a path of its own (none can: ``/`` splits)."""
    out = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == ".." or "\0" in seg:
            raise NotFound(f"bad path segment {seg!r}")
        out.append(seg)
    return out


def _version_number(view: View, mid: str, word: str) -> int:
    """The number ``last`` / ``release`` of ``mid`` points at now (NotFound if none)."""
    target = view.readlink(view.resolve(f"mm/{mid}/{word}"))
    return int(target.rsplit(b"/", 1)[-1])


def _mimei_level(view: View, mid: str) -> list[str]:
    node = view.resolve(f"mm/{mid}")
    names = [n.decode() for n, _c, _a in view.children(node) if n in (b"cur", b"last", b"release")]
    vdir = view.lookup(node, b"v")
    names += [n.decode() for n, _c, _a in view.children(vdir)]
    return names


def _in_mimei(view: View, mid: str, segs: list[str]) -> Place:
    if not segs:
        return Place(names=_mimei_level(view, mid), mimei=mid)
    word, rest = segs[0], segs[1:]
    if word == "v" and rest:
        word, rest = rest[0], rest[1:]
    rest_b = "/".join(rest).encode()
    if word == "cur":
        node = view.resolve(b"mm/" + mid.encode() + b"/cur/" + rest_b)
        return Place(node, mimei=mid, version="cur", label="cur", rest=rest_b)
    if word in ("last", "release"):
        n, immutable = _version_number(view, mid, word), False
    elif word.isdigit() and word.isascii() and str(int(word)) == word:
        n, immutable = int(word), True
    else:
        raise NotFound(f"no version {word!r}")
    node = view.resolve(f"mm/{mid}/v/{n}/".encode() + rest_b)
    return Place(node, mimei=mid, version=str(n), label=word, rest=rest_b, immutable=immutable)


def locate(view: View, path: str) -> Place:
    """The :class:`Place` that decoded URL path ``path`` names (module docstring).
    Raises NotFound (and other EngineErrors of the view)."""
    segs = split(path)
    if not segs:
        return Place(names=["mm", "name", "mac"])
    head = segs[0]
    m = _LEITHER.match(head)
    if m:
        mid = m.group(1)
        view.resolve(f"mm/{mid}")
        return _in_mimei(view, mid, [m.group(2)] + segs[1:])
    if head == "mm":
        if len(segs) == 1:
            return Place(names=view.e.list())
        mid = segs[1]
        if not ids.is_id(mid):
            raise NotFound(f"not a MiMei ID: {mid!r}")
        view.resolve(f"mm/{mid}")
        return _in_mimei(view, mid, segs[2:])
    if head == "name":
        if len(segs) == 1:
            return Place(names=sorted(view.e.names()))
        mid = view.e.mark_id(segs[1])
        if mid is None:
            raise NotFound(f"no mark {segs[1]!r}")
        return _in_mimei(view, mid, segs[2:])
    if head == "mac":
        if len(segs) == 1:
            return Place(names=view.e.mac_list())
        if len(segs) > 2:
            raise NotFound()
        node = view.resolve(f"mac/{segs[1]}")
        return Place(node, immutable=True, label="mac")
    raise NotFound(f"no such place {path!r}")
