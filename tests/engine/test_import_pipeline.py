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
