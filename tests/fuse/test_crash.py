"""A real ``kill -9`` of the daemon: finished versions survive intact, the store stays clean,
and ``mimeifs mount`` clears the dead mountpoint by itself."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

from .conftest import pid_alive, tree_digest, wait_for

WRITER = textwrap.dedent("""
    import os, sys, random
    root = sys.argv[1]
    rnd = random.Random(int(sys.argv[2]))
    i = 0
    try:
        while True:
            d = os.path.join(root, "d%02d" % (i % 7))
            os.makedirs(d, exist_ok=True)
            p = os.path.join(d, "f%05d" % i)
            data = rnd.randbytes(rnd.choice([10, 1000, 5000, 70000, 300000]))
            with open(p + ".tmp", "wb") as f:
                f.write(data)
            os.rename(p + ".tmp", p)
            if i % 5 == 4:                     # rewrite an older file in place
                q = os.path.join(root, "d%02d" % ((i - 3) % 7), "f%05d" % (i - 3))
                if os.path.exists(q):
                    with open(q, "r+b") as f:
                        f.seek(rnd.randrange(0, 5000))
                        f.write(rnd.randbytes(2000))
            if i % 11 == 10:                   # and delete one
                q = os.path.join(root, "d%02d" % ((i - 9) % 7), "f%05d" % (i - 9))
                if os.path.exists(q):
                    os.unlink(q)
            i += 1
            if i % 20 == 0:
                print(i, flush=True)
    except OSError as e:                       # the daemon was killed: stop
        print("stopped", i, e, flush=True)
""")


def _read_everything(root) -> int:
    """Read every file under root completely; returns the byte count."""
    total = 0
    for dp, dns, fns in os.walk(root):
        for n in fns:
            p = os.path.join(dp, n)
            if os.path.islink(p):
                os.readlink(p)
                continue
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    total += len(b)
    return total


def _check_clean(m) -> None:
    p = m.run("check", check=False, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "clean" in p.stdout.split("\n")[-2:][0] or p.stdout.strip().endswith("clean"), p.stdout


def test_kill9_while_writing_and_backing_up(fresh_mfs):
    m = fresh_mfs
    mid = m.create("crash-a")
    cur = m.cur(mid)
    (cur / "w").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cur / "w"), "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recorded: dict[int, dict] = {}
    try:
        # wait until the writer is going, then back up several times while it writes
        wait_for(lambda: len(os.listdir(cur / "w")) >= 3, 60, "writer to start")
        for k in range(4):
            before = sum(len(fs) for _, _, fs in os.walk(cur / "w"))
            wait_for(lambda: sum(len(fs) for _, _, fs in os.walk(cur / "w")) > before + 5, 60,
                     "writer progress between backups")
            n = m.backup(mid, memo=f"during writes {k}")
            assert n == k
            recorded[n] = tree_digest(m.v(mid, n))
            assert recorded[n], "empty version"
        # one more backup in flight when the daemon dies
        inflight = subprocess.Popen([sys.executable, "-m", "mimeifs.cli", "--store", str(m.store),
                                     "backup", mid, "-m", "in flight"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = m.kill9()
        inflight.wait(timeout=120)
        assert writer.wait(timeout=120) is not None
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert not pid_alive(killed)
    # the mountpoint is dead now; `mimeifs mount` must clear it by itself
    m.mount()
    assert m.daemon_pid() != killed
    versions = m.log(mid)
    ns = [r["n"] for r in versions]
    assert ns == list(range(len(ns))), ns
    for n, digest in recorded.items():
        assert n in ns, f"v/{n} finished before the kill but is gone"
        assert tree_digest(m.v(mid, n)) == digest, f"v/{n} changed after kill -9"
    for n in ns:
        if n not in recorded:  # the in-flight backup either finished completely or not at all
            assert n == len(recorded), ns
            _read_everything(m.v(mid, n))
            assert versions[n]["memo"] == "in flight"
    # cur is readable in full and writable again
    _read_everything(cur)
    (cur / "after-crash").write_text("alive")
    n = m.backup(mid)
    assert (m.v(mid, n) / "after-crash").read_text() == "alive"
    m.umount()
    _check_clean(m)


def test_kill9_during_large_backup(fresh_mfs):
    m = fresh_mfs
    mid = m.create("crash-b")
    cur = m.cur(mid)
    (cur / "small").write_text("v0 content\n")
    assert m.backup(mid) == 0
    v0 = tree_digest(m.v(mid, 0))
    # ~200 MiB of fresh, incompressible files
    want = {}
    (cur / "big").mkdir()
    seed = hashlib.sha256(b"seed").digest()
    for i in range(50):
        block = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        data = os.urandom(2 << 20) + block * ((2 << 20) // 32)  # 4 MiB
        (cur / "big" / f"f{i:03d}").write_bytes(data)
        want[f"big/f{i:03d}"] = hashlib.sha256(data).hexdigest()
    data_mdb = m.store / "lmdb" / "data.mdb"
    used_before = os.stat(data_mdb).st_blocks

    inflight = subprocess.Popen([sys.executable, "-m", "mimeifs.cli", "--store", str(m.store),
                                 "backup", mid, "-m", "large"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # kill once the backup is visibly writing (the store file grows), or at once if it is done
    wait_for(lambda: inflight.poll() is not None
             or os.stat(data_mdb).st_blocks > used_before + (16 << 20) // 512,
             120, "the backup to start writing")
    finished_first = inflight.poll() is not None
    killed = m.kill9()
    inflight.wait(timeout=120)
    m.mount()
    assert m.daemon_pid() != killed
    ns = [r["n"] for r in m.log(mid)]
    assert ns in ([0], [0, 1]), ns
    if finished_first:
        assert ns == [0, 1]
    assert tree_digest(m.v(mid, 0)) == v0
    if ns == [0, 1]:
        got = tree_digest(m.v(mid, 1))
        assert {k: v[1] for k, v in got.items() if k.startswith("big/")} == want
        assert got["small"][1] == v0["small"][1]
    # cur kept all its data either way
    for rel, h in want.items():
        with open(cur / rel, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == h, rel
    # a backup after the crash works and is complete
    n = m.backup(mid)
    got = tree_digest(m.v(mid, n))
    assert {k: v[1] for k, v in got.items() if k.startswith("big/")} == want
    m.umount()
    _check_clean(m)


def test_kill9_with_open_unlinked_file(fresh_mfs):
    """A file unlinked while open is kept for its reader; if the daemon dies then, the
    next mount frees it and the store stays consistent."""
    m = fresh_mfs
    mid = m.create("crash-c")
    cur = m.cur(mid)
    (cur / "keep").write_text("keep")
    data = os.urandom(3 << 20)
    (cur / "ghost").write_bytes(data)
    assert m.backup(mid) == 0
    f = open(cur / "ghost", "rb")
    try:
        os.unlink(cur / "ghost")
        assert f.read(100) == data[:100]
        m.kill9()
    finally:
        try:
            f.close()
        except OSError:
            pass
    m.mount()
    assert sorted(os.listdir(cur)) == ["keep"]
    assert (m.v(mid, 0) / "ghost").read_bytes() == data  # the version still has it
    assert "orphan" in m.log_text()
    assert m.backup(mid) == 1
    assert sorted(os.listdir(m.v(mid, 1))) == ["keep"]
    m.umount()
    _check_clean(m)
    m.run("gc")
    _check_clean(m)
