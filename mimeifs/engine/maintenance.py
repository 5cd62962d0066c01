"""Store upkeep: ``check`` (verify everything) and ``gc`` (free unused blocks).

check — every MiMei info and version record signature (ed25519), every tree (decodes,
and its hash is blake3-derive-key of its encoding), every manifest (decodes, chunk
lengths add up, the content's blake3 is its key), every chunk (its pack decompresses and
hashes to its id, the chunk's slice matches its blake3; old per-chunk values decompress
and match), every cur inode's base manifest, every cur data page's checksum (``pages``). Each object is checked once however many
versions share it.

gc — mark and sweep, as ``git gc`` and ``restic prune``: live = everything reachable from
every version, every cur inode, every Mac file; the rest of ``manifests``, ``trees`` and
the chunk index is deleted, packs with no live chunk are deleted, and packs whose live
bytes are under half of the pack are repacked (their live chunks written into new packs,
as ``restic prune`` does; format in ``blocks``). It runs in one write transaction, so no
writer (an import, a mount) can add a reference half-way.
"""

from __future__ import annotations

import json
from typing import Callable

import blake3

from .. import ids
from . import blocks, objects, packs, remote
from .errors import ChunkMissing
from .worktree import ZERO32


def _cached_only(txn, e) -> set[bytes]:
    """IDs (20 bytes) of remote MiMei that are not pinned: their objects are a cache."""
    return {bytes(k) for k, v in txn.cursor(db=e.d_state) if remote.cached_only(json.loads(v))}


def _walk_versions(txn, e, on_version):
    with txn.cursor(db=e.d_versions) as c:
        for k, v in c:
            on_version(bytes(k), v)


def check(engine, progress: Callable[[int], None] | None = None) -> dict:
    """Verify the whole store. Returns ``{"problems": [str], "versions", "mimei",
    "trees", "manifests", "chunks", "packs", "bytes"}``; an empty ``problems`` list means
    clean. A bad chunk's problem names the chunk hash (and its pack, if the pack is bad)."""
    e = engine
    progress = progress or (lambda n: None)
    problems: list[str] = []
    seen_trees: set[bytes] = set()
    seen_manifests: set[bytes] = set()
    seen_chunks: set[bytes] = set()
    bad_chunks: set[bytes] = set()
    pack_state: dict[bytes, str | None] = {}  # pack id -> None (good) or its problem
    cache = blocks.ChunkCache(64 << 20)  # packs decompressed once, in walk order
    counts = {"versions": 0, "mimei": 0, "trees": 0, "manifests": 0, "chunks": 0,
              "packs": 0, "bytes": 0}

    with e.store.read() as txn:
        def pack_ok(pid: bytes) -> str | None:
            if pid not in pack_state:
                try:
                    cache.pack(pid, lambda: blocks.load_pack(txn, e.d_blocks, pid, verify=True))
                except blocks.CorruptBlock as x:
                    pack_state[pid] = str(x)
                else:
                    pack_state[pid] = None
                    counts["packs"] += 1
            return pack_state[pid]

        def chunk_ok(h: bytes, n: int) -> bool:
            if h in seen_chunks:
                return h not in bad_chunks
            seen_chunks.add(h)
            raw = txn.get(h, db=e.d_blocks)
            problem = None
            if raw is None:
                problem = "missing"
            else:
                try:
                    if raw[0:1] == bytes([blocks.PACKED]):
                        pid, _off, _n = blocks.decode_ref(h, raw)
                        problem = pack_ok(pid)
                    if problem is None:
                        data = blocks.load_chunk(txn, e.d_blocks, h, n, cache)
                        counts["chunks"] += 1
                        counts["bytes"] += len(data)
                        progress(len(data))
                except blocks.CorruptBlock as x:
                    problem = str(x)
            if problem:
                bad_chunks.add(h)
                problems.append(f"chunk {h.hex()}: {problem}")
                return False
            return True

        def manifest_ok(h: bytes, where: str) -> None:
            if h in seen_manifests:
                return
            seen_manifests.add(h)
            raw = txn.get(h, db=e.d_manifests)
            if raw is None:
                problems.append(f"{where}: manifest {h.hex()} missing")
                return
            try:
                m = objects.Manifest.decode(h, bytes(raw))
            except blocks.CorruptBlock as x:
                problems.append(f"{where}: {x}")
                return
            counts["manifests"] += 1
            hasher = blake3.blake3()
            good = True
            for ch, n in zip(m.chunks, m.lengths):
                if not chunk_ok(ch, n):
                    good = False
                    continue
                hasher.update(blocks.load_chunk(txn, e.d_blocks, ch, n, cache))
            if good and hasher.digest() != h:
                problems.append(f"{where}: file content does not match its hash {h.hex()}")

        def tree_ok(h: bytes, where: str) -> None:
            stack = [(h, where)]
            while stack:
                th, w = stack.pop()
                if th in seen_trees:
                    continue
                seen_trees.add(th)
                raw = txn.get(th, db=e.d_trees)
                if raw is None:
                    problems.append(f"{w}: tree {th.hex()} missing")
                    continue
                try:
                    enc = blocks.decode_chunk(raw)
                    t = objects.decode_tree(th, enc)
                except blocks.CorruptBlock as x:
                    problems.append(f"{w}: {x}")
                    continue
                if blake3.blake3(enc, derive_key_context=objects.TREE_CONTEXT).digest() != th:
                    problems.append(f"{w}: tree {th.hex()} does not match its hash")
                counts["trees"] += 1
                for en in t.entries:
                    sub = f"{w}/{en.name.decode(errors='replace')}"
                    if en.is_dir:
                        stack.append((en.hash, sub))
                    elif en.is_file:
                        manifest_ok(en.hash, sub)

        for k, v in txn.cursor(db=e.d_mimei):
            counts["mimei"] += 1
            mid = bytes(k).hex()
            try:
                info = json.loads(v)
                ids.verify_record(info, info.get("author"))
                if info.get("id") != mid or ids.mimei_id(info["author"], info["app_type"],
                                                         info["mimei_type"], info["mark"]) != mid:
                    problems.append(f"MiMei {mid}: info does not hash to its ID")
            except (ValueError, KeyError, ids.BadSignature) as x:
                problems.append(f"MiMei {mid}: info record: {x}")

        def on_version(k: bytes, v) -> None:
            counts["versions"] += 1
            mid, n = k[:20].hex(), int.from_bytes(k[20:24], "big")
            where = f"{mid} v/{n}"
            try:
                rec = json.loads(v)
                info = json.loads(txn.get(k[:20], db=e.d_mimei))
                ids.verify_record(rec, info["author"])
                if rec["mimei"] != mid or rec["n"] != n:
                    problems.append(f"{where}: record names {rec['mimei']} v/{rec['n']}")
            except (ValueError, KeyError, TypeError, ids.BadSignature) as x:
                problems.append(f"{where}: version record: {x}")
                return
            if k[:20] in cache_only:
                return  # a remote MiMei's fetched pieces: a cache, partial by design
            root = bytes.fromhex(rec["root"])
            if rec["kind"] in ("fs", "db"):  # a db version is a tree of JSON Lines files
                tree_ok(root, where)
            else:
                manifest_ok(root, where)

        cache_only = _cached_only(txn, e)
        _walk_versions(txn, e, on_version)

        for node in e.wt.inodes(txn):
            if node.is_reg and node.base != ZERO32:
                manifest_ok(node.base, f"cur inode {node.ino}")
        for k in txn.cursor(db=e.d_mac).iternext(values=False):
            manifest_ok(bytes(k), f"Mac file {bytes(k).hex()}")
        problems.extend(e.wt.verify_pages(txn))
    return dict(counts, problems=problems)


def gc(engine) -> dict:
    """Free every chunk, manifest and tree no version, cur inode or Mac file uses;
    delete packs with no live chunk and repack packs less than half live.

    Returns ``{"chunks_freed", "bytes_freed" (stored bytes), "manifests_freed",
    "trees_freed", "chunks_kept", "packs_freed", "packs_rewritten"}``. A pack that
    cannot be read is left as it is (``check`` reports it).
    """
    e = engine
    with e.store.write(room=False) as txn:
        live_trees: set[bytes] = set()
        live_manifests: set[bytes] = set()

        def mark_tree(h: bytes) -> None:
            stack = [h]
            while stack:
                th = stack.pop()
                if th in live_trees:
                    continue
                live_trees.add(th)
                try:
                    t = e.objs.tree(txn, e.d_trees, th)
                except ChunkMissing:
                    continue  # a pinned remote version still arriving: nothing below to keep
                for en in t.entries:
                    if en.is_dir:
                        stack.append(en.hash)
                    elif en.is_file:
                        live_manifests.add(en.hash)

        cache_only = _cached_only(txn, e)  # their blocks may be evicted
        for k, v in txn.cursor(db=e.d_versions):
            if bytes(k[:20]) in cache_only:
                continue
            rec = json.loads(v)
            root = bytes.fromhex(rec["root"])
            if rec["kind"] in ("fs", "db"):  # a db version is a tree of JSON Lines files
                mark_tree(root)
            else:
                live_manifests.add(root)
        for node in e.wt.inodes(txn):
            if node.is_reg and node.base != ZERO32:
                live_manifests.add(node.base)
            if node.is_dir and node.frozen != ZERO32:
                mark_tree(node.frozen)
        for k in txn.cursor(db=e.d_mac).iternext(values=False):
            live_manifests.add(bytes(k))

        live_chunks: set[bytes] = set()
        for h in live_manifests:
            raw = txn.get(h, db=e.d_manifests)
            if raw is not None:
                live_chunks.update(objects.Manifest.decode(h, bytes(raw)).chunks)

        out = {"chunks_freed": 0, "bytes_freed": 0, "manifests_freed": 0, "trees_freed": 0,
               "packs_freed": 0, "packs_rewritten": 0}
        for db, live, key in ((e.d_manifests, live_manifests, "manifests_freed"),
                              (e.d_trees, live_trees, "trees_freed")):
            dead = [bytes(k) for k in txn.cursor(db=db).iternext(values=False)
                    if bytes(k) not in live]
            for k in dead:
                txn.delete(k, db=db)
            out[key] = len(dead)

        # the chunk index and the packs (one sub-database, see blocks)
        dead = []
        pack_size: dict[bytes, tuple[int, int]] = {}  # pack id -> (stored, raw) bytes
        members: dict[bytes, list[tuple[bytes, int, int]]] = {}  # live chunks per pack
        for k, v in txn.cursor(db=e.d_blocks):
            k = bytes(k)
            if blocks.is_pack_key(k):
                pack_size[k[1:]] = (len(v), blocks.pack_raw_size(v))
            elif k not in live_chunks:
                dead.append(k)
                if v[0:1] != bytes([blocks.PACKED]):
                    out["bytes_freed"] += len(v)
            elif v[0:1] == bytes([blocks.PACKED]):
                try:
                    pid, off, n = blocks.decode_ref(k, v)
                except blocks.CorruptBlock:
                    continue
                members.setdefault(pid, []).append((k, off, n))
        for k in dead:
            txn.delete(k, db=e.d_blocks)
        out["chunks_freed"] = len(dead)

        writer = packs.PackWriter()
        new_pids: set[bytes] = set()
        old_pids: list[bytes] = []

        def store_new() -> None:
            for sealed, mem in zip(writer.packs, writer.members):
                if sealed is not None:
                    out["bytes_freed"] -= packs.put_pack(txn, e.d_blocks, sealed, mem,
                                                         overwrite_refs=True)
                    new_pids.add(sealed[0])
            writer.packs[:] = [None] * len(writer.packs)

        for pid, (stored, raw_size) in pack_size.items():
            mem = members.get(pid)
            if not mem:
                old_pids.append(pid)
                continue
            if raw_size < 0 or 2 * sum(n for _, _, n in mem) >= raw_size:
                continue
            try:
                data = blocks.load_pack(txn, e.d_blocks, pid)
            except blocks.CorruptBlock:
                continue
            chunks = []
            for h, off, n in sorted(mem, key=lambda m: m[1]):
                c = data[off:off + n]
                if len(c) != n or blake3.blake3(c).digest() != h:
                    break  # a damaged pack stays for check to report
                chunks.append((h, c))
            else:
                for h, c in chunks:
                    writer.add(h, c)
                old_pids.append(pid)
                out["packs_rewritten"] += 1
                store_new()
        writer.flush()
        store_new()
        for pid in old_pids:
            if pid in new_pids:
                continue
            txn.delete(blocks.pack_key(pid), db=e.d_blocks)
            out["bytes_freed"] += pack_size[pid][0]
            if pid not in members:
                out["packs_freed"] += 1
        out["chunks_kept"] = len(live_chunks)
        if any(out[k] for k in ("chunks_freed", "manifests_freed", "trees_freed", "packs_freed")):
            e.store.note_freed()
    e.store.sync()
    return out
