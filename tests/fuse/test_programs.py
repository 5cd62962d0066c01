"""Ordinary programs working inside a mounted MiMei's ``cur``: git, tar, sqlite, rsync,
an editor's save, cp -a. Each result is checked, then frozen by a backup and checked again
through ``v/N``."""

from __future__ import annotations

import filecmp
import hashlib
import os
import sqlite3
import stat
import subprocess
import sysconfig
import tarfile
from pathlib import Path

import pytest

from .conftest import tree_digest


def sh(*cmd, cwd=None, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                       timeout=300, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _sample_tree(dst: Path) -> Path:
    """A few MiB of real files: parts of the Python standard library."""
    dst.mkdir()
    for sub in ("json", "email", "http", "logging", "xml", "unittest"):
        sh("cp", "-a", STDLIB / sub, dst / sub)
    for f in ("os.py", "tarfile.py", "sqlite3"):
        sh("cp", "-a", STDLIB / f, dst / f)
    sh("find", dst, "-name", "__pycache__", "-prune", "-exec", "rm", "-rf", "{}", "+")
    return dst


# ------------------------------------------------------------------ git
def test_git(mimei):
    m, mid, cur = mimei
    repo = cur / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=T Ester", "-c", "user.email=t@example.org",
           "-c", "init.defaultBranch=main", "-c", "gc.auto=0"]
    sh(*git, "init", cwd=repo)
    for i in range(30):
        (repo / f"file{i}.txt").write_text(f"line {i}\n" * (i + 1))
    (repo / "sub").mkdir()
    (repo / "sub" / "bin").write_bytes(os.urandom(100_000))
    sh(*git, "add", "-A", cwd=repo)
    sh(*git, "commit", "-q", "-m", "first commit", cwd=repo)
    (repo / "file3.txt").write_text("changed\n")
    os.unlink(repo / "file4.txt")
    sh(*git, "commit", "-q", "-a", "-m", "second commit", cwd=repo)
    sh(*git, "fsck", "--full", "--strict", cwd=repo)
    log = sh(*git, "log", "--format=%s", cwd=repo).stdout.split("\n")
    assert log[:2] == ["second commit", "first commit"]
    assert sh(*git, "status", "--porcelain", cwd=repo).stdout == ""
    # repack (rewrites packs, renames, deletes loose objects) and fsck again
    sh(*git, "gc", "-q", "--prune=now", cwd=repo)
    sh(*git, "fsck", "--full", "--strict", cwd=repo)
    # the frozen version is a valid repository too (read-only: fsck does not need to write)
    n = m.backup(mid)
    vrepo = m.v(mid, n) / "repo"
    sh(*git, "-c", f"safe.directory={vrepo}", "fsck", "--full", "--no-dangling", cwd=vrepo)
    assert sh(*git, "-c", f"safe.directory={vrepo}", "log", "--format=%s", cwd=vrepo).stdout.split("\n")[:2] \
        == ["second commit", "first commit"]
    # and a clone out of the version equals the working tree
    sh(*git, "-c", f"safe.directory={vrepo}", "clone", "-q", vrepo, cur / "clone")
    assert (cur / "clone" / "file3.txt").read_text() == "changed\n"
    assert not (cur / "clone" / "file4.txt").exists()
    assert (cur / "clone" / "sub" / "bin").read_bytes() == (repo / "sub" / "bin").read_bytes()


# ------------------------------------------------------------------ tar
def test_tar_roundtrip(mimei, tmp_path):
    m, mid, cur = mimei
    src = _sample_tree(tmp_path / "src")
    os.symlink("json/__init__.py", src / "link-to-json")
    os.link(src / "os.py", src / "os-hardlink.py")
    archive = tmp_path / "in.tar"
    sh("tar", "-cf", archive, "-C", src, ".")
    (cur / "x").mkdir()
    sh("tar", "-xpf", archive, "-C", cur / "x")
    out = tmp_path / "out.tar"
    sh("tar", "-cf", out, "-C", cur / "x", ".")

    def members(path):
        with tarfile.open(path) as t:
            res = {}
            for mem in t.getmembers():
                data = None
                if mem.isfile():
                    data = hashlib.sha256(t.extractfile(mem).read()).hexdigest()
                res[mem.name] = (mem.type, mem.mode, mem.size, mem.linkname, data,
                                 int(mem.mtime), mem.uid, mem.gid)
            return res

    a, b = members(archive), members(out)
    assert sorted(a) == sorted(b)
    # hard links may be stored in either order, the rest must match exactly
    diffs = {k: (a[k], b[k]) for k in a if a[k] != b[k] and a[k][0] != tarfile.LNKTYPE
             and b[k][0] != tarfile.LNKTYPE}
    assert not diffs, list(diffs.items())[:5]
    assert os.stat(cur / "x" / "os.py").st_ino == os.stat(cur / "x" / "os-hardlink.py").st_ino
    sh("diff", "-r", "--no-dereference", src, cur / "x")
    n = m.backup(mid)
    sh("diff", "-r", "--no-dereference", src, m.v(mid, n) / "x")
    assert tree_digest(m.v(mid, n) / "x") == tree_digest(src)


# ------------------------------------------------------------------ sqlite
def test_sqlite_transactions(mimei):
    m, mid, cur = mimei
    db = cur / "data.db"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, grp INTEGER, payload TEXT)")
        con.execute("CREATE INDEX t_grp ON t (grp)")
        for grp in range(5):
            con.execute("BEGIN")
            con.executemany("INSERT INTO t (grp, payload) VALUES (?, ?)",
                            ((grp, f"row {grp}-{i} " + "x" * (i % 200)) for i in range(2000)))
            if grp == 2:
                con.execute("ROLLBACK")
            else:
                con.execute("COMMIT")
        # a second connection sees committed data and takes locks (fcntl) properly
        con2 = sqlite3.connect(db, timeout=0.5, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("DELETE FROM t WHERE grp = 4 AND id % 2 = 0")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            con2.execute("BEGIN IMMEDIATE")
        con.execute("COMMIT")
        assert con2.execute("SELECT count(*) FROM t").fetchone()[0] == 4 * 2000 - 1000
        con2.close()
    finally:
        con.close()
    assert not (cur / "data.db-journal").exists()
    con = sqlite3.connect(db)
    try:
        counts = dict(con.execute("SELECT grp, count(*) FROM t GROUP BY grp"))
        assert counts == {0: 2000, 1: 2000, 3: 2000, 4: 1000}
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.execute("VACUUM")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    # WAL mode needs shared memory (mmap of the -shm file) on the filesystem
    con = sqlite3.connect(db, isolation_level=None)
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("INSERT INTO t (grp, payload) VALUES (9, 'wal')")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    # the sqlite3 CLI agrees
    p = sh("sqlite3", db, "PRAGMA integrity_check; SELECT count(*) FROM t;")
    assert p.stdout.split() == ["ok", str(4 * 2000 - 1000 + 1)]
    n = m.backup(mid)
    ro = sqlite3.connect(f"file:{m.v(mid, n) / 'data.db'}?immutable=1", uri=True)
    try:
        assert ro.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert ro.execute("SELECT count(*) FROM t").fetchone()[0] == 4 * 2000 - 1000 + 1
    finally:
        ro.close()


# ------------------------------------------------------------------ rsync
def test_rsync(mimei, tmp_path):
    m, mid, cur = mimei
    src = _sample_tree(tmp_path / "src")
    os.symlink("os.py", src / "sym")
    (src / "empty-dir").mkdir()
    os.chmod(src / "os.py", 0o600)
    sh("rsync", "-a", f"{src}/", f"{cur}/dst/")
    sh("diff", "-r", "--no-dereference", src, cur / "dst")
    assert tree_digest(cur / "dst") == tree_digest(src)
    # mtimes preserved, so a second run transfers nothing
    p = sh("rsync", "-a", "--itemize-changes", f"{src}/", f"{cur}/dst/")
    assert p.stdout.strip() == "", p.stdout
    # a change is picked up and only that file moves
    with open(src / "json" / "decoder.py", "a") as f:
        f.write("# changed\n")
    p = sh("rsync", "-a", "--itemize-changes", f"{src}/", f"{cur}/dst/")
    assert [l.split()[-1] for l in p.stdout.splitlines()] == ["json/decoder.py"], p.stdout
    sh("diff", "-r", "--no-dereference", src, cur / "dst")
    # --inplace and --delete work too
    os.unlink(src / "http" / "server.py")
    sh("rsync", "-a", "--inplace", "--delete", f"{src}/", f"{cur}/dst/")
    sh("diff", "-r", "--no-dereference", src, cur / "dst")
    n = m.backup(mid)
    sh("diff", "-r", "--no-dereference", src, m.v(mid, n) / "dst")
    # and rsync out of a version (read-only source) back to a local dir
    sh("rsync", "-a", f"{m.v(mid, n)}/dst/", f"{tmp_path}/back/")
    sh("diff", "-r", "--no-dereference", src, tmp_path / "back")


# ------------------------------------------------------------------ editor save
def test_editor_style_save(mimei):
    m, mid, cur = mimei
    doc = cur / "doc.txt"
    doc.write_text("original\n")
    os.chmod(doc, 0o640)
    os.setxattr(doc, "user.keep", b"1")
    n0 = m.backup(mid)
    # what vim/emacs/VS Code do: write a temp file next to it, fsync, rename over
    tmp = cur / ".doc.txt.swp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    try:
        os.write(fd, b"new content\n" * 1000)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, doc)
    dfd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert doc.read_bytes() == b"new content\n" * 1000
    assert sorted(os.listdir(cur)) == ["doc.txt"]
    assert stat.S_IMODE(os.stat(doc).st_mode) == 0o640
    # a "backup-copy" save too: keep doc.txt~ then write
    os.link(doc, cur / "doc.txt~")
    os.unlink(doc)
    with open(doc, "x") as f:
        f.write("third\n")
    os.unlink(cur / "doc.txt~")
    assert sorted(os.listdir(cur)) == ["doc.txt"]
    n1 = m.backup(mid)
    assert (m.v(mid, n0) / "doc.txt").read_text() == "original\n"
    assert (m.v(mid, n1) / "doc.txt").read_text() == "third\n"
    assert sorted(os.listdir(m.v(mid, n1))) == ["doc.txt"]


# ------------------------------------------------------------------ cp -a
def test_cp_a_symlinks_fifo_hardlinks(mimei, tmp_path):
    m, mid, cur = mimei
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "file").write_bytes(os.urandom(70_000))
    (src / "top").write_text("top\n")
    os.link(src / "top", src / "a" / "hard-top")
    os.link(src / "top", src / "a" / "b" / "hard-top2")
    os.symlink("../top", src / "a" / "rel-link")
    os.symlink("/etc/hostname", src / "abs-link")
    os.symlink("missing", src / "dangling")
    os.symlink("a/b", src / "dir-link")
    os.mkfifo(src / "fifo", 0o620)
    os.chmod(src / "a" / "b" / "file", 0o751)
    os.utime(src / "top", ns=(1_234_567_890_000_000_000, 1_234_567_890_000_000_000))
    os.setxattr(src / "top", "user.note", b"hello")
    sh("cp", "-a", src, cur / "copy")
    dst = cur / "copy"
    sh("diff", "-r", "--no-dereference", "-x", "fifo", src, dst)
    # modes are checked in test_cp_a_keeps_modes; here: names, kinds, contents
    assert _no_modes(tree_digest(dst)) == _no_modes(tree_digest(src))
    st = [os.stat(p) for p in (dst / "top", dst / "a" / "hard-top", dst / "a" / "b" / "hard-top2")]
    assert len({s.st_ino for s in st}) == 1 and st[0].st_nlink == 3
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    assert os.readlink(dst / "a" / "rel-link") == "../top"
    assert os.readlink(dst / "dangling") == "missing"
    assert (dst / "a" / "rel-link").read_text() == "top\n"
    assert os.listdir(dst / "dir-link") == ["file", "hard-top2"] or \
        sorted(os.listdir(dst / "dir-link")) == ["file", "hard-top2"]
    assert os.stat(dst / "top").st_mtime_ns == 1_234_567_890_000_000_000
    assert os.getxattr(dst / "top", "user.note") == b"hello"
    n = m.backup(mid)
    v = m.v(mid, n) / "copy"
    sh("diff", "-r", "--no-dereference", "-x", "fifo", src, v)
    assert stat.S_ISFIFO(os.lstat(v / "fifo").st_mode)
    assert os.readlink(v / "dangling") == "missing"
    assert os.stat(v / "top").st_mtime_ns == 1_234_567_890_000_000_000
    # and copying it back out of the version keeps the tree
    sh("cp", "-a", v, tmp_path / "back")
    sh("diff", "-r", "--no-dereference", "-x", "fifo", src, tmp_path / "back")
    assert filecmp.cmp(src / "a" / "b" / "file", tmp_path / "back" / "a" / "b" / "file", shallow=False)


def _no_modes(d: dict) -> dict:
    def strip(v):
        if v[0] == "d":
            return ("d",)
        if v[0] == "o":
            return ("o", stat.S_IFMT(int(v[1], 8)))
        return v[:2]
    return {k: strip(v) for k, v in d.items()}


def test_cp_a_keeps_modes(mimei, tmp_path):
    m, mid, cur = mimei
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f644").write_text("a")
    (src / "d" / "f755").write_text("b")
    os.chmod(src / "f644", 0o644)
    os.chmod(src / "d" / "f755", 0o755)
    os.chmod(src / "d", 0o751)
    os.mkfifo(src / "fifo", 0o620)
    os.chmod(src / "fifo", 0o620)  # mkfifo's mode is masked by the umask
    sh("cp", "-a", src, cur / "copy")
    got = {p: stat.S_IMODE(os.lstat(cur / "copy" / p).st_mode) for p in ("f644", "d", "d/f755", "fifo")}
    assert got == {"f644": 0o644, "d": 0o751, "d/f755": 0o755, "fifo": 0o620}
