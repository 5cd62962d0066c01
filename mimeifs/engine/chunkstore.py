"""The chunk store: every read of chunks, packs, manifests and trees goes through here.

It tells the two ways a read can fail apart (issue 10, DESIGN.md "Network"):

- :class:`~.errors.ChunkMissing`: this store does not hold the object. With a fetcher
  (:mod:`.fetch`) and on a thread that may wait, the object is fetched, verified, stored,
  and the read is tried again; otherwise the miss goes up to the door (EIO).
- :class:`~.errors.Corrupt`: the store holds bytes that do not decode or do not match
  their hash. Never fetched over, never shown: EIO, and ``mimeifs check`` names it.

Reads come in two forms. ``*_in(txn, ...)`` run inside the caller's transaction and raise
``ChunkMissing`` on a miss (a write transaction must not wait for the network).
:meth:`get`, :meth:`manifest`, :meth:`tree`, :meth:`read` open their own read
transaction and fetch on a miss (:meth:`call` is that loop for any function).

Peers: :meth:`export` is what a node sends for a list of wants, :meth:`accept` verifies
and stores what arrives. Verification (DESIGN.md: "every block is checked against its
hash on arrival"): a chunk by blake3 of its bytes; a pack by blake3 of its uncompressed
bytes and each member by the blake3 of its slice; a tree by the derive-key blake3 of its
encoding; a manifest by the blake3 of the whole file it describes, so a manifest is only
stored once all its chunks are here (a manifest alone could name other, valid chunks).
:meth:`ensure` hashes a fetched manifest's chunks in order as each round of them
arrives (from the chunk cache, where :meth:`accept` leaves packs it verified), so a big
file is not read back whole at the end (for 512 MiB that read-back took 0.7 s before the first byte).

Thread-safety: reads from any thread; :meth:`accept` opens the one write transaction
for as long as the puts take (verification, decompression and hashing run before it).
"""

from __future__ import annotations

import bisect
import threading

import blake3

from . import blocks, objects, packs
from .errors import ChunkMissing, Corrupt
from .fetch import MAX_ROUNDS, Block, Fetcher, FetchError, Want, fetching_allowed

#: How far ahead of a reader a missing file's chunks are fetched in one batch (bytes).
READ_AHEAD = 16 << 20
#: Most wants handed to the fetcher in one call.
BATCH = 512
#: A pack is sent whole when the wanted chunks are at least this share of it.
PACK_SHARE = 0.5
#: Largest uncompressed pack or tree accepted from a peer (bytes).
MAX_OBJECT = blocks.PACK_TARGET + 2 * blocks.MAX_CHUNK + (16 << 20)


class _Hashing:
    """The content hash of a manifest being fetched, computed chunk by chunk in order:
    ``i`` chunks hashed so far."""

    __slots__ = ("m", "hasher", "i")

    def __init__(self, m: objects.Manifest):
        self.m, self.hasher, self.i = m, blake3.blake3(), 0

    def complete(self) -> bool:
        return self.i == len(self.m.chunks)

    def verified(self) -> bool:
        """True if every chunk was hashed and the result is the manifest's hash; raises
        Corrupt if every chunk was hashed and it is not."""
        if not self.complete():
            return False
        if self.hasher.digest() != self.m.hash:
            raise Corrupt(f"received manifest {self.m.hash.hex()} does not describe its content")
        return True


class ChunkStore:
    """Verified access to the content-addressed objects of one store.

    ``store`` is an open :class:`~.db.Store`; ``fetcher`` a :class:`~.fetch.Fetcher` or
    None; ``cache_bytes`` bounds the decompressed chunk/pack cache. ``cache``
    (:class:`blocks.ChunkCache`) and ``objs`` (:class:`objects.ObjectCache`) are shared
    with the worktree. ``stats`` counts fetched blocks and bytes and refused blocks.
    """

    def __init__(self, store, fetcher: Fetcher | None = None, cache_bytes: int = 128 << 20):
        self.store = store
        self.fetcher = fetcher
        self.cache = blocks.ChunkCache(cache_bytes)
        self.objs = objects.ObjectCache()
        self.d_blocks = store.db("blocks")
        self.d_manifests = store.db("manifests")
        self.d_trees = store.db("trees")
        self.stats = {"fetched": 0, "fetched_bytes": 0, "refused": 0}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ in a transaction
    def chunk_in(self, txn, h: bytes, length: int) -> bytes:
        """Chunk ``h`` of ``length`` bytes (verified). Raises ChunkMissing, Corrupt."""
        return blocks.load_chunk(txn, self.d_blocks, h, length, self.cache)

    def manifest_in(self, txn, h: bytes) -> objects.Manifest:
        """The manifest of content ``h``. Raises ChunkMissing, Corrupt."""
        return self.objs.manifest(txn, self.d_manifests, h)

    def tree_in(self, txn, h: bytes) -> objects.Tree:
        """The decoded tree ``h``. Raises ChunkMissing, Corrupt."""
        t = self.objs.cached_tree(h)
        return t if t is not None else self.objs.tree(txn, self.d_trees, h)

    def read_in(self, txn, h: bytes, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of content ``h``, clipped to its size."""
        return self.manifest_in(txn, h).read(txn, self.d_blocks, offset, size, self.cache)

    def has(self, kind: str, key: bytes) -> bool:
        """Whether this store holds object ``(kind, key)`` (its index record, for a chunk)."""
        db = {"chunk": self.d_blocks, "manifest": self.d_manifests, "tree": self.d_trees}[kind]
        with self.store.read() as txn:
            return txn.get(key, db=db) is not None

    # ------------------------------------------------------------------ fetching reads
    def call(self, fn, *args, ahead=None):
        """``fn(*args)``, fetching what it misses and running it again (at most
        :data:`~.fetch.MAX_ROUNDS` rounds). ``ahead(exc) -> wants`` may widen a miss
        (read-ahead). Raises ChunkMissing when there is no fetcher, the thread may not
        wait, or a round brings nothing new; Corrupt and FetchError-free errors as is."""
        for _ in range(MAX_ROUNDS):
            try:
                return fn(*args)
            except ChunkMissing as e:
                if self.fetcher is None or not fetching_allowed():
                    raise
                wants = e.wants if ahead is None else (ahead(e) or e.wants)
                if self.ensure(wants) == 0 and any(self._missing(wants)):
                    raise
        raise ChunkMissing([], "too many fetch rounds")

    def get(self, h: bytes, length: int) -> bytes:
        """Chunk ``h`` (fetched on a miss)."""
        return self.call(self._in_read, self.chunk_in, h, length)

    def manifest(self, h: bytes) -> objects.Manifest:
        """The manifest of content ``h`` (fetched and verified on a miss)."""
        return self.call(self._in_read, self.manifest_in, h)

    def tree(self, h: bytes) -> objects.Tree:
        """The decoded tree ``h`` (fetched on a miss); cached trees need no transaction."""
        t = self.objs.cached_tree(h)
        return t if t is not None else self.call(self._in_read, self.tree_in, h)

    def read(self, h: bytes, offset: int, size: int) -> bytes:
        """Bytes of content ``h`` (a version file or a Mac file); on a miss the file's
        chunks from ``offset`` up to :data:`READ_AHEAD` further are fetched together."""
        return self.call(self._in_read, self.read_in, h, offset, size,
                         ahead=lambda e: self._ahead(e, h, offset, size))

    def _in_read(self, fn, *args):
        with self.store.read() as txn:
            return fn(txn, *args)

    def _ahead(self, e: ChunkMissing, h: bytes, offset: int, size: int) -> list[Want]:
        if any(k != "chunk" for k, _ in e.wants):
            return e.wants
        m = self.manifest(h)
        end = min(m.size, offset + max(size, READ_AHEAD))
        i = max(0, bisect.bisect_right(m.offsets, offset) - 1)
        wants = []
        while i < len(m.chunks) and m.offsets[i] < end:
            wants.append(("chunk", m.chunks[i]))
            i += 1
        return wants

    def missing(self, wants: list[Want]) -> list[Want]:
        """The wants of ``wants`` this store does not hold, in order (one read snapshot)."""
        return list(self._missing(wants))

    def _missing(self, wants: list[Want]):
        dbs = {"chunk": self.d_blocks, "manifest": self.d_manifests, "tree": self.d_trees}
        with self.store.read() as txn:
            for k, key in wants:
                db = dbs.get(k)
                if db is not None and txn.get(key, db=db) is None:
                    yield (k, key)

    def ensure(self, wants: list[Want]) -> int:
        """Fetch and store every want this store lacks (kinds chunk, manifest, tree; a
        manifest with all its chunks). Returns how many objects were newly stored.
        Raises ChunkMissing for what no fetcher could bring, Corrupt if a block fails
        verification (nothing of it is stored)."""
        wants = list(dict.fromkeys(self._missing(wants)))
        if not wants:
            return 0
        if self.fetcher is None:
            raise ChunkMissing(wants)
        stored = 0
        plain = [w for w in wants if w[0] != "manifest"]
        for i in range(0, len(plain), BATCH):
            stored += self.accept(self._fetch(plain[i:i + BATCH]))
        for i in range(0, len(wants), BATCH):
            mans = [w for w in wants[i:i + BATCH] if w[0] == "manifest"]
            if not mans:
                continue
            got = [b for b in self._fetch(mans) if b[0] == "manifest"]
            decoded = []
            for b in got:
                m = objects.Manifest.decode(bytes(b[1]), bytes(b[2]))
                decoded.append((m, bytes(b[2])))
            hashing = {m.hash: _Hashing(m) for m, _ in decoded}
            chunk_wants = [("chunk", c) for m, _ in decoded for c in m.chunks]
            for j in range(0, len(chunk_wants), BATCH):
                part = list(self._missing(chunk_wants[j:j + BATCH]))
                if part:
                    stored += self.accept(self._fetch(part))
                self._hash_along(hashing.values())
            done = [(m, enc) for m, enc in decoded if self._hashed_matches(hashing[m.hash])]
            stored += self._store_manifests(done)
            stored += self.accept([("manifest", m.hash, enc) for m, enc in decoded
                                   if not hashing[m.hash].complete()])
        left = list(self._missing(wants))
        if left:
            raise ChunkMissing(left)
        return stored

    def _fetch(self, wants: list[Want]) -> list[Block]:
        try:
            got = self.fetcher.fetch_objects(wants)
        except FetchError as e:
            raise ChunkMissing(wants, f"cannot fetch {len(wants)} objects: {e}") from e
        with self._lock:
            self.stats["fetched"] += len(got)
            self.stats["fetched_bytes"] += sum(len(b[2]) for b in got)
        return got

    # ------------------------------------------------------------------ peers
    def export(self, wants: list[Want]) -> list[Block]:
        """The blocks to send a peer for ``wants`` (what this store lacks is left out).

        Chunk wants that fall into one pack are sent as that pack (compressed as
        stored) with the wanted chunks as members when they are at least
        :data:`PACK_SHARE` of its bytes, else as the chunks themselves."""
        out: list[Block] = []
        by_pack: dict[bytes, list[tuple[bytes, int, int]]] = {}
        with self.store.read() as txn:
            for kind, key in wants:
                if kind == "chunk":
                    raw = txn.get(key, db=self.d_blocks)
                    if raw is None:
                        continue
                    if raw[0] == blocks.PACKED:
                        pid, off, n = blocks.decode_ref(key, raw)
                        by_pack.setdefault(pid, []).append((bytes(key), off, n))
                    else:
                        out.append(("chunk", bytes(key), blocks.decode_chunk(raw)))
                elif kind in ("manifest", "tree"):
                    raw = txn.get(key, db=self.d_manifests if kind == "manifest" else self.d_trees)
                    if raw is not None:
                        out.append((kind, bytes(key), bytes(raw)))
                elif kind == "pack":  # a whole pack as stored; the asker knows its members
                    raw = txn.get(blocks.pack_key(key), db=self.d_blocks)
                    if raw is not None:
                        out.append(("pack", bytes(key), bytes(raw), []))
            for pid, mem in by_pack.items():
                stored = txn.get(blocks.pack_key(pid), db=self.d_blocks)
                if stored is None:
                    continue
                mem = list(dict.fromkeys(mem))
                if sum(n for _, _, n in mem) >= PACK_SHARE * blocks.pack_raw_size(stored):
                    out.append(("pack", pid, bytes(stored), mem))
                else:
                    for h, _off, n in mem:
                        out.append(("chunk", h, blocks.load_chunk(txn, self.d_blocks, h, n, self.cache)))
        return out

    def locate(self, hashes: list[bytes]) -> list[tuple]:
        """Where this store keeps each chunk of ``hashes``: ``(h, pack id, offset, length,
        pack size)`` for a packed chunk (sizes uncompressed, bytes), ``(h, None, 0, 0, 0)``
        for a chunk stored alone; chunks not held are left out. A peer pinning a version
        asks this first and then wants whole packs (``("pack", id)`` in :meth:`export`),
        so a pack crosses the wire once, as stored, instead of as loose chunks that are
        decompressed here and compressed again there (the anchor: Bitswap 1.2's
        want-have, answered with the location of the block)."""
        out, sizes = [], {}
        with self.store.read(buffers=True) as txn:
            for h in hashes:
                raw = txn.get(h, db=self.d_blocks)
                if raw is None:
                    continue
                if raw[0] != blocks.PACKED:
                    out.append((bytes(h), None, 0, 0, 0))
                    continue
                pid, off, n = blocks.decode_ref(h, raw)
                size = sizes.get(pid)
                if size is None:
                    stored = txn.get(blocks.pack_key(pid), db=self.d_blocks)
                    size = sizes[pid] = blocks.pack_raw_size(stored) if stored is not None else -1
                if size > 0:
                    out.append((bytes(h), bytes(pid), off, n, size))
        return out

    def accept(self, received: list[Block]) -> int:
        """Verify and store blocks from a peer; returns how many objects were new.

        Raises :class:`Corrupt` naming the first block that fails (nothing of that call
        is stored), and ChunkMissing for a manifest whose chunks are not all here."""
        loose, pks, trees, mans = [], [], [], []
        try:
            for b in received:
                kind = b[0]
                if kind == "chunk":
                    h, data = bytes(b[1]), bytes(b[2])
                    if blake3.blake3(data).digest() != h:
                        raise Corrupt(f"received chunk {h.hex()} does not match its hash")
                    loose.append((h, data))
                elif kind == "pack":
                    pks.append(self._verify_pack(bytes(b[1]), bytes(b[2]), b[3]))
                elif kind == "tree":
                    trees.append(self._verify_tree(bytes(b[1]), bytes(b[2])))
                elif kind == "manifest":
                    mans.append((objects.Manifest.decode(bytes(b[1]), bytes(b[2])), bytes(b[2])))
                else:
                    raise Corrupt(f"unknown block kind {kind!r}")
        except (Corrupt, ValueError, TypeError, IndexError) as e:
            with self._lock:
                self.stats["refused"] += 1
            raise e if isinstance(e, Corrupt) else Corrupt(f"malformed block: {e}") from e
        new = 0
        if loose or pks or trees:
            with self.store.write() as txn:
                for sealed, members, _data in pks:
                    before = sum(1 for h, _, _ in members if txn.get(h, db=self.d_blocks) is None)
                    packs.put_pack(txn, self.d_blocks, sealed, members)
                    new += before
                if loose:
                    w = packs.PackWriter()
                    for h, data in loose:
                        if txn.get(h, db=self.d_blocks) is None:
                            w.add(h, data)
                    w.flush()
                    for sealed, members in zip(w.packs, w.members):
                        packs.put_pack(txn, self.d_blocks, sealed, members)
                        new += len(members)
                for h, stored in trees:
                    if txn.put(h, stored, db=self.d_trees, overwrite=False):
                        new += 1
        for (pid, _stored, _n), members, data in pks:  # verified: a reader's next hit
            self.cache.put(blocks.pack_key(pid), blocks.verified_pack(data, (h for h, _, _ in members)))
        return new + self._store_manifests([(m, enc) for m, enc in mans if self._verify_manifest(m)])

    def _store_manifests(self, verified: list) -> int:
        """Store verified ``[(Manifest, encoding)]`` in one write transaction; returns
        how many were new."""
        new = 0
        if verified:
            with self.store.write() as txn:
                for m, enc in verified:
                    if txn.put(m.hash, enc, db=self.d_manifests, overwrite=False):
                        new += 1
        return new

    def _hash_along(self, hashing) -> None:
        """Feed each manifest's content hash the chunks now stored that follow what it
        has hashed so far (while they are still in the chunk cache, just verified), so
        a big file is verified as it arrives instead of read back whole at the end."""
        with self.store.read() as txn:
            for h in hashing:
                m = h.m
                while h.i < len(m.chunks):
                    try:
                        data = self.chunk_in(txn, m.chunks[h.i], m.lengths[h.i])
                    except ChunkMissing:
                        break
                    h.hasher.update(data)
                    h.i += 1

    @staticmethod
    def _verify_pack(pid: bytes, stored: bytes, members) -> tuple[packs.Sealed, list, bytes]:
        data = blocks.decode_chunk(stored, MAX_OBJECT)
        if blake3.blake3(data).digest() != pid:
            raise Corrupt(f"received pack {pid.hex()} does not match its id")
        mem = []
        for h, off, n in members:
            h = bytes(h)
            if not (0 <= off and 0 < n <= blocks.MAX_CHUNK and off + n <= len(data)):
                raise Corrupt(f"received pack {pid.hex()}: member {h.hex()} out of range")
            if blake3.blake3(data[off:off + n]).digest() != h:
                raise Corrupt(f"received pack {pid.hex()}: member {h.hex()} does not match")
            mem.append((h, int(off), int(n)))
        return (pid, stored, len(data)), mem, data

    @staticmethod
    def _verify_tree(h: bytes, stored: bytes) -> tuple[bytes, bytes]:
        enc = blocks.decode_chunk(stored, MAX_OBJECT)
        if blake3.blake3(enc, derive_key_context=objects.TREE_CONTEXT).digest() != h:
            raise Corrupt(f"received tree {h.hex()} does not match its hash")
        objects.decode_tree(h, enc)
        return h, stored

    def _verify_manifest(self, m: objects.Manifest) -> bool:
        """True if the chunks of ``m`` hash, together, to its content hash; raises
        ChunkMissing if some are not here, Corrupt if they do not match."""
        h = _Hashing(m)
        self._hash_along([h])
        if not h.complete():
            raise ChunkMissing(self.missing([("chunk", c) for c in m.chunks[h.i:]]))
        return self._hashed_matches(h)

    def _hashed_matches(self, h: _Hashing) -> bool:
        """:meth:`_Hashing.verified`, counting a manifest that does not match as refused."""
        try:
            return h.verified()
        except Corrupt:
            with self._lock:
                self.stats["refused"] += 1
            raise
