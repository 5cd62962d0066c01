"""Directory readahead (mimeifs.fuse.prefetch): the rules on fakes, then a real mount where
the pushed pages are seen in the kernel page cache (fincore) and read back right."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess

import pytest

from mimeifs.fuse.prefetch import QUEUE, DirPrefetch
from .conftest import wait_for


class Fake:
    def __init__(self, open_inos=(), store_errors=None, bad=()):
        self.stored: list[tuple[int, int, bytes]] = []
        self.open_inos = set(open_inos)
        self.store_errors = dict(store_errors or {})
        self.bad = set(bad)

    def read(self, h, off, size):
        if h in self.bad:
            raise ValueError("corrupt")
        return h[:1] * size

    def store(self, ino, off, data):
        if ino in self.store_errors:
            code = self.store_errors[ino]
            if code is None:
                raise RuntimeError("binding bug")
            raise OSError(code, os.strerror(code))
        self.stored.append((ino, off, data))

    def prefetch(self, **kw):
        return DirPrefetch(self.read, self.store, lambda i: i in self.open_inos, **kw)


def drain(p: DirPrefetch) -> int:
    n = 0
    while p.step():
        n += 1
    return n


def test_pushes_small_files_of_a_directory_once_within_the_limits():
    f = Fake(open_inos={3})
    p = f.prefetch(max_file=100, max_dir=250)
    files = [(1, b"a", 10), (2, b"b", 0), (3, b"c", 10), (4, b"d", 101), (5, b"e", 100),
             (6, b"f", 100), (7, b"g", 50), (8, b"h", 1)]
    calls = []
    p.opened(42, lambda: calls.append(1) or files)
    p.opened(42, lambda: calls.append(2) or files)      # same directory: ignored
    assert p.pending()
    assert drain(p) == 3 and not p.pending()
    # 2 is empty, 3 is open, 4 is over max_file; 1+5+6 = 210, then 7 (50) is over budget
    assert [(i, len(d)) for i, _, d in f.stored] == [(1, 10), (5, 100), (6, 100)]
    assert all(off == 0 for _, off, _ in f.stored)
    assert f.stored[0][2] == b"a" * 10
    assert calls == [1]
    assert p.stats == {"dirs": 1, "files": 3, "bytes": 210, "dropped": 0}


def test_errors_skip_the_file_and_enosys_turns_it_off():
    f = Fake(store_errors={2: errno.ENOENT, 4: errno.EIO, 5: None}, bad={b"x"})
    p = f.prefetch()
    p.opened(1, lambda: [(1, b"x", 5), (2, b"a", 5), (3, b"b", 5), (4, b"c", 5),
                         (5, b"d", 5), (6, b"e", 5)])
    drain(p)
    assert [i for i, _, _ in f.stored] == [3, 6]
    assert p.enabled

    f2 = Fake(store_errors={1: errno.ENOSYS})
    p2 = f2.prefetch()
    p2.opened(1, lambda: [(1, b"a", 5), (2, b"b", 5)])
    drain(p2)
    assert not p2.enabled and f2.stored == []
    p2.opened(2, lambda: [(9, b"z", 5)])
    assert not p2.pending()


def test_a_listing_that_fails_is_skipped_and_the_queue_is_bounded():
    f = Fake()
    p = f.prefetch()

    def broken():
        raise RuntimeError("gone")

    p.opened(1, broken)
    p.opened(2, lambda: [(7, b"a", 3)])
    drain(p)
    assert [i for i, _, _ in f.stored] == [7]
    for d in range(10, 10 + QUEUE + 5):
        p.opened(d, lambda: [])
    assert p.stats["dropped"] == 5


def _resident(path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


SIZES = [1, 4095, 4096, 4097, 10_000, 65_536, 100_001, 262_144, 262_145, 1_000_000, 0]


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore (util-linux)")
def test_opening_one_version_file_brings_its_small_siblings_into_the_page_cache(fresh_mfs):
    m = fresh_mfs
    mid = m.create("readahead")
    d = m.cur(mid) / "d"
    d.mkdir()
    want = {}
    for i, size in enumerate(SIZES):
        data = os.urandom(size)
        (d / f"f{i:02d}").write_bytes(data)
        want[f"f{i:02d}"] = data
    n = m.backup(mid)
    m.umount()          # a new mount: no page cache for the version yet
    m.mount()
    vd = m.v(mid, n) / "d"
    names = sorted(os.listdir(vd))
    assert names == sorted(want)
    with open(vd / "f00", "rb") as f:
        assert f.read() == want["f00"]
    small = [k for k, v in want.items() if 0 < len(v) <= 256 * 1024 and k != "f00"]
    big = [k for k, v in want.items() if len(v) > 256 * 1024]
    wait_for(lambda: all(_resident(vd / k) >= len(want[k]) for k in small), 20,
             "siblings in the page cache")
    # (fincore opens each file it looks at; a file open at its turn is not pushed, so
    # the check of the big ones comes after the small ones are in)
    assert all(_resident(vd / k) == 0 for k in big)
    for k, v in want.items():
        assert (vd / k).read_bytes() == v, k
    m.umount()
    found = re.findall(r"directory readahead: (\d+) directories, (\d+) files, (\d+) bytes",
                       m.log_text())
    assert found and found[-1] == ("1", str(len(small)),
                                   str(sum(len(want[k]) for k in small))), found


def test_readahead_off_pushes_nothing(fresh_mfs):
    m = fresh_mfs
    mid = m.create("no-readahead")
    d = m.cur(mid) / "d"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}").write_bytes(b"x" * 1000)
    n = m.backup(mid)
    m.umount()
    m.run("mount", m.mnt, "--allow-other", "--no-dir-readahead", timeout=60)
    m.pids.append(m.daemon_pid())
    vd = m.v(mid, n) / "d"
    for i in range(5):
        assert (vd / f"f{i}").read_bytes() == b"x" * 1000
    m.umount()
    found = re.findall(r"directory readahead: (\d+) directories, (\d+) files", m.log_text())
    assert found[-1] == ("0", "0")
