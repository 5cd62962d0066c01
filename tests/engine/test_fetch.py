"""The fetcher seam: a store reads versions whose objects live only in another store.

A fake fetcher serves from a second real store (``export`` there, ``accept`` here), one
serves wrong bytes (refused: nothing bad stored or shown), and records of a MiMei from
elsewhere are adopted only when every signature and the ID derivation hold.
"""

from __future__ import annotations

import errno
import os

import pytest

from mimeifs import ids
from mimeifs.engine import maintenance
from mimeifs.engine.errors import ChunkMissing, Corrupt
from mimeifs.engine.fetch import FetchError

from .conftest import mkdir, mkfile, new_engine


class StoreFetcher:
    """Serves objects and records out of another engine, as a peer would."""

    def __init__(self, source, tamper=None):
        self.src = source
        self.tamper = tamper
        self.asked: list = []

    def fetch_objects(self, wants):
        self.asked.append(list(wants))
        got = self.src.chunks.export(wants)
        return [self.tamper(b) for b in got] if self.tamper else got

    def fetch_mimei(self, mimei):
        if not self.src.exists(mimei):
            return None
        return self.src.records(mimei)


def authored(tmp_path):
    a = new_engine(tmp_path / "a")
    mid = a.create("fs", "proj")
    root = a.state(mid)["cur"]
    big = os.urandom(700_000)
    mkfile(a, root, b"big", big)
    d = mkdir(a, root, b"docs")
    for i in range(30):
        mkfile(a, d, b"f%d.txt" % i, (b"line %d\n" % i) * (50 + i))
    rec = a.backup(mid)
    return a, mid, rec, big


def test_version_read_through_the_fetcher(tmp_path):
    a, mid, rec, big = authored(tmp_path)
    b = new_engine(tmp_path / "b")
    b_fetch = StoreFetcher(a)
    b2 = type(b)(b.store, fetcher=b_fetch)
    assert b2.find(mid) and b2.is_remote(mid)
    assert b2.state(mid)["last"] == 0 and b2.state(mid)["cur"] is None
    root = b2.tree(bytes.fromhex(rec["root"]))
    e = root.get(b"big")
    assert b2.read_content(e.hash, 0, len(big)) == big
    assert b2.read_content(e.hash, 123_456, 1000) == big[123_456:124_456]
    docs = b2.tree(root.get(b"docs").hash)
    assert b2.read_content(docs.get(b"f7.txt").hash, 0, 10_000) == b"line 7\n" * 57
    # what arrived is verified and kept: the same reads need no fetcher now
    b3 = type(b)(b.store)
    assert b3.read_content(e.hash, 0, len(big)) == big
    # check does not call a partial remote cache damage; pinned, it must be whole
    assert maintenance.check(b3)["problems"] == []


def test_no_fetcher_means_chunk_missing_not_corrupt(tmp_path):
    a, mid, rec, big = authored(tmp_path)
    b = new_engine(tmp_path / "b")
    b.adopt(a.records(mid))
    with pytest.raises(ChunkMissing) as ei:
        b.tree(bytes.fromhex(rec["root"]))
    assert ei.value.errno == errno.EIO and ei.value.wants[0][0] == "tree"
    assert not isinstance(ei.value, Corrupt)


def test_wrong_bytes_from_a_fetcher_are_refused_and_not_stored(tmp_path):
    a, mid, rec, big = authored(tmp_path)

    def flip(block):
        kind = block[0]
        if kind == "chunk":
            d = bytearray(block[2]); d[0] ^= 1
            return (kind, block[1], bytes(d))
        if kind == "pack":
            return (kind, block[1], block[2][:-1] + bytes([block[2][-1] ^ 1]), block[3])
        return block

    b = new_engine(tmp_path / "b")
    liar = type(b)(b.store, fetcher=StoreFetcher(a, tamper=flip))
    assert liar.find(mid)
    e = liar.tree(bytes.fromhex(rec["root"])).get(b"big")  # trees pass untouched
    with pytest.raises(Corrupt):
        liar.read_content(e.hash, 0, 4096)
    assert liar.chunks.stats["refused"] >= 1
    assert not liar.chunks.has("manifest", e.hash)
    m = a.manifest(e.hash)
    assert not any(liar.chunks.has("chunk", c) for c in m.chunks)


def test_a_forged_manifest_is_refused(tmp_path):
    """A manifest naming other, valid chunks would pass chunk checks: it is verified
    against the content hash it claims before it is stored."""
    a, mid, rec, big = authored(tmp_path)
    t = a.tree(bytes.fromhex(rec["root"]))
    real = a.manifest(t.get(b"big").hash)
    other = a.manifest(a.tree(t.get(b"docs").hash).get(b"f1.txt").hash)

    def swap(block):
        if block[0] == "manifest" and block[1] == real.hash:
            return ("manifest", real.hash, type(other)(real.hash, other.size, other.chunks,
                                                        other.lengths).encode())
        return block

    b = new_engine(tmp_path / "b")
    liar = type(b)(b.store, fetcher=StoreFetcher(a, tamper=swap))
    liar.find(mid)
    with pytest.raises(Corrupt):
        liar.read_content(real.hash, 0, 100)
    assert not liar.chunks.has("manifest", real.hash)


def test_forged_and_downgraded_records_are_refused(tmp_path):
    a, mid, rec, big = authored(tmp_path)
    b = new_engine(tmp_path / "b")
    good = a.records(mid)
    # a version signed by somebody else
    mallory = ids.NodeKey.generate()
    forged = mallory.sign_record(dict(good["versions"][0], n=7))
    with pytest.raises(Corrupt):
        b.adopt(dict(good, versions=good["versions"] + [forged]))
    assert not b.exists(mid)
    # an info record claiming the MiMei for another author
    stolen = mallory.sign_record(dict(good["info"], author=mallory.id))
    with pytest.raises(Corrupt):
        b.adopt(dict(good, info=stolen))
    # a tampered field breaks the signature
    bad = dict(good["versions"][0], memo="changed")
    with pytest.raises(Corrupt):
        b.adopt(dict(good, versions=[bad]))
    assert not b.exists(mid)
    # the genuine set is adopted; a later, smaller set never takes a version away
    a.backup(mid, memo="second")
    assert b.adopt(a.records(mid)) == mid and b.state(mid)["last"] == 1
    b.adopt(good)
    assert b.state(mid)["last"] == 1 and len(b.versions(mid)) == 2


def test_adopt_tells_listeners_and_a_remote_mimei_is_read_only(tmp_path):
    a, mid, rec, big = authored(tmp_path)
    b = new_engine(tmp_path / "b")
    heard = []
    b.subscribe(heard.append)
    b.adopt(a.records(mid))
    assert heard == [mid]
    b.adopt(a.records(mid))            # nothing new: nobody is told
    assert heard == [mid]
    with pytest.raises(OSError) as ei:
        b.backup(mid)
    assert ei.value.errno == errno.EACCES


def test_gc_evicts_an_unpinned_remote_cache_and_keeps_a_pinned_one(tmp_path):
    a, mid, rec, big = authored(tmp_path)
    b = new_engine(tmp_path / "b")
    eng = type(b)(b.store, fetcher=StoreFetcher(a))
    eng.find(mid)
    h = eng.tree(bytes.fromhex(rec["root"])).get(b"big").hash
    assert eng.read_content(h, 0, 10) == big[:10]
    eng.set_pinned(mid, True)
    maintenance.gc(eng)
    assert eng.chunks.has("manifest", h)
    eng.set_pinned(mid, False)
    maintenance.gc(eng)
    assert not eng.chunks.has("manifest", h)
    # and it comes back on the next read
    assert eng.read_content(h, 5, 10) == big[5:15]


def test_a_failing_fetcher_gives_chunk_missing(tmp_path):
    a, mid, rec, big = authored(tmp_path)

    class Down:
        def fetch_objects(self, wants):
            raise FetchError("no provider")

        def fetch_mimei(self, mimei):
            raise FetchError("no provider")

    b = new_engine(tmp_path / "b")
    b.adopt(a.records(mid))
    eng = type(b)(b.store, fetcher=Down())
    with pytest.raises(ChunkMissing):
        eng.tree(bytes.fromhex(rec["root"]))
    assert eng.find("ab" * 20) is False
