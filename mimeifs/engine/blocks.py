"""Content-defined chunks: cut, hash, compress, store once (dedup), read back.

- Chunk boundaries: FastCDC 2020 (Xia et al., "The Design of Fast Content-Defined
  Chunking for Data Deduplication Based Storage Systems", IEEE TPDS 2020) through the
  maintained ``pyfastcdc`` library: min 16 KiB, average 64 KiB (+min), max 256 KiB.
- A chunk's address is blake3 of its uncompressed bytes (32 bytes).
- Stored value in sub-database ``blocks``: one codec byte then the payload;
  codec 0 = raw, 1 = zstd (level 3). A chunk that does not shrink by 1/32 is kept raw.
- Identical chunks anywhere in the store are stored once; unreferenced ones are freed by
  mark-and-sweep garbage collection (``maintenance.gc``), as git and restic do, so a
  crash can never leave a dangling reference count.

blake3, zstandard, pyfastcdc and lmdb release the GIL, so hashing and compression of a
batch run in a small thread pool while the writer thread does the LMDB puts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Iterable

import blake3
import zstandard
from pyfastcdc import FastCDC

MIN_CHUNK = 16 * 1024
AVG_CHUNK = 64 * 1024
MAX_CHUNK = 256 * 1024

RAW = 0
ZSTD = 1

_tls = threading.local()


class CorruptBlock(Exception):
    """A stored chunk is missing, cannot be decompressed, or fails its hash."""


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_tls, "cctx", None)
    if c is None:
        c = _tls.cctx = zstandard.ZstdCompressor(level=3)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


def chunker() -> FastCDC:
    """A FastCDC chunker with this store's parameters (not thread-safe: one per use)."""
    return FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)


def encode_chunk(data: bytes | memoryview) -> tuple[bytes, bytes]:
    """Hash and compress one chunk: returns (blake3 digest 32 bytes, stored value)."""
    h = blake3.blake3(data).digest()
    z = _cctx().compress(data)
    if len(z) < len(data) - (len(data) >> 5):
        return h, bytes([ZSTD]) + z
    return h, bytes([RAW]) + bytes(data)


def decode_chunk(value: bytes | memoryview, expect_len: int = -1) -> bytes:
    """The chunk bytes of a stored value. Raises :class:`CorruptBlock` on a bad codec."""
    codec = value[0]
    if codec == RAW:
        return bytes(value[1:])
    if codec == ZSTD:
        try:
            if expect_len >= 0:
                return _dctx().decompress(value[1:], max_output_size=expect_len)
            return _dctx().decompress(value[1:])
        except zstandard.ZstdError as e:
            raise CorruptBlock(f"zstd: {e}") from e
    raise CorruptBlock(f"unknown codec {codec}")


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide worker pool for hashing and compression (one thread per core)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = concurrent.futures.ThreadPoolExecutor(
                    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="mimeifs-chunk")
    return _POOL


def cut(data: bytes | bytearray | memoryview) -> list[memoryview]:
    """Cut a buffer into content-defined chunks (views into ``data``)."""
    if len(data) == 0:
        return []
    mv = memoryview(data)
    return [mv[c.offset:c.offset + c.length] for c in chunker().cut_buf(mv)]


def encode_many(chunks: Iterable[memoryview]) -> list[tuple[bytes, bytes, int]]:
    """Hash and compress chunks in the worker pool: list of (hash, value, length)."""
    chunks = list(chunks)
    if len(chunks) <= 1:
        return [(*encode_chunk(c), len(c)) for c in chunks]
    res = list(pool().map(encode_chunk, chunks))
    return [(h, v, len(c)) for (h, v), c in zip(res, chunks)]


def put_chunks(txn, db, encoded: Iterable[tuple[bytes, bytes, int]]) -> int:
    """Store encoded chunks not yet present. Returns the number of bytes newly stored."""
    added = 0
    for h, v, _n in encoded:
        if txn.put(h, v, db=db, overwrite=False):
            added += len(v)
    return added


class ChunkCache:
    """A small LRU of decompressed chunks (hash -> bytes), bounded in bytes.

    Sequential reads of 4–128 KiB hit the same 64 KiB chunk several times; decompressing
    it once keeps reads near zstd's output speed. Thread-safe.
    """

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._d: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, h: bytes) -> bytes | None:
        with self._lock:
            v = self._d.get(h)
            if v is not None:
                self._d.move_to_end(h)
            return v

    def put(self, h: bytes, data: bytes) -> None:
        with self._lock:
            if h in self._d:
                return
            self._d[h] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._d:
                _, old = self._d.popitem(last=False)
                self._bytes -= len(old)


def load_chunk(txn, db, h: bytes, length: int, cache: ChunkCache | None = None,
               verify: bool = True) -> bytes:
    """Read chunk ``h`` of ``length`` bytes, checking its blake3 when it comes from the
    store (as ZFS and restic check every read; cache hits were checked on the way in).
    Raises :class:`CorruptBlock` if missing, undecodable or not matching its hash."""
    if cache is not None:
        v = cache.get(h)
        if v is not None:
            return v
    raw = txn.get(h, db=db)
    if raw is None:
        raise CorruptBlock(f"missing chunk {h.hex()}")
    data = decode_chunk(raw, length)
    if len(data) != length or (verify and blake3.blake3(data).digest() != h):
        raise CorruptBlock(f"chunk {h.hex()} fails its length or hash")
    if cache is not None:
        cache.put(h, data)
    return data
