"""The chain of pulse records and their event lists: what anyone can check with no store.

Sources: seed 002 Part II §VI (network pulse, bookkeeper, synopsis) and §VII 7.2.1 (the
total changes only by an announced reward). The event list of a pulse is a sequence of
entries, each one type byte and its bytes: ``b"A"`` + canonical JSON of an admission,
``b"R"`` + canonical JSON of a signed reward, ``b"T"`` + a transfer's 220-byte wire
form; :func:`events_hash` is blake3 over the entries, each prefixed with its length
(u32 BE). :func:`verify_chain` checks the links between signed pulse records. The ledger's
errors live here too, so that every ledger module can raise them.
"""

from __future__ import annotations

import json
import struct
from typing import Iterable

from blake3 import blake3

from ..ids import BadSignature, verify_record
from . import records as R
from .proof import EMPTY_HASH

_U32 = struct.Struct(">I")


class LedgerError(Exception):
    """A ledger operation cannot be done (no ledger here, not supervisor, bad record)."""


class TransferRefused(LedgerError):
    """A transfer is refused; ``reason`` says why (bad signature, replayed or skipped
    sequence, amount not positive, balance would go negative, unknown account, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ChainError(LedgerError):
    """A chain of pulse records has a broken link; the message names the pulse."""


def events_hash(entries: Iterable[bytes]) -> str:
    """blake3 over the entries, each prefixed by its length (u32 BE): 64 hex."""
    h = blake3()
    for e in entries:
        h.update(_U32.pack(len(e)))
        h.update(e)
    return h.hexdigest()


def verify_chain(records: list[dict], bookkeeper: str | None = None, org: str | None = None) -> None:
    """Check every link of a chain of pulse records (oldest first).

    Each record must be signed (by ``bookkeeper`` if given), name the same organization,
    have pulse = previous + 1, ``prev`` = hash of the previous record, ``prev_root`` = the
    previous record's root, and total = previous total + minted. The first record is
    checked against nothing before it unless it is pulse 0 (then prev must be "" and
    prev_root the empty tree). Raises :class:`ChainError` naming the first broken link.
    """
    prev = None
    for rec in records:
        try:
            who = verify_record(rec, bookkeeper)
        except BadSignature as e:
            raise ChainError(f"pulse record {rec.get('pulse') if isinstance(rec, dict) else '?'}: {e}") from e
        p = rec.get("pulse")
        if rec.get("type") != "pulse" or not isinstance(p, int):
            raise ChainError(f"not a pulse record: {rec!r:.80}")
        if rec.get("bookkeeper") != who:
            raise ChainError(f"pulse {p}: signed by {who}, but names bookkeeper {rec.get('bookkeeper')}")
        if org is not None and rec.get("org") != org:
            raise ChainError(f"pulse {p}: record of organization {rec.get('org')}, expected {org}")
        if prev is None:
            if p == 0 and (rec.get("prev") != "" or rec.get("prev_root") != EMPTY_HASH.hex()):
                raise ChainError("pulse 0 must start from nothing and the empty tree")
        else:
            if p != prev["pulse"] + 1:
                raise ChainError(f"pulse {p} follows pulse {prev['pulse']}")
            if rec.get("org") != prev.get("org"):
                raise ChainError(f"pulse {p}: organization changed")
            if rec.get("prev") != R.record_hash(prev):
                raise ChainError(f"pulse {p}: prev is not the hash of pulse {prev['pulse']}'s record")
            if rec.get("prev_root") != prev.get("root"):
                raise ChainError(f"pulse {p}: prev_root is not pulse {prev['pulse']}'s root")
            if rec.get("total") != prev.get("total") + rec.get("minted", 0):
                raise ChainError(f"pulse {p}: total changed by more than the announced reward")
        prev = rec


def entry_json(e: bytes) -> dict:
    """An event entry (see the module docstring) as a JSON-able dict."""
    kind, body = e[:1], e[1:]
    if kind == b"T":
        return R.Transfer.from_wire(body).to_json()
    d = json.loads(body)
    if kind == b"A":
        return {"type": "admit", "who": d["who"], "role": d["role"]}
    return d
