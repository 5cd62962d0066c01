"""Closing pulses and reading them back: the half of :class:`~mimeifs.ledger.ledger.Ledger`
that writes one sparse Merkle tree version and one signed pulse record per pulse.

Sources: seed 002 Part II §V (one tree version per pulse, only changed nodes saved) and
§VI (network pulse, bookkeeper). :class:`PulseBook` is a mixin of ``Ledger``: it uses the
state ``Ledger`` keeps (``store``, ``tree``, ``_db``, ``pulse``, ``total``,
``last_record``, ``org_id`` and the open pulse's ``_overlay``, ``_entries``, ``_minted``,
``_new_accounts``, ``_committed``).
"""

from __future__ import annotations

import json
import struct
import time
from typing import Iterator

from ..ids import NodeKey, canonical
from . import records as R
from .chain import ChainError, LedgerError, entry_json, events_hash, verify_chain
from .proof import EMPTY_HASH

_U32 = struct.Struct(">I")
ACCOUNT = struct.Struct(">QQ")  # an account's value in ``ledger.accounts``: balance, seq


class PulseBook:
    """Pulses of a :class:`~mimeifs.ledger.ledger.Ledger` (a mixin; see the module docstring)."""

    # -- pulses ----------------------------------------------------------------------------------
    def close_pulse(self, bookkeeper: NodeKey | None = None, now: float | None = None) -> dict:
        """Close the open pulse: apply the queued entries in their fixed order, write the
        tree version, and sign the pulse record as bookkeeper (default: this node's key).
        One LMDB write transaction. Returns the signed record.
        Raises :class:`LedgerError` if the books would not balance (a bug, never a peer's
        input: entries were checked when queued)."""
        bk = bookkeeper or self.store.key
        p = self.open_pulse
        changes: dict[bytes, tuple[int, int]] = {}
        with self.store.read() as txn:
            delta = 0
            for aid, s in self._overlay.items():
                old = self._committed(txn, aid) or [0, 0]
                delta += s[0] - old[0]
                if s[0] < 0:
                    raise LedgerError(f"books do not balance: {aid.hex()} would be negative")
                if s != old or aid in self._new_accounts:
                    changes[aid] = (s[0], s[1])
            for aid in self._new_accounts:
                if aid not in changes and txn.get(aid, db=self._db["accounts"]) is None:
                    changes[aid] = (0, 0)
        if delta != self._minted:
            raise LedgerError(f"books do not balance: balances moved by {delta}, rewards were {self._minted}")
        pp = _U32.pack(p)
        with self.store.write() as txn:
            prev_root = self.tree.root(self.pulse, txn) if self.pulse >= 0 else EMPTY_HASH
            root = self.tree.apply_txn(txn, p, changes)
            acc = self._db["accounts"]
            txn.cursor(db=acc).putmulti([(k, ACCOUNT.pack(*v)) for k, v in sorted(changes.items())])
            txn.cursor(db=self._db["events"]).putmulti(
                [(pp + _U32.pack(i), e) for i, e in enumerate(self._entries)], append=True)
            rec = bk.sign_record({
                "type": "pulse", "org": self.org_id, "pulse": p, "prev": self.last_record,
                "prev_root": prev_root.hex(), "root": root.hex(), "events": events_hash(self._entries),
                "count": len(self._entries), "minted": self._minted, "total": self.total + self._minted,
                "time": time.time() if now is None else now, "bookkeeper": bk.id})
            meta = self._db["meta"]
            txn.put(pp, canonical(rec), db=self._db["pulses"], append=True)
            txn.put(b"pulse", pp, db=meta)
            txn.put(b"total", str(self.total + self._minted).encode(), db=meta)
            txn.put(b"last", R.record_hash(rec).encode(), db=meta)
            txn.drop(self._db["pending"], delete=False)
        self.pulse = p
        self.total += self._minted
        self.last_record = R.record_hash(rec)
        self._overlay, self._entries, self._minted, self._new_accounts = {}, [], 0, set()
        return rec

    def pulse_record(self, pulse: int | None = None) -> dict:
        """The signed record of ``pulse`` (default: the last). Raises LedgerError if none."""
        pulse = self.pulse if pulse is None else pulse
        with self.store.read() as txn:
            raw = txn.get(_U32.pack(pulse), db=self._db["pulses"]) if pulse >= 0 else None
        if raw is None:
            raise LedgerError(f"no pulse {pulse} in this ledger")
        return json.loads(raw)

    def pulse_records(self, start: int = 0) -> list[dict]:
        """Every pulse record from ``start`` on, oldest first."""
        with self.store.read() as txn:
            cur = txn.cursor(db=self._db["pulses"])
            if not cur.set_range(_U32.pack(start)):
                return []
            return [json.loads(v) for _, v in cur]

    def events(self, pulse: int) -> list[bytes]:
        """The event entries of a closed pulse, in their applied order."""
        pp = _U32.pack(pulse)
        with self.store.read() as txn:
            cur = txn.cursor(db=self._db["events"])
            out = []
            if cur.set_range(pp):
                for k, v in cur:
                    if k[:4] != pp:
                        break
                    out.append(bytes(v))
            return out

    def history(self, account_id: str | None = None, start: int = 0) -> Iterator[dict]:
        """Events of closed pulses from ``start`` on as dicts with their ``pulse``; only those
        touching ``account_id`` if given."""
        with self.store.read() as txn:
            cur = txn.cursor(db=self._db["events"])
            if not cur.set_range(_U32.pack(start)):
                return
            for k, v in cur:
                d = entry_json(bytes(v))
                d["pulse"] = _U32.unpack(k[:4])[0]
                if account_id is None or account_id in (d.get("from"), d.get("to"), d.get("who")) \
                        or any(g[0] == account_id for g in d.get("grants", ())):
                    yield d

    def audit(self) -> None:
        """Check the whole kept history: the chain of pulse records (signed by their
        bookkeepers, linked), each record's events hash against the stored events, each
        root against the stored tree (for pulses not pruned), and the sum of balances
        against the total. Raises :class:`ChainError` at the first mismatch."""
        recs = self.pulse_records()
        verify_chain(recs, org=self.org_id)
        kept = set(self.tree.pulses())
        for rec in recs:
            p = rec["pulse"]
            if rec["events"] != events_hash(self.events(p)):
                raise ChainError(f"pulse {p}: stored events do not match the record")
            if p in kept and self.tree.root(p).hex() != rec["root"]:
                raise ChainError(f"pulse {p}: tree root does not match the record")
        if recs:
            s = sum(b for _, b, _ in self.tree.items())
            if s != recs[-1]["total"]:
                raise ChainError(f"balances sum to {s}, the last record says {recs[-1]['total']}")
