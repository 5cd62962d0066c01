"""Helpers for the network tests: stores with real LMDB, nodes on loopback."""

from __future__ import annotations

import os
import stat

import pytest

from mimeifs.engine.db import Store
from mimeifs.engine.mimei import Engine
from mimeifs.net.config import NetConfig
from mimeifs.net.node import NetNode

MAP_SIZE = 1 << 34
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def fast_config(**kw) -> NetConfig:
    """Times scaled down for tests."""
    base = dict(listen=("127.0.0.1", 0), follow=0.3, republish=2.0, provider_ttl=30.0, rpc_timeout=1.0,
                request_timeout=5.0, bad_peer_for=60.0, min_free=0)
    base.update(kw)
    return NetConfig(**base)


def make_node(path, **kw) -> NetNode:
    store = Store.create(str(path), map_size=MAP_SIZE)
    node = NetNode(store, fast_config(**kw))
    node.attach(Engine(store, fetcher=node.fetcher))
    return node


def author_tree(engine: Engine, files: dict[str, bytes], mark: str = "t") -> str:
    """An fs MiMei holding ``files`` (path -> bytes), backed up once; returns its ID."""
    mid = engine.create("fs", mark)
    root = engine.state(mid)["cur"]
    write_files(engine, mid, files, root)
    engine.backup(mid)
    return mid


def write_files(engine, mid, files, root=None):
    root = root if root is not None else engine.state(mid)["cur"]
    for path, data in files.items():
        parent = root
        parts = path.split("/")
        for d in parts[:-1]:
            try:
                parent = engine.wt.lookup(parent, d.encode()).ino
            except OSError:
                parent = engine.wt.make(parent, d.encode(), DIR, 0, 0).ino
        try:
            ino = engine.wt.lookup(parent, parts[-1].encode()).ino
            engine.wt.setattr(ino, size=0)
        except OSError:
            ino = engine.wt.make(parent, parts[-1].encode(), FILE, 0, 0).ino
        engine.wt.write(ino, 0, data)


def read_version(engine: Engine, mid: str, n: int | None = None) -> dict[str, bytes]:
    """path -> bytes of every file of version n (default: last; blocking; fetches on a miss)."""
    out = {}
    if n is None:
        n = engine.state(mid)["last"]
    root = bytes.fromhex(engine.version(mid, n)["root"])

    def walk(h, prefix):
        for e in engine.chunks.tree(h).entries:
            name = prefix + e.name.decode()
            if e.is_dir:
                walk(e.hash, name + "/")
            elif e.is_file:
                out[name] = engine.chunks.read(e.hash, 0, e.size) if e.size else b""
    walk(root, "")
    return out


def sample_files(seed: int = 1, big: int = 3 << 20) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    files = {f"d{i % 4}/f{i}.txt": (f"file {i} ".encode() * rnd.randint(1, 3000)) for i in range(60)}
    files["big.bin"] = rnd.randbytes(big)
    return files
