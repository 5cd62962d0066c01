"""Credit between nodes: letters of credit, IOUs and the per-node credit book.

Sources: seed 001/002 Part I, the credit model ("L/C, IOU": a node lets a peer use its
services before paying, up to a cap it signs; what was used is acknowledged by the user),
and DESIGN.md "Ledger" (bandwidth bytes are the base unit; storage and CPU convert by
coefficients; service stops with a clear error when use would pass the cap; revocation is
immediate).

Records (JSON, signed with :meth:`mimeifs.ids.NodeKey.sign_record`):

- Letter of Credit: ``{"type": "loc", "authorizer", "authorized", "unit", "cap",
  "expires" (unix seconds, 0 = never), "seq"}`` signed by the authorizer. A newer ``seq``
  replaces an older one (raise, lower); cap 0 with ``"revoked": true`` is a revocation.
- IOU: ``{"type": "iou", "lender", "borrower", "unit", "amount" (cumulative), "seq"}``
  signed by the borrower. Amounts are cumulative, so only the newest IOU matters.

Units: ``bw`` (bytes of bandwidth, the base), ``storage`` (byte-days) and ``cpu``
(CPU-milliseconds), converted to base by the node's coefficients (``credit.meta``).

LMDB sub-databases: ``credit.meta`` (coefficients), ``credit.granted`` (peer -> {"loc",
"used" in base units}), ``credit.received`` (authorizer -> L/C granted to this node),
``credit.iou_in`` (borrower -> newest IOU owed to this node), ``credit.iou_out`` (lender ->
newest IOU this node signed), ``credit.settled`` (peer -> {"in", "out"} at the last netting).
"""

from __future__ import annotations

import json
import threading
import time

from ..ids import BadSignature, NodeKey, canonical, is_id, verify_record

UNITS = ("bw", "storage", "cpu")
DEFAULT_COEFFICIENTS = {"bw": 1, "storage": 1, "cpu": 1_000}


def iso_utc(t: float) -> str:
    """Unix seconds as ISO 8601 in UTC (``2026-11-30T15:40:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class CreditError(Exception):
    """A credit operation is refused: bad record, forged signature, unknown peer or unit."""


class CreditRefused(CreditError):
    """Service refused to a peer: no letter of credit, revoked, expired, or over the cap.
    ``reason`` says which; ``peer``, ``used``, ``cap`` (base units) give the numbers."""

    def __init__(self, reason: str, peer: str, used: int = 0, cap: int = 0):
        super().__init__(reason)
        self.reason, self.peer, self.used, self.cap = reason, peer, used, cap


def letter_of_credit(authorizer: NodeKey, authorized: str, cap: int, expires: float = 0, seq: int = 1,
                     unit: str = "bw", revoked: bool = False) -> dict:
    """A signed letter of credit (see the module docstring). Raises CreditError on bad
    fields."""
    _check_fields(authorized, unit, cap)
    rec = {"type": "loc", "authorizer": authorizer.id, "authorized": authorized, "unit": unit,
           "cap": cap, "expires": expires, "seq": seq}
    if revoked:
        rec["revoked"] = True
    return authorizer.sign_record(rec)


def iou(borrower: NodeKey, lender: str, amount: int, seq: int, unit: str = "bw") -> dict:
    """A signed IOU for a cumulative ``amount`` (see the module docstring)."""
    _check_fields(lender, unit, amount)
    return borrower.sign_record({"type": "iou", "lender": lender, "borrower": borrower.id, "unit": unit,
                                 "amount": amount, "seq": seq})


def _check_fields(peer: str, unit: str, amount: int) -> None:
    if not is_id(peer):
        raise CreditError(f"not a node ID (40 hex): {peer!r}")
    if unit not in UNITS:
        raise CreditError(f"unknown unit {unit!r}: one of {', '.join(UNITS)}")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise CreditError("amounts and caps are non-negative integers")


def check_loc(rec: dict) -> dict:
    """Verify a letter of credit's signature and fields; returns it. Raises CreditError."""
    try:
        who = verify_record(rec)
    except BadSignature as e:
        raise CreditError(f"forged letter of credit: {e}") from e
    if rec.get("type") != "loc" or rec.get("authorizer") != who:
        raise CreditError("not a letter of credit signed by its authorizer")
    _check_fields(rec.get("authorized"), rec.get("unit"), rec.get("cap"))
    if not isinstance(rec.get("seq"), int) or not isinstance(rec.get("expires"), (int, float)):
        raise CreditError("a letter of credit has an integer seq and a numeric expiry")
    return rec


def check_iou(rec: dict) -> dict:
    """Verify an IOU's signature (the borrower's) and fields; returns it. Raises CreditError."""
    try:
        who = verify_record(rec)
    except BadSignature as e:
        raise CreditError(f"forged IOU: {e}") from e
    if rec.get("type") != "iou" or rec.get("borrower") != who:
        raise CreditError("not an IOU signed by its borrower")
    _check_fields(rec.get("lender"), rec.get("unit"), rec.get("amount"))
    if not isinstance(rec.get("seq"), int):
        raise CreditError("an IOU has an integer seq")
    return rec


class CreditBook:
    """This node's credit book in ``store`` (its key is the authorizer / lender / borrower).

    All amounts returned are in base units (bytes of bandwidth). Thread-safe for use by the
    network code: :meth:`record_use` serializes on a lock and writes one transaction.
    """

    def __init__(self, store):
        self.store = store
        self.key: NodeKey = store.key
        self.me = store.key.id
        self._db = {n: store.db("credit." + n) for n in ("meta", "granted", "received", "iou_in", "iou_out", "settled")}
        self._lock = threading.Lock()

    # -- units --------------------------------------------------------------------------
    def coefficients(self) -> dict[str, int]:
        """Base units per unit: ``{"bw": 1, "storage": .., "cpu": ..}`` (configurable)."""
        with self.store.read() as txn:
            raw = txn.get(b"coefficients", db=self._db["meta"])
        return dict(DEFAULT_COEFFICIENTS, **(json.loads(raw) if raw else {}))

    def set_coefficients(self, **coef: int) -> None:
        """Set conversion coefficients (positive integers) for ``storage`` and/or ``cpu``."""
        for u, c in coef.items():
            if u not in ("storage", "cpu") or not isinstance(c, int) or c <= 0:
                raise CreditError("coefficients are positive integers for storage and cpu")
        cur = self.coefficients()
        cur.update(coef)
        with self.store.write() as txn:
            txn.put(b"coefficients", canonical(cur), db=self._db["meta"])

    def to_base(self, amount: int, unit: str) -> int:
        """``amount`` of ``unit`` in base units (bytes of bandwidth)."""
        if unit not in UNITS:
            raise CreditError(f"unknown unit {unit!r}")
        return amount * self.coefficients()[unit]

    # -- letters of credit this node grants ----------------------------------------------
    def _granted(self, txn, peer: str) -> dict | None:
        raw = txn.get(bytes.fromhex(peer), db=self._db["granted"])
        return json.loads(raw) if raw else None

    def _put_granted(self, txn, peer: str, entry: dict) -> None:
        txn.put(bytes.fromhex(peer), canonical(entry), db=self._db["granted"])

    def grant(self, peer: str, cap: int, expires: float = 0, unit: str = "bw") -> dict:
        """Grant (or replace) ``peer``'s letter of credit: ``cap`` in ``unit``, expiring at
        unix time ``expires`` (0 = never). Use so far is kept. Returns the signed L/C."""
        _check_fields(peer, unit, cap)
        if peer == self.me:
            raise CreditError("a node does not grant credit to itself")
        with self._lock, self.store.write() as txn:
            e = self._granted(txn, peer) or {"used": 0, "loc": None}
            seq = (e["loc"]["seq"] + 1) if e["loc"] else 1
            e["loc"] = letter_of_credit(self.key, peer, cap, expires, seq, unit)
            self._put_granted(txn, peer, e)
            return e["loc"]

    def set_cap(self, peer: str, cap: int) -> dict:
        """Raise or lower the cap of ``peer``'s existing letter (same unit and expiry).
        Raises CreditError if there is none."""
        loc = self.letter(peer)
        if loc is None:
            raise CreditError(f"no letter of credit granted to {peer}")
        return self.grant(peer, cap, loc["expires"], loc["unit"])

    def revoke(self, peer: str) -> dict:
        """Revoke ``peer``'s letter now: a signed letter with cap 0 and ``revoked``; every
        later :meth:`record_use` is refused. Raises CreditError if there is none."""
        with self._lock, self.store.write() as txn:
            e = self._granted(txn, peer) if is_id(peer) else None
            if e is None or e["loc"] is None:
                raise CreditError(f"no letter of credit granted to {peer}")
            e["loc"] = letter_of_credit(self.key, peer, 0, e["loc"]["expires"], e["loc"]["seq"] + 1,
                                        e["loc"]["unit"], revoked=True)
            self._put_granted(txn, peer, e)
            return e["loc"]

    def letter(self, peer: str) -> dict | None:
        """The current letter of credit granted to ``peer`` (or None)."""
        with self.store.read() as txn:
            e = self._granted(txn, peer) if is_id(peer) else None
        return e["loc"] if e else None

    def record_use(self, peer: str, amount: int, unit: str = "bw", now: float | None = None) -> int:
        """Record that ``peer`` used ``amount`` of ``unit`` of this node's service; returns
        its total use in base units. Raises :class:`CreditRefused` (nothing recorded) if the
        peer has no letter, it is revoked or expired, or the use would pass the cap."""
        if not isinstance(amount, int) or amount < 0:
            raise CreditError("use is a non-negative integer")
        base = self.to_base(amount, unit)
        now = time.time() if now is None else now
        with self._lock, self.store.write() as txn:
            e = self._granted(txn, peer) if is_id(peer) else None
            loc = e and e["loc"]
            if not loc:
                raise CreditRefused(f"no letter of credit for {peer}", peer)
            used = e["used"]
            cap = loc["cap"] * self.coefficients()[loc["unit"]]
            if loc.get("revoked"):
                raise CreditRefused(f"letter of credit for {peer} is revoked", peer, used, 0)
            if loc["expires"] and now >= loc["expires"]:
                raise CreditRefused(f"letter of credit for {peer} expired at {iso_utc(loc['expires'])}", peer, used, cap)
            if used + base > cap:
                raise CreditRefused(f"use by {peer} would pass its cap: {used} + {base} > {cap} bytes",
                                    peer, used, cap)
            e["used"] = used + base
            self._put_granted(txn, peer, e)
            return e["used"]

    def record_served(self, peer: str, amount: int) -> int:
        """Add ``amount`` bytes already served to ``peer``'s use without checking the cap
        (the network meter checks the letter before serving and persists its counts in
        batches through here, so a letter lowered or revoked between a serve and its
        flush cannot make the book disagree with the bytes sent). Returns the new total.
        Raises CreditError if there is no letter for ``peer``."""
        if not isinstance(amount, int) or amount < 0:
            raise CreditError("use is a non-negative integer")
        with self._lock, self.store.write() as txn:
            e = self._granted(txn, peer) if is_id(peer) else None
            if e is None:
                raise CreditError(f"no letter of credit granted to {peer}")
            e["used"] += amount
            self._put_granted(txn, peer, e)
            return e["used"]

    def iou_out(self, lender: str) -> dict | None:
        """The newest IOU this node signed to ``lender`` (or None)."""
        with self.store.read() as txn:
            raw = txn.get(bytes.fromhex(lender), db=self._db["iou_out"]) if is_id(lender) else None
        return json.loads(raw) if raw else None

    def serving_state(self, peer: str, since: int | None = None):
        """What serving ``peer`` depends on, read in one snapshot: ``(txnid, letter or
        None, used base units, coefficients)``, or ``(txnid, None, None, None)`` when
        the store's last committed transaction is still ``since`` (nothing changed since
        the caller's copy: a meter checks this on every reply, grants and revokes by
        another process show up as a new transaction ID)."""
        with self.store.read() as txn:
            tid = txn.id()
            if since is not None and tid == since:
                return tid, None, None, None
            e = self._granted(txn, peer) if is_id(peer) else None
            raw = txn.get(b"coefficients", db=self._db["meta"])
        coef = dict(DEFAULT_COEFFICIENTS, **(json.loads(raw) if raw else {}))
        return tid, (e["loc"] if e else None), (e["used"] if e else 0), coef

    def used(self, peer: str) -> int:
        """Base units ``peer`` has used of this node's service (0 if none)."""
        with self.store.read() as txn:
            e = self._granted(txn, peer) if is_id(peer) else None
        return e["used"] if e else 0

    # -- records from peers -----------------------------------------------------------------
    def accept_letter(self, rec: dict) -> dict:
        """Keep a letter of credit a peer granted to this node (newest seq wins). Raises
        CreditError if forged, not for this node, or older than the one kept."""
        check_loc(rec)
        if rec["authorized"] != self.me:
            raise CreditError("letter of credit is for another node")
        key = bytes.fromhex(rec["authorizer"])
        with self.store.write() as txn:
            old = txn.get(key, db=self._db["received"])
            if old and json.loads(old)["seq"] >= rec["seq"]:
                raise CreditError("an equal or newer letter of credit from this authorizer is kept")
            txn.put(key, canonical(rec), db=self._db["received"])
        return rec

    def accept_iou(self, rec: dict) -> dict:
        """Keep a peer's IOU to this node if newer: higher seq and a cumulative amount not
        below the kept one. Raises CreditError if forged, not owed to this node, or stale."""
        check_iou(rec)
        if rec["lender"] != self.me:
            raise CreditError("IOU is owed to another node")
        key = bytes.fromhex(rec["borrower"])
        with self.store.write() as txn:
            old = txn.get(key, db=self._db["iou_in"])
            if old:
                o = json.loads(old)
                if rec["seq"] <= o["seq"]:
                    raise CreditError(f"stale IOU: seq {rec['seq']} <= kept {o['seq']}")
                if self.to_base(rec["amount"], rec["unit"]) < self.to_base(o["amount"], o["unit"]):
                    raise CreditError("IOU amounts are cumulative and never go down")
            txn.put(key, canonical(rec), db=self._db["iou_in"])
        return rec

    def issue_iou(self, lender: str, amount: int, unit: str = "bw") -> dict:
        """Sign an IOU to ``lender`` for a cumulative ``amount`` (must not go down) and keep
        it as what this node owes. Returns the record to send to the lender."""
        _check_fields(lender, unit, amount)
        key = bytes.fromhex(lender)
        with self._lock, self.store.write() as txn:
            old = txn.get(key, db=self._db["iou_out"])
            seq = 1
            if old:
                o = json.loads(old)
                if self.to_base(amount, unit) < self.to_base(o["amount"], o["unit"]):
                    raise CreditError("IOU amounts are cumulative and never go down")
                seq = o["seq"] + 1
            rec = iou(self.key, lender, amount, seq, unit)
            txn.put(key, canonical(rec), db=self._db["iou_out"])
            return rec

    # -- netting and listing ------------------------------------------------------------------
    def _iou_base(self, txn, db: str, peer: bytes) -> int:
        raw = txn.get(peer, db=self._db[db])
        if not raw:
            return 0
        r = json.loads(raw)
        return self.to_base(r["amount"], r["unit"])

    def net(self, peer: str) -> dict:
        """Net ``peer``'s IOUs to this node against this node's IOUs to ``peer`` since the last
        :meth:`settle`: ``{"peer", "owed_to_me", "i_owe", "net"}`` (base units; net > 0 means
        the peer owes this node)."""
        if not is_id(peer):
            raise CreditError(f"not a node ID (40 hex): {peer!r}")
        k = bytes.fromhex(peer)
        with self.store.read() as txn:
            inn, out = self._iou_base(txn, "iou_in", k), self._iou_base(txn, "iou_out", k)
            raw = txn.get(k, db=self._db["settled"])
        s = json.loads(raw) if raw else {"in": 0, "out": 0}
        a, b = inn - s["in"], out - s["out"]
        return {"peer": peer, "owed_to_me": a, "i_owe": b, "net": a - b}

    def settle(self, peer: str) -> dict:
        """Net the IOUs with ``peer`` and mark them settled up to now (the next netting
        counts from here); returns the netting. Paying the net amount is a ledger transfer."""
        n = self.net(peer)
        k = bytes.fromhex(peer)
        with self.store.write() as txn:
            inn, out = self._iou_base(txn, "iou_in", k), self._iou_base(txn, "iou_out", k)
            txn.put(k, canonical({"in": inn, "out": out}), db=self._db["settled"])
        return n

    def show(self) -> list[dict]:
        """Everything per peer: granted letter, use, letter received, IOUs both ways, net."""
        peers: dict[str, dict] = {}
        with self.store.read() as txn:
            for name in ("granted", "received", "iou_in", "iou_out"):
                for k, v in txn.cursor(db=self._db[name]):
                    peers.setdefault(bytes(k).hex(), {})[name] = json.loads(v)
        out = []
        for p in sorted(peers):
            d = peers[p]
            g = d.get("granted") or {}
            out.append({"peer": p, "granted": g.get("loc"), "used": g.get("used", 0),
                        "received": d.get("received"), "iou_in": d.get("iou_in"), "iou_out": d.get("iou_out"),
                        **{k: v for k, v in self.net(p).items() if k != "peer"}})
        return out
