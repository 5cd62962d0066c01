"""Marks and short IDs: what a user may call a MiMei, and which MiMei a short ID means.

A mark is the author's name for a MiMei (seed 002 Part I §V: the MiMei ID derives from
author, app type, MiMei type and mark) and appears as ``<mnt>/name/<mark>`` and as a SPEC
on the command line, so it must be one harmless path component. A unique prefix of an
ID (at least :data:`ID_PREFIX_MIN` hex digits) stands for the ID, as git's short hashes do.
"""

from __future__ import annotations

import errno
import os

from .. import ids
from .errors import MiMeiError

MARK_MAX_BYTES = 200
ID_PREFIX_MIN = 4  # hex digits: git's shortest abbreviation


def mark_problem(mark) -> str | None:
    """Why ``mark`` cannot name a MiMei, or None if it can.

    A mark is one path component under ``<mnt>/name/`` and one word of a SPEC on the
    command line, so it must be a non-empty string of at most ``MARK_MAX_BYTES`` UTF-8
    bytes, not ``.`` or ``..``, without ``/`` or control characters (C0, DEL, C1), and
    not itself a MiMei ID (40 hex digits), which would shadow the ID as a SPEC.
    """
    if not isinstance(mark, str):
        return f"a mark is a string, not {type(mark).__name__}"
    if mark == "":
        return "a mark cannot be empty"
    if mark in (".", ".."):
        return f"{mark!r} cannot be a mark: it means a directory in every path"
    if "/" in mark:
        return f"a mark cannot contain '/': {mark!r}"
    bad = next((c for c in mark if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        return f"a mark cannot contain control characters ({bad!r}): {mark!r}"
    try:
        size = len(mark.encode())
    except UnicodeEncodeError:
        return f"a mark must be valid Unicode text: {mark!r}"
    if size > MARK_MAX_BYTES:
        return f"a mark is at most {MARK_MAX_BYTES} bytes of UTF-8, not {size}"
    if ids.is_id(mark):
        return f"a mark cannot look like a MiMei ID (40 hex digits): {mark!r}"
    return None


def text_problem(what: str, s, max_bytes: int) -> str | None:
    """Why ``s`` cannot be a short text field of a MiMei's info (app type, ext), or None:
    it must be a string of at most ``max_bytes`` UTF-8 bytes without control characters."""
    if not isinstance(s, str):
        return f"{what} is a string, not {type(s).__name__}"
    bad = next((c for c in s if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        return f"{what} cannot contain control characters ({bad!r}): {s!r}"
    try:
        size = len(s.encode())
    except UnicodeEncodeError:
        return f"{what} must be valid Unicode text: {s!r}"
    if size > max_bytes:
        return f"{what} is at most {max_bytes} bytes of UTF-8, not {size}"
    return None


def check_mark(mark) -> str:
    """``mark`` if it can name a MiMei (see :func:`mark_problem`); raises
    :class:`MiMeiError` (EINVAL) saying why not."""
    why = mark_problem(mark)
    if why is not None:
        raise MiMeiError(errno.EINVAL, f"bad mark: {why}")
    return mark


def ids_with_prefix(txn, db, prefix: str) -> list[str]:
    """The IDs (hex) among the 20-byte keys of ``db`` that start with ``prefix`` (lowercase
    hex, at least ``ID_PREFIX_MIN`` digits; anything else matches nothing), sorted. One
    cursor range scan."""
    if not (ID_PREFIX_MIN <= len(prefix) <= 2 * ids.ID_BYTES) or \
            any(c not in "0123456789abcdef" for c in prefix):
        return []
    start = bytes.fromhex(prefix[:len(prefix) & ~1])
    out = []
    cur = txn.cursor(db=db)
    if cur.set_range(start):
        for k in cur.iternext(values=False):
            h = bytes(k).hex()
            if not h.startswith(prefix[:len(start) * 2]):
                break
            if h.startswith(prefix):
                out.append(h)
    return out


def resolve_spec(engine, spec: str) -> str:
    """A MiMei ID from a SPEC: in this order, a full ID this store holds, a mark of
    this node's own MiMei, a path in a mount, or a unique prefix of at least
    ``ID_PREFIX_MIN`` hex digits of an ID this store holds (git's short hashes).

    Raises :class:`MiMeiError`: EINVAL for an ambiguous prefix (the message lists the
    candidates), ENOENT if nothing matches.
    """
    if not isinstance(spec, str) or spec == "":
        raise MiMeiError(errno.ENOENT, "no MiMei named by an empty SPEC (give an ID, a mark or a path)")
    if ids.is_id(spec) and engine.exists(spec):
        return spec
    mid = engine.mark_id(spec)
    if mid is not None:
        return mid
    if "\0" not in spec and os.path.exists(spec):
        try:
            v = os.getxattr(spec, "user.mimei.id")
            if ids.is_id(v.decode()):
                return v.decode()
        except OSError:
            pass
        parts = os.path.realpath(spec).split(os.sep)
        for i, p in enumerate(parts[:-1]):
            if p == "mm" and ids.is_id(parts[i + 1]):
                return parts[i + 1]
    found = engine.id_prefix(spec)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        raise MiMeiError(errno.EINVAL, f"ID prefix {spec!r} is ambiguous: it starts {shown}")
    raise MiMeiError(errno.ENOENT, f"no MiMei matches {spec!r} (ID, unique ID prefix, mark or path)")
