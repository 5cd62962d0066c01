"""Property tests of the sparse Merkle tree against a plain dict (seed 002 Part II §V)."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimeifs.engine.db import Store
from mimeifs.ledger.proof import EMPTY_HASH, BadProof, Proof, check, compute_root, verify
from mimeifs.ledger.smt import SMTError, SparseMerkleTree

# Keys drawn from a small pool with shared prefixes, so that splits at many depths,
# moves-up on delete and inserts above existing subtrees all happen.
_BASE = [os.urandom(20) for _ in range(3)]


def _key_strategy():
    def mk(t):
        base, bits, tail = t
        k = bytearray(_BASE[base])
        # flip one bit at depth `bits` and randomize a tail byte: near-colliding keys
        k[bits // 8] ^= 0x80 >> (bits % 8)
        k[19] = tail
        return bytes(k)
    return st.tuples(st.integers(0, 2), st.integers(0, 159), st.integers(0, 3)).map(mk)


keys_st = _key_strategy()
val_st = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
change_st = st.one_of(val_st, st.none())
pulses_st = st.lists(st.dictionaries(keys_st, change_st, max_size=25), min_size=1, max_size=6)


def fresh_tree(tmp_path_factory):
    s = Store.create(str(tmp_path_factory.mktemp("smt") / "s"), map_size=1 << 28)
    return s, SparseMerkleTree(s)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pulses=pulses_st, probe=st.lists(keys_st, max_size=8))
def test_tree_matches_dict(tmp_path_factory, pulses, probe):
    store, tree = fresh_tree(tmp_path_factory)
    try:
        model: dict[bytes, tuple[int, int]] = {}
        history = []
        for p, changes in enumerate(pulses):
            root = tree.apply(p, changes)
            for k, v in changes.items():
                if v is None:
                    model.pop(k, None)
                else:
                    model[k] = v
            history.append((p, root, dict(model)))
            assert tree.root(p) == root
            # same membership, in key order
            assert [(k, b, s) for k, b, s in tree.items(p)] == [(k, *model[k]) for k in sorted(model)]
            # every member's inclusion proof verifies and shows its state
            for k, v in model.items():
                pr = tree.prove(k, p)
                assert verify(pr.to_bytes(), root, k) == v
                assert verify(pr.to_json(), root, k) == v
            # every non-member's non-inclusion proof verifies
            for k in list(changes) + probe:
                if k not in model:
                    pr = tree.prove(k, p)
                    assert pr.kind in ("non-inclusion", "empty")
                    assert verify(pr.to_bytes(), root, k) is None
        if not model:
            assert history[-1][1] == EMPTY_HASH
        # past pulses are still readable and provable
        for p, root, m in history:
            assert dict((k, (b, s)) for k, b, s in tree.items(p)) == m
            for k, v in list(m.items())[:3]:
                assert verify(tree.prove(k, p), root, k) == v
        # the root does not depend on the order of updates: rebuild the final state in one
        # batch, in reverse order, on a fresh tree
        s2, t2 = fresh_tree(tmp_path_factory)
        try:
            final = sorted(model.items(), reverse=True)
            assert t2.apply(0, final) == history[-1][1]
        finally:
            s2.close()
    finally:
        store.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pulses=pulses_st, data=st.data())
def test_flipped_bit_breaks_proof(tmp_path_factory, pulses, data):
    store, tree = fresh_tree(tmp_path_factory)
    try:
        for p, changes in enumerate(pulses):
            root = tree.apply(p, changes)
        key = data.draw(keys_st)
        raw = tree.prove(key).to_bytes()
        assert check(raw, root, key)
        bit = data.draw(st.integers(0, len(raw) * 8 - 1))
        bad = bytearray(raw)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        assert not check(bytes(bad), root, key)
        # wrong root and wrong key fail too
        assert not check(raw, bytes(32), key)
        other = bytes([key[0] ^ 1]) + key[1:]
        assert not check(raw, root, other)
    finally:
        store.close()


def test_order_within_pulse_does_not_matter(store):
    keys = [os.urandom(20) for _ in range(300)]
    a = SparseMerkleTree(store, "ledger.a")
    b = SparseMerkleTree(store, "ledger.b")
    a.apply(1, [(k, (i, 0)) for i, k in enumerate(keys)])
    b.apply(1, [(k, (i, 0)) for i, k in reversed(list(enumerate(keys)))])
    assert a.root(1) == b.root(1) != EMPTY_HASH
    # same final state through different pulse histories
    a.apply(2, {keys[0]: None, keys[1]: (7, 1)})
    b.apply(2, {keys[1]: (7, 1)})
    b.apply(3, {keys[0]: None})
    assert a.root(2) == b.root(3)


def test_prune_keeps_window_and_shares_nodes(store):
    t = SparseMerkleTree(store)
    keys = [os.urandom(20) for _ in range(200)]
    t.apply(0, {k: (1, 0) for k in keys})
    n0 = t.node_count()
    assert n0 == 2 * len(keys) - 1  # a path-compressed binary trie
    t.apply(1, {keys[0]: (2, 1)})
    grown = t.node_count() - n0
    assert 1 < grown < 30  # only the changed path is written
    t.apply(2, {keys[1]: None})
    r2 = t.root(2)
    deleted = t.prune(2)
    assert deleted > 0
    assert t.pulses() == [2]
    assert t.node_count() == 2 * (len(keys) - 1) - 1
    with pytest.raises(SMTError):
        t.root(1)
    for k in keys[2:20]:
        assert verify(t.prove(k, 2), r2, k) == (1, 0)
    assert verify(t.prove(keys[0]), r2, keys[0]) == (2, 1)


def test_refusals(store):
    t = SparseMerkleTree(store)
    t.apply(5, {b"\x01" * 20: (1, 1)})
    with pytest.raises(SMTError):
        t.apply(5, {b"\x01" * 20: (2, 1)})
    with pytest.raises(SMTError):
        t.apply(6, {b"\x01" * 19: (2, 1)})
    with pytest.raises(SMTError):
        t.apply(6, {b"\x01" * 20: (-1, 1)})
    with pytest.raises(SMTError):
        t.root(4)


def test_empty_tree_proof(store):
    t = SparseMerkleTree(store)
    t.apply(0, {})
    pr = t.prove(b"\x05" * 20)
    assert pr.kind == "empty"
    assert verify(pr.to_bytes(), EMPTY_HASH, b"\x05" * 20) is None
    with pytest.raises(BadProof):
        verify(pr.to_bytes(), bytes(32))


def test_forged_proofs_are_refused(store):
    t = SparseMerkleTree(store)
    keys = sorted(os.urandom(20) for _ in range(50))
    root = t.apply(0, {k: (10, 0) for k in keys})
    pr = t.prove(keys[3])
    # claim a larger balance
    forged = Proof(pr.key, pr.leaf[:20] + (11).to_bytes(8, "big") + pr.leaf[28:], pr.depths, pr.siblings)
    with pytest.raises(BadProof):
        verify(forged, root)
    # claim non-inclusion of a member by showing another leaf's path
    other = t.prove(keys[4])
    forged = Proof(keys[3], other.leaf, other.depths, other.siblings)
    with pytest.raises(BadProof):
        verify(forged, root, keys[3])
    # truncated / garbage bytes
    for junk in (b"", b"\x01", pr.to_bytes()[:-1], pr.to_bytes() + b"\x00", b"\x02" + pr.to_bytes()[1:]):
        with pytest.raises(BadProof):
            verify(junk, root)
    with pytest.raises(BadProof):
        verify({"v": 1, "kind": "inclusion"}, root)
    assert compute_root(pr) == root


def test_aborted_pulse_does_not_poison_the_cache(store):
    # refs are (pulse, index): an aborted pulse's refs are reused when the pulse is
    # applied again, so nodes the aborted run cached must not be trusted
    keys = [os.urandom(20) for _ in range(300)]
    t = SparseMerkleTree(store, cache_depth=160)
    t.apply(1, {k: (1, 0) for k in keys})
    with pytest.raises(RuntimeError):
        with store.write() as txn:
            t.apply_txn(txn, 2, {k: (5, 1) for k in keys[:100]})
            raise RuntimeError("abort")
    t.apply(2, {k: (7, 1) for k in keys[100:150]})
    t.apply(3, {k: (9, 2) for k in keys[:200:3]})
    fresh = SparseMerkleTree(store, "ledger.fresh")
    want = {k: (1, 0) for k in keys}
    want.update({k: (7, 1) for k in keys[100:150]})
    want.update({k: (9, 2) for k in keys[:200:3]})
    assert t.root(3) == fresh.apply(1, want)
    assert sorted(t.items(3)) == sorted((k, b, s) for k, (b, s) in want.items())
    for k in keys[:40]:
        assert verify(t.prove(k, 3), t.root(3), k) == want[k]


def test_split_with_helper_process_matches_one_process(store):
    # batches above parallel_min are split with a helper process; force it on small ones
    rnd = __import__("random").Random(5)
    keys = [rnd.randbytes(20) for _ in range(3000)]
    a = SparseMerkleTree(store, "ledger.a", parallel=True)
    b = SparseMerkleTree(store, "ledger.b")
    a.parallel_min = 64
    for t in (a, b):
        t.apply(1, {k: (1, 0) for k in keys[:2000]})
    for p in range(2, 6):
        ch = {k: (p, p) for k in rnd.sample(keys[:2000], 300)}
        ch.update({k: (p, 0) for k in rnd.sample(keys[2000:], 100)})  # inserts
        ch.update({k: None for k in rnd.sample(keys, 100)})  # deletes, some of absent keys
        assert a.apply(p, ch) == b.apply(p, ch)
    assert list(a.items()) == list(b.items())
    for k in keys[:50]:
        assert verify(a.prove(k), a.root(), k) == b.get(k)
    # a base pulse not committed yet (two pulses in one transaction): done in one process
    with store.write() as txn:
        ra = a.apply_txn(txn, 6, {k: (6, 6) for k in keys[:500]})
        ra = a.apply_txn(txn, 7, {k: (7, 7) for k in keys[:500]})
    b.apply(6, {k: (6, 6) for k in keys[:500]})
    assert ra == b.apply(7, {k: (7, 7) for k in keys[:500]})
    assert a.prune(7) > 0 and b.prune(7) > 0
    assert a.node_count() == b.node_count()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_equals_one_by_one_across_reopen(tmp_path, seed):
    # A pulse's batch update (shared top, one-key paths, inserts that split, deletes that
    # move a sibling up, zero balances, no-op rewrites, deletes of absent keys) gives the
    # same root, the same proofs and the same leaves as one change per pulse, before and
    # after the LMDB store is closed and opened again.
    rnd = __import__("random").Random(seed)
    base = [rnd.randbytes(20) for _ in range(4)]

    def near(b):  # a key sharing a long prefix with b: splits deep in the tree
        k = bytearray(b)
        bit = rnd.randrange(160)
        k[bit // 8] ^= 0x80 >> (bit % 8)
        return bytes(k)

    keys = [rnd.randbytes(20) for _ in range(400)] + [near(rnd.choice(base)) for _ in range(200)]
    path = str(tmp_path / "s")
    store = Store.create(path, map_size=1 << 30)
    a = SparseMerkleTree(store, "ledger.a")  # batches
    b = SparseMerkleTree(store, "ledger.b")  # one change per pulse
    model: dict[bytes, tuple[int, int]] = {}
    pb = 0
    batches = []
    for p in range(6):
        ch: dict[bytes, tuple[int, int] | None] = {}
        for k in rnd.sample(keys, 150):
            r = rnd.random()
            ch[k] = None if r < 0.2 else (0, p) if r < 0.3 else (rnd.randrange(1 << 64), rnd.randrange(1 << 64))
        for k in rnd.sample(sorted(model), min(5, len(model))):
            ch[k] = model[k]  # rewrites of the same value: no change
        batches.append(ch)
    for p, ch in enumerate(batches):
        if p == 3:  # reopen between pulses: nothing in memory is needed
            store.close()
            store = Store.open(path, map_size=1 << 30)
            a = SparseMerkleTree(store, "ledger.a")
            b = SparseMerkleTree(store, "ledger.b")
        ra = a.apply(p, ch)
        for k, v in ch.items():
            b.apply(pb, {k: v})
            pb += 1
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        assert ra == b.root() == a.root(p)
        assert list(a.items()) == list(b.items()) == [(k, *model[k]) for k in sorted(model)]
        for k in rnd.sample(keys, 60):
            pa = a.prove(k)
            assert pa.to_bytes() == b.prove(k).to_bytes()
            assert verify(pa.to_bytes(), ra, k) == model.get(k)
    final_root = a.root()
    store.close()
    store = Store.open(path, map_size=1 << 30)
    try:
        a = SparseMerkleTree(store, "ledger.a")
        assert a.root() == final_root
        for k in keys[::7]:
            assert verify(a.prove(k).to_bytes(), final_root, k) == model.get(k)
        # and one fresh batch from nothing builds the same root
        assert SparseMerkleTree(store, "ledger.c").apply(0, model) == final_root
    finally:
        store.close()
