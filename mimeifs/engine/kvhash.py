"""The db MiMei's hash commands (Redis 7.0 semantics and error words, seed 001 §6.5;
ledisdb's HCLEAR / HMCLEAR). Registered into ``kvcmd.COMMANDS``."""

from __future__ import annotations

from .kv import HASH, OK, Keyspace, Map, ReplyError, pack_count, parse_int, unpack_count
from .kvcmd import arity_error, clear, command, elem_scan, mclear


def _hcount(h) -> int:
    return unpack_count(h[2])


def hash_set(ks: Keyspace, key: bytes, pairs) -> int:
    """Set hash fields; returns how many were new."""
    h = ks.typed(key, HASH)
    n = 0 if h is None else _hcount(h)
    added = 0
    for f, v in pairs:
        if ks.eget(key, b"m", f) is None:
            added += 1
        ks.eput(key, b"m", f, v)
    ks.put_head(key, HASH, 0 if h is None else h[1], pack_count(n + added), h is not None)
    return added


@command("hset", -4, True)
def c_hset(ks, a):
    if len(a) % 2 == 0:
        raise arity_error("hset")
    return hash_set(ks, a[0], zip(a[1::2], a[2::2]))


@command("hmset", -4, True)
def c_hmset(ks, a):
    if len(a) % 2 == 0:
        raise arity_error("hmset")
    hash_set(ks, a[0], zip(a[1::2], a[2::2]))
    return OK


@command("hsetnx", 4, True)
def c_hsetnx(ks, a):
    h = ks.typed(a[0], HASH)
    if h is not None and ks.eget(a[0], b"m", a[1]) is not None:
        return 0
    return hash_set(ks, a[0], [(a[1], a[2])])


@command("hget", 3)
def c_hget(ks, a):
    if ks.typed(a[0], HASH) is None:
        return None
    v = ks.eget(a[0], b"m", a[1])
    return None if v is None else bytes(v)


@command("hmget", -3)
def c_hmget(ks, a):
    if ks.typed(a[0], HASH) is None:
        return [None] * (len(a) - 1)
    out = []
    for f in a[1:]:
        v = ks.eget(a[0], b"m", f)
        out.append(None if v is None else bytes(v))
    return out


@command("hdel", -3, True)
def c_hdel(ks, a):
    h = ks.typed(a[0], HASH)
    if h is None:
        return 0
    gone = sum(ks.edel(a[0], b"m", f) for f in set(a[1:]))
    left = _hcount(h) - gone
    if gone:
        if left <= 0:
            ks.delete(a[0])
        else:
            ks.put_head(a[0], HASH, h[1], pack_count(left), True)
    return gone


@command("hlen", 2)
def c_hlen(ks, a):
    h = ks.typed(a[0], HASH)
    return 0 if h is None else _hcount(h)


@command("hstrlen", 3)
def c_hstrlen(ks, a):
    v = c_hget(ks, a)
    return 0 if v is None else len(v)


@command("hkeys", 2)
def c_hkeys(ks, a):
    if ks.typed(a[0], HASH) is None:
        return []
    return [f for f, _v in ks.eiter(a[0], b"m")]


@command("hvals", 2)
def c_hvals(ks, a):
    if ks.typed(a[0], HASH) is None:
        return []
    return [v for _f, v in ks.eiter(a[0], b"m")]


@command("hgetall", 2)
def c_hgetall(ks, a):
    if ks.typed(a[0], HASH) is None:
        return Map()
    return Map(ks.eiter(a[0], b"m"))


@command("hexists", 3)
def c_hexists(ks, a):
    return int(c_hget(ks, a) is not None)


@command("hincrby", 4, True)
def c_hincrby(ks, a):
    by = parse_int(a[2])
    h = ks.typed(a[0], HASH)
    old = None if h is None else ks.eget(a[0], b"m", a[1])
    cur = 0 if old is None else parse_int(bytes(old), "ERR hash value is not an integer")
    new = cur + by
    if not -(1 << 63) <= new < (1 << 63):
        raise ReplyError("ERR increment or decrement would overflow")
    hash_set(ks, a[0], [(a[1], str(new).encode())])
    return new


@command("hscan", -3)
def c_hscan(ks, a):
    return elem_scan(ks, a, HASH, b"m", True)


@command("hclear", 2, True)
def c_hclear(ks, a):
    return clear(ks, a[0], HASH)


@command("hmclear", -2, True)
def c_hmclear(ks, a):
    return mclear(ks, a, HASH)
