"""Issue 11 on real mounts over a real small filesystem: a full disk, a full LMDB map,
a flipped byte in cur data, long names, sparse files, listed xattrs, restore under an
open file, and logs that never carry payloads.

Each store lives on a tmpfs this module mounts (and removes) for the test."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import MimeiFS, mounted, wait_for


@pytest.fixture
def small_fs():
    """A fresh tmpfs of 96 MiB at a temporary directory; unmounted afterwards."""
    d = tempfile.mkdtemp(prefix="mimeifs-tmpfs-", dir="/tmp")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0755", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


@pytest.fixture
def small_mfs(small_fs):
    m = MimeiFS(small_fs / "base")
    m.base.mkdir()
    with mounted(m):
        yield m


def _fill(path: Path, chunk: bytes) -> int:
    """Append ``chunk`` to ``path`` until the filesystem refuses; returns the errno."""
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                return e.errno


def _errno(fn, *a) -> int:
    try:
        fn(*a)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{getattr(fn, '__name__', fn)} succeeded")


# ------------------------------------------------------------------ items 3, 5
def test_a_full_disk_gives_enospc_deletes_work_and_it_still_mounts(small_mfs, small_fs):
    m = small_mfs
    mid = m.create("full")
    cur = m.cur(mid)
    (cur / "keep").write_bytes(b"kept bytes")
    # writers see ENOSPC, never EIO, and the daemon lives on
    assert _fill(cur / "big", os.urandom(1 << 20)) == errno.ENOSPC
    assert m.alive()
    assert (cur / "keep").read_bytes() == b"kept bytes"
    assert _errno((cur / "more").write_bytes, os.urandom(1 << 20)) == errno.ENOSPC
    # the log says why, once per failure, and never carries the written bytes (item 5)
    log = m.log_text()
    assert "filesystem is full" in log
    assert len(log) < 64 << 10, len(log)
    # deleting makes room: the delete commits and writers are let in again
    os.unlink(cur / "big")
    for name in ("more",):
        if (cur / name).exists():
            os.unlink(cur / name)
    (cur / "after").write_bytes(b"x" * 100_000)
    assert (cur / "after").read_bytes() == b"x" * 100_000
    # a full filesystem at mount time: the store still mounts and reads, and once the
    # pages it freed inside its file are used up, writers get ENOSPC again
    m.umount()
    filler = small_fs / "filler"
    assert _fill(filler, b"\0" * (1 << 16)) == errno.ENOSPC
    _fill(filler, b"\0" * 512)
    m.mount()
    cur = m.cur(mid)
    assert (cur / "keep").read_bytes() == b"kept bytes"
    assert _fill(cur / "big2", os.urandom(1 << 20)) == errno.ENOSPC
    assert (cur / "keep").read_bytes() == b"kept bytes"
    assert m.alive()
    # import ends with one line, no traceback
    src = small_fs / "src"
    os.unlink(filler)
    src.mkdir()
    (src / "a").write_bytes(os.urandom(200_000))
    assert _fill(small_fs / "filler2", b"\0" * (1 << 16)) == errno.ENOSPC
    _fill(small_fs / "filler2", b"\0" * 512)
    p = m.run("import", src, mid, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "full" in p.stderr
    # deleting inside the store makes room for the import, with the disk still full
    os.unlink(cur / "big2")
    m.run("import", src, mid)
    assert (cur / "a").read_bytes() == (src / "a").read_bytes()
    assert len(m.log_text()) < 64 << 10
    m.umount()
    os.unlink(small_fs / "filler2")


# ------------------------------------------------------------------ item 4
def test_a_small_map_grows_on_a_real_mount_and_remount_works(small_fs, monkeypatch):
    monkeypatch.setenv("MIMEIFS_MAP_SIZE", str(4 << 20))
    m = MimeiFS(small_fs / "base")
    m.base.mkdir()
    m.init()
    m.mount()
    try:
        mid = m.create("map")
        cur = m.cur(mid)
        data = os.urandom(24 << 20)  # six times the first map
        (cur / "f").write_bytes(data)
        assert (cur / "f").read_bytes() == data
        os.unlink(cur / "f")
        (cur / "g").write_bytes(data[:1 << 20])
        m.run("backup", mid)
        m.run("gc")
        m.umount()
        m.mount()
        assert (m.cur(mid) / "g").read_bytes() == data[:1 << 20]
        assert "Traceback" not in m.log_text()
    finally:
        m.cleanup(remove_mountpoint=True)


# ------------------------------------------------------------------ item 2
def test_a_flipped_byte_in_cur_data_is_eio_on_read_and_check_reports_it(small_mfs):
    m = small_mfs
    mid = m.create("flip")
    data = os.urandom(300_000)
    (m.cur(mid) / "f").write_bytes(data)
    assert m.run("check").returncode == 0
    m.umount()
    mdb = m.store / "lmdb" / "data.mdb"
    raw = bytearray(mdb.read_bytes())
    needle = data[100_000:100_064]
    hits = 0
    at = raw.find(needle)
    while at >= 0:  # every copy LMDB holds of that page
        raw[at + 7] ^= 0x01
        hits += 1
        at = raw.find(needle, at + 1)
    assert hits >= 1
    mdb.write_bytes(bytes(raw))
    m.mount()
    f = m.cur(mid) / "f"
    assert _errno(f.read_bytes) == errno.EIO
    with open(f, "rb") as fh:  # the pages around the bad one read fine
        assert fh.read(65536) == data[:65536]
    assert "checksum mismatch" in m.log_text()
    p = m.run("check", check=False)
    assert p.returncode == 1
    assert "page 1" in p.stdout + p.stderr
    assert m.alive()


# ------------------------------------------------------------------ item 13
def test_every_operation_on_a_256_byte_name_is_enametoolong(mimei):
    m, mid, cur = mimei
    long = "n" * 256
    (cur / "f").write_text("x")
    (cur / "d").mkdir()
    p = cur / long
    checks = {
        "stat": lambda: os.stat(p),
        "lstat": lambda: os.lstat(p),
        "chmod": lambda: os.chmod(p, 0o600),
        "chown": lambda: os.chown(p, 0, 0),
        "truncate": lambda: os.truncate(p, 0),
        "link": lambda: os.link(cur / "f", p),
        "rename from": lambda: os.rename(p, cur / "g"),
        "rename to": lambda: os.rename(cur / "f", p),
        "rmdir": lambda: os.rmdir(p),
        "unlink": lambda: os.unlink(p),
        "open": lambda: open(p).close(),
        "create": lambda: open(p, "w").close(),
        "mkdir": lambda: os.mkdir(p),
        "symlink": lambda: os.symlink("f", p),
        "deeper": lambda: os.stat(cur / "d" / long),
    }
    bad = {k: os.strerror(_errno(fn)) for k, fn in checks.items()
           if _errno(fn) != errno.ENAMETOOLONG}
    assert bad == {}
    (cur / ("n" * 255)).write_text("ok")
    assert (cur / ("n" * 255)).read_text() == "ok"


# ------------------------------------------------------------------ item 14
def test_a_sparse_file_in_cur_reports_the_blocks_it_holds(mimei):
    m, mid, cur = mimei
    f = cur / "sparse"
    with open(f, "wb") as fh:
        fh.truncate(3 << 30)
        fh.seek(1 << 30)
        fh.write(b"z" * 4096)
    st = os.stat(f)
    assert st.st_size == 3 << 30
    assert 8 <= st.st_blocks <= 128, st.st_blocks
    du = subprocess.run(["du", "-k", str(f)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) <= 64
    dense = cur / "dense"
    dense.write_bytes(os.urandom(2 << 20))
    assert os.stat(dense).st_blocks == (2 << 20) // 512


# ------------------------------------------------------------------ item 15
def test_listxattr_in_cur_names_user_mimei_id(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    assert "user.mimei.id" in os.listxattr(cur / "f")
    assert os.getxattr(cur / "f", "user.mimei.id") == mid.encode()
    os.setxattr(cur / "f", "user.color", b"red")
    assert sorted(os.listxattr(cur / "f")) == ["user.color", "user.mimei.id"]
    assert "user.mimei.id" in os.listxattr(cur)


# ------------------------------------------------------------------ item 1
def test_writes_through_an_open_file_survive_restore(mimei):
    m, mid, cur = mimei
    (cur / "kept").write_text("v0")
    m.backup(mid)
    fd = os.open(cur / "h", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"a\n")
        m.run("restore", mid, "0")
    finally:
        os.close(fd)
    # h is not in v/0: after restore its name resolves to what cur holds (nothing) ...
    assert sorted(os.listdir(cur)) == ["kept"]
    with open(cur / "h", "a") as f:  # ... so this creates a new h in cur
        f.write("b\n")
    assert (cur / "h").read_text() == "b\n"
    assert sorted(os.listdir(cur)) == ["h", "kept"]
    n = m.backup(mid)
    assert (m.v(mid, n) / "h").read_text() == "b\n"
    assert (cur / "kept").read_text() == "v0"


# ------------------------------------------------------------------ item 5
def test_logs_carry_sizes_never_payloads(mimei):
    from mimeifs.fuse.ops import brief
    line = brief((7, 0, b"\x01" * (1 << 20), memoryview(b"x" * 100), b"short"))
    assert line == "7, 0, <1048576 bytes>, <100 bytes>, b'short'"
    m, mid, cur = mimei
    ctrl = m.mnt / ".__mimeifs_ctrl__"
    before = len(m.log_text())
    payloads = [b"\xff" * 65000, b'{"token": "t1", "op": "' + b"A" * 65000 + b'"}',
                b'{"token": "t2", "op": "backup", "id": "' + mid.encode()
                + b'", "memo": ' + b"[" * 30000 + b"]" * 30000 + b"}"]
    for p in payloads:
        try:
            os.setxattr(ctrl, "user.mimeifs.cmd", p)
        except OSError:
            pass
    assert m.alive()
    assert len(m.log_text()) - before < 4096
