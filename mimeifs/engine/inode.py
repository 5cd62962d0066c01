"""cur inode records: the packed format, the :class:`Inode` dataclass and the raw-byte
helpers the importer and backup use on their inner loops.

Part of ``cur`` (see :mod:`mimeifs.engine.worktree` for the whole picture). A record in
``inodes`` is ino (8, BE) -> :data:`_IFIX` fixed part + symlink target. ``base`` is the
content hash of the file's last frozen content (its manifest), ``aux`` is, for files,
the *base limit* (base bytes at or past it read as holes after a shrinking truncate)
and, for directories, the total file bytes below when frozen. ``frozen`` is the file's
content hash / the directory's tree hash while unchanged since the last backup, all
zeros when dirty. ``flags`` bit 0: the inode has xattrs. Errors are :class:`EngineError`
with a POSIX errno (:func:`fserr`).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from dataclasses import dataclass

from .errors import EngineError

PAGE = 64 * 1024
ZERO32 = bytes(32)
ROOT_PARENT = 0  # parent inode recorded for a cur root
NAME_MAX = 255

_IFIX = struct.Struct(">IIIIIQqqqQQ32s32s20s")
_Q = struct.Struct(">Q")
# (mode, uid, gid, size, mtime_ns, frozen) of a packed inode, skipping the rest: what
# the re-import skip rule compares (see unchanged_file)
_HEAD = struct.Struct(">III8xQ8xq24x32x32s")
_I = struct.Struct(">I")


def ikey(ino: int) -> bytes:
    """The 8-byte big-endian key of an inode number."""
    return _Q.pack(ino)


def fserr(code: int, msg: str = "") -> EngineError:
    """An :class:`EngineError` carrying a POSIX errno (what doors turn into replies)."""
    return EngineError(code, msg or os.strerror(code))


@dataclass(slots=True)
class Inode:
    """One cur inode. Times are nanoseconds since the epoch; ``mimei`` is 20 bytes."""
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    flags: int          # bit 0: has xattrs
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    aux: int
    base: bytes
    frozen: bytes
    mimei: bytes
    target: bytes = b""

    def pack(self) -> bytes:
        return _IFIX.pack(self.mode, self.uid, self.gid, self.nlink, self.flags, self.size,
                          self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev, self.aux,
                          self.base, self.frozen, self.mimei) + self.target

    @classmethod
    def unpack(cls, ino: int, raw: bytes) -> "Inode":
        f = _IFIX.unpack_from(raw)
        return cls(ino, *f, target=bytes(raw[_IFIX.size:]))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


def same_attrs(raw: bytes | None, st) -> bool:
    """True if ``raw`` (a packed inode, or None) has the mode, owner and mtime of
    ``st`` — a tuple (mode, uid, gid, size, mtime_ns, ...) such as
    :class:`mimeifs.engine.scan.Stat`: what a re-import would copy onto it (decided
    without unpacking an :class:`Inode`)."""
    if raw is None:
        return False
    h = _HEAD.unpack_from(raw)
    return h[:3] == tuple(st[:3]) and h[4] == st[4]


def unchanged_file(raw: bytes | None, st) -> bool:
    """True if ``raw`` (a packed inode, or None) is a frozen regular file whose mode,
    owner, size and mtime equal those of ``st`` (a tuple as for :func:`same_attrs`).

    The re-import skip rule (size + mtime, as rsync and restic use), decided on the raw
    LMDB value with one ``unpack_from``: most entries of a re-import take only this
    path, so it is the importer's inner loop."""
    if raw is None or not stat.S_ISREG(st[0]):
        return False
    h = _HEAD.unpack_from(raw)
    return h[:5] == tuple(st[:5]) and h[5] != ZERO32


def clean_fields(raw: bytes) -> tuple | None:
    """For a packed inode that a backup can take as it is — a clean regular file or
    directory (``frozen`` set) without xattrs — (mode, uid, gid, size, mtime_ns, rdev,
    frozen hash), where size is a directory's total file bytes below (``aux``); None
    for any other inode. Decided on the raw bytes without building an :class:`Inode`:
    a backup reads every child of every dirty directory this way."""
    mode, uid, gid, _nl, flags, size, _a, mtime, _c, rdev, aux, _b, frozen, _m = _IFIX.unpack_from(raw)
    if flags & 1 or frozen == ZERO32:
        return None
    if stat.S_ISREG(mode):
        return mode, uid, gid, size, mtime, rdev, frozen
    if stat.S_ISDIR(mode):
        return mode, uid, gid, aux, mtime, rdev, frozen
    return None


def raw_mode(raw: bytes) -> int:
    """The st_mode of a packed inode."""
    return _I.unpack_from(raw)[0]


def now_ns() -> int:
    return time.time_ns()


def check_len(name: bytes) -> None:
    """ENAMETOOLONG for a name over :data:`NAME_MAX` bytes: what every operation that
    takes a name answers first, lookups and removals of names that do not exist
    included (POSIX; ext4 does the same)."""
    if len(name) > NAME_MAX:
        raise fserr(errno.ENAMETOOLONG)


def check_name(name: bytes) -> None:
    """Refuse names POSIX forbids: empty, '.', '..', with '/' or NUL, over 255 bytes."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise fserr(errno.EINVAL, f"bad name {name!r}")
    if len(name) > NAME_MAX:
        raise fserr(errno.ENAMETOOLONG)

