"""Packs: chunks grouped and compressed together (blocks, packs, importer, maintenance).

Real stores in tmp dirs; files go in through the importer (worker threads and forked
worker processes) and through backups of cur, and come back byte-exact.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from mimeifs.engine import blocks, importer, maintenance, objects, packs
from mimeifs.engine.importer import Importer

from .conftest import cur_snapshot, lookup_path, mkfile, version_snapshot


def text(n: int, seed: int) -> bytes:
    """Compressible but distinct bytes (words drawn at random)."""
    r = random.Random(seed)
    words = [bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9)))
             for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += r.choice(words) + (b"\n" if r.random() < 0.1 else b" ")
    return bytes(out[:n])


def pack_ids(e) -> set[bytes]:
    with e.store.read() as txn:
        return {bytes(k[1:]) for k in txn.cursor(db=e.d_blocks).iternext(values=False)
                if blocks.is_pack_key(k)}


def ref_of(e, h: bytes) -> tuple[bytes, int, int]:
    with e.store.read() as txn:
        return blocks.decode_ref(h, txn.get(h, db=e.d_blocks))


def write_tree(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def mixed_files(seed: int) -> dict[str, bytes]:
    r = random.Random(seed)
    files = {}
    for i in range(700):  # > PROCESSES_AFTER: the later batches go to forked workers
        size = r.choice([0, 1, 100, 3000, 20_000, 70_000])
        files[f"d{i % 7}/s{i % 3}/f{i}"] = text(size, seed * 1000 + i)
    files["big/random"] = r.randbytes(3 << 20)          # several chunks, incompressible
    files["big/text"] = text(5 << 20, seed)                 # several packs
    files["big/huge"] = text(importer.SMALL + 300_000, seed + 1)  # streamed in the writer
    files["dup/a"] = files["d1/s1/f1"]
    return files


def test_import_and_backup_round_trip_mixed_sizes(engine, tmp_path):
    e = engine
    src = str(tmp_path / "src")
    files = mixed_files(1)
    write_tree(src, files)
    mid = e.create("fs", "m")
    st = Importer(e).run(src, mid)
    assert st["errors"] == [] and st["files"] == len(files)
    e.backup(mid)
    snap = version_snapshot(e, mid, 0)
    assert {p: v[1] for p, v in snap.items() if v[0] == "f"} == files
    # chunks are packed: far fewer packs than chunks, every chunk indexed into one
    with e.store.read() as txn:
        kinds = [bytes(v[:1]) for k, v in txn.cursor(db=e.d_blocks) if not blocks.is_pack_key(k)]
    assert set(kinds) == {bytes([blocks.PACKED])}
    assert 0 < len(pack_ids(e)) < len(kinds) // 5
    # stored bytes are what the importer reported, and the text compressed
    with e.store.read() as txn:
        stored = sum(len(v) for k, v in txn.cursor(db=e.d_blocks) if blocks.is_pack_key(k))
    assert stored == st["new_bytes"] < sum(map(len, files.values())) * 0.8
    assert maintenance.check(e)["problems"] == []

    # files written through cur and backed up (one ChunkSink per backup) read back too
    root = e.state(mid)["cur"]
    more = {b"w1": text(200_000, 5), b"w2": os.urandom(300_000), b"w3": b"tiny"}
    for name, data in more.items():
        mkfile(e, lookup_path(e, root, "d2"), name, data)
    e.chunks.cache = e.wt.chunks = blocks.ChunkCache()  # nothing cached from the writes
    e.backup(mid)
    snap = version_snapshot(e, mid, 1)
    for name, data in more.items():
        assert snap["d2/" + name.decode()][1] == data
    assert maintenance.check(e)["problems"] == []


def test_same_content_twice_stores_no_new_pack(engine, tmp_path):
    e = engine
    src = str(tmp_path / "src")
    files = {f"x/f{i}": text(5000 + 997 * i, i) for i in range(60)}
    files["x/big"] = text(2 << 20, 99)
    write_tree(src, files)
    a, b = e.create("fs", "a"), e.create("fs", "b")
    assert Importer(e).run(src, a)["new_bytes"] > 0
    before = pack_ids(e)
    st = Importer(e).run(src, b)
    assert st["files"] == len(files) and st["new_bytes"] == 0
    assert pack_ids(e) == before
    # the same bytes again through cur and a backup: nothing new either
    c = e.create("fs", "c")
    mkfile(e, e.state(c)["cur"], b"copy", files["x/big"])
    assert e.backup(c)["stats"]["new_bytes"] == 0
    assert pack_ids(e) == before


def test_corrupted_pack_is_reported_by_check_and_refused_by_reads(fs):
    e, mid, root = fs
    data = text(400_000, 3)
    mkfile(e, root, b"f", data)
    rec = e.backup(mid)
    h = e.tree(bytes.fromhex(rec["root"])).get(b"f").hash
    m = e.manifest(h)
    pid, _off, _n = ref_of(e, m.chunks[-1])
    with e.store.write() as txn:
        raw = bytearray(txn.get(blocks.pack_key(pid), db=e.d_blocks))
        raw[len(raw) // 2] ^= 0xFF                       # one flipped byte in the frame
        txn.put(blocks.pack_key(pid), bytes(raw), db=e.d_blocks)
    problems = maintenance.check(e)["problems"]
    assert any(m.chunks[-1].hex() in p for p in problems), problems
    e.chunks.cache = e.wt.chunks = blocks.ChunkCache()
    with pytest.raises(blocks.CorruptBlock):
        e.read_content(h, m.offsets[-1], 100)
    with e.store.write() as txn:                         # and a missing pack
        txn.delete(blocks.pack_key(pid), db=e.d_blocks)
    assert any("missing pack" in p for p in maintenance.check(e)["problems"])
    with pytest.raises(blocks.CorruptBlock):
        e.read_content(h, m.offsets[-1], 100)


def test_forged_pack_that_decodes_is_caught_by_its_hash(fs):
    e, mid, root = fs
    mkfile(e, root, b"f", text(100_000, 4))
    rec = e.backup(mid)
    h = e.tree(bytes.fromhex(rec["root"])).get(b"f").hash
    pid, _off, _n = ref_of(e, e.manifest(h).chunks[0])
    with e.store.write() as txn:   # well-formed zstd, other bytes of the same length
        data = blocks.load_pack(txn, e.d_blocks, pid)
        forged = data[:-1] + bytes([data[-1] ^ 1])
        txn.put(blocks.pack_key(pid), blocks._stored_value(forged), db=e.d_blocks)
    problems = maintenance.check(e)["problems"]
    assert any("does not match its id" in p for p in problems), problems
    e.chunks.cache = e.wt.chunks = blocks.ChunkCache()
    with pytest.raises(blocks.CorruptBlock):
        e.read_content(h, 0, 200_000)


def test_gc_frees_dead_pack_and_repacks_half_dead_one(engine, tmp_path):
    e = engine
    keep_src, drop_src = str(tmp_path / "keep"), str(tmp_path / "drop")
    kept = {f"f{i}": text(30_000, 100 + i) for i in range(10)}
    write_tree(keep_src, kept)
    write_tree(drop_src, {f"g{i}": text(30_000, 200 + i) for i in range(5)})
    a, b = e.create("fs", "a"), e.create("fs", "b")
    Importer(e).run(keep_src, a)      # one batch: the ten files share one pack
    Importer(e).run(drop_src, b)
    root = e.state(a)["cur"]
    h0 = e.wt.lookup(root, b"f0").frozen
    old_pid = ref_of(e, e.manifest(h0).chunks[0])[0]
    dead_pid = ref_of(e, e.manifest(e.wt.lookup(e.state(b)["cur"], b"g0").frozen).chunks[0])[0]
    assert {ref_of(e, e.manifest(e.wt.lookup(root, f"f{i}".encode()).frozen).chunks[0])[0]
            for i in range(10)} == {old_pid}
    for i in range(3, 10):            # 7 of 10 files go: the pack is 30 % live
        e.wt.unlink(root, f"f{i}".encode())
        del kept[f"f{i}"]
    e.rm(b)                            # b's pack is dead
    out = maintenance.gc(e)
    assert out["packs_freed"] == 1 and out["packs_rewritten"] == 1
    assert out["chunks_freed"] >= 12 and out["bytes_freed"] > 0   # 12 files, 1+ chunk each
    assert old_pid not in pack_ids(e) and dead_pid not in pack_ids(e)
    new_pid = ref_of(e, e.manifest(h0).chunks[0])[0]
    assert new_pid in pack_ids(e) and new_pid != old_pid
    e.chunks.cache = e.wt.chunks = blocks.ChunkCache()
    assert {p: v[1] for p, v in cur_snapshot(e, root).items()} == kept
    assert maintenance.check(e)["problems"] == []
    again = maintenance.gc(e)          # nothing left to do
    assert again["packs_freed"] == again["packs_rewritten"] == again["chunks_freed"] == 0


def test_old_per_chunk_values_still_read_check_and_dedup(engine, tmp_path):
    e = engine
    # random bytes longer than two max-size chunks: at least one chunk is all random (codec 0)
    data = text(300_000, 7) + os.urandom(600_000)   # codec 1 and codec 0 chunks
    chunks = blocks.cut(data)
    enc = [(*blocks.encode_chunk(c), len(c)) for c in chunks]
    assert {v[0] for _, v, _ in enc} == {blocks.RAW, blocks.ZSTD}
    h = objects.blake3.blake3(data).digest()
    with e.store.write() as txn:     # written the way stores before packs were
        for ch, value, _n in enc:          # one value per chunk, codec 0/1
            txn.put(ch, value, db=e.d_blocks, overwrite=False)
        objects.store_manifest(txn, e.d_manifests,
                               objects.Manifest(h, len(data), [x[0] for x in enc],
                                                [x[2] for x in enc]))
        txn.put(h, b"", db=e.d_mac)
    assert e.read_content(h, 0, len(data) + 1) == data
    assert e.read_content(h, 123_456, 70_000) == data[123_456:193_456]
    out = maintenance.check(e)
    assert out["problems"] == [] and out["bytes"] == len(data)
    assert maintenance.gc(e)["chunks_freed"] == 0
    # new content sharing those chunks indexes none of them again
    src = tmp_path / "f"
    src.write_bytes(data)
    mid = e.create("file", "f")
    assert Importer(e).run(str(src), mid)["new_bytes"] == 0
    assert pack_ids(e) == set()


def test_cache_decompresses_a_pack_once_for_many_threads(engine, tmp_path):
    e = engine
    src = tmp_path / "f"
    data = text(min(400_000, blocks.PACK_TARGET - 1), 8)   # one pack
    src.write_bytes(data)
    mid = e.create("file", "f")
    Importer(e).run(str(src), mid)
    h = e.wt.getattr(e.state(mid)["cur"]).frozen
    m = e.manifest(h)
    assert len({ref_of(e, c)[0] for c in m.chunks}) == 1 and len(m.chunks) > 3
    cache = blocks.ChunkCache()
    calls = []
    real = blocks.load_pack

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    blocks.load_pack = counting
    try:
        out: dict[int, bytes] = {}
        barrier = threading.Barrier(8)

        def reader(i: int) -> None:
            barrier.wait()
            with e.store.read() as txn:
                out[i] = m.read(txn, e.d_blocks, 0, len(data), cache)

        ts = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        blocks.load_pack = real
    assert all(v == data for v in out.values()) and len(out) == 8
    assert len(calls) == 1
    small = blocks.ChunkCache(max_bytes=100_000)     # bounded: a pack bigger than it
    with e.store.read() as txn:                       # still reads, and is not kept
        assert m.read(txn, e.d_blocks, 0, len(data), small) == data
    assert small._bytes <= 100_000


def test_worker_known_chunks_and_the_missing_chunk_fallback(engine, tmp_path):
    e = engine
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(text(50_000, 9))
    (d / "b").write_bytes(text(50_000, 9))           # same content as a
    run = os.urandom(16)
    r1, p1 = importer.prepare_batch([str(d / "a")], run)
    r2, p2 = importer.prepare_batch([str(d / "b")], run)   # same worker, later batch
    assert p1 and not p2 and all(ref[2] == packs.KNOWN for ref in r2[0][2])
    with e.store.write() as txn:
        with pytest.raises(packs.MissingChunk):      # a's batch never landed
            importer.store_manifest_and_chunks(txn, e.store, *r2[0], p2, set())
        added = importer.store_manifest_and_chunks(txn, e.store, *r1[0], p1, set())
        assert added == len(p1[0][1])
        assert importer.store_manifest_and_chunks(txn, e.store, *r2[0], p2, set()) == 0
    assert e.read_content(r2[0][0], 0, 100_000) == (d / "b").read_bytes()


def test_drop_known_rewrites_a_pack_without_stored_chunks(engine, tmp_path):
    e = engine
    (tmp_path / "old").write_bytes(text(40_000, 10))
    (tmp_path / "new").write_bytes(text(40_000, 11))
    paths = [str(tmp_path / "old"), str(tmp_path / "new")]
    with e.store.write() as txn:
        importer.store_os_file(txn, e.store, paths[0])    # "old" is stored already
    results, sealed = importer.prepare_batch(paths)
    assert len(sealed) == 1 and sealed[0][2] == 80_000
    with e.store.write() as txn:
        results, sealed = packs.drop_known(txn, e.d_blocks, results, sealed)
        assert sealed[0][2] == 40_000                      # only "new" is left in it
        assert all(r[2] == packs.KNOWN for r in results[0][2])
        stored: set[int] = set()
        for r in results:
            importer.store_manifest_and_chunks(txn, e.store, *r, sealed, stored)
    for p, r in zip(paths, results):
        with open(p, "rb") as f:
            assert e.read_content(r[0], 0, 100_000) == f.read()
    assert maintenance.check(e)["problems"] == []


def test_backup_of_files_written_in_cur_shares_packs(fs):
    """A backup packs the small dirty files of cur together (one sink per backup), not
    one pack per file; every file reads back from the version and check is clean."""
    e, mid, root = fs
    files = {f"f{i:03d}".encode(): text(1500 + 13 * i, 100 + i) for i in range(200)}
    for name, data in files.items():
        mkfile(e, root, name, data)
    big = text(3 << 20, 5) + os.urandom(1 << 20)     # a multi-chunk file among them
    mkfile(e, root, b"big", big)
    before = pack_ids(e)
    rec = e.backup(mid)
    new = pack_ids(e) - before
    # ~350 KiB of small files + 4 MiB of big file: a handful of 1 MiB packs, not 201
    assert 1 <= len(new) <= 8, len(new)
    assert rec["n"] == 0
    e.chunks.cache = e.wt.chunks = blocks.ChunkCache()       # read from the store, not the cache
    snap = version_snapshot(e, mid, 0)
    for name, data in files.items():
        assert snap[name.decode()][1] == data
    assert snap["big"][1] == big
    assert maintenance.check(e)["problems"] == []
    # a second backup of the unchanged cur stores nothing new
    e.backup(mid)
    assert pack_ids(e) - before == new
