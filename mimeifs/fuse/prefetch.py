"""Directory readahead for version files: push small siblings into the kernel page cache.

A program that opens one file of a version directory usually goes on to the others
(``cat``, ``grep -r``, ``tar -c``, ``diff -r``, ``rsync``, ``cp -r``). Each of those files
costs a READ round trip through the daemon, about 100 µs on this project's machines,
more than reading the data does. When a version file is opened, :class:`DirPrefetch`
queues the other small files of its directory; the request loop works that queue off
while it has no request to answer (:class:`mimeifs.fuse.loop.RequestWaiter` calls
:meth:`DirPrefetch.step` in its idle time) and hands each file to the kernel with
FUSE_NOTIFY_STORE (``pyfuse3.notify_store``; fuse(4), "notify store"). The next
``open`` (``keep_cache``: versions never change) finds the pages there and no READ is
sent.

The idea is Lustre's "statahead" and NFS's readdirplus priming, applied to file data.
It is sound only because versions are immutable: pushed bytes can never go stale.

Limits keep it cheap: files up to ``max_file`` bytes, at most ``max_dir`` bytes per
directory, each directory once while it is among the last ``remember`` ones, and only
files the kernel already has an inode for (FUSE_NOTIFY_STORE needs one).

Why a file that is open is never pushed: the kernel locks each page it stores into,
and a page whose READ waits for the daemon stays locked until that READ is answered.
A store into it from the thread that answers requests deadlocks (seen in development:
``cat`` of a version tree hung in D state until the FUSE connection was aborted). The
kernel sends READ only for an open file, and opens and stores happen on the one
request thread, so "not open now" (no OPEN without its RELEASE) means no READ can be
waiting on the file's pages.
"""

from __future__ import annotations

import collections
import errno
import logging
from typing import Callable, Iterable, Iterator

log = logging.getLogger("mimeifs.prefetch")

MAX_FILE = 256 * 1024
MAX_DIR = 8 * 1024 * 1024
REMEMBER = 4096
QUEUE = 256

# (inode, content hash, size) of each file worth pushing, in directory order
FileList = Iterable[tuple[int, bytes, int]]


class DirPrefetch:
    """Readahead of whole version directories into the kernel page cache.

    ``read(hash, offset, size) -> bytes`` reads a version file's content;
    ``store(inode, offset, data)`` is ``pyfuse3.notify_store`` (raises OSError; ENOENT
    when the kernel has dropped the inode, ENOSYS on a kernel without notify store);
    ``is_open(inode) -> bool`` says whether the file has an OPEN without its RELEASE.
    ``stats``: ``dirs`` queued, ``files`` and ``bytes`` pushed, ``dropped`` opens whose
    directory could not be queued because ``QUEUE`` were already waiting (such a
    directory is tried again at its next open, so one directory may count many times).
    """

    def __init__(self, read: Callable[[bytes, int, int], bytes],
                 store: Callable[[int, int, bytes], None],
                 is_open: Callable[[int], bool],
                 max_file: int = MAX_FILE, max_dir: int = MAX_DIR, remember: int = REMEMBER):
        self.read = read
        self.store = store
        self.is_open = is_open
        self.max_file = max_file
        self.max_dir = max_dir
        self.remember = remember
        self.enabled = True
        self.stats = {"dirs": 0, "files": 0, "bytes": 0, "dropped": 0}
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._dirs: collections.deque[Callable[[], FileList]] = collections.deque()
        self._cur: Iterator[tuple[int, bytes, int]] | None = None
        self._budget = 0

    def opened(self, dir_ino: int, files: Callable[[], FileList]) -> None:
        """A file of directory ``dir_ino`` was opened; ``files()`` lists what to push
        (called later, when the directory's turn comes). Each directory is queued once."""
        if not self.enabled or dir_ino in self._seen:
            return
        if len(self._dirs) >= QUEUE:
            self.stats["dropped"] += 1
            return
        self._seen[dir_ino] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        self._dirs.append(files)
        self.stats["dirs"] += 1

    def pending(self) -> bool:
        """Whether :meth:`step` has work."""
        return self.enabled and (self._cur is not None or bool(self._dirs))

    def step(self) -> bool:
        """Push at most one file; returns False when there was nothing left to do.
        Never raises: a file that cannot be read is skipped (its READ will report it)."""
        while self.enabled:
            if self._cur is None:
                if not self._dirs:
                    return False
                try:
                    self._cur = iter(self._dirs.popleft()())
                except Exception:
                    log.exception("readahead: listing a directory")
                    continue
                self._budget = self.max_dir
            try:
                item = next(self._cur, None)
            except Exception:
                log.exception("readahead: listing a directory")
                item = None
            if item is None:
                self._cur = None
                continue
            ino, h, size = item
            if not 0 < size <= self.max_file or self.is_open(ino):
                continue
            if size > self._budget:
                self._cur = None
                continue
            self._budget -= size
            self._push(ino, h, size)
            return True
        return False

    def _push(self, ino: int, h: bytes, size: int) -> None:
        try:
            data = self.read(h, 0, size)
        except Exception as e:
            log.debug("readahead of inode %d: %s", ino, e)
            return
        try:
            self.store(ino, 0, data)
        except OSError as e:
            if e.errno == errno.ENOSYS:
                log.info("kernel has no FUSE notify store: directory readahead off")
                self.enabled = False
                self._dirs.clear()
                self._cur = None
            elif e.errno != errno.ENOENT:   # ENOENT: the kernel forgot the inode
                log.warning("notify store of inode %d: %s", ino, e)
            return
        except Exception:   # the request loop calls us: nothing may escape
            log.exception("notify store of inode %d", ino)
            return
        self.stats["files"] += 1
        self.stats["bytes"] += size
