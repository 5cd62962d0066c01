"""The seams at a real mount: a MiMei whose objects this store lacks answers EIO, never
wrong bytes and never a dead daemon; the headless daemon (``mimeifs serve``) starts and
stops like the mounted one."""

from __future__ import annotations

import errno
import os

import pytest

from mimeifs.engine.db import Store
from mimeifs.engine.mimei import Engine

from .conftest import MimeiFS, pid_alive, wait_for


def test_missing_objects_are_eio_at_the_mount_and_the_daemon_lives(tmp_path):
    a = Engine(Store.create(str(tmp_path / "a"), map_size=1 << 32))
    mid = a.create("fs", "far")
    root = a.state(mid)["cur"]
    f = a.wt.make(root, b"f.txt", 0o100644, 0, 0)
    a.wt.write(f.ino, 0, b"far away\n")
    a.backup(mid)
    recs = a.records(mid)
    a.store.close()

    (tmp_path / "b").mkdir()
    m = MimeiFS(tmp_path / "b")
    m.init()
    b = Engine(Store.open(str(m.store)))
    b.adopt(recs)                     # the records, verified; none of the objects
    b.store.close()
    m.mount()
    try:
        top = set(os.listdir(m.mm(mid)))
        assert "cur" not in top and "last" in top and "v" in top
        with pytest.raises(OSError) as ei:
            os.listdir(m.v(mid, 0))
        assert ei.value.errno == errno.EIO
        assert pid_alive(m.daemon_pid())
        assert "missing tree" in m.log_tail()
        with pytest.raises(OSError) as ei:
            (m.v(mid, 0) / "x").write_text("no")
        assert ei.value.errno in (errno.EIO, errno.EROFS)
    finally:
        m.cleanup()


def test_headless_serve_and_stop(tmp_path):
    (tmp_path / "h").mkdir()
    m = MimeiFS(tmp_path / "h")
    m.init()
    out = m.run("serve").stdout
    assert "serving" in out
    info = m.mount_info()
    try:
        _serve_checks(m, info)
    finally:
        if pid_alive(info["pid"]):
            os.kill(info["pid"], 9)


def _serve_checks(m, info):
    assert info["mountpoint"] is None and pid_alive(info["pid"])
    again = m.run("serve", check=False)
    assert again.returncode == 1 and "already served headless" in again.stderr
    busy = m.run("mount", m.mnt, check=False)
    assert busy.returncode == 1 and "already served headless" in busy.stderr
    # commands work on the store beside it
    mid = m.create("beside")
    assert m.backup(mid) == 0
    assert "stopped daemon" in m.run("stop").stdout
    wait_for(lambda: not pid_alive(info["pid"]), 10, "headless daemon exit")
    assert m.mount_info() is None
