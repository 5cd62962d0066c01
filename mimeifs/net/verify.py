"""Check what a peer sent before the engine sees it, so a liar can be told apart.

The engine's ``ChunkStore.accept`` verifies every block too; this module exists so the
fetcher knows *which peer* served a bad block (and stops asking it), instead of learning
only that some block of a batch was bad. Rules (formats: ``engine/blocks.py``,
``engine/objects.py``, ``engine/fetch.py``):

- ``("chunk", h, data)``: blake3(data) == h.
- ``("pack", pid, stored, members)``: the stored value decodes (codec byte, zstd with
  the output capped at :data:`MAX_PACK`) to bytes whose blake3 is ``pid``, and every
  member ``(h, off, len)`` lies inside them and hashes to ``h``.
- ``("tree", h, stored)``: decodes (capped at :data:`MAX_TREE`) to an encoding whose
  derive-key blake3 (``objects.TREE_CONTEXT``) is ``h``.
- ``("manifest", h, encoded)``: well-formed (``b"M"``, sizes add up). Its hash is the
  blake3 of the whole file, so only the engine can check it, with its chunks.
"""

from __future__ import annotations

import struct

import blake3

from ..engine import blocks
from ..engine.objects import TREE_CONTEXT

MAX_PACK = 8 << 20
MAX_TREE = 256 << 20
_MHDR = struct.Struct(">QI")
_MREC = struct.Struct(">32sI")


class BadBlock(ValueError):
    """A block that does not match its hash or is malformed."""


def _b(x, n=None) -> bytes:
    if not isinstance(x, (bytes, bytearray)) or (n is not None and len(x) != n):
        raise BadBlock("a key or payload is not bytes of the right length")
    return bytes(x)


def check_block(b) -> tuple:
    """Verify one block (a list or tuple off the wire); returns it as a tuple of
    bytes/ints in the engine's shape. Raises :class:`BadBlock`."""
    if not isinstance(b, (list, tuple)) or not b or b[0] not in ("chunk", "pack", "tree", "manifest"):
        raise BadBlock("not a block")
    kind = b[0]
    try:
        if kind == "chunk" and len(b) == 3:
            h, data = _b(b[1], 32), _b(b[2])
            if blake3.blake3(data).digest() != h:
                raise BadBlock(f"chunk {h.hex()[:16]} does not match its hash")
            return ("chunk", h, data)
        if kind == "pack" and len(b) == 4:
            pid, stored = _b(b[1], 32), _b(b[2])
            if not isinstance(b[3], list):
                raise BadBlock("pack members is not a list")
            raw = blocks.decode_chunk(stored, MAX_PACK)
            if blake3.blake3(raw).digest() != pid:
                raise BadBlock(f"pack {pid.hex()[:16]} does not match its id")
            members = []
            for m in b[3]:
                if not (isinstance(m, (list, tuple)) and len(m) == 3):
                    raise BadBlock("malformed pack member")
                h, off, n = _b(m[0], 32), m[1], m[2]
                if not (isinstance(off, int) and isinstance(n, int) and 0 <= off and 0 < n and off + n <= len(raw)):
                    raise BadBlock("pack member outside the pack")
                if blake3.blake3(raw[off:off + n]).digest() != h:
                    raise BadBlock(f"pack member {h.hex()[:16]} does not match its hash")
                members.append((h, off, n))
            return ("pack", pid, stored, members)
        if kind == "tree" and len(b) == 3:
            h, stored = _b(b[1], 32), _b(b[2])
            enc = blocks.decode_chunk(stored, MAX_TREE)
            if blake3.blake3(enc, derive_key_context=TREE_CONTEXT).digest() != h:
                raise BadBlock(f"tree {h.hex()[:16]} does not match its hash")
            return ("tree", h, stored)
        if kind == "manifest" and len(b) == 3:
            h, enc = _b(b[1], 32), _b(b[2])
            if len(enc) < 1 + _MHDR.size or enc[:1] != b"M":
                raise BadBlock("malformed manifest")
            size, count = _MHDR.unpack_from(enc, 1)
            if len(enc) != 1 + _MHDR.size + count * _MREC.size:
                raise BadBlock("manifest length does not match its chunk count")
            total = sum(_MREC.unpack_from(enc, 1 + _MHDR.size + i * _MREC.size)[1] for i in range(count))
            if total != size:
                raise BadBlock("manifest chunks do not add up to its size")
            return ("manifest", h, enc)
    except blocks.CorruptBlock as e:
        raise BadBlock(str(e)) from e
    raise BadBlock(f"malformed {kind} block")


def check_shape(b) -> tuple:
    """A block off the wire as an engine tuple, checking only its shape (kinds, key
    and payload types); a manifest is checked as :func:`check_block` does. The hashes
    are checked by ``ChunkStore.accept``. Raises :class:`BadBlock`."""
    if not isinstance(b, (list, tuple)) or not b:
        raise BadBlock("not a block")
    kind = b[0]
    if kind == "manifest":
        return check_block(b)
    if kind in ("chunk", "tree") and len(b) == 3:
        return (kind, _b(b[1], 32), _b(b[2]))
    if kind == "pack" and len(b) == 4 and isinstance(b[3], list):
        for m in b[3]:
            if not (isinstance(m, (list, tuple)) and len(m) == 3 and isinstance(m[1], int) and isinstance(m[2], int)):
                raise BadBlock("malformed pack member")
            _b(m[0], 32)
        return ("pack", _b(b[1], 32), _b(b[2]), [(bytes(m[0]), m[1], m[2]) for m in b[3]])
    raise BadBlock(f"malformed {kind!r} block")


def covers(block: tuple) -> list[tuple[str, bytes]]:
    """The wants a verified block satisfies: a pack covers each member chunk."""
    if block[0] == "pack":
        return [("chunk", m[0]) for m in block[3]]
    return [(block[0], block[1])]


def size_of(block: tuple) -> int:
    """Payload bytes of a block (what a cache holds)."""
    return len(block[2])
