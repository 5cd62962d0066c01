"""The shares service of the daemon: the ``.mmfs`` folder followed, sources kept in
step, backups on schedule, and the state ``mimeifs shares`` prints.

One trio task tree in the daemon's nursery (:mod:`mimeifs.daemon`):

- the folder ``<store>/shares`` is read at start and followed with inotify (a file
  closed after writing, moved in or out, deleted); after an overflow it is read
  again. Writes through ``<mnt>/shared/`` reach the registry at once through the view
  (:meth:`Registry.file_changed`), before the watch hears of them;
- every change of a share is told to the view (:meth:`View.changed`), so a door
  drops ``shared/<name>`` and ``shared/<name>.mmfs`` from its caches, and starts or
  stops the share's tasks: its :class:`~.source.SourceSync`, its backup schedule, and
  for another author's MiMei not held here a search through the network node;
- every :attr:`SharesService.RECHECK` s refused shares are resolved again (a source
  directory made since) and a sync stopped by a vanished source restarts once the
  source is back;
- the state of every share is written to ``<store>/shares-status.json`` (atomically,
  at most every 0.2 s) for ``mimeifs shares``.

Backups (``backup_every``): every period, if cur differs from the last version (a
dirty root, or a root other than the last version's: a restore), the service backs
it up with the memo ``backup_every <period> (share <name>)``. The share's lock keeps
a backup from freezing half a source sync.
"""

from __future__ import annotations

import json
import logging
import os
import time

import trio

from ..engine.worktree import ZERO32
from ..view.nodes import SHARED, vino
from .mmfs import format_duration
from .registry import Registry
from .source import INotify, F, SourceSync

log = logging.getLogger("mimeifs.shares")

STATUS_FILE = "shares-status.json"


class _ShareTasks:
    """The running tasks of one share, and what they report."""

    def __init__(self, share):
        self.share = share
        self.scope = trio.CancelScope()
        self.lock = trio.Lock()
        self.sync: SourceSync | None = None
        self.backup: dict = {}
        self.available: str | None = None
        self.nursery = None

    def key(self) -> tuple:
        s = self.share
        return (s.mimei, s.source, s.spec.backup_every, s.own)


class SharesService:
    """The daemon service for ``.mmfs`` shares over ``engine`` and ``view`` in the
    store at ``store_path``; ``mountpoint`` (or None) is kept out of sources.
    :attr:`registry` is the table the view's ``shared/`` shows."""

    essential = False
    RECHECK = 10.0
    FIND_EVERY = 30.0

    def __init__(self, engine, view, store_path: str, mountpoint: str | None = None):
        self.e = engine
        self.view = view
        self.store_path = store_path
        self.registry = Registry(os.path.join(store_path, "shares"), engine,
                                 forbidden=(store_path, mountpoint or ""))
        self.status_path = os.path.join(store_path, STATUS_FILE)
        self.tasks: dict[str, _ShareTasks] = {}
        self._token = None
        self._nursery = None
        self._status_due = None

    # ------------------------------------------------------------------ the service
    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        self._token = trio.lowlevel.current_trio_token()
        self._status_due = trio.Event()
        async with trio.open_nursery() as n:
            self._nursery = n
            self.registry.subscribe(self._entry_changed)
            self.e.subscribe(self._records_changed)
            await trio.to_thread.run_sync(self.registry.scan)
            n.start_soon(self._follow_folder)
            n.start_soon(self._recheck)
            n.start_soon(self._write_status)
            task_status.started()

    def close(self) -> None:
        try:
            os.unlink(self.status_path)
        except OSError:
            pass

    def _soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the service's loop (from any thread)."""
        try:
            self._token.run_sync_soon(fn, *args)
        except (trio.RunFinishedError, AttributeError):
            pass

    # ------------------------------------------------------------------ changes
    def _entry_changed(self, name, old, new) -> None:
        self._soon(self._apply, name, old, new)

    def _records_changed(self, mimei: str) -> None:
        """Another author's MiMei got newer records: its shares at last / release now
        show another version."""
        self._soon(self.view.changed, mimei, [], [])

    def _apply(self, name, old, new) -> None:
        fnames = {e.fname for e in (old, new) if e is not None}
        self.view.changed(None, [vino("mmfs", f) for f in fnames],
                          [(SHARED, os.fsencode(name))]
                          + [(SHARED, os.fsencode(f)) for f in fnames])
        share = new.share if new is not None else None
        t = self.tasks.get(name)
        if t is not None and (share is None or t.key() != _ShareTasks(share).key()):
            t.scope.cancel()
            del self.tasks[name]
            t = None
        if share is not None:
            if t is None:
                t = self.tasks[name] = _ShareTasks(share)
                self._nursery.start_soon(self._share_main, t)
            t.share = share
        self._status_changed()

    async def _share_main(self, t: _ShareTasks) -> None:
        with t.scope:
            async with trio.open_nursery() as n:
                t.nursery = n
                n.start_soon(trio.sleep_forever)  # open for a restarted sync
                s = t.share
                if s.source:
                    n.start_soon(self._source, t)
                if s.spec.backup_every:
                    n.start_soon(self._backups, t)
                if not s.own:
                    n.start_soon(self._availability, t)

    # ------------------------------------------------------------------ tasks of a share
    async def _source(self, t: _ShareTasks) -> None:
        t.sync = SourceSync(self.e, self.view, t.share, t.lock, self._status_changed)
        try:
            await t.sync.run()
        except Exception as e:
            log.exception("share %s: source sync failed", t.share.name)
            t.sync.status["state"] = f"error: {e}"
        self._status_changed()

    async def _backups(self, t: _ShareTasks) -> None:
        every = t.share.spec.backup_every
        t.backup = {"every_s": every, "next": time.time() + every, "last": None}
        while True:
            await trio.sleep(every)
            t.backup["next"] = time.time() + every
            try:
                async with t.lock:
                    rec = await trio.to_thread.run_sync(self._backup_if_changed, t.share)
            except Exception as e:
                log.exception("share %s: scheduled backup failed", t.share.name)
                t.backup["error"] = str(e)
                self._status_changed()
                continue
            if rec is not None:
                t.backup.update(last={"n": rec["n"], "time": rec["time"] / 1e9, "root": rec["root"]},
                                error=None)
                log.info("share %s: backed up %s as version %d", t.share.name, t.share.mimei, rec["n"])
                mid = t.share.mimei
                mdir = self.view.mimei_node(mid).ino
                self.view.changed(mid, self.view.mimei_numbers(mid),
                                  [(mdir, n) for n in (b"last", b"v", b".info")])
            self._status_changed()

    def _backup_if_changed(self, share) -> dict | None:
        """Back up cur of ``share`` if it differs from the last version (content or
        references: the engine's "nothing to back up" rule). A clean cur root equal
        to the last version's is decided without a write transaction."""
        mid = share.mimei
        st = self.e.state(mid)
        root = self.e.wt.getattr(st["cur"])
        if st["last"] is not None and root.frozen != ZERO32:
            last = self.e.version(mid, st["last"])
            if (root.frozen.hex() == last["root"]
                    and sorted(last.get("refs", [])) == sorted(self.e.refs(mid)[0])):
                return None
        memo = f"backup_every {format_duration(share.spec.backup_every)} (share {share.name})"
        rec = self.e.backup(mid, memo=memo, allow_empty=False)
        return None if rec.get("unchanged") else rec

    async def _availability(self, t: _ShareTasks) -> None:
        """Another author's MiMei: found here, through the network node, or not."""
        mid = t.share.mimei
        while True:
            if self.e.exists(mid):
                t.available = "available"
            elif self.e.fetcher is None:
                t.available = "not available: no provider"
            else:
                t.available = "looking for a provider"
                self._status_changed()
                try:
                    found = await trio.to_thread.run_sync(self.e.find, mid)
                except Exception as e:
                    found = False
                    log.warning("share %s: looking for %s: %s", t.share.name, mid, e)
                t.available = "available" if found else "not available: no provider found"
                if found:
                    self.view.changed(mid, [], [(SHARED, os.fsencode(t.share.name))])
            self._status_changed()
            if t.available == "available":
                return
            await trio.sleep(self.FIND_EVERY)

    # ------------------------------------------------------------------ the folder
    async def _follow_folder(self) -> None:
        folder = self.registry.folder
        ino = None
        if INotify is not None:
            try:
                ino = INotify(nonblocking=True)
                ino.add_watch(folder, F.CLOSE_WRITE | F.MOVED_TO | F.MOVED_FROM | F.DELETE
                              | F.CREATE | F.ATTRIB | F.ONLYDIR)
            except OSError as e:
                log.warning("shares: cannot watch %s (%s): reading it every 2 s", folder, e)
                if ino is not None:
                    ino.close()
                ino = None
        if ino is None:
            while True:
                await trio.sleep(2.0)
                self.registry.scan()
        try:
            self.registry.scan()  # what changed between the first scan and the watch
            fd = ino.fileno()
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    evs = ino.read(timeout=0)
                except (BlockingIOError, InterruptedError):
                    continue
                if any(ev.mask & F.Q_OVERFLOW for ev in evs):
                    self.registry.scan()
                    continue
                for name in dict.fromkeys(ev.name for ev in evs if ev.name):
                    self.registry.file_changed(name)
        finally:
            ino.close()

    async def _recheck(self) -> None:
        while True:
            await trio.sleep(self.RECHECK)
            try:
                self.registry.recheck()
            except Exception:
                log.exception("shares: recheck failed")
            for t in list(self.tasks.values()):
                s = t.sync
                if (s is not None and s.gone and t.share.source
                        and os.path.isdir(t.share.source) and t.share.name in self.tasks):
                    log.info("share %s: source %s is back: syncing again", t.share.name,
                             t.share.source)
                    t.sync = None
                    t.nursery.start_soon(self._source, t)

    # ------------------------------------------------------------------ status
    def _status_changed(self) -> None:
        if self._status_due is not None:
            self._status_due.set()

    def status(self) -> dict:
        """What ``mimeifs shares`` prints: every file, valid or refused, with the
        daemon's state of each (sync, backups, availability, replicas)."""
        out = []
        for d in self.registry.status():
            t = self.tasks.get(d["name"])
            if t is not None:
                if t.sync is not None:
                    d["sync"] = dict(t.sync.status)
                if t.backup:
                    d["backup"] = dict(t.backup)
                if t.available:
                    d["available"] = t.available
            if d.get("ok") and d.get("replicas"):
                d["replicas_held"] = None
                d["replicas_note"] = ("no network node runs: copies are not kept elsewhere"
                                      if self.e.fetcher is None else "kept by the network node")
            out.append(d)
        return {"pid": os.getpid(), "updated": time.time(), "shares": out}

    async def _write_status(self) -> None:
        tmp = self.status_path + ".tmp"
        while True:
            await self._status_due.wait()
            self._status_due = trio.Event()
            try:
                data = json.dumps(self.status(), indent=1, default=str)
                with open(tmp, "w") as f:
                    f.write(data)
                os.replace(tmp, self.status_path)
            except Exception:
                log.exception("shares: writing %s", self.status_path)
            await trio.sleep(0.2)
