"""Every command of issue 14 against a real redis-server: the same sequence on both,
the same replies (errors included, word for word). Replies whose order Redis leaves
unspecified (set members, hash field order, KEYS) are compared sorted."""

from __future__ import annotations

import pytest

UNORDERED = {"smembers", "keys", "sinter", "sunion", "sdiff", "hkeys", "hvals"}
PAIRED = {"hgetall"}


def norm(cmd, reply):
    name = cmd[0].lower()
    if name in UNORDERED and isinstance(reply, list):
        return sorted(reply)
    if name in PAIRED and isinstance(reply, list):
        return sorted(zip(reply[::2], reply[1::2]))
    return reply


def same(pair, script):
    a, b = pair
    for cmd in script:
        ra, rb = norm(cmd, a.cmd(*cmd)), norm(cmd, b.cmd(*cmd))
        assert ra == rb, f"{cmd}: redis {ra!r} mimeifs {rb!r}"


STRINGS = [
    ("SET", "a", "1"), ("GET", "a"), ("GET", "nope"), ("SET", "a", "2", "NX"), ("SET", "a", "3", "XX"),
    ("SET", "b", "1", "XX"), ("SET", "b", "1", "NX"), ("SET", "a", "x", "NX", "XX"), ("SET", "a", "4", "GET"),
    ("SET", "c", "v", "EX", "100"), ("TTL", "c"), ("SET", "c", "v", "PX", "100000"), ("TTL", "c"),
    ("SET", "c", "v", "EX", "0"), ("SET", "c", "v", "EX", "abc"), ("SET", "c", "v", "EX", "10", "PX", "10"),
    ("SET", "c", "v", "KEEPTTL"), ("TTL", "c"), ("SET", "c", "w"), ("TTL", "c"), ("SET", "a"),
    ("MSET", "k1", "v1", "k2", "v2"), ("MGET", "k1", "k2", "k3", "a"), ("MSET", "k1"),
    ("INCR", "n"), ("INCR", "n"), ("INCRBY", "n", "10"), ("DECR", "n"), ("DECRBY", "n", "5"),
    ("INCRBY", "n", "x"), ("INCR", "k1"), ("SET", "big", "9223372036854775807"), ("INCR", "big"),
    ("INCRBY", "n", "01"), ("INCRBY", "n", "-0"), ("INCRBY", "n", " 1"), ("INCRBY", "n", "+1"),
    ("STRLEN", "k1"), ("STRLEN", "none"), ("APPEND", "k1", "xyz"), ("APPEND", "new", "ab"), ("GET", "k1"),
    ("GETRANGE", "k1", "0", "1"), ("GETRANGE", "k1", "-3", "-1"), ("GETRANGE", "k1", "5", "2"),
    ("GETRANGE", "k1", "0", "100"), ("GETRANGE", "k1", "-1", "-5"), ("GETRANGE", "none", "0", "-1"),
    ("SETRANGE", "k1", "1", "ZZ"), ("GET", "k1"), ("SETRANGE", "s2", "3", "x"), ("GET", "s2"),
    ("SETRANGE", "s3", "0", ""), ("EXISTS", "s3"), ("SETRANGE", "k1", "-1", "x"),
    ("DEL", "k1", "k2", "nope"), ("EXISTS", "a", "a", "k1"), ("TYPE", "a"), ("TYPE", "none"),
    ("EXPIRE", "a", "100"), ("TTL", "a"), ("PERSIST", "a"), ("TTL", "a"), ("PERSIST", "a"),
    ("EXPIRE", "a", "100", "NX"), ("EXPIRE", "a", "50", "NX"), ("EXPIRE", "a", "200", "GT"),
    ("EXPIRE", "a", "10", "GT"), ("EXPIRE", "a", "10", "LT"), ("TTL", "a"), ("EXPIRE", "a", "5", "XX"),
    ("EXPIRE", "a", "5", "FOO"), ("EXPIRE", "a", "5", "NX", "XX"), ("EXPIRE", "none", "5"),
    ("EXPIRE", "a", "-1"), ("EXISTS", "a"), ("TTL", "none"), ("TTL", "n"),
    ("SETNX", "q", "1"), ("SETNX", "q", "2"), ("GETSET", "q", "3"), ("GETDEL", "q"), ("GET", "q"),
    ("DBSIZE",), ("FLUSHDB",), ("DBSIZE",), ("GET", "n"),
]

HASHES = [
    ("HSET", "h", "f1", "v1", "f2", "v2"), ("HSET", "h", "f1", "x"), ("HSET", "h", "f3"),
    ("HGET", "h", "f1"), ("HGET", "h", "no"), ("HGET", "none", "f"), ("HMGET", "h", "f1", "no", "f2"),
    ("HMGET", "none", "a", "b"), ("HMSET", "h", "f4", "4", "f5", "5"), ("HLEN", "h"), ("HLEN", "none"),
    ("HKEYS", "h"), ("HVALS", "h"), ("HGETALL", "h"), ("HGETALL", "none"), ("HEXISTS", "h", "f1"),
    ("HEXISTS", "h", "zz"), ("HINCRBY", "h", "c", "5"), ("HINCRBY", "h", "c", "-7"), ("HINCRBY", "h", "f1", "1"),
    ("HINCRBY", "h", "c", "x"), ("HDEL", "h", "f1", "f1", "no"), ("HLEN", "h"), ("SET", "s", "x"),
    ("HGET", "s", "f"), ("HSET", "s", "f", "v"), ("HDEL", "h", "f2", "f3", "f4", "f5", "c"), ("EXISTS", "h"),
    ("TYPE", "h"), ("HSET", "h2", "a", "1"), ("TYPE", "h2"), ("HSTRLEN", "h2", "a"),
]

LISTS = [
    ("LPUSH", "l", "a", "b", "c"), ("RPUSH", "l", "d", "e"), ("LRANGE", "l", "0", "-1"), ("LLEN", "l"),
    ("LRANGE", "l", "1", "2"), ("LRANGE", "l", "-2", "-1"), ("LRANGE", "l", "5", "10"), ("LRANGE", "l", "-100", "100"),
    ("LINDEX", "l", "0"), ("LINDEX", "l", "-1"), ("LINDEX", "l", "10"), ("LSET", "l", "1", "B"),
    ("LSET", "l", "10", "x"), ("LSET", "none", "0", "x"), ("LPOP", "l"), ("RPOP", "l"), ("LPOP", "l", "2"),
    ("RPOP", "l", "0"), ("LPOP", "l", "-1"), ("LPOP", "none"), ("LPOP", "none", "2"), ("RPUSH", "l", "x", "y", "x", "z", "x"),
    ("LREM", "l", "2", "x"), ("LRANGE", "l", "0", "-1"), ("RPUSH", "l", "x", "x"), ("LREM", "l", "-1", "x"),
    ("LRANGE", "l", "0", "-1"), ("LREM", "l", "0", "x"), ("LRANGE", "l", "0", "-1"), ("RPUSH", "t", "1", "2", "3", "4", "5"),
    ("LTRIM", "t", "1", "-2"), ("LRANGE", "t", "0", "-1"), ("LTRIM", "t", "5", "10"), ("EXISTS", "t"),
    ("LTRIM", "none", "0", "1"), ("SET", "s", "x"), ("LPUSH", "s", "a"), ("LRANGE", "s", "0", "1"), ("LLEN", "s"),
    ("RPOP", "l", "100"), ("EXISTS", "l"), ("LPUSHX", "l", "a"), ("RPUSH", "l", "a"), ("RPUSHX", "l", "b"),
    ("LRANGE", "l", "0", "-1"), ("LPOP", "l", "1", "2"),
]

SETS = [
    ("SADD", "s1", "a", "b", "c", "a"), ("SADD", "s1", "d"), ("SCARD", "s1"), ("SMEMBERS", "s1"),
    ("SISMEMBER", "s1", "a"), ("SISMEMBER", "s1", "z"), ("SISMEMBER", "none", "a"), ("SREM", "s1", "a", "z"),
    ("SADD", "s2", "c", "d", "e"), ("SINTER", "s1", "s2"), ("SUNION", "s1", "s2"), ("SDIFF", "s1", "s2"),
    ("SINTER", "s1", "none"), ("SDIFF", "none", "s1"), ("SUNION", "none"), ("SINTERSTORE", "d1", "s1", "s2"),
    ("SMEMBERS", "d1"), ("SUNIONSTORE", "d2", "s1", "s2"), ("SCARD", "d2"), ("SDIFFSTORE", "d3", "s1", "s2"),
    ("SMEMBERS", "d3"), ("SINTERSTORE", "d3", "s1", "none"), ("EXISTS", "d3"), ("SET", "str", "x"),
    ("SADD", "str", "a"), ("SINTER", "s1", "str"), ("SUNIONSTORE", "str", "s1"), ("TYPE", "str"),
    ("SREM", "s2", "c", "d", "e"), ("EXISTS", "s2"), ("SCARD", "none"), ("SMEMBERS", "none"),
    ("SMISMEMBER", "s1", "b", "x"), ("SMOVE", "s1", "s9", "b"), ("SMEMBERS", "s9"),
]

ZSETS = [
    ("ZADD", "z", "1", "a", "2", "b", "3", "c"), ("ZADD", "z", "1.5", "a"), ("ZADD", "z", "CH", "1", "a", "9", "n"),
    ("ZADD", "z", "NX", "5", "a", "6", "o"), ("ZADD", "z", "XX", "7", "a", "8", "p"), ("ZADD", "z", "GT", "2", "a"),
    ("ZADD", "z", "GT", "CH", "20", "a"), ("ZADD", "z", "LT", "CH", "1", "a"), ("ZADD", "z", "INCR", "2.5", "a"),
    ("ZADD", "z", "INCR", "1", "a", "2", "b"), ("ZADD", "z", "NX", "XX", "1", "a"), ("ZADD", "z", "GT", "LT", "1", "a"),
    ("ZADD", "z", "x", "a"), ("ZADD", "z", "1"), ("ZADD", "z", "NX", "INCR", "1", "a"), ("ZADD", "z", "1.1", "f"),
    ("ZSCORE", "z", "f"), ("ZSCORE", "z", "a"), ("ZSCORE", "z", "none"), ("ZCARD", "z"), ("ZCOUNT", "z", "-inf", "+inf"),
    ("ZCOUNT", "z", "(1", "3"), ("ZCOUNT", "z", "x", "3"), ("ZINCRBY", "z", "1", "b"), ("ZINCRBY", "z", "1", "new"),
    ("ZINCRBY", "z", "x", "b"), ("ZRANK", "z", "a"), ("ZRANK", "z", "none"), ("ZREVRANK", "z", "a"),
    ("ZRANGE", "z", "0", "-1"), ("ZRANGE", "z", "0", "-1", "WITHSCORES"), ("ZRANGE", "z", "1", "2", "REV"),
    ("ZRANGE", "z", "(1", "5", "BYSCORE"), ("ZRANGE", "z", "5", "(1", "BYSCORE", "REV", "WITHSCORES"),
    ("ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", "1", "2"), ("ZRANGE", "z", "0", "1", "LIMIT", "0", "1"),
    ("ZRANGEBYSCORE", "z", "1", "3", "WITHSCORES"), ("ZRANGEBYSCORE", "z", "(1", "(3"),
    ("ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "2", "2"), ("ZREVRANGE", "z", "0", "2", "WITHSCORES"),
    ("ZREVRANGEBYSCORE", "z", "+inf", "2", "WITHSCORES"), ("ZREVRANGEBYSCORE", "z", "3", "-inf", "LIMIT", "0", "2"),
    ("ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d"), ("ZRANGE", "lex", "[b", "(d", "BYLEX"),
    ("ZRANGE", "lex", "-", "+", "BYLEX", "LIMIT", "1", "2"), ("ZRANGE", "lex", "+", "[b", "BYLEX", "REV"),
    ("ZRANGE", "lex", "a", "b", "BYLEX"), ("ZRANGEBYLEX", "lex", "(a", "+"),
    ("ZREMRANGEBYSCORE", "z", "(2", "5"), ("ZRANGE", "z", "0", "-1", "WITHSCORES"), ("ZREMRANGEBYRANK", "z", "0", "0"),
    ("ZRANGE", "z", "0", "-1"), ("ZREMRANGEBYRANK", "z", "-1", "-1"), ("ZREM", "z", "b", "zz"), ("ZCARD", "z"),
    ("ZADD", "inf", "inf", "x", "-inf", "y", "0", "z"), ("ZRANGE", "inf", "0", "-1", "WITHSCORES"),
    ("ZADD", "inf", "INCR", "-inf", "x"), ("SET", "s", "x"), ("ZADD", "s", "1", "a"), ("ZSCORE", "s", "a"),
    ("ZREMRANGEBYRANK", "z", "0", "-1"), ("EXISTS", "z"), ("ZRANGE", "none", "0", "-1"), ("ZSCORE", "none", "a"),
]

KEYS = [
    ("MSET", "user:1", "a", "user:2", "b", "u:3", "c", "other", "d", "h?llo", "e", "hallo", "f", "hbllo", "g"),
    ("KEYS", "*"), ("KEYS", "user:*"), ("KEYS", "h?llo"), ("KEYS", "h[ae]llo"), ("KEYS", "h[^e]llo"),
    ("KEYS", "h[a-b]llo"), ("KEYS", "h\\?llo"), ("KEYS", "nomatch*"), ("DBSIZE",), ("RPUSH", "lst", "x"),
    ("TYPE", "lst"), ("DEL", "lst", "user:1"), ("DBSIZE",),
]

CONN = [
    ("PING",), ("PING", "hi"), ("ECHO", "x"), ("SELECT", "0"), ("NOSUCHCMD", "a", "b"),
    ("GET",), ("GET", "a", "b"), ("CLIENT", "SETNAME", "me"), ("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", "a b"),
    ("HELLO", "4"), ("EXEC",), ("DISCARD",), ("MULTI",), ("MULTI",), ("SET", "a", "1"), ("INCR", "a"),
    ("GET", "a"), ("LPUSH", "a", "x"), ("EXEC",), ("MULTI",), ("SET", "a", "1"), ("GETX", "a"), ("EXEC",),
    ("GET", "a"), ("MULTI",), ("SET", "a"), ("EXEC",), ("MULTI",), ("SET", "b", "1"), ("DISCARD",), ("EXISTS", "b"),
    ("MULTI",), ("WATCH", "a"), ("EXEC",),
]


@pytest.mark.parametrize("script", [STRINGS, HASHES, LISTS, SETS, ZSETS, KEYS, CONN],
                         ids=["strings", "hashes", "lists", "sets", "zsets", "keys", "connection"])
def test_same_replies_as_redis(pair, script):
    same(pair, script)


def test_wrongtype_everywhere(pair):
    a, b = pair
    for setup in (("SET", "k", "v"), ("RPUSH", "k", "v"), ("SADD", "k", "v"), ("HSET", "k", "f", "v"),
                  ("ZADD", "k", "1", "v")):
        same(pair, [("DEL", "k"), setup] + [c for c in (
            ("GET", "k"), ("INCR", "k"), ("APPEND", "k", "x"), ("HGET", "k", "f"), ("HSET", "k", "f", "v"),
            ("LPUSH", "k", "x"), ("LRANGE", "k", "0", "-1"), ("SADD", "k", "x"), ("SMEMBERS", "k"),
            ("ZADD", "k", "1", "x"), ("ZRANGE", "k", "0", "-1"), ("STRLEN", "k"), ("HLEN", "k"), ("LLEN", "k"),
            ("SCARD", "k"), ("ZCARD", "k"), ("TYPE", "k"))])


def _scan_all(c, *args):
    cur, seen = b"0", []
    for _ in range(1000):
        cur, items = c.cmd(*args[:1], *( [args[1]] if len(args) > 1 else []), cur, *args[2:]) \
            if False else _scan_step(c, args, cur)
        seen += items
        if cur == b"0":
            return seen
    raise AssertionError("SCAN did not finish")


def _scan_step(c, args, cur):
    name = args[0]
    if name == "SCAN":
        return c.cmd("SCAN", cur, *args[1:])
    return c.cmd(name, args[1], cur, *args[2:])


def test_scan_family_covers_everything(pair):
    a, b = pair
    for c in (a, b):
        for i in range(300):
            c.cmd("SET", f"key:{i}", i)
        c.cmd("RPUSH", "lst", "x")
        c.cmd("HSET", "h", *[x for i in range(200) for x in (f"f{i}", i)])
        c.cmd("SADD", "s", *[f"m{i}" for i in range(200)])
        c.cmd("ZADD", "z", *[x for i in range(200) for x in (i, f"m{i}")])
    for args in (("SCAN",), ("SCAN", "MATCH", "key:1*", "COUNT", "7"), ("SCAN", "TYPE", "list"),
                 ("HSCAN", "h"), ("SSCAN", "s", "MATCH", "m1*"), ("ZSCAN", "z", "COUNT", "50")):
        ra, rb = _scan_all(a, *args), _scan_all(b, *args)
        if args[0] in ("HSCAN", "ZSCAN"):
            ra, rb = sorted(zip(ra[::2], ra[1::2])), sorted(zip(rb[::2], rb[1::2]))
        assert sorted(set(ra)) == sorted(set(rb)), args
    same(pair, [("SCAN", "x"), ("SCAN", "0", "COUNT", "0"), ("SCAN", "0", "MATCH"), ("HSCAN", "none", "0")])


def test_ledis_clears(mm_db):
    c = mm_db.client()
    try:
        c.cmd("FLUSHDB")
        c.cmd("HSET", "h1", "a", "1", "b", "2")
        c.cmd("HSET", "h2", "a", "1")
        c.cmd("RPUSH", "l1", "a", "b", "c")
        c.cmd("SADD", "s1", "a")
        c.cmd("ZADD", "z1", "1", "a", "2", "b")
        c.cmd("SET", "str", "x")
        assert c.cmd("HMCLEAR", "h1", "h2", "str") == 3
        assert c.cmd("EXISTS", "h1", "h2", "str") == 1
        assert c.cmd("LCLEAR", "l1") == 3 and c.cmd("LLEN", "l1") == 0
        assert c.cmd("LMCLEAR", "l1") == 1
        assert c.cmd("SCLEAR", "s1") == 1 and c.cmd("SMCLEAR", "s1", "x") == 2
        assert c.cmd("ZCLEAR", "z1") == 2 and c.cmd("ZMCLEAR", "z1") == 1
        assert c.cmd("ZCLEAR", "str")[0] == "ERR" and c.cmd("DBSIZE") == 1
    finally:
        c.close()
