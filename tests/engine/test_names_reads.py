"""Marks shared by two MiMei, and reads that refuse corrupted chunks."""

from __future__ import annotations

import os

import pytest

from mimeifs.engine import blocks

from .conftest import mkfile


def test_first_mimei_keeps_a_shared_mark_and_gets_it_back(engine):
    e = engine
    a = e.create("fs", "photos")
    b = e.create("file", "photos")
    assert a != b
    assert e.names()["photos"] == a          # the newer one does not steal the name
    assert e.resolve("photos") == a
    e.rm(a)
    assert e.names()["photos"] == b          # the name moves to the one left
    e.rm(b)
    assert "photos" not in e.names()


def test_read_of_a_corrupted_raw_chunk_is_an_error_not_wrong_bytes(fs):
    e, mid, root = fs
    data = os.urandom(100_000)               # random: stored raw, not compressed
    mkfile(e, root, b"f", data)
    rec = e.backup(mid)
    entry = e.tree(bytes.fromhex(rec["root"])).get(b"f")
    h = e.manifest(entry.hash).chunks[0]
    d_blocks = e.store.db("blocks")
    with e.store.write() as txn:
        pid, _off, _n = blocks.decode_ref(h, txn.get(h, db=d_blocks))   # its pack
        raw = bytes(txn.get(blocks.pack_key(pid), db=d_blocks))
        assert raw[0] == blocks.RAW
        txn.put(blocks.pack_key(pid), raw[:1] + bytes(len(raw) - 1), db=d_blocks)  # zeros
    e.chunks.cache = blocks.ChunkCache()     # nothing cached from before
    e.wt.chunks = e.chunks.cache
    with pytest.raises(blocks.CorruptBlock):
        e.read_content(entry.hash, 0, 4096)


def test_fork_with_auto_mark_gets_the_id_its_mark_names(fs):
    e, mid, root = fs
    mkfile(e, root, b"f", b"x")
    e.backup(mid)
    new = e.fork(mid, 0, "auto")
    info = e.info(new)
    assert info["mark"].startswith("auto-")
    assert e.mark_id(info["mark"]) == new        # the mark drawn is the one the ID hashes
    assert e.fork(mid, 0, "auto") != new          # and a second fork draws a fresh one
