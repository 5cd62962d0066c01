"""Freeze cur into the immutable Merkle DAG (a backup) and check a tree back out.

The papers' "backup" commits cur as version n+1 (seed 001 §6.2, DESIGN.md "Storage").
Cost grows with what changed: :func:`freeze_dir` returns a clean directory's cached tree
hash without reading below it, and a clean file's cached content hash without reading
its data; only dirty files are re-chunked (FastCDC keeps unchanged stretches deduped).

Hard links in cur become separate entries with the same content in a version (git and
restic do the same); content is stored once either way.
"""

from __future__ import annotations

import blake3

from . import blocks, objects, packs
from .objects import Entry, Manifest
from .inodetable import XATTRS
from .worktree import ZERO32, Inode, Worktree, clean_fields

_READ_STEP = 4 << 20


class _NodeReader:
    """A ``readinto`` stream over a cur file's current content (for FastCDC)."""

    def __init__(self, wt: Worktree, txn, node: Inode):
        self.wt, self.txn, self.node, self.pos = wt, txn, node, 0
        self.hasher = blake3.blake3()

    def readinto(self, b) -> int:
        n = min(len(b), _READ_STEP, self.node.size - self.pos)
        if n <= 0:
            return 0
        data = self.wt.read_node(self.txn, self.node, self.pos, n)
        b[:len(data)] = data
        self.hasher.update(data)
        self.pos += len(data)
        return len(data)


def materialize(txn, wt: Worktree, node: Inode, sink: packs.ChunkSink) -> bytes:
    """Chunk a dirty file's content into ``sink`` (one per backup, so the dirty files'
    chunks share packs) and store its manifest; returns its content hash."""
    if node.size <= 8 << 20:
        data = wt.read_node(txn, node, 0, node.size)
        h = blake3.blake3(data).digest()
        hashes, lengths = sink.add(blocks.cut(data))
    else:
        rd = _NodeReader(wt, txn, node)
        hashes, lengths = sink.add(bytes(c.data) for c in blocks.chunker().cut_stream(rd))
        h = rd.hasher.digest()
    objects.store_manifest(txn, wt.store.db("manifests"), Manifest(h, node.size, hashes, lengths))
    return h


def freeze_file(txn, wt: Worktree, node: Inode, sink: packs.ChunkSink) -> bytes:
    """A file's content hash, materializing it into ``sink`` if dirty."""
    if node.frozen != ZERO32:
        return node.frozen
    h = materialize(txn, wt, node, sink)
    wt.set_content(txn, node, h, node.size)
    return h


def entry_of(txn, wt: Worktree, name: bytes, c: Inode, h: bytes, size: int) -> Entry:
    xs = tuple(sorted(wt.xattr_items(txn, c.ino))) if c.flags & XATTRS else ()
    return Entry(name, c.mode, c.uid, c.gid, size, c.mtime_ns, c.rdev, h,
                 c.target if c.is_lnk else b"", xs)


def freeze_dir(txn, wt: Worktree, node: Inode, stats: dict, progress,
               sink: packs.ChunkSink) -> tuple[bytes, int]:
    """A directory's tree hash and total file bytes below, building dirty subtrees."""
    if node.frozen != ZERO32:
        return node.frozen, node.aux
    entries, total = [], 0
    d_inodes = wt.d_inodes
    for name, key in wt.child_keys(txn, node.ino):
        raw = txn.get(key, db=d_inodes)
        f = clean_fields(raw) if raw is not None else None
        if f is not None:  # most children of a dirty directory: taken as they are
            entries.append(Entry(name, f[0], f[1], f[2], f[3], f[4], f[5], f[6], b"", ()))
            total += f[3]
            continue
        c = wt.get(txn, int.from_bytes(key, "big"))  # ENOENT if raw is None
        if c.is_dir:
            h, size = freeze_dir(txn, wt, c, stats, progress, sink)
            total += size
        elif c.is_reg:
            dirty = c.frozen == ZERO32
            stats["files"] += dirty
            h = freeze_file(txn, wt, c, sink)
            if dirty and progress is not None:
                progress(c.size)
            size = c.size
            total += size
        else:
            h, size = b"", c.size
        entries.append(entry_of(txn, wt, name, c, h, size))
    h = objects.store_tree(txn, wt.store.db("trees"), entries)
    stats["trees"] += 1
    wt.set_dir_frozen(txn, node.ino, h, total)
    return h, total


def freeze(txn, wt: Worktree, root_ino: int, progress=None) -> tuple[str, bytes, int, dict]:
    """Freeze a cur root: (kind "fs"|"file", root hash, total bytes, stats).

    ``progress(nbytes)`` is called as dirty files are chunked."""
    stats = {"new_bytes": 0, "files": 0, "trees": 0}
    root = wt.get(txn, root_ino)
    sink = packs.ChunkSink(txn, wt.store.db("blocks"))  # the dirty files share packs
    if root.is_dir:
        kind, (h, total) = "fs", freeze_dir(txn, wt, root, stats, progress, sink)
    else:
        kind, h, total = "file", freeze_file(txn, wt, root, sink), root.size
    stats["new_bytes"] = sink.close()  # before the caller commits: the index is complete
    return kind, h, total, stats


def checkout_entries(txn, wt: Worktree, parent: Inode, tree: objects.Tree) -> None:
    """Create cur inodes for a version tree under directory ``parent`` (clean, shared)."""
    objs, d_trees = wt.objs, wt.store.db("trees")
    for e in tree.entries:
        node = wt.checkout_entry(txn, parent, e)
        if e.is_dir:
            checkout_entries(txn, wt, wt.get(txn, node.ino), objs.tree(txn, d_trees, e.hash))


def checkout(txn, wt: Worktree, root_ino: int, kind: str, root_hash: bytes, size: int,
             is_open=lambda ino: False) -> list[tuple[int, bytes]]:
    """Make cur (root ``root_ino``) equal to a version: clean, sharing its blocks.

    Returns the entries (parent inode, name) it removed: every name of cur's root, each
    now naming a new inode or nothing. A door that caches names must drop these (a
    kernel keeps an open file's dentry, which would send its writes to the old, now
    unlinked inode). An inode still open (``is_open``) lives on as an unlinked-but-open
    file until its last close, as POSIX has it."""
    root = wt.get(txn, root_ino)
    if kind == "file":
        wt.set_content(txn, root, root_hash, size)
        return []
    removed = []
    for name, cino in wt.list_dir(txn, root_ino):
        wt.remove_tree(txn, root_ino, name, wt.get(txn, cino), is_open)
        removed.append((root_ino, name))
    root = wt.get(txn, root_ino)
    checkout_entries(txn, wt, root, wt.objs.tree(txn, wt.store.db("trees"), root_hash))
    wt.set_dir_frozen(txn, root_ino, root_hash, size)
    return removed
