"""The importer's two pipelines (worker threads; forked worker processes for big trees)
must store exactly the same thing."""

from __future__ import annotations

import os

from mimeifs.engine.importer import Importer

from .conftest import cur_snapshot, new_engine


def _tree(root):
    for d in range(5):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(40):
            (sub / f"f{i}.txt").write_bytes((f"{d}-{i} " * (i * 50 + 1)).encode())
        (root / f"d{d}" / "big.bin").write_bytes(os.urandom(300_000))
    (root / "unreadable").write_bytes(b"secret")
    os.chmod(root / "unreadable", 0)


def test_threads_and_processes_store_the_same(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _tree(src)
    results = {}
    for label, after in (("threads", 10 ** 9), ("processes", 1)):
        monkeypatch.setattr(Importer, "PROCESSES_AFTER", after)
        monkeypatch.setattr(Importer, "BATCH_FILES", 7)   # many batches in flight
        e = new_engine(tmp_path / label)
        mid = e.create("fs", "m")
        stats = Importer(e).run(str(src), mid)
        rec = e.backup(mid)
        results[label] = (rec["root"], cur_snapshot(e, e.state(mid)["cur"]),
                          stats["files"], stats["new_bytes"])
        e.store.close()
    assert results["threads"] == results["processes"]
    readable = 1 if os.geteuid() == 0 else 0   # root reads the mode-0 file too
    assert results["threads"][2] == 5 * 41 + readable


def test_reimport_skip_rules_on_raw_inodes(tmp_path):
    """unchanged_file / same_attrs read fields straight out of packed inodes; each field
    they compare must really be the one the Inode dataclass packs there."""
    import dataclasses
    import stat as st_

    from mimeifs.engine.scan import Stat
    from mimeifs.engine.worktree import ZERO32, Inode, same_attrs, unchanged_file

    node = Inode(7, st_.S_IFREG | 0o640, 1000, 100, 1, 0, 12345, 11, 22_000_000_123, 33,
                 0, 12345, b"b" * 32, b"f" * 32, b"m" * 20)
    St = Stat(node.mode, 1000, 100, 12345, 22_000_000_123, 0)

    assert unchanged_file(node.pack(), St) and same_attrs(node.pack(), St)
    assert unchanged_file(node.pack(), tuple(St))  # the listings' plain tuples
    assert not unchanged_file(None, St) and not same_attrs(None, St)
    for field, value in (("mode", st_.S_IFREG | 0o644), ("uid", 0), ("gid", 0),
                         ("size", 12346), ("mtime_ns", 22_000_000_124)):
        other = dataclasses.replace(node, **{field: value})
        assert not unchanged_file(other.pack(), St), field
    # the fields a re-import does not compare
    for field, value in (("atime_ns", 1), ("ctime_ns", 2), ("nlink", 3), ("aux", 4)):
        assert unchanged_file(dataclasses.replace(node, **{field: value}).pack(), St), field
    # a dirty file (not frozen since its last change) is never skipped
    assert not unchanged_file(dataclasses.replace(node, frozen=ZERO32).pack(), St)
    # size is not part of a directory's attributes
    d = dataclasses.replace(node, mode=st_.S_IFDIR | 0o755, size=0)

    DSt = St._replace(st_mode=d.mode)
    assert same_attrs(d.pack(), DSt) and not unchanged_file(d.pack(), DSt)


def test_reimport_after_change_through_cur(tmp_path):
    """A file changed in cur after an import is put back by the next import, even when
    the OS file did not change (cur's mtime moved, so the skip rule does not apply)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"original")
    e = new_engine(tmp_path / "store")
    mid = e.create("fs", "m")
    Importer(e).run(str(src), mid)
    root = e.state(mid)["cur"]
    d = e.wt.lookup(root, b"d").ino
    f = e.wt.lookup(d, b"f").ino
    e.wt.write(f, 0, b"CHANGED!")
    stats = Importer(e).run(str(src), mid)
    assert stats["files"] == 1 and stats["skipped"] == 0
    assert e.wt.read(f, 0, 100) == b"original"
    stats = Importer(e).run(str(src), mid)
    assert stats["files"] == 0 and stats["skipped"] == 1
    e.store.close()
