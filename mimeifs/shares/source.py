"""Keep cur of a share's MiMei in step with its ``source`` directory (issue 13).

How (the model of Syncthing's watcher and restic's skip rule, without a rescan
interval):

1. at start: an inotify watch on every directory of the source (``inotify_simple``,
   one watch per directory: inotify does not recurse), then a full import with
   ``--delete`` semantics (:class:`~mimeifs.engine.importer.Importer`): unchanged
   files cost an ``lstat``;
2. then only events: a reader task takes inotify's events as they come (the daemon
   sleeps in ``epoll`` while nothing happens: no CPU when idle); the sync task waits
   until events pause for :attr:`SourceSync.QUIET` s (at most :attr:`MAX_WAIT` s after
   the first), and syncs the directories they name with :class:`.dirsync.DirSync`;
3. a file being written (created or modified, not yet closed) is left out until
   ``IN_CLOSE_WRITE``, or until it has been quiet for :attr:`SETTLE` s (a writer
   that keeps it open); deletions and renames propagate (a rename seen as a pair is
   done in cur, so nothing is read again);
4. after an overflow of inotify's queue (``IN_Q_OVERFLOW``): watches again and a full
   import; when watches run out (``fs.inotify.max_user_watches``) or inotify is not
   available: a full import every :attr:`POLL` s, said in the state;
5. if the source directory itself goes away (deleted, moved, unmounted), the sync
   stops and says so: cur is left as it was (an unplugged disk must not empty cur).

What each sync changed in cur goes to the view (:meth:`View.changed`), so a door drops
exactly those nodes from its caches (``mm/<id>/cur/...`` and ``shared/<name>/...``).
A lock shared with the backup schedule keeps a backup from freezing half a sync.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import trio

from ..engine.importer import Importer
from .dirsync import DirSync

log = logging.getLogger("mimeifs.shares.source")

try:
    from inotify_simple import INotify, flags as F
except ImportError:  # pragma: no cover - a dependency; polling still works
    INotify = None
    F = None

if F is not None:
    WATCH_MASK = (F.CREATE | F.DELETE | F.MODIFY | F.CLOSE_WRITE | F.MOVED_FROM | F.MOVED_TO
                  | F.ATTRIB | F.DELETE_SELF | F.MOVE_SELF | F.ONLYDIR | F.DONT_FOLLOW
                  | F.EXCL_UNLINK)


class WatchLimit(Exception):
    """inotify could not watch one more directory (ENOSPC: the watch limit)."""


class SourceSync:
    """The source sync of one share: ``await run()`` until cancelled.

    ``engine``, ``view`` (for change events), ``share`` (a registry share with a
    source), ``lock`` (a trio.Lock shared with the share's backups), ``on_state()``
    called after :attr:`status` changed."""

    QUIET = 0.05
    MAX_WAIT = 0.5
    SETTLE = 3.0
    POLL = 30.0

    def __init__(self, engine, view, share, lock: trio.Lock, on_state=lambda: None):
        self.e = engine
        self.view = view
        self.share = share
        self.mimei = share.mimei
        self.root = os.fsencode(share.source)
        self.lock = lock
        self.on_state = on_state
        self.status = {"state": "starting", "since": time.time(), "synced": None,
                       "last_sync_s": None, "files": 0, "removed": 0, "syncs": 0,
                       "watches": 0, "writing": 0, "errors": []}
        self.inotify = None
        self.paths: dict[int, bytes] = {}   # watch descriptor -> relative directory path
        self.raw: list = []                 # events read, not yet absorbed
        self._wake = trio.Event()
        # absorbed, waiting for the next sync
        self.dirty: dict[bytes, bool] = {}  # relative directory -> deep
        self.new_dirs: list[bytes] = []
        self.moves: list[tuple[bytes, bytes]] = []
        self.moved_from: dict[int, tuple[bytes, bool]] = {}
        self.writing: dict[bytes, float] = {}  # relative file path -> last change (monotonic)
        self.overflow = False
        self.gone = False

    # ------------------------------------------------------------------ state
    def _state(self, state: str, **kw) -> None:
        self.status.update(state=state, **kw)
        self.on_state()

    # ------------------------------------------------------------------ the task
    async def run(self) -> None:
        try:
            if INotify is not None:
                try:
                    self.inotify = INotify(nonblocking=True)
                except OSError as e:
                    log.warning("share %s: no inotify (%s): polling", self.share.name, e)
            async with trio.open_nursery() as n:
                await self._full()
                if self.inotify is not None:
                    n.start_soon(self._reader)
                await self._loop()
                n.cancel_scope.cancel()
        finally:
            if self.inotify is not None:
                self.inotify.close()
                self.inotify = None

    async def _reader(self) -> None:
        ino = self.inotify
        fd = ino.fileno()
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                return  # gone to polling (_to_polling)
            if ino.closed:
                return
            try:
                evs = ino.read(timeout=0)
            except (BlockingIOError, InterruptedError):
                continue
            if evs:
                self.raw.extend(evs)
                self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        if not self.raw:
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                await self._wake.wait()
        self._wake = trio.Event()

    async def _loop(self) -> None:
        while not self.gone:
            if self.inotify is None:  # polling
                await trio.sleep(self.POLL)
                await self._full()
                continue
            settle = min(self.writing.values(), default=None)
            await self._wait(None if settle is None else max(0.0, settle + self.SETTLE - time.monotonic()))
            self._absorb()
            if self.gone:
                break
            if self.overflow:
                log.warning("share %s: inotify queue overflowed: full rescan", self.share.name)
                await self._full()
                continue
            # let a burst of events finish, within MAX_WAIT
            t0 = time.monotonic()
            while time.monotonic() - t0 < self.MAX_WAIT:
                await trio.sleep(self.QUIET)
                if not self.raw:
                    break
                self._absorb()
            if self.overflow or self.gone:
                continue
            self._settle()
            if self.dirty or self.moves or self.new_dirs:
                await self._incremental()
        self._state("stopped: the source directory is gone; cur is kept as it was")
        log.warning("share %s: source %s is gone; sync stopped", self.share.name,
                    self.share.source)

    # ------------------------------------------------------------------ events
    def _mark(self, rel: bytes, deep: bool = False) -> None:
        self.dirty[rel] = self.dirty.get(rel, False) or deep

    def _absorb(self) -> None:
        """Turn the events read so far into dirty directories, new directories,
        renames and files being written."""
        evs, self.raw = self.raw, []
        now = time.monotonic()
        for ev in evs:
            m = ev.mask
            if m & F.Q_OVERFLOW:
                self.overflow = True
                continue
            base = self.paths.get(ev.wd)
            if m & F.IGNORED:
                self.paths.pop(ev.wd, None)
                continue
            if base is None:
                continue
            if not ev.name:  # the watched directory itself
                if m & (F.DELETE_SELF | F.MOVE_SELF | F.UNMOUNT) and base == b"":
                    self.gone = True
                elif m & F.ATTRIB:
                    self._mark(base.rpartition(b"/")[0])  # its parent copies its attributes
                continue
            name = os.fsencode(ev.name)
            path = base + b"/" + name if base else name
            isdir = bool(m & F.ISDIR)
            if m & ~(F.MODIFY | F.ISDIR):  # a write alone waits for its close
                self._mark(base)
            if m & F.MOVED_FROM:
                self.moved_from[ev.cookie] = (path, isdir)
                self.writing.pop(path, None)
            if m & F.MOVED_TO:
                src = self.moved_from.pop(ev.cookie, None)
                if src is not None:
                    self.moves.append((src[0], path))
                    self._mark(src[0].rpartition(b"/")[0])
                if isdir:
                    self.new_dirs.append(path)
            elif m & F.CREATE and isdir:
                self.new_dirs.append(path)
            if not isdir:
                if m & (F.CREATE | F.MODIFY):
                    self.writing[path] = now
                elif m & (F.CLOSE_WRITE | F.DELETE):
                    self.writing.pop(path, None)
        # a directory moved out of the source: stop watching what was below it
        for path, isdir in self.moved_from.values():
            if isdir:
                self._unwatch(path)
        self.moved_from.clear()

    def _settle(self) -> None:
        """Files being written that were quiet for SETTLE s are taken as they are."""
        now = time.monotonic()
        for path, t in list(self.writing.items()):
            if now - t >= self.SETTLE:
                del self.writing[path]
                self._mark(path.rpartition(b"/")[0])

    # ------------------------------------------------------------------ watches
    def _watch_tree(self, rel: bytes) -> int:
        """Watch directory ``rel`` and every directory below it; returns how many.
        Raises :class:`WatchLimit`."""
        n = 0
        top = self.root + b"/" + rel if rel else self.root
        stack = [(top, rel)]
        while stack:
            path, r = stack.pop()
            try:
                wd = self.inotify.add_watch(path, WATCH_MASK)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise WatchLimit() from None
                continue  # gone meanwhile, or not a directory any more
            self.paths[wd] = r
            n += 1
            try:
                with os.scandir(path) as it:
                    for de in it:
                        if de.is_dir(follow_symlinks=False):
                            stack.append((de.path, r + b"/" + de.name if r else de.name))
            except OSError:
                pass
        return n

    def _unwatch(self, rel: bytes) -> None:
        pre = rel + b"/"
        for wd, p in list(self.paths.items()):
            if p == rel or p.startswith(pre):
                self.paths.pop(wd, None)
                try:
                    self.inotify.rm_watch(wd)
                except OSError:
                    pass

    def _to_polling(self, why: str) -> None:
        log.warning("share %s: %s: a full rescan every %g s instead of inotify",
                    self.share.name, why, self.POLL)
        if self.inotify is not None:
            trio.lowlevel.notify_closing(self.inotify.fileno())  # wakes the reader, which ends
            self.inotify.close()
            self.inotify = None
        self.paths.clear()
        self.status["mode"] = f"polling every {self.POLL:g} s: {why}"

    # ------------------------------------------------------------------ syncs
    async def _full(self) -> None:
        """Watch the whole tree again, then import it all (skip rule, deletions)."""
        self.overflow = False
        self.raw.clear()
        self.dirty.clear()
        self.new_dirs.clear()
        self.moves.clear()
        if not os.path.isdir(self.root):
            self.gone = True
            return
        self._state("scanning")
        if self.inotify is not None:
            try:
                n = await trio.to_thread.run_sync(self._watch_tree, b"")
                self.status["watches"] = n
                self.status["mode"] = "inotify"
            except WatchLimit:
                self._to_polling("inotify watch limit reached (fs.inotify.max_user_watches)")
        t0 = time.monotonic()
        async with self.lock:
            try:
                stats = await trio.to_thread.run_sync(self._import_all)
            except Exception as e:  # a source that cannot be read: say so, keep going
                log.exception("share %s: full sync failed", self.share.name)
                self._state(f"error: {e}")
                return
        self.view.changed(self.mimei, None)
        self._synced(stats, time.monotonic() - t0)

    def _import_all(self) -> dict:
        return Importer(self.e, delete=True).run(os.fsdecode(self.root), self.mimei)

    async def _incremental(self) -> None:
        new_dirs, self.new_dirs = self.new_dirs, []
        for rel in new_dirs:
            if self.inotify is None:
                break
            try:
                await trio.to_thread.run_sync(self._watch_tree, rel)
            except WatchLimit:
                self._to_polling("inotify watch limit reached (fs.inotify.max_user_watches)")
                await self._full()
                return
            self._mark(rel, deep=True)
        self.status["watches"] = len(self.paths)
        dirty, self.dirty = self.dirty, {}
        moves, self.moves = self.moves, []
        skip = frozenset(self.root + b"/" + p for p in self.writing)
        self._state("syncing")
        t0 = time.monotonic()
        async with self.lock:
            try:
                ds = await trio.to_thread.run_sync(self._sync_dirs, dirty, moves, skip)
            except Exception as e:
                log.exception("share %s: sync failed", self.share.name)
                self._state(f"error: {e}")
                for rel, deep in dirty.items():  # try again with the next events
                    self._mark(rel, deep)
                return
        if ds.inos or ds.entries:
            self.view.changed(self.mimei, sorted(ds.inos), sorted(ds.entries))
        self._synced(ds.stats, time.monotonic() - t0)

    def _sync_dirs(self, dirty, moves, skip) -> DirSync:
        ds = DirSync(self.e, self.root, self.mimei, skip)
        if moves:
            ds.apply_moves(moves)
        ds.sync(dirty)
        return ds

    def _synced(self, stats: dict, secs: float) -> None:
        st = self.status
        st["syncs"] += 1
        st["files"] += stats.get("files", 0)
        st["removed"] += stats.get("removed", 0)
        st["last_sync_s"] = round(secs, 4)
        st["synced"] = time.time()
        st["writing"] = len(self.writing)
        errs = stats.get("errors") or []
        if errs:
            st["errors"] = (st["errors"] + errs)[-20:]
            for x in errs[:5]:
                log.warning("share %s: %s", self.share.name, x)
        self._state("in step" if not self.writing else "in step (files being written wait)")
