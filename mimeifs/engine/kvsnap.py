"""Versions of a db MiMei: cur frozen into an ordinary version tree, and back.

Issue 14, seed 001 §6.5 ("BoltDB is used for backup version and read-only"): here a
version is content-addressed and rides the fs machinery, so the mount, check, gc and the
network handle it unchanged. Its root is a tree (record kind ``"db"``) of five JSON
Lines files, one per data type, readable by ordinary tools::

    strings.jsonl  {"type":"string","key":K,"value":V[,"expire_at":ms]}
    hashes.jsonl   {"type":"hash","key":K,"value":[[field,value],...]}
    lists.jsonl    {"type":"list","key":K,"value":[v,...]}
    sets.jsonl     {"type":"set","key":K,"value":[member,...]}   (sorted)
    zsets.jsonl    {"type":"zset","key":K,"value":[[member,score],...]}   (score order)

A byte string that is UTF-8 is a JSON string, any other is ``{"base64": "..."}``;
scores ``inf``/``-inf`` are the strings ``"inf"``/``"-inf"``. Lines are in key order.

Sharing between versions (the way Dolt's prolly trees cut a sorted stream): the sorted
keys are cut into *buckets* at content-defined boundaries (a key whose crc32 has its low
6 bits zero ends a bucket; about 64 keys a bucket), so the bucket layout depends only on
the key set. Each bucket's lines of each type are stored as chunks of their own (cut
further by FastCDC when large), and a file's manifest lists the buckets' chunks in
order. ``kvb`` remembers each bucket's chunks (``ns + first key`` -> per type: count u16
+ count x (blake3 32 | length u32)); a backup re-serializes only the buckets holding a
key written since the last one (``kvdirty``), so its cost and its new bytes grow with
the buckets changed, not with the database. The file's content hash (its manifest key)
is a plain blake3 over the whole file, read back through the chunk cache.

Bucket size trades the two costs of a backup: a changed key re-serializes its bucket,
and every version rewrites the five manifests (36 bytes a bucket). At 1,000,000 keys
(``tools/bench_resp.py``) 64-key buckets cost 0.5 MB of manifest a version; changing 1%
of the keys in one key range re-serializes ~1% of the data, changing 1% at random
touches about half the buckets (1 - 0.99**64).
"""

from __future__ import annotations

import base64
import json
import math
import stat
import struct
import zlib

import blake3

from . import blocks, objects, packs
from .kv import HASH, LIST, SET, STRING, ZSET, Keyspace, unsortable
from .kvhash import hash_set
from .kvcoll import set_add
from .kvzset import zset_put

FILES = ((STRING, b"strings.jsonl", "string"), (HASH, b"hashes.jsonl", "hash"),
         (LIST, b"lists.jsonl", "list"), (SET, b"sets.jsonl", "set"),
         (ZSET, b"zsets.jsonl", "zset"))
TYPE_NAMES = {name: t for t, _f, name in FILES}
_SLOT = {t: i for i, (t, _f, _n) in enumerate(FILES)}
_REC = struct.Struct(">32sI")
_H = struct.Struct(">H")
BOUNDARY_MASK = 0x3F
BIG_PIECE = 256 << 10


def is_boundary(key: bytes) -> bool:
    """True if ``key`` ends a bucket (content-defined: depends on the key alone)."""
    return zlib.crc32(key) & BOUNDARY_MASK == 0


# ---------------------------------------------------------------------- JSON lines
def _j(b: bytes):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


def _b(v) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    if isinstance(v, dict) and isinstance(v.get("base64"), str):
        return base64.b64decode(v["base64"], validate=True)
    raise ValueError(f"not a string or base64 object: {v!r}")


def _score_out(s: float):
    return s if math.isfinite(s) else ("inf" if s > 0 else "-inf")


def _score_in(v) -> float:
    if isinstance(v, str):
        if v in ("inf", "-inf"):
            return float(v)
        raise ValueError(f"bad score {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"bad score {v!r}")
    return float(v)


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def key_line(ks: Keyspace, key: bytes, t: int, exp: int, payload) -> bytes:
    """The JSON line of one key (with its newline)."""
    if t == STRING and not exp:  # the common case, byte for byte what the general path makes
        try:
            k, v = key.decode("utf-8"), bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return ('{"type":"string","key":%s,"value":%s}\n' % (_dumps(k), _dumps(v))).encode(
                "utf-8", "surrogatepass")
    if t == STRING:
        val = _j(bytes(payload))
    elif t == HASH:
        val = [[_j(f), _j(v)] for f, v in ks.eiter(key, b"m")]
    elif t == LIST:
        val = [_j(v) for _s, v in ks.eiter(key, b"l")]
    elif t == SET:
        val = [_j(m) for m, _v in ks.eiter(key, b"m")]
    else:
        val = [[_j(s[8:]), _score_out(unsortable(s[:8]))] for s, _v in ks.eiter(key, b"s")]
    rec = {"type": FILES[_SLOT[t]][2], "key": _j(key), "value": val}
    if exp:
        rec["expire_at"] = exp
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass") + b"\n"


def load_record(ks: Keyspace, rec: dict) -> None:
    """Write one JSON line's key into ``ks`` (replacing a key of that name).
    Raises ValueError for a malformed record."""
    if not isinstance(rec, dict) or rec.get("type") not in TYPE_NAMES or "key" not in rec:
        raise ValueError("a record needs type (string|hash|list|set|zset), key and value")
    t = TYPE_NAMES[rec["type"]]
    key, val = _b(rec["key"]), rec.get("value")
    exp = rec.get("expire_at") or 0
    if not isinstance(exp, int) or isinstance(exp, bool) or exp < 0:
        raise ValueError(f"bad expire_at {exp!r}")
    if exp and exp <= ks.now:
        return
    ks.delete(key)
    if t == STRING:
        ks.put_head(key, STRING, exp, _b(val), False)
        return
    if not isinstance(val, list) or not val:
        return
    if t == HASH:
        hash_set(ks, key, [(_b(f), _b(v)) for f, v in val])
    elif t == LIST:
        from .kvcoll import _push
        _push(ks, [key] + [_b(v) for v in val], False)
    elif t == SET:
        set_add(ks, key, [_b(m) for m in val])
    else:
        pairs = [(_b(m), _score_in(s)) for m, s in val]
        seen = {}
        for m, s in pairs:
            seen[m] = s
        for m, s in seen.items():
            zset_put(ks, key, m, s, None)
        from .kv import pack_count
        ks.put_head(key, ZSET, 0, pack_count(len(seen)), False)
    if exp:
        ks.set_expire(key, exp)


# ---------------------------------------------------------------------- buckets
def _enc_bucket(slots: list[list[tuple[bytes, int]]]) -> bytes:
    out = []
    for recs in slots:
        out.append(_H.pack(len(recs)))
        out.extend(_REC.pack(h, n) for h, n in recs)
    return b"".join(out)


def _dec_bucket(v) -> list[list[tuple[bytes, int]]]:
    v = bytes(v)
    slots, p = [], 0
    for _ in FILES:
        (c,) = _H.unpack_from(v, p)
        p += 2
        slots.append([_REC.unpack_from(v, p + 36 * i) for i in range(c)])
        p += 36 * c
    return slots


def _serialize_region(ks: Keyspace, start: bytes, first: bool, stop_at, sink, stats) -> list:
    """Cut cur's keys from ``start`` into buckets until ``stop_at(next_key)`` says the
    layout is back in step (or the keys end). Returns [(record key, slots)] and the key
    the region stopped at (None at the end)."""
    out = []
    lines: list[list[bytes]] = [[] for _ in FILES]
    rec_key = b"" if first else None
    nxt = None
    count = 0

    def close_bucket():
        slots = []
        for i, ls in enumerate(lines):
            if not ls:
                slots.append([])
                continue
            piece = b"".join(ls)
            parts = blocks.cut(piece) if len(piece) > BIG_PIECE else [piece]
            hs, ln = sink.add(parts)
            stats["new_piece_bytes"] += len(piece)
            slots.append(list(zip(hs, ln)))
        out.append((rec_key, slots))

    with ks.txn.cursor(db=ks.d_kv) as c:
        ns, n = ks.ns, len(ks.ns)
        ok = c.set_range(ns + start)
        while ok:
            k = c.key()
            if k[:n] != ns:
                break
            key = bytes(k[n:])
            if rec_key is None:
                rec_key = key
            v = c.value()
            t, exp = struct.unpack_from(">BQ", v)
            if not exp or exp > ks.now:
                lines[_SLOT[t]].append(key_line(ks, key, t, exp, v[9:]))
                count += 1
            ok = c.next()
            if is_boundary(key):
                nk = bytes(c.key()[n:]) if ok and c.key()[:n] == ns else None
                close_bucket()
                stats["buckets"] += 1
                lines = [[] for _ in FILES]
                if nk is None or stop_at(nk):
                    nxt = nk
                    break
                rec_key = None
        else:
            nxt = None
        if nxt is None and any(lines):
            close_bucket()
            stats["buckets"] += 1
    stats["keys_serialized"] += count
    return out, nxt


def freeze(txn, store, ns: bytes, cache: blocks.ChunkCache | None = None) -> tuple[bytes, int, dict]:
    """Freeze cur of db namespace ``ns`` into a version tree inside write ``txn``:
    (root tree hash, total bytes of the files, stats). Clears ``kvdirty``."""
    d_b, d_dirty = store.db("kvb"), store.db("kvdirty")
    ks = Keyspace(store, ns, txn, True, track_dirty=False)
    n = len(ns)
    dirty = [bytes(k[n:]) for k in _prefix_keys(txn, d_dirty, ns)]
    stats = {"dirty_keys": len(dirty), "buckets": 0, "keys_serialized": 0,
             "new_piece_bytes": 0, "new_bytes": 0, "meta_bytes": 0}
    sink = packs.ChunkSink(txn, store.db("blocks"))
    first_backup = not _has_prefix(txn, d_b, ns)
    cache = cache if cache is not None else blocks.ChunkCache(64 << 20)
    if first_backup or dirty:
        i = 0
        while True:
            if first_backup:
                start, first = b"", True
                first_backup = False
            else:
                if i >= len(dirty):
                    break
                start = _bucket_start(txn, d_b, ns, dirty[i])
                first = start == b""
            pos = [i]

            def stop_at(nk: bytes, pos=pos) -> bool:
                while pos[0] < len(dirty) and dirty[pos[0]] < nk:
                    pos[0] += 1
                return (pos[0] >= len(dirty) or dirty[pos[0]] >= nk) and \
                    txn.get(ns + nk, db=d_b) is not None
            made, nxt = _serialize_region(ks, start, first, stop_at, sink, stats)
            # drop the old buckets of [start, nxt), then store the new ones
            _delete_range(txn, d_b, ns, start, nxt)
            for rk, slots in made:
                txn.put(ns + rk, _enc_bucket(slots), db=d_b)
            if nxt is None:
                break
            i = pos[0]
            while i < len(dirty) and dirty[i] < nxt:
                i += 1
    for k in dirty:
        txn.delete(ns + k, db=d_dirty)
    stats["new_bytes"] = sink.close()
    # the five manifests, then the tree
    per_file: list[list[tuple[bytes, int]]] = [[] for _ in FILES]
    for _k, v in _prefix_items(txn, d_b, ns):
        for i, recs in enumerate(_dec_bucket(v)):
            per_file[i].extend(recs)
    entries, total = [], 0
    d_blocks, d_man = store.db("blocks"), store.db("manifests")
    for (_t, fname, _n), recs in zip(FILES, per_file):
        hasher = blake3.blake3()
        size = 0
        for h, ln in recs:
            hasher.update(blocks.load_chunk(txn, d_blocks, h, ln, cache))
            size += ln
        ch = hasher.digest()
        man = objects.Manifest(ch, size, [h for h, _ in recs], [ln for _, ln in recs])
        if txn.get(ch, db=d_man) is None:
            stats["meta_bytes"] += len(man.encode())
        objects.store_manifest(txn, d_man, man)
        entries.append(objects.Entry(fname, stat.S_IFREG | 0o444, 0, 0, size, 0, 0, ch, b"", ()))
        total += size
    root = objects.store_tree(txn, store.db("trees"), entries)
    stats["meta_bytes"] += 512  # about one tree record
    return root, total, stats


def _prefix_keys(txn, db, prefix: bytes):
    n = len(prefix)
    with txn.cursor(db=db) as c:
        ok = c.set_range(prefix)
        while ok and c.key()[:n] == prefix:
            yield bytes(c.key())
            ok = c.next()


def _prefix_items(txn, db, prefix: bytes):
    n = len(prefix)
    with txn.cursor(db=db) as c:
        ok = c.set_range(prefix)
        while ok and c.key()[:n] == prefix:
            yield bytes(c.key()), bytes(c.value())
            ok = c.next()


def _has_prefix(txn, db, prefix: bytes) -> bool:
    return next(_prefix_keys(txn, db, prefix), None) is not None


def _bucket_start(txn, db, ns: bytes, key: bytes) -> bytes:
    """The first key of the recorded bucket holding ``key`` (b"" for the first one)."""
    n = len(ns)
    with txn.cursor(db=db) as c:
        ok = c.set_range(ns + key)
        if ok and c.key() == ns + key:
            return key
        ok = c.prev() if ok else c.last()
        if ok and c.key()[:n] == ns:
            return bytes(c.key()[n:])
    return b""


def _delete_range(txn, db, ns: bytes, start: bytes, end: bytes | None) -> None:
    n = len(ns)
    with txn.cursor(db=db) as c:
        ok = c.set_range(ns + start)
        while ok and c.key()[:n] == ns and (end is None or bytes(c.key()[n:]) < end):
            ok = c.delete()


def clear_ns(txn, store, ns: bytes) -> None:
    """Remove every record of namespace ``ns`` (keys, elements, count, buckets, dirty)."""
    for name in ("kv", "kvel", "kvdirty", "kvb"):
        _delete_range(txn, store.db(name), ns, b"", None)
    txn.delete(ns, db=store.db("kvmeta"))
    txn.delete(ns + b"!", db=store.db("kvmeta"))


# ---------------------------------------------------------------------- reading versions
def iter_version_lines(txn, store, root: bytes, cache=None, objs=None):
    """Every JSON line (bytes, without newline) of a db version tree, file by file."""
    objs = objs or objects.ObjectCache()
    tree = objs.tree(txn, store.db("trees"), root)
    d_blocks, d_man = store.db("blocks"), store.db("manifests")
    for _t, fname, _n in FILES:
        e = tree.get(fname)
        if e is None:
            continue
        m = objs.manifest(txn, d_man, e.hash)
        rest = b""
        for h, ln in zip(m.chunks, m.lengths):
            data = rest + bytes(blocks.load_chunk(txn, d_blocks, h, ln, cache))
            lines = data.split(b"\n")
            rest = lines.pop()
            yield from (ln_ for ln_ in lines if ln_)
        if rest:
            yield rest


def load_lines(ks: Keyspace, lines) -> int:
    """Load JSON lines into ``ks``; returns keys loaded. Raises ValueError (line number)."""
    n = 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            load_record(ks, json.loads(line))
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"line {i}: {e}") from None
        n += 1
    return n


def checkout(txn, store, ns: bytes, root: bytes, cache=None) -> int:
    cache = cache if cache is not None else blocks.ChunkCache(64 << 20)
    """cur of ``ns`` := the version with tree ``root`` (every key rewritten; the next
    backup re-serializes all buckets, which dedup to the version's chunks)."""
    clear_ns(txn, store, ns)
    ks = Keyspace(store, ns, txn, True)
    ks.now = 0  # keys with an expiry are taken as they were
    n = load_lines(ks, iter_version_lines(txn, store, root, cache))
    ks.finish()
    txn.put(ns, struct.pack(">Q", ks.count()), db=store.db("kvmeta"))
    return n


def version_ns_of(root: bytes) -> bytes:
    """The read-only cache namespace of a version tree (20 bytes)."""
    return blake3.blake3(root, derive_key_context="mimeifs 2026 db version cache").digest()[:20]


def is_ready(engine, mimei: str, n: int) -> bool:
    try:
        root = bytes.fromhex(engine.version(mimei, n)["root"])
    except Exception:
        return False
    with engine.store.read() as txn:
        return txn.get(version_ns_of(root) + b"!", db=engine.store.db("kvmeta")) is not None


def ensure_version(engine, root: bytes) -> None:
    """Fetch what this store lacks of a db version (its tree, manifests and chunks)
    through the engine's chunk store; call outside any write transaction. Raises
    ChunkMissing when no provider has them."""
    chunks = getattr(engine, "chunks", None)
    if chunks is None or not hasattr(chunks, "ensure"):
        return
    chunks.ensure([("tree", root)])
    tree = chunks.tree(root)
    chunks.ensure([("manifest", e.hash) for e in tree.entries if e.is_file])


def version_ns(engine, mimei: str, n: int) -> bytes:
    """The namespace holding version n of a db MiMei as a read-only keyspace, built from
    the version's files on first use (blocks fetched by the engine if missing)."""
    rec = engine.version(mimei, n)
    if rec.get("kind") != "db":
        raise ValueError(f"{mimei} v/{n} is not a db version")
    root = bytes.fromhex(rec["root"])
    ns = version_ns_of(root)
    store = engine.store
    with store.read() as txn:
        if txn.get(ns + b"!", db=store.db("kvmeta")) is not None:
            return ns
    ensure_version(engine, root)
    with store.write() as txn:
        if txn.get(ns + b"!", db=store.db("kvmeta")) is None:
            clear_ns(txn, store, ns)
            ks = Keyspace(store, ns, txn, True, track_dirty=False)
            ks.now = 0
            load_lines(ks, iter_version_lines(txn, store, root, blocks.ChunkCache(64 << 20)))
            ks.finish()
            txn.put(ns + b"!", b"1", db=store.db("kvmeta"))
    return ns
