"""The view without a kernel (s3ql's practice: the operations without FUSE).

These run where /dev/fuse is missing: a real store, the real engine, the view's own
calls. What a path means, its attributes, its children, its bytes, the errors of
writes to what never changes, and a remote MiMei read through a fetcher.
"""

from __future__ import annotations

import errno
import stat

import pytest

from mimeifs.engine.errors import ChunkMissing, EngineError
from mimeifs.view import View
from mimeifs.view.nodes import FIXED_DIRS, vino

from .conftest import mkdir, mkfile, new_engine
from .test_fetch import StoreFetcher


@pytest.fixture
def proj(tmp_path):
    e = new_engine(tmp_path / "s")
    mid = e.create("fs", "proj")
    root = e.state(mid)["cur"]
    d = mkdir(e, root, b"docs")
    mkfile(e, d, b"a.txt", b"alpha\n")
    mkfile(e, root, b"big", bytes(range(256)) * 1000)
    e.backup(mid, memo="first")
    yield e, mid, View(e, owner_uid=1234)
    e.store.close()


def errno_of(fn, *a):
    with pytest.raises(EngineError) as ei:
        fn(*a)
    return ei.value.errno


def test_paths_resolve_to_the_same_nodes_as_lookups(proj):
    e, mid, v = proj
    n = v.resolve(f"mm/{mid}/v/0/docs/a.txt")
    assert n.kind == "ver" and n.n == 0 and n.entry.is_file
    assert v.read(n, 0, 100) == b"alpha\n"
    step = v.lookup(v.lookup(v.lookup(v.lookup(v.lookup(v.root(), b"mm"), mid.encode()), b"v"), b"0"), b"docs")
    assert v.lookup(step, b"a.txt").ino == n.ino
    assert v.xattrs(n)[b"user.mimei.hash"] == e.manifest(n.entry.hash).hash.hex().encode()
    assert v.resolve(f"/mm/{mid}/./cur/docs/a.txt").kind == "cur"
    assert v.read(v.resolve(f"mm/{mid}/cur/docs/a.txt"), 0, 3) == b"alp"


def test_attributes_and_listings(proj):
    e, mid, v = proj
    names = [n for n, _node, _a in v.children(v.root())]
    assert names == sorted(FIXED_DIRS)
    top = {n: a for n, _node, a in v.children(v.resolve(f"mm/{mid}"))}
    assert set(top) == {b"cur", b"v", b".refs", b".info", b"last"}
    assert stat.S_ISLNK(top[b"last"].mode) and top[b"v"].uid == 1234
    assert v.readlink(v.resolve(f"mm/{mid}/last")) == b"v/0"
    ver = v.resolve(f"mm/{mid}/v/0")
    a = v.attr(ver)
    assert stat.S_ISDIR(a.mode) and a.nlink == 3 and a.immutable
    kids = {n: (node, at) for n, node, at in v.children(ver)}
    assert kids[b"big"][1].size == 256_000 and kids[b"big"][0].ino == vino("ver", mid, 0, ver.ino, b"big")
    info = v.read(v.resolve(f"mm/{mid}/.info"), 0, 10_000)
    assert b'"mark": "proj"' in info and v.attr(v.resolve(f"mm/{mid}/.info")).generated


def test_errors_of_the_view(proj):
    e, mid, v = proj
    assert errno_of(v.resolve, f"mm/{mid}/v/7") == errno.ENOENT
    assert errno_of(v.resolve, f"mm/{mid}/v/00") == errno.ENOENT
    assert errno_of(v.resolve, "mm/../mm") == errno.ENOENT
    assert errno_of(v.resolve, "mm/" + "x" * 300) == errno.ENAMETOOLONG
    ver = v.resolve(f"mm/{mid}/v/0")
    f = v.resolve(f"mm/{mid}/v/0/docs/a.txt")
    assert errno_of(v.make, ver, b"new", stat.S_IFREG | 0o644, 0, 0) == errno.EROFS
    assert errno_of(v.write, f, 0, b"x") == errno.EROFS
    assert errno_of(v.open_check, f, True) == errno.EROFS
    assert errno_of(v.setattr, f) == errno.EROFS
    assert errno_of(v.unlink, ver, b"big") == errno.EROFS
    assert errno_of(v.lookup, f, b"x") == errno.ENOTDIR
    assert errno_of(v.read, ver, 0, 1) == errno.EISDIR
    assert errno_of(v.make, v.resolve("mm"), b"x", stat.S_IFDIR | 0o755, 0, 0) == errno.EROFS


def test_cur_writes_and_refs_through_the_view(proj):
    e, mid, v = proj
    cur = v.resolve(f"mm/{mid}/cur")
    n = v.make(cur, b"new.txt", stat.S_IFREG | 0o644, 0, 0)
    assert v.write(n, 0, b"hello") == 5
    assert v.read(v.resolve(f"mm/{mid}/cur/new.txt"), 0, 99) == b"hello"
    other = e.create("fs", "other")
    refs = v.resolve(f"mm/{mid}/.refs")
    assert errno_of(v.make, refs, b"x", stat.S_IFREG | 0o644, 0, 0) == errno.EPERM
    v.make(refs, other.encode(), stat.S_IFLNK | 0o777, 0, 0, target=b"../../" + other.encode())
    assert e.refs(mid)[0] == [other]
    assert v.readlink(v.resolve(f"mm/{mid}/.refs/{other}")) == f"../../{other}".encode()
    v.unlink(refs, other.encode())
    assert e.refs(mid)[0] == []


def test_a_remote_mimei_through_a_fetcher_and_without_one(proj, tmp_path):
    a, mid, _ = proj
    b = new_engine(tmp_path / "b")
    remote = type(b)(b.store, fetcher=StoreFetcher(a))
    v = View(remote)
    n = v.resolve(f"mm/{mid}/v/0/docs/a.txt")      # found, adopted, fetched
    assert v.read(n, 0, 100) == b"alpha\n"
    top = {name for name, _n, _a in v.children(v.resolve(f"mm/{mid}"))}
    assert b"cur" not in top and b"last" in top    # read-only: no cur
    # a store that holds the records but has no fetcher says what is missing: EIO
    c = new_engine(tmp_path / "c")
    c.adopt(a.records(mid))
    vc = View(c)
    with pytest.raises(ChunkMissing) as ei:
        vc.children(vc.resolve(f"mm/{mid}/v/0"))
    assert ei.value.errno == errno.EIO
