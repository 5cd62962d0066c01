"""An organization's ledger on one node: accounts, admission, rewards, transfers, pulses.

Sources: seed 002 Part II §III (organization, supervisor, member, guest, joining), §IV
(Proof of Performance: rewards "announced with reason and proof"), §V–§VI (sparse Merkle
tree, network pulse, bookkeeper, fund transfer procedure), §VII 7.2.1 (safety conditions:
confirmed by both parties; no negative amount; no negative account; total unchanged
except by a system reward).

One node keeps and checks the ledger and is its bookkeeper (it signs pulse records with
its node key). Between pulses, admissions, rewards and transfers are checked as they come
and queued; :meth:`Ledger.close_pulse` applies the queue in arrival order (a fixed order:
each entry was checked against the state left by those before it), writes one sparse
Merkle tree version, and signs the pulse record ``{"type": "pulse", "org", "pulse",
"prev": previous record hash, "prev_root", "root", "events": hash of the event list,
"count", "minted", "total", "time", "bookkeeper"}``.

The event list of a pulse is a sequence of entries, each one type byte and its bytes:
``b"A"`` + canonical JSON of an admission {"application", "approval"}, ``b"R"`` +
canonical JSON of a signed reward, ``b"T"`` + a transfer's 220-byte wire form. Its hash is
blake3 over the entries, each prefixed with its length (u32 BE).

LMDB sub-databases (all ``ledger.*``): ``meta`` (org record, last pulse, total, last record
hash), ``members`` (ID -> {role, application, approval}), ``keys`` (ID -> public key),
``accounts`` (ID -> balance u64 || seq u64, as of the last pulse), ``pending`` (index u32
-> entry), ``events`` (pulse u32 || index u32 -> entry), ``pulses`` (pulse u32 -> signed
record), and the tree's ``ledger.smt.*``. The organization's key is ``<store>/ledger/org.key``
(mode 0600).

This module keeps accounts, admission, rewards, transfers and the queue; closing and
reading pulses is :mod:`.pulses` (a mixin of :class:`Ledger`), the event format and the
record chain :mod:`.chain` (whose errors and functions are re-exported here).
"""

from __future__ import annotations

import json
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from ..ids import BadSignature, NodeKey, canonical, is_id, verify_record
from . import records as R
from .chain import ChainError, LedgerError, TransferRefused, entry_json, events_hash, verify_chain
from .pulses import ACCOUNT as _ACC
from .pulses import PulseBook
from .smt import SparseMerkleTree

__all__ = ["ChainError", "Ledger", "LedgerError", "TransferRefused", "events_hash", "verify_chain",
           "MAX_U64", "REWARD_KINDS"]

_U32 = struct.Struct(">I")
MAX_U64 = (1 << 64) - 1
REWARD_KINDS = ("construction", "content", "mining", "operation")


class Ledger(PulseBook):
    """The ledger of the organization kept in ``store`` (see the module docstring).

    Open an existing one with ``Ledger(store)`` (raises :class:`LedgerError` if
    :meth:`create` was never run on this store). Amounts are unsigned 64-bit integers of
    the organization's token. Not thread-safe: one Ledger object per process writes.
    """

    def __init__(self, store):
        self.store = store
        self.dir = os.path.join(store.path, "ledger")
        names = ("meta", "members", "keys", "accounts", "pending", "events", "pulses")
        self._db = {n: store.db("ledger." + n) for n in names}
        self.tree = SparseMerkleTree(store, "ledger.smt")
        self._load()

    # -- creation and loading -----------------------------------------------------------
    @classmethod
    def create(cls, store, name: str, supply: int, reason: str = "", org_key: NodeKey | None = None) -> "Ledger":
        """Found an organization on this node: a new key pair whose ID is the organization
        ID (kept in ``<store>/ledger/org.key``), this node's user as founder and supervisor,
        and pulse 0 holding the announced construction reward of ``supply`` to the founder.

        Raises :class:`LedgerError` if the store already has a ledger or supply is bad.
        """
        if not (0 < supply <= MAX_U64):
            raise LedgerError("the construction reward is a positive 64-bit amount")
        d = os.path.join(store.path, "ledger")
        meta = store.db("ledger.meta")
        with store.read() as txn:
            if txn.get(b"org", db=meta) is not None:
                raise LedgerError(f"{store.path} already keeps a ledger")
        os.makedirs(d, mode=0o700, exist_ok=True)
        keyfile = os.path.join(d, "org.key")
        if org_key is None:
            if os.path.exists(keyfile):
                org_key = NodeKey.load(keyfile)
            else:
                org_key = NodeKey.generate()
                org_key.save(keyfile)
        elif not os.path.exists(keyfile):
            org_key.save(keyfile)
        founder = store.key
        org = R.org_record(org_key, name, founder.id, time.time())
        with store.write() as txn:
            txn.put(b"org", canonical(org), db=meta)
        led = cls(store)
        led._register(founder.id, founder.public_key, "supervisor", {"founder": org}, None)
        led.announce_reward([(founder.id, supply)], reason or f"construction reward: founding of {name}",
                            "construction", org_key)
        led.close_pulse()
        return led

    def _load(self) -> None:
        with self.store.read() as txn:
            raw = txn.get(b"org", db=self._db["meta"])
            if raw is None:
                raise LedgerError(f"no ledger in {self.store.path} (run: mimeifs ledger init --org NAME)")
            self.org_record = json.loads(raw)
            self.org_id: str = self.org_record["org"]
            self.org_bytes = bytes.fromhex(self.org_id)
            self.supervisor: str = self.org_record["supervisor"]
            p = txn.get(b"pulse", db=self._db["meta"])
            self.pulse: int = -1 if p is None else _U32.unpack(p)[0]  # last closed pulse
            t = txn.get(b"total", db=self._db["meta"])
            self.total: int = 0 if t is None else int(t)
            self.last_record: str = (txn.get(b"last", db=self._db["meta"]) or b"").decode()
            pend = list(txn.cursor(db=self._db["pending"]))
        self._overlay: dict[bytes, list[int]] = {}
        self._entries: list[bytes] = []
        self._minted = 0
        self._new_accounts: set[bytes] = set()
        for _, e in pend:  # replay the queue left by a previous process
            self._replay(bytes(e))

    def org_key(self) -> NodeKey:
        """The organization's key pair (from ``<store>/ledger/org.key``)."""
        return NodeKey.load(os.path.join(self.dir, "org.key"))

    @property
    def open_pulse(self) -> int:
        """The pulse now collecting entries (the last closed pulse + 1)."""
        return self.pulse + 1

    # -- accounts --------------------------------------------------------------------------
    def _committed(self, txn, aid: bytes) -> list[int] | None:
        v = txn.get(aid, db=self._db["accounts"])
        return None if v is None else list(_ACC.unpack(v))

    def _state(self, txn, aid: bytes) -> list[int]:
        s = self._overlay.get(aid)
        if s is None:
            s = self._committed(txn, aid) or [0, 0]
            self._overlay[aid] = s
        return s

    def account(self, account_id: str, pending: bool = False) -> dict:
        """``{"id", "role", "balance", "seq"}`` of an account as of the last pulse (or with
        queued entries applied if ``pending``). Raises :class:`LedgerError` if unknown."""
        aid = _aid(account_id)
        with self.store.read() as txn:
            m = txn.get(aid, db=self._db["members"])
            if m is None:
                raise LedgerError(f"unknown account {account_id}")
            s = self._committed(txn, aid) or [0, 0]
        if pending and aid in self._overlay:
            s = self._overlay[aid]
        return {"id": account_id, "role": json.loads(m)["role"], "balance": s[0], "seq": s[1]}

    def balance(self, account_id: str, pulse: int | None = None) -> int:
        """Balance of an account in ``pulse``'s tree (default: the last pulse); 0 if it has
        no leaf there. Raises :class:`LedgerError` if the account is unknown, SMTError if
        the pulse's tree is not kept."""
        aid = _aid(account_id)
        if pulse is None:
            return self.account(account_id)["balance"]
        got = self.tree.get(aid, pulse)
        return 0 if got is None else got[0]

    def members(self) -> Iterator[dict]:
        """Every admitted account: ``{"id", "role"}`` in ID order."""
        with self.store.read() as txn:
            for k, v in txn.cursor(db=self._db["members"]):
                yield {"id": bytes(k).hex(), "role": json.loads(v)["role"]}

    def public_key(self, account_id: str) -> bytes | None:
        """The account's ed25519 public key, or None if it is not admitted."""
        with self.store.read() as txn:
            return txn.get(_aid(account_id), db=self._db["keys"])

    # -- admission ---------------------------------------------------------------------------
    def _register(self, who: str, pk: bytes, role: str, application: dict, approval: dict | None) -> None:
        aid = bytes.fromhex(who)
        entry = b"A" + canonical({"who": who, "key": pk.hex(), "role": role,
                                  "application": application, "approval": approval})
        with self.store.write() as txn:
            txn.put(aid, canonical({"role": role, "application": application, "approval": approval}),
                    db=self._db["members"])
            txn.put(aid, pk, db=self._db["keys"])
            self._queue(txn, [entry])
        self._new_accounts.add(aid)

    def admit(self, application: dict, approval: dict) -> str:
        """Admit an applicant: ``application`` signed by the applicant, ``approval`` signed
        by the supervisor and naming that application (Part II §3.2). The account appears
        in the tree (balance 0) at the next pulse. Returns the new account's ID.
        Raises :class:`LedgerError` on a bad or mismatched record or a second admission.
        """
        try:
            who = verify_record(application)
            verify_record(approval, self.supervisor)
        except BadSignature as e:
            raise LedgerError(f"refused admission: {e}") from e
        if application.get("type") != "apply" or application.get("who") != who:
            raise LedgerError("refused admission: not an application signed by the applicant")
        if application.get("org") != self.org_id:
            raise LedgerError("refused admission: the application is for another organization")
        if application.get("role") not in ("member", "guest"):
            raise LedgerError("refused admission: one joins as a member or a guest")
        if approval.get("type") != "approve" or approval.get("application") != R.record_hash(application) \
                or approval.get("who") != who or approval.get("role") != application["role"]:
            raise LedgerError("refused admission: the approval does not confirm this application")
        if self.public_key(who) is not None:
            raise LedgerError(f"refused admission: {who} is already admitted")
        self._register(who, bytes.fromhex(application["key"]), application["role"], application, approval)
        return who

    def approve(self, application: dict, supervisor: NodeKey | None = None) -> dict:
        """Sign the approval of ``application`` as supervisor (default: this node's key) and
        admit the applicant. Returns the approval record. Raises :class:`LedgerError` if the
        key is not the supervisor's or the application is bad."""
        supervisor = supervisor or self.store.key
        if supervisor.id != self.supervisor:
            raise LedgerError(f"only the supervisor {self.supervisor} approves applications")
        if not isinstance(application, dict) or "org" not in application or "who" not in application \
                or application.get("role") not in ("member", "guest"):
            raise LedgerError("refused admission: not an application")
        ap = R.approval(supervisor, application)
        self.admit(application, ap)
        return ap

    def register_unchecked(self, accounts: list[tuple[str, bytes, str]]) -> None:
        """Register many accounts (ID, public key, role) with no application records, in one
        transaction. For benchmarks and migrations by the node's operator only: nothing is
        signed, so peers cannot check these admissions."""
        with self.store.write() as txn:
            entries = []
            for who, pk, role in accounts:
                aid = bytes.fromhex(who)
                txn.put(aid, canonical({"role": role, "application": None, "approval": None}),
                        db=self._db["members"])
                txn.put(aid, pk, db=self._db["keys"])
                self._new_accounts.add(aid)
                entries.append(b"A" + canonical({"who": who, "key": pk.hex(), "role": role,
                                                  "application": None, "approval": None}))
            self._queue(txn, entries)

    # -- rewards -------------------------------------------------------------------------------
    def announce_reward(self, grants: list[tuple[str, int]], reason: str, kind: str = "operation",
                        org_key: NodeKey | None = None) -> dict:
        """Announce a distribution signed by the organization key, with its reason; it is
        applied at the close of the open pulse and is the only way the total grows.
        Returns the signed reward record. Raises :class:`LedgerError` on an unknown
        recipient, a non-positive amount, an empty reason or an unknown kind."""
        if kind not in REWARD_KINDS:
            raise LedgerError(f"reward kind is one of {', '.join(REWARD_KINDS)}")
        if not reason.strip():
            raise LedgerError("a reward is announced with its reason")
        rec = R.reward(org_key or self.org_key(), self.open_pulse, kind, reason, grants)
        self.submit_reward(rec)
        return rec

    def submit_reward(self, rec: dict) -> None:
        """Queue a signed reward record (see :func:`records.reward`). Raises
        :class:`LedgerError` if it is not signed by the organization or is malformed."""
        try:
            verify_record(rec, self.org_id)
        except BadSignature as e:
            raise LedgerError(f"refused reward: {e}") from e
        if rec.get("type") != "reward" or rec.get("org") != self.org_id or rec.get("pulse") != self.open_pulse:
            raise LedgerError("refused reward: not a reward of this organization for the open pulse")
        grants = rec.get("grants")
        if not isinstance(grants, list) or not grants:
            raise LedgerError("refused reward: no grants")
        total = 0
        with self.store.read() as txn:
            for g in grants:
                if not (isinstance(g, list) and len(g) == 2 and is_id(g[0]) and isinstance(g[1], int)):
                    raise LedgerError("refused reward: a grant is [ID, amount]")
                if g[1] <= 0:
                    raise LedgerError("refused reward: amount not positive")
                if txn.get(bytes.fromhex(g[0]), db=self._db["keys"]) is None:
                    raise LedgerError(f"refused reward: unknown account {g[0]}")
                total += g[1]
            if self.total + self._minted + total > MAX_U64:
                raise LedgerError("refused reward: the total would pass 2**64-1")
            for who, amt in grants:
                if self._state(txn, bytes.fromhex(who))[0] + amt > MAX_U64:
                    raise LedgerError(f"refused reward: balance of {who} would overflow")
        with self.store.write() as txn:
            self._queue(txn, [b"R" + canonical(rec)])
        self._apply_reward(rec)

    def _apply_reward(self, rec: dict) -> None:
        with self.store.read() as txn:
            for who, amt in rec["grants"]:
                self._state(txn, bytes.fromhex(who))[0] += amt
                self._minted += amt

    # -- transfers -----------------------------------------------------------------------------
    def _check(self, txn, t: R.Transfer, sigs_checked: bool, pks: dict | None = None) -> str | None:
        """Why ``t`` is refused against the current state, or None (then it is applied to
        the overlay). ``pks``: public keys already read (ID -> key or None)."""
        if t.org != self.org_bytes:
            return "transfer is for another organization"
        if t.sender == t.receiver:
            return "sender and receiver are the same account"
        if not (0 < t.amount <= MAX_U64):
            return "amount not positive"
        if pks is not None:
            spk = pks[t.sender]
            rpk = pks[t.receiver]
        else:
            keys = self._db["keys"]
            spk = txn.get(t.sender, db=keys)
            rpk = txn.get(t.receiver, db=keys)
        if spk is None:
            return f"unknown account: sender {t.sender.hex()}"
        if rpk is None:
            return f"unknown account: receiver {t.receiver.hex()}"
        if not (self.open_pulse - 1 <= t.pulse <= self.open_pulse):
            return f"wrong pulse {t.pulse}: the open pulse is {self.open_pulse}"
        if not sigs_checked:
            why = t.check_signatures(spk, rpk)
            if why:
                return why
        s = self._state(txn, t.sender)
        if t.seq <= s[1]:
            return f"replayed sequence {t.seq}: the sender's last is {s[1]}"
        if t.seq > s[1] + 1:
            return f"skipped sequence {t.seq}: the sender's next is {s[1] + 1}"
        if t.amount > s[0]:
            return f"balance would go negative: {s[0]} < {t.amount}"
        r = self._state(txn, t.receiver)
        if r[0] + t.amount > MAX_U64:
            return "receiver's balance would overflow"
        s[0] -= t.amount
        s[1] = t.seq
        r[0] += t.amount
        return None

    def submit(self, t: R.Transfer) -> None:
        """Check a countersigned transfer and queue it for the open pulse.
        Raises :class:`TransferRefused` with the reason if it is refused."""
        [why] = self.submit_many([t], workers=0)
        if why:
            raise TransferRefused(why)

    def submit_many(self, transfers: list[R.Transfer], workers: int = 2, chunk: int = 256) -> list[str | None]:
        """Check and queue many transfers in order; returns, for each, None (queued) or the
        reason it was refused. All queued entries are written in one transaction.

        With ``workers`` > 0 (and more than ``chunk`` transfers) it runs in three phases:
        this thread reads the public keys of every account named (one LMDB pass, before
        any thread starts); ``workers`` threads verify both signatures of ``chunk``
        transfers per task through libsodium, which runs outside the GIL, while this
        thread only waits; then this thread checks sequences and balances in order. No
        thread touches LMDB while another runs Python: py-lmdb drops the GIL on every
        call, and a thread taking it back behind a busy one waits out the 5 ms switch
        interval, which made a get cost ~16 us instead of ~1. ``workers=0`` checks inline.
        """
        if workers <= 0 or len(transfers) <= chunk:
            out: list[str | None] = []
            entries: list[bytes] = []
            with self.store.read() as txn:
                for t in transfers:
                    out.append(self._check_and_wire(txn, t, False, entries))
            self._queue_entries(entries)
            return out
        pks: dict[bytes, bytes | None] = {}
        with self.store.read() as txn:
            keys = self._db["keys"]
            get = txn.get
            for t in transfers:
                for aid in (t.sender, t.receiver):
                    if aid not in pks:
                        pks[aid] = get(aid, db=keys) if isinstance(aid, bytes) and len(aid) == 20 else None
        tags = (R.TRANSFER_TAG, R.ACCEPT_TAG)

        def sigs(batch: list[R.Transfer]) -> list[str | None]:
            ok = R.sig_ok
            res: list[str | None] = []
            for t in batch:
                spk = pks[t.sender]
                rpk = pks[t.receiver]
                if spk is None or rpk is None:
                    res.append(None)  # refused with its reason by the ordered check
                    continue
                try:
                    core = t.core()
                except R.RecordError as e:
                    res.append(str(e))
                    continue
                if not ok(spk, tags[0] + core, t.sender_sig):
                    res.append("bad signature: the sender's signature does not verify")
                elif not ok(rpk, tags[1] + core, t.receiver_sig):
                    res.append("bad signature: the receiver's countersignature does not verify")
                else:
                    res.append(None)
            return res

        batches = [transfers[i:i + chunk] for i in range(0, len(transfers), chunk)]
        with ThreadPoolExecutor(workers) as pool:
            verdicts = [why for res in pool.map(sigs, batches) for why in res]
        out = []
        entries = []
        with self.store.read() as txn:
            for t, why in zip(transfers, verdicts):
                out.append(why or self._check_and_wire(txn, t, True, entries, pks))
        self._queue_entries(entries)
        return out

    def _queue_entries(self, entries: list[bytes]) -> None:
        if entries:
            with self.store.write() as txn:
                self._queue(txn, entries)

    def _check_and_wire(self, txn, t: R.Transfer, sigs_checked: bool, entries: list[bytes],
                        pks: dict | None = None) -> str | None:
        try:
            why = self._check(txn, t, sigs_checked, pks)
            if why is None:
                entries.append(b"T" + t.to_wire())
            return why
        except R.RecordError as e:
            return str(e)

    # -- the queue -------------------------------------------------------------------------------
    def _queue(self, txn, entries: list[bytes]) -> None:
        n = len(self._entries)
        txn.cursor(db=self._db["pending"]).putmulti(
            [(_U32.pack(n + i), e) for i, e in enumerate(entries)], append=True)
        self._entries.extend(entries)

    def _replay(self, e: bytes) -> None:
        """Rebuild the in-memory overlay from a queued entry (after a restart)."""
        self._entries.append(e)
        kind = e[:1]
        if kind == b"A":
            self._new_accounts.add(bytes.fromhex(json.loads(e[1:])["who"]))
        elif kind == b"R":
            self._apply_reward(json.loads(e[1:]))
        elif kind == b"T":
            t = R.Transfer.from_wire(e[1:])
            with self.store.read() as txn:
                s, r = self._state(txn, t.sender), self._state(txn, t.receiver)
            s[0] -= t.amount
            s[1] = t.seq
            r[0] += t.amount

    def pending(self) -> list[dict]:
        """The queued entries of the open pulse, as JSON-able dicts."""
        return [entry_json(e) for e in self._entries]

def _aid(account_id: str) -> bytes:
    if not is_id(account_id):
        raise LedgerError(f"not an account ID (40 hex): {account_id!r}")
    return bytes.fromhex(account_id)
