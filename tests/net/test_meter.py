"""The meter's cached view of the credit book follows every change at the next reply."""

import subprocess
import sys

import pytest

from mimeifs.engine.db import Store
from mimeifs.ledger.credit import CreditBook, CreditRefused
from mimeifs.net.meter import Meter

PEER = "ab" * 20


@pytest.fixture
def store(tmp_path):
    s = Store.create(str(tmp_path / "s"), map_size=1 << 26)
    yield s
    s.close()


def test_default_letter_then_cap_from_another_process(store, tmp_path):
    m = Meter(CreditBook(store), default_credit=1000)
    m.charge(PEER, 600)              # the default letter is granted on first contact
    assert CreditBook(store).letter(PEER)["cap"] == 1000
    m.charge(PEER, 300)
    with pytest.raises(CreditRefused):
        m.charge(PEER, 200)          # 900 + 200 > 1000, from the cached letter
    m.flush()
    assert CreditBook(store).used(PEER) == 900
    # Another process raises the cap: this meter's cache must notice at the next charge.
    code = ("import sys; from mimeifs.engine.db import Store; from mimeifs.ledger.credit import CreditBook; "
            "s = Store.open(sys.argv[1]); CreditBook(s).set_cap(sys.argv[2], 5000); s.close()")
    subprocess.run([sys.executable, "-c", code, store.path, PEER], check=True)
    m.charge(PEER, 200)
    # ... and a revoke from another process refuses the next reply at once.
    code = code.replace("set_cap(sys.argv[2], 5000)", "revoke(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, store.path, PEER], check=True)
    with pytest.raises(CreditRefused, match="revoked"):
        m.charge(PEER, 1)
    assert m.served[PEER] == 1100


def test_no_default_letter_means_refused_until_granted(store):
    m = Meter(CreditBook(store), default_credit=0)
    with pytest.raises(CreditRefused, match="no letter"):
        m.charge(PEER, 1)
    CreditBook(store).grant(PEER, 10)
    m.charge(PEER, 10)
    with pytest.raises(CreditRefused, match="exhausted"):
        m.charge(PEER, 1)
