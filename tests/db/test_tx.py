"""Optimistic transactions exactly as Redis: WATCH/MULTI/EXEC with two clients on both
servers, and hypothesis-made random command sequences giving identical replies."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Raw
from .test_vs_redis import norm


def _two(port, pw):
    return Raw(port, pw), Raw(port, pw)


def watch_script(x, y):
    """The same interleaving on any server; returns every reply."""
    out = []
    out.append(x.cmd("SET", "bal", "10"))
    out.append(x.cmd("WATCH", "bal"))
    out.append(y.cmd("INCRBY", "bal", "5"))          # another client writes: x must fail
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("DECRBY", "bal", "3"))
    out.append(x.cmd("EXEC"))                        # nil
    out.append(x.cmd("GET", "bal"))
    out.append(x.cmd("WATCH", "bal", "other"))       # nobody writes: succeeds
    out.append(y.cmd("GET", "bal"))
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("DECRBY", "bal", "3"))
    out.append(x.cmd("EXEC"))
    out.append(x.cmd("WATCH", "bal"))
    out.append(x.cmd("UNWATCH"))
    out.append(y.cmd("SET", "bal", "0"))
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("INCR", "bal"))
    out.append(x.cmd("EXEC"))                        # unwatched: succeeds
    out.append(x.cmd("WATCH", "gone"))
    out.append(y.cmd("SET", "gone", "1"))
    out.append(y.cmd("DEL", "gone"))                 # written and deleted again: still dirty
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("SET", "gone", "2"))
    out.append(x.cmd("EXEC"))
    out.append(x.cmd("WATCH", "bal"))
    out.append(x.cmd("SET", "bal", "7"))             # its own write also breaks it
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("EXEC"))
    out.append(x.cmd("WATCH", "bal"))
    out.append(y.cmd("FLUSHDB"))
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("PING"))
    out.append(x.cmd("EXEC"))
    out.append(x.cmd("WATCH", "q"))
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("DISCARD"))                     # discards the watch too
    out.append(y.cmd("SET", "q", "1"))
    out.append(x.cmd("MULTI"))
    out.append(x.cmd("GET", "q"))
    out.append(x.cmd("EXEC"))
    return out


def test_watch_multi_exec_like_redis(redis_port, mm_db):
    a1, a2 = _two(redis_port, None)
    b1, b2 = _two(mm_db.port, mm_db.token)
    a1.cmd("FLUSHDB")
    b1.cmd("FLUSHDB")
    ra, rb = watch_script(a1, a2), watch_script(b1, b2)
    assert ra == rb
    assert ra[5] is None and ra[11] == [12]  # the conflict and the success, as Redis says
    for c in (a1, a2, b1, b2):
        c.close()


def test_optimistic_counter_with_retries(mm_db):
    """Two clients increment one counter through WATCH/GET/MULTI/SET/EXEC, interleaved;
    failed EXECs retry; no increment is lost."""
    x, y = _two(mm_db.port, mm_db.token)
    x.cmd("SET", "ctr", "0")
    done = {id(x): 0, id(y): 0}
    retries = 0
    while min(done.values()) < 30:
        for c, other in ((x, y), (y, x)):
            if done[id(c)] >= 30:
                continue
            c.cmd("WATCH", "ctr")
            v = int(c.cmd("GET", "ctr"))
            if done[id(other)] < 30 and (done[id(c)] % 3 == 0):
                other.cmd("INCR", "ctr")      # a racing write between GET and EXEC
                done[id(other)] += 1
            c.cmd("MULTI")
            c.cmd("SET", "ctr", str(v + 1))
            if c.cmd("EXEC") is None:
                retries += 1
                continue
            done[id(c)] += 1
    assert int(x.cmd("GET", "ctr")) == sum(done.values())
    assert retries > 0
    x.close()
    y.close()


KEYS = st.sampled_from(["a", "b", "c"])
VALS = st.sampled_from(["0", "1", "-5", "x", "10", "2.5", ""])
CMDS = st.one_of(
    st.tuples(st.sampled_from(["SET", "APPEND", "GETSET", "SETNX", "LPUSH", "RPUSH", "SADD", "SREM",
                               "LREM", "HDEL", "HGET", "SISMEMBER", "INCRBY", "DECRBY", "ZSCORE", "ZREM",
                               "LPUSHX"]), KEYS, VALS),
    st.tuples(st.sampled_from(["GET", "INCR", "DECR", "DEL", "EXISTS", "TYPE", "STRLEN", "LLEN", "LPOP",
                               "RPOP", "SCARD", "SMEMBERS", "HLEN", "HGETALL", "ZCARD", "HKEYS",
                               "PERSIST", "TTL"]), KEYS),
    st.tuples(st.sampled_from(["HSET", "HINCRBY", "LSET", "LRANGE", "LTRIM", "GETRANGE", "SETRANGE",
                               "ZINCRBY", "LINDEX", "SMOVE", "ZCOUNT", "ZRANGEBYSCORE"]), KEYS, VALS, VALS),
    st.tuples(st.just("ZADD"), KEYS, st.sampled_from(["NX", "XX", "GT", "LT", "CH", "INCR", "1"]), VALS, KEYS),
    st.tuples(st.sampled_from(["SINTER", "SUNION", "SDIFF", "MGET"]), KEYS, KEYS),
    st.tuples(st.sampled_from(["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE", "RPOP", "LPOP"]), KEYS, KEYS),
    st.tuples(st.sampled_from(["ZRANGE", "ZREVRANGE"]), KEYS, VALS, VALS, st.sampled_from(["WITHSCORES", "REV", "BYSCORE"])),
    st.just(("DBSIZE",)), st.just(("MULTI",)), st.just(("EXEC",)), st.just(("DISCARD",)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(CMDS, min_size=1, max_size=25))
def test_random_sequences_match_redis(pair, seq):
    a, b = pair
    a.cmd("FLUSHDB") if a.cmd("DISCARD") else None
    b.cmd("FLUSHDB") if b.cmd("DISCARD") else None
    for cmd in seq:
        ra, rb = norm(cmd, a.cmd(*cmd)), norm(cmd, b.cmd(*cmd))
        if cmd[0] in ("SINTER", "SUNION", "SDIFF") or (cmd[0] == "EXEC" and isinstance(ra, list)):
            ra, rb = _deep_sort(ra), _deep_sort(rb)
        assert ra == rb, f"{cmd} in {seq}: redis {ra!r} mimeifs {rb!r}"
    a.cmd("DISCARD")
    b.cmd("DISCARD")


def _deep_sort(x):
    if isinstance(x, list):
        try:
            return sorted(_deep_sort(y) for y in x)
        except TypeError:
            return [_deep_sort(y) for y in x]
    return x
