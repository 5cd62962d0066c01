"""``shared/`` in the protocol-free view, without a kernel: share nodes, their numbers,
writes through them, the .mmfs files of the folder, and the change events a door
hears."""

from __future__ import annotations

import errno
import stat

import pytest

from mimeifs.engine.db import Store
from mimeifs.engine.errors import EngineError, NotFound
from mimeifs.engine.mimei import Engine
from mimeifs.shares.registry import Registry
from mimeifs.view import View
from mimeifs.view.nodes import SHARED
from mimeifs.view.shares import share_ino

FILE = stat.S_IFREG | 0o644


@pytest.fixture
def vw(tmp_path):
    e = Engine(Store.create(str(tmp_path / "store"), map_size=1 << 32))
    reg = Registry(str(tmp_path / "store" / "shares"), e)
    v = View(e, 0)
    v.shares = reg
    yield v, reg, e
    e.store.close()


def _mmfs(v, name: bytes, text: bytes):
    d = v.fixed(SHARED)
    n = v.make(d, name, FILE, 0, 0)
    v.write(n, 0, text)
    return n


def test_a_share_written_through_the_view(vw):
    v, reg, e = vw
    _mmfs(v, b"docs.mmfs", b'mark = "docs"\n')
    mid = e.mark_id("docs")
    assert reg.get("docs").mimei == mid
    root = v.resolve("shared/docs")
    assert root.kind == "share" and root.ino == share_ino(reg.get("docs").key, e.state(mid)["cur"])
    f = v.make(root, b"a.txt", FILE, 0, 0)
    v.write(f, 0, b"hello")
    assert v.read(v.resolve(f"mm/{mid}/cur/a.txt"), 0, 10) == b"hello"
    names = [n for n, _, _ in v.children(v.fixed(SHARED))]
    assert names == [b"docs", b"docs.mmfs"]
    assert v.read(v.resolve("shared/docs.mmfs"), 0, 100) == b'mark = "docs"\n'
    # the same node through the share and through mm/ has two numbers
    assert v.resolve("shared/docs/a.txt").ino != v.resolve(f"mm/{mid}/cur/a.txt").ino


def test_readonly_and_versions_refuse_writes(vw):
    v, reg, e = vw
    _mmfs(v, b"r.mmfs", b'mark = "r"\nreadonly = true\n')
    with pytest.raises(EngineError) as ei:
        v.make(v.resolve("shared/r"), b"x", FILE, 0, 0)
    assert ei.value.errno == errno.EROFS
    mid = e.mark_id("r")
    e.backup(mid)
    _mmfs(v, b"v.mmfs", f'mimei = "{mid}"\nversion = 0\n'.encode())
    with pytest.raises(EngineError) as ei:
        v.make(v.resolve("shared/v"), b"x", FILE, 0, 0)
    assert ei.value.errno == errno.EROFS
    assert v.resolve("shared/v").inner.kind == "ver"


def test_an_edited_share_root_follows_and_its_old_children_are_gone(vw):
    v, reg, e = vw
    _mmfs(v, b"s.mmfs", b'mark = "one"\n')
    root = v.resolve("shared/s")
    child = v.make(root, b"f", FILE, 0, 0)
    v.unlink(v.fixed(SHARED), b"s.mmfs")
    assert reg.get("s") is None
    with pytest.raises(NotFound):
        v.attr(root)
    _mmfs(v, b"s.mmfs", b'mark = "two"\n')
    assert v.children(root) == []          # the old number shows the new root
    with pytest.raises(NotFound):
        v.attr(child)                       # what was below the old root is gone
    assert e.mark_id("one") is not None     # the MiMei stays


def test_change_events_name_the_share_nodes_too(vw):
    v, reg, e = vw
    _mmfs(v, b"a.mmfs", b'mark = "a"\n')
    mid = e.mark_id("a")
    heard = []
    v.subscribe(lambda m, inos, entries: heard.append((m, inos, entries)))
    cur_root = e.state(mid)["cur"]
    v.changed(mid, [cur_root], [(cur_root, b"x")])
    m, inos, entries = heard[-1]
    key = reg.get("a").key
    assert set(inos) == {cur_root, share_ino(key, cur_root)}
    assert (share_ino(key, cur_root), b"x") in entries


def test_the_folder_takes_only_files(vw):
    v, reg, e = vw
    with pytest.raises(EngineError) as ei:
        v.make(v.fixed(SHARED), b"d", stat.S_IFDIR | 0o755, 0, 0)
    assert ei.value.errno == errno.EPERM
    _mmfs(v, b"tmp.txt", b"anything")  # an editor's temporary file is fine
    v.rename(v.fixed(SHARED), b"tmp.txt", v.fixed(SHARED), b"t.mmfs")
    assert reg.entries()[0].name == "t" and reg.get("t") is None  # "anything" is not TOML
    assert "not TOML" in reg.entries()[0].error
