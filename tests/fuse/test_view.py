"""The mounted view beyond cur: last/release links, restore, fork, file MiMei, name/, mac/,
.info, big directories, and what non-root users may do."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import blake3

from .conftest import CHILD_PYTHON, as_user, wait_for


def test_last_release_restore(mimei):
    m, mid, cur = mimei
    mm = m.mm(mid)
    assert not os.path.lexists(mm / "last") and not os.path.lexists(mm / "release")
    (cur / "a").write_text("one")
    (cur / "d").mkdir()
    (cur / "d" / "x").write_text("x")
    assert m.backup(mid) == 0
    (cur / "a").write_text("two")
    os.unlink(cur / "d" / "x")
    os.rmdir(cur / "d")
    (cur / "b").write_text("new")
    assert m.backup(mid) == 1
    assert os.readlink(mm / "last") == "v/1"
    assert (mm / "last" / "a").read_text() == "two"
    assert sorted(os.listdir(mm / "v")) == ["0", "1"]
    m.run("release", mid, "0")
    assert os.readlink(mm / "release") == "v/0"
    assert (mm / "release" / "a").read_text() == "one"
    m.run("release", mid)
    assert os.readlink(mm / "release") == "v/1"
    info = json.loads((mm / ".info").read_text())
    assert info["last"] == 1 and info["release"] == 1 and info["mimei_type"] == "fs"
    # restore: cur becomes v/0 again, and the view shows it at once
    m.run("restore", mid, "0")
    assert sorted(os.listdir(cur)) == ["a", "d"]
    assert (cur / "a").read_text() == "one"
    assert (cur / "d" / "x").read_text() == "x"
    (cur / "a").write_text("three")  # still writable after restore
    assert m.backup(mid) == 2
    assert (m.v(mid, 2) / "a").read_text() == "three"
    assert (m.v(mid, 1) / "a").read_text() == "two"


def test_fork(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("v0")
    m.backup(mid)
    (cur / "f").write_text("v1")
    m.backup(mid)
    new = m.run("fork", f"{mid}@0", "--mark", f"fork-of-{mid[:8]}").stdout.strip()
    assert len(new) == 40 and new != mid
    assert (m.v(new, 0) / "f").read_text() == "v0"
    assert (m.cur(new) / "f").read_text() == "v0"
    (m.cur(new) / "f").write_text("forked")
    assert (cur / "f").read_text() == "v1"
    assert (m.v(mid, 0) / "f").read_text() == "v0"
    log = m.log(new)
    assert [r["n"] for r in log] == [0]
    assert log[0]["root"] == m.log(mid)[0]["root"]


def test_file_mimei(mfs):
    mid = mfs.create("a-single-file", mtype="file")
    cur = mfs.cur(mid)
    assert stat.S_ISREG(os.stat(cur).st_mode)
    with open(cur, "wb") as f:
        f.write(b"file mimei content")
    assert mfs.backup(mid) == 0
    v0 = mfs.v(mid, 0)
    assert stat.S_ISREG(os.stat(v0).st_mode)
    assert v0.read_bytes() == b"file mimei content"
    assert os.getxattr(v0, "user.mimei.hash").decode() == blake3.blake3(b"file mimei content").hexdigest()
    with open(cur, "ab") as f:
        f.write(b" more")
    assert mfs.backup(mid) == 1
    assert mfs.v(mid, 1).read_bytes() == b"file mimei content more"
    assert v0.read_bytes() == b"file mimei content"
    assert os.readlink(mfs.mm(mid) / "last") == "v/1"


def test_name_links_and_mac(mfs, tmp_path):
    mark = "named-" + os.urandom(4).hex()
    mid = mfs.create(mark)
    link = mfs.mnt / "name" / mark
    assert os.readlink(link) == f"../mm/{mid}"
    assert mark in os.listdir(mfs.mnt / "name")
    assert os.path.samefile(link / "cur", mfs.cur(mid))
    # creating the same mark again is idempotent: the same ID
    assert mfs.create(mark) == mid
    data = os.urandom(300_000)
    src = tmp_path / "blob"
    src.write_bytes(data)
    h = mfs.run("put", src).stdout.strip()
    b3 = subprocess.run(["b3sum", "--no-names", str(src)], capture_output=True, text=True,
                        check=True).stdout.strip()
    assert h == b3
    assert h in os.listdir(mfs.mnt / "mac")
    assert (mfs.mnt / "mac" / h).read_bytes() == data
    assert os.stat(mfs.mnt / "mac" / h).st_size == len(data)
    assert os.getxattr(mfs.mnt / "mac" / h, "user.mimei.hash").decode() == h


def test_big_directory_listing_and_rm_rf(mimei):
    m, mid, cur = mimei
    d = cur / "big"
    d.mkdir()
    names = {f"file-{i:05d}-{'x' * (i % 50)}" for i in range(4000)}
    for n in names:
        (d / n).write_bytes(b"")
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        assert {e.name for e in it} == names
    # ls -f lists in readdir order without sorting (. and .. are optional on FUSE)
    out = subprocess.run(["ls", "-f", str(d)], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) - {".", ".."} == names
    n = m.backup(mid)
    assert set(os.listdir(m.v(mid, n) / "big")) == names
    # rm -rf removes while it reads the directory (readdir offsets must hold up)
    subprocess.run(["rm", "-rf", str(d)], check=True)
    assert not d.exists()
    assert os.listdir(cur) == []


def test_concurrent_writers(mimei):
    m, mid, cur = mimei
    code = ("import os,sys\n"
            "root, k = sys.argv[1], int(sys.argv[2])\n"
            "os.makedirs(root, exist_ok=True)\n"
            "for i in range(200):\n"
            "    p = os.path.join(root, f'w{k}-{i}')\n"
            "    open(p, 'wb').write(bytes([k]) * (i * 37 + 1))\n"
            "fd = os.open(os.path.join(os.path.dirname(root), 'shared'), os.O_RDWR | os.O_CREAT)\n"
            "for i in range(100):\n"
            "    os.pwrite(fd, bytes([k]) * 100, (i * 4 + k) * 100)\n"
            "os.close(fd)\n")
    procs = [subprocess.Popen([CHILD_PYTHON, "-c", code, str(cur / f"dir{k % 2}"), str(k)])
             for k in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    for k in range(4):
        for i in range(200):
            assert (cur / f"dir{k % 2}" / f"w{k}-{i}").read_bytes() == bytes([k]) * (i * 37 + 1)
    shared = (cur / "shared").read_bytes()
    assert len(shared) == 400 * 100
    for j in range(400):
        assert shared[j * 100:(j + 1) * 100] == bytes([j % 4]) * 100, j


def test_non_root_users(mimei):
    m, mid, cur = mimei
    (cur / "pub").write_text("public")
    m.backup(mid)
    ctrl = m.mnt / ".__mimeifs_ctrl__"

    def run(code):
        return subprocess.run([CHILD_PYTHON, "-c", code], capture_output=True, text=True,
                              preexec_fn=as_user(1000, 1000), cwd="/", timeout=60)
    # reading versions and cur is fine for anyone (modes allow it)
    r = run(f"print(open({str(m.v(mid, 0) / 'pub')!r}).read())")
    assert r.returncode == 0 and r.stdout.strip() == "public", r.stderr
    # the control file is root's: others cannot drive the daemon
    r = run(f"import os; os.setxattr({str(ctrl)!r}, 'user.mimeifs.cmd', "
            f"b'{{\"token\":\"x\",\"op\":\"ping\"}}')")
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    # nor add references to a MiMei they cannot write
    target = m.create("ref-target-" + mid[:8])
    r = run(f"import os; os.symlink('../../{target}', {str(m.mm(mid) / '.refs' / target)!r})")
    assert r.returncode != 0, r.stderr
    assert os.listdir(m.mm(mid) / ".refs") == []


def test_version_dir_nlink_counts_subdirs(mimei):
    m, mid, cur = mimei
    for c in ("c1", "c2", "c3"):
        (cur / "p" / c).mkdir(parents=True)
    n = m.backup(mid)
    assert os.stat(cur / "p").st_nlink == 5
    assert os.stat(m.v(mid, n) / "p").st_nlink == os.stat(cur / "p").st_nlink
    assert os.stat(m.v(mid, n)).st_nlink == os.stat(cur).st_nlink


def test_daemon_forgets_version_nodes_the_kernel_forgot(fresh_mfs):
    """Walking a big version must not grow the daemon's node table for ever: once the
    kernel drops its dentries and inodes (drop_caches), the daemon drops them too."""
    from mimeifs.fuse.ctl import call
    m = fresh_mfs
    mid = m.create("walk")
    cur = m.cur(mid)
    for d in range(20):
        (cur / f"d{d}").mkdir()
        for i in range(50):
            (cur / f"d{d}" / f"f{i}").write_text(str(i))
    n = m.backup(mid)
    listed = sum(len(files) + len(dirs) for _r, dirs, files in os.walk(m.v(mid, n)))
    assert listed == 20 * 51
    walked = call(str(m.mnt), "ping")["vnodes"]
    assert walked >= listed
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")  # dentries and inodes: the kernel sends FORGET for them
    wait_for(lambda: call(str(m.mnt), "ping")["vnodes"] < listed // 10, 30, "vnodes to be forgotten")
    # and the version still reads back afterwards
    assert (m.v(mid, n) / "d3" / "f7").read_text() == "7"


def test_version_entry_inode_numbers_follow_the_formula():
    """Listings number a version directory's entries with a prefix hash copied per
    name; the numbers must equal vino() over the whole name (the numbers lookups and
    earlier mounts gave), which is blake3 over the length-prefixed parts."""
    from mimeifs.view.nodes import Node as VNode, ver_inos as _ver_inos, vino

    d = VNode("ver", "ab" * 20, 3)
    ino_of = _ver_inos(d, 12345)
    for name in (b"x", b"\xff" * 255, b"json", b""):
        h = blake3.blake3()
        for p in (b"ver", d.mimei.encode(), b"3", b"12345", name):
            h.update(len(p).to_bytes(4, "big") + p)
        want = (1 << 62) | (int.from_bytes(h.digest()[:8], "big") & ((1 << 62) - 1))
        assert ino_of(name) == vino("ver", d.mimei, 3, 12345, name) == want
