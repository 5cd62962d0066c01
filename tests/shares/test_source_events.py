"""The source sync in-process, with real inotify and a real store: events lost to an
overflow are caught by the full rescan that follows it, and running out of watches
turns into periodic rescans that still keep cur in step."""

from __future__ import annotations

import os

import trio
from inotify_simple import Event, flags as F

from mimeifs.engine.db import Store
from mimeifs.engine.mimei import Engine
from mimeifs.shares import source as source_mod
from mimeifs.shares.registry import Registry
from mimeifs.shares.source import SourceSync, WatchLimit
from mimeifs.view import View


def _setup(tmp_path):
    e = Engine(Store.create(str(tmp_path / "store"), map_size=1 << 32))
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("1\n")
    reg = Registry(str(tmp_path / "store" / "shares"), e)
    (tmp_path / "store" / "shares" / "s.mmfs").write_text(f'mark = "s"\nsource = "{src}"\n')
    reg.scan()
    v = View(e, 0)
    v.shares = reg
    heard = []
    v.subscribe(lambda m, inos, entries: heard.append(inos))
    return e, src, reg.get("s"), v, heard


def _cur_text(e, mid, *path) -> bytes | None:
    ino = e.state(mid)["cur"]
    try:
        for p in path:
            ino = e.wt.lookup(ino, p.encode()).ino
        return e.wt.read(ino, 0, 1 << 20)
    except OSError:
        return None


async def _until(pred, timeout=10.0):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


def test_an_overflow_is_followed_by_a_full_rescan(tmp_path):
    e, src, share, v, heard = _setup(tmp_path)

    async def main():
        sync = SourceSync(e, v, share, trio.Lock())
        async with trio.open_nursery() as n:
            n.start_soon(sync.run)
            await _until(lambda: sync.status["syncs"] == 1)
            assert _cur_text(e, share.mimei, "d", "f") == b"1\n"
            # lose events: stop watching, change the tree, then the kernel's overflow
            for wd in list(sync.paths):
                sync.inotify.rm_watch(wd)
            await trio.sleep(0.1)
            (src / "d" / "f").write_text("2\n")
            (src / "g").write_text("new\n")
            await trio.sleep(0.2)
            assert _cur_text(e, share.mimei, "g") is None  # nothing heard of it
            sync.raw.append(Event(-1, F.Q_OVERFLOW, 0, ""))
            sync._wake.set()
            await _until(lambda: sync.status["syncs"] == 2)
            assert _cur_text(e, share.mimei, "d", "f") == b"2\n"
            assert _cur_text(e, share.mimei, "g") == b"new\n"
            assert None in heard  # a full rescan tells doors: everything of the MiMei
            # and watching again: an ordinary change is heard
            (src / "h").write_text("after\n")
            await _until(lambda: _cur_text(e, share.mimei, "h") == b"after\n")
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        e.store.close()


def test_out_of_watches_means_periodic_rescans(tmp_path, monkeypatch):
    e, src, share, v, heard = _setup(tmp_path)
    real = SourceSync._watch_tree

    def few_watches(self, rel):  # the whole tree at start, then no more
        if rel:
            raise WatchLimit()
        return real(self, rel)

    monkeypatch.setattr(SourceSync, "_watch_tree", few_watches)
    monkeypatch.setattr(SourceSync, "POLL", 0.3)
    assert source_mod.INotify is not None

    async def main():
        sync = SourceSync(e, v, share, trio.Lock())
        async with trio.open_nursery() as n:
            n.start_soon(sync.run)
            await _until(lambda: sync.status["syncs"] >= 1)
            assert sync.status["mode"] == "inotify"
            (src / "new").mkdir()  # one more directory to watch: none left
            (src / "new" / "x").write_text("x\n")
            await _until(lambda: _cur_text(e, share.mimei, "new", "x") == b"x\n")
            assert "polling" in sync.status["mode"] and "max_user_watches" in sync.status["mode"]
            os.remove(src / "d" / "f")
            await _until(lambda: _cur_text(e, share.mimei, "d", "f") is None)
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        e.store.close()
