"""Sparse Merkle tree over 160-bit account IDs, path-compressed, versioned by pulse, in LMDB.

Source: seed 002 Part II §V "Sparse Merkle Tree (SMT)" (a binary tree of height 160 over
the account IDs; "if a node has only one child, the branch can be shortened by moving its
child up one level"), §V "Time-space Snapshot" (each pulse's tree equals the previous one
except the changed data, so only changed nodes are saved) and §VI 6.6 "Account Inquiry"
(a user proves its account against the public synopsis).

Shape
-----
The tree is a path-compressed binary trie (a PATRICIA / crit-bit tree): a subtree with one
leaf *is* that leaf, and every internal node has two non-empty children and a *split depth*
``d`` (0..159): all leaves below share their first ``d`` bits and differ at bit ``d`` (bit 0
is the most significant bit of the 20-byte key). Keys with bit ``d`` = 0 go left. The shape
depends only on the set of keys, so the root does not depend on the order of updates.

Hashes (blake3, 32 bytes, one domain byte each)::

    leaf      H(0x00 || key(20) || balance(u64 BE) || seq(u64 BE))
    internal  H(0x01 || d(1) || left hash(32) || right hash(32))
    empty     H(0x02)                      -- the root of a tree with no leaf

Storage (named LMDB sub-databases ``<name>.nodes``, ``<name>.roots``, ``<name>.stale``)
----------------------------------------------------------------------------------------
A node is stored once, under its *ref* = pulse (u32 BE) || index (u32 BE): the pulse that
wrote it and its rank among that pulse's new nodes. Nodes are created children first, so
the indexes ascend in creation order and each pulse's nodes are appended at the end of
the B-tree (dense pages) with no sort. Unchanged nodes are shared between versions (a new
version's nodes point at old refs). A node's hash is kept in its parent (and the root's
in ``roots``), so a parent holds everything its own hash covers as one leading slice.

- ``nodes``: ref (8) -> leaf value (36 bytes: key, balance, seq) or internal value
  (102 bytes: 0x01 || d(1) || left hash(32) || right hash(32) || left ref(8) ||
  right ref(8) || prefix(20), the first ``d`` bits of every key below, zero-padded).
  The internal hash is blake3 of the value's first 66 bytes.
- ``roots``: pulse (u32 BE) -> root hash (32) || root ref (8), or b"" for the empty tree.
- ``stale``: pulse p (u32 BE) -> the refs (8 bytes each, concatenated) of the nodes that
  left the tree at pulse p (part of pulse p-1's tree but not of p's); one put per pulse.
  :meth:`SparseMerkleTree.prune` uses it, as the Jellyfish Merkle Tree (Diem) does, to
  drop versions older than a given pulse.

Proofs: see :mod:`mimeifs.ledger.proof`.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

from .proof import EMPTY_HASH, Proof
from .smt_batch import KEY_BITS, batch_update, pairs, plan
from .smt_helper import HELPER_IB, get_helper, recv, send

KEY_BYTES = KEY_BITS // 8
_U32 = struct.Struct(">I")
_LEAF = struct.Struct(">20sQQ")
#: Internal nodes with a split depth below this are kept in memory between pulses (the
#: paper's "Level 1 or 2 miners: all data must be in memory", Part II §VIII): every pulse
#: of thousands of changes touches nearly all of them. 2**16 nodes at most, ~17 MB.
CACHE_DEPTH = 16
#: A batch of at least this many keys is split with a helper process (2+ cores).
PARALLEL_MIN = 4096


class SMTError(Exception):
    """A tree operation is refused: unknown pulse, pulse not increasing, bad key or value."""


class SparseMerkleTree:
    """A versioned sparse Merkle tree kept in a :class:`mimeifs.engine.db.Store`.

    ``name`` is the prefix of its three sub-databases (must start with ``ledger.``).
    Versions are pulse numbers (unsigned 32-bit), strictly increasing. All reads take an
    LMDB transaction or open a read snapshot themselves; :meth:`apply_txn` writes one
    pulse inside the caller's write transaction (so the ledger commits its own records in
    the same transaction), :meth:`apply` opens one.
    """

    def __init__(self, store, name: str = "ledger.smt", cache_depth: int = CACHE_DEPTH, parallel: bool = False):
        if not name.startswith("ledger."):
            raise ValueError("ledger sub-databases are named ledger.*")
        self.store = store
        self.name = name
        self.nodes = store.db(name + ".nodes")
        self.roots = store.db(name + ".roots")
        self.stale = store.db(name + ".stale")
        # ref -> value of the newest tree's internal nodes above depth CACHE_DEPTH. Refs
        # are (pulse, index), so a pulse whose transaction was aborted could reuse them:
        # the cache is only trusted when it was filled for the newest committed pulse.
        self._cache: dict[bytes, bytes] = {}
        self._cache_pulse: int | None = None
        self.cache_depth = cache_depth
        #: split batches of ``parallel_min`` keys or more with a helper process (opt-in:
        #: it pays only when a second core is idle; on this machine under others' load
        #: it measured 27.7k vs 31.7k updates/s single-process at 1M accounts)
        self.parallel = parallel
        self.parallel_min = PARALLEL_MIN

    # -- versions ------------------------------------------------------------------
    def latest_pulse(self, txn=None) -> int | None:
        """The newest pulse with a root, or None if no pulse was ever applied."""
        if txn is None:
            with self.store.read() as t:
                return self.latest_pulse(t)
        cur = txn.cursor(db=self.roots)
        if not cur.last():
            return None
        return _U32.unpack(cur.key())[0]

    def pulses(self, txn=None) -> list[int]:
        """Every pulse whose root is kept (after pruning, the kept window), ascending."""
        if txn is None:
            with self.store.read() as t:
                return self.pulses(t)
        return [_U32.unpack(k)[0] for k in txn.cursor(db=self.roots).iternext(values=False)]

    def root_link(self, txn, pulse: int | None = None) -> bytes | None:
        """Root hash (32) || root ref (8) of ``pulse`` (default: newest); None for an empty
        tree. Raises :class:`SMTError` if that pulse has no root (never applied, or pruned).
        """
        if pulse is None:
            pulse = self.latest_pulse(txn)
            if pulse is None:
                return None
        v = txn.get(_U32.pack(pulse), db=self.roots)
        if v is None:
            raise SMTError(f"no tree for pulse {pulse} (not applied yet, or pruned)")
        return v or None

    def root(self, pulse: int | None = None, txn=None) -> bytes:
        """The root hash (32 bytes) of ``pulse`` (default newest). Empty tree: EMPTY_HASH."""
        if txn is None:
            with self.store.read() as t:
                return self.root(pulse, t)
        link = self.root_link(txn, pulse)
        return EMPTY_HASH if link is None else link[:32]

    # -- reads ----------------------------------------------------------------------
    def get(self, key: bytes, pulse: int | None = None, txn=None) -> tuple[int, int] | None:
        """(balance, seq) of ``key`` in ``pulse``'s tree (default newest), or None."""
        if txn is None:
            with self.store.read() as t:
                return self.get(key, pulse, t)
        link = self.root_link(txn, pulse)
        if link is None:
            return None
        ref = link[32:]
        k = int.from_bytes(key, "big")
        nodes = self.nodes
        while True:
            v = txn.get(ref, db=nodes)
            if len(v) == 36:
                lk, bal, seq = _LEAF.unpack(v)
                return (bal, seq) if lk == key else None
            ref = v[74:82] if (k >> (159 - v[1])) & 1 else v[66:74]

    def items(self, pulse: int | None = None, txn=None) -> Iterator[tuple[bytes, int, int]]:
        """Every leaf (key, balance, seq) of ``pulse``'s tree in key order (a generator
        holding a read snapshot while it runs)."""
        if txn is None:
            with self.store.read() as t:
                yield from self.items(pulse, t)
            return
        link = self.root_link(txn, pulse)
        stack = [link[32:]] if link is not None else []
        while stack:
            v = txn.get(stack.pop(), db=self.nodes)
            if len(v) == 36:
                yield _LEAF.unpack(v)
            else:
                stack.append(v[74:82])
                stack.append(v[66:74])

    def prove(self, key: bytes, pulse: int | None = None, txn=None) -> Proof:
        """An inclusion proof of ``key`` if it is in ``pulse``'s tree, else a non-inclusion
        proof (the leaf reached by following ``key``'s bits, or the empty tree).

        The proof lists the split depths on the path (as a 160-bit bitmap) and the sibling
        hash at each, top down; :func:`mimeifs.ledger.proof.verify` checks it without a store.
        """
        if len(key) != KEY_BYTES:
            raise SMTError("an account key is 20 bytes")
        if txn is None:
            with self.store.read() as t:
                return self.prove(key, pulse, t)
        link = self.root_link(txn, pulse)
        if link is None:
            return Proof(key, None, (), ())
        ref = link[32:]
        k = int.from_bytes(key, "big")
        depths: list[int] = []
        sibs: list[bytes] = []
        while True:
            v = txn.get(ref, db=self.nodes)
            if len(v) == 36:
                return Proof(key, bytes(v), tuple(depths), tuple(sibs))
            d = v[1]
            depths.append(d)
            if (k >> (159 - d)) & 1:
                sibs.append(v[2:34])
                ref = v[74:82]
            else:
                sibs.append(v[34:66])
                ref = v[66:74]

    # -- writes ---------------------------------------------------------------------
    def apply(self, pulse: int, changes) -> bytes:
        """Write ``pulse``'s tree = newest tree + ``changes`` in one write transaction.

        See :meth:`apply_txn`. Returns the new root hash (32 bytes).
        """
        with self.store.write() as txn:
            return self.apply_txn(txn, pulse, changes)

    def apply_txn(self, txn, pulse: int, changes) -> bytes:
        """Batch update: the tree of ``pulse`` is the newest tree with ``changes`` applied.

        ``changes`` maps a 20-byte key to ``(balance, seq)`` (insert or update) or ``None``
        (delete; deleting an absent key is a no-op); a dict or an iterable of pairs (a later
        pair for the same key wins). Every touched node is read once and hashed once; new
        nodes are appended in creation order and stale marks written in one put.
        ``pulse`` must be greater than every pulse applied before (u32).
        Returns the new root hash. Raises :class:`SMTError` on a bad pulse, key or value.
        """
        if not 0 <= pulse <= 0xFFFFFFFF:
            raise SMTError("a pulse is an unsigned 32-bit number")
        last = self.latest_pulse(txn)
        if last is not None and pulse <= last:
            raise SMTError(f"pulse {pulse} is not after the newest pulse {last}")
        base = self.root_link(txn, last) if last is not None else None
        if isinstance(changes, dict):
            changes = changes.items()
        byint: dict[int, tuple] = {}
        pack = _LEAF.pack
        fb = int.from_bytes
        for key, val in changes:
            if type(key) is not bytes:
                if not isinstance(key, (bytes, bytearray)):
                    raise SMTError("an account key is 20 bytes")
                key = bytes(key)
            if len(key) != KEY_BYTES:
                raise SMTError("an account key is 20 bytes")
            if val is None:
                byint[fb(key, "big")] = (key, None)
            else:
                try:
                    byint[fb(key, "big")] = (key, pack(key, val[0], val[1]))
                except (struct.error, TypeError, IndexError):
                    raise SMTError("balance and sequence are unsigned 64-bit integers") from None
        keys = sorted(byint)
        kv = [byint[k] for k in keys]
        if self._cache_pulse != last:
            self._cache.clear()
        self._cache_pulse = None  # trusted again only once this pulse is written
        link = None if base is None else (base[:32], base[32:])
        got = None
        if self.parallel and base is not None and len(keys) >= self.parallel_min and (os.cpu_count() or 1) > 1:
            got = self._apply_split(txn, pulse, last, base, link, keys, kv)
        if got is None:
            new, vals, stale = batch_update(txn, self.nodes, self._cache, self.cache_depth, pulse, keys, kv, link)
            puts = pairs(pulse, 0, vals) if vals else None
        else:
            new, puts, stale = got
        pp = _U32.pack(pulse)
        if puts:
            txn.cursor(db=self.nodes).putmulti(puts, append=True)
        if stale:
            txn.put(pp, b"".join(stale), db=self.stale, append=True)
        txn.put(pp, b"" if new is None else new[0] + new[1], db=self.roots, append=True)
        self._cache_pulse = pulse
        return EMPTY_HASH if new is None else new[0]

    def _apply_split(self, txn, pulse: int, last: int, base: bytes, link, keys: list[int], kv: list):
        """:func:`~mimeifs.ledger.smt_batch.batch_update` with the upper half of the subtrees done by the helper
        process at the same time; None if there is no helper or it refused."""
        T = max(1, len(keys) // 32)
        cache = self._cache
        tasks = plan(txn, self.nodes, cache, keys, link, T)
        if len(tasks) < 2:
            return None
        half = len(keys) // 2
        m = next((i for i, (_, lo, _) in enumerate(tasks) if lo >= half), len(tasks) - 1)
        m = max(1, m)
        mine, theirs = tasks[:m], tasks[m:]
        a = theirs[0][1]
        b = theirs[-1][2]
        helper = get_helper()
        if helper is None:
            return None
        with helper.lock:
            try:
                send(helper.proc.stdin, (self.store.env.path(), self.store.env.info()["map_size"], self.name,
                                          self.cache_depth, pulse, last, base,
                                          [(ln, lo - a, hi - a) for ln, lo, hi in theirs], keys[a:b], kv[a:b]))
            except (OSError, ValueError):
                return None
            res0, puts0, stale0 = batch_update(txn, self.nodes, cache, self.cache_depth, pulse, keys, kv, None,
                                                0, mine)
            got = recv(helper.proc.stdout)
        if got is None:
            # the helper refused (base not committed) or died: undo nothing (nothing was
            # written) and redo all of it here, with a cache that may hold this pulse's refs
            cache.clear()
            return None
        res1, puts1, stale1 = got
        preset = {}
        for (ln, lo, _), r in zip(mine, res0):
            preset[lo] = r
        for (ln, lo, _), r in zip(theirs, res1):
            preset[lo] = ln if r == 0 else r
        pop = cache.pop
        for r in stale1:
            pop(r, None)
        new, puts2, stale2 = batch_update(txn, self.nodes, cache, self.cache_depth, pulse, keys, kv, link,
                                           1 << 31, None, preset, T)
        stale0 += stale1
        stale0 += stale2
        return new, [*pairs(pulse, 0, puts0), *pairs(pulse, HELPER_IB, puts1), *pairs(pulse, 1 << 31, puts2)], stale0

    def prune(self, keep_from: int) -> int:
        """Drop every version older than pulse ``keep_from`` (its tree stays readable).

        Deletes the nodes that left the tree at or before ``keep_from`` and the roots of
        older pulses. Returns the number of nodes deleted.
        Raises :class:`SMTError` if ``keep_from`` has no root.
        """
        with self.store.write() as txn:
            if txn.get(_U32.pack(keep_from), db=self.roots) is None:
                raise SMTError(f"no tree for pulse {keep_from}")
            n = 0
            limit = _U32.pack(keep_from + 1)
            cur = txn.cursor(db=self.stale)
            doomed = []
            for k, blob in cur:
                if k >= limit:
                    break
                doomed.append(k)
                for i in range(0, len(blob), 8):
                    txn.delete(blob[i:i + 8], db=self.nodes)
                    n += 1
            for k in doomed:
                txn.delete(k, db=self.stale)
            lim = _U32.pack(keep_from)
            old = [k for k in txn.cursor(db=self.roots).iternext(values=False) if k < lim]
            for k in old:
                txn.delete(k, db=self.roots)
            return n

    def node_count(self, txn=None) -> int:
        """Number of stored nodes (all kept versions)."""
        if txn is None:
            with self.store.read() as t:
                return self.node_count(t)
        return txn.stat(self.nodes)["entries"]
