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

import atexit
import contextlib
import os
import pickle
import struct
import subprocess
import sys
import threading
from bisect import bisect_left
from itertools import count, repeat
from typing import Iterator

from blake3 import blake3

from .proof import EMPTY_HASH, LEAF, Proof

KEY_BITS = 160
KEY_BYTES = 20
_U32 = struct.Struct(">I")
_REF = struct.Struct(">II")  # pulse, index
#: b"\x01" || d for each split depth d: the head of an internal node's hashed bytes
_NH = [bytes((1, d)) for d in range(KEY_BITS)]
_LEAF = struct.Struct(">20sQQ")
#: Internal nodes with a split depth below this are kept in memory between pulses (the
#: paper's "Level 1 or 2 miners: all data must be in memory", Part II §VIII): every pulse
#: of thousands of changes touches nearly all of them. 2**16 nodes at most, ~17 MB.
CACHE_DEPTH = 16


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
            new, vals, stale = _batch_update(txn, self.nodes, self._cache, self.cache_depth, pulse, keys, kv, link)
            puts = _pairs(pulse, 0, vals) if vals else None
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
        """:func:`_batch_update` with the upper half of the subtrees done by the helper
        process at the same time; None if there is no helper or it refused."""
        T = max(1, len(keys) // 32)
        cache = self._cache
        tasks = _plan(txn, self.nodes, cache, keys, link, T)
        if len(tasks) < 2:
            return None
        half = len(keys) // 2
        m = next((i for i, (_, lo, _) in enumerate(tasks) if lo >= half), len(tasks) - 1)
        m = max(1, m)
        mine, theirs = tasks[:m], tasks[m:]
        a = theirs[0][1]
        b = theirs[-1][2]
        helper = _get_helper()
        if helper is None:
            return None
        with helper.lock:
            try:
                _send(helper.proc.stdin, (self.store.env.path(), self.store.env.info()["map_size"], self.name,
                                          self.cache_depth, pulse, last, base,
                                          [(ln, lo - a, hi - a) for ln, lo, hi in theirs], keys[a:b], kv[a:b]))
            except (OSError, ValueError):
                return None
            res0, puts0, stale0 = _batch_update(txn, self.nodes, cache, self.cache_depth, pulse, keys, kv, None,
                                                0, mine)
            got = _recv(helper.proc.stdout)
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
        new, puts2, stale2 = _batch_update(txn, self.nodes, cache, self.cache_depth, pulse, keys, kv, link,
                                           1 << 31, None, preset, T)
        stale0 += stale1
        stale0 += stale2
        return new, [*_pairs(pulse, 0, puts0), *_pairs(pulse, _HELPER_IB, puts1), *_pairs(pulse, 1 << 31, puts2)], stale0

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


def _batch_update(txn, db, cache: dict, CD: int, pulse: int, keys: list[int], kv: list, base,
                  ib: int = 0, tasks=None, preset=None, T: int = 0):
    """One batch update (internal): returns (new root link, new nodes, stale refs).

    A *link* is a (hash, ref) tuple. ``keys`` are the sorted int keys, ``kv`` the matching
    (20-byte key, 36-byte leaf value or None for a delete). ``update(link, lo, hi)``
    returns the new link of the subtree at ``link`` after applying items ``lo:hi`` (the
    same object if nothing changed, None if it became empty); ranges of one item take
    ``single``, a loop down the key's path and back up with no recursion, no bisect and
    no prefix decoding (the leaf reached tells where an inserted key splits off, as in a
    crit-bit tree). ``build(lo, hi)`` makes a new subtree. Each touched node is read once
    (by ``update`` from ``cache`` when it is one of the top levels; ``single`` reads LMDB
    only, which measured as fast as a dict for those random lookups, and the cache entries
    of the nodes it replaces are dropped at the end) and hashed once; new nodes get
    ascending refs in creation order (children first): the values go to ``vals`` and the
    refs come from one C-level iterator, so the pairs (see :func:`_pairs`) are born sorted.
    Written as closures over locals: this is the ledger's hot path.

    Split across processes (see :class:`_Helper`): ``ib`` is added to every new node's
    index; with ``tasks`` (a list of (link, lo, hi)) it returns the list of their new
    links instead of a root; with ``preset`` (lo -> new link of the task starting at lo,
    planned by :func:`_plan` with threshold ``T``) ranges of at most ``T`` items take
    their precomputed result, so only the top of the tree is done here.
    """
    puts: list[bytes] = []  # new node values; the i-th has index ib + i
    stale: list[bytes] = []
    put = puts.append
    sapp = stale.append
    get = txn.get
    cget = cache.get
    cpop = cache.pop
    h3 = blake3
    bl = bisect_left
    nref = map(_REF.pack, repeat(pulse), count(ib)).__next__
    NH = _NH
    LF = LEAF
    J = b"".join

    def node(d: int, left, right, prefix: bytes):
        head = NH[d] + left[0] + right[0]
        ref = nref()
        v = head + left[1] + right[1] + prefix
        put(v)
        if d < CD:
            cache[ref] = v
        return (h3(head).digest(), ref)

    def leaf(v: bytes):
        ref = nref()
        put(v)
        return (h3(LF + v).digest(), ref)

    def build(lo: int, hi: int):
        while lo < hi and kv[lo][1] is None:
            lo += 1
        while lo < hi and kv[hi - 1][1] is None:
            hi -= 1
        if lo == hi:
            return None
        if hi - lo == 1:
            return leaf(kv[lo][1])
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
        return node(j, left, right, ((a >> (s + 1)) << (s + 1)).to_bytes(20, "big"))

    def single(link, i: int):
        # down the key's path: every node read from LMDB (positional get: no keyword
        # parsing), the side taken remembered in ``bits`` for the way back up
        k = keys[i]
        kb, nv = kv[i]
        ref = link[1]
        path = []
        refs = []
        bits = []
        papp = path.append
        rapp = refs.append
        bapp = bits.append
        v = get(ref, None, db)
        while len(v) != 36:
            papp(v)
            rapp(ref)
            if (k >> (159 - v[1])) & 1:
                ref = v[74:82]
                bapp(1)
            else:
                ref = v[66:74]
                bapp(0)
            v = get(ref, None, db)
        if v[:20] == kb:
            if nv == v:
                return link
            sapp(ref)
            if nv is None:
                if not path:
                    return None
                pv = path.pop()
                r = refs.pop()
                sapp(r)
                if bits.pop():
                    h, r = pv[2:34], pv[66:74]
                else:
                    h, r = pv[34:66], pv[74:82]
            else:
                r = nref()
                put(nv)
                h = h3(LF + nv).digest()
        else:
            if nv is None:
                return link  # deleting an absent key
            j = 160 - (k ^ int.from_bytes(v[:20], "big")).bit_length()
            n = 0
            while n < len(path) and path[n][1] < j:
                n += 1
            if n == 0:
                sub = link
            else:
                pv = path[n - 1]
                sub = (pv[34:66], pv[74:82]) if bits[n - 1] else (pv[2:34], pv[66:74])
            del path[n:]
            del refs[n:]
            del bits[n:]
            new = leaf(nv)
            s = 159 - j
            if (k >> s) & 1:
                h, r = node(j, sub, new, ((k >> (s + 1)) << (s + 1)).to_bytes(20, "big"))
            else:
                h, r = node(j, new, sub, ((k >> (s + 1)) << (s + 1)).to_bytes(20, "big"))
        # back up: each parent's new value in one join, its hash over the first 66 bytes
        stale.extend(refs)
        for pv, b in zip(reversed(path), reversed(bits)):
            if b:
                nv = J((pv[:34], h, pv[66:74], r, pv[82:]))
            else:
                nv = J((pv[:2], h, pv[34:66], r, pv[74:]))
            h = h3(nv[:66]).digest()
            r = nref()
            put(nv)
        return (h, r)

    def update(link, lo: int, hi: int):
        if link is None:
            return build(lo, hi)
        if hi - lo <= T:
            return preset[lo]
        if hi - lo == 1:
            return single(link, lo)
        ref = link[1]
        v = cget(ref)
        if v is None:
            v = get(ref, None, db)
            if len(v) != 36 and v[1] < CD:
                cache[ref] = v
        kmin = keys[lo]
        kmax = keys[hi - 1]
        if len(v) == 36:
            plo = phi = int.from_bytes(v[:20], "big")
        else:
            d = v[1]
            p = int.from_bytes(v[82:102], "big")
            sh = 160 - d
            if not ((kmin ^ p) >> sh) and not ((kmax ^ p) >> sh):
                s = 159 - d
                split = bl(keys, ((p >> s) | 1) << s, lo, hi)
                ol = (v[2:34], v[66:74])
                orr = (v[34:66], v[74:82])
                nl = update(ol, lo, split) if split > lo else ol
                nr = update(orr, split, hi) if hi > split else orr
                if nl is ol and nr is orr:
                    return link
                sapp(ref)
                if d < CD:
                    cpop(ref, None)
                if nl is None:
                    return nr
                if nr is None:
                    return nl
                return node(d, nl, nr, v[82:102])
            plo = p
            phi = p | ((1 << sh) - 1)
        # Some items fall outside this subtree's prefix: split above it at depth j < d.
        j = 160 - ((kmin if kmin < plo else plo) ^ (kmax if kmax > phi else phi)).bit_length()
        s = 159 - j
        split = bl(keys, ((plo >> s) | 1) << s, lo, hi)
        if (plo >> s) & 1:
            left = build(lo, split)
            right = update(link, split, hi) if hi > split else link
        else:
            left = update(link, lo, split) if split > lo else link
            right = build(split, hi)
        if left is None:
            return right
        if right is None:
            return left
        return node(j, left, right, ((plo >> (s + 1)) << (s + 1)).to_bytes(20, "big"))

    if tasks is not None:
        res = [update(link, lo, hi) for link, lo, hi in tasks]
    else:
        res = update(base, 0, len(keys)) if keys else base
    if cache:  # single() neither reads nor fills the cache: drop the top nodes it replaced
        for r in stale:
            cpop(r, None)
    return res, puts, stale


def _pairs(pulse: int, ib: int, vals: list[bytes]):
    """(ref, value) pairs of new node values numbered from ``ib``, for putmulti."""
    return zip(map(_REF.pack, repeat(pulse), count(ib)), vals)


def _plan(txn, db, cache: dict, keys: list[int], base, T: int) -> list:
    """The (link, lo, hi) ranges of at most ``T`` items that :func:`_batch_update`'s
    ``update`` meets first, in key order: it follows the same descent, reading only the
    few nodes above them (new subtrees built from nothing are left to the top pass)."""
    tasks: list = []

    def plan(link, lo: int, hi: int) -> None:
        if link is None:
            return
        if hi - lo <= T:
            tasks.append((link, lo, hi))
            return
        ref = link[1]
        v = cache.get(ref)
        if v is None:
            v = txn.get(ref, db=db)
        kmin = keys[lo]
        kmax = keys[hi - 1]
        if len(v) == 36:
            plo = phi = int.from_bytes(v[:20], "big")
        else:
            d = v[1]
            p = int.from_bytes(v[82:102], "big")
            sh = 160 - d
            if not ((kmin ^ p) >> sh) and not ((kmax ^ p) >> sh):
                s = 159 - d
                split = bisect_left(keys, ((p >> s) | 1) << s, lo, hi)
                if split > lo:
                    plan((v[2:34], v[66:74]), lo, split)
                if hi > split:
                    plan((v[34:66], v[74:82]), split, hi)
                return
            plo = p
            phi = p | ((1 << sh) - 1)
        j = 160 - ((kmin if kmin < plo else plo) ^ (kmax if kmax > phi else phi)).bit_length()
        s = 159 - j
        split = bisect_left(keys, ((plo >> s) | 1) << s, lo, hi)
        if (plo >> s) & 1:
            if hi > split:
                plan(link, split, hi)
        elif split > lo:
            plan(link, lo, split)

    plan(base, 0, len(keys))
    return tasks


#: A batch of at least this many keys is split with a helper process (2+ cores).
PARALLEL_MIN = 4096
_HELPER_IB = 1 << 30  # the helper's node indexes; the top pass uses 1 << 31
_LEN = struct.Struct(">Q")


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_LEN.pack(len(data)))
    f.write(data)
    f.flush()


def _recv(f):
    head = f.read(8)
    if len(head) < 8:
        return None
    n = _LEN.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


class _Helper:
    """A child interpreter (``python -m mimeifs.ledger.smt``) that updates the upper half
    of a pulse's subtrees while this process does the lower half.

    Python runs one thread at a time and a tree node costs a few microseconds of it, so a
    second core is used by a second process. The helper opens the same LMDB environment
    read-only and reads the newest *committed* tree (it refuses, and this process does
    all the work, if the base pulse is not committed yet); it writes nothing and returns
    its new nodes, stale refs and subtree links over a pipe. It keeps its own top-level
    cache under the same rule as the tree's (trusted only for the pulse it last did).
    A fresh interpreter rather than fork(): the parent may run threads (FUSE, LMDB).
    """

    def __init__(self):
        env = dict(os.environ)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "mimeifs.ledger.smt"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


_helper: _Helper | None = None
_helper_lock = threading.Lock()


def _get_helper() -> _Helper | None:
    global _helper
    with _helper_lock:
        if _helper is None or not _helper.alive():
            try:
                _helper = _Helper()
            except OSError:
                return None
            atexit.register(_helper.close)
        return _helper


def _helper_main() -> None:  # pragma: no cover - runs in the child process
    import lmdb
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    envs: dict = {}
    caches: dict = {}  # (env path, tree name) -> [cache, pulse it is trusted for]
    while True:
        msg = _recv(inp)
        if msg is None:
            return
        path, map_size, name, cd, pulse, base_pulse, base, tasks, keys, kv = msg
        env = envs.get(path)
        if env is None:
            for old in list(envs):  # keep one environment open: stores come and go
                envs.pop(old).close()
                for c in [c for c in caches if c[0] == old]:
                    del caches[c]
            env = envs[path] = lmdb.open(path, readonly=True, lock=True, max_dbs=64, max_readers=512,
                                         map_size=map_size, readahead=False)
        slot = caches.setdefault((path, name), [{}, None])
        cache = slot[0]
        if slot[1] != base_pulse or len(cache) > 1 << 18:
            cache.clear()
        slot[1] = None
        with env.begin() as txn:
            try:
                roots = env.open_db((name + ".roots").encode(), txn=txn, create=False)
                ok = txn.get(_U32.pack(base_pulse), db=roots) == base
            except lmdb.Error:
                ok = False
            if not ok:
                _send(out, None)  # the base pulse is not committed: the parent does it all
                continue
            db = env.open_db((name + ".nodes").encode(), txn=txn, create=False)
            res, puts, stale = _batch_update(txn, db, cache, cd, pulse, keys, kv, None, _HELPER_IB, tasks)
        slot[1] = pulse
        same = [0 if r is t[0] else r for r, t in zip(res, tasks)]
        _send(out, (same, puts, stale))


if __name__ == "__main__":
    _helper_main()
