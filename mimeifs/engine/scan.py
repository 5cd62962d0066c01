"""Walk an OS directory tree ahead of the importer, in a forked process.

A re-import of a large, mostly unchanged tree is bound by ``lstat``: on the 50,725-file
benchmark tree ``find -printf '%s %T@'`` (C) spends 0.25 s in the kernel, 3-4 µs per
entry, and the importer's own comparisons cost about as much again in Python. git
overlaps its ``lstat`` calls for the same reason (``core.preloadIndex``). A thread does
not help in Python: the walker and the importer fight over the GIL after every system
call, and the import took 1.25 s instead of 0.73 s when tried. A forked child has its
own interpreter: it lists and ``lstat``\\ s on the second core and sends compact tuples
through a pipe, which cost the importer 0.4 µs an entry to unpickle.

The child only lists directories and writes to the pipe: it never touches the LMDB
environment it inherits (as LMDB requires of a forked child) and ends with
``os._exit``. The walk is depth-first, pre-order, children in ``scandir`` order: the
order in which :meth:`Importer._sync_dir` recurses, so each listing is the next to
arrive; a path the walk does not deliver is listed by the importer itself, so results
never depend on the child (only the time does).
"""

from __future__ import annotations

import collections
import fcntl
import os
import pickle
import stat

#: What the importer reads of an entry's ``lstat``. Listings carry plain tuples in this
#: order (cheaper to unpickle and compare); the importer names them only for entries
#: it does more with than skip.
Stat = collections.namedtuple("Stat", "st_mode st_uid st_gid st_size st_mtime_ns st_rdev")

#: One directory's entries in ``scandir`` order: (name, stat tuple) or (name, OSError)
#: for an entry that vanished or could not be stat'ed. Names are bytes.
Listing = list

_BATCH_ENTRIES = 512     # entries per pickled frame
_PIPE_BYTES = 1 << 20    # F_SETPIPE_SZ: how far the child may run ahead (~25k entries)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def scan_dir(path: bytes) -> Listing:
    """The entries of directory ``path`` (bytes) with what ``lstat`` says of each (see
    :data:`Listing`). Raises OSError if ``path`` cannot be listed."""
    out = []
    with os.scandir(path) as it:
        for de in it:
            try:
                s = de.stat(follow_symlinks=False)
            except OSError as e:
                out.append((de.name, e))
                continue
            out.append((de.name, (s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns,
                                  s.st_rdev)))
    return out


def _child_walk(root: bytes, f) -> None:
    stack, batch, n = [root], [], 0
    while stack:
        path = stack.pop()
        try:
            raw = scan_dir(path)
        except OSError as e:
            batch.append((path, e))
            n += 1
        else:
            batch.append((path, raw))
            n += len(raw) + 1
            subs = [os.path.join(path, name) for name, s in raw
                    if type(s) is tuple and stat.S_ISDIR(s[0])]
            stack.extend(reversed(subs))
        if n >= _BATCH_ENTRIES or not stack:
            pickle.dump(batch, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            batch, n = [], 0


class StatAhead:
    """Listings of the directories under ``root`` (bytes), made ahead by a child.

    :meth:`take` returns what :func:`scan_dir` would for a path. Listings arrive in the
    walk's order; a path that is not among them (the child failed, or the importer
    asked out of order) is listed here instead. ``hits`` and ``misses`` count the two.
    :meth:`close` ends the child (SIGKILL if it is still walking) and reaps it.
    Raises OSError if the pipe or the fork cannot be made (the caller lists alone).
    """

    def __init__(self, root: bytes):
        self.hits = self.misses = 0
        self._ready: dict[bytes, object] = {}
        self._eof = False
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # the default 64 KiB still works, the child just waits more
        try:
            self._pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            raise
        if self._pid == 0:  # the child: list, send, and leave without running any cleanup
            try:
                os.close(r)
                with os.fdopen(w, "wb", buffering=1 << 16) as f:
                    _child_walk(root, f)
            except BaseException:
                pass
            finally:
                os._exit(0)
        os.close(w)
        self._rf = os.fdopen(r, "rb", buffering=1 << 16)

    def take(self, path: bytes) -> Listing:
        """The listing of ``path`` (see :func:`scan_dir`); raises its OSError."""
        ready = self._ready
        while path not in ready and not self._eof:
            try:
                batch = pickle.load(self._rf)
            except Exception:  # EOF, a dead child, a torn frame: list the rest here
                self._eof = True
                break
            ready.update(batch)
        got = ready.pop(path, None)
        if got is None:
            self.misses += 1
            return scan_dir(path)
        self.hits += 1
        if isinstance(got, OSError):
            raise got
        return got

    def close(self) -> None:
        """Stop and reap the child."""
        if self._pid <= 0:
            return
        self._rf.close()
        try:
            os.kill(self._pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(self._pid, 0)
        self._pid = 0


def walk_ahead(src: str) -> StatAhead | None:
    """A :class:`StatAhead` of directory ``src``; None if ``src`` is not a directory or
    no child can be made (the importer then lists alone, only slower)."""
    try:
        if not os.path.isdir(src):
            return None
        return StatAhead(os.fsencode(src))
    except OSError as e:
        import logging  # not at the top: this module loads before the CLI's start-up
        logging.getLogger(__name__).warning("listing %s without a helper process: %s", src, e)
        return None
