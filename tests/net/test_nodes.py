"""Nodes as real processes on loopback: the issue's three-node scenario through a real
FUSE mount, metering agreed by both credit books, and a node killed mid-transfer."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading

import pytest

pytestmark = pytest.mark.timeout(240)

from .procs import Node, wait_for

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)

FAST = """[net]
follow = 0.5
republish = 3
provider_ttl = 60
rpc_timeout = 1
request_timeout = 5
min_free = 0
"""


@pytest.fixture
def nodes(tmp_path):
    made = []

    def make(name):
        n = Node(tmp_path / name, name)
        (n.path / "config.toml").write_text(FAST)
        made.append(n)
        return n
    yield make
    for n in made:
        n.stop()


def make_tree(root, seed=7, big=6 << 20):
    rnd = random.Random(seed)
    for i in range(40):
        d = root / f"dir{i % 5}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i}.txt").write_bytes((f"line {i} of a text file\n" * rnd.randint(1, 2000)).encode())
    (root / "empty").write_bytes(b"")
    os.symlink("dir0/sub0/file0.txt", root / "link")
    (root / "big.bin").write_bytes(rnd.randbytes(big))


def diff(a, b):
    p = subprocess.run(["diff", "-r", "--no-dereference", f"{a}/", f"{b}/"], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def credit(node, peer):
    for row in node.json("credit", "show"):
        if row["peer"] == peer.id:
            return row
    return {}


def test_three_nodes_author_reader_pinner(nodes, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    mid = a.run("create", "--type", "fs", "--mark", "demo").strip()
    a.run("import", str(src), mid, "--backup")
    a.serve()
    # B reads lazily through its mount
    b.mount(tmp_path / "mb", a)
    last = tmp_path / "mb" / "mm" / mid / "last"
    code, out = diff(src, last)
    assert code == 0, out
    assert os.readlink(last) == "v/0"
    st = b.json("net", "status")
    assert st["connections"] >= 1 and st["cache"]["fetched_bytes"] > 0
    # A's next version appears on B as last within seconds
    (src / "new.txt").write_text("version two\n")
    a.run("import", str(src), mid, "--backup")
    wait_for(lambda: os.readlink(last) == "v/1", 20, "B to follow A's v/1")
    assert (last / "new.txt").read_text() == "version two\n"
    code, out = diff(src, last)
    assert code == 0, out
    # B pins; the DHT then names A and B as providers
    r = b.json("pin", mid)
    assert r["versions"] == [1]
    wait_for(lambda: {p["node"] for p in b.json("providers", mid)} >= {a.id, b.id}, 20, "B announced")
    # both books agree on what A served B (IOUs are sent every second)
    wait_for(lambda: credit(a, b).get("iou_in") and credit(a, b)["iou_in"]["amount"] == credit(a, b)["used"],
             15, "A to hold B's IOU for all it served")
    used_ab = credit(a, b)["used"]
    assert used_ab > 6 << 20                      # at least the big file went A -> B
    assert credit(b, a)["iou_out"]["amount"] == used_ab
    a.stop()
    # C reads the MiMei from B alone
    c.mount(tmp_path / "mc", b)
    code, out = diff(src, tmp_path / "mc" / "mm" / mid / "last")
    assert code == 0, out
    wait_for(lambda: credit(b, c).get("iou_in") and credit(b, c)["iou_in"]["amount"] == credit(b, c)["used"],
             15, "B to hold C's IOU")
    assert credit(c, b)["iou_out"]["amount"] == credit(b, c)["used"] > 6 << 20
    # what the mounts show is read-only
    with pytest.raises(OSError):
        (tmp_path / "mc" / "mm" / mid / "last" / "x").write_text("no")
    assert "Traceback" not in b.log() + c.log()


def test_kill9_mid_transfer(nodes, tmp_path):
    """Two providers; one is killed -9 while B reads a big file: B gets every byte from
    the other. Then the last provider is killed: B's read fails with EIO, never wrong
    bytes, and B's store holds no partial object."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(3)
    (src / "big.bin").write_bytes(rnd.randbytes(48 << 20))
    (src / "other.bin").write_bytes(rnd.randbytes(24 << 20))
    a, p, b = nodes("a"), nodes("p"), nodes("b")
    mid = a.run("create", "--type", "fs", "--mark", "k").strip()
    a.run("import", str(src), mid, "--backup")
    a.serve()
    p.serve(a)
    p.run("pin", mid)
    b.mount(tmp_path / "mb", a, p)
    wait_for(lambda: {x["node"] for x in b.json("providers", mid)} >= {a.id, p.id}, 20, "two providers")
    f = tmp_path / "mb" / "mm" / mid / "last" / "big.bin"
    out = bytearray()
    err = []

    def reader():
        try:
            with open(f, "rb") as fh:
                while True:
                    d = fh.read(1 << 20)
                    if not d:
                        break
                    out.extend(d)
        except OSError as e:
            err.append(e)
    t = threading.Thread(target=reader)
    t.start()
    wait_for(lambda: len(out) > 0 or err, 30, "the read to start")
    p.kill9()
    t.join(120)
    assert not err, err
    assert bytes(out) == (src / "big.bin").read_bytes()
    # now the only provider goes too: a clean EIO, not wrong bytes
    a.kill9()
    with pytest.raises(OSError) as ei:
        with open(tmp_path / "mb" / "mm" / mid / "last" / "other.bin", "rb") as fh:
            data = fh.read()
            assert data == (src / "other.bin").read_bytes()  # never wrong bytes
            raise OSError(5, "read everything")  # (cannot happen with both providers dead)
    assert ei.value.errno == 5
    b.stop()
    r = b.run("check", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
