"""The immutable Merkle DAG of versions: file manifests and directory trees.

Formats (all integers big-endian), DESIGN.md "Storage", modelled on git trees:

Manifest — sub-database ``manifests``, key = the file's content hash (plain blake3 of its
bytes, its Mac ID, what ``b3sum`` prints)::

    b"M" | size u64 | count u32 | count x (chunk blake3 32 bytes | chunk length u32)

Tree — sub-database ``trees``, key = blake3 in derive-key mode (context
``"mimeifs 2026 tree v1"``) of the encoding, so no file content can hash to a tree key::

    b"T" | count u32 | count x entry, entries sorted by name (bytes)
    entry = name_len u16 | name | mode u32 | uid u32 | gid u32 | size u64 |
            mtime_ns i64 | rdev u64 | hash_len u8 | hash | target_len u16 | target |
            xattr_len u32 | xattrs (repeated: key_len u16 | key | val_len u32 | val)

``hash`` is the content hash of a regular file or the tree hash of a directory; ``target``
is a symlink's target. Stored values carry a codec byte (see ``blocks``): trees compress.
"""

from __future__ import annotations

import bisect
import collections
import operator
import stat
import struct
import threading
from typing import NamedTuple, Sequence

import blake3

from . import blocks
from .errors import ChunkMissing

TREE_CONTEXT = "mimeifs 2026 tree v1"
_MHDR = struct.Struct(">QI")
_MREC = struct.Struct(">32sI")


class Entry(NamedTuple):
    """One directory entry of a version tree."""
    name: bytes
    mode: int          # full st_mode (type bits and permissions)
    uid: int
    gid: int
    size: int          # bytes (files, symlinks); 0 for others
    mtime_ns: int
    rdev: int
    hash: bytes        # 32 bytes for files and directories, b"" otherwise
    target: bytes      # symlink target, b"" otherwise
    xattrs: tuple      # ((key bytes, value bytes), ...) sorted by key

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


class Manifest:
    """A file's content: its size and chunk list. ``offsets[i]`` is chunk i's start."""

    __slots__ = ("hash", "size", "chunks", "lengths", "offsets")

    def __init__(self, h: bytes, size: int, chunks: Sequence[bytes], lengths: Sequence[int]):
        self.hash = h
        self.size = size
        self.chunks = list(chunks)
        self.lengths = list(lengths)
        offs, o = [], 0
        for n in self.lengths:
            offs.append(o)
            o += n
        self.offsets = offs
        if o != size:
            raise blocks.CorruptBlock(f"manifest {h.hex()}: chunks add to {o}, size {size}")

    def encode(self) -> bytes:
        return b"M" + _MHDR.pack(self.size, len(self.chunks)) + b"".join(
            _MREC.pack(h, n) for h, n in zip(self.chunks, self.lengths))

    @classmethod
    def decode(cls, h: bytes, value: bytes) -> "Manifest":
        if value[:1] != b"M":
            raise blocks.CorruptBlock(f"object {h.hex()} is not a manifest")
        size, count = _MHDR.unpack_from(value, 1)
        chunks, lengths = [], []
        for c, n in _MREC.iter_unpack(value[1 + _MHDR.size:1 + _MHDR.size + count * _MREC.size]):
            chunks.append(c)
            lengths.append(n)
        if len(chunks) != count:
            raise blocks.CorruptBlock(f"manifest {h.hex()} truncated")
        return cls(h, size, chunks, lengths)

    def read(self, txn, blocks_db, offset: int, size: int, cache: blocks.ChunkCache | None) -> bytes:
        """Bytes [offset, offset+size) of the file, clipped to its size."""
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        i = bisect.bisect_right(self.offsets, offset) - 1
        out = []
        pos = offset
        while pos < end:
            start = self.offsets[i]
            data = blocks.load_chunk(txn, blocks_db, self.chunks[i], self.lengths[i], cache)
            out.append(data[pos - start:min(end, start + self.lengths[i]) - start])
            pos = start + self.lengths[i]
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)


def store_manifest(txn, db, m: Manifest) -> None:
    """Store a manifest under its content hash (once)."""
    txn.put(m.hash, m.encode(), db=db, overwrite=False)


class Tree:
    """A decoded directory tree: ``entries`` sorted by name. :meth:`get` finds one by
    name through an index built on its first use (a listing never needs it)."""

    __slots__ = ("hash", "entries", "_index")

    def __init__(self, h: bytes, entries: list[Entry]):
        self.hash = h
        self.entries = entries
        self._index: dict[bytes, Entry] | None = None

    def get(self, name: bytes) -> Entry | None:
        """The entry called ``name``, or None."""
        if self._index is None:
            self._index = {e.name: e for e in self.entries}
        return self._index.get(name)


_EHEAD = struct.Struct(">IIIQqQB")   # the fixed fields, then the hash's length byte
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")
_NO_TAIL = bytes(6)                   # target length 0 (u16), xattr bytes 0 (u32)
_by_name = operator.itemgetter(0)


def encode_tree(entries: Sequence[Entry]) -> tuple[bytes, bytes]:
    """Encode entries (sorted here by name): returns (tree hash, encoding).

    Layout: ``b"T"``, count (u32), then per entry: name length (u16), name, mode uid
    gid (u32), size (u64), mtime_ns (i64), rdev (u64), hash length (u8), hash, target
    length (u16), target, xattr bytes (u32), xattrs as (key length u16, key, value
    length u32, value). Big-endian. The hash is blake3 keyed by :data:`TREE_CONTEXT`.
    A backup encodes every entry of every dirty directory, so the common entry (no
    target, no xattrs) takes one ``pack`` and a constant tail.
    """
    parts = [b"T", _U32.pack(len(entries))]
    ap = parts.append
    head, u16, u32 = _EHEAD.pack, _U16.pack, _U32.pack
    for e in sorted(entries, key=_by_name):
        name, h = e.name, e.hash
        ap(u16(len(name)))
        ap(name)
        ap(head(e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.rdev, len(h)))
        ap(h)
        if not e.target and not e.xattrs:
            ap(_NO_TAIL)
            continue
        ap(u16(len(e.target)))
        ap(e.target)
        xb = b"".join(u16(len(k)) + k + u32(len(v)) + v for k, v in e.xattrs)
        ap(u32(len(xb)))
        ap(xb)
    enc = b"".join(parts)
    return blake3.blake3(enc, derive_key_context=TREE_CONTEXT).digest(), enc


def decode_tree(h: bytes, enc: bytes) -> Tree:
    """Decode a tree encoding. Raises :class:`blocks.CorruptBlock` if malformed."""
    try:
        if enc[:1] != b"T":
            raise ValueError("not a tree")
        (count,) = _U32.unpack_from(enc, 1)
        p = 5
        entries = []
        unpack_h = _U16.unpack_from
        head, ehead = _EHEAD.unpack_from, _EHEAD.size
        for _ in range(count):
            (nl,) = unpack_h(enc, p); p += 2
            name = enc[p:p + nl]; p += nl
            mode, uid, gid, size, mtime, rdev, hl = head(enc, p); p += ehead
            hsh = enc[p:p + hl]; p += hl
            if enc[p:p + 6] == _NO_TAIL:  # no target, no xattrs: most entries
                p += 6
                entries.append(Entry(name, mode, uid, gid, size, mtime, rdev, hsh, b"", ()))
                continue
            (tl,) = unpack_h(enc, p); p += 2
            target = enc[p:p + tl]; p += tl
            (xl,) = _U32.unpack_from(enc, p); p += 4
            xend = p + xl
            xs = []
            while p < xend:
                (kl,) = unpack_h(enc, p); p += 2
                k = enc[p:p + kl]; p += kl
                (vl,) = _U32.unpack_from(enc, p); p += 4
                xs.append((k, enc[p:p + vl])); p += vl
            entries.append(Entry(name, mode, uid, gid, size, mtime, rdev, hsh, target, tuple(xs)))
        if p != len(enc):
            raise ValueError("trailing bytes")
    except (struct.error, IndexError, ValueError) as e:
        raise blocks.CorruptBlock(f"tree {h.hex()}: {e}") from e
    return Tree(h, entries)


def store_tree(txn, db, entries: Sequence[Entry]) -> bytes:
    """Encode and store a tree (compressed when it helps). Returns its hash."""
    h, enc = encode_tree(entries)
    if txn.get(h, db=db) is None:
        _, value = blocks.encode_chunk(enc)
        txn.put(h, value, db=db)
    return h


class ObjectCache:
    """An LRU of decoded trees and manifests (immutable, so never stale), bounded by
    weight: a tree weighs 1 + its entries, a manifest 1 + its chunks (an entry or a
    chunk reference is ~250 bytes decoded, so the default 262,144 is ~64 MiB at most).

    A count of objects was the bound before: 8,192 trees could not hold the 8,702
    directories of the benchmark tree, so every ``ls -lR`` decoded them all again, and
    one directory of 100k entries weighed the same as an empty one."""

    def __init__(self, max_weight: int = 1 << 18):
        self.max_weight = max_weight
        self._d: collections.OrderedDict[tuple, tuple[object, int]] = collections.OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def _get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is None:
                return None
            self._d.move_to_end(key)
            return v[0]

    def _put(self, key, v, weight: int):
        with self._lock:
            if key in self._d:
                return
            self._d[key] = (v, weight)
            self._weight += weight
            while self._weight > self.max_weight and len(self._d) > 1:
                _, (_, w) = self._d.popitem(last=False)
                self._weight -= w

    def _load(self, kind: bytes, txn, db, h: bytes, decode):
        key = (kind, h)
        v = self._get(key)
        if v is None:
            raw = txn.get(h, db=db)
            if raw is None:
                raise ChunkMissing([("tree" if kind == b"T" else "manifest", h)])
            v = decode(h, raw)
            self._put(key, v, 1 + len(v.entries if kind == b"T" else v.chunks))
        return v

    def cached_tree(self, h: bytes) -> Tree | None:
        """The decoded tree ``h`` if cached (no transaction needed), else None."""
        return self._get((b"T", h))

    def tree(self, txn, db, h: bytes) -> Tree:
        """The decoded tree ``h``. Raises :class:`ChunkMissing` if this store lacks it,
        :class:`blocks.CorruptBlock` if it does not decode."""
        return self._load(b"T", txn, db, h, lambda h, raw: decode_tree(h, blocks.decode_chunk(raw)))

    def manifest(self, txn, db, h: bytes) -> Manifest:
        """The decoded manifest ``h``. Raises :class:`ChunkMissing` if this store lacks
        it, :class:`blocks.CorruptBlock` if it does not decode."""
        return self._load(b"M", txn, db, h, lambda h, raw: Manifest.decode(h, bytes(raw)))

