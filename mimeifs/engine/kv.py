"""cur of a ``db`` MiMei: a Redis-like keyspace kept in the store's LMDB.

Seed 001 §6.5 (the database: strings, hashes, lists, sets, sorted sets, optimistic
transactions), DESIGN.md "MiMei types". One keyspace per namespace ``ns`` (20 bytes:
the MiMei ID for cur, or a version's cache namespace, see ``kvsnap``). Every write of a
command batch happens inside one LMDB write transaction that commits before the replies
are sent; the environment commits without fsync, which survives a killed process.

Sub-databases (all keys start with ``ns``; integers big-endian):

- ``kv``: ``ns + key`` -> header ``type u8 | expire_at_ms u64 (0: none)`` + payload:
  string: its bytes; hash/set/zset: ``count u64``; list: ``head u64 | tail u64``
  (elements at biased indices ``head <= i < tail``).
- ``kvel``: elements, ``ns + len(key) u32 + key + tag + sub`` -> value. Tags: ``m`` hash
  field / set member / zset member (value: the field's value, b"", or the score as a
  big-endian double); ``s`` zset score index (``sub`` = sortable score 8 + member);
  ``l`` list element (``sub`` = biased index u64).
- ``kvmeta``: ``ns`` -> number of keys u64.
- ``kvdirty``: ``ns + key`` -> b"" for every key written since the last backup
  (``kvsnap`` re-serializes only the buckets holding them).
"""

from __future__ import annotations

import re
import struct
import time

TYPES = {0: b"string", 1: b"hash", 2: b"list", 3: b"set", 4: b"zset"}
STRING, HASH, LIST, SET, ZSET = 0, 1, 2, 3, 4
_HDR = struct.Struct(">BQ")
_Q = struct.Struct(">Q")
_QQ = struct.Struct(">QQ")
_D = struct.Struct(">d")
_L = struct.Struct(">I")
BIAS = 1 << 63
DBS = ("kv", "kvel", "kvmeta", "kvdirty", "kvb")

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class ReplyError(Exception):
    """A command failed; ``str(e)`` is the whole Redis error line (``ERR ...``,
    ``WRONGTYPE ...``). Also used as a value inside an EXEC reply."""


class Status(str):
    """A simple-string reply (``+OK``)."""


class Double(float):
    """A floating-point reply: a bulk string in RESP2, ``,`` in RESP3."""


class Map(list):
    """A list of (key, value) pairs: a flat array in RESP2, ``%`` in RESP3."""


class SetReply(list):
    """An unordered collection: an array in RESP2, ``~`` in RESP3."""


class Scored(list):
    """(member, Double score) pairs: a flat array in RESP2, an array of pairs in RESP3."""


class NilArray:
    """The null array (``*-1``), e.g. an EXEC whose watched keys changed."""


OK = Status("OK")
NIL_ARRAY = NilArray()


def fmt_double(f: float) -> bytes:
    """A score as Redis 7.0 prints it (``%.17g``; ``inf``, ``-inf``)."""
    return (b"%.17g" % f)


def sortable(score: float) -> bytes:
    """8 bytes whose byte order is the numeric order of ``score`` (-0.0 == 0.0)."""
    if score == 0:
        score = 0.0
    b = _D.pack(score)
    if b[0] & 0x80:
        return bytes(x ^ 0xFF for x in b)
    return bytes([b[0] ^ 0x80]) + b[1:]


def unsortable(b: bytes) -> float:
    if b[0] & 0x80:
        return _D.unpack(bytes([b[0] ^ 0x80]) + b[1:8])[0]
    return _D.unpack(bytes(x ^ 0xFF for x in b[:8]))[0]


_INT_RE = re.compile(rb"-?(0|[1-9][0-9]*)\Z")


def parse_int(b: bytes, err: str = "ERR value is not an integer or out of range") -> int:
    """Redis's strict integer (string2ll): no sign '+', no spaces, no leading zeros,
    within int64. Raises :class:`ReplyError`."""
    if len(b) > 20 or not _INT_RE.match(b) or b == b"-0":
        raise ReplyError(err)
    v = int(b)
    if not -(1 << 63) <= v < (1 << 63):
        raise ReplyError(err)
    return v


def parse_float(b: bytes, err: str = "ERR value is not a valid float") -> float:
    """A float as Redis's strtod accepts it (``inf``, ``-inf``, ``+inf``); NaN refused."""
    s = b
    if not s or s != s.strip() or len(s) > 300:
        raise ReplyError(err)
    low = s.lower()
    if low in (b"inf", b"+inf", b"infinity", b"+infinity"):
        return float("inf")
    if low in (b"-inf", b"-infinity"):
        return float("-inf")
    try:
        v = float(s)
    except ValueError:
        raise ReplyError(err) from None
    if v != v or b"_" in s or low.startswith((b"nan", b"-nan", b"+nan")):
        raise ReplyError(err)
    return v


def glob_re(pattern: bytes) -> re.Pattern:
    """Redis's glob (stringmatchlen): ``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]``, ``\\x``."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i:i + 1]))
        elif c == b"[":
            j = i + 1
            neg = j < n and pattern[j:j + 1] == b"^"
            if neg:
                j += 1
            parts = []
            while j < n and pattern[j:j + 1] != b"]":
                if pattern[j:j + 1] == b"\\" and j + 1 < n:
                    parts.append(re.escape(pattern[j + 1:j + 2]))
                    j += 2
                elif j + 2 < n and pattern[j + 1:j + 2] == b"-" and pattern[j + 2:j + 3] != b"]":
                    a, z = sorted((pattern[j], pattern[j + 2]))
                    parts.append(re.escape(bytes([a])) + b"-" + re.escape(bytes([z])))
                    j += 3
                else:
                    parts.append(re.escape(pattern[j:j + 1]))
                    j += 1
            body = b"".join(parts)
            out.append((b"[^" if neg else b"[") + body + b"]" if body else (b"." if neg else b"(?!)"))
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out) + b"\\Z", re.S)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Keyspace:
    """One namespace's keyspace inside one LMDB transaction ``txn``.

    ``touched`` collects every key written (WATCH invalidation, ``kvdirty``);
    ``track_dirty`` is False for a version's read-only cache. Methods raise
    :class:`ReplyError` (WRONGTYPE) on a key of another type.
    """

    def __init__(self, store, ns: bytes, txn, write: bool, track_dirty: bool = True):
        self.txn, self.ns, self.write = txn, ns, write
        dbs = store.__dict__.get("_kv_dbs")
        if dbs is None:  # looked up once per store
            dbs = store._kv_dbs = tuple(store.db(n) for n in ("kv", "kvel", "kvmeta", "kvdirty"))
        self.d_kv, self.d_el, self.d_meta, self.d_dirty = dbs
        self.track_dirty = track_dirty
        self.now = now_ms()
        self.touched: set[bytes] = set()
        self.flushed = False
        self._count_delta = 0

    # -- headers ----------------------------------------------------------------------
    def head(self, key: bytes):
        """(type, expire_at_ms, payload) of a live key, or None (an expired key is
        deleted when this is a write transaction)."""
        raw = self.txn.get(self.ns + key, db=self.d_kv)
        if raw is None:
            return None
        t, exp = _HDR.unpack_from(raw)
        if exp and exp <= self.now:
            if self.write:
                self.delete(key)
            return None
        return t, exp, raw[9:]

    def typed(self, key: bytes, want: int):
        """The header of ``key`` if it is of type ``want``; None if missing;
        ReplyError(WRONGTYPE) otherwise."""
        h = self.head(key)
        if h is not None and h[0] != want:
            raise ReplyError(WRONGTYPE)
        return h

    def put_head(self, key: bytes, t: int, exp: int, payload: bytes, existed: bool) -> None:
        self.txn.put(self.ns + key, _HDR.pack(t, exp) + payload, db=self.d_kv)
        if not existed:
            self._count_delta += 1
        self.touch(key)

    def touch(self, key: bytes) -> None:
        self.touched.add(key)
        if self.track_dirty:
            self.txn.put(self.ns + key, b"", db=self.d_dirty)

    def delete(self, key: bytes) -> bool:
        """Delete a key and its elements; True if it existed (even if expired)."""
        raw = self.txn.get(self.ns + key, db=self.d_kv)
        if raw is None:
            return False
        self.txn.delete(self.ns + key, db=self.d_kv)
        if raw[0] != STRING:
            self._del_prefix(self.eprefix(key))
        self._count_delta -= 1
        self.touch(key)
        return True

    def _del_prefix(self, prefix: bytes) -> None:
        n = len(prefix)
        with self.txn.cursor(db=self.d_el) as c:
            if not c.set_range(prefix):
                return
            while c.key()[:n] == prefix:
                if not c.delete():
                    break

    def set_expire(self, key: bytes, exp: int) -> None:
        raw = self.txn.get(self.ns + key, db=self.d_kv)
        self.txn.put(self.ns + key, _HDR.pack(raw[0], exp) + raw[9:], db=self.d_kv)
        self.touch(key)

    # -- elements ---------------------------------------------------------------------
    def eprefix(self, key: bytes) -> bytes:
        return self.ns + _L.pack(len(key)) + key

    def eget(self, key: bytes, tag: bytes, sub: bytes):
        return self.txn.get(self.eprefix(key) + tag + sub, db=self.d_el)

    def eput(self, key: bytes, tag: bytes, sub: bytes, value: bytes) -> None:
        self.txn.put(self.eprefix(key) + tag + sub, value, db=self.d_el)

    def edel(self, key: bytes, tag: bytes, sub: bytes) -> bool:
        return self.txn.delete(self.eprefix(key) + tag + sub, db=self.d_el)

    def eiter(self, key: bytes, tag: bytes, start: bytes = b"", reverse: bool = False):
        """(sub, value) of a key's elements with ``tag`` in order from ``start``
        (in reverse: from the last one)."""
        p = self.eprefix(key) + tag
        n = len(p)
        with self.txn.cursor(db=self.d_el) as c:
            if reverse:
                if start:
                    ok = c.set_range(p + start)
                    if ok and c.key()[:n] == p and bytes(c.key()[n:]) == start:
                        pass
                    else:
                        ok = c.prev() if ok else c.last()
                else:  # from the first key past this tag's range, one step back
                    ok = c.set_range(p[:-1] + bytes([p[-1] + 1]))
                    ok = c.prev() if ok else c.last()
                while ok and c.key()[:n] == p:
                    yield bytes(c.key()[n:]), bytes(c.value())
                    ok = c.prev()
            elif c.set_range(p + start):
                for k, v in c.iternext():  # C-level steps; keys and values are bytes here
                    if k[:n] != p:
                        return
                    yield k[n:], v

    # -- counts, keys -----------------------------------------------------------------
    def count(self) -> int:
        raw = self.txn.get(self.ns, db=self.d_meta)
        return (_Q.unpack(raw)[0] if raw else 0) + self._count_delta

    def finish(self) -> None:
        """Write the key count (call once before commit)."""
        if self._count_delta:
            self.txn.put(self.ns, _Q.pack(self.count()), db=self.d_meta)
            self._count_delta = 0

    def iter_keys(self, start: bytes = b""):
        """(key, type, expire_at_ms) of live keys in key order from ``start``."""
        ns = self.ns
        n = len(ns)
        now = self.now
        with self.txn.cursor(db=self.d_kv) as c:
            ok = c.set_range(ns + start)
            while ok:
                k = c.key()
                if k[:n] != ns:
                    return
                v = c.value()
                t, exp = _HDR.unpack_from(v)
                if not exp or exp > now:
                    yield bytes(k[n:]), t, exp
                ok = c.next()

    def flush(self) -> None:
        """Delete every key (FLUSHDB)."""
        for key in [k for k, _t, _e in self.iter_keys()]:
            self.delete(key)
        for d in (self.d_kv, self.d_el):  # expired leftovers
            n = len(self.ns)
            with self.txn.cursor(db=d) as c:
                if c.set_range(self.ns):
                    while c.key()[:n] == self.ns:
                        if not c.delete():
                            break
        self.txn.put(self.ns, _Q.pack(0), db=self.d_meta)
        self._count_delta = 0
        self.flushed = True


def pack_count(n: int) -> bytes:
    return _Q.pack(n)


def unpack_count(b) -> int:
    return _Q.unpack_from(b)[0]


def pack_list(head: int, tail: int) -> bytes:
    return _QQ.pack(head, tail)


def unpack_list(b) -> tuple[int, int]:
    return _QQ.unpack_from(b)


def lidx(i: int) -> bytes:
    return _Q.pack(i)


def pack_score(f: float) -> bytes:
    return _D.pack(f)


def unpack_score(b) -> float:
    return _D.unpack_from(b)[0]
