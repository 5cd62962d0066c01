"""The db MiMei's sorted-set commands (Redis 7.0 semantics and error words, seed 001
§6.5; ledisdb's ZCLEAR / ZMCLEAR). Registered into ``kvcmd.COMMANDS``.

A member is two records: ``m`` + member -> score (big-endian double) and ``s`` +
sortable score + member -> b"" (the score order, ties by member bytes as Redis)."""

from __future__ import annotations

from .kv import (ZSET, Double, Keyspace, ReplyError, Scored, pack_count, pack_score,
                 parse_float, parse_int, sortable, unpack_count, unpack_score, unsortable)
from .kvcmd import clear, command, elem_scan, mclear, syntax
from .kvcoll import _norm_range


def _zhead(ks: Keyspace, key: bytes):
    return ks.typed(key, ZSET)


def zset_put(ks: Keyspace, key: bytes, member: bytes, score: float, old) -> None:
    """Give ``member`` ``score`` (its old score ``old``, or None if it is new); the
    caller keeps the member count in the key's header."""
    if old is not None:
        ks.edel(key, b"s", sortable(old) + member)
    ks.eput(key, b"m", member, pack_score(score))
    ks.eput(key, b"s", sortable(score) + member, b"")


def _zscore(ks: Keyspace, key: bytes, member: bytes):
    v = ks.eget(key, b"m", member)
    return None if v is None else unpack_score(v)


def _zcount_set(ks: Keyspace, key: bytes, h, n: int) -> None:
    if n <= 0:
        ks.delete(key)
    else:
        ks.put_head(key, ZSET, 0 if h is None else h[1], pack_count(n), h is not None)


@command("zadd", -4, True)
def c_zadd(ks, a):
    key, i = a[0], 1
    f = set()
    while i < len(a) and a[i].lower() in (b"nx", b"xx", b"gt", b"lt", b"ch", b"incr"):
        f.add(a[i].lower())
        i += 1
    rest = a[i:]
    if not rest or len(rest) % 2:
        raise syntax()
    if b"nx" in f and b"xx" in f:
        raise ReplyError("ERR XX and NX options at the same time are not compatible")
    if (b"gt" in f and b"nx" in f) or (b"lt" in f and b"nx" in f) or (b"gt" in f and b"lt" in f):
        raise ReplyError("ERR GT, LT, and/or NX options at the same time are not compatible")
    if b"incr" in f and len(rest) > 2:
        raise ReplyError("ERR INCR option supports a single increment-element pair")
    pairs = [(parse_float(rest[j]), rest[j + 1]) for j in range(0, len(rest), 2)]
    h = _zhead(ks, key)
    if h is None and b"xx" in f:
        return None if b"incr" in f else 0
    n = 0 if h is None else unpack_count(h[2])
    added = changed = 0
    result = None
    for score, m in pairs:
        old = None if h is None else _zscore(ks, key, m)
        if old is None:
            if b"xx" in f:
                continue
            if b"incr" in f:
                result = score
            zset_put(ks, key, m, score, None)
            added += 1
            n += 1
            continue
        if b"nx" in f:
            continue
        new = old + score if b"incr" in f else score
        if new != new:
            raise ReplyError("ERR resulting score is not a number (NaN)")
        if (b"gt" in f and new <= old) or (b"lt" in f and new >= old):
            continue
        result = new
        if new != old:
            zset_put(ks, key, m, new, old)
            changed += 1
    if added or changed or h is None:
        if n:
            _zcount_set(ks, key, h, n)
    if b"incr" in f:
        return None if result is None else Double(result)
    return added + changed if b"ch" in f else added


@command("zincrby", 4, True)
def c_zincrby(ks, a):
    by = parse_float(a[1])
    h = _zhead(ks, a[0])
    old = None if h is None else _zscore(ks, a[0], a[2])
    new = by if old is None else old + by
    if new != new:
        raise ReplyError("ERR resulting score is not a number (NaN)")
    zset_put(ks, a[0], a[2], new, old)
    _zcount_set(ks, a[0], h, (0 if h is None else unpack_count(h[2])) + (old is None))
    return Double(new)


@command("zrem", -3, True)
def c_zrem(ks, a):
    h = _zhead(ks, a[0])
    if h is None:
        return 0
    gone = 0
    for m in set(a[1:]):
        old = _zscore(ks, a[0], m)
        if old is not None:
            ks.edel(a[0], b"m", m)
            ks.edel(a[0], b"s", sortable(old) + m)
            gone += 1
    if gone:
        _zcount_set(ks, a[0], h, unpack_count(h[2]) - gone)
    return gone


@command("zcard", 2)
def c_zcard(ks, a):
    h = _zhead(ks, a[0])
    return 0 if h is None else unpack_count(h[2])


@command("zscore", 3)
def c_zscore(ks, a):
    if _zhead(ks, a[0]) is None:
        return None
    s = _zscore(ks, a[0], a[1])
    return None if s is None else Double(s)


def _score_bound(b: bytes):
    """(value, exclusive) of a ZRANGEBYSCORE bound; ReplyError on a bad one."""
    excl = b[:1] == b"("
    if b == b"(" or not b:  # Redis's strtod takes an empty string as 0 here
        return 0.0, excl
    try:
        v = parse_float(b[1:] if excl else b)
    except ReplyError:
        raise ReplyError("ERR min or max is not a float") from None
    return v, excl


def _lex_bound(b: bytes):
    """(value | None for -/+, exclusive, is_plus)."""
    if b == b"-":
        return None, False, False
    if b == b"+":
        return None, False, True
    if b[:1] in (b"[", b"("):
        return b[1:], b[:1] == b"(", False
    raise ReplyError("ERR min or max not valid string range item")


def _in_score(s: float, lo, hi) -> bool:
    return (s > lo[0] if lo[1] else s >= lo[0]) and (s < hi[0] if hi[1] else s <= hi[0])


def _in_lex(m: bytes, lo, hi) -> bool:
    if lo[0] is None:
        ok_lo = not lo[2]
    else:
        ok_lo = m > lo[0] if lo[1] else m >= lo[0]
    if hi[0] is None:
        ok_hi = hi[2]
    else:
        ok_hi = m < hi[0] if hi[1] else m <= hi[0]
    return ok_lo and ok_hi


def _zall(ks: Keyspace, key: bytes, rev: bool = False):
    """(member, score) in score order (reverse: descending)."""
    for sub, _v in ks.eiter(key, b"s", reverse=rev):
        yield sub[8:], unsortable(sub[:8])


@command("zcount", 4)
def c_zcount(ks, a):
    lo, hi = _score_bound(a[1]), _score_bound(a[2])
    if _zhead(ks, a[0]) is None:
        return 0
    return sum(1 for _m, s in _zall(ks, a[0]) if _in_score(s, lo, hi))


def _rank(ks: Keyspace, a, rev: bool):
    if len(a) > 3 or (len(a) == 3 and a[2].lower() != b"withscore"):
        raise syntax()
    if _zhead(ks, a[0]) is None:
        return None
    s = _zscore(ks, a[0], a[1])
    if s is None:
        return None
    for i, (m, _s) in enumerate(_zall(ks, a[0], rev)):
        if m == a[1]:
            return [i, Double(s)] if len(a) == 3 else i
    return None


@command("zrank", -3)
def c_zrank(ks, a):
    return _rank(ks, a, False)


@command("zrevrank", -3)
def c_zrevrank(ks, a):
    return _rank(ks, a, True)


def zrange(ks: Keyspace, key: bytes, lo: bytes, hi: bytes, by: str, rev: bool,
           limit, withscores: bool):
    """The common core of ZRANGE and its older forms; ``lo``/``hi`` as given (for REV
    score/lex ranges the caller passes them as ``max min``)."""
    if by == "score":
        lo_b, hi_b = _score_bound(lo), _score_bound(hi)
    elif by == "lex":
        lo_b, hi_b = _lex_bound(lo), _lex_bound(hi)
    else:
        start, stop = parse_int(lo), parse_int(hi)
    h = _zhead(ks, key)
    if h is None:
        return Scored() if withscores else []
    out = []
    if by == "rank":
        r = _norm_range(start, stop, unpack_count(h[2]))
        if r is not None:
            for i, ms in enumerate(_zall(ks, key, rev)):
                if i > r[1]:
                    break
                if i >= r[0]:
                    out.append(ms)
    else:
        off, cnt = limit if limit is not None else (0, -1)
        if rev:
            lo_b, hi_b = hi_b, lo_b
        if off >= 0:
            for m, s in _zall(ks, key, rev):
                ok = _in_score(s, lo_b, hi_b) if by == "score" else _in_lex(m, lo_b, hi_b)
                if not ok:
                    continue
                if off:
                    off -= 1
                    continue
                if cnt == 0:
                    break
                out.append((m, s))
                cnt -= 1
    if withscores:
        return Scored((m, Double(s)) for m, s in out)
    return [m for m, _s in out]


def _range_opts(a, i: int, allow_by: bool):
    by, rev, limit, ws = "rank", False, None, False
    while i < len(a):
        o = a[i].lower()
        if o == b"withscores":
            ws = True
        elif o == b"limit" and i + 2 < len(a):
            limit = (parse_int(a[i + 1]), parse_int(a[i + 2]))
            i += 2
        elif allow_by and o == b"byscore":
            by = "score"
        elif allow_by and o == b"bylex":
            by = "lex"
        elif allow_by and o == b"rev":
            rev = True
        else:
            raise syntax()
        i += 1
    return by, rev, limit, ws


@command("zrange", -4)
def c_zrange(ks, a):
    by, rev, limit, ws = _range_opts(a, 3, True)
    if limit is not None and by == "rank":
        raise ReplyError("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX")
    if ws and by == "lex":
        raise ReplyError("ERR syntax error, WITHSCORES not supported in combination with BYLEX")
    return zrange(ks, a[0], a[1], a[2], by, rev, limit, ws)


@command("zrevrange", -4)
def c_zrevrange(ks, a):
    if len(a) > 4 or (len(a) == 4 and a[3].lower() != b"withscores"):
        raise syntax()
    return zrange(ks, a[0], a[1], a[2], "rank", True, None, len(a) == 4)


@command("zrangebyscore", -4)
def c_zrangebyscore(ks, a):
    _by, _rev, limit, ws = _range_opts(a, 3, False)
    return zrange(ks, a[0], a[1], a[2], "score", False, limit, ws)


@command("zrevrangebyscore", -4)
def c_zrevrangebyscore(ks, a):
    _by, _rev, limit, ws = _range_opts(a, 3, False)
    return zrange(ks, a[0], a[1], a[2], "score", True, limit, ws)


@command("zrangebylex", -4)
def c_zrangebylex(ks, a):
    _by, _rev, limit, ws = _range_opts(a, 3, False)
    if ws:
        raise syntax()
    return zrange(ks, a[0], a[1], a[2], "lex", False, limit, False)


def _zremove(ks: Keyspace, key: bytes, h, victims) -> int:
    for m, s in victims:
        ks.edel(key, b"m", m)
        ks.edel(key, b"s", sortable(s) + m)
    if victims:
        _zcount_set(ks, key, h, unpack_count(h[2]) - len(victims))
    return len(victims)


@command("zremrangebyscore", 4, True)
def c_zremrangebyscore(ks, a):
    lo, hi = _score_bound(a[1]), _score_bound(a[2])
    h = _zhead(ks, a[0])
    if h is None:
        return 0
    return _zremove(ks, a[0], h, [(m, s) for m, s in _zall(ks, a[0]) if _in_score(s, lo, hi)])


@command("zremrangebyrank", 4, True)
def c_zremrangebyrank(ks, a):
    start, stop = parse_int(a[1]), parse_int(a[2])
    h = _zhead(ks, a[0])
    if h is None:
        return 0
    r = _norm_range(start, stop, unpack_count(h[2]))
    if r is None:
        return 0
    return _zremove(ks, a[0], h, [ms for i, ms in enumerate(_zall(ks, a[0])) if r[0] <= i <= r[1]])


@command("zscan", -3)
def c_zscan(ks, a):
    return elem_scan(ks, a, ZSET, b"m", True, lambda v: Double(unpack_score(v)))


@command("zclear", 2, True)
def c_zclear(ks, a):
    return clear(ks, a[0], ZSET)


@command("zmclear", -2, True)
def c_zmclear(ks, a):
    return mclear(ks, a, ZSET)


