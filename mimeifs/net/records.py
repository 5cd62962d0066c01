"""Signed records the DHT carries, and the rules that validate and merge them.

Anchors: libp2p kad-dht provider records (a node says it provides a key, with an
expiry; 48 h by default, republished every 22 h), BEP 44 (mutable items: a signed value
with a sequence number; a node keeps the highest and never takes a lower one).

Two kinds of value, each under its own 160-bit key derived from the MiMei ID (so a
provider set and a version record never share a slot, and the key a value claims is
checked against the MiMei it names):

- *providers* of MiMei M, key :func:`prov_key` (M): a set of provider records
  ``{"type": "provider", "mimei": M, "node": node ID, "addr": [host, port],
  "expires": unix seconds}`` each signed by its node's key (``ids.sign_record``). Sets
  merge by node ID (the later expiry wins); expired records are dropped.
- *newest version* of M, key :func:`ver_key` (M): ``{"info": signed MiMei info,
  "version": signed version record}``. Valid if the info is signed by its author, the
  MiMei ID derives from (author, app type, type, mark) (``ids.mimei_id``), and the version
  record is signed by the same author and names M. The higher ``n`` wins (BEP 44).

Values travel as msgpack ``{"k": "prov", "recs": [...]}`` or ``{"k": "ver", "info",
"version"}``. Anything else, or bigger than :data:`MAX_VALUE`, is refused.
"""

from __future__ import annotations

import time

import blake3
import msgpack

from ..ids import BadSignature, NodeKey, is_id, mimei_id, verify_record

#: Largest value accepted (kademlia 2.2.3 / rpcudp refuse requests over 8 KiB; a store
#: RPC carries the value plus ~100 bytes of framing).
MAX_VALUE = 7 * 1024
#: Most provider records kept and answered per MiMei (keeps answers under MAX_VALUE).
MAX_PROVIDERS = 16


class InvalidRecord(ValueError):
    """A DHT value that fails validation (signature, MiMei, size, expiry, shape)."""


def prov_key(mimei: str) -> bytes:
    """DHT key (20 bytes) of MiMei ``mimei``'s provider set."""
    return blake3.blake3(b"mimeifs dht providers\0" + bytes.fromhex(mimei)).digest()[:20]


def ver_key(mimei: str) -> bytes:
    """DHT key (20 bytes) of MiMei ``mimei``'s newest signed version record."""
    return blake3.blake3(b"mimeifs dht version\0" + bytes.fromhex(mimei)).digest()[:20]


def provider_record(key: NodeKey, mimei: str, addr: tuple[str, int], ttl: float) -> dict:
    """This node's signed provider record for ``mimei`` at ``addr``, valid ``ttl`` s."""
    return key.sign_record({"type": "provider", "mimei": mimei, "node": key.id,
                            "addr": [addr[0], int(addr[1])], "expires": int(time.time() + ttl)})


def check_provider(rec, mimei: str | None = None, now: float | None = None, max_ttl: float = 7 * 86400) -> dict:
    """Validate one provider record; returns it. Raises InvalidRecord."""
    now = time.time() if now is None else now
    if not isinstance(rec, dict) or rec.get("type") != "provider":
        raise InvalidRecord("not a provider record")
    try:
        who = verify_record(rec)
    except BadSignature as e:
        raise InvalidRecord(f"provider record: {e}") from e
    if rec.get("node") != who or not is_id(rec.get("mimei", "")):
        raise InvalidRecord("provider record not signed by the node it names")
    if mimei is not None and rec["mimei"] != mimei:
        raise InvalidRecord("provider record for another MiMei")
    a, exp = rec.get("addr"), rec.get("expires")
    if not (isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and len(a[0]) < 256
            and isinstance(a[1], int) and 0 < a[1] < 65536):
        raise InvalidRecord("provider record address is not [host, port]")
    if not isinstance(exp, int) or exp <= now or exp > now + max_ttl:
        raise InvalidRecord("provider record expired or expiring too far ahead")
    return rec


def check_version(value, mimei: str | None = None) -> dict:
    """Validate a newest-version value ``{"info", "version"}``; returns it. Raises
    InvalidRecord (bad signature, a MiMei ID not derived from its author, mismatch)."""
    if not isinstance(value, dict):
        raise InvalidRecord("not a version value")
    info, ver = value.get("info"), value.get("version")
    try:
        author = verify_record(info)
        if info.get("author") != author or info.get("type") != "mimei":
            raise InvalidRecord("MiMei info not signed by its author")
        derived = mimei_id(author, info["app_type"], info["mimei_type"], info["mark"])
        if info.get("id") != derived:
            raise InvalidRecord("MiMei ID does not derive from its author")
        verify_record(ver, author)
    except BadSignature as e:
        raise InvalidRecord(f"version value: {e}") from e
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, InvalidRecord):
            raise
        raise InvalidRecord(f"malformed version value: {e}") from e
    if mimei is not None and derived != mimei:
        raise InvalidRecord("version value for another MiMei")
    if not isinstance(ver, dict) or ver.get("type") != "version" or ver.get("mimei") != derived \
            or ver.get("author") != author:
        raise InvalidRecord("version record does not belong to this MiMei")
    n = ver.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidRecord("version number is not a non-negative integer")
    return {"info": info, "version": ver}


def encode_providers(recs: list[dict]) -> bytes:
    """A provider-set value (the newest-expiring :data:`MAX_PROVIDERS` records)."""
    recs = sorted(recs, key=lambda r: -r["expires"])[:MAX_PROVIDERS]
    while True:
        b = msgpack.packb({"k": "prov", "recs": recs}, use_bin_type=True)
        if len(b) <= MAX_VALUE or not recs:
            return b
        recs = recs[:-1]


def encode_version(value: dict) -> bytes:
    """A newest-version value. Raises InvalidRecord if it is over :data:`MAX_VALUE`
    (a version record with very many references): then only the stream carries it."""
    b = msgpack.packb({"k": "ver", "info": value["info"], "version": value["version"]}, use_bin_type=True)
    if len(b) > MAX_VALUE:
        raise InvalidRecord(f"version value of {len(b)} bytes over the DHT's {MAX_VALUE}")
    return b


def decode(dkey: bytes, raw, now: float | None = None) -> tuple[str, object]:
    """Decode and validate a value found under ``dkey``: ``("prov", [records])`` (only
    valid, unexpired ones, for the MiMei whose provider key is ``dkey``) or ``("ver",
    value)``. Raises InvalidRecord."""
    if not isinstance(raw, bytes) or len(raw) > MAX_VALUE:
        raise InvalidRecord("a DHT value is bytes of at most %d" % MAX_VALUE)
    try:
        v = msgpack.unpackb(raw, raw=False, max_str_len=MAX_VALUE, max_bin_len=MAX_VALUE,
                            max_array_len=MAX_PROVIDERS * 4, max_map_len=64, max_ext_len=0)
    except Exception as e:
        raise InvalidRecord(f"undecodable DHT value: {type(e).__name__}") from e
    if not isinstance(v, dict):
        raise InvalidRecord("a DHT value is a map")
    if v.get("k") == "prov" and isinstance(v.get("recs"), list):
        good = []
        for r in v["recs"]:
            try:
                r = check_provider(r, now=now)
            except InvalidRecord:
                continue
            if prov_key(r["mimei"]) == dkey:
                good.append(r)
        if not good and v["recs"]:
            raise InvalidRecord("no valid provider record for this key")
        return "prov", good
    if v.get("k") == "ver":
        val = check_version(v)
        if ver_key(val["info"]["id"]) != dkey:
            raise InvalidRecord("version value stored under another MiMei's key")
        return "ver", val
    raise InvalidRecord("unknown DHT value kind")


def merge_providers(*sets: list[dict], now: float | None = None) -> list[dict]:
    """Union of provider sets by node ID, the later expiry winning; expired dropped."""
    now = time.time() if now is None else now
    by: dict[str, dict] = {}
    for s in sets:
        for r in s:
            if r["expires"] > now and (r["node"] not in by or by[r["node"]]["expires"] < r["expires"]):
                by[r["node"]] = r
    return sorted(by.values(), key=lambda r: -r["expires"])


def newer_version(a: dict | None, b: dict | None) -> dict | None:
    """The value with the higher version number (BEP 44); ``a`` on a tie."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b["version"]["n"] > a["version"]["n"] else a
