"""One pulse's batch update of the sparse Merkle tree (:mod:`mimeifs.ledger.smt`), in steps.

:func:`batch_update` is the ledger's hot path (every transfer changes two leaves). It is
written as a few closures over locals, each made by a named step below, so that the inner
loops read their state from closure cells instead of attributes (the layout the benchmark
``tools/bench_ledger.py`` was tuned on):

- :func:`_new_nodes`: ``node`` and ``leaf`` append a new node value, number it, hash it;
- :func:`_builder`: ``build`` makes a subtree from nothing out of a sorted key range;
- :func:`_single_key`: ``single`` applies one key: down its path, then back up;
- :func:`_range_update`: ``update`` applies a key range to an existing subtree,
  splitting the range at each node's split depth, down to ``single`` or ``build``;
- :func:`_drop_replaced`: the cache entries of replaced top nodes go.

:func:`plan` (the first ranges of at most T keys, for the helper process) and
:func:`pairs` (refs for new node values) complete it. Node format: see
:mod:`mimeifs.ledger.smt`; the crit-bit split rule: seed 002 Part II §V.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from itertools import count, repeat

from blake3 import blake3

from .proof import LEAF

KEY_BITS = 160
REF = struct.Struct(">II")  # pulse, index
#: b"\x01" || d for each split depth d: the head of an internal node's hashed bytes
NH = [bytes((1, d)) for d in range(KEY_BITS)]


def batch_update(txn, db, cache: dict, CD: int, pulse: int, keys: list[int], kv: list, base,
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
    refs come from one C-level iterator, so the pairs (see :func:`pairs`) are born sorted.
    Written as closures over locals: this is the ledger's hot path.

    Split across processes (see :class:`mimeifs.ledger.smt_helper.Helper`): ``ib`` is added to every new node's
    index; with ``tasks`` (a list of (link, lo, hi)) it returns the list of their new
    links instead of a root; with ``preset`` (lo -> new link of the task starting at lo,
    planned by :func:`plan` with threshold ``T``) ranges of at most ``T`` items take
    their precomputed result, so only the top of the tree is done here.
    """
    puts: list[bytes] = []  # new node values; the i-th has index ib + i
    stale: list[bytes] = []
    nref = map(REF.pack, repeat(pulse), count(ib)).__next__
    node, leaf = _new_nodes(puts, cache, CD, nref)
    build = _builder(keys, kv, node, leaf)
    single = _single_key(txn.get, db, keys, kv, puts, stale, nref, node, leaf)
    update = _range_update(txn.get, db, cache, CD, keys, stale, preset, T, node, build, single)
    if tasks is not None:
        res = [update(link, lo, hi) for link, lo, hi in tasks]
    else:
        res = update(base, 0, len(keys)) if keys else base
    _drop_replaced(cache, stale)
    return res, puts, stale


def _new_nodes(puts: list, cache: dict, CD: int, nref):
    """``node(d, left, right, prefix)`` and ``leaf(value)``: append a new node's value to
    ``puts`` under the next ref, keep an internal node above depth ``CD`` in ``cache``,
    and return its link (hash, ref)."""
    put = puts.append
    h3 = blake3
    NH_ = NH
    LF = LEAF

    def node(d: int, left, right, prefix: bytes):
        head = NH_[d] + left[0] + right[0]
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

    return node, leaf


def _builder(keys: list[int], kv: list, node, leaf):
    """``build(lo, hi)``: a new subtree of the items ``lo:hi`` (deletes skipped), split at
    the first bit where its lowest and highest keys differ; None if nothing is left."""
    bl = bisect_left

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

    return build


def _single_key(get, db, keys: list[int], kv: list, puts: list, stale: list, nref, node, leaf):
    """``single(link, i)``: item ``i`` applied to the subtree at ``link`` with no
    recursion, no bisect and no prefix decoding: down the key's path reading LMDB, then
    back up rewriting each parent in one join (the leaf reached tells where an inserted
    key splits off, as in a crit-bit tree). Returns the new link (``link`` itself if
    nothing changed, None if the subtree became empty)."""
    put = puts.append
    sapp = stale.append
    h3 = blake3
    LF = LEAF
    J = b"".join

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

    return single


def _range_update(get, db, cache: dict, CD: int, keys: list[int], stale: list, preset, T: int,
                  node, build, single):
    """``update(link, lo, hi)``: the items ``lo:hi`` applied to the subtree at ``link``.

    Each node is read once (from ``cache`` for the top levels); the range is split at the
    node's split depth and each side updated, or, when some keys fall outside the node's
    prefix, a new node is made above it. One item goes to ``single``; with ``preset``,
    a range of at most ``T`` items takes its precomputed link (the helper's share)."""
    sapp = stale.append
    cget = cache.get
    cpop = cache.pop
    bl = bisect_left

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

    return update


def _drop_replaced(cache: dict, stale: list) -> None:
    """``single`` neither reads nor fills the cache: drop the top nodes it replaced."""
    if cache:
        cpop = cache.pop
        for r in stale:
            cpop(r, None)


def pairs(pulse: int, ib: int, vals: list[bytes]):
    """(ref, value) pairs of new node values numbered from ``ib``, for putmulti."""
    return zip(map(REF.pack, repeat(pulse), count(ib)), vals)


def plan(txn, db, cache: dict, keys: list[int], base, T: int) -> list:
    """The (link, lo, hi) ranges of at most ``T`` items that :func:`batch_update`'s
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
