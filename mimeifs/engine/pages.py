"""cur's file data: pages written since the last backup over a base manifest.

Part of ``cur`` (see :mod:`mimeifs.engine.worktree`). ``pages``: ino + page number ->
bytes written since the last backup, in :data:`PAGE`-sized pages (the last page of a
file may be shorter; missing tail bytes read as zeros). A page present overrides the
base; absent, the base (the file's last frozen content, ``Inode.base``) shows below the
base limit ``Inode.aux`` and zeros above.

Every stored page carries a checksum (:data:`SUM` bytes at its end): XXH3-64 over the
page's key and bytes (xxHash, https://github.com/Cyan4973/xxHash), so a flipped bit or a
page stored under another key is caught. Versions are protected by their content
hashes; these are what protect bytes written since the last backup. Every read of a
page verifies it and raises :class:`~mimeifs.engine.errors.Corrupt` (EIO at the door,
logged with inode and page) rather than return wrong bytes; ``mimeifs check`` verifies
every page (:func:`check_pages`). A checksum against damage, not against an attacker:
XXH3 hashes a 64 KiB page in ~2.4 µs here, blake3 in ~16-23 µs (a 1 MiB cur write
costs 16 of them, and so does a 1 MiB read; ``tools/bench_pages.py``).
"""

from __future__ import annotations

import logging

import blake3
from xxhash import xxh3_64

from .errors import Corrupt as CorruptBlock
from .db import scan_prefix
from .inode import PAGE, ZERO32, Inode, _Q, ikey

log = logging.getLogger("mimeifs.engine")

SUM = 8  # checksum bytes at the end of every stored page


def page_sum(key: bytes, data) -> bytes:
    """The checksum of page ``data`` stored under ``key`` (ino + page number): the
    8-byte XXH3-64 digest of key + data."""
    h = xxh3_64(key)
    h.update(data)
    return h.digest()


def seal(key: bytes, data) -> bytes:
    """The stored value of page ``data`` under ``key``: data + checksum."""
    return b"".join((data, page_sum(key, data)))


def unseal(key: bytes, raw):
    """The page bytes of stored value ``raw`` (a slice of it: a memoryview stays one).

    Raises :class:`CorruptBlock` (and logs it) if the checksum does not match."""
    data = raw[:-SUM]
    if len(raw) < SUM or page_sum(key, data) != raw[-SUM:]:
        ino, p = _Q.unpack(key[:8])[0], _Q.unpack(key[8:16])[0]
        log.error("cur inode %d page %d: checksum mismatch (stored page damaged)", ino, p)
        raise CorruptBlock(f"cur inode {ino} page {p}: checksum mismatch")
    return data


def scan_prefix_views(txn, db, prefix: bytes):
    """``(key, value)`` of every record under ``prefix``, without copying values (a
    ``buffers=True`` transaction gives memoryviews)."""
    n = len(prefix)
    with txn.cursor(db=db) as c:
        if not c.set_range(prefix):
            return
        for k, v in c.iternext(values=True):
            if bytes(k[:n]) != prefix:
                return
            yield k, v


def check_pages(txn, d_pages) -> list[str]:
    """Verify every stored cur page; one problem string per bad page."""
    problems = []
    for k, v in scan_prefix(txn, d_pages, b""):
        try:
            unseal(k, v)
        except CorruptBlock as e:
            problems.append(str(e))
    return problems


def seal_all(txn, d_pages) -> int:
    """Add checksums to every page of a store written before they existed (format 1).
    Returns the number of pages sealed."""
    n = 0
    for k, v in list(scan_prefix(txn, d_pages, b"")):
        txn.put(k, seal(k, v), db=d_pages)
        n += 1
    return n


SPARSE_MIN = 1 << 20  # files below this size report their size as held (see held_bytes)
_zero_hashes: dict[int, bytes] = {}
_held_of_manifest: dict[bytes, int] = {}


def _zero_hash(n: int) -> bytes:
    """blake3 of ``n`` zero bytes (a chunk of a hole, as FastCDC cuts long zero runs)."""
    h = _zero_hashes.get(n)
    if h is None:
        if len(_zero_hashes) > 4096:
            _zero_hashes.clear()
        h = _zero_hashes[n] = blake3.blake3(bytes(n)).digest()
    return h


def manifest_held(m) -> int:
    """Bytes of a manifest's content that are not holes (chunks of zeros count as
    holes, as a sparse file's holes are stored). Cached per content hash."""
    v = _held_of_manifest.get(m.hash)
    if v is None:
        v = sum(n for h, n in zip(m.chunks, m.lengths) if h != _zero_hash(n))
        if len(_held_of_manifest) > 65536:
            _held_of_manifest.clear()
        _held_of_manifest[m.hash] = v
    return v


class DataPages:
    """Mixin of :class:`mimeifs.engine.worktree.Worktree`: reads and writes of file
    bytes inside a caller's transaction. Expects ``self.d_pages``, ``d_blocks``,
    ``d_manifests``, ``objs`` (ObjectCache) and ``chunks`` (ChunkCache)."""

    def verify_pages(self, txn) -> list[str]:
        """Verify every stored cur page (``mimeifs check``): one problem string each."""
        return check_pages(txn, self.d_pages)

    def held_bytes(self, txn, node: Inode) -> int:
        """Bytes of file data ``node`` really holds, for ``st_blocks`` (``du``): pages
        written plus the base's non-hole bytes below the base limit, at most its size.
        A file under :data:`SPARSE_MIN` counts as dense (its size); others cost one
        scan of their pages' keys (``txn`` with ``buffers=True`` avoids copies) and one
        manifest decode per content (cached)."""
        if not node.is_reg:
            return 0
        if node.size < SPARSE_MIN:
            return node.size
        held = 0
        if node.base != ZERO32 and node.aux > 0:
            m = self.objs.manifest(txn, self.d_manifests, node.base)
            held = min(manifest_held(m), node.aux)
        if node.frozen == ZERO32:
            pre = ikey(node.ino)
            for _k, v in scan_prefix_views(txn, self.d_pages, pre):
                held += len(v) - SUM
        return min(held, node.size)

    def drop_data(self, txn, ino: int, from_page: int = 0) -> None:
        """Delete the pages of ``ino`` numbered ``from_page`` and up."""
        self.store.note_freed()
        pre = ikey(ino)
        with txn.cursor(db=self.d_pages) as c:
            if not c.set_range(pre + _Q.pack(from_page)):
                return
            while True:
                k = c.key()
                if not k or k[:8] != pre:
                    break
                c.delete()

    def _base_bytes(self, txn, node: Inode, start: int, end: int) -> bytes:
        """Bytes of the base content in [start, end), clipped to the base limit."""
        end = min(end, node.aux)
        if node.base == ZERO32 or start >= end:
            return b""
        m = self.objs.manifest(txn, self.d_manifests, node.base)
        return m.read(txn, self.d_blocks, start, end - start, self.chunks)

    def page_bytes(self, txn, node: Inode, p: int) -> bytes:
        """Current bytes of page ``p`` (may be shorter than PAGE: the rest is zeros)."""
        key = ikey(node.ino) + _Q.pack(p)
        raw = txn.get(key, db=self.d_pages)
        if raw is not None:
            return unseal(key, raw)
        start = p * PAGE
        return self._base_bytes(txn, node, start, min(start + PAGE, node.size))

    def read_node(self, txn, node: Inode, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file, clipped to its size.

        Works with a ``buffers=True`` transaction (pages are joined once, no other copy).
        """
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        if node.frozen != ZERO32:  # clean: no pages, whole base visible
            return self._base_bytes(txn, node, offset, end)
        parts = []
        pre = ikey(node.ino)
        pos = offset
        p = offset // PAGE
        while pos < end:
            pstart = p * PAGE
            key = pre + _Q.pack(p)
            raw = txn.get(key, db=self.d_pages)
            if raw is not None:
                raw = unseal(key, raw)
            else:
                raw = self._base_bytes(txn, node, pstart, min(pstart + PAGE, node.size))
            s, e = pos - pstart, min(end, pstart + PAGE) - pstart
            seg = raw[s:e]
            parts.append(seg)
            if len(seg) < e - s:  # a short page: the rest is a hole
                parts.append(bytes(e - s - len(seg)))
            pos = pstart + e
            p += 1
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)

    def write_node(self, txn, node: Inode, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (extending, sparse where a gap opens)."""
        end = offset + len(data)
        mv = memoryview(data)
        pre = ikey(node.ino)
        p = offset // PAGE
        while p * PAGE < end:
            pstart = p * PAGE
            s, e = max(offset, pstart), min(end, pstart + PAGE)
            if s == pstart and (e == pstart + PAGE or e >= node.size):
                # covers the page from its start to its end or to (past) the old EOF:
                # no old byte of this page survives
                page = mv[s - offset:e - offset]
            else:
                buf = bytearray(self.page_bytes(txn, node, p))
                if len(buf) < e - pstart:
                    buf.extend(bytes(e - pstart - len(buf)))
                buf[s - pstart:e - pstart] = mv[s - offset:e - offset]
                page = buf
            key = pre + _Q.pack(p)
            txn.put(key, seal(key, page), db=self.d_pages)
            p += 1
        if end > node.size:
            node.size = end

    def truncate_node(self, txn, node: Inode, size: int) -> None:
        """Set the file size; shrinking drops pages past it and hides base bytes past it."""
        if size < node.size:
            last = size // PAGE
            pre = ikey(node.ino)
            if size % PAGE:
                data = self.page_bytes(txn, node, last)
                key = pre + _Q.pack(last)
                txn.put(key, seal(key, data[:size % PAGE]), db=self.d_pages)
                self.drop_data(txn, node.ino, last + 1)
            else:
                self.drop_data(txn, node.ino, last)
            node.aux = min(node.aux, size)
        node.size = size

