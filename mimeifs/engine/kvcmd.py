"""The db MiMei's commands: keys and strings, and the registry (hashes: ``kvhash``;
lists and sets: ``kvcoll``; sorted sets: ``kvzset``).

Names, arguments, replies and error words are Redis 7.0's (https://redis.io/commands),
the API seed 001 §6.5 lists, plus the ledisdb clears the seed names (HMCLEAR, LCLEAR,
LMCLEAR, SCLEAR, SMCLEAR, ZCLEAR, ZMCLEAR: ledisdb's docs). A command is
``fn(ks: kv.Keyspace, args: list[bytes]) -> reply`` (reply types in ``kv``) and raises
:class:`kv.ReplyError`. :data:`COMMANDS` maps a lower-case name to
``(fn, arity, is_write)``; arity as Redis's COMMAND reports it (negative: at least).
"""

from __future__ import annotations

import collections
import itertools
import threading

from .kv import (LIST, OK, STRING, TYPES, Keyspace, ReplyError, Status, glob_re, parse_int,
                 unpack_count, unpack_list)

COMMANDS: dict[str, tuple] = {}
MAX_STRING = 64 << 20  # the door's proto-max-bulk-len: no command builds a bigger value


def command(name: str, arity: int, write: bool = False):
    def deco(fn):
        COMMANDS[name] = (fn, arity, write)
        return fn
    return deco


def syntax() -> ReplyError:
    return ReplyError("ERR syntax error")


def arity_error(name: str) -> ReplyError:
    return ReplyError(f"ERR wrong number of arguments for '{name}' command")


# ---------------------------------------------------------------------- scan cursors
class Cursors:
    """Server-side SCAN positions: cursor number -> (ns, key, tag, resume sub), an LRU of
    ``cap`` entries. An unknown cursor starts over (Redis: a garbage cursor is allowed)."""

    def __init__(self, cap: int = 10000):
        self.cap, self._d, self._lock = cap, collections.OrderedDict(), threading.Lock()
        self._next = itertools.count(1)

    def get(self, n: int, ns: bytes, what: bytes):
        with self._lock:
            v = self._d.pop(n, None)
        if v is None or v[0] != ns or v[1] != what:
            return b""
        return v[2]

    def new(self, ns: bytes, what: bytes, resume: bytes) -> int:
        n = next(self._next)
        with self._lock:
            self._d[n] = (ns, what, resume)
            while len(self._d) > self.cap:
                self._d.popitem(last=False)
        return n


CURSORS = Cursors()


def scan_args(args: list[bytes], types: bool = False):
    """(cursor, match regex | None, count, type name | None) from SCAN's arguments."""
    cur = parse_int(args[0], "ERR invalid cursor") if args[0] != b"0" else 0
    match, count, tname, i = None, 10, None, 1
    while i < len(args):
        opt = args[i].lower()
        if i + 1 >= len(args):
            raise syntax()
        if opt == b"match":
            match = glob_re(args[i + 1])
        elif opt == b"count":
            count = parse_int(args[i + 1])
            if count < 1:
                raise syntax()
        elif opt == b"type" and types:
            tname = args[i + 1].lower()
        else:
            raise syntax()
        i += 2
    return cur, match, count, tname


# ---------------------------------------------------------------------- keys
@command("del", -2, True)
def c_del(ks: Keyspace, a):
    n = 0
    for k in a:
        if ks.head(k) is not None:
            n += ks.delete(k)
    return n


COMMANDS["unlink"] = (c_del, -2, True)


@command("exists", -2)
def c_exists(ks, a):
    return sum(ks.head(k) is not None for k in a)


@command("type", 2)
def c_type(ks, a):
    h = ks.head(a[0])
    return Status("none" if h is None else TYPES[h[0]].decode())


def _expire(ks: Keyspace, a, unit: int, absolute: bool, name: str):
    when = parse_int(a[1])
    flags = set()
    for x in a[2:]:
        if x.lower() not in (b"nx", b"xx", b"gt", b"lt"):
            raise ReplyError(f"ERR Unsupported option {x.decode(errors='replace')}")
        flags.add(x.lower())
    if b"nx" in flags and len(flags) > 1:
        raise ReplyError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"gt" in flags and b"lt" in flags:
        raise ReplyError("ERR GT and LT options at the same time are not compatible")
    try:
        ms = when * unit + (0 if absolute else ks.now)
        if not -(1 << 63) <= when * unit < (1 << 63) or not -(1 << 63) <= ms < (1 << 63):
            raise OverflowError
    except OverflowError:
        raise ReplyError(f"ERR invalid expire time in '{name}' command") from None
    h = ks.head(a[0])
    if h is None:
        return 0
    cur = h[1]
    if b"nx" in flags and cur:
        return 0
    if b"xx" in flags and not cur:
        return 0
    if b"gt" in flags and (not cur or ms <= cur):
        return 0
    if b"lt" in flags and cur and ms >= cur:
        return 0
    if ms <= ks.now:
        ks.delete(a[0])
        return 1
    ks.set_expire(a[0], ms)
    return 1


@command("expire", -3, True)
def c_expire(ks, a):
    return _expire(ks, a, 1000, False, "expire")


@command("pexpire", -3, True)
def c_pexpire(ks, a):
    return _expire(ks, a, 1, False, "pexpire")


@command("expireat", -3, True)
def c_expireat(ks, a):
    return _expire(ks, a, 1000, True, "expireat")


@command("pexpireat", -3, True)
def c_pexpireat(ks, a):
    return _expire(ks, a, 1, True, "pexpireat")


def _ttl(ks, key, div):
    h = ks.head(key)
    if h is None:
        return -2
    if not h[1]:
        return -1
    left = max(0, h[1] - ks.now)
    return (left + 500) // 1000 if div == 1000 else left


@command("ttl", 2)
def c_ttl(ks, a):
    return _ttl(ks, a[0], 1000)


@command("pttl", 2)
def c_pttl(ks, a):
    return _ttl(ks, a[0], 1)


@command("persist", 2, True)
def c_persist(ks, a):
    h = ks.head(a[0])
    if h is None or not h[1]:
        return 0
    ks.set_expire(a[0], 0)
    return 1


@command("dbsize", 1)
def c_dbsize(ks, a):
    return ks.count()


@command("flushdb", -1, True)
def c_flushdb(ks, a):
    if len(a) > 1 or (a and a[0].lower() not in (b"async", b"sync")):
        raise syntax()
    ks.flush()
    return OK


COMMANDS["flushall"] = (c_flushdb, -1, True)


@command("keys", 2)
def c_keys(ks, a):
    rx = glob_re(a[0])
    return [k for k, _t, _e in ks.iter_keys() if rx.match(k)]


@command("scan", -2)
def c_scan(ks, a):
    cur, rx, count, tname = scan_args(a, types=True)
    start = CURSORS.get(cur, ks.ns, b"") if cur else b""
    out, seen, nxt = [], 0, 0
    for k, t, _e in ks.iter_keys(start):
        if seen == count:
            nxt = CURSORS.new(ks.ns, b"", k)
            break
        seen += 1
        if (rx is None or rx.match(k)) and (tname is None or TYPES[t] == tname):
            out.append(k)
    return [str(nxt).encode(), out]


@command("randomkey", 1)
def c_randomkey(ks, a):
    for k, _t, _e in ks.iter_keys():
        return k
    return None


@command("rename", 3, True)
def c_rename(ks, a):
    src, dst = a
    h = ks.head(src)
    if h is None:
        raise ReplyError("ERR no such key")
    if src == dst:
        return OK
    _copy(ks, src, dst, h)
    ks.delete(src)
    return OK


def _copy(ks: Keyspace, src: bytes, dst: bytes, h) -> None:
    t, exp, payload = h
    existed = ks.txn.get(ks.ns + dst, db=ks.d_kv) is not None
    if existed:
        ks.delete(dst)
    els = [] if t == STRING else list(ks.eiter(src, b""))
    ks.put_head(dst, t, exp, bytes(payload), False)
    p = ks.eprefix(dst)
    for sub, v in els:
        ks.txn.put(p + sub, v, db=ks.d_el)


# ---------------------------------------------------------------------- strings
def _get_str(ks: Keyspace, key: bytes):
    h = ks.typed(key, STRING)
    return None if h is None else bytes(h[2])


def _set_str(ks: Keyspace, key: bytes, value: bytes, exp: int = 0, keep_ttl: bool = False) -> None:
    raw = ks.txn.get(ks.ns + key, db=ks.d_kv)
    existed = raw is not None
    if existed:
        if raw[0] != STRING:
            ks.delete(key)
            existed = False
        elif keep_ttl:
            exp = int.from_bytes(raw[1:9], "big")
    ks.put_head(key, STRING, exp, value, existed)


@command("get", 2)
def c_get(ks, a):
    return _get_str(ks, a[0])


@command("set", -3, True)
def c_set(ks, a):
    key, val = a[0], a[1]
    nx = xx = get = keep = False
    exp = None
    i = 2
    while i < len(a):
        o = a[i].lower()
        if o == b"nx" and not xx:
            nx = True
        elif o == b"xx" and not nx:
            xx = True
        elif o == b"get":
            get = True
        elif o == b"keepttl" and exp is None:
            keep = True
        elif o in (b"ex", b"px", b"exat", b"pxat") and exp is None and not keep and i + 1 < len(a):
            v = parse_int(a[i + 1])
            if v <= 0:
                raise ReplyError("ERR invalid expire time in 'set' command")
            unit = 1000 if o in (b"ex", b"exat") else 1
            base = ks.now if o in (b"ex", b"px") else 0
            if v * unit + base >= 1 << 63:
                raise ReplyError("ERR invalid expire time in 'set' command")
            exp = v * unit + base
            i += 1
        else:
            raise syntax()
        i += 1
    old = None
    h = ks.head(key)
    if get:
        if h is not None and h[0] != STRING:
            raise ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value")
        old = None if h is None else bytes(h[2])
    if (nx and h is not None) or (xx and h is None):
        return old if get else None
    _set_str(ks, key, val, exp or 0, keep)
    return old if get else OK


@command("setnx", 3, True)
def c_setnx(ks, a):
    if ks.head(a[0]) is not None:
        return 0
    _set_str(ks, a[0], a[1])
    return 1


@command("setex", 4, True)
def c_setex(ks, a):
    v = parse_int(a[1])
    if v <= 0:
        raise ReplyError("ERR invalid expire time in 'setex' command")
    _set_str(ks, a[0], a[2], ks.now + v * 1000)
    return OK


@command("getset", 3, True)
def c_getset(ks, a):
    old = _get_str(ks, a[0])
    _set_str(ks, a[0], a[1])
    return old


@command("getdel", 2, True)
def c_getdel(ks, a):
    old = _get_str(ks, a[0])
    if old is not None:
        ks.delete(a[0])
    return old


@command("mget", -2)
def c_mget(ks, a):
    out = []
    for k in a:
        h = ks.head(k)
        out.append(bytes(h[2]) if h is not None and h[0] == STRING else None)
    return out


@command("mset", -3, True)
def c_mset(ks, a):
    if len(a) % 2:
        raise arity_error("mset")
    for i in range(0, len(a), 2):
        _set_str(ks, a[i], a[i + 1])
    return OK


@command("msetnx", -3, True)
def c_msetnx(ks, a):
    if len(a) % 2:
        raise arity_error("msetnx")
    if any(ks.head(a[i]) is not None for i in range(0, len(a), 2)):
        return 0
    for i in range(0, len(a), 2):
        _set_str(ks, a[i], a[i + 1])
    return 1


def _incr(ks: Keyspace, key: bytes, by: int) -> int:
    h = ks.typed(key, STRING)
    cur = 0 if h is None else parse_int(bytes(h[2]))
    new = cur + by
    if not -(1 << 63) <= new < (1 << 63):
        raise ReplyError("ERR increment or decrement would overflow")
    ks.put_head(key, STRING, 0 if h is None else h[1], str(new).encode(), h is not None)
    return new


@command("incr", 2, True)
def c_incr(ks, a):
    return _incr(ks, a[0], 1)


@command("decr", 2, True)
def c_decr(ks, a):
    return _incr(ks, a[0], -1)


@command("incrby", 3, True)
def c_incrby(ks, a):
    return _incr(ks, a[0], parse_int(a[1]))


@command("decrby", 3, True)
def c_decrby(ks, a):
    by = parse_int(a[1])
    if by == -(1 << 63):
        raise ReplyError("ERR decrement would overflow")
    return _incr(ks, a[0], -by)


@command("strlen", 2)
def c_strlen(ks, a):
    v = _get_str(ks, a[0])
    return 0 if v is None else len(v)


@command("append", 3, True)
def c_append(ks, a):
    h = ks.typed(a[0], STRING)
    v = (b"" if h is None else bytes(h[2])) + a[1]
    if len(v) > MAX_STRING:
        raise ReplyError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    ks.put_head(a[0], STRING, 0 if h is None else h[1], v, h is not None)
    return len(v)


@command("getrange", 4)
def c_getrange(ks, a):
    start, end = parse_int(a[1]), parse_int(a[2])
    v = _get_str(ks, a[0]) or b""
    n = len(v)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start += n
    if end < 0:
        end += n
    start, end = max(start, 0), max(end, 0)
    if end >= n:
        end = n - 1
    if start > end or n == 0:
        return b""
    return v[start:end + 1]


COMMANDS["substr"] = (c_getrange, 4, False)


@command("setrange", 4, True)
def c_setrange(ks, a):
    off = parse_int(a[1])
    if off < 0:
        raise ReplyError("ERR offset is out of range")
    h = ks.typed(a[0], STRING)
    v = b"" if h is None else bytes(h[2])
    if not a[2]:
        return len(v)
    if off + len(a[2]) > MAX_STRING:
        raise ReplyError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    if len(v) < off:
        v += bytes(off - len(v))
    v = v[:off] + a[2] + v[off + len(a[2]):]
    ks.put_head(a[0], STRING, 0 if h is None else h[1], v, h is not None)
    return len(v)


def elem_scan(ks: Keyspace, a, t: int, tag: bytes, pairs: bool, value_fn=None):
    """HSCAN / SSCAN / ZSCAN: [cursor, flat list]."""
    cur, rx, count, _ = scan_args(a[1:])
    if ks.typed(a[0], t) is None:
        return [b"0", []]
    start = CURSORS.get(cur, ks.ns, b"\x00" + a[0]) if cur else b""
    out, seen, nxt = [], 0, 0
    for sub, v in ks.eiter(a[0], tag, start):
        if seen == count:
            nxt = CURSORS.new(ks.ns, b"\x00" + a[0], sub)
            break
        seen += 1
        if rx is None or rx.match(sub):
            out.append(sub)
            if pairs:
                out.append(value_fn(v) if value_fn else v)
    return [str(nxt).encode(), out]


def mclear(ks: Keyspace, keys, t: int) -> int:
    """ledisdb's xMCLEAR: delete the keys of type ``t``; returns the number of keys given."""
    for k in keys:
        h = ks.head(k)
        if h is not None and h[0] == t:
            ks.delete(k)
    return len(keys)


def clear(ks: Keyspace, key: bytes, t: int) -> int:
    """ledisdb's xCLEAR: delete one key of type ``t``; returns how many elements it had."""
    h = ks.typed(key, t)
    if h is None:
        return 0
    if t == LIST:
        head, tail = unpack_list(h[2])
        n = tail - head
    else:
        n = unpack_count(h[2])
    ks.delete(key)
    return n


# hashes, lists, sets and sorted sets register themselves into COMMANDS
from . import kvcoll, kvhash, kvzset  # noqa: E402,F401
