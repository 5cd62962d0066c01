"""Shared fixtures and helpers for the engine tests: a real LMDB store in a tmp dir."""

from __future__ import annotations

import stat

import pytest

from mimeifs.engine.db import Store
from mimeifs.engine.mimei import Engine

# A small map keeps many stores per session cheap on tmpfs/ext4 (sparse anyway).
MAP_SIZE = 1 << 34

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777


def new_engine(path) -> Engine:
    return Engine(Store.create(str(path), map_size=MAP_SIZE))


@pytest.fixture
def engine(tmp_path):
    e = new_engine(tmp_path / "store")
    yield e
    e.store.close()


@pytest.fixture
def fs(engine):
    """(engine, MiMei ID, cur root inode) of a fresh fs MiMei."""
    mid = engine.create("fs", "t")
    return engine, mid, engine.state(mid)["cur"]


def mkfile(e: Engine, parent: int, name: bytes, data: bytes = b"") -> int:
    ino = e.wt.make(parent, name, FILE, 0, 0).ino
    if data:
        e.wt.write(ino, 0, data)
    return ino


def mkdir(e: Engine, parent: int, name: bytes) -> int:
    return e.wt.make(parent, name, DIR, 0, 0).ino


def lookup_path(e: Engine, root: int, path: str) -> int:
    ino = root
    for part in path.strip("/").split("/"):
        if part:
            ino = e.wt.lookup(ino, part.encode()).ino
    return ino


def read_all(e: Engine, ino: int) -> bytes:
    return e.wt.read(ino, 0, e.wt.getattr(ino).size + 1)


def cur_snapshot(e: Engine, root: int) -> dict:
    """cur as a dict path -> ("f", bytes, perm bits, xattrs) | ("d",) | ("l", target)."""
    out: dict = {}

    def walk(ino: int, pre: str) -> None:
        for name, node in e.wt.readdir(ino):
            p = pre + name.decode("utf-8", "surrogateescape")
            if node.is_dir:
                out[p] = ("d",)
                walk(node.ino, p + "/")
            elif node.is_lnk:
                out[p] = ("l", node.target)
            elif not node.is_reg:  # fifo, device, socket
                out[p] = ("o", stat.S_IFMT(node.mode), node.rdev)
            else:
                data = e.wt.read(node.ino, 0, node.size + 1)
                assert len(data) == node.size
                xs = tuple(sorted((k, e.wt.getxattr(node.ino, k)) for k in e.wt.listxattr(node.ino)))
                out[p] = ("f", data, stat.S_IMODE(node.mode), xs)

    walk(root, "")
    return out


def version_snapshot(e: Engine, mid: str, n: int) -> dict:
    """Version n as the same dict shape as :func:`cur_snapshot` (read through the DAG)."""
    out: dict = {}
    root = e.version_root(mid, n)

    def walk(h: bytes, pre: str) -> None:
        t = e.tree(h)
        names = [x.name for x in t.entries]
        assert names == sorted(names), "tree entries must be sorted by name"
        for en in t.entries:
            p = pre + en.name.decode("utf-8", "surrogateescape")
            if en.is_dir:
                out[p] = ("d",)
                walk(en.hash, p + "/")
            elif stat.S_ISLNK(en.mode):
                out[p] = ("l", en.target)
            elif not en.is_file:
                assert en.hash == b""
                out[p] = ("o", stat.S_IFMT(en.mode), en.rdev)
            else:
                data = e.read_content(en.hash, 0, en.size + 1)
                assert len(data) == en.size
                out[p] = ("f", data, stat.S_IMODE(en.mode), tuple(en.xattrs))

    walk(root.hash, "")
    return out
