"""Writing packs: group new chunks into packs and index them (format: ``blocks``).

A pack is what restic calls one
(https://restic.readthedocs.io/en/latest/100_references.html#pack-format): chunks taken
in the order they are produced — a file's chunks, then the next file's — concatenated up
to :data:`blocks.PACK_TARGET` uncompressed bytes and stored once under ``b"P"`` + blake3
of the uncompressed bytes. Unlike restic, which compresses (and encrypts) each blob on its
own, the whole pack is one zstd frame: small files compress together. Each chunk's index
record in ``blocks`` points into it (:func:`blocks.encode_ref`).

Two ways to fill packs:

- :class:`PackWriter` where no store is at hand (the importer's worker processes): every
  chunk goes in (a repeated one once, one the caller says the store will have not at
  all: :data:`KNOWN`); the writer thread drops already-stored chunks from a pack that
  carries many of them (:func:`drop_known`), indexes only the chunks the store lacks
  (:func:`put_refs`) and stores a pack only if one of its chunks is new. A pack with a
  few already-known chunks is stored whole; gc repacks it once it is mostly dead.
- :class:`ChunkSink` in the writer thread (a big imported file through
  :func:`store_chunks`; all the dirty files of one backup through one sink): chunks
  already indexed are skipped before packing, packs are compressed in
  :func:`blocks.pool` threads, and each is stored with its index records as it completes.

Everything is put inside the caller's LMDB write transaction, so an index record is
never committed without its pack.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import blake3

from . import blocks

#: Pack index of a chunk a :class:`PackWriter` left out as already stored.
KNOWN = -1

#: A pack as sealed: (pack id 32 bytes, stored value, uncompressed length).
Sealed = tuple[bytes, bytes, int]


class PackWriter:
    """Groups chunks, in the order added, into packs of about ``target`` bytes.

    ``add(h, data)`` returns where the chunk lives: (pack index, offset). A chunk added
    twice is kept once; a chunk in ``known`` (chunks the store will hold by the time
    these packs are indexed) is not packed and gives (:data:`KNOWN`, 0). ``seal(parts)`` turns a closed pack's chunk list into its sealed
    form (default :func:`blocks.encode_pack`, or e.g. a future of it). After
    :meth:`flush`, ``packs[i]`` is pack i's sealed form and ``members[i]`` its chunks as
    [(chunk hash, offset, length)].
    """

    def __init__(self, seal: Callable[[list], object] = blocks.encode_pack,
                 target: int | None = None, known: set[bytes] | None = None):
        self.seal = seal
        self.known = known
        self.target = blocks.PACK_TARGET if target is None else target
        self.packs: list = []
        self.members: list[list[tuple[bytes, int, int]]] = []
        self._parts: list = []
        self._cur: list[tuple[bytes, int, int]] = []
        self._size = 0
        self._where: dict[bytes, tuple[int, int]] = {}

    def __contains__(self, h: bytes) -> bool:
        return h in self._where

    def add(self, h: bytes, data) -> tuple[int, int]:
        """Put chunk ``h`` (bytes ``data``) in the open pack: (pack index, offset)."""
        w = self._where.get(h)
        if w is None:
            if self.known is not None and h in self.known:
                return KNOWN, 0
            w = self._where[h] = (len(self.packs), self._size)
            self._parts.append(data)
            self._cur.append((h, self._size, len(data)))
            self._size += len(data)
            if self._size >= self.target:
                self.flush()
        return w

    def flush(self) -> None:
        """Close the open pack (if it holds anything)."""
        if self._parts:
            self.packs.append(self.seal(self._parts))
            self.members.append(self._cur)
            self._parts, self._cur, self._size = [], [], 0


def put_pack(txn, db, sealed: Sealed, members: Iterable[tuple[bytes, int, int]],
             overwrite_refs: bool = False) -> int:
    """Index ``members`` [(chunk hash, offset, length)] into pack ``sealed`` and store the
    pack if any index record was new (or ``overwrite_refs``: gc's repack moves records).
    Returns the stored bytes newly added (0 if the pack was known or not needed)."""
    pid, value, _n = sealed
    needed = False
    for h, off, n in members:
        if txn.put(h, blocks.encode_ref(pid, off, n), db=db, overwrite=overwrite_refs):
            needed = True
    if needed and txn.put(blocks.pack_key(pid), value, db=db, overwrite=False):
        return len(value)
    return 0


class MissingChunk(Exception):
    """A chunk a worker took as already stored is not in the store (its earlier batch
    failed, or the store changed): the caller stores the file again from its source."""


def put_refs(txn, db, refs: list[tuple[bytes, int, int, int]], packs: list[Sealed],
             stored: set[int]) -> int:
    """Index a file's chunks made by a :class:`PackWriter` elsewhere (a worker).

    ``refs`` = [(chunk hash, length, pack index or :data:`KNOWN`, offset)], ``packs`` =
    the writer's sealed packs, ``stored`` = indices of the packs already put for this
    batch (updated). A chunk the store already indexes is left as it is; a pack is
    stored the first time one of its chunks is new. Returns the stored bytes newly
    added. Raises :class:`MissingChunk` (before writing anything) if a ``KNOWN`` chunk
    is not in the store.
    """
    for h, _n, p, _off in refs:
        if p == KNOWN and txn.get(h, db=db) is None:
            raise MissingChunk(h.hex())
    added = 0
    for h, n, p, off in refs:
        if p == KNOWN:
            continue
        pid, value, _ = packs[p]
        if txn.put(h, blocks.encode_ref(pid, off, n), db=db, overwrite=False) and p not in stored:
            stored.add(p)
            if txn.put(blocks.pack_key(pid), value, db=db, overwrite=False):
                added += len(value)
    return added


def _digest(c) -> bytes:
    return blake3.blake3(c).digest()


class ChunkSink:
    """Stores the chunks of one or more files into shared packs inside ``txn``.

    ``add(pieces)`` takes one file's chunk buffers (bytes or memoryviews of buffers that
    outlive the sink), in file order, and returns (chunk hashes, lengths) at once;
    chunks already in ``blocks`` (``db``) or already in this sink are not packed again.
    Packs are compressed in :func:`blocks.pool` threads and stored with their index
    records as they complete; :meth:`close` stores the rest and returns the stored bytes
    newly added. Until ``close`` the index may lack chunks just added, so the caller
    closes before committing ``txn``. One sink across a whole backup puts many small
    dirty files into one pack instead of one pack each. Memory stays bounded (``batch``
    chunks hashing, ``inflight`` packs compressing) for files of several GiB.
    """

    def __init__(self, txn, db, batch: int = 64, inflight: int | None = None):
        self.txn, self.db, self.batch = txn, db, batch
        self.ex = blocks.pool()
        self.inflight = inflight or 2 * max(2, os.cpu_count() or 2)
        self.writer = PackWriter(seal=lambda parts: self.ex.submit(blocks.encode_pack, parts))
        self.added = 0
        self._done = 0  # packs of writer stored so far

    def _store_ready(self, keep: int) -> None:
        w = self.writer
        while len(w.packs) - self._done > keep or (
                self._done < len(w.packs) and w.packs[self._done].done()):
            d = self._done
            self.added += put_pack(self.txn, self.db, w.packs[d].result(), w.members[d])
            w.packs[d] = w.members[d] = None  # free the memory
            self._done += 1

    def add(self, pieces: Iterable) -> tuple[list[bytes], list[int]]:
        """Chunk buffers of one file -> (chunk hashes, lengths)."""
        hashes: list[bytes] = []
        lengths: list[int] = []
        txn, db, writer = self.txn, self.db, self.writer

        def flush(group: list) -> None:
            digests = (list(self.ex.map(_digest, group)) if len(group) > 1
                       else [_digest(c) for c in group])
            for h, c in zip(digests, group):
                hashes.append(h)
                lengths.append(len(c))
                if h not in writer and txn.get(h, db=db) is None:
                    writer.add(h, c)
            self._store_ready(self.inflight)

        group: list = []
        for c in pieces:
            group.append(c)
            if len(group) >= self.batch:
                flush(group)
                group = []
        if group:
            flush(group)
        return hashes, lengths

    def close(self) -> int:
        """Seal the open pack, store every pack; returns the stored bytes newly added."""
        self.writer.flush()
        self._store_ready(0)
        return self.added


def store_chunks(txn, db, pieces: Iterable, batch: int = 64,
                 inflight: int | None = None) -> tuple[list[bytes], list[int], int]:
    """Store one file's chunk buffers through a :class:`ChunkSink` of its own: (chunk
    hashes, lengths, stored bytes newly added)."""
    sink = ChunkSink(txn, db, batch, inflight)
    hashes, lengths = sink.add(pieces)
    return hashes, lengths, sink.close()


def drop_known(txn, db, results: list, sealed: list[Sealed], min_dead: float = 0.05,
               ) -> tuple[list, list[Sealed]]:
    """Rewrite a worker batch's packs without the chunks ``blocks`` (``db``) already has.

    Workers cannot see the store, so chunks stored by batches still in flight when
    theirs ran come back packed again; stored as they are, those bytes are dead from the
    start. A pack whose already-stored chunks make up at least ``min_dead`` of its bytes
    is decompressed and its other chunks packed again (in the :func:`blocks.pool`
    threads). ``results`` = per file (content hash, size, refs) or an error str, as
    ``importer.prepare_batch`` returns them. Returns (results, packs) with refs into the
    rewritten packs (already stored chunks become :data:`KNOWN`). Raises
    :class:`blocks.CorruptBlock` if a worker's pack does not decode.
    """
    members: dict[int, dict[bytes, tuple[int, int]]] = {}
    for r in results:
        if not isinstance(r, str):
            for h, n, p, off in r[2]:
                if p != KNOWN:
                    members.setdefault(p, {})[h] = (off, n)
    redo = {}
    for p, mem in members.items():
        dead = {h for h in mem if txn.get(h, db=db) is not None}
        dead_bytes = sum(mem[h][1] for h in dead)
        if dead and dead_bytes < sealed[p][2] and dead_bytes >= min_dead * sealed[p][2]:
            redo[p] = sorted(((off, n, h) for h, (off, n) in mem.items() if h not in dead))
    if not redo:
        return results, sealed

    def rewrite(p: int):
        data = blocks.decode_chunk(sealed[p][1], sealed[p][2])
        where, parts, pos = {}, [], 0
        for off, n, h in redo[p]:
            parts.append(memoryview(data)[off:off + n])
            where[h] = pos
            pos += n
        return blocks.encode_pack(parts), where

    new = dict(zip(redo, blocks.pool().map(rewrite, list(redo))))
    sealed = list(sealed)
    for p, (s, _where) in new.items():
        sealed[p] = s
    out = []
    for r in results:
        if isinstance(r, str):
            out.append(r)
            continue
        refs = []
        for h, n, p, off in r[2]:
            if p in new:
                w = new[p][1].get(h)
                refs.append((h, n, KNOWN, 0) if w is None else (h, n, p, w))
            else:
                refs.append((h, n, p, off))
        out.append((r[0], r[1], refs))
    return out, sealed
