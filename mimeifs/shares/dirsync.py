"""Bring a few directories of a source into cur: the incremental step of a source sync.

The engine's :class:`~mimeifs.engine.importer.Importer` mirrors a whole tree with
restic's skip rule (size, mtime, mode and owner equal: not read). A share's source
sync knows from inotify which directories changed, so :class:`DirSync` runs the same
per-directory step (``Importer._sync_dir``, with ``delete``) on those directories only:

- a *shallow* directory (a name in it was created, changed or removed) is compared
  entry by entry, without descending into subdirectories cur already has;
- a *deep* one (made or moved in since the last look) is imported with everything
  below it;
- renames seen as a pair of events are done in cur first (:meth:`DirSync.apply_moves`),
  so a moved file or tree is found unchanged under its new name instead of read again;
- a file still being written (``skip``) is left as cur has it; the sync takes it when
  it is closed (or quiet long enough: the caller decides).

It also records what changed in cur (:attr:`inos`, :attr:`entries`), which a door
needs to drop from its caches. Everything runs in the calling (worker) thread, in the
importer's batched write transactions; files are hashed and compressed in the engine's
worker threads (no processes: forking a daemon with running threads for a few
hundred files is not worth it).
"""

from __future__ import annotations

import os

from ..engine.importer import Importer


class DirSync(Importer):
    """One incremental sync of source ``root`` (bytes) into cur of ``mimei``.
    ``skip``: absolute paths (bytes) of files being written. After :meth:`sync`:
    :attr:`inos` (cur inodes whose attributes or bytes changed), :attr:`entries`
    ((directory inode, name) that now name something else or nothing),
    :attr:`deferred` (skipped files) and the importer's :attr:`stats`."""

    PROCESSES_AFTER = 1 << 62

    def __init__(self, engine, root: bytes, mimei: str, skip: frozenset = frozenset()):
        super().__init__(engine, delete=True)
        self.root = root
        self.mimei = mimei
        self.skip = skip
        self.inos: set[int] = set()
        self.entries: set[tuple[int, bytes]] = set()
        self.deferred: list[bytes] = []
        self._deep = False
        self._depth = 0
        self.cur_root = engine.state(mimei)["cur"]

    # ------------------------------------------------------------------ paths
    def _abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def _cur_dir(self, txn, rel: bytes) -> int | None:
        """The cur directory at ``rel`` (relative to the source), or None."""
        ino = self.cur_root
        for part in rel.split(b"/") if rel else ():
            ino = self.wt.child(txn, ino, part)
            if ino is None:
                return None
        return ino if self.wt.get(txn, ino).is_dir else None

    # ------------------------------------------------------------------ the run
    def apply_moves(self, moves: list[tuple[bytes, bytes]]) -> int:
        """Rename in cur what was renamed in the source (relative paths, in the order
        they happened). A rename cur cannot do (a name it lacks, a non-empty target)
        is left to the directory sync. Returns how many were done."""
        done = 0
        for src, dst in moves:
            d1, _, n1 = src.rpartition(b"/")
            d2, _, n2 = dst.rpartition(b"/")
            with self.store.read() as txn:
                p1, p2 = self._cur_dir(txn, d1), self._cur_dir(txn, d2)
            if p1 is None or p2 is None:
                continue
            try:
                self.wt.rename(p1, n1, p2, n2, 0, self.e.is_open)
            except OSError:
                continue
            done += 1
            self.inos.update((p1, p2))
            self.entries.update(((p1, n1), (p2, n2)))
        return done

    def sync(self, dirs: dict[bytes, bool]) -> dict:
        """Sync directories ``{relative path: deep}``, parents first; returns the
        importer's stats. A directory that is no longer one (or gone) is left to its
        parent's sync. Raises what the importer raises."""
        deep_done: list[bytes] = []
        try:
            for rel in sorted(dirs, key=lambda r: (r.count(b"/") if r else -1, r)):
                if any(rel == d or rel.startswith(d + b"/") or not d for d in deep_done):
                    continue
                path = self._abs(rel)
                if os.path.islink(path) or not os.path.isdir(path):
                    continue
                ino = self._cur_dir(self._txn(), rel)
                if ino is None:
                    continue  # its parent's sync (earlier in this order) did not make it
                self._deep = dirs[rel]
                self._sync_dir(path, ino)
                if self._deep:
                    deep_done.append(rel)
            self._drain(0)
            self._maybe_commit(force=True)
        except BaseException:
            if self.txn is not None:
                txn, self.txn = self.txn, None
                self.store.end_write(txn, commit=False)
            raise
        return self.stats

    # ------------------------------------------------------------------ importer hooks
    def _sync_dir(self, path: bytes, ino: int) -> None:
        if self._depth and not self._deep:
            return  # shallow: a subdirectory cur has is synced when it changes itself
        before = dict(self.wt.child_keys(self._txn(), ino))
        self._depth += 1
        try:
            super()._sync_dir(path, ino)
        finally:
            self._depth -= 1
        after = dict(self.wt.child_keys(self._txn(), ino))
        if before != after:
            self.inos.add(ino)
            for n in before.keys() | after.keys():
                if before.get(n) != after.get(n):
                    self.entries.add((ino, n))

    def _queue(self, item) -> None:
        if item[0] in self.skip:
            self.deferred.append(item[0])
            return
        super()._queue(item)

    def _store_one(self, item, prepared) -> None:
        super()._store_one(item, prepared)
        _path, _st, cino, parent, name = item
        if cino is None:
            self.inos.add(parent)
            self.entries.add((parent, name))
        else:
            self.inos.add(cino)

    def _set_attrs(self, txn, node, st) -> None:
        self.inos.add(node.ino)
        super()._set_attrs(txn, node, st)
