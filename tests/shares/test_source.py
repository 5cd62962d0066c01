"""A share's source directory kept in step with cur, seen through the mount with
``diff -r``; scheduled backups; a restart catches up; a vanished source stops the sync
without emptying cur."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest

from .conftest import wait_for


def _same(a, b) -> bool:
    return subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)],
                          capture_output=True).returncode == 0


def _diff(a, b) -> str:
    p = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True,
                       text=True)
    return p.stdout + p.stderr


def _in_step(src, share, what: str, timeout: float = 10.0) -> None:
    try:
        wait_for(lambda: _same(src, share), timeout, what, every=0.05)
    except AssertionError:
        raise AssertionError(f"{what}: not in step:\n{_diff(src, share)}") from None


@pytest.fixture
def source(sfs, tmp_path, request):
    """A source directory with a few files, shared as a share of the test's name."""
    src = tmp_path / "src"
    (src / "dir" / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "dir" / "b.txt").write_text("beta\n")
    (src / "dir" / "deep" / "c.bin").write_bytes(os.urandom(300_000))
    os.symlink("a.txt", src / "link")
    name = request.node.name.replace("[", "_").replace("]", "")[:40]
    sfs.run("share", "add", name, "--mark", name, "--source", src)
    share = sfs.shared(name)
    _in_step(src, share, "first sync")
    yield src, share, name
    try:
        os.unlink(sfs.folder / f"{name}.mmfs")
    except FileNotFoundError:
        pass


def test_changes_reach_the_share(sfs, source):
    src, share, name = source
    mid = sfs.shares()[name]["mimei"]
    (src / "new.txt").write_text("new\n")                    # create
    with open(src / "a.txt", "a") as f:                      # modify
        f.write("more\n")
    os.rename(src / "dir" / "b.txt", src / "b-moved.txt")    # rename a file
    os.rename(src / "dir" / "deep", src / "deep-moved")      # rename a tree
    os.remove(src / "link")                                  # delete
    os.makedirs(src / "made" / "below")                      # a new tree at once
    (src / "made" / "below" / "x").write_text("x\n")
    os.chmod(src / "new.txt", 0o600)                         # attributes
    _in_step(src, share, "after create/modify/rename/delete")
    assert _same(src, sfs.cur(mid))  # the same through mm/<id>/cur
    shutil.rmtree(src / "deep-moved")                        # delete a tree
    (src / "dir").rename(src / "dir2")
    (src / "dir2" / "inside").write_text("after the move\n")
    _in_step(src, share, "after rmtree and a directory rename")
    # the share of a source is read-only: the source is where to write
    with pytest.raises(OSError) as ei:
        (share / "w").write_text("no")
    assert ei.value.errno == errno.EROFS
    st = sfs.shares()[name]["sync"]
    assert st["mode"] == "inotify" and st["state"].startswith("in step") and not st["errors"]


def test_a_file_being_written_is_taken_when_complete(sfs, source):
    src, share, name = source
    big = src / "big.bin"
    data = os.urandom(8 << 20)
    seen_partial = []
    with open(big, "wb") as f:
        for i in range(8):
            f.write(data[i << 20:(i + 1) << 20])
            f.flush()
            time.sleep(0.4)  # slower than the sync's pause between events
            p = share / "big.bin"
            if p.exists():
                seen_partial.append(p.stat().st_size)
    assert seen_partial == [], f"a file still being written showed up: sizes {seen_partial}"
    _in_step(src, share, "after the big file was closed")
    with open(share / "big.bin", "rb") as f:
        assert f.read() == data
    # rewritten in place: the old content stays until the new one is complete
    with open(big, "r+b") as f:
        f.write(b"\0" * (1 << 20))
        f.flush()
        time.sleep(1.0)
        with open(share / "big.bin", "rb") as g:
            assert g.read(1 << 20) == data[:1 << 20]
    _in_step(src, share, "after the rewrite")


def test_many_files_and_a_restart_catch_up(sfs, source, tmp_path):
    src, share, name = source
    for i in range(300):
        (src / "dir" / f"f{i:03}").write_text(f"{i}\n" * (i + 1))
    _in_step(src, share, "300 new files")
    for i in range(0, 300, 7):
        os.utime(src / "dir" / f"f{i:03}", ns=(1, 10**18 + i))
    for i in range(0, 300, 11):
        os.remove(src / "dir" / f"f{i:03}")
    _in_step(src, share, "touched and deleted")


def test_changes_while_the_daemon_is_down_and_a_vanished_source(tmp_path):
    from .conftest import SharedFS
    m = SharedFS(tmp_path / "m")
    m.base.mkdir()
    m.init()
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("1\n")
    m.run("share", "add", "s", "--mark", "s", "--source", src)
    m.mount()
    try:
        _in_step(src, m.shared("s"), "first sync")
        m.umount()
        (src / "d" / "f").write_text("2\n")
        (src / "g").write_text("new while down\n")
        m.mount()
        _in_step(src, m.shared("s"), "caught up at start")
        # the source goes away: cur is kept, the state says why
        shutil.rmtree(src)
        m.wait_share("s", lambda d: (d.get("sync") or {}).get("state", "").startswith("stopped"),
                     "sync stopped")
        assert (m.shared("s") / "g").read_text() == "new while down\n"
        m.assert_alive()
    finally:
        m.cleanup(remove_mountpoint=True)


def test_scheduled_backups_only_when_cur_changed(sfs, tmp_path):
    src = tmp_path / "bsrc"
    src.mkdir()
    (src / "f").write_text("1\n")
    sfs.run("share", "add", "sched", "--mark", "sched", "--source", src, "--backup-every", "1s")
    mid = sfs.shares()["sched"]["mimei"]
    wait_for(lambda: len(sfs.log(mid)) >= 1, 10, "first scheduled backup")
    n = len(sfs.log(mid))
    time.sleep(2.5)  # nothing changed: no new version
    assert len(sfs.log(mid)) == n
    (src / "f").write_text("2\n")
    wait_for(lambda: len(sfs.log(mid)) == n + 1, 10, "a backup after a change")
    last = sfs.log(mid)[-1]
    assert last["memo"] == "backup_every 1s (share sched)"
    assert (sfs.v(mid, last["n"]) / "f").read_text() == "2\n"
    assert (sfs.mm(mid) / "last").resolve().name == str(last["n"])
    d = sfs.shares()["sched"]
    assert d["backup"]["last"]["n"] == last["n"]
    os.unlink(sfs.folder / "sched.mmfs")
