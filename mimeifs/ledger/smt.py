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
A node is stored once, under its *ref* = pulse (u32 BE) || hash (32): the pulse that wrote
it, then its hash. Unchanged nodes are shared between versions (a new version's nodes point
at old refs). Because all new keys of a pulse share the pulse prefix and are sorted before
writing, each pulse's nodes are appended at the end of the B-tree (dense pages).

- ``nodes``: ref (36) -> leaf value (36 bytes: key, balance, seq) or internal value
  (93 bytes: d(1) || left hash(32) || right hash(32) || left pulse(4) || right pulse(4) ||
  prefix(20), the first ``d`` bits of every key below, zero-padded).
- ``roots``: pulse (u32 BE) -> root ref (36), or b"" for the empty tree.
- ``stale``: pulse p (u32 BE) -> the refs (36 bytes each, concatenated) of the nodes that
  left the tree at pulse p (part of pulse p-1's tree but not of p's); one put per pulse. :meth:`SparseMerkleTree.prune` uses it, as the
  Jellyfish Merkle Tree (Diem) does, to drop versions older than a given pulse.

Proofs: see :mod:`mimeifs.ledger.proof`.
"""

from __future__ import annotations

import operator
import struct
from bisect import bisect_left
from typing import Iterable, Iterator

from blake3 import blake3

from .proof import EMPTY_HASH, LEAF, NODE, Proof

KEY_BITS = 160
KEY_BYTES = 20
_U32 = struct.Struct(">I")
_LEAF = struct.Struct(">20sQQ")
_MAX_U64 = (1 << 64) - 1
#: Internal nodes with a split depth below this are kept in memory between pulses (the
#: paper's "Level 1 or 2 miners: all data must be in memory", Part II §VIII): every pulse
#: of thousands of changes touches nearly all of them. 2**16 nodes at most, ~16 MB.
CACHE_DEPTH = 16
_first = operator.itemgetter(0)


class SMTError(Exception):
    """A tree operation is refused: unknown pulse, pulse not increasing, bad key or value."""


def leaf_value(key: bytes, balance: int, seq: int) -> bytes:
    """The 36-byte leaf value: key (20) || balance (u64 BE) || seq (u64 BE).

    Raises :class:`SMTError` if the key is not 20 bytes or a number is outside u64.
    """
    if len(key) != KEY_BYTES:
        raise SMTError("an account key is 20 bytes")
    if not (0 <= balance <= _MAX_U64 and 0 <= seq <= _MAX_U64):
        raise SMTError("balance and sequence are unsigned 64-bit integers")
    return _LEAF.pack(key, balance, seq)


def unpack_leaf(value: bytes) -> tuple[bytes, int, int]:
    """(key, balance, seq) of a 36-byte leaf value."""
    return _LEAF.unpack(value)


class SparseMerkleTree:
    """A versioned sparse Merkle tree kept in a :class:`mimeifs.engine.db.Store`.

    ``name`` is the prefix of its three sub-databases (must start with ``ledger.``).
    Versions are pulse numbers (unsigned 32-bit), strictly increasing. All reads take an
    LMDB transaction or open a read snapshot themselves; :meth:`apply_txn` writes one
    pulse inside the caller's write transaction (so the ledger commits its own records in
    the same transaction), :meth:`apply` opens one.
    """

    def __init__(self, store, name: str = "ledger.smt"):
        if not name.startswith("ledger."):
            raise ValueError("ledger sub-databases are named ledger.*")
        self.store = store
        self.name = name
        self.nodes = store.db(name + ".nodes")
        self.roots = store.db(name + ".roots")
        self.stale = store.db(name + ".stale")
        # ref -> value of internal nodes above depth CACHE_DEPTH (immutable, so never stale;
        # entries leave when their node leaves the newest tree)
        self._cache: dict[bytes, bytes] = {}

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

    def root_ref(self, txn, pulse: int | None = None) -> bytes | None:
        """The root ref (36 bytes) of ``pulse`` (default: newest); None for an empty tree.

        Raises :class:`SMTError` if that pulse has no root (never applied, or pruned).
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
        ref = self.root_ref(txn, pulse)
        return EMPTY_HASH if ref is None else ref[4:]

    # -- reads ----------------------------------------------------------------------
    def get(self, key: bytes, pulse: int | None = None, txn=None) -> tuple[int, int] | None:
        """(balance, seq) of ``key`` in ``pulse``'s tree (default newest), or None."""
        if txn is None:
            with self.store.read() as t:
                return self.get(key, pulse, t)
        ref = self.root_ref(txn, pulse)
        k = int.from_bytes(key, "big")
        nodes = self.nodes
        while ref is not None:
            v = txn.get(ref, db=nodes)
            if len(v) == 36:
                lk, bal, seq = _LEAF.unpack(v)
                return (bal, seq) if lk == key else None
            d = v[0]
            ref = (v[69:73] + v[33:65]) if (k >> (159 - d)) & 1 else (v[65:69] + v[1:33])
        return None

    def items(self, pulse: int | None = None, txn=None) -> Iterator[tuple[bytes, int, int]]:
        """Every leaf (key, balance, seq) of ``pulse``'s tree in key order (a generator
        holding a read snapshot while it runs)."""
        if txn is None:
            with self.store.read() as t:
                yield from self.items(pulse, t)
            return
        ref = self.root_ref(txn, pulse)
        stack = [ref] if ref is not None else []
        while stack:
            v = txn.get(stack.pop(), db=self.nodes)
            if len(v) == 36:
                yield _LEAF.unpack(v)
            else:
                stack.append(v[69:73] + v[33:65])
                stack.append(v[65:69] + v[1:33])

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
        ref = self.root_ref(txn, pulse)
        if ref is None:
            return Proof(key, None, (), ())
        k = int.from_bytes(key, "big")
        depths: list[int] = []
        sibs: list[bytes] = []
        while True:
            v = txn.get(ref, db=self.nodes)
            if len(v) == 36:
                return Proof(key, bytes(v), tuple(depths), tuple(sibs))
            d = v[0]
            depths.append(d)
            if (k >> (159 - d)) & 1:
                sibs.append(bytes(v[1:33]))
                ref = v[69:73] + v[33:65]
            else:
                sibs.append(bytes(v[33:65]))
                ref = v[65:69] + v[1:33]

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
        nodes and stale marks are written sorted, appended in this transaction.
        ``pulse`` must be greater than every pulse applied before (u32).
        Returns the new root hash. Raises :class:`SMTError` on a bad pulse, key or value.
        """
        if not 0 <= pulse <= 0xFFFFFFFF:
            raise SMTError("a pulse is an unsigned 32-bit number")
        last = self.latest_pulse(txn)
        if last is not None and pulse <= last:
            raise SMTError(f"pulse {pulse} is not after the newest pulse {last}")
        base = self.root_ref(txn, last) if last is not None else None
        if isinstance(changes, dict):
            changes = changes.items()
        byint: dict[int, bytes | None] = {}
        for key, val in changes:
            if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
                raise SMTError("an account key is 20 bytes")
            byint[int.from_bytes(key, "big")] = None if val is None else leaf_value(bytes(key), val[0], val[1])
        keys = sorted(byint)
        vals = [byint[k] for k in keys]
        pp = _U32.pack(pulse)
        new, puts, stale = _batch_update(txn, self.nodes, self._cache, pp, keys, vals, base)
        if puts:
            puts.sort(key=_first)
            txn.cursor(db=self.nodes).putmulti(puts, append=True)
        if stale:
            txn.put(pp, b"".join(stale), db=self.stale, append=True)
            pop = self._cache.pop
            for r in stale:
                pop(r, None)
        txn.put(pp, new or b"", db=self.roots, append=True)
        return EMPTY_HASH if new is None else new[4:]

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
                for i in range(0, len(blob), 36):
                    txn.delete(blob[i:i + 36], db=self.nodes)
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


def _batch_update(txn, db, cache: dict, pp: bytes, keys: list[int], vals: list, base):
    """One batch update (internal): returns (new root ref, new nodes, stale refs).

    ``keys`` are sorted ints, ``vals`` the matching 36-byte leaf values or None (delete).
    ``update(ref, lo, hi)`` returns the new ref of the subtree at ``ref`` after applying
    items ``lo:hi``; ``build(lo, hi)`` makes a new subtree of items ``lo:hi``. Each touched
    node is read once (from ``cache`` when it is one of the top levels) and hashed once.
    Written as closures over locals: this loop is the ledger's hot path.
    """
    puts: list[tuple[bytes, bytes]] = []
    stale: list[bytes] = []
    put = puts.append
    get = txn.get
    cget = cache.get
    h3 = blake3
    bl = bisect_left

    def node(d: int, left: bytes, right: bytes, prefix: int) -> bytes:
        head = bytes((d,)) + left[4:] + right[4:]
        ref = pp + h3(NODE + head).digest()
        v = head + left[:4] + right[:4] + prefix.to_bytes(20, "big")
        put((ref, v))
        if d < CACHE_DEPTH:
            cache[ref] = v
        return ref

    def build(lo: int, hi: int):
        while lo < hi and vals[lo] is None:
            lo += 1
        while lo < hi and vals[hi - 1] is None:
            hi -= 1
        if lo == hi:
            return None
        if hi - lo == 1:
            v = vals[lo]
            ref = pp + h3(LEAF + v).digest()
            put((ref, v))
            return ref
        a = keys[lo]
        j = 160 - (a ^ keys[hi - 1]).bit_length()
        s = 159 - j
        split = bl(keys, ((a >> s) | 1) << s, lo, hi)
        left = build(lo, split)
        right = build(split, hi)
        if left is None:
            return right
        if right is None:
            return left
        return node(j, left, right, (a >> (s + 1)) << (s + 1))

    def update(ref, lo: int, hi: int):
        if ref is None:
            return build(lo, hi)
        v = cget(ref)
        if v is None:
            v = get(ref, db=db)
        kmin = keys[lo]
        kmax = keys[hi - 1]
        if len(v) == 36:
            p = int.from_bytes(v[:20], "big")
            if kmin == p and kmax == p:  # the one item is this leaf's key
                nv = vals[lo]
                if nv == v:
                    return ref
                stale.append(ref)
                if nv is None:
                    return None
                nref = pp + h3(LEAF + nv).digest()
                put((nref, nv))
                return nref
            plo = phi = p
        else:
            d = v[0]
            p = int.from_bytes(v[73:93], "big")
            sh = 160 - d
            if not ((kmin ^ p) >> sh) and not ((kmax ^ p) >> sh):
                s = 159 - d
                split = bl(keys, ((p >> s) | 1) << s, lo, hi)
                lref = v[65:69] + v[1:33]
                rref = v[69:73] + v[33:65]
                nl = update(lref, lo, split) if split > lo else lref
                nr = update(rref, split, hi) if hi > split else rref
                if nl == lref and nr == rref:
                    return ref
                stale.append(ref)
                if nl is None:
                    return nr
                if nr is None:
                    return nl
                return node(d, nl, nr, p)
            plo = p
            phi = p | ((1 << sh) - 1)
        # Some items fall outside this subtree's prefix: split above it at depth j < d.
        j = 160 - ((kmin if kmin < plo else plo) ^ (kmax if kmax > phi else phi)).bit_length()
        s = 159 - j
        split = bl(keys, ((plo >> s) | 1) << s, lo, hi)
        if (plo >> s) & 1:
            left = build(lo, split)
            right = update(ref, split, hi) if hi > split else ref
        else:
            left = update(ref, lo, split) if split > lo else ref
            right = build(split, hi)
        if left is None:
            return right
        if right is None:
            return left
        return node(j, left, right, (plo >> (s + 1)) << (s + 1))

    new = update(base, 0, len(keys)) if keys else base
    return new, puts, stale
