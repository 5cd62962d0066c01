"""The db MiMei's list and set commands (Redis 7.0 semantics and error words, seed 001
§6.5; ledisdb's LCLEAR / LMCLEAR / SCLEAR / SMCLEAR). Registered into ``kvcmd.COMMANDS``."""

from __future__ import annotations

from .kv import (BIAS, LIST, OK, SET, Keyspace, ReplyError, SetReply, lidx, pack_count,
                 pack_list, parse_int, unpack_count, unpack_list)
from .kvcmd import arity_error, clear, command, elem_scan, mclear


# ---------------------------------------------------------------------- lists
def _list(ks: Keyspace, key: bytes):
    h = ks.typed(key, LIST)
    if h is None:
        return None, BIAS, BIAS
    head, tail = unpack_list(h[2])
    return h, head, tail


def _push(ks: Keyspace, a, left: bool, only_existing: bool = False) -> int:
    key = a[0]
    h, head, tail = _list(ks, key)
    if h is None and only_existing:
        return 0
    for v in a[1:]:
        if left:
            head -= 1
            ks.eput(key, b"l", lidx(head), v)
        else:
            ks.eput(key, b"l", lidx(tail), v)
            tail += 1
    ks.put_head(key, LIST, 0 if h is None else h[1], pack_list(head, tail), h is not None)
    return tail - head


@command("lpush", -3, True)
def c_lpush(ks, a):
    return _push(ks, a, True)


@command("rpush", -3, True)
def c_rpush(ks, a):
    return _push(ks, a, False)


@command("lpushx", -3, True)
def c_lpushx(ks, a):
    return _push(ks, a, True, True)


@command("rpushx", -3, True)
def c_rpushx(ks, a):
    return _push(ks, a, False, True)


def _pop(ks: Keyspace, a, left: bool):
    if len(a) > 2:
        raise arity_error("lpop" if left else "rpop")
    count = None
    if len(a) == 2:
        count = parse_int(a[1], "ERR value is out of range, must be positive")
        if count < 0:
            raise ReplyError("ERR value is out of range, must be positive")
    h, head, tail = _list(ks, a[0])
    if h is None:
        return None
    if count == 0:
        return []
    out = []
    for _ in range(1 if count is None else min(count, tail - head)):
        if left:
            i = head
            head += 1
        else:
            tail -= 1
            i = tail
        out.append(bytes(ks.eget(a[0], b"l", lidx(i))))
        ks.edel(a[0], b"l", lidx(i))
    if head >= tail:
        ks.delete(a[0])
    else:
        ks.put_head(a[0], LIST, h[1], pack_list(head, tail), True)
    return out[0] if count is None else out


@command("lpop", -2, True)
def c_lpop(ks, a):
    return _pop(ks, a, True)


@command("rpop", -2, True)
def c_rpop(ks, a):
    return _pop(ks, a, False)


@command("llen", 2)
def c_llen(ks, a):
    _h, head, tail = _list(ks, a[0])
    return tail - head


def _norm_range(start: int, stop: int, n: int):
    """Redis's index range: (start, stop) inclusive clamped, or None when empty."""
    if start < 0:
        start += n
    if stop < 0:
        stop += n
    start = max(start, 0)
    if start > stop or start >= n:
        return None
    return start, min(stop, n - 1)


@command("lrange", 4)
def c_lrange(ks, a):
    start, stop = parse_int(a[1]), parse_int(a[2])
    h, head, tail = _list(ks, a[0])
    r = _norm_range(start, stop, tail - head)
    if r is None:
        return []
    out = []
    want = r[1] - r[0] + 1
    for _sub, v in ks.eiter(a[0], b"l", lidx(head + r[0])):
        out.append(v)
        if len(out) == want:
            break
    return out


@command("lindex", 3)
def c_lindex(ks, a):
    h, head, tail = _list(ks, a[0])  # Redis looks the key up before the index
    if h is None:
        return None
    i = parse_int(a[1])
    n = tail - head
    if i < 0:
        i += n
    if not 0 <= i < n:
        return None
    return bytes(ks.eget(a[0], b"l", lidx(head + i)))


@command("lset", 4, True)
def c_lset(ks, a):
    h, head, tail = _list(ks, a[0])
    if h is None:
        raise ReplyError("ERR no such key")
    i = parse_int(a[1])
    n = tail - head
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise ReplyError("ERR index out of range")
    ks.eput(a[0], b"l", lidx(head + i), a[2])
    ks.touch(a[0])
    return OK


def _rewrite_list(ks: Keyspace, key: bytes, h, items: list) -> None:
    ks._del_prefix(ks.eprefix(key) + b"l")
    if not items:
        ks.delete(key)
        return
    for j, v in enumerate(items):
        ks.eput(key, b"l", lidx(BIAS + j), v)
    ks.put_head(key, LIST, h[1], pack_list(BIAS, BIAS + len(items)), True)


@command("lrem", 4, True)
def c_lrem(ks, a):
    count = parse_int(a[1])
    h, head, tail = _list(ks, a[0])
    if h is None:
        return 0
    items = [v for _s, v in ks.eiter(a[0], b"l")]
    removed = 0
    order = range(len(items)) if count >= 0 else range(len(items) - 1, -1, -1)
    drop = set()
    for i in order:
        if items[i] == a[2] and (count == 0 or removed < abs(count)):
            drop.add(i)
            removed += 1
    if removed:
        _rewrite_list(ks, a[0], h, [v for i, v in enumerate(items) if i not in drop])
    return removed


@command("ltrim", 4, True)
def c_ltrim(ks, a):
    start, stop = parse_int(a[1]), parse_int(a[2])
    h, head, tail = _list(ks, a[0])
    if h is None:
        return OK
    r = _norm_range(start, stop, tail - head)
    if r is None:
        ks.delete(a[0])
        return OK
    for i in range(head, head + r[0]):
        ks.edel(a[0], b"l", lidx(i))
    for i in range(head + r[1] + 1, tail):
        ks.edel(a[0], b"l", lidx(i))
    ks.put_head(a[0], LIST, h[1], pack_list(head + r[0], head + r[1] + 1), True)
    return OK


@command("lclear", 2, True)
def c_lclear(ks, a):
    return clear(ks, a[0], LIST)


@command("lmclear", -2, True)
def c_lmclear(ks, a):
    return mclear(ks, a, LIST)


# ---------------------------------------------------------------------- sets
def _members(ks: Keyspace, key: bytes):
    if ks.typed(key, SET) is None:
        return None
    return [m for m, _v in ks.eiter(key, b"m")]


def set_add(ks: Keyspace, key: bytes, members) -> int:
    """Add members to a set (created if missing); returns how many were new.
    Raises ReplyError (WRONGTYPE)."""
    h = ks.typed(key, SET)
    n = 0 if h is None else unpack_count(h[2])
    added = 0
    for m in members:
        if ks.eget(key, b"m", m) is None:
            ks.eput(key, b"m", m, b"")
            added += 1
    if added or h is None:
        ks.put_head(key, SET, 0 if h is None else h[1], pack_count(n + added), h is not None)
    return added


@command("sadd", -3, True)
def c_sadd(ks, a):
    return set_add(ks, a[0], a[1:])


@command("srem", -3, True)
def c_srem(ks, a):
    h = ks.typed(a[0], SET)
    if h is None:
        return 0
    gone = sum(ks.edel(a[0], b"m", m) for m in set(a[1:]))
    if gone:
        left = unpack_count(h[2]) - gone
        if left <= 0:
            ks.delete(a[0])
        else:
            ks.put_head(a[0], SET, h[1], pack_count(left), True)
    return gone


@command("scard", 2)
def c_scard(ks, a):
    h = ks.typed(a[0], SET)
    return 0 if h is None else unpack_count(h[2])


@command("smembers", 2)
def c_smembers(ks, a):
    return SetReply(_members(ks, a[0]) or [])


@command("sismember", 3)
def c_sismember(ks, a):
    if ks.typed(a[0], SET) is None:
        return 0
    return int(ks.eget(a[0], b"m", a[1]) is not None)


@command("smismember", -3)
def c_smismember(ks, a):
    if ks.typed(a[0], SET) is None:
        return [0] * (len(a) - 1)
    return [int(ks.eget(a[0], b"m", m) is not None) for m in a[1:]]


def _setop(ks: Keyspace, keys, op: str) -> list:
    sets = [_members(ks, k) for k in keys]  # WRONGTYPE for any key, as Redis
    if op == "inter":
        if any(s is None for s in sets):
            return []
        out = set(sets[0])
        for s in sets[1:]:
            out &= set(s)
    elif op == "union":
        out = set()
        for s in sets:
            out |= set(s or ())
    else:
        out = set(sets[0] or ())
        for s in sets[1:]:
            out -= set(s or ())
    return sorted(out)


def _setop_store(ks: Keyspace, a, op: str) -> int:
    res = _setop(ks, a[1:], op)
    ks.delete(a[0])
    if res:
        set_add(ks, a[0], res)
    return len(res)


for _op in ("inter", "union", "diff"):
    command("s" + _op, -2)(lambda ks, a, _op=_op: SetReply(_setop(ks, a, _op)))
    command("s" + _op + "store", -3, True)(lambda ks, a, _op=_op: _setop_store(ks, a, _op))


@command("smove", 4, True)
def c_smove(ks, a):
    src, dst, m = a
    if ks.typed(src, SET) is None:
        ks.typed(dst, SET)
        return 0
    ks.typed(dst, SET)
    if ks.eget(src, b"m", m) is None:
        return 0
    c_srem(ks, [src, m])
    set_add(ks, dst, [m])
    return 1


@command("sscan", -3)
def c_sscan(ks, a):
    return elem_scan(ks, a, SET, b"m", False)


@command("sclear", 2, True)
def c_sclear(ks, a):
    return clear(ks, a[0], SET)


@command("smclear", -2, True)
def c_smclear(ks, a):
    return mclear(ks, a, SET)
