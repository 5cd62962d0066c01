"""Errors are proper errno values, and the daemon outlives every bad request."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil

import pytest

from mimeifs.ids import NodeKey

from .conftest import pid_alive, wait_for


def _errno(fn, *a, **kw) -> int:
    try:
        fn(*a, **kw)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__}{a} succeeded")


@pytest.fixture
def versioned(mimei):
    """A MiMei with v/0 (a dir, a file, a symlink), released, plus a Mac file."""
    m, mid, cur = mimei
    (cur / "d").mkdir()
    (cur / "d" / "f").write_text("data")
    (cur / "top").write_text("top")
    os.symlink("top", cur / "sl")
    m.backup(mid)
    m.run("release", mid)
    wait_for(lambda: os.path.islink(m.mm(mid) / "release"), 10, "release link")
    return m, mid, cur


# ------------------------------------------------------------------ ENOENT
def test_enoent_unknown_id_bad_paths_and_versions(versioned):
    m, mid, cur = versioned
    unknown = secrets.token_hex(20)
    assert _errno(os.stat, m.mnt / "mm" / unknown) == errno.ENOENT
    assert _errno(os.listdir, m.mnt / "mm" / unknown / "cur") == errno.ENOENT
    assert _errno(os.stat, m.mnt / "mm" / "not-an-id") == errno.ENOENT
    assert _errno(os.stat, m.mnt / "nothing") == errno.ENOENT
    assert _errno(os.stat, m.mm(mid) / "bogus") == errno.ENOENT
    assert _errno(os.stat, m.mm(mid) / "v" / "99") == errno.ENOENT
    assert _errno(os.stat, m.mm(mid) / "v" / "-1") == errno.ENOENT
    assert _errno(os.stat, m.mm(mid) / "v" / "00") == errno.ENOENT
    assert _errno(os.stat, m.mm(mid) / "v" / "x") == errno.ENOENT
    assert _errno(os.stat, m.v(mid, 0) / "nope") == errno.ENOENT
    assert _errno(os.stat, cur / "nope" / "deeper") == errno.ENOENT
    assert _errno(os.stat, m.mnt / "mac" / ("0" * 64)) == errno.ENOENT
    assert _errno(os.stat, m.mnt / "mac" / "short") == errno.ENOENT
    assert _errno(os.stat, m.mnt / "name" / "no-such-mark") == errno.ENOENT
    assert _errno(os.stat, m.mm(mid) / ".refs" / unknown) == errno.ENOENT
    assert _errno(os.stat, m.v(mid, 0) / "top" / "x") == errno.ENOTDIR
    # the good paths exist
    assert (m.v(mid, 0) / "d" / "f").read_text() == "data"
    assert os.readlink(m.mm(mid) / "last") == "v/0"
    assert os.readlink(m.mm(mid) / "release") == "v/0"


# ------------------------------------------------------------------ EROFS
def test_erofs_on_versions_last_release(versioned):
    m, mid, cur = versioned
    for base in (m.v(mid, 0), m.mm(mid) / "last", m.mm(mid) / "release"):
        f = base / "top"
        d = base / "d"
        assert f.read_text() == "top", base
        assert _errno(open, f, "w") == errno.EROFS, base
        assert _errno(open, f, "a") == errno.EROFS, base
        assert _errno(os.open, f, os.O_RDWR) == errno.EROFS, base
        assert _errno(os.open, base / "new", os.O_CREAT | os.O_WRONLY, 0o644) == errno.EROFS
        assert _errno(os.mkdir, base / "newdir") == errno.EROFS, base
        assert _errno(os.mkdir, d / "newdir") == errno.EROFS, base
        assert _errno(os.unlink, f) == errno.EROFS, base
        assert _errno(os.unlink, base / "sl") == errno.EROFS, base
        assert _errno(os.rmdir, d) == errno.EROFS, base
        assert _errno(os.rename, f, base / "renamed") == errno.EROFS, base
        assert _errno(os.rename, d / "f", d / "g") == errno.EROFS, base
        assert _errno(os.chmod, f, 0o777) == errno.EROFS, base
        assert _errno(os.chmod, d, 0o777) == errno.EROFS, base
        assert _errno(os.chown, f, 1, 1) == errno.EROFS, base
        assert _errno(os.utime, f, ns=(1, 1)) == errno.EROFS, base
        assert _errno(os.truncate, f, 0) == errno.EROFS, base
        assert _errno(os.setxattr, f, "user.x", b"1") == errno.EROFS, base
        assert _errno(os.removexattr, f, "user.mimei.hash") == errno.EROFS, base
        assert _errno(os.symlink, "x", base / "newlink") == errno.EROFS, base
        assert _errno(os.link, f, base / "hard") == errno.EROFS, base
        assert _errno(os.mkfifo, base / "fifo") == errno.EROFS, base
    # nothing changed
    assert sorted(os.listdir(m.v(mid, 0))) == ["d", "sl", "top"]
    assert (m.v(mid, 0) / "top").read_text() == "top"
    # linking a version file into cur is a cross-"device" write into a read-only node
    assert _errno(os.link, m.v(mid, 0) / "top", cur / "hl") in (errno.EROFS, errno.EXDEV,
                                                                errno.EPERM)
    # renaming out of a version into cur is refused too
    assert _errno(os.rename, m.v(mid, 0) / "top", cur / "stolen") in (errno.EROFS, errno.EXDEV)
    assert (m.v(mid, 0) / "top").exists()


def test_erofs_on_the_virtual_dirs_and_mac(versioned, tmp_path):
    m, mid, cur = versioned
    src = tmp_path / "macfile"
    src.write_bytes(b"mac content " + secrets.token_bytes(8))
    h = m.run("put", src).stdout.strip()
    mac = m.mnt / "mac" / h
    assert mac.read_bytes() == src.read_bytes()
    assert _errno(open, mac, "w") == errno.EROFS
    assert _errno(os.unlink, mac) == errno.EROFS
    assert _errno(os.chmod, mac, 0o777) == errno.EROFS
    assert _errno(os.setxattr, mac, "user.x", b"1") == errno.EROFS
    assert _errno(os.rename, mac, m.mnt / "mac" / ("1" * 64)) == errno.EROFS
    assert _errno(os.open, m.mnt / "mac" / "new", os.O_CREAT | os.O_WRONLY) == errno.EROFS
    assert _errno(os.mkdir, m.mnt / "mac" / "d") == errno.EROFS
    # mm/, name/, the MiMei dir itself, v/
    assert _errno(os.mkdir, m.mnt / "mm" / "x") == errno.EROFS
    assert _errno(os.mkdir, m.mnt / "newtop") == errno.EROFS
    assert _errno(os.symlink, "x", m.mnt / "name" / "x") == errno.EROFS
    assert _errno(os.mkdir, m.mm(mid) / "v" / "5") == errno.EROFS
    assert _errno(os.open, m.mm(mid) / "newfile", os.O_CREAT | os.O_WRONLY) == errno.EROFS
    assert _errno(os.unlink, m.mm(mid) / "last") == errno.EROFS
    assert _errno(os.unlink, m.mm(mid) / "release") == errno.EROFS
    assert _errno(os.rename, m.mm(mid) / "cur", m.mm(mid) / "cur2") in (errno.EROFS, errno.EPERM)
    assert _errno(open, m.mm(mid) / ".info", "w") == errno.EROFS
    assert _errno(os.rmdir, m.v(mid, 0)) == errno.EROFS
    assert _errno(os.unlink, m.mnt / "mm" / mid) in (errno.EROFS, errno.EISDIR, errno.EPERM)
    info = json.loads((m.mm(mid) / ".info").read_text())
    assert info["id"] == mid and info["release"] == 0 and info["last"] == 0


def test_xattrs_on_version_files(versioned):
    m, mid, cur = versioned
    f = m.v(mid, 0) / "top"
    assert os.getxattr(f, "user.mimei.id").decode() == mid
    assert os.getxattr(f, "user.mimei.version") == b"0"
    import blake3
    assert os.getxattr(f, "user.mimei.hash").decode() == blake3.blake3(b"top").hexdigest()
    assert {"user.mimei.id", "user.mimei.version", "user.mimei.hash"} <= set(os.listxattr(f))
    assert _errno(os.getxattr, f, "user.nope") == errno.ENODATA


# ------------------------------------------------------------------ foreign MiMei
def test_eacces_in_cur_of_foreign_mimei(fresh_mfs):
    m = fresh_mfs
    mid = m.create("mine-then-foreign")
    cur = m.cur(mid)
    (cur / "f").write_text("written by the author")
    (cur / "d").mkdir()
    m.backup(mid)
    m.umount()
    key = m.store / "node.key"
    saved = m.base / "node.key.orig"
    shutil.copy2(key, saved)
    try:
        key.unlink()
        NodeKey.generate().save(str(key))
        m.mount()
        # readable, but not writable: this node's key did not author it
        assert (cur / "f").read_text() == "written by the author"
        assert (m.v(mid, 0) / "f").read_text() == "written by the author"
        assert _errno(open, cur / "f", "a") == errno.EACCES
        assert _errno(os.open, cur / "f", os.O_RDWR) == errno.EACCES
        assert _errno(open, cur / "new", "w") == errno.EACCES
        assert _errno(os.mkdir, cur / "d" / "x") == errno.EACCES
        assert _errno(os.unlink, cur / "f") == errno.EACCES
        assert _errno(os.rename, cur / "f", cur / "g") == errno.EACCES
        assert _errno(os.chmod, cur / "f", 0o600) == errno.EACCES
        assert _errno(os.truncate, cur / "f", 0) == errno.EACCES
        assert _errno(os.setxattr, cur / "f", "user.x", b"1") == errno.EACCES
        assert _errno(os.symlink, "f", cur / "l") == errno.EACCES
        assert (cur / "f").read_text() == "written by the author"
        # backing up someone else's MiMei is refused too, with a message
        p = m.run("backup", mid, check=False)
        assert p.returncode != 0 and p.stderr.strip(), p
        assert m.alive()
        m.umount()
    finally:
        m.cleanup()
        shutil.copy2(saved, key)
    m.mount()
    (cur / "f").write_text("author again")
    assert (cur / "f").read_text() == "author again"


# ------------------------------------------------------------------ daemon survival
def test_daemon_survives_bad_requests(versioned):
    m, mid, cur = versioned
    pid = m.daemon_pid()
    ctrl = m.mnt / ".__mimeifs_ctrl__"
    refs = m.mm(mid) / ".refs"
    bad = []

    def attempt(fn, *a, **kw):
        try:
            fn(*a, **kw)
        except OSError as e:
            bad.append((fn.__name__, a[:1], e.errno))
        else:
            bad.append((fn.__name__, a[:1], 0))

    for _ in range(3):
        attempt(open, m.v(mid, 0) / "top", "w")
        attempt(os.mkdir, m.v(mid, 0) / "x")
        # control file: garbage JSON, unknown op, missing fields, wrong names, huge values
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", b"{not json")
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", b"\xff\xfe\x00")
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t1", "op": "explode"}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"op": "ping"}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": 5, "op": "ping"}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps([1, 2, 3]).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t2", "op": "backup"}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t3", "op": "backup", "id": "zz"}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t4", "op": "restore", "id": mid, "n": "x"}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t5", "op": "restore", "id": mid, "n": 99}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t6", "op": "fork", "id": mid, "n": [], "mark": 7}).encode())
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", json.dumps({"token": "t7", "op": "release", "id": mid, "n": -5}).encode())
        attempt(os.setxattr, ctrl, "user.other", b"x")
        attempt(os.setxattr, ctrl, "user.mimeifs.cmd", b"x" * 60000)
        attempt(os.getxattr, ctrl, "user.mimeifs.result.nope")
        attempt(os.getxattr, ctrl, "user.mimeifs.result.t1")
        attempt(os.listxattr, ctrl)
        attempt(os.removexattr, ctrl, "user.mimeifs.cmd")
        attempt(os.listdir, ctrl)
        attempt(os.open, ctrl / "x", os.O_RDONLY)
        # .refs: names that are not IDs, targets that do not match, unknown IDs, self
        attempt(os.symlink, "../../nothing", refs / "nothing")
        attempt(os.symlink, "garbage", refs / ("a" * 40))
        attempt(os.symlink, "../../" + "b" * 40, refs / ("b" * 40))
        attempt(os.symlink, "../../" + mid, refs / mid)
        attempt(os.symlink, "x", refs / ("\u00e9" * 20))
        attempt(os.mkdir, refs / "d")
        attempt(os.open, refs / "f", os.O_CREAT | os.O_WRONLY)
        attempt(os.unlink, refs / ("c" * 40))
        # directories opened for writing, files as dirs
        attempt(os.open, cur, os.O_WRONLY)
        attempt(os.open, cur / "d", os.O_RDWR)
        attempt(os.open, m.v(mid, 0) / "d", os.O_WRONLY)
        attempt(os.open, m.mnt / "mm", os.O_RDWR)
        attempt(os.open, m.mm(mid), os.O_WRONLY)
        attempt(os.listdir, cur / "top")
        attempt(os.listdir, m.mm(mid) / ".info")
        # names that are too long or bad
        attempt(open, cur / ("n" * 300), "w")
        attempt(os.mkdir, cur / ("n" * 256))
        attempt(os.stat, m.mnt / "mm" / ("\udcff" * 40))
        attempt(os.readlink, cur / "top")
        attempt(os.readlink, m.mm(mid) / "cur")
        attempt(os.setxattr, cur / "top", "user." + "x" * 300, b"v")
        attempt(os.setxattr, cur / "top", "user.big", b"v" * 70000)
        attempt(os.setxattr, cur / "top", "trusted.nope", b"v")
    # none of those may have succeeded where it must not
    succeeded = [b for b in bad if b[2] == 0 and b[0] not in ("getxattr", "listxattr", "readlink", "listdir")]
    assert not [s for s in succeeded if s[0] in ("open",) and "v" in str(s[1])], succeeded
    # the daemon is alive and still answers, and the control channel still works
    assert pid_alive(pid)
    assert os.path.ismount(m.mnt)
    assert (m.v(mid, 0) / "top").read_text() == "top"
    (cur / "after").write_text("still here")
    assert (cur / "after").read_text() == "still here"
    assert m.backup(mid) == 1
    assert m.daemon_pid() == pid
    # errors were answered as errno values, not EIO from a crashed handler
    eio = [b for b in bad if b[2] == errno.EIO]
    assert not eio, f"handlers answered EIO (an unexpected exception): {eio[:10]}"


def test_release_negative_version_is_a_clean_error(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    m.backup(mid)
    ctrl = m.mnt / ".__mimeifs_ctrl__"
    before = m.log_text().count("Traceback")
    os.setxattr(ctrl, "user.mimeifs.cmd",
                json.dumps({"token": "neg1", "op": "release", "id": mid, "n": -5}).encode())
    ans = json.loads(os.getxattr(ctrl, "user.mimeifs.result.neg1"))
    assert ans["ok"] is False
    p = m.run("release", mid, "--", "-5", check=False)
    assert p.returncode == 1 and "version -5" in p.stderr, p.stderr
    assert ans["errno"] in (errno.EINVAL, errno.ENOENT), ans
    assert m.log_text().count("Traceback") == before, m.log_tail(30)


def test_control_protocol_errors(mfs, mimei):
    m, mid, cur = mimei
    ctrl = m.mnt / ".__mimeifs_ctrl__"
    # an unknown op is answered (ok: false, EINVAL) under its token
    os.setxattr(ctrl, "user.mimeifs.cmd", json.dumps({"token": "u1", "op": "explode"}).encode())
    ans = json.loads(os.getxattr(ctrl, "user.mimeifs.result.u1"))
    assert ans["ok"] is False and ans["errno"] == errno.EINVAL and "explode" in ans["error"]
    # garbage JSON is EINVAL at setxattr time
    assert _errno(os.setxattr, ctrl, "user.mimeifs.cmd", b"{not json") == errno.EINVAL
    assert _errno(os.setxattr, ctrl, "user.wrong", b"{}") == errno.EINVAL
    # ping answers with the daemon pid
    os.setxattr(ctrl, "user.mimeifs.cmd", json.dumps({"token": "u2", "op": "ping"}).encode())
    ans = json.loads(os.getxattr(ctrl, "user.mimeifs.result.u2"))
    assert ans["ok"] and ans["result"]["pid"] == m.daemon_pid()


# ------------------------------------------------------------------ CLI errors
def test_cli_unknown_id_fails_clearly(mfs):
    unknown = secrets.token_hex(20)
    for args in (["backup", unknown], ["rm", unknown], ["release", unknown],
                 ["log", unknown], ["restore", unknown, "0"], ["fork", unknown, "--mark", "x"]):
        p = mfs.run(*args, check=False)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr, (args, p.stderr)
        assert "error" in p.stderr.lower() and (unknown in p.stderr or "no mimei" in p.stderr.lower()
                                                 or "unknown" in p.stderr.lower()
                                                 or "not found" in p.stderr.lower()), (args, p.stderr)
    assert mfs.alive()


def test_cli_bad_version_numbers(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    m.backup(mid)
    for args in (["restore", mid, "7"], ["release", mid, "7"], ["fork", f"{mid}@7", "--mark", "f7"],
                 ["fork", f"{mid}@x", "--mark", "fx"]):
        p = m.run(*args, check=False)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr and p.stderr.strip(), (args, p.stderr)
    assert m.alive()


def test_rm_refused_while_referenced(mfs):
    a = mfs.create("referrer-" + secrets.token_hex(4))
    b = mfs.create("referred-" + secrets.token_hex(4))
    refs = mfs.mm(a) / ".refs"
    os.symlink(f"../../{b}", refs / b)
    assert os.listdir(refs) == [b]
    assert os.readlink(refs / b) == f"../../{b}"
    # the link resolves to the target MiMei's dir
    assert os.path.isdir(refs / b / "cur")
    r = json.loads(mfs.run("refs", a, "--json").stdout)
    assert r["out"] == [b]
    r = json.loads(mfs.run("refs", b, "--json").stdout)
    assert r["in"] == [a]
    p = mfs.run("rm", b, check=False)
    assert p.returncode != 0
    assert a in p.stderr, p.stderr
    assert os.path.isdir(mfs.mm(b))
    os.unlink(refs / b)
    assert os.listdir(refs) == []
    assert json.loads(mfs.run("refs", b, "--json").stdout)["in"] == []
    mfs.run("rm", b)
    wait_for(lambda: not os.path.exists(mfs.mm(b)), 10, "removed MiMei to vanish")
    assert b not in os.listdir(mfs.mnt / "mm")
    assert mfs.run("log", b, check=False).returncode != 0
    # a reference to a MiMei that does not exist is refused
    ghost = secrets.token_hex(20)
    assert _errno(os.symlink, f"../../{ghost}", refs / ghost) in (errno.ENOENT, errno.EINVAL)
    assert mfs.alive()
