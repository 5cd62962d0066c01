"""POSIX semantics inside a mounted MiMei's ``cur``: plain syscalls on the real mount."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess

import pytest

from .conftest import CHILD_PYTHON, as_user

OTHER_UID = 1000
OTHER_GID = 1000


# ------------------------------------------------------------------ data at offsets
def test_create_read_write_offsets(mimei):
    m, mid, cur = mimei
    p = cur / "f"
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o644)
    try:
        assert os.pwrite(fd, b"hello world", 0) == 11
        assert os.pwrite(fd, b"HELLO", 6) == 5
        assert os.pread(fd, 100, 0) == b"hello HELLO"
        assert os.pread(fd, 3, 2) == b"llo"
        assert os.pread(fd, 10, 11) == b""
    finally:
        os.close(fd)
    assert p.read_bytes() == b"hello HELLO"
    with open(p, "ab") as f:
        f.write(b"!")
    assert p.read_bytes() == b"hello HELLO!"
    with pytest.raises(FileExistsError):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_open_o_trunc_empties(mimei):
    m, mid, cur = mimei
    p = cur / "f"
    p.write_bytes(b"hello world")
    with open(p, "wb") as f:  # O_WRONLY | O_CREAT | O_TRUNC
        f.write(b"x")
    assert p.read_bytes() == b"x"
    assert os.stat(p).st_size == 1
    subprocess.run(f"echo y > '{p}'", shell=True, check=True)
    assert p.read_bytes() == b"y\n"


def test_sparse_write_far_past_eof(mimei):
    m, mid, cur = mimei
    p = cur / "sparse"
    far = 5 * (1 << 30) + 12345  # 5 GiB: only the tail is data
    with open(p, "wb") as f:
        f.write(b"head")
        f.seek(far)
        f.write(b"tail")
    st = os.stat(p)
    assert st.st_size == far + 4
    with open(p, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(4)
        assert f.read(1 << 20) == bytes(1 << 20)
        f.seek(3 * (1 << 30) + 7)
        assert f.read(4096) == bytes(4096)
        f.seek(far - 100)
        assert f.read() == bytes(100) + b"tail"


def test_truncate_shrink_then_grow_reads_zeros(mimei):
    m, mid, cur = mimei
    p = cur / "t"
    data = os.urandom(300_000)
    p.write_bytes(data)
    os.truncate(p, 1000)
    assert os.stat(p).st_size == 1000
    assert p.read_bytes() == data[:1000]
    os.truncate(p, 200_000)
    assert os.stat(p).st_size == 200_000
    assert p.read_bytes() == data[:1000] + bytes(199_000)
    with open(p, "r+b") as f:
        f.truncate(10)
    assert p.read_bytes() == data[:10]
    os.truncate(p, 0)
    assert p.read_bytes() == b""


# ------------------------------------------------------------------ names
def test_rename_over_existing_file(mimei):
    m, mid, cur = mimei
    (cur / "a").write_bytes(b"A")
    (cur / "b").write_bytes(b"B")
    ino_a = os.stat(cur / "a").st_ino
    os.rename(cur / "a", cur / "b")
    assert not (cur / "a").exists()
    assert (cur / "b").read_bytes() == b"A"
    assert os.stat(cur / "b").st_ino == ino_a
    assert sorted(os.listdir(cur)) == ["b"]


def test_rename_dir(mimei):
    m, mid, cur = mimei
    (cur / "d1" / "sub").mkdir(parents=True)
    (cur / "d1" / "sub" / "f").write_text("x")
    (cur / "other").mkdir()
    os.rename(cur / "d1", cur / "other" / "d2")
    assert not (cur / "d1").exists()
    assert (cur / "other" / "d2" / "sub" / "f").read_text() == "x"
    # rename a dir onto an empty dir replaces it; onto a non-empty one fails
    (cur / "empty").mkdir()
    os.rename(cur / "other" / "d2", cur / "empty")
    assert (cur / "empty" / "sub" / "f").read_text() == "x"
    (cur / "full").mkdir()
    (cur / "full" / "g").write_text("g")
    with pytest.raises(OSError) as ei:
        os.rename(cur / "empty", cur / "full")
    assert ei.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    # a dir cannot be moved into itself
    with pytest.raises(OSError) as ei:
        os.rename(cur / "empty", cur / "empty" / "sub" / "inside")
    assert ei.value.errno == errno.EINVAL


def test_rename_noreplace(mimei):
    m, mid, cur = mimei
    (cur / "a").write_bytes(b"A")
    (cur / "b").write_bytes(b"B")
    # mv -n must not clobber (coreutils uses renameat2(RENAME_NOREPLACE) when it can)
    subprocess.run(["mv", "-n", str(cur / "a"), str(cur / "b")], check=False)
    assert (cur / "b").read_bytes() == b"B"
    assert (cur / "a").read_bytes() == b"A"
    # and the syscall itself: renameat2 with RENAME_NOREPLACE -> EEXIST
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("no renameat2 in libc")
    AT_FDCWD = -100
    RENAME_NOREPLACE = 1
    r = libc.renameat2(AT_FDCWD, os.fsencode(cur / "a"), AT_FDCWD, os.fsencode(cur / "b"),
                       RENAME_NOREPLACE)
    assert r == -1 and ctypes.get_errno() == errno.EEXIST
    r = libc.renameat2(AT_FDCWD, os.fsencode(cur / "a"), AT_FDCWD, os.fsencode(cur / "c"),
                       RENAME_NOREPLACE)
    assert r == 0, os.strerror(ctypes.get_errno())
    assert (cur / "c").read_bytes() == b"A"
    # RENAME_EXCHANGE swaps
    RENAME_EXCHANGE = 2
    r = libc.renameat2(AT_FDCWD, os.fsencode(cur / "b"), AT_FDCWD, os.fsencode(cur / "c"),
                       RENAME_EXCHANGE)
    if r == 0:
        assert (cur / "b").read_bytes() == b"A"
        assert (cur / "c").read_bytes() == b"B"
    else:
        assert ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def test_unlink(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    os.unlink(cur / "f")
    assert not (cur / "f").exists()
    with pytest.raises(FileNotFoundError):
        os.unlink(cur / "f")
    (cur / "d").mkdir()
    with pytest.raises(OSError) as ei:
        os.unlink(cur / "d")
    assert ei.value.errno in (errno.EISDIR, errno.EPERM)


def test_mkdir_rmdir(mimei):
    m, mid, cur = mimei
    os.mkdir(cur / "d", 0o750)
    assert stat.S_IMODE(os.stat(cur / "d").st_mode) == 0o750 & ~_umask()
    with pytest.raises(FileExistsError):
        os.mkdir(cur / "d")
    (cur / "d" / "f").write_text("x")
    with pytest.raises(OSError) as ei:
        os.rmdir(cur / "d")
    assert ei.value.errno == errno.ENOTEMPTY
    os.unlink(cur / "d" / "f")
    os.rmdir(cur / "d")
    assert not (cur / "d").exists()
    (cur / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        os.rmdir(cur / "f")
    # parent nlink counts subdirectories
    os.mkdir(cur / "p")
    for i in range(3):
        os.mkdir(cur / "p" / f"c{i}")
    assert os.stat(cur / "p").st_nlink == 5


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_symlink_readlink(mimei):
    m, mid, cur = mimei
    (cur / "target").write_text("T")
    os.symlink("target", cur / "ln")
    os.symlink("/nowhere/at/all", cur / "dangling")
    assert os.readlink(cur / "ln") == "target"
    assert (cur / "ln").read_text() == "T"
    assert os.readlink(cur / "dangling") == "/nowhere/at/all"
    assert stat.S_ISLNK(os.lstat(cur / "ln").st_mode)
    assert os.lstat(cur / "dangling").st_size == len("/nowhere/at/all")
    with pytest.raises(OSError) as ei:
        os.readlink(cur / "target")
    assert ei.value.errno == errno.EINVAL


def test_hard_links(mimei):
    m, mid, cur = mimei
    (cur / "a").write_bytes(b"one")
    (cur / "d").mkdir()
    os.link(cur / "a", cur / "b")
    os.link(cur / "a", cur / "d" / "c")
    sa, sb, sc = (os.stat(cur / x) for x in ("a", "b", "d/c"))
    assert sa.st_ino == sb.st_ino == sc.st_ino
    assert sa.st_nlink == 3
    with open(cur / "b", "r+b") as f:
        f.write(b"TWO")
    assert (cur / "a").read_bytes() == b"TWO"
    assert (cur / "d" / "c").read_bytes() == b"TWO"
    os.unlink(cur / "a")
    assert os.stat(cur / "b").st_nlink == 2
    os.unlink(cur / "d" / "c")
    assert os.stat(cur / "b").st_nlink == 1
    assert (cur / "b").read_bytes() == b"TWO"
    with pytest.raises(PermissionError):
        os.link(cur / "d", cur / "dlink")  # no hard links to dirs


def test_mknod_mkfifo(mimei):
    m, mid, cur = mimei
    os.mkfifo(cur / "fifo", 0o640)
    st = os.lstat(cur / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    os.mknod(cur / "chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(cur / "chr")
    assert stat.S_ISCHR(st.st_mode)
    assert os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    os.mknod(cur / "reg", 0o600 | stat.S_IFREG)
    assert stat.S_ISREG(os.lstat(cur / "reg").st_mode)
    # a fifo on this fs carries data between processes (the kernel does that part)
    p = subprocess.Popen(["sh", "-c", f"echo through > '{cur / 'fifo'}'"])
    with open(cur / "fifo") as f:
        assert f.read() == "through\n"
    assert p.wait(timeout=30) == 0


def test_chmod(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    for mode in (0o600, 0o755, 0o4711, 0o1777, 0):
        os.chmod(cur / "f", mode)
        assert stat.S_IMODE(os.stat(cur / "f").st_mode) == mode
    (cur / "d").mkdir()
    os.chmod(cur / "d", 0o700)
    assert stat.S_IMODE(os.stat(cur / "d").st_mode) == 0o700
    assert stat.S_ISDIR(os.stat(cur / "d").st_mode)


def test_chown(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    os.chown(cur / "f", OTHER_UID, OTHER_GID)
    st = os.stat(cur / "f")
    assert (st.st_uid, st.st_gid) == (OTHER_UID, OTHER_GID)
    os.chown(cur / "f", -1, 4242)
    st = os.stat(cur / "f")
    assert (st.st_uid, st.st_gid) == (OTHER_UID, 4242)
    os.symlink("f", cur / "l")
    os.lchown(cur / "l", 7, 8)
    st = os.lstat(cur / "l")
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert os.stat(cur / "f").st_uid == OTHER_UID


def test_utimens(mimei):
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    at, mt = 1_500_000_000_123_456_789, 1_600_000_000_987_654_321
    os.utime(cur / "f", ns=(at, mt))
    st = os.stat(cur / "f")
    assert st.st_mtime_ns == mt
    assert st.st_atime_ns == at
    os.symlink("f", cur / "l")
    os.utime(cur / "l", ns=(at, 1_000_000_000_000_000_001), follow_symlinks=False)
    assert os.lstat(cur / "l").st_mtime_ns == 1_000_000_000_000_000_001
    assert os.stat(cur / "f").st_mtime_ns == mt
    # writing moves mtime forward to about now
    import time
    before = time.time_ns()
    with open(cur / "f", "ab") as f:
        f.write(b"y")
    assert os.stat(cur / "f").st_mtime_ns >= before - 2_000_000_000


def test_fsync_and_statfs(mimei):
    m, mid, cur = mimei
    fd = os.open(cur / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    sv, host = os.statvfs(cur), os.statvfs(m.store)
    # the mount reports the space of the filesystem that holds the store
    assert (sv.f_frsize, sv.f_blocks, sv.f_files) == (host.f_frsize, host.f_blocks, host.f_files)
    assert abs(sv.f_bavail - host.f_bavail) * host.f_frsize < 256 << 20, (sv, host)
    assert sv.f_namemax == 255 and sv.f_bsize > 0
    assert sv.f_namemax >= 255
    sv2 = os.statvfs(m.mnt)
    assert sv2.f_blocks > 0
    assert subprocess.run(["df", str(cur)], capture_output=True).returncode == 0


def test_xattrs(mimei):
    m, mid, cur = mimei
    p = cur / "f"
    p.write_text("x")
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.big", os.urandom(3000))
    assert os.getxattr(p, "user.color") == b"blue"
    names = set(os.listxattr(p))
    assert {"user.color", "user.big"} <= names
    os.setxattr(p, "user.color", b"red", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.color") == b"red"
    with pytest.raises(FileExistsError):
        os.setxattr(p, "user.color", b"x", os.XATTR_CREATE)
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.none", b"x", os.XATTR_REPLACE)
    assert ei.value.errno == errno.ENODATA
    os.removexattr(p, "user.color")
    assert "user.color" not in os.listxattr(p)
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.color")
    assert ei.value.errno == errno.ENODATA
    with pytest.raises(OSError) as ei:
        os.removexattr(p, "user.color")
    assert ei.value.errno == errno.ENODATA
    # directories take xattrs too, and getfattr sees them
    os.setxattr(cur, "user.dir", b"yes")
    out = subprocess.run(["getfattr", "-n", "user.dir", "--only-values", str(cur)],
                         capture_output=True)
    assert out.stdout == b"yes"


def test_acl_and_selinux_are_unsupported_not_absent(mimei):
    """ACLs and SELinux labels answer ENOTSUP (not ENODATA) in cur and in versions, so
    GNU ls -l caches "unsupported on this st_dev" instead of asking for every file."""
    m, mid, cur = mimei
    (cur / "f").write_text("x")
    (cur / "d").mkdir()
    m.run("backup", mid)
    for p in (cur / "f", cur / "d", m.mnt / "mm" / mid / "v" / "0" / "f"):
        for name in ("system.posix_acl_access", "system.posix_acl_default", "security.selinux"):
            with pytest.raises(OSError) as ei:
                os.getxattr(p, name)
            assert ei.value.errno == errno.EOPNOTSUPP, (p, name)
    with pytest.raises(OSError) as ei:
        os.setxattr(cur / "f", "security.selinux", b"system_u:object_r:tmp_t:s0")
    assert ei.value.errno == errno.EOPNOTSUPP
    # other security.* names are kept as usual
    os.setxattr(cur / "f", "security.mimeifs-test", b"1")
    assert os.getxattr(cur / "f", "security.mimeifs-test") == b"1"
    # and ls -l still lists everything, with no ACL marker
    out = subprocess.run(["ls", "-l", str(cur)], capture_output=True, text=True, check=True)
    assert "-rw" in out.stdout and "+" not in out.stdout.split("\n")[1][:11]


def test_open_then_unlinked_stays_readable(mimei):
    m, mid, cur = mimei
    data = os.urandom(200_000)
    p = cur / "victim"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.pread(fd, len(data) + 10, 0) == data
        os.pwrite(fd, b"more", len(data))
        assert os.pread(fd, 10, len(data)) == b"more"
        assert os.fstat(fd).st_nlink == 0
        # a backup while it is open-but-unlinked does not resurrect it
        n = m.backup(mid)
        assert "victim" not in os.listdir(m.v(mid, n))
        assert os.pread(fd, 100, 0) == data[:100]
    finally:
        os.close(fd)
    assert "victim" not in os.listdir(cur)


def test_rename_over_open_file_keeps_old_readable(mimei):
    m, mid, cur = mimei
    (cur / "old").write_bytes(b"old content")
    (cur / "new").write_bytes(b"new content")
    with open(cur / "old", "rb") as f:
        os.rename(cur / "new", cur / "old")
        assert f.read() == b"old content"
    assert (cur / "old").read_bytes() == b"new content"


# ------------------------------------------------------------------ ownership and permissions
def _child(code: str, uid=OTHER_UID, gid=OTHER_GID, cwd=None):
    # a system python: the venv's may sit under root's 0700 home
    return subprocess.run([CHILD_PYTHON, "-c", code], capture_output=True, text=True,
                          preexec_fn=as_user(uid, gid), cwd=cwd or "/", timeout=60)


def test_new_files_owned_by_caller(mimei):
    m, mid, cur = mimei
    shared = cur / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    # the fixture mounts with --allow-other so another uid may enter at all
    r = _child(f"import os; open({str(shared / 'mine')!r}, 'w').write('u'); "
               f"os.mkdir({str(shared / 'mydir')!r}); os.symlink('x', {str(shared / 'myln')!r})")
    assert r.returncode == 0, r.stderr
    for name in ("mine", "mydir", "myln"):
        st = os.lstat(shared / name)
        assert (st.st_uid, st.st_gid) == (OTHER_UID, OTHER_GID), name
    # and root's files are root's
    (cur / "rootfile").write_text("r")
    st = os.stat(cur / "rootfile")
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_default_permissions_enforced(mimei):
    m, mid, cur = mimei
    os.chmod(cur, 0o755)
    secret = cur / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    r = _child(f"open({str(secret)!r}, 'a').write('x')")
    assert r.returncode != 0 and "PermissionError" in r.stderr, (r.returncode, r.stderr)
    r = _child(f"open({str(secret)!r}).read()")
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    # not in a dir it cannot write either
    r = _child(f"open({str(cur / 'new')!r}, 'w')")
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    assert secret.read_text() == "root only"
    # a world-readable file is readable
    os.chmod(secret, 0o644)
    r = _child(f"print(open({str(secret)!r}).read())")
    assert r.returncode == 0 and r.stdout.strip() == "root only", r.stderr


# ------------------------------------------------------------------ inode numbers
def test_stable_inode_numbers_across_remount(fresh_mfs):
    m = fresh_mfs
    mid = m.create("ino")
    cur = m.cur(mid)
    (cur / "d" / "e").mkdir(parents=True)
    for i in range(20):
        (cur / "d" / f"f{i}").write_text(str(i))
    (cur / "d" / "e" / "deep").write_text("deep")
    os.symlink("d/f1", cur / "sl")
    os.link(cur / "d" / "f2", cur / "hl")
    m.backup(mid)

    def inos():
        out = {}
        for root in (cur, m.v(mid, 0)):
            for dp, dns, fns in os.walk(root):
                for n in dns + fns:
                    p = os.path.join(dp, n)
                    out[p.replace(str(m.mnt), "")] = os.lstat(p).st_ino
            out[str(root).replace(str(m.mnt), "")] = os.lstat(root).st_ino
        return out

    before = inos()
    assert os.lstat(cur / "hl").st_ino == os.lstat(cur / "d" / "f2").st_ino
    m.umount()
    m.mount()
    after = inos()
    assert after == before


# ------------------------------------------------------------------ big file
BLOCK = 1 << 20


def _block(i: int) -> bytes:
    head = f"block {i:08d} ".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


@pytest.mark.slow
def test_three_gib_file(mimei):
    m, mid, cur = mimei
    nblocks = 3 * 1024
    want = hashlib.sha256()
    with open(cur / "big", "wb") as f:
        for i in range(nblocks):
            b = _block(i)
            want.update(b)
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    assert os.stat(cur / "big").st_size == nblocks * BLOCK
    n = m.backup(mid)
    got = hashlib.sha256()
    with open(m.v(mid, n) / "big", "rb") as f:
        i = 0
        for b in iter(lambda: f.read(BLOCK), b""):
            got.update(b)
            if i in (0, 1, nblocks // 2, nblocks - 1):
                assert b == _block(i), f"block {i} differs"
            i += 1
    assert i == nblocks
    assert got.hexdigest() == want.hexdigest()
    assert os.stat(m.v(mid, n) / "big").st_size == nblocks * BLOCK
    # the xattr is the blake3 of the content (b3sum's answer)
    h = os.getxattr(m.v(mid, n) / "big", "user.mimei.hash").decode()
    b3 = subprocess.run(["b3sum", "--no-names", str(m.v(mid, n) / "big")],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert h == b3
