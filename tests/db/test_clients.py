"""Real clients against the mimeifs RESP server: redis-cli (Debian redis-tools),
redis-py sync and asyncio, RESP3 after HELLO 3, tokens and rights."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
import redis
import redis.asyncio

from .conftest import CLI, Raw


def rcli(m, *args, **kw):
    p = subprocess.run(["redis-cli", "-p", str(m.port), *args], capture_output=True,
                       text=True, timeout=30, **kw)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_redis_cli_password_user_and_inline(mm_db):
    out = rcli(mm_db, "-a", mm_db.token, "--no-auth-warning", "SET", "cli", "hello")
    assert out.strip() == "OK"
    assert rcli(mm_db, "--user", "t", "--pass", mm_db.token, "--no-auth-warning", "GET", "cli").strip() == "hello"
    assert rcli(mm_db, "--user", mm_db.mid, "--pass", mm_db.token, "--no-auth-warning", "GET", "cli").strip() == "hello"
    # without AUTH only PING answers
    assert rcli(mm_db, "PING").strip() == "PONG"
    assert "NOAUTH" in rcli(mm_db, "GET", "cli")
    # redis-cli in interactive mode speaks to us through stdin too
    out = rcli(mm_db, "-a", mm_db.token, "--no-auth-warning", input="INCR ctr\nINCR ctr\nGET ctr\n")
    assert out.split()[-1] == "2" or out.split()[-1] == '"2"'
    # the Unix socket in the store
    p = subprocess.run(["redis-cli", "-s", mm_db.store + "/resp.sock", "-a", mm_db.token,
                        "--no-auth-warning", "GET", "cli"], capture_output=True, text=True, timeout=30)
    assert p.stdout.strip() == "hello"


def test_inline_commands_as_telnet_sends_them(mm_db):
    c = Raw(mm_db.port)
    c.send_raw(b"PING\r\n")
    assert c.read() == b"PONG"
    c.send_raw(f"AUTH {mm_db.token}\r\n".encode())
    assert c.read() == b"OK"
    c.send_raw(b'SET "with space" \'it\\\'s\'\nGET "with space"\r\n\r\n  \r\nECHO "a\\x41\\n"\r\n')
    assert c.read() == b"OK"
    assert c.read() == b"it's"
    assert c.read() == b"aA\n"
    c.send_raw(b'SET "unbalanced\r\n')
    assert c.read()[1].startswith("ERR Protocol error")
    c.close()


def test_redis_py_sync_url_and_pipeline(mm_db):
    r = redis.Redis.from_url(f"redis://:{mm_db.token}@127.0.0.1:{mm_db.port}/0")
    r.flushdb()
    assert r.set("k", "v") and r.get("k") == b"v"
    p = r.pipeline(transaction=True)
    p.incr("n").incr("n").lpush("l", 1, 2).lrange("l", 0, -1)
    assert p.execute() == [1, 2, 2, [b"2", b"1"]]
    assert r.zadd("z", {"a": 1.25}) == 1 and r.zscore("z", "a") == 1.25
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush("k", 1)
    assert r.client_id() > 0
    r.client_setname("me")
    assert r.client_getname() in (b"me", "me")
    info = r.info()
    assert info["redis_version"] == "7.0.0" and info["db0"]["keys"] == r.dbsize()
    assert r.command_count() > 50
    r.close()


def test_redis_py_asyncio_resp3(mm_db):
    async def go():
        r = redis.asyncio.Redis(port=mm_db.port, password=mm_db.token, protocol=3)
        await r.flushdb()
        await r.hset("h", mapping={"a": "1", "b": "2"})
        assert await r.hgetall("h") == {b"a": b"1", b"b": b"2"}
        await r.zadd("z", {"m": 2.5})
        assert await r.zscore("z", "m") == 2.5
        await r.sadd("s", "x", "y")
        assert await r.smembers("s") == {b"x", b"y"}
        res = await asyncio.gather(*(r.incr("ctr") for _ in range(50)))
        assert sorted(res) == list(range(1, 51))
        await r.aclose()
    asyncio.run(go())


def test_resp3_types_on_the_wire(mm_db):
    c = mm_db.client()
    c.cmd("FLUSHDB")
    c.cmd("HSET", "h", "a", "1")
    c.cmd("ZADD", "z", "1.5", "m")
    hello = c.cmd("HELLO", "3")
    assert hello[b"proto"] == 3 if isinstance(hello, dict) else b"proto" in hello
    c.send_raw(b"*3\r\n$6\r\nZSCORE\r\n$1\r\nz\r\n$1\r\nm\r\n*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n*2\r\n$3\r\nGET\r\n$2\r\nno\r\n")
    c.s.settimeout(5)
    data = b""
    while not data.endswith(b"_\r\n"):
        data += c.s.recv(4096)
    assert data == b",1.5\r\n%1\r\n$1\r\na\r\n$1\r\n1\r\n_\r\n"
    c.close()


def test_tokens_rights_and_versions(mm_db):
    c = mm_db.client()
    c.cmd("FLUSHDB")
    c.cmd("SET", "a", "old")
    mm_db.run("backup", "t")
    c.cmd("SET", "a", "new")
    ro = Raw(mm_db.port, mm_db.run("db", "token", "t", "--read-only").strip())
    assert ro.cmd("GET", "a") == b"new"
    assert ro.cmd("SET", "a", "x")[1].startswith("READONLY")
    n = int(mm_db.run("log", "t", "--json").count('"n"')) - 1
    v = Raw(mm_db.port, mm_db.run("db", "token", f"t@{n}").strip())
    assert v.cmd("GET", "a") == b"old"
    assert v.cmd("DEL", "a")[1].startswith("READONLY")
    assert v.cmd("MULTI") == b"OK" and v.cmd("SET", "a", "1")[1].startswith("READONLY")
    assert v.cmd("EXEC")[1].startswith("EXECABORT")
    # two-argument AUTH selects a version with the cur token
    w = Raw(mm_db.port)
    assert w.cmd("AUTH", f"t@{n}", mm_db.token) == b"OK" and w.cmd("GET", "a") == b"old"
    assert w.cmd("AUTH", "t", "mmdb1." + "0" * 40 + ".cur.rw." + "0" * 32)[1].startswith("WRONGPASS")
    assert w.cmd("AUTH", "nosuchmark", mm_db.token)[1].startswith("WRONGPASS")
    assert w.cmd("AUTH", mm_db.token[:-1] + ("0" if mm_db.token[-1] != "0" else "1"))[1].startswith("WRONGPASS")
    for x in (c, ro, v, w):
        x.close()


def test_file_import_into_a_db_is_refused(mm_db, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    p = subprocess.run([*CLI, "import", str(tmp_path), "t"], env=mm_db.env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "db import" in p.stderr
