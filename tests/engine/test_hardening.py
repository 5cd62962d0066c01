"""Issue 11's data-safety items at the engine: cur page checksums, a map that grows,
ENAMETOOLONG before ENOENT, held blocks of sparse files, user.mimei.id listed, and the
worktree owning its records (issue 10)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from mimeifs.engine import maintenance
from mimeifs.engine.db import Store
from mimeifs.engine.errors import Corrupt
from mimeifs.engine.inode import ikey
from mimeifs.engine.mimei import Engine

from .conftest import DIR, FILE, mkdir, mkfile, read_all

ENGINE = Path(__file__).resolve().parents[2] / "mimeifs" / "engine"


def _flip_page_byte(e: Engine, ino: int, page: int, at: int) -> None:
    """Flip one byte of a stored page the way a bad disk would: the value changes, its
    checksum does not."""
    key = ikey(ino) + page.to_bytes(8, "big")
    with e.store.write() as txn:
        raw = bytearray(txn.get(key, db=e.wt.d_pages))
        raw[at] ^= 0x40
        txn.put(key, bytes(raw), db=e.wt.d_pages)


# ------------------------------------------------------------------ item 2
def test_a_flipped_byte_in_a_cur_page_is_eio_and_check_reports_it(fs, caplog):
    e, mid, root = fs
    data = os.urandom(200_000)
    ino = mkfile(e, root, b"f", data)
    other = mkfile(e, root, b"g", b"fine")
    assert read_all(e, ino) == data
    assert maintenance.check(e)["problems"] == []
    _flip_page_byte(e, ino, 1, 1234)
    with pytest.raises(Corrupt) as x:
        e.wt.read(ino, 65536, 4096)
    assert x.value.errno == errno.EIO
    assert f"cur inode {ino} page 1" in caplog.text
    # the pages around it still read, and so does another file
    assert e.wt.read(ino, 0, 4096) == data[:4096]
    assert read_all(e, other) == b"fine"
    # a partial write into the damaged page cannot launder it either
    with pytest.raises(Corrupt):
        e.wt.write(ino, 65536 + 10, b"xx")
    problems = maintenance.check(e)["problems"]
    assert len(problems) == 1 and f"cur inode {ino} page 1" in problems[0]
    # a backup never freezes wrong bytes
    with pytest.raises(Corrupt):
        e.backup(mid)
    assert e.versions(mid) == []
    # overwriting the whole page heals it
    e.wt.write(ino, 65536, data[65536:131072])
    assert read_all(e, ino) == data
    assert maintenance.check(e)["problems"] == []


def test_a_page_moved_under_another_key_is_caught(fs):
    e, _mid, root = fs
    a = mkfile(e, root, b"a", b"A" * 1000)
    b = mkfile(e, root, b"b", b"B" * 1000)
    with e.store.write() as txn:
        raw = txn.get(ikey(a) + bytes(8), db=e.wt.d_pages)
        txn.put(ikey(b) + bytes(8), raw, db=e.wt.d_pages)
    with pytest.raises(Corrupt):
        e.wt.read(b, 0, 10)


def test_a_format_1_store_gets_its_pages_sealed_on_open(tmp_path):
    s = Store.create(str(tmp_path / "s"), map_size=1 << 30)
    e = Engine(s)
    mid = e.create("fs", "old")
    ino = mkfile(e, e.state(mid)["cur"], b"f", b"x" * 70_000)
    with s.write() as txn:  # what a format-1 store holds: pages without checksums
        for p, data in ((0, b"x" * 65536), (1, b"x" * (70_000 - 65536))):
            txn.put(ikey(ino) + p.to_bytes(8, "big"), data, db=s.db("pages"))
        txn.put(b"format", b"1", db=s.db("meta"))
    s.close()
    e = Engine(Store.open(str(tmp_path / "s")))
    assert read_all(e, ino) == b"x" * 70_000
    assert maintenance.check(e)["problems"] == []
    e.store.close()


# ------------------------------------------------------------------ item 4
def test_the_map_grows_before_it_fills_and_a_full_one_is_enospc_then_grows(tmp_path):
    path = str(tmp_path / "s")
    s = Store.create(path, map_size=4 << 20)
    e = Engine(s)
    mid = e.create("fs", "m")
    root = e.state(mid)["cur"]
    ino = mkfile(e, root, b"f")
    buf = os.urandom(1 << 20)
    for i in range(24):  # 24 MiB through a 4 MiB map, 1 MiB per transaction
        e.wt.write(ino, i << 20, buf)
    assert s.map_used()[1] > 24 << 20
    # one transaction larger than the whole map: ENOSPC (never EIO), and it has grown
    big = mkfile(e, root, b"big")
    payload = os.urandom(3 * s.map_used()[1])
    codes = []
    for _ in range(6):
        try:
            e.wt.write(big, 0, payload)
            break
        except OSError as x:
            codes.append(x.errno)
    assert codes and set(codes) == {errno.ENOSPC}
    assert e.wt.read(big, 0, len(payload)) == payload
    # deletes, backup and gc commit; a reopen at the first (small) size reads everything
    e.wt.unlink(root, b"big")
    e.backup(mid)
    maintenance.gc(e)
    s.close()
    e = Engine(Store.open(path, map_size=4 << 20))
    assert e.wt.read(ino, 23 << 20, 1 << 20) == buf
    e.store.close()


# ------------------------------------------------------------------ item 13
def test_names_over_255_bytes_are_enametoolong_before_anything_else(fs):
    e, _mid, root = fs
    long = b"n" * 256
    f = mkfile(e, root, b"f", b"x")
    d = mkdir(e, root, b"d")
    calls = [
        lambda: e.wt.lookup(root, long),
        lambda: e.wt.lookup(d, long),
        lambda: e.wt.unlink(root, long),
        lambda: e.wt.unlink(root, long, rmdir=True),
        lambda: e.wt.rename(root, long, root, b"x"),
        lambda: e.wt.rename(root, b"f", root, long),
        lambda: e.wt.link(f, root, long),
        lambda: e.wt.make(root, long, FILE, 0, 0),
        lambda: e.wt.make(root, long, DIR, 0, 0),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(OSError) as x:
            call()
        assert x.value.errno == errno.ENAMETOOLONG, i
    # 255 bytes is a name like any other
    ok = b"n" * 255
    mkfile(e, root, ok, b"y")
    assert e.wt.lookup(root, ok).size == 1


# ------------------------------------------------------------------ item 14
def test_a_sparse_file_reports_the_blocks_it_holds(fs):
    e, mid, root = fs
    ino = mkfile(e, root, b"sparse")
    e.wt.setattr(ino, size=64 << 20)
    node = e.wt.getattr(ino)
    assert node.size == 64 << 20 and e.wt.st_blocks(node) == 0
    e.wt.write(ino, 32 << 20, b"z" * 4096)
    node = e.wt.getattr(ino)
    assert 8 <= e.wt.st_blocks(node) <= 128  # one 4 KiB write: at most its 64 KiB page
    e.backup(mid)  # frozen: its base holds the zeros as holes
    node = e.wt.getattr(ino)
    assert node.frozen != bytes(32)
    assert 0 < e.wt.st_blocks(node) * 512 <= 1 << 20
    dense = mkfile(e, root, b"dense", os.urandom(3 << 20))
    assert e.wt.st_blocks(e.wt.getattr(dense)) == (3 << 20) // 512
    small = mkfile(e, root, b"small", b"abc")
    assert e.wt.st_blocks(e.wt.getattr(small)) == 1
    assert e.wt.st_blocks(e.wt.getattr(root)) == 0


# ------------------------------------------------------------------ item 15
def test_user_mimei_id_is_listed_on_every_cur_inode(fs):
    e, mid, root = fs
    f = mkfile(e, root, b"f", b"x")
    assert e.wt.xattr_names(f) == [b"user.mimei.id"]
    e.wt.setxattr(f, b"user.color", b"red")
    assert e.wt.xattr_names(f) == [b"user.mimei.id", b"user.color"]
    assert e.wt.xattr_names(root) == [b"user.mimei.id"]
    assert e.wt.mimei_id_xattr(f) == mid.encode()
    # versions keep only the stored ones
    e.backup(mid)
    (entry,) = [x for x in e.tree(e.version_root(mid, 0).hash).entries if x.name == b"f"]
    assert entry.xattrs == ((b"user.color", b"red"),)


# ------------------------------------------------------------------ issue 10
def test_backup_importer_and_maintenance_leave_records_to_the_worktree():
    """Inode records, xattrs, pages and flag bits are written only by the worktree's
    modules: the others call its named operations."""
    for name in ("backup.py", "importer.py", "maintenance.py"):
        src = (ENGINE / name).read_text()
        for pattern in (r"d_inodes\b.*put|put\(.*d_inodes", r"\bd_xattrs", r"\bd_pages",
                        r"\.flags\s*[|&]?=", r"wt\.save\(", r"node\.\w+(, *node\.\w+)* *=[^=]",
                        r"\.(base|frozen|aux)\s*=[^=]"):
            assert not re.search(pattern, src), (name, pattern)


# ------------------------------------------------------------------ item 1
def test_restore_keeps_an_open_file_alive_and_names_what_it_removed(fs):
    e, mid, root = fs
    kept = mkfile(e, root, b"kept", b"v0")
    e.backup(mid)
    h = mkfile(e, root, b"h", b"")
    e.wt.write(h, 0, b"a\n")
    e.wt.write(kept, 0, b"v1")
    e.is_open = lambda ino: ino == h  # a mount holds h open
    removed = e.restore(mid, 0)
    # every name of cur's root is reported: h is gone, kept names a new inode
    assert sorted(removed) == [(root, b"h"), (root, b"kept")]
    assert [n for n, _ in e.wt.readdir(root)] == [b"kept"]
    assert read_all(e, e.wt.lookup(root, b"kept").ino) == b"v0"
    # the open h is an unlinked-but-open file: its accepted writes stay readable, and
    # more writes through it still land, until its last close frees it
    assert e.wt.getattr(h).nlink == 0
    e.wt.write(h, 2, b"b\n")
    assert read_all(e, h) == b"a\nb\n"
    e.is_open = lambda ino: False
    e.wt.forget(h)
    with pytest.raises(OSError) as x:
        e.wt.getattr(h)
    assert x.value.errno == errno.ENOENT
