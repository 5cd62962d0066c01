"""A mark names one MiMei per author, and reads that refuse corrupted chunks."""

from __future__ import annotations

import errno
import os

import pytest

from mimeifs.engine import blocks
from mimeifs.engine.mimei import MiMeiError

from .conftest import mkfile


def test_a_mark_names_one_mimei_per_author(engine):
    """Issue 11 item 8: create refuses a mark in use whatever the type or app type (as
    fork does); once the MiMei that had it is gone, the mark is free again."""
    e = engine
    a = e.create("fs", "photos")
    for kw in ({"mimei_type": "file"}, {"mimei_type": "fs", "app_type": "x"}):
        with pytest.raises(MiMeiError) as ex:
            e.create(mark="photos", **kw)
        assert ex.value.errno == errno.EEXIST and a in str(ex.value)
    rec = e.backup(a)
    with pytest.raises(MiMeiError) as ex:
        e.fork(a, rec["n"], "photos")
    assert ex.value.errno == errno.EEXIST
    assert e.names() == {"photos": a} and e.list() == [a]
    assert e.resolve("photos") == a
    e.rm(a)
    assert "photos" not in e.names()
    b = e.create("file", "photos")
    assert b != a and e.names()["photos"] == b and e.resolve("photos") == b


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
