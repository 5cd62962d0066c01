"""A db MiMei's versions through the FUSE mount: ``mm/<id>/v/<n>/`` holds one JSON Lines
file per data type, read-only, read by ordinary tools (cat, b3sum, python's json)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile

import pytest

from .conftest import CLI


@pytest.fixture
def mounted(fresh_db):
    """The store mounted by one daemon that also serves RESP on fresh_db's port."""
    mnt = tempfile.mkdtemp(prefix="mimeifs-dbmnt-", dir="/tmp")
    fresh_db.stop()
    fresh_db.run("mount", mnt, "--resp", f"127.0.0.1:{fresh_db.port}")
    try:
        yield fresh_db, mnt
    finally:
        subprocess.run(CLI + ["umount", mnt], env=fresh_db.env,
                       capture_output=True, timeout=60)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        os.rmdir(mnt)


def test_version_files_through_the_mount(mounted):
    m, mnt = mounted
    c = m.client()
    c.cmd("SET", "greeting", "hello")
    c.cmd("HSET", "user:1", "name", "ann", "age", "7")
    c.cmd("RPUSH", "queue", "a", "b")
    c.cmd("SADD", "tags", "x", "y")
    c.cmd("ZADD", "board", "10", "ann", "3.5", "bob")
    m.run("backup", "t")
    c.cmd("SET", "greeting", "changed after the backup")
    v0 = os.path.join(mnt, "mm", m.mid, "v", "0")
    assert sorted(os.listdir(v0)) == ["hashes.jsonl", "lists.jsonl", "sets.jsonl", "strings.jsonl", "zsets.jsonl"]
    strings = subprocess.run(["cat", os.path.join(v0, "strings.jsonl")], capture_output=True,
                             text=True, check=True).stdout
    assert [json.loads(x) for x in strings.splitlines()] == [
        {"type": "string", "key": "greeting", "value": "hello"}]
    with open(os.path.join(v0, "zsets.jsonl")) as f:
        assert json.loads(f.readline())["value"] == [["bob", 3.5], ["ann", 10]]
    with open(os.path.join(v0, "hashes.jsonl")) as f:
        assert json.loads(f.readline())["value"] == [["age", "7"], ["name", "ann"]]
    b3 = subprocess.run(["b3sum", "--no-names", os.path.join(v0, "lists.jsonl")],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert os.getxattr(os.path.join(v0, "lists.jsonl"), "user.mimei.hash").decode() == b3
    with pytest.raises(OSError) as e:
        open(os.path.join(v0, "strings.jsonl"), "w")
    assert e.value.errno == errno.EROFS
    assert os.path.realpath(os.path.join(mnt, "mm", m.mid, "last")) == v0
    c.close()


def test_restore_and_rm_through_the_daemon_reach_resp_clients(mounted):
    m, mnt = mounted
    c = m.client()
    c.cmd("SET", "k", "v0")
    m.run("backup", "t")
    c.cmd("SET", "k", "v1")
    assert c.cmd("WATCH", "k") == b"OK"
    m.run("restore", "t", "0")        # done by the daemon (the store is mounted)
    assert c.cmd("GET", "k") == b"v0"
    assert c.cmd("MULTI") == b"OK" and c.cmd("SET", "k", "mine") == b"QUEUED"
    assert c.cmd("EXEC") is None      # restore changed the watched key
    other = m.run("create", "--type", "db", "--mark", "gone").strip()
    g = m.client(m.run("db", "token", "gone").strip())
    assert g.cmd("SET", "x", "1") == b"OK"
    m.run("rm", "gone")
    assert g.cmd("GET", "x")[1].startswith("NOAUTH")
    assert other not in m.run("list")
    c.close()
    g.close()
