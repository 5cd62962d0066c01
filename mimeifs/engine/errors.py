"""The engine's error vocabulary: every error carries a POSIX errno from here up.

Each door maps these once (FUSE: ``FUSEError(e.errno)``; the control file and the CLI:
``{"errno", "error"}`` and a one-line message; HTTP and RESP their own words). Anything
that is *not* an :class:`EngineError` (or an ``OSError`` from the operating system) is a
bug: doors log it with its traceback and answer EIO, never a made-up errno.

``EngineError`` subclasses ``OSError`` so that code which already catches ``OSError``
(the worktree's POSIX errors, the importer's) keeps working. Two ways to make one:

- a subclass with a message: ``NotFound("no MiMei 12ab…")`` (errno ENOENT);
- ``EngineError(code, msg)`` (also spelled ``MiMeiError(code, msg)``, the older name),
  which returns the subclass for ``code`` when there is one.

``str(e)`` is the message alone (no ``[Errno n]`` prefix), what a user reads.
"""

from __future__ import annotations

import errno as _errno
import os


class EngineError(OSError):
    """An engine request that cannot be done; ``.errno`` says why (default EIO)."""

    code = _errno.EIO

    def __new__(cls, *args, **kw):
        if cls is EngineError and args and isinstance(args[0], int):
            cls = _BY_ERRNO.get(args[0], EngineError)
        return OSError.__new__(cls, *_code_msg(cls, args))

    def __init__(self, *args):
        code, msg = _code_msg(type(self), args)
        super().__init__(code, msg)
        self.errno, self.strerror = code, msg

    def __str__(self) -> str:
        return self.strerror or os.strerror(self.errno)

    def __reduce__(self):  # picklable across the import's worker processes
        return (EngineError, (self.errno, self.strerror))


def _code_msg(cls, args) -> tuple[int, str]:
    if args and isinstance(args[0], int):
        return args[0], (str(args[1]) if len(args) > 1 else os.strerror(args[0]))
    return cls.code, (str(args[0]) if args else os.strerror(cls.code))


class NotFound(EngineError):
    """No such MiMei, version, path, reference (ENOENT)."""
    code = _errno.ENOENT


class ReadOnly(EngineError):
    """A write to something that never changes: a version, a Mac file (EROFS)."""
    code = _errno.EROFS


class PermissionDenied(EngineError):
    """This node's key did not author the MiMei, or the caller may not (EACCES)."""
    code = _errno.EACCES


class NoSpace(EngineError):
    """The disk or the LMDB map is full (ENOSPC)."""
    code = _errno.ENOSPC


class Invalid(EngineError):
    """A malformed request: bad mark, bad number, bad name (EINVAL)."""
    code = _errno.EINVAL


class Exists(EngineError):
    """The thing to create is already there (EEXIST)."""
    code = _errno.EEXIST


class Busy(EngineError):
    """Refused while something depends on it, e.g. a referenced MiMei (EBUSY)."""
    code = _errno.EBUSY


class Corrupt(EngineError):
    """Stored or received bytes do not decode or do not match their hash (EIO).

    Never shown as data: a reader gets EIO, ``mimeifs check`` names the object."""
    code = _errno.EIO


class ChunkMissing(EngineError):
    """This store lacks objects it needs (EIO at a door when nobody can fetch them).

    ``wants`` is the list of ``(kind, key)`` pairs (see :mod:`mimeifs.engine.fetch`) that
    are not here: kind ``"chunk"``, ``"manifest"``, ``"tree"`` (32-byte keys) or
    ``"mimei"`` (a 20-byte MiMei ID whose records this store does not hold)."""
    code = _errno.EIO

    def __init__(self, wants, msg: str | None = None):
        wants = list(wants)
        if msg is None:
            k, key = wants[0]
            more = f" and {len(wants) - 1} more" if len(wants) > 1 else ""
            msg = f"missing {k} {bytes(key).hex()}{more}"
        super().__init__(msg)
        self.wants = wants

    def __new__(cls, wants, msg=None):
        return OSError.__new__(cls, cls.code, msg or "missing")

    def __reduce__(self):
        return (ChunkMissing, (self.wants, self.strerror))


_BY_ERRNO = {c.code: c for c in (NotFound, ReadOnly, PermissionDenied, NoSpace, Invalid,
                                 Exists, Busy)}

#: The older name of :class:`EngineError` (``MiMeiError(errno.ENOENT, "...")``).
MiMeiError = EngineError


def errno_of(exc: BaseException) -> int | None:
    """The errno a door answers for ``exc``: its own for an :class:`EngineError` or an
    ``OSError`` that has one; None for anything else (a bug: log it, answer EIO)."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return None
