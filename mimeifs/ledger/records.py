"""Signed records of an organization's ledger.

Sources: seed 002 Part II §III (organization: key pair, supervisor, member, guest, join by
application and the supervisor's confirmation), §IV and §VI 6.3 (distribution by the
organization "announced network wide, with reasons"), §VII 7.2.1 (a transfer is
"confirmed by both parties"), §V and §VI 6.2 (network pulse, bookkeeper).

JSON records are signed with :meth:`mimeifs.ids.NodeKey.sign_record` (canonical JSON, the
``key`` and ``sig`` fields added): organization, application, approval, reward, pulse.

A transfer is the ledger's hot path, so it has a fixed binary form instead (220 bytes)::

    body = b"MIMEI-TRANSFER-1" (16) || org (20) || sender (20) || receiver (20)
           || amount (u64 BE) || seq (u64 BE) || pulse (u64 BE)                  = 108 bytes
    wire = body[16:] (92) || sender signature (64) || receiver signature (64)
    sender signs     body
    receiver signs   b"MIMEI-ACCEPT-1\\0\\0" || body[16:]   (its countersignature)

The distinct prefixes keep one party's signature from being replayed as the other's.
Public keys are not in the wire form: the ledger looks them up by account ID (an account
is known once admitted). Signatures are ed25519 (RFC 8032) through libsodium, which runs
outside the GIL, so many can be checked in worker threads.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

from ..ids import NodeKey, canonical, content_hash, is_id

TRANSFER_TAG = b"MIMEI-TRANSFER-1"
ACCEPT_TAG = b"MIMEI-ACCEPT-1\0\0"
_BODY = struct.Struct(">20s20s20sQQQ")
WIRE_BYTES = _BODY.size + 128  # 220


class RecordError(ValueError):
    """A record is malformed or its signature does not verify."""


try:  # libsodium through pynacl's cffi module: no per-call key objects or allocations
    from nacl._sodium import ffi as _ffi, lib as _lib
except ImportError:  # pragma: no cover - pynacl without its private module
    _lib = None
_tls = threading.local()


def sig_ok(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` (64 bytes) is ``public_key``'s ed25519 signature of ``message``.

    Calls libsodium's crypto_sign_open (RFC 8032 verification) with a per-thread output
    buffer; cffi releases the GIL during the call, so threads verify in parallel.
    """
    if _lib is not None:
        if len(public_key) != 32 or len(signature) != 64:
            return False
        sm = signature + message
        buf = getattr(_tls, "buf", None)
        if buf is None or len(buf) < len(sm):
            buf = _tls.buf = _ffi.new("unsigned char[]", max(len(sm), 256))
            _tls.n = _ffi.new("unsigned long long *")
        return _lib.crypto_sign_open(buf, _tls.n, sm, len(sm), public_key) == 0
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Transfer:
    """A transfer of ``amount`` units from ``sender`` to ``receiver`` (20-byte IDs).

    ``seq`` is the sender's next sequence number (1 for its first transfer), ``pulse`` the
    pulse it is meant for, ``org`` the organization's 20-byte ID. ``sender_sig`` and
    ``receiver_sig`` are 64-byte ed25519 signatures (empty until made).
    """

    org: bytes
    sender: bytes
    receiver: bytes
    amount: int
    seq: int
    pulse: int
    sender_sig: bytes = b""
    receiver_sig: bytes = b""

    def core(self) -> bytes:
        """The 92 signed bytes after the tag. Raises RecordError on out-of-range fields."""
        try:
            return _BODY.pack(self.org, self.sender, self.receiver, self.amount, self.seq, self.pulse)
        except struct.error as e:
            raise RecordError(f"transfer field out of range: {e}") from e

    def body(self) -> bytes:
        """What the sender signs: TRANSFER_TAG || core."""
        return TRANSFER_TAG + self.core()

    @classmethod
    def make(cls, sender_key: NodeKey, org: str, receiver: str, amount: int, seq: int, pulse: int) -> "Transfer":
        """A transfer signed by the sender (IDs as 40 hex). Not yet countersigned."""
        t = cls(bytes.fromhex(org), bytes.fromhex(sender_key.id), bytes.fromhex(receiver), amount, seq, pulse)
        return cls(t.org, t.sender, t.receiver, amount, seq, pulse, sender_key.sign(t.body()), b"")

    def countersign(self, receiver_key: NodeKey) -> "Transfer":
        """A copy with the receiver's countersignature. Raises RecordError if the key is
        not the receiver's."""
        if bytes.fromhex(receiver_key.id) != self.receiver:
            raise RecordError("only the receiver countersigns a transfer")
        sig = receiver_key.sign(ACCEPT_TAG + self.core())
        return Transfer(self.org, self.sender, self.receiver, self.amount, self.seq, self.pulse, self.sender_sig, sig)

    def check_signatures(self, sender_pk: bytes, receiver_pk: bytes) -> str | None:
        """None if both signatures verify, else the reason (a string)."""
        core = self.core()
        if not sig_ok(sender_pk, TRANSFER_TAG + core, self.sender_sig):
            return "bad signature: the sender's signature does not verify"
        if not sig_ok(receiver_pk, ACCEPT_TAG + core, self.receiver_sig):
            return "bad signature: the receiver's countersignature does not verify"
        return None

    def to_wire(self) -> bytes:
        """The 220-byte wire form."""
        if len(self.sender_sig) != 64 or len(self.receiver_sig) != 64:
            raise RecordError("a transfer needs both signatures before it is sent")
        return self.core() + self.sender_sig + self.receiver_sig

    @classmethod
    def from_wire(cls, data: bytes) -> "Transfer":
        """Decode :meth:`to_wire`. Raises RecordError if the size is wrong."""
        if len(data) != WIRE_BYTES:
            raise RecordError(f"a transfer is {WIRE_BYTES} bytes, got {len(data)}")
        org, s, r, amount, seq, pulse = _BODY.unpack_from(data)
        return cls(org, s, r, amount, seq, pulse, bytes(data[92:156]), bytes(data[156:220]))

    def id(self) -> str:
        """blake3 of the wire form, 64 hex: names this transfer in history and disputes."""
        return content_hash(self.to_wire()).hex()

    def to_json(self) -> dict:
        """JSON form: hex IDs and signatures, integers."""
        return {"type": "transfer", "org": self.org.hex(), "from": self.sender.hex(), "to": self.receiver.hex(),
                "amount": self.amount, "seq": self.seq, "pulse": self.pulse,
                "sender_sig": self.sender_sig.hex(), "receiver_sig": self.receiver_sig.hex()}

    @classmethod
    def from_json(cls, obj: dict) -> "Transfer":
        """Decode :meth:`to_json`. Raises RecordError on a malformed record."""
        try:
            if obj.get("type") != "transfer":
                raise RecordError("not a transfer record")
            for f in ("org", "from", "to"):
                if not is_id(obj[f]):
                    raise RecordError(f"transfer field {f!r} is not a 40-hex ID")
            amount, seq, pulse = obj["amount"], obj["seq"], obj["pulse"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (amount, seq, pulse)):
                raise RecordError("amount, seq and pulse are integers")
            return cls(bytes.fromhex(obj["org"]), bytes.fromhex(obj["from"]), bytes.fromhex(obj["to"]),
                       amount, seq, pulse, bytes.fromhex(obj.get("sender_sig", "")),
                       bytes.fromhex(obj.get("receiver_sig", "")))
        except RecordError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RecordError(f"malformed transfer: {e}") from e


def record_hash(record: dict) -> str:
    """blake3 of a record's canonical JSON (with its signature), 64 hex: links records."""
    return content_hash(canonical(record)).hex()


def org_record(org_key: NodeKey, name: str, supervisor: str, created: float) -> dict:
    """The organization's founding record, signed by the organization key (Part II §3.1):
    ``{"type": "org", "org": ID, "name", "supervisor": founder ID, "created": unix s}``."""
    return org_key.sign_record({"type": "org", "org": org_key.id, "name": name,
                                "supervisor": supervisor, "created": created})


def application(applicant: NodeKey, org: str, role: str = "member", note: str = "") -> dict:
    """A request to join ``org`` as ``role`` ("member" or "guest"), signed by the applicant
    (Part II §3.2): ``{"type": "apply", "org", "who": ID, "role", "note"}``."""
    if role not in ("member", "guest"):
        raise RecordError("one applies to be a member or a guest")
    return applicant.sign_record({"type": "apply", "org": org, "who": applicant.id, "role": role, "note": note})


def approval(supervisor: NodeKey, app: dict) -> dict:
    """The supervisor's confirmation of an application (Part II §3.2):
    ``{"type": "approve", "org", "who", "role", "application": record hash}``."""
    return supervisor.sign_record({"type": "approve", "org": app["org"], "who": app["who"],
                                   "role": app["role"], "application": record_hash(app)})


def reward(org_key: NodeKey, pulse: int, kind: str, reason: str, grants: list[tuple[str, int]]) -> dict:
    """A distribution announced by the organization, with its reason (Part II §IV, §6.3):
    ``{"type": "reward", "org", "pulse", "kind", "reason", "grants": [[ID, amount], ...]}``,
    signed by the organization key. ``kind``: construction, content, mining, operation."""
    return org_key.sign_record({"type": "reward", "org": org_key.id, "pulse": pulse, "kind": kind,
                                "reason": reason, "grants": [[i, a] for i, a in grants]})
