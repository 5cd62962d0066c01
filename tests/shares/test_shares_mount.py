"""Shares at a real mount: defined in the store's folder or written through the mount,
edited, removed; what they let write; every bad file refused with the daemon up; a
share of another author's MiMei."""

from __future__ import annotations

import errno
import json
import os

import pytest

from mimeifs.engine.db import Store
from mimeifs.engine.mimei import Engine

from .conftest import SharedFS, wait_for


def _write(path, text: str) -> None:
    with open(path, "w") as f:  # create + write + close, as cp or an editor does
        f.write(text)


def test_share_defined_in_the_folder_and_through_the_mount(sfs):
    # 1. the store's folder, through the CLI
    out = sfs.run("share", "add", "alpha", "--mark", "alpha").stdout
    assert str(sfs.folder / "alpha.mmfs") in out and "shared at" in out
    assert sfs.shared("alpha").is_dir()
    mid = sfs.shares()["alpha"]["mimei"]
    (sfs.cur(mid) / "a.txt").write_text("from mm\n")
    assert (sfs.shared("alpha") / "a.txt").read_text() == "from mm\n"

    # 2. written to MNT/shared/NAME.mmfs: appears at once, file lands in the folder
    _write(sfs.shared("beta.mmfs"), 'mark = "beta"\n')
    assert sfs.shared("beta").is_dir()
    assert (sfs.folder / "beta.mmfs").read_text() == 'mark = "beta"\n'
    assert sfs.shared("beta.mmfs").read_text() == 'mark = "beta"\n'
    names = set(os.listdir(sfs.shared()))
    assert {"alpha", "alpha.mmfs", "beta", "beta.mmfs"} <= names
    (sfs.shared("beta") / "b.txt").write_text("via share\n")
    bid = sfs.shares()["beta"]["mimei"]
    assert (sfs.cur(bid) / "b.txt").read_text() == "via share\n"

    # 3. edited through the mount: another MiMei at once
    _write(sfs.shared("beta.mmfs"), f'mimei = "{mid}"\n')
    assert sorted(os.listdir(sfs.shared("beta"))) == ["a.txt"]
    # edited in the folder (an editor's rename over it): the watch takes it
    tmp = sfs.folder / ".beta.mmfs.swp"
    tmp.write_text('mark = "beta"\n')
    os.rename(tmp, sfs.folder / "beta.mmfs")
    wait_for(lambda: sorted(os.listdir(sfs.shared("beta"))) == ["b.txt"], 5, "edit in folder")

    # 4. removed both ways: the share goes, the MiMei stays
    os.unlink(sfs.shared("beta.mmfs"))
    assert not (sfs.folder / "beta.mmfs").exists()
    wait_for(lambda: not sfs.shared("beta").exists(), 2, "share gone after rm in the mount")
    sfs.run("share", "rm", "alpha")
    wait_for(lambda: not sfs.shared("alpha").exists(), 5, "share gone after rm in the folder")
    assert (sfs.cur(bid) / "b.txt").read_text() == "via share\n"
    assert (sfs.cur(mid) / "a.txt").exists()
    assert "alpha" not in sfs.shares() and "beta" not in sfs.shares()
    sfs.assert_alive()


def test_what_a_share_lets_write(sfs):
    sfs.run("share", "add", "rw", "--mark", "rw")
    mid = sfs.shares()["rw"]["mimei"]
    d = sfs.shared("rw")
    os.makedirs(d / "sub")
    (d / "sub" / "f").write_text("1")
    os.rename(d / "sub" / "f", d / "g")
    os.symlink("g", d / "link")
    assert (sfs.cur(mid) / "g").read_text() == "1" and os.readlink(sfs.cur(mid) / "link") == "g"
    sfs.backup(mid)

    # readonly: the same MiMei, writes refused; toggled back, writable again
    _write(sfs.shared("rw.mmfs"), 'mark = "rw"\nreadonly = true\n')
    with pytest.raises(OSError) as ei:
        (d / "h").write_text("no")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(OSError) as ei:
        os.unlink(d / "g")
    assert ei.value.errno == errno.EROFS
    assert (d / "g").read_text() == "1"
    _write(sfs.shared("rw.mmfs"), 'mark = "rw"\n')
    (d / "h").write_text("yes")

    # a version: read-only, shows that version
    _write(sfs.shared("rw.mmfs"), 'mark = "rw"\nversion = 0\n')
    assert sorted(os.listdir(d)) == ["g", "link", "sub"]
    with pytest.raises(OSError) as ei:
        (d / "g").write_text("2")
    assert ei.value.errno == errno.EROFS
    assert os.getxattr(d / "g", "user.mimei.version") == b"0"

    # shared/ itself takes files only
    with pytest.raises(OSError) as ei:
        os.mkdir(sfs.shared("adir"))
    assert ei.value.errno == errno.EPERM
    with pytest.raises(OSError) as ei:
        os.rmdir(d)
    assert ei.value.errno == errno.EPERM
    os.unlink(sfs.shared("rw.mmfs"))
    sfs.assert_alive()


def test_every_bad_file_is_refused_and_the_daemon_stays_up(sfs, tmp_path):
    sfs.run("share", "add", "good", "--mark", "good")
    bad = {
        "nottoml": ("mark = = 1\n", "not TOML"),
        "unknown": ('mark = "x"\nsorce = "/tmp"\n', "line 2: unknown key 'sorce'"),
        "badid": ('mimei = "1234"\n', "line 1: mimei must be a MiMei ID"),
        "nosource": (f'mark = "ns"\nsource = "{tmp_path}/missing"\n', "does not exist"),
        "wrongtype": ('mark = "x"\nreplicas = "two"\n', "line 2: replicas must be an integer"),
        "othercur": ('mimei = "%s"\nversion = "cur"\n' % ("ab" * 20), "cur is not kept here"),
        "intostore": (f'mark = "x"\nsource = "{sfs.store}"\n', "overlaps"),
    }
    for name, (text, _) in bad.items():
        _write(sfs.shared(f"{name}.mmfs"), text)  # through the mount
    (sfs.folder / "binary.mmfs").write_bytes(b"\x00\xff garbage")  # in the folder
    bad["binary"] = (None, "not UTF-8")
    st = sfs.wait_share("binary", lambda d: d.get("error"), "binary refused")
    st = sfs.shares()
    for name, (_, why) in bad.items():
        assert not st[name]["ok"], name
        assert why in st[name]["error"], (name, st[name]["error"])
        assert not sfs.shared(name).exists(), name
    assert st["good"]["ok"] and sfs.shared("good").is_dir()
    # a name with '/' cannot even be written
    p = sfs.run("share", "add", "a/b", "--mark", "x", check=False)
    assert p.returncode == 1 and "bad share name" in p.stderr
    # the log says why, and the human listing too
    log = sfs.log_text()
    assert "share unknown refused" in log and "unknown key 'sorce'" in log
    text = sfs.run("shares").stdout
    assert "badid: REFUSED: line 1: mimei must be a MiMei ID" in text
    # mended through the mount: appears
    _write(sfs.shared("unknown.mmfs"), 'mark = "x"\n')
    assert sfs.shared("unknown").is_dir()
    # a source directory made later: the share appears within the recheck period
    os.makedirs(tmp_path / "missing")
    sfs.wait_share("nosource", lambda d: d["ok"], "share with a new source", timeout=25)
    for name in list(bad) + ["good"]:
        os.unlink(sfs.folder / f"{name}.mmfs")
    sfs.assert_alive()


def _copy_mimei(src: Engine, dst: Engine, mid: str) -> None:
    """What a network node's replication would do: the signed records, then every
    object of every version (verified by accept)."""
    dst.adopt(src.records(mid))
    wants, trees = [], []
    for rec in src.versions(mid):
        trees.append(bytes.fromhex(rec["root"]))
    while trees:
        h = trees.pop()
        wants.append(("tree", h))
        for e in src.tree(h).entries:
            if e.is_dir:
                trees.append(e.hash)
            elif e.is_file:
                wants.append(("manifest", e.hash))
                wants += [("chunk", c) for c in src.manifest(e.hash).chunks]
    dst.chunks.accept(src.chunks.export(wants))


def test_share_of_another_authors_mimei(tmp_path):
    a = Engine(Store.create(str(tmp_path / "a"), map_size=1 << 32))
    mid = a.create("fs", "theirs")
    root = a.state(mid)["cur"]
    f = a.wt.make(root, b"hello.txt", 0o100644, 0, 0)
    a.wt.write(f.ino, 0, b"from another node\n")
    a.backup(mid)

    (tmp_path / "b").mkdir()
    m = SharedFS(tmp_path / "b")
    m.init()
    m.mount()
    try:
        _write(m.shared("theirs.mmfs"), f'mimei = "{mid}"\n')
        d = m.wait_share("theirs", lambda d: d.get("available"), "availability")
        assert d["ok"] and d["version"] == "last" and d["readonly"]
        assert d["available"] == "not available: no provider"
        assert "not available: no provider" in m.run("shares").stdout
        assert not m.shared("theirs").exists()

        # the daemon stopped, its objects copied in (as replication would), served again
        m.umount()
        b = Engine(Store.open(str(m.store)))
        _copy_mimei(a, b, mid)
        b.store.close()
        m.mount()
        assert (m.shared("theirs") / "hello.txt").read_text() == "from another node\n"
        with pytest.raises(OSError) as ei:
            (m.shared("theirs") / "x").write_text("no")
        assert ei.value.errno == errno.EROFS
        m.wait_share("theirs", lambda d: d.get("available") == "available", "available")
        # a newer version there, adopted here: the share shows it
        a.wt.write(f.ino, 0, b"newer version!!!!!\n")
        a.backup(mid)
        m.umount()
        b = Engine(Store.open(str(m.store)))
        _copy_mimei(a, b, mid)
        b.store.close()
        m.mount()
        assert (m.shared("theirs") / "hello.txt").read_text() == "newer version!!!!!\n"
    finally:
        m.cleanup(remove_mountpoint=True)
        a.store.close()


def test_shares_listing_without_a_daemon_and_headless(tmp_path):
    m = SharedFS(tmp_path)
    m.init()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    m.run("share", "add", "s", "--mark", "s", "--source", src, "--backup-every", "1h",
          "--replicas", "2")
    (m.folder / "bad.mmfs").write_text("nope\n")
    p = m.run("shares")
    assert "no daemon serves" in p.stderr
    assert "bad: REFUSED" in p.stdout and "not kept in step: no daemon runs" in p.stdout
    out = json.loads(m.run("shares", "--json").stdout)
    assert out["daemon"] is False
    # headless: the source is kept in step without a mount
    m.run("serve")
    try:
        d = m.wait_share("s", lambda d: (d.get("sync") or {}).get("state") == "in step", "sync")
        assert d["replicas"] == 2 and "no network node" in d["replicas_note"]
        assert d["backup_every"] == "1h"
    finally:
        m.run("stop")


def test_a_file_unlinked_while_open_through_a_share_stays_readable(sfs):
    sfs.run("share", "add", "open", "--mark", "open")
    d = sfs.shared("open")
    (d / "f").write_text("still here\n")
    with open(d / "f") as f:
        os.unlink(d / "f")
        assert not (d / "f").exists()
        assert f.read() == "still here\n"
    assert os.listdir(d) == []
    os.unlink(sfs.shared("open.mmfs"))
