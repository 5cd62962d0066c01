"""Durability and versions of a db MiMei: kill -9 after acknowledged writes, versions
that keep old data, restore/fork/rm/check/gc, export/import, sharing between versions."""

from __future__ import annotations

import json
import random

from mimeifs.engine.db import Store
from mimeifs.engine.mimei import Engine

from .conftest import Raw


def test_kill9_loses_no_acknowledged_write(fresh_db):
    c = fresh_db.client()
    acked = []
    for i in range(300):  # single commands and pipelines, each reply read before the kill
        if i % 3:
            assert c.cmd("SET", f"k{i}", f"v{i}") == b"OK"
        else:
            c.send_raw(b"".join(b"*3\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n$%d\r\n%d\r\n" % (len(str(i)), i) for _ in range(3)))
            for _ in range(3):
                c.read()
        acked.append(i)
    c.cmd("HSET", "h", "last", "yes")
    fresh_db.kill9()
    fresh_db.start()
    d = fresh_db.client()
    for i in acked:
        if i % 3:
            assert d.cmd("GET", f"k{i}") == f"v{i}".encode()
    assert d.cmd("LLEN", "l") == 300  # 100 pipelines of 3
    assert d.cmd("HGET", "h", "last") == b"yes"
    d.close()


def test_version_keeps_old_data_and_cli_lifecycle(fresh_db):
    m = fresh_db
    c = m.client()
    c.cmd("MSET", "a", "1", "b", "2")
    c.cmd("RPUSH", "l", "x", "y")
    c.cmd("ZADD", "z", "1.5", "m", "inf", "top")
    c.cmd("HSET", "h", "f", b"\xff")
    c.cmd("SADD", "s", "p", "q")
    assert m.run("backup", "t").split()[0] == "0"
    c.cmd("SET", "a", "changed")
    c.cmd("DEL", "b")
    c.cmd("RPUSH", "l", "z")
    assert m.run("backup", "t").split()[0] == "1"
    c.cmd("SET", "a", "later")
    v0 = Raw(m.port, m.run("db", "token", "t@0").strip())
    assert v0.cmd("MGET", "a", "b") == [b"1", b"2"] and v0.cmd("LRANGE", "l", "0", "-1") == [b"x", b"y"]
    assert v0.cmd("ZSCORE", "z", "top") == b"inf"
    v1 = Raw(m.port, m.run("db", "token", "t@last").strip())
    assert v1.cmd("MGET", "a", "b") == [b"changed", None] and v1.cmd("LLEN", "l") == 3
    assert c.cmd("GET", "a") == b"later"
    # export a version: JSON Lines, one key a line
    lines = [json.loads(x) for x in m.run("db", "export", "t@0", "-").splitlines()]
    assert {"type": "string", "key": "a", "value": "1"} in lines and len(lines) == 6
    # restore v/0 into cur, fork v/1, check, gc
    m.run("restore", "t", "0")
    assert c.cmd("MGET", "a", "b") == [b"1", b"2"]
    assert c.cmd("HGET", "h", "f") == b"\xff"
    fork = m.run("fork", "t@1", "--mark", "f2").strip()
    m.run("check")  # exits 1 on any bad block or signature
    m.run("gc")
    assert v0.cmd("GET", "a") == b"1"
    m.run("db", "export", "t", str(m.base / "cur.jsonl"))
    m.run("db", "import", "f2", str(m.base / "cur.jsonl"), "--replace")
    f = Raw(m.port, m.run("db", "token", "f2").strip())
    assert f.cmd("MGET", "a", "b") == [b"1", b"2"] and f.cmd("DBSIZE") == 6
    (m.base / "bad.jsonl").write_text('{"type":"string","key":"x","value":"1"}\n{"type":"nope"}\n')
    out = m.run("db", "import", "f2", str(m.base / "bad.jsonl"), check=False)
    assert f.cmd("EXISTS", "x") == 0, out
    m.run("rm", "f2")
    assert fork not in m.run("list")
    for x in (c, v0, v1, f):
        x.close()


def _store(tmp_path):
    s = Store.create(str(tmp_path / "s"))
    return s, Engine(s)


def test_backup_shares_unchanged_buckets_and_restores_exactly(tmp_path):
    from mimeifs.engine import kv, kvsnap
    s, e = _store(tmp_path)
    mid = e.create("db", "big")
    ns = bytes.fromhex(mid)
    rnd = random.Random(1)
    with s.write() as txn:
        ks = kv.Keyspace(s, ns, txn, True)
        for i in range(20000):
            ks.put_head(b"key:%06d" % i, kv.STRING, 0, b"value-%d-%d" % (i, rnd.randrange(10**9)), False)
        ks.finish()
    r0 = e.backup(mid)
    with s.write() as txn:  # 1% of the keys, in one key range
        ks = kv.Keyspace(s, ns, txn, True)
        for i in range(5000, 5200):
            ks.put_head(b"key:%06d" % i, kv.STRING, 0, b"changed", True)
        ks.put_head(b"key:005000a", kv.STRING, 0, b"new", False)
        ks.delete(b"key:005300")
        ks.finish()
    r1 = e.backup(mid)
    assert r1["stats"]["keys_serialized"] < 2000
    assert r1["stats"]["new_bytes"] < 0.1 * r0["stats"]["new_bytes"]
    # the incremental version equals a full re-serialization of the same keys
    other = e.create("db", "copy")
    with s.write() as txn:
        kvsnap.checkout(txn, s, bytes.fromhex(other), bytes.fromhex(r1["root"]))
    r2 = e.backup(other)
    assert r2["root"] == r1["root"] and r2["stats"]["new_bytes"] == 0
    e.restore(mid, 0)
    with s.read() as txn:
        ks = kv.Keyspace(s, ns, txn, False)
        assert ks.count() == 20000 and ks.head(b"key:005000a") is None
        assert ks.head(b"key:005100")[2] != b"changed"
    assert e.backup(mid)["root"] == r0["root"]


def test_group_commit_many_clients_then_kill9(fresh_db):
    """Twenty clients write at once (their writes share group commits); every
    acknowledged write is there after kill -9, and no reply came for a lost one."""
    import threading
    n, per = 20, 50
    acked = [0] * n

    def work(i):
        c = fresh_db.client()
        for j in range(per):
            assert c.cmd("INCR", "ctr") > 0
            assert c.cmd("RPUSH", f"l{i}", j) == j + 1
            acked[i] += 1
        c.close()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    fresh_db.kill9()
    fresh_db.start()
    d = fresh_db.client()
    assert int(d.cmd("GET", "ctr")) == sum(acked) == n * per
    assert [d.cmd("LLEN", f"l{i}") for i in range(n)] == [per] * n
    d.close()
