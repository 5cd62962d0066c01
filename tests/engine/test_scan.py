"""The forked directory walker the importer reads listings from (mimeifs.engine.scan)."""

import os
import stat

import pytest

from mimeifs.engine import scan


def _tree(root):
    """A small tree with files, an empty dir, a symlink, a fifo and a deep chain."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "f.txt").write_bytes(b"x" * 10)
    (root / "a" / "g.bin").write_bytes(b"y" * 5000)
    (root / "a" / "b" / "c" / "deep").write_bytes(b"")
    os.symlink("f.txt", root / "ln")
    os.mkfifo(root / "a" / "fifo")
    for i in range(600):  # more than one pickled frame
        (root / "a" / "b" / f"n{i:04d}").write_bytes(b"%d" % i)
    return os.fsencode(root)


def _dfs(path):
    """Paths in the importer's recursion order, with the listing scan_dir gives."""
    out = []
    listing = scan.scan_dir(path)
    out.append((path, listing))
    for name, st in listing:
        if isinstance(st, tuple) and stat.S_ISDIR(st[0]):
            out.extend(_dfs(os.path.join(path, name)))
    return out


def _same(a, b):
    return sorted(a) == sorted(b)


def test_listing_matches_lstat(tmp_path):
    root = _tree(tmp_path)
    listing = dict(scan.scan_dir(root))
    assert set(listing) == {b"a", b"empty", b"f.txt", b"ln"}
    for name, st in listing.items():
        want = os.lstat(os.path.join(root, name))
        assert scan.Stat._make(st) == (want.st_mode, want.st_uid, want.st_gid, want.st_size,
                                       want.st_mtime_ns, want.st_rdev)
    assert stat.S_ISLNK(listing[b"ln"][0])  # not followed


def test_walk_delivers_every_directory_in_order(tmp_path):
    root = _tree(tmp_path)
    want = _dfs(root)
    ahead = scan.StatAhead(root)
    try:
        for path, listing in want:
            assert _same(ahead.take(path), listing), path
    finally:
        ahead.close()
    assert (ahead.hits, ahead.misses) == (len(want), 0)


def test_out_of_order_and_unknown_paths_are_listed_here(tmp_path):
    root = _tree(tmp_path)
    want = dict(_dfs(root))
    ahead = scan.StatAhead(root)
    try:
        deep = os.path.join(root, b"a", b"b", b"c")
        assert _same(ahead.take(deep), want[deep])           # ahead of the walk's order
        assert _same(ahead.take(root), want[root])           # delivered earlier, kept
        assert _same(ahead.take(root), want[root])           # a second take lists here
        assert ahead.misses >= 1
        with pytest.raises(FileNotFoundError):
            ahead.take(os.path.join(root, b"nowhere"))
    finally:
        ahead.close()


def test_a_killed_child_only_costs_time(tmp_path):
    root = _tree(tmp_path)
    want = _dfs(root)
    ahead = scan.StatAhead(root)
    pid = ahead._pid
    os.kill(pid, 9)
    try:
        for path, listing in want:
            assert _same(ahead.take(path), listing), path
    finally:
        ahead.close()
    assert ahead.hits + ahead.misses == len(want)
    with pytest.raises(ChildProcessError):  # close() reaped it: no zombie left
        os.waitpid(pid, os.WNOHANG)


def test_unlistable_root_raises_its_error(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"")
    ahead = scan.StatAhead(os.fsencode(f))
    try:
        with pytest.raises(NotADirectoryError):
            ahead.take(os.fsencode(f))
    finally:
        ahead.close()


def test_close_mid_walk_reaps_the_child(tmp_path):
    root = _tree(tmp_path)
    ahead = scan.StatAhead(root)
    pid = ahead._pid
    ahead.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    ahead.close()  # twice is harmless

