"""Focused engine tests: IDs, backup cost, dedup, check, gc, rm, Mac files, authorship,
file MiMei, large files. Real LMDB stores in tmp dirs; no mount."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import subprocess

import blake3
import pytest

from mimeifs import ids
from mimeifs.engine import blocks, maintenance
from mimeifs.engine.db import Store
from mimeifs.engine.importer import Importer
from mimeifs.engine.mimei import Engine, MiMeiError
from mimeifs.engine.worktree import PAGE

from .conftest import (DIR, FILE, MAP_SIZE, cur_snapshot, lookup_path, mkdir, mkfile, new_engine,
                       read_all, version_snapshot)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def entries(e: Engine, name: str) -> int:
    """Records of a sub-database; for ``blocks``, chunk index records (not packs)."""
    with e.store.read() as txn:
        if name == "blocks":
            return sum(not blocks.is_pack_key(k)
                       for k in txn.cursor(db=e.store.db(name)).iternext(values=False))
        return txn.stat(e.store.db(name))["entries"]


def make_tree(root, seed: int = 0) -> list[str]:
    """An OS tree of 300 small files in nested dirs (depth up to 3); returns file paths."""
    r = random.Random(seed)
    files = []

    def put(rel: str) -> None:
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(r.randbytes(r.randint(0, 3000)) + rel.encode())
        files.append(rel)

    os.makedirs(root, exist_ok=True)
    for i in range(10):
        put(f"r{i}.txt")
    for d in range(5):
        for i in range(10):
            os.makedirs(os.path.join(root, f"d{d}"), exist_ok=True)
            put(f"d{d}/f{i}")
        for s in range(3):
            os.makedirs(os.path.join(root, f"d{d}/s{s}"), exist_ok=True)
            for i in range(4):
                put(f"d{d}/s{s}/g{i}")
            for t in range(2):
                os.makedirs(os.path.join(root, f"d{d}/s{s}/t{t}"), exist_ok=True)
                for i in range(6):
                    put(f"d{d}/s{s}/t{t}/h{i}")
    os.symlink("d0/f0", os.path.join(root, "link"))
    assert len(files) == 300
    return files


N_DIRS = 1 + 5 + 5 * 3 + 5 * 3 * 2  # root, d*, d*/s*, d*/s*/t*


# ---------------------------------------------------------------------- IDs
def test_create_is_idempotent_and_ids_follow_the_formula(engine, tmp_path):
    e = engine
    a = e.create("fs", "photos")
    assert e.create("fs", "photos") == a
    assert ids.is_id(a)
    assert a == ids.mimei_id(e.node_id, "", "fs", "photos")
    assert e.names()["photos"] == a
    assert e.resolve("photos") == a and e.resolve(a) == a
    assert ids.mimei_id(e.node_id, "", "file", "photos") != a  # the type is part of the ID
    assert ids.mimei_id(e.node_id, "x", "fs", "photos") != a   # so is the app type
    # ... but a mark names one MiMei per author (issue 11 item 8): another type or app
    # type with a mark in use is refused, saying which MiMei has it
    for kw in ({"mimei_type": "file"}, {"mimei_type": "fs", "app_type": "x"}):
        with pytest.raises(MiMeiError) as ex:
            e.create(mark="photos", **kw)
        assert ex.value.errno == errno.EEXIST and a in str(ex.value)
    assert e.list() == [a]
    info = e.info(a)
    assert ids.verify_record(info, e.node_id) == e.node_id
    assert (info["author"], info["mimei_type"], info["mark"]) == (e.node_id, "fs", "photos")
    # a second create does not reset cur
    root = e.state(a)["cur"]
    mkfile(e, root, b"keep", b"data")
    assert e.create("fs", "photos") == a
    assert e.state(a)["cur"] == root
    assert read_all(e, e.wt.lookup(root, b"keep").ino) == b"data"
    # another node's key gives another ID for the same mark
    other = new_engine(tmp_path / "other")
    try:
        assert other.create("fs", "photos") != a
    finally:
        other.store.close()


def test_auto_marks_draw_fresh_ids(engine):
    e = engine
    got = {e.create("fs", "auto") for _ in range(5)}
    assert len(got) == 5
    for mid in got:
        mark = e.info(mid)["mark"]
        assert mark.startswith("auto-") and mark != "auto"
        assert e.names()[mark] == mid
        assert mid == ids.mimei_id(e.node_id, "", "fs", mark)
    assert set(e.list()) == got


@pytest.mark.parametrize("mark", ["", "a/b", "a\0b", "x" * 201])
def test_bad_marks_refused(engine, mark):
    with pytest.raises(MiMeiError) as ex:
        engine.create("fs", mark)
    assert ex.value.errno == errno.EINVAL


def test_unknown_type_refused(engine):
    with pytest.raises(MiMeiError) as ex:
        engine.create("nosuch", "m")
    assert ex.value.errno == errno.EINVAL


# ---------------------------------------------------------------------- backup cost
def test_backup_cost_follows_what_changed(engine, tmp_path):
    e = engine
    src = str(tmp_path / "src")
    files = make_tree(src)
    mid = e.create("fs", "tree")
    st = Importer(e).run(src, mid)
    assert st["files"] == 300 and not st["errors"]
    root = e.state(mid)["cur"]

    v0 = e.backup(mid, "first")
    # imported files are already chunked: the first backup only builds the trees
    assert v0["stats"]["files"] == 0
    assert v0["stats"]["trees"] == N_DIRS
    snap0 = version_snapshot(e, mid, 0)
    assert sorted(p for p, v in snap0.items() if v[0] == "f") == sorted(files)
    assert snap0["link"] == ("l", b"d0/f0")
    for rel in files[::17]:
        with open(os.path.join(src, rel), "rb") as f:
            assert snap0[rel][1] == f.read()
    assert v0["size"] == sum(os.path.getsize(os.path.join(src, p)) for p in files)

    # nothing changed: nothing built
    again = e.backup(mid)
    assert again["stats"] == {"new_bytes": 0, "files": 0, "trees": 0}
    assert again["root"] == v0["root"]

    # one file's bytes change at depth 3: one file re-chunked, trees = depth + 1
    ino = lookup_path(e, root, "d2/s1/t0/h3")
    e.wt.write(ino, 0, b"CHANGED")
    v2 = e.backup(mid)
    assert v2["stats"]["files"] == 1
    assert v2["stats"]["trees"] == 4
    assert 0 < v2["stats"]["new_bytes"] < 8000
    assert version_snapshot(e, mid, 2)["d2/s1/t0/h3"][1][:7] == b"CHANGED"
    assert version_snapshot(e, mid, 0)["d2/s1/t0/h3"] == snap0["d2/s1/t0/h3"]

    # a chmod at depth 2: no file re-chunked, 3 trees
    e.wt.setattr(lookup_path(e, root, "d1/s2/g1"), mode=0o600)
    v3 = e.backup(mid)
    assert v3["stats"] == {"new_bytes": 0, "files": 0, "trees": 3}
    assert version_snapshot(e, mid, 3)["d1/s2/g1"][2] == 0o600

    # re-importing the unchanged source skips every unchanged file and puts the two
    # changed ones back: the next version is v0 again, bit for bit
    st2 = Importer(e).run(src, mid)
    assert st2["skipped"] == 299 and st2["files"] == 1 and st2["new_bytes"] == 0
    v4 = e.backup(mid)
    assert v4["stats"]["files"] == 0 and v4["stats"]["trees"] == 6
    assert v4["root"] == v0["root"]


def test_second_import_of_same_tree_adds_no_bytes(engine, tmp_path):
    e = engine
    src = str(tmp_path / "src")
    make_tree(src, seed=3)
    a, b = e.create("fs", "a"), e.create("fs", "b")
    sa = Importer(e).run(src, a)
    ra = e.backup(a)
    assert sa["new_bytes"] > 0
    counts = {n: entries(e, n) for n in ("blocks", "manifests", "trees")}
    sb = Importer(e).run(src, b)
    assert sb["files"] == 300 and sb["new_bytes"] == 0
    rb = e.backup(b)
    assert rb["stats"]["new_bytes"] == 0
    assert rb["root"] == ra["root"]  # same content, same Merkle root
    assert {n: entries(e, n) for n in counts} == counts
    # the same bytes written by hand in a third MiMei: still nothing new
    c = e.create("fs", "c")
    rc = e.state(c)["cur"]
    with open(os.path.join(src, "d3/s0/t1/h2"), "rb") as f:
        data = f.read()
    mkfile(e, rc, b"copy", data)
    assert e.backup(c)["stats"]["new_bytes"] == 0
    assert entries(e, "blocks") == counts["blocks"]


def test_large_file_edit_dedups_unchanged_chunks(fs):
    e, mid, root = fs
    data = bytearray(rand(6 << 20, 7))
    ino = mkfile(e, root, b"big", bytes(data))
    first = e.backup(mid)["stats"]["new_bytes"]
    assert first > 5 << 20
    e.wt.write(ino, 3 << 20, b"x" * 100)
    data[3 << 20:(3 << 20) + 100] = b"x" * 100
    second = e.backup(mid)["stats"]["new_bytes"]
    assert 0 < second <= 2 * 256 * 1024 + 1024  # only the chunk(s) around the edit
    assert version_snapshot(e, mid, 1)["big"][1] == bytes(data)


# ---------------------------------------------------------------------- check
def _file_manifest(e, mid, n, name):
    t = e.tree(bytes.fromhex(e.version(mid, n)["root"]))
    return e.manifest(t.get(name).hash)


def test_check_clean_store(fs):
    e, mid, root = fs
    mkfile(e, root, b"f", rand(300_000, 1))
    e.backup(mid)
    out = maintenance.check(e)
    assert out["problems"] == []
    assert out["versions"] == 1 and out["chunks"] >= 2 and out["bytes"] == 300_000


@pytest.mark.parametrize("how", ["garbage", "truncated", "codec"])
def test_check_reports_corrupted_chunk(fs, how):
    e, mid, root = fs
    mkfile(e, root, b"rnd", rand(300_000, 2))
    mkfile(e, root, b"txt", b"compressible text line\n" * 20_000)
    e.backup(mid)
    for name in (b"rnd", b"txt"):
        m = _file_manifest(e, mid, 0, name)
        h = m.chunks[-1]
        with e.store.write() as txn:
            raw = bytes(txn.get(h, db=e.store.db("blocks")))
            if how == "garbage":
                bad = raw[:1] + bytes(len(raw) - 1)
            elif how == "truncated":
                bad = raw[:len(raw) // 2]
            else:
                bad = b"\x09" + raw[1:]
            txn.put(h, bad, db=e.store.db("blocks"))
        problems = maintenance.check(e)["problems"]
        assert any(h.hex() in p for p in problems), problems
    assert len(maintenance.check(e)["problems"]) >= 2


def test_check_reports_forged_version_record(fs):
    e, mid, root = fs
    mkfile(e, root, b"f", b"hello")
    e.backup(mid)
    e.backup(mid)
    key = bytes.fromhex(mid) + (1).to_bytes(4, "big")
    with e.store.write() as txn:
        rec = json.loads(txn.get(key, db=e.store.db("versions")))
        rec["size"] += 1000  # signature left as it was
        txn.put(key, ids.canonical(rec), db=e.store.db("versions"))
    problems = maintenance.check(e)["problems"]
    assert len(problems) == 1 and f"{mid} v/1" in problems[0], problems


def test_check_reports_record_signed_by_wrong_key_and_missing_tree(fs):
    e, mid, root = fs
    mkfile(e, root, b"f", b"hello")
    e.backup(mid)
    mkfile(e, root, b"g", b"more")
    e.backup(mid)
    # version 0 re-signed by a stranger: a valid signature, but not the author's
    stranger = ids.NodeKey.generate()
    key0 = bytes.fromhex(mid) + (0).to_bytes(4, "big")
    with e.store.write() as txn:
        rec = json.loads(txn.get(key0, db=e.store.db("versions")))
        txn.put(key0, ids.canonical(stranger.sign_record(rec)), db=e.store.db("versions"))
        txn.delete(bytes.fromhex(e.version(mid, 1)["root"]), db=e.store.db("trees"))
    problems = maintenance.check(e)["problems"]
    assert any(f"{mid} v/0" in p for p in problems), problems
    assert any(f"{mid} v/1" in p and "missing" in p for p in problems), problems


def test_check_survives_corrupt_chunk_shared_by_two_files(fs):
    e, mid, root = fs
    data = rand(1 << 20, 1)
    mkfile(e, root, b"f1", data)
    mkfile(e, root, b"f2", data + b"tail")   # same leading chunks, other content hash
    e.backup(mid)
    h = _file_manifest(e, mid, 0, b"f1").chunks[0]
    assert h == _file_manifest(e, mid, 0, b"f2").chunks[0]
    with e.store.write() as txn:   # truncate the pack holding it
        pid, _off, _n = blocks.decode_ref(h, txn.get(h, db=e.store.db("blocks")))
        raw = bytes(txn.get(blocks.pack_key(pid), db=e.store.db("blocks")))
        txn.put(blocks.pack_key(pid), raw[:100], db=e.store.db("blocks"))
    problems = maintenance.check(e)["problems"]
    assert any(h.hex() in p for p in problems)


# ---------------------------------------------------------------------- gc
def test_gc_after_rm_frees_blocks_and_keeps_the_rest(engine):
    e = engine
    a, b = e.create("fs", "a"), e.create("fs", "b")
    ra, rb = e.state(a)["cur"], e.state(b)["cur"]
    mkfile(e, ra, b"fa", rand(500_000, 10))
    mkfile(e, rb, b"fb", rand(500_000, 11))
    shared = rand(200_000, 12)
    mkfile(e, ra, b"shared", shared)
    mkfile(e, rb, b"shared", shared)
    e.backup(a)
    e.backup(b)
    e.wt.write(e.wt.lookup(ra, b"fa").ino, 0, b"new bytes")
    e.backup(a)
    snaps = [version_snapshot(e, a, n) for n in (0, 1)]
    before = entries(e, "blocks")

    assert maintenance.gc(e)["chunks_freed"] == 0  # everything is live
    e.rm(b)
    out = maintenance.gc(e)
    assert out["chunks_freed"] > 0 and out["bytes_freed"] > 400_000
    assert out["manifests_freed"] == 1 and out["trees_freed"] >= 1
    assert entries(e, "blocks") == before - out["chunks_freed"]
    # a's versions, including the content it shared with b, still read back
    assert [version_snapshot(e, a, n) for n in (0, 1)] == snaps
    assert cur_snapshot(e, ra) == snaps[1]
    assert maintenance.check(e)["problems"] == []
    assert maintenance.gc(e)["chunks_freed"] == 0


def test_gc_frees_overwritten_import_content(engine, tmp_path):
    e = engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(rand(700_000, 20))
    (src / "keep").write_bytes(rand(100_000, 21))
    mid = e.create("fs", "m")
    root = e.state(mid)["cur"]
    Importer(e).run(str(src), mid)
    # before any backup, gc must keep what cur's imported files point to
    assert maintenance.gc(e)["chunks_freed"] == 0
    assert read_all(e, e.wt.lookup(root, b"big").ino) == (src / "big").read_bytes()
    # overwrite the imported file entirely, then back up: the imported bytes are garbage
    ino = e.wt.lookup(root, b"big").ino
    new = rand(700_000, 22)
    e.wt.setattr(ino, size=0)
    for off in range(0, len(new), 128 * 1024):
        e.wt.write(ino, off, new[off:off + 128 * 1024])
    e.backup(mid)
    out = maintenance.gc(e)
    assert out["chunks_freed"] >= 2 and out["manifests_freed"] == 1
    assert out["bytes_freed"] > 600_000
    snap = version_snapshot(e, mid, 0)
    assert snap["big"][1] == new and snap["keep"][1] == (src / "keep").read_bytes()
    assert cur_snapshot(e, root) == snap
    assert maintenance.check(e)["problems"] == []


def test_gc_keeps_what_a_fork_shares_after_rm_of_origin(engine):
    e = engine
    a = e.create("fs", "a")
    ra = e.state(a)["cur"]
    mkfile(e, ra, b"f", rand(400_000, 30))
    d = mkdir(e, ra, b"dir")
    mkfile(e, d, b"g", b"g" * 100_000)
    e.backup(a)
    snap = version_snapshot(e, a, 0)
    c = e.fork(a, 0, "c")
    assert e.version(c, 0)["fork_of"] == {"mimei": a, "n": 0}
    e.rm(a)
    out = maintenance.gc(e)
    assert out["chunks_freed"] == 0
    assert version_snapshot(e, c, 0) == snap
    assert cur_snapshot(e, e.state(c)["cur"]) == snap
    assert maintenance.check(e)["problems"] == []


# ---------------------------------------------------------------------- references / rm
def test_rm_refused_while_referenced(engine):
    e = engine
    t, a = e.create("fs", "target"), e.create("fs", "src")
    e.add_ref(a, t)
    assert e.refs(a) == ([t], [])
    assert e.referrers(t) == [a]
    with pytest.raises(MiMeiError) as ex:
        e.rm(t)
    assert ex.value.errno == errno.EBUSY and a in str(ex.value)
    assert e.exists(t)
    # a version keeps the reference even after cur drops it
    assert e.backup(a)["refs"] == [t]
    e.del_ref(a, t)
    assert e.refs(a)[0] == []
    with pytest.raises(MiMeiError) as ex:
        e.rm(t)
    assert ex.value.errno == EBUSY_ and a in str(ex.value)
    with pytest.raises(MiMeiError) as ex:
        e.del_ref(a, t)
    assert ex.value.errno == errno.ENOENT
    with pytest.raises(MiMeiError) as ex:
        e.add_ref(a, a)
    assert ex.value.errno == errno.EINVAL
    # once the referrer is gone, the target can go
    e.rm(a)
    assert e.referrers(t) == []
    e.rm(t)
    assert not e.exists(t) and e.list() == []
    assert "target" not in e.names()
    with pytest.raises(MiMeiError) as ex:
        e.versions(t)
    assert ex.value.errno == errno.ENOENT
    with pytest.raises(MiMeiError) as ex:
        e.rm(t)
    assert ex.value.errno == errno.ENOENT


EBUSY_ = errno.EBUSY


def test_rm_frees_cur_inodes(engine):
    e = engine
    keep = e.create("fs", "keep")
    mkfile(e, e.state(keep)["cur"], b"k", b"k")
    before = {db: entries(e, db) for db in ("inodes", "dirents", "links", "pages", "xattrs")}
    assert before["pages"] == 1  # keep's file, not backed up
    m = e.create("fs", "gone")
    r = e.state(m)["cur"]
    d = mkdir(e, r, b"d")
    f = mkfile(e, d, b"f", rand(200_000, 3))
    e.wt.link(f, r, b"hard")
    e.wt.setxattr(f, b"user.x", b"1")
    e.backup(m)
    mkfile(e, r, b"dirty", b"not backed up")  # cur pages of the removed MiMei go too
    e.wt.setxattr(r, b"user.root", b"1")
    e.rm(m)
    assert {db: entries(e, db) for db in before} == before
    assert entries(e, "versions") == 0
    with pytest.raises(OSError) as ex:
        e.wt.getattr(f)
    assert ex.value.errno == errno.ENOENT


# ---------------------------------------------------------------------- Mac files
@pytest.mark.skipif(shutil.which("b3sum") is None, reason="b3sum not installed (tools/install.sh)")
@pytest.mark.parametrize("size", [0, 5, 300_000, 9 << 20])
def test_mac_id_equals_b3sum(engine, tmp_path, size):
    p = tmp_path / "mac.bin"
    data = rand(size, size)
    p.write_bytes(data)
    mac = engine.put_mac(str(p))
    out = subprocess.run(["b3sum", "--no-names", str(p)], capture_output=True, text=True, check=True)
    assert mac == out.stdout.strip()
    assert mac == blake3.blake3(data).hexdigest()
    assert engine.mac_list() == [mac]
    assert engine.read_content(bytes.fromhex(mac), 0, size + 1) == data
    assert maintenance.gc(engine)["chunks_freed"] == 0  # Mac files are live
    assert engine.read_content(bytes.fromhex(mac), 0, size + 1) == data


# ---------------------------------------------------------------------- authorship
def test_foreign_mimei_is_read_only(tmp_path):
    """The same store opened with another node key: its MiMei are not this node's."""
    e = new_engine(tmp_path / "a")
    mid = e.create("fs", "mine")
    root = e.state(mid)["cur"]
    f = mkfile(e, root, b"f", b"author's bytes")
    d = mkdir(e, root, b"d")
    e.backup(mid)
    t = e.create("fs", "other")
    e.store.close()

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.unlink(tmp_path / "b" / "node.key")
    ids.NodeKey.generate().save(str(tmp_path / "b" / "node.key"))
    e2 = Engine(Store.open(str(tmp_path / "b"), map_size=MAP_SIZE))
    try:
        assert e2.node_id != e.node_id
        wt = e2.wt
        # reads work
        assert read_all(e2, f) == b"author's bytes"
        assert version_snapshot(e2, mid, 0)["f"][1] == b"author's bytes"
        # every write to cur is EACCES
        for call in (lambda: wt.write(f, 0, b"x"),
                     lambda: wt.make(root, b"new", FILE, 0, 0),
                     lambda: wt.make(d, b"new", DIR, 0, 0),
                     lambda: wt.unlink(root, b"f"),
                     lambda: wt.unlink(root, b"d", rmdir=True),
                     lambda: wt.rename(root, b"f", root, b"g"),
                     lambda: wt.link(f, root, b"h"),
                     lambda: wt.setattr(f, size=0),
                     lambda: wt.setattr(f, mode=0o600),
                     lambda: wt.setxattr(f, b"user.a", b"1"),
                     lambda: Importer(e2).run(str(tmp_path), mid)):
            with pytest.raises(OSError) as ex:
                call()
            assert ex.value.errno == errno.EACCES
        for call in (lambda: e2.backup(mid), lambda: e2.restore(mid, 0), lambda: e2.release(mid, 0),
                     lambda: e2.add_ref(mid, t)):
            with pytest.raises(MiMeiError) as ex:
                call()
            assert ex.value.errno == errno.EACCES
        assert read_all(e2, f) == b"author's bytes"
        assert [v["n"] for v in e2.versions(mid)] == [0]
        # the author's signatures still verify on the other node
        assert maintenance.check(e2)["problems"] == []
        # this node's own MiMei are writable
        own = e2.create("fs", "mine")
        assert own != mid
        mkfile(e2, e2.state(own)["cur"], b"x", b"y")
        assert e2.backup(own)["n"] == 0
    finally:
        e2.store.close()


# ---------------------------------------------------------------------- file MiMei
def test_file_mimei_round_trip(engine, tmp_path):
    e = engine
    mid = e.create("file", "doc")
    ino = e.state(mid)["cur"]
    node = e.wt.getattr(ino)
    assert stat.S_ISREG(node.mode) and node.size == 0
    v1 = rand(200_000, 40)
    e.wt.write(ino, 0, v1)
    r0 = e.backup(mid)
    assert r0["kind"] == "file" and r0["size"] == len(v1)
    assert r0["root"] == blake3.blake3(v1).hexdigest()  # a file version's root is its Mac ID
    root = e.version_root(mid, 0)
    assert root.is_file and root.size == len(v1)
    assert e.read_content(root.hash, 0, len(v1) + 10) == v1
    assert e.read_content(root.hash, PAGE - 3, 10) == v1[PAGE - 3:PAGE + 7]

    e.wt.write(ino, 100, b"patch")
    e.wt.setattr(ino, size=150_000)
    v2 = v1[:100] + b"patch" + v1[105:150_000]
    assert read_all(e, ino) == v2
    r1 = e.backup(mid)
    assert r1["n"] == 1 and r1["size"] == 150_000
    assert e.read_content(e.version_root(mid, 1).hash, 0, 1 << 20) == v2
    assert e.read_content(e.version_root(mid, 0).hash, 0, 1 << 20) == v1

    e.restore(mid, 0)
    assert read_all(e, ino) == v1
    assert e.backup(mid)["stats"]["new_bytes"] == 0
    fork = e.fork(mid, 1, "doc2")
    assert e.info(fork)["mimei_type"] == "file"
    assert read_all(e, e.state(fork)["cur"]) == v2

    # importing an OS file into a file MiMei
    p = tmp_path / "in.bin"
    p.write_bytes(b"imported " * 1000)
    Importer(e).run(str(p), mid)
    assert read_all(e, ino) == p.read_bytes()
    assert e.backup(mid)["root"] == blake3.blake3(p.read_bytes()).hexdigest()
    # a file MiMei has no directory operations
    with pytest.raises(OSError) as ex:
        e.wt.make(ino, b"x", FILE, 0, 0)
    assert ex.value.errno == errno.ENOTDIR
    assert maintenance.check(e)["problems"] == []


# ---------------------------------------------------------------------- large files
def test_large_files_written_in_pieces(fs):
    e, mid, root = fs
    piece = 128 * 1024
    sizes = {b"big1": 24 << 20, b"big2": (20 << 20) + 12345}
    want = {}
    for k, (name, size) in enumerate(sizes.items()):
        data = rand(size, 50 + k)
        if k == 1:  # half compressible, half random
            data = (b"abcdefgh" * (size // 16) + data)[:size]
        assert len(data) == size
        want[name] = data
        ino = mkfile(e, root, name)
        for off in range(0, size, piece):
            assert e.wt.write(ino, off, data[off:off + piece]) == len(data[off:off + piece])
        assert e.wt.getattr(ino).size == size
    for name, data in want.items():
        ino = e.wt.lookup(root, name).ino
        got = b"".join(e.wt.read(ino, off, piece) for off in range(0, len(data), piece))
        assert got == data
    rec = e.backup(mid)
    assert rec["size"] == sum(sizes.values()) and rec["stats"]["files"] == 2
    t = e.tree(bytes.fromhex(rec["root"]))
    for name, data in want.items():
        en = t.get(name)
        assert en.size == len(data) and en.hash == blake3.blake3(data).digest()
        got = b"".join(e.read_content(en.hash, off, 1 << 20) for off in range(0, len(data), 1 << 20))
        assert got == data
        ino = e.wt.lookup(root, name).ino
        assert e.wt.read(ino, len(data) - 1000, 5000) == data[-1000:]  # clean cur reads the DAG
    # an edit in the middle of a clean large file
    ino = e.wt.lookup(root, b"big1").ino
    e.wt.write(ino, 10 << 20, b"\xff" * piece)
    d1 = bytearray(want[b"big1"])
    d1[10 << 20:(10 << 20) + piece] = b"\xff" * piece
    rec2 = e.backup(mid)
    assert rec2["stats"]["files"] == 1 and rec2["stats"]["new_bytes"] < 1 << 20
    en = e.tree(bytes.fromhex(rec2["root"])).get(b"big1")
    assert en.hash == blake3.blake3(d1).digest()
    assert e.read_content(en.hash, (10 << 20) - 10, piece + 20) == bytes(d1[(10 << 20) - 10:(10 << 20) + piece + 10])
    assert maintenance.check(e)["problems"] == []


# ---------------------------------------------------------------------- POSIX edge cases
def test_zero_length_write_keeps_size(fs):
    e, mid, root = fs
    ino = mkfile(e, root, b"f", b"abc")
    assert e.wt.write(ino, 1000, b"") == 0
    assert e.wt.getattr(ino).size == 3


def test_exchange_with_own_descendant_refused(fs):
    e, mid, root = fs
    a = mkdir(e, root, b"a")
    b = mkdir(e, a, b"b")
    with pytest.raises(OSError) as ex:
        e.wt.rename(a, b"b", root, b"a", 2)
    assert ex.value.errno == errno.EINVAL
    assert e.wt.lookup(root, b"a").ino == a and e.wt.lookup(a, b"b").ino == b


def test_rename_over_existing_file_is_atomic_replace(fs):
    e, mid, root = fs
    old = mkfile(e, root, b"doc", b"old contents")
    tmp = mkfile(e, root, b"doc.tmp", b"new contents")
    e.backup(mid)
    e.wt.rename(root, b"doc.tmp", root, b"doc")
    assert [n for n, _ in e.wt.readdir(root)] == [b"doc"]
    assert e.wt.lookup(root, b"doc").ino == tmp
    with pytest.raises(OSError) as ex:
        e.wt.getattr(old)
    assert ex.value.errno == errno.ENOENT
    e.backup(mid)
    assert version_snapshot(e, mid, 1)["doc"][1] == b"new contents"
    assert version_snapshot(e, mid, 0)["doc"][1] == b"old contents"


def test_shrink_then_grow_reads_zeros_over_clean_base(fs):
    e, mid, root = fs
    data = rand(5 * PAGE + 123, 60)
    ino = mkfile(e, root, b"f", data)
    e.backup(mid)  # the file is now clean: its bytes come from the DAG
    for cut in (3 * PAGE, PAGE + 7, 0):
        e.wt.setattr(ino, size=cut)
        e.wt.setattr(ino, size=len(data))
        want = data[:cut] + bytes(len(data) - cut)
        assert read_all(e, ino) == want
        rec = e.backup(mid)
        en = e.tree(bytes.fromhex(rec["root"])).get(b"f")
        assert e.read_content(en.hash, 0, len(data) + 1) == want
        data = want


def test_names_and_errors(fs):
    e, mid, root = fs
    f = mkfile(e, root, b"f", b"x")
    for bad in (b"", b".", b"..", b"a/b", b"a\0b"):
        with pytest.raises(OSError) as ex:
            e.wt.make(root, bad, FILE, 0, 0)
        assert ex.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ex:
        e.wt.make(root, b"n" * 256, FILE, 0, 0)
    assert ex.value.errno == errno.ENAMETOOLONG
    mkfile(e, root, b"n" * 255)
    with pytest.raises(OSError) as ex:
        e.wt.lookup(f, b"x")
    assert ex.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as ex:
        e.wt.read(root, 0, 1)
    assert ex.value.errno == errno.EISDIR
    with pytest.raises(OSError) as ex:
        e.wt.write(f, -1, b"x")
    assert ex.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ex:
        e.wt.getxattr(f, b"user.none")
    assert ex.value.errno == errno.ENODATA
    e.wt.setxattr(f, b"user.a", b"1")
    with pytest.raises(OSError) as ex:
        e.wt.setxattr(f, b"user.a", b"2", 1)  # XATTR_CREATE
    assert ex.value.errno == errno.EEXIST
    with pytest.raises(OSError) as ex:
        e.wt.setxattr(f, b"user.b", b"2", 2)  # XATTR_REPLACE
    assert ex.value.errno == errno.ENODATA
    assert e.wt.listxattr(f) == [b"user.a"]
    other = e.create("fs", "other")
    with pytest.raises(OSError) as ex:
        e.wt.rename(root, b"f", e.state(other)["cur"], b"f")
    assert ex.value.errno == errno.EXDEV
    with pytest.raises(OSError) as ex:
        e.wt.link(f, e.state(other)["cur"], b"f")
    assert ex.value.errno == errno.EXDEV


# ---------------------------------------------------------------------- import / orphans
def test_import_delete_reaches_next_version(engine, tmp_path):
    e = engine
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_bytes(b"a")
    (src / "sub" / "b").write_bytes(b"b")
    mid = e.create("fs", "m")
    root = e.state(mid)["cur"]
    Importer(e).run(str(src), mid)
    e.backup(mid)
    (src / "sub" / "b").unlink()
    assert Importer(e, delete=True).run(str(src), mid)["removed"] == 1
    assert [n for n, _ in e.wt.readdir(e.wt.lookup(root, b"sub").ino)] == [b"a"]
    e.backup(mid)
    assert version_snapshot(e, mid, 1) == cur_snapshot(e, root)


def test_import_keeps_types_modes_links_and_xattrs(engine, tmp_path):
    e = engine
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_bytes(b"x" * 70_000)
    os.chmod(src / "d" / "x", 0o640)
    os.symlink("d/x", src / "ln")
    os.mkfifo(src / "fifo")
    try:
        os.setxattr(src / "d" / "x", "user.tag", b"v")
        has_xattr = True
    except OSError:
        has_xattr = False
    mid = e.create("fs", "m")
    root = e.state(mid)["cur"]
    Importer(e).run(str(src), mid)
    x = e.wt.lookup(lookup_path(e, root, "d"), b"x")
    assert stat.S_IMODE(x.mode) == 0o640 and x.mtime_ns == os.stat(src / "d" / "x").st_mtime_ns
    assert read_all(e, x.ino) == b"x" * 70_000
    assert e.wt.readlink(e.wt.lookup(root, b"ln").ino) == b"d/x"
    assert stat.S_ISFIFO(e.wt.lookup(root, b"fifo").mode)
    rec = e.backup(mid)
    t = e.tree(bytes.fromhex(rec["root"]))
    assert stat.S_ISFIFO(t.get(b"fifo").mode) and t.get(b"ln").target == b"d/x"
    if has_xattr:
        assert e.wt.getxattr(x.ino, b"user.tag") == b"v"
        assert dict(e.tree(t.get(b"d").hash).get(b"x").xattrs) == {b"user.tag": b"v"}
    # the source turns a file into a directory and retargets the symlink
    (src / "d" / "x").unlink()
    (src / "d" / "x").mkdir()
    (src / "d" / "x" / "inner").write_bytes(b"in")
    os.unlink(src / "ln")
    os.symlink("elsewhere", src / "ln")
    Importer(e).run(str(src), mid)
    e.backup(mid)
    snap = version_snapshot(e, mid, 1)
    assert snap["d/x"] == ("d",) and snap["d/x/inner"][1] == b"in"
    assert snap["ln"] == ("l", b"elsewhere")
    assert snap == cur_snapshot(e, root)


def test_unlinked_open_file_stays_readable_until_forget(fs):
    e, mid, root = fs
    f = mkfile(e, root, b"f", b"hello" * 30_000)
    e.backup(mid)
    held = {f}
    e.is_open = lambda ino: ino in held
    e.wt.unlink(root, b"f", is_open=e.is_open)
    assert e.wt.getattr(f).nlink == 0
    e.wt.write(f, 0, b"HELLO")
    assert e.wt.read(f, 0, 10) == b"HELLOhello"
    rec = e.backup(mid)
    assert e.tree(bytes.fromhex(rec["root"])).entries == []
    maintenance.gc(e)  # the orphan's base content is still live
    assert e.wt.read(f, 149_995, 10) == b"hello"
    held.clear()
    e.wt.forget(f)
    with pytest.raises(OSError) as ex:
        e.wt.getattr(f)
    assert ex.value.errno == errno.ENOENT
    assert version_snapshot(e, mid, 0)["f"][1] == b"hello" * 30_000
