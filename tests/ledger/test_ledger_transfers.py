"""Accounts, admission, rewards, transfers and pulses (seed 002 Part II §III, §VI, §VII)."""


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimeifs.engine.db import Store
from mimeifs.ids import NodeKey
from mimeifs.ledger import records as R
from mimeifs.ledger.ledger import ChainError, Ledger, LedgerError, TransferRefused, verify_chain
from mimeifs.ledger.proof import verify


def _join(led, role="member"):
    k = NodeKey.generate()
    led.approve(R.application(k, led.org_id, role))
    return k


@pytest.fixture
def org(store):
    led = Ledger.create(store, "acme", 1_000)
    alice, bob = _join(led), _join(led, "guest")
    founder = store.key
    led.submit(R.Transfer.make(founder, led.org_id, alice.id, 300, 1, led.open_pulse).countersign(alice))
    led.close_pulse()
    return led, founder, alice, bob


def tx(led, a, b, amount, seq=None, pulse=None):
    seq = led.account(a.id, pending=True)["seq"] + 1 if seq is None else seq
    return R.Transfer.make(a, led.org_id, b.id, amount, seq, led.open_pulse if pulse is None else pulse).countersign(b)


def test_genesis_and_roles(org, store):
    led, founder, alice, bob = org
    rec0 = led.pulse_record(0)
    assert rec0["minted"] == 1000 and rec0["total"] == 1000 and rec0["prev"] == ""
    ev = led.events(0)
    assert any(e.startswith(b"R") and b"construction" in e for e in ev)
    assert led.account(founder.id)["role"] == "supervisor"
    assert led.account(alice.id)["role"] == "member"
    assert led.account(bob.id)["role"] == "guest"
    assert led.balance(founder.id) == 700 and led.balance(alice.id) == 300
    assert led.balance(founder.id, pulse=0) == 1000
    # reopening the store sees the same ledger
    again = Ledger(store)
    assert again.pulse == led.pulse and again.total == 1000
    # proofs of accounts against the signed root
    root = led.pulse_record()["root"]
    pr = led.tree.prove(bytes.fromhex(alice.id))
    assert verify(pr.to_bytes(), bytes.fromhex(root), bytes.fromhex(alice.id)) == (300, 0)
    led.audit()


def test_only_supervisor_approves_and_forged_application(org):
    led, founder, alice, bob = org
    carol = NodeKey.generate()
    app = R.application(carol, led.org_id)
    with pytest.raises(LedgerError, match="supervisor"):
        led.approve(app, supervisor=alice)
    forged = dict(app, role="member", note="x")  # changed after signing
    with pytest.raises(LedgerError, match="refused admission"):
        led.approve(forged)
    fake_approval = R.approval(alice, app)
    with pytest.raises(LedgerError, match="refused admission"):
        led.admit(app, fake_approval)
    led.approve(app)
    with pytest.raises(LedgerError, match="already admitted"):
        led.approve(app)


@pytest.mark.parametrize("case,reason", [
    ("bad sender sig", "bad signature: the sender"),
    ("bad receiver sig", "bad signature: the receiver"),
    ("replayed", "replayed sequence"),
    ("skipped", "skipped sequence"),
    ("zero", "amount not positive"),
    ("negative balance", "balance would go negative"),
    ("unknown receiver", "unknown account"),
    ("unknown sender", "unknown account"),
    ("other org", "another organization"),
    ("self", "same account"),
    ("old pulse", "wrong pulse"),
])
def test_refusals(org, case, reason):
    led, founder, alice, bob = org
    before = (led.account(alice.id, True), led.account(bob.id, True), list(led.pending()))
    stranger = NodeKey.generate()
    if case == "bad sender sig":
        good = tx(led, alice, bob, 5)
        t = R.Transfer(good.org, good.sender, good.receiver, 6, good.seq, good.pulse, good.sender_sig, good.receiver_sig)
    elif case == "bad receiver sig":
        good = tx(led, alice, bob, 5)
        t = R.Transfer(good.org, good.sender, good.receiver, good.amount, good.seq, good.pulse,
                       good.sender_sig, stranger.sign(R.ACCEPT_TAG + good.core()))
    elif case == "replayed":
        led.submit(tx(led, alice, bob, 5))
        before = (led.account(alice.id, True), led.account(bob.id, True), list(led.pending()))
        t = tx(led, alice, bob, 5, seq=1)
    elif case == "skipped":
        t = tx(led, alice, bob, 5, seq=3)
    elif case == "zero":
        t = tx(led, alice, bob, 0)
    elif case == "negative balance":
        t = tx(led, alice, bob, 301)
    elif case == "unknown receiver":
        t = R.Transfer.make(alice, led.org_id, stranger.id, 5, 1, led.open_pulse).countersign(stranger)
    elif case == "unknown sender":
        t = R.Transfer.make(stranger, led.org_id, bob.id, 5, 1, led.open_pulse).countersign(bob)
    elif case == "other org":
        t = R.Transfer.make(alice, NodeKey.generate().id, bob.id, 5, 1, led.open_pulse).countersign(bob)
    elif case == "self":
        t = R.Transfer.make(alice, led.org_id, alice.id, 5, 1, led.open_pulse).countersign(alice)
    elif case == "old pulse":
        t = tx(led, alice, bob, 5, pulse=led.open_pulse - 2)
    with pytest.raises(TransferRefused) as ei:
        led.submit(t)
    assert reason in ei.value.reason
    # a refused transfer changes nothing
    assert (led.account(alice.id, True), led.account(bob.id, True), list(led.pending())) == before
    rec = led.close_pulse()
    assert rec["total"] == 1000
    led.audit()


def test_negative_amount_is_refused_at_encoding(org):
    led, founder, alice, bob = org
    with pytest.raises(R.RecordError):
        R.Transfer.make(alice, led.org_id, bob.id, -5, 1, led.open_pulse)


def test_reward_is_the_only_way_total_grows(org):
    led, founder, alice, bob = org
    with pytest.raises(LedgerError, match="reason"):
        led.announce_reward([(bob.id, 10)], "  ")
    forged = R.reward(alice, led.open_pulse, "operation", "I deserve it", [[alice.id, 10**6]])
    with pytest.raises(LedgerError, match="refused reward"):
        led.submit_reward(forged)
    led.announce_reward([(bob.id, 50)], "tagged 50 videos", "content")
    rec = led.close_pulse()
    assert rec["minted"] == 50 and rec["total"] == 1050
    assert led.balance(bob.id) == 50
    led.audit()


def test_chain_verification_catches_every_broken_link(org):
    led, founder, alice, bob = org
    led.submit(tx(led, alice, bob, 10))
    led.close_pulse()
    recs = led.pulse_records()
    verify_chain(recs, bookkeeper=founder.id, org=led.org_id)
    with pytest.raises(ChainError):
        verify_chain(recs, bookkeeper=alice.id)
    # a re-signed record with a changed root breaks the next link
    bad = [dict(r) for r in recs]
    bad[1] = founder.sign_record(dict(bad[1], root="00" * 32))
    with pytest.raises(ChainError, match="prev"):
        verify_chain(bad)
    # an inflated total breaks the balance rule
    bad = [dict(r) for r in recs]
    bad[-1] = founder.sign_record(dict(bad[-1], total=bad[-1]["total"] + 1))
    with pytest.raises(ChainError, match="total"):
        verify_chain(bad)
    # a tampered, unsigned record breaks the signature
    bad = [dict(r) for r in recs]
    bad[-1]["count"] += 1
    with pytest.raises(ChainError):
        verify_chain(bad)
    # a missing pulse
    with pytest.raises(ChainError, match="follows"):
        verify_chain([recs[0], recs[2]])


def test_pending_queue_survives_reopen(org, store):
    led, founder, alice, bob = org
    led.submit(tx(led, alice, bob, 10))
    led2 = Ledger(store)
    assert led2.account(alice.id, pending=True)["balance"] == 290
    with pytest.raises(TransferRefused, match="replayed"):
        led2.submit(tx(led, alice, bob, 10, seq=1))
    led2.close_pulse()
    assert led2.balance(bob.id) == 10
    led2.audit()


def test_threaded_submit_matches_inline(org):
    led, founder, alice, bob = org
    ts = [tx(led, alice, bob, 1, seq=i + 1) for i in range(1200)]
    res = led.submit_many(ts, workers=2, chunk=100)
    assert res[:300] == [None] * 300
    assert "balance would go negative" in res[300]
    assert all("skipped sequence" in r for r in res[301:])  # seq 301 never went through
    rec = led.close_pulse()
    assert led.balance(alice.id) == 0 and led.balance(bob.id) == 300 and rec["total"] == 1000


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(-5, 400),
                              st.integers(-1, 1), st.booleans()), min_size=1, max_size=40))
def test_conservation_over_random_transfers(tmp_path_factory, ops):
    store = Store.create(str(tmp_path_factory.mktemp("led") / "s"), map_size=1 << 28)
    try:
        led = Ledger.create(store, "acme", 1000)
        keys = [store.key] + [_join(led) for _ in range(4)]
        model = {k.id: [0, 0] for k in keys}
        model[store.key.id][0] = 1000
        for a, b, amount, seq_off, close in ops:
            sa, sb = keys[a], keys[b]
            seq = model[sa.id][1] + 1 + seq_off
            try:
                t = R.Transfer.make(sa, led.org_id, sb.id, amount, max(seq, 0), led.open_pulse).countersign(sb)
            except R.RecordError:
                continue
            ok = a != b and amount > 0 and seq_off == 0 and amount <= model[sa.id][0]
            try:
                led.submit(t)
                assert ok
                model[sa.id][0] -= amount
                model[sa.id][1] += 1
                model[sb.id][0] += amount
            except TransferRefused:
                assert not ok
            if close:
                rec = led.close_pulse()
                assert rec["total"] == 1000
        led.close_pulse()
        assert sum(led.balance(k.id) for k in keys) == 1000
        for k in keys:
            acc = led.account(k.id)
            assert [acc["balance"], acc["seq"]] == model[k.id]
        led.audit()
    finally:
        store.close()


def test_no_ledger_here(store):
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(store)
    Ledger.create(store, "x", 5)
    with pytest.raises(LedgerError, match="already"):
        Ledger.create(store, "x", 5)
