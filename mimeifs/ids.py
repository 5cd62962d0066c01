"""Keys, 160-bit IDs, signatures and the canonical encoding of signed records.

Sources: DESIGN.md "Identities and IDs"; seed 002 Part I §V ("MiMei ID is based on
information of creator, associated application, MiMei type and MiMei mark") and Part II
§V ("Each ID is 160 bits long").

- A user or node is an ed25519 key pair (pynacl / libsodium, RFC 8032).
- Its ID is the first 20 bytes of blake3(public key), 40 lowercase hex characters.
- A MiMei ID is the first 20 bytes of blake3 over the length-prefixed fields
  (author ID, app type, MiMei type, mark): 40 hex characters, never changing.
- Content is addressed by the full 32-byte blake3 (64 hex characters); a file's Mac ID
  is blake3 of its bytes, so ``b3sum FILE`` prints it.
- A signed record is a JSON object; the signature covers its canonical encoding
  (sorted keys, no whitespace, UTF-8) without the ``sig`` field.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

import blake3
import nacl.exceptions
import nacl.signing

ID_BYTES = 20
HASH_BYTES = 32
SIG_FIELD = "sig"


class BadSignature(ValueError):
    """A signature does not verify, or a signed record is malformed."""


def content_hash(data: bytes | bytearray | memoryview) -> bytes:
    """blake3 of ``data``: 32 bytes. Releases the GIL for large buffers."""
    return blake3.blake3(data, max_threads=1).digest()


def id_of_public_key(public_key: bytes) -> str:
    """The 160-bit ID of an ed25519 public key (32 bytes): 40 hex characters."""
    if len(public_key) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return blake3.blake3(public_key).digest()[:ID_BYTES].hex()


def _field(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def mimei_id(author_id: str, app_type: str, mimei_type: str, mark: str) -> str:
    """MiMei ID: first 20 bytes of blake3(len|author ID|len|app type|len|type|len|mark).

    Each field is UTF-8 with a 4-byte big-endian length prefix, so no two field
    tuples share an encoding. Returns 40 lowercase hex characters.
    """
    parts = (bytes.fromhex(author_id), app_type.encode(), mimei_type.encode(), mark.encode())
    return blake3.blake3(b"mimei-id\0" + b"".join(_field(p) for p in parts)).digest()[:ID_BYTES].hex()


_ID_RE = re.compile(r"[0-9a-f]{%d}" % (2 * ID_BYTES))
_HASH_RE = re.compile(r"[0-9a-f]{%d}" % (2 * HASH_BYTES))


def is_id(s: str) -> bool:
    """True if ``s`` is a well-formed 160-bit ID (40 lowercase hex characters)."""
    return isinstance(s, str) and _ID_RE.fullmatch(s) is not None


def is_hash(s: str) -> bool:
    """True if ``s`` is a well-formed content hash (64 lowercase hex characters)."""
    return isinstance(s, str) and _HASH_RE.fullmatch(s) is not None


def canonical(obj: Any) -> bytes:
    """Canonical JSON encoding: sorted keys, no whitespace, UTF-8 (the bytes signed)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class NodeKey:
    """An ed25519 key pair: the identity of a user or node.

    ``id`` is the 40-hex ID, ``public_key`` 32 bytes. The seed is kept in a file of mode
    0600 as 64 hex characters.
    """

    def __init__(self, signing_key: nacl.signing.SigningKey):
        self._sk = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.id: str = id_of_public_key(self.public_key)

    @classmethod
    def generate(cls) -> "NodeKey":
        """A fresh random key pair."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "NodeKey":
        """The key pair of a 32-byte seed (deterministic; for tests and tools)."""
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load(cls, path: str) -> "NodeKey":
        """Read a key file written by :meth:`save`. Raises OSError, ValueError."""
        with open(path, "r", encoding="ascii") as f:
            seed = bytes.fromhex(f.read().strip())
        if len(seed) != 32:
            raise ValueError(f"{path}: not an ed25519 seed")
        return cls.from_seed(seed)

    def save(self, path: str) -> None:
        """Write the seed as hex to ``path`` with mode 0600 (refuses to overwrite)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(bytes(self._sk).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def sign(self, message: bytes) -> bytes:
        """Detached ed25519 signature (64 bytes) of ``message``."""
        return self._sk.sign(message).signature

    def sign_record(self, record: dict) -> dict:
        """A copy of ``record`` with ``key`` (public key hex) and ``sig`` (hex) added.

        The signature covers :func:`canonical` of the record without ``sig``.
        """
        rec = dict(record)
        rec.pop(SIG_FIELD, None)
        rec["key"] = self.public_key.hex()
        rec[SIG_FIELD] = self.sign(canonical(rec)).hex()
        return rec


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an ed25519 signature. Raises :class:`BadSignature` if it does not verify."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError, ValueError) as e:
        raise BadSignature("signature does not verify") from e


def verify_record(record: dict, signer_id: str | None = None) -> str:
    """Verify a record made by :meth:`NodeKey.sign_record`; returns the signer's ID.

    If ``signer_id`` is given, the record's key must belong to that ID.
    Raises :class:`BadSignature` on a missing field, a wrong signer or a bad signature.
    """
    if not isinstance(record, dict):
        raise BadSignature("a signed record is a JSON object")
    try:
        key = bytes.fromhex(record["key"])
        sig = bytes.fromhex(record[SIG_FIELD])
    except (KeyError, ValueError, TypeError) as e:
        raise BadSignature("signed record lacks a valid key or sig") from e
    if len(key) != 32:
        raise BadSignature("public key is not 32 bytes")
    who = id_of_public_key(key)
    if signer_id is not None and who != signer_id:
        raise BadSignature(f"signed by {who}, expected {signer_id}")
    body = {k: v for k, v in record.items() if k != SIG_FIELD}
    verify(key, canonical(body), sig)
    return who
