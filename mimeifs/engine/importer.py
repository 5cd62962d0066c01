"""Import an OS directory (or file) into cur straight through the engine, no FUSE.

What restic and borg do for a backup source: files whose size and mtime match the cur
entry are skipped without reading; others are read, cut into content-defined chunks,
hashed and compressed in worker threads (blake3, zstd and pyfastcdc release the GIL),
and stored by the writer thread in batched LMDB transactions (about 1 s or 64 MiB each,
so a running mount is never locked out for long). Imported files are clean in cur:
their base manifest is their content, so the next backup only builds trees.

Kept: regular files, directories, symlinks, fifos and device nodes, mode, uid, gid,
mtime, ``user.*`` extended attributes. With ``delete``, entries cur has and the source
lacks are removed (``rsync --delete``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import os
import stat
import threading
import time
from typing import Callable

import blake3

from . import blocks, objects, packs, scan
from .scan import Stat
from .objects import Manifest
from .worktree import ZERO32, Inode, Worktree, fserr, ikey, raw_mode, same_attrs, unchanged_file

SMALL = 8 << 20


class _HashingReader:
    def __init__(self, f):
        self.f, self.h = f, blake3.blake3()

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.h.update(memoryview(b)[:n])
        return n


def prepare_small(path: str, writer: packs.PackWriter) -> tuple[bytes, int, list]:
    """Read, hash and cut a file of at most :data:`SMALL` bytes and add its chunks to
    ``writer`` (which compresses each pack as it fills; in a worker process).

    Returns (content hash, size, [(chunk hash, length, pack index, offset)]).
    Raises OSError if the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    h = blake3.blake3(data).digest()
    refs = []
    for c in blocks.cut(data):
        ch = blake3.blake3(c).digest()
        refs.append((ch, len(c), *writer.add(ch, c)))
    return h, len(data), refs


_packed = threading.local()
_PACKED_MAX = 1 << 20


def _packed_before(run: bytes | None) -> set[bytes] | None:
    """Chunk hashes this worker (process or thread) packed in earlier batches of import
    run ``run``, or None without a run."""
    if run is None:
        return None
    if getattr(_packed, "run", None) != run or len(_packed.hashes) > _PACKED_MAX:
        _packed.run, _packed.hashes = run, set()
    return _packed.hashes


def prepare_batch(paths: list[str], run: bytes | None = None,
                  stored: list[bytes] = ()) -> tuple[list, list]:
    """:func:`prepare_small` for each path into shared packs (in a worker process).

    Returns (results, packs): per path (content hash, size, refs) or, for an unreadable
    file, its error message (str); packs = [(pack id, stored value, raw length)], the
    batch's chunks (each once) grouped in file order.

    With a ``run`` token, chunks this worker packed in an earlier batch of the same run
    are not packed again (ref pack index :data:`packs.KNOWN`): a worker runs its batches
    in submission order and the importer stores batches in that order, so those chunks
    are in the store when this batch is stored (else the importer re-reads the file).
    ``stored``: chunk hashes the importer stored lately (from every worker's batches),
    treated the same way.
    """
    known = _packed_before(run)
    if known is not None:
        known.update(stored)
    writer = packs.PackWriter(known=known)
    out = []
    for p in paths:
        try:
            out.append(prepare_small(p, writer))
        except OSError as e:
            out.append(e.strerror or str(e))
    writer.flush()
    if known is not None:
        known.update(h for mem in writer.members for h, _, _ in mem)
    return out, writer.packs


def store_manifest_and_chunks(txn, store, h: bytes, size: int, refs: list,
                              batch_packs: list, stored: set[int]) -> int:
    """Index a prepared file's new chunks (storing the packs they need, once per
    batch: ``stored`` holds the pack indices already put) and store its manifest.
    Returns the stored bytes newly added."""
    added = packs.put_refs(txn, store.db("blocks"), refs, batch_packs, stored)
    objects.store_manifest(txn, store.db("manifests"),
                           Manifest(h, size, [r[0] for r in refs], [r[1] for r in refs]))
    return added


def store_os_file(txn, store, path: str) -> tuple[bytes, int, int]:
    """Store one OS file's content: (content hash, size, bytes newly stored).
    Raises OSError if the file cannot be read."""
    size = os.stat(path).st_size
    if size <= SMALL:
        writer = packs.PackWriter()
        h, size, refs = prepare_small(path, writer)
        writer.flush()
        return h, size, store_manifest_and_chunks(txn, store, h, size, refs, writer.packs, set())
    with open(path, "rb") as f:
        rd = _HashingReader(f)
        pieces = (bytes(c.data) for c in blocks.chunker().cut_stream(rd))
        hashes, lengths, added = packs.store_chunks(txn, store.db("blocks"), pieces)
        h = rd.h.digest()
    size = sum(lengths)
    objects.store_manifest(txn, store.db("manifests"), Manifest(h, size, hashes, lengths))
    return h, size, added


class _RunChunks:
    """Chunk hashes one import run has stored, handed to its workers (which cannot read
    LMDB) so they leave them out of their packs: each batch carries the hashes stored
    since the last :data:`SPAN` submissions, enough for every worker to see each one."""

    SPAN = 8

    def __init__(self):
        self.token = os.urandom(16)
        self.log: list[bytes] = []
        self.marks: list[int] = []

    def stored(self, hashes) -> None:
        self.log.extend(hashes)

    def recent(self) -> list[bytes]:
        self.marks.append(len(self.log))
        if len(self.marks) > self.SPAN:
            start = self.marks[-self.SPAN - 1]
            del self.log[:start]
            self.marks = [m - start for m in self.marks[-self.SPAN:]]
        return self.log[:]


def _user_xattrs(path: str) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in names:
        if n.startswith("user."):
            try:
                out.append((n.encode(), os.getxattr(path, n, follow_symlinks=False)))
            except OSError:
                pass
    return out


class Importer:
    """One import run. ``progress(nbytes)`` is called as file bytes are consumed.

    The walk queues small files in batches; workers read, hash, cut and compress them
    while this thread drains finished batches in order and does only LMDB work. Worker
    threads serialize on the GIL (measured: 15.3 s CPU in 14.8 s wall for 43k files),
    so once a tree proves big (:data:`PROCESSES_AFTER` small files) the batches go to
    a pool of worker processes, one per core. They are forked: they only read files
    and compress, never touch the inherited LMDB handle, and multiprocessing ends them
    with ``os._exit`` (no finalizer closes the environment); "spawn" would re-import the
    caller's ``__main__``, which breaks scripts without a main guard.
    Files over :data:`SMALL` are streamed here, their chunks encoded in threads.
    """

    PROCESSES_AFTER = 512
    BATCH_FILES = 64
    BATCH_BYTES = 8 << 20
    MAX_INFLIGHT = 8

    def __init__(self, engine, delete: bool = False, progress: Callable[[int], None] | None = None,
                 batch_bytes: int = 64 << 20, batch_seconds: float = 1.0):
        self.e = engine
        self.wt: Worktree = engine.wt
        self.store = engine.store
        self.delete = delete
        self.progress = progress or (lambda n: None)
        self.batch_bytes, self.batch_seconds = batch_bytes, batch_seconds
        self.txn = None
        self._since = 0
        self._t0 = 0.0
        self.stats = {"files": 0, "skipped": 0, "dirs": 0, "bytes_read": 0, "new_bytes": 0,
                      "removed": 0, "errors": []}
        self._batch: list = []
        self._batch_size = 0
        self._inflight: collections.deque = collections.deque()
        self._queued = 0
        self._procs: concurrent.futures.ProcessPoolExecutor | None = None
        self._run_chunks = _RunChunks()  # chunk hashes this run stored, for the workers
        self._ahead: scan.StatAhead | None = None  # lists directories before _sync_dir

    # -- transactions -----------------------------------------------------------------
    def _txn(self):
        if self.txn is None:
            self.txn = self.store.begin_write()
            self._since, self._t0 = 0, time.monotonic()
        return self.txn

    def _maybe_commit(self, force: bool = False) -> None:
        if self.txn is not None and (force or self._since >= self.batch_bytes
                                     or time.monotonic() - self._t0 >= self.batch_seconds):
            txn, self.txn = self.txn, None
            self.store.end_write(txn)

    def run(self, src: str, mimei: str, ahead: scan.StatAhead | None = None,
            sync: bool = True) -> dict:
        """Import ``src`` into cur of ``mimei``. Raises OSError, MiMeiError.

        ``ahead`` is a walk of ``src`` already started (:func:`scan.walk_ahead`; the
        CLI forks it before its own start-up); this run closes it. ``sync=False``
        leaves the fsync to the caller (a backup that follows syncs anyway)."""
        self._ahead = ahead
        try:
            m20 = bytes.fromhex(mimei)
            if not self.e.can_write(m20):
                raise fserr(errno.EACCES, f"{mimei} was not authored by this node")
            root_ino = self.e.state(mimei)["cur"]
            st = os.stat(src)
            root = self.wt.getattr(root_ino)
            if root.is_dir:
                if not stat.S_ISDIR(st.st_mode):
                    raise fserr(errno.ENOTDIR, f"{src}: an fs MiMei imports a directory")
                if self._ahead is None:
                    self._ahead = scan.walk_ahead(src)
                self._sync_dir(os.fsencode(src), root_ino)
                self._submit()
                self._drain(0)
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise fserr(errno.EISDIR, f"{src}: a file MiMei imports a regular file")
                self._store_one((src, st, root_ino, None, None), None)
            self._maybe_commit(force=True)
        except BaseException as e:
            if self.txn is not None:
                txn, self.txn = self.txn, None
                self.store.end_write(txn, commit=False)
            full = self.store.space_error(e)
            if full is not None:  # the map or the filesystem is full: ENOSPC, one line
                raise full from None
            raise
        finally:
            if self._ahead is not None:
                self._ahead.close()
                self._ahead = None
            if self._procs is not None:
                self._procs.shutdown(wait=True, cancel_futures=True)
                self._procs = None
        if sync:
            self.store.sync()
        return self.stats

    # -- the walk ---------------------------------------------------------------------
    def _sync_dir(self, path: bytes, ino: int) -> None:
        """Make cur directory ``ino`` mirror OS directory ``path`` (bytes: names are
        bytes in cur, and scandir on bytes skips a decode and encode per entry)."""
        wt = self.wt
        try:  # unsorted: order only decides new inode numbers
            listing = self._ahead.take(path) if self._ahead else scan.scan_dir(path)
        except OSError as e:
            self.stats["errors"].append(f"{os.fsdecode(path)}: {e.strerror}")
            return
        txn = self._txn()  # nothing in the loop commits: one transaction throughout
        existing = dict(wt.child_keys(txn, ino))
        pending = []
        subdirs = []
        d_inodes = wt.d_inodes
        join, get, pop, unchanged = os.path.join, txn.get, existing.pop, unchanged_file
        skipped = 0
        for name, st in listing:
            if type(st) is not tuple:
                self.stats["errors"].append(f"{os.fsdecode(join(path, name))}: {st.strerror}")
                continue
            key = pop(name, None)
            if key is not None:
                # the common cases of a re-import, decided on the raw inode bytes
                raw = get(key, db=d_inodes)
                if unchanged(raw, st):
                    skipped += 1
                    continue
                cino = int.from_bytes(key, "big")
                st = Stat._make(st)
                if raw is not None and stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(raw_mode(raw)):
                    subdirs.append((join(path, name), cino, st))
                    continue
                node = Inode.unpack(cino, raw) if raw is not None else wt.get(txn, cino)  # ENOENT
            else:
                st = Stat._make(st)
                node = None
            if node is not None and stat.S_IFMT(node.mode) != stat.S_IFMT(st.st_mode):
                wt.remove_tree(txn, ino, name, node, self.e.is_open)
                node = None
            if stat.S_ISDIR(st.st_mode):
                if node is None:
                    node = wt.new_child(txn, ino, name, st.st_mode, st.st_uid, st.st_gid)
                subdirs.append((join(path, name), node.ino, st))
            elif stat.S_ISREG(st.st_mode):
                if (node is not None and node.size == st.st_size and node.mtime_ns == st.st_mtime_ns
                        and node.frozen != ZERO32):
                    self.stats["skipped"] += 1
                    self._set_attrs(txn, node, st)
                    continue
                pending.append((join(path, name), st, node.ino if node else None, ino, name))
            else:
                target = os.readlink(join(path, name)) if stat.S_ISLNK(st.st_mode) else b""
                if node is not None and (node.target != target or node.rdev != st.st_rdev):
                    wt.remove_tree(txn, ino, name, node, self.e.is_open)
                    node = None
                if node is None:
                    node = wt.new_child(txn, ino, name, st.st_mode, st.st_uid, st.st_gid,
                                        st.st_rdev if not target else 0, target)
                self._set_attrs(txn, wt.get(txn, node.ino), st)
        self.stats["skipped"] += skipped
        for item in pending:
            self._queue(item)
        txn = self._txn()
        if self.delete and existing:
            for name, key in existing.items():
                wt.remove_tree(txn, ino, name, wt.get(txn, int.from_bytes(key, "big")),
                               self.e.is_open)
                self.stats["removed"] += 1
            wt.touched(txn, wt.get(txn, ino), content=True)
        self._maybe_commit()
        if self._inflight and self._inflight[0][0].done():
            self._drain(0, done_only=True)  # store what workers finished while we walked
        for p, cino, st in subdirs:
            self.stats["dirs"] += 1
            self._sync_dir(p, cino)
            txn = self._txn()
            raw = txn.get(ikey(cino), db=wt.d_inodes)
            if not same_attrs(raw, st):
                self._set_attrs(txn, Inode.unpack(cino, raw), st)

    def _set_attrs(self, txn, node: Inode, st: os.stat_result) -> None:
        """Copy mode, owner and mtime from the source; dirty the parents if any changed."""
        self.wt.set_source_attrs(txn, node, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)

    # -- the file pipeline ----------------------------------------------------------------
    def _queue(self, item) -> None:
        """Queue one file (path, stat, existing inode or None, parent inode, name)."""
        if item[1].st_size > SMALL:
            self._store_one(item, None)
            return
        self._batch.append(item)
        self._batch_size += item[1].st_size
        if len(self._batch) >= self.BATCH_FILES or self._batch_size >= self.BATCH_BYTES:
            self._submit()

    def _submit(self, force: bool = False) -> None:
        """Send the queued small files to a worker as one batch. A batch of small
        files is held back (unless ``force``) until it fills a pack
        (:data:`blocks.PACK_TARGET` bytes) or reaches 8 x :data:`BATCH_FILES` files:
        each batch's last pack is cut short, so tiny batches mean small packs that
        compress worse. :meth:`_drain` with ``keep=0`` (the end of a run) forces it."""
        if not self._batch:
            return
        if (not force and self._batch_size < blocks.PACK_TARGET
                and len(self._batch) < 8 * self.BATCH_FILES):
            return
        items, self._batch, self._batch_size = self._batch, [], 0
        self._queued += len(items)
        if self._procs is None and self._queued >= self.PROCESSES_AFTER:
            import multiprocessing
            self._procs = concurrent.futures.ProcessPoolExecutor(
                max_workers=os.cpu_count() or 2, mp_context=multiprocessing.get_context("fork"))
        ex = self._procs or blocks.pool()
        run = self._run_chunks
        self._inflight.append((ex.submit(prepare_batch, [i[0] for i in items], run.token,
                                         run.recent()), items))
        self._drain(self.MAX_INFLIGHT)

    def _drain(self, keep: int, done_only: bool = False) -> None:
        """Store finished batches, oldest first, until at most ``keep`` are in flight
        (``keep=0`` first submits a batch :meth:`_submit` held back). ``done_only``
        stops at the first batch still running instead of waiting for it."""
        if keep == 0 and self._batch and not done_only:
            self._submit(force=True)
        while len(self._inflight) > keep:
            if done_only and not self._inflight[0][0].done():
                return
            fut, items = self._inflight.popleft()
            try:
                results, batch_packs = fut.result()
            except Exception:  # a worker died (e.g. killed): do the batch here
                results, batch_packs = prepare_batch([i[0] for i in items])
            results, batch_packs = packs.drop_known(self._txn(), self.store.db("blocks"),
                                                    results, batch_packs)
            stored: set[int] = set()  # packs of this batch already put
            for item, r in zip(items, results):
                if isinstance(r, str):
                    self.stats["errors"].append(f"{os.fsdecode(item[0])}: {r}")
                else:
                    self._store_one(item, (*r, batch_packs, stored))
                    self._run_chunks.stored(c[0] for c in r[2])

    def _store_one(self, item, prepared) -> None:
        """Store one file's content and make or update its cur inode."""
        wt = self.wt
        path, st, cino, parent, name = item
        txn = self._txn()
        try:
            if prepared is None:
                h, size, added = store_os_file(txn, self.store, path)
            else:
                h, size, refs, batch_packs, stored = prepared
                try:
                    added = store_manifest_and_chunks(txn, self.store, h, size, refs,
                                                      batch_packs, stored)
                except packs.MissingChunk:  # a worker's earlier batch did not land
                    h, size, added = store_os_file(txn, self.store, path)
        except OSError as e:
            self.stats["errors"].append(f"{os.fsdecode(path)}: {e.strerror}")
            return
        if cino is None:
            node = wt.new_child(txn, parent, name, st.st_mode, st.st_uid, st.st_gid, dirty=False)
        else:
            node = wt.get(txn, cino)
        xs = _user_xattrs(path)
        if xs:
            wt.add_xattrs(txn, node, xs)
        wt.set_content(txn, node, h, size)
        wt.set_source_attrs(txn, node, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        wt.dirty_up(txn, node.ino)
        self.stats["files"] += 1
        self.stats["bytes_read"] += size
        self.stats["new_bytes"] += added
        self._since += size
        self.progress(size)
        self._maybe_commit()


def scan_size(src: str) -> tuple[int, int]:
    """(files, bytes) below ``src`` (for a progress bar's total)."""
    files = total = 0
    if os.path.isfile(src):
        return 1, os.path.getsize(src)
    for dirpath, _dirs, names in os.walk(src):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
    return files, total
