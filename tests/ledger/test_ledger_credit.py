"""Letters of credit, IOUs and the credit book (seed 001/002 Part I credit model)."""

import pytest

from mimeifs.engine.db import Store
from mimeifs.ids import NodeKey
from mimeifs.ledger.credit import CreditBook, CreditError, CreditRefused, iou, letter_of_credit


@pytest.fixture
def two(tmp_path):
    a = Store.create(str(tmp_path / "a"), map_size=1 << 26)
    b = Store.create(str(tmp_path / "b"), map_size=1 << 26)
    yield CreditBook(a), CreditBook(b)
    a.close()
    b.close()


def test_cap_is_enforced_and_nothing_recorded_on_refusal(two):
    a, b = two
    a.grant(b.me, 1000)
    assert a.record_use(b.me, 600) == 600
    with pytest.raises(CreditRefused) as ei:
        a.record_use(b.me, 401)
    assert "pass its cap" in ei.value.reason and ei.value.used == 600 and ei.value.cap == 1000
    assert a.record_use(b.me, 400) == 1000
    with pytest.raises(CreditRefused):
        a.record_use(b.me, 1)


def test_raise_lower_revoke(two):
    a, b = two
    a.grant(b.me, 100)
    a.record_use(b.me, 80)
    loc = a.set_cap(b.me, 200)
    assert loc["seq"] == 2 and loc["cap"] == 200
    a.record_use(b.me, 100)
    a.set_cap(b.me, 150)  # lower below use: nothing more is served
    with pytest.raises(CreditRefused):
        a.record_use(b.me, 1)
    a.set_cap(b.me, 1000)
    a.record_use(b.me, 1)
    rev = a.revoke(b.me)
    assert rev["revoked"] and rev["cap"] == 0
    with pytest.raises(CreditRefused, match="revoked"):
        a.record_use(b.me, 1)
    with pytest.raises(CreditError):
        a.revoke(NodeKey.generate().id)


def test_expiry_and_unknown_peer(two):
    a, b = two
    a.grant(b.me, 100, expires=1000.0)
    assert a.record_use(b.me, 1, now=999.0) == 1
    with pytest.raises(CreditRefused, match="expired"):
        a.record_use(b.me, 1, now=1000.0)
    with pytest.raises(CreditRefused, match="no letter"):
        a.record_use(NodeKey.generate().id, 1)


def test_units_convert_by_coefficients(two):
    a, b = two
    a.set_coefficients(storage=10, cpu=500)
    a.grant(b.me, 1000)
    assert a.record_use(b.me, 5, "storage") == 50
    assert a.record_use(b.me, 1, "cpu") == 550
    with pytest.raises(CreditRefused):
        a.record_use(b.me, 1, "cpu")
    with pytest.raises(CreditError):
        a.record_use(b.me, 1, "gold")


def test_letters_and_ious_between_nodes_and_netting(two):
    a, b = two
    loc = a.grant(b.me, 10_000)
    b.accept_letter(loc)
    with pytest.raises(CreditError, match="newer"):
        b.accept_letter(loc)  # replayed
    # b used 3000 of a's service and signs an IOU; a used 1000 of b's
    a.accept_iou(b.issue_iou(a.me, 3000))
    b.accept_iou(a.issue_iou(b.me, 1000))
    assert a.net(b.me) == {"peer": b.me, "owed_to_me": 3000, "i_owe": 1000, "net": 2000}
    assert b.net(a.me)["net"] == -2000
    # cumulative: only the newest matters
    a.accept_iou(b.issue_iou(a.me, 3500))
    assert a.net(b.me)["net"] == 2500
    with pytest.raises(CreditError, match="never go down"):
        b.issue_iou(a.me, 10)
    assert a.settle(b.me)["net"] == 2500
    assert a.net(b.me)["net"] == 0
    a.accept_iou(b.issue_iou(a.me, 4000))
    assert a.net(b.me)["owed_to_me"] == 500
    shown = {p["peer"]: p for p in a.show()}
    assert shown[b.me]["granted"]["cap"] == 10_000 and shown[b.me]["iou_in"]["amount"] == 4000


def test_forged_records_are_refused(two):
    a, b = two
    mallory = NodeKey.generate()
    # an IOU claiming to be from b but signed by mallory
    forged = iou(mallory, a.me, 10, 1)
    forged["borrower"] = b.me
    with pytest.raises(CreditError, match="forged|signed by its borrower"):
        a.accept_iou(forged)
    # a tampered amount breaks the signature
    real = b.issue_iou(a.me, 100)
    with pytest.raises(CreditError, match="forged"):
        a.accept_iou(dict(real, amount=1))
    # a letter signed by someone else than its authorizer
    loc = letter_of_credit(mallory, b.me, 10**9)
    loc2 = dict(loc, authorizer=a.me)
    with pytest.raises(CreditError):
        b.accept_letter(loc2)
    # a letter for another node
    with pytest.raises(CreditError, match="another node"):
        a.accept_letter(letter_of_credit(mallory, b.me, 5))
    # a stale IOU (older seq) is refused
    a.accept_iou(b.issue_iou(a.me, 200))
    with pytest.raises(CreditError, match="stale"):
        a.accept_iou(real)
