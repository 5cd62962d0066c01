"""Credit and save-on-demand between real daemons: a peer past its letter is refused
and served again once the cap is raised, a revoked peer is refused at once; `replicate
--copies N` keeps N holders when one goes away, and a peer declines by its own policy."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from .procs import Node, wait_for
from .test_nodes import FAST

pytestmark = pytest.mark.timeout(240)

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)


@pytest.fixture
def nodes(tmp_path):
    made = []

    def make(name, extra=""):
        n = Node(tmp_path / name, name)
        (n.path / "config.toml").write_text(FAST + extra)
        made.append(n)
        return n
    yield make
    for n in made:
        n.stop()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_credit_cap_grant_and_revoke(nodes, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(5)
    (src / "big.bin").write_bytes(rnd.randbytes(2 << 20))
    (src / "other.bin").write_bytes(rnd.randbytes(1 << 20))
    (src / "small.txt").write_text("small\n")
    a = nodes("a", "default_credit = 0\n")
    b = nodes("b")
    mid = a.run("create", "--type", "fs", "--mark", "c").strip()
    a.run("import", str(src), mid, "--backup")
    a.run("credit", "grant", b.id, "--cap", "64KiB")
    a.serve()
    b.mount(tmp_path / "mb", a)
    v = tmp_path / "mb" / "mm" / mid / "last"
    assert read(v / "small.txt") == b"small\n"
    with pytest.raises(OSError) as ei:
        read(v / "big.bin")
    assert ei.value.errno == 5
    st = b.json("net", "status")
    assert "credit exhausted" in st["refused_by"][a.id]["reason"]
    assert "credit exhausted" in a.json("net", "status")["refused"][b.id]["reason"]
    assert "refused by" in b.run("net", "status")
    # a raised cap resumes service
    a.run("credit", "grant", b.id, "--cap", "100MiB")
    assert read(v / "big.bin") == (src / "big.bin").read_bytes()
    # revoked: refused at once
    a.run("credit", "revoke", b.id)
    with pytest.raises(OSError) as ei:
        read(v / "other.bin")
    assert ei.value.errno == 5
    assert "revoked" in b.json("net", "status")["refused_by"][a.id]["reason"]
    assert a.alive() and b.alive()


def test_replicate_keeps_copies_and_peers_may_decline(nodes, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(random.Random(9).randbytes(1 << 20))
    a = nodes("a")
    mid = a.run("create", "--type", "fs", "--mark", "r").strip()
    a.run("import", str(src), mid, "--backup")
    a.serve()
    no = nodes("no", "accept_pins = false\n")
    no.serve(a)
    ps = [nodes(f"p{i}") for i in range(3)]
    for p in ps:
        p.serve(a)
    wait_for(lambda: a.json("net", "status")["connections"] >= 4, 20, "peers connected")
    r = a.json("replicate", mid, "--copies", "2")
    assert len(r["holders"]) == 2, r
    if no.id in r["asked"]:
        assert "does not accept pin requests" in r["asked"][no.id]
    holders = set(r["holders"])
    assert no.id not in holders

    def others():
        return {p["node"] for p in a.json("providers", mid)} - {a.id}
    wait_for(lambda: others() >= holders, 30, "holders announced")
    # one holder dies: the count goes back to 2 with another peer
    gone = next(p for p in ps if p.id in holders)
    gone.kill9()

    def restored():
        rep = a.json("net", "status")["replicas"][mid]
        return len(rep.get("holders", [])) >= 2 and gone.id not in rep["holders"]
    wait_for(restored, 60, "replicas restored to 2")
    new = set(a.json("net", "status")["replicas"][mid]["holders"]) - holders
    assert new and no.id not in new
    wait_for(lambda: others() >= new, 30, "the new holder to finish its copy and announce it")
    # the new holder really holds the data: it serves it with the author gone
    a.stop()
    c = nodes("c")
    n = next(p for p in ps if p.id in new)
    c.mount(tmp_path / "mc", n)
    assert read(tmp_path / "mc" / "mm" / mid / "last" / "f.bin") == (src / "f.bin").read_bytes()
