"""Inclusion and non-inclusion proofs of the sparse Merkle tree, and their pure verifier.

Source: seed 002 Part II §VI 6.6 "Account Inquiry" ("authenticity of account information
that user chooses to demonstrate can be verified by checking the synopsis recorded in
public ledger"); the hashing rules are those of :mod:`mimeifs.ledger.smt`.

A proof for a 20-byte ``key`` against a root hash holds the leaf reached by following
``key``'s bits from the root (or nothing, for the empty tree), the split depths met on the
way and the sibling hash at each, top down.

- inclusion: the leaf's key is ``key``; it shows (balance, seq).
- non-inclusion: the leaf's key differs from ``key`` but agrees with it at every split
  depth on the path, so ``key`` would have been found there; or the tree is empty.

Byte encoding (version 1)::

    0x01 | kind(1) | key(20) | leaf | bitmap(20) | siblings (32 each, top down)
    kind 0 inclusion:     leaf = balance(u64 BE) || seq(u64 BE)          (16 bytes)
    kind 1 non-inclusion: leaf = other key(20) || balance(8) || seq(8)   (36 bytes)
    kind 2 empty tree:    no leaf, bitmap all zero, no siblings
    bitmap: bit d (MSB first) is set iff the path splits at depth d

JSON form: ``{"v": 1, "kind": "inclusion"|"non-inclusion"|"empty", "key": hex,
"leaf": {"id": hex, "balance": int, "seq": int} | null, "depths": [int], "siblings": [hex]}``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from blake3 import blake3

LEAF = b"\x00"
NODE = b"\x01"
EMPTY_HASH = blake3(b"\x02").digest()
VERSION = 1
_LEAF = struct.Struct(">20sQQ")


class BadProof(ValueError):
    """A proof is malformed, or does not lead to the given root, or is about another key."""


@dataclass(frozen=True)
class Proof:
    """A proof about ``key`` (20 bytes).

    ``leaf`` is the 36-byte leaf value (key, balance, seq) at the end of the path, or None
    for the empty tree. ``depths`` are the split depths top down (strictly increasing,
    0..159) and ``siblings`` the 32-byte sibling hash at each.
    """

    key: bytes
    leaf: bytes | None
    depths: tuple[int, ...]
    siblings: tuple[bytes, ...]

    @property
    def kind(self) -> str:
        """'inclusion', 'non-inclusion' or 'empty'."""
        if self.leaf is None:
            return "empty"
        return "inclusion" if self.leaf[:20] == self.key else "non-inclusion"

    @property
    def account(self) -> tuple[int, int] | None:
        """(balance, seq) if this is an inclusion proof, else None."""
        if self.leaf is None or self.leaf[:20] != self.key:
            return None
        _, bal, seq = _LEAF.unpack(self.leaf)
        return bal, seq

    # -- encodings --------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The compact byte encoding (see the module docstring)."""
        bm = 0
        for d in self.depths:
            bm |= 1 << (159 - d)
        if self.leaf is None:
            head = bytes((VERSION, 2)) + self.key
        elif self.leaf[:20] == self.key:
            head = bytes((VERSION, 0)) + self.key + self.leaf[20:]
        else:
            head = bytes((VERSION, 1)) + self.key + self.leaf
        return head + bm.to_bytes(20, "big") + b"".join(self.siblings)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Proof":
        """Decode :meth:`to_bytes`. Raises :class:`BadProof` on any malformation."""
        data = bytes(data)
        if len(data) < 22 or data[0] != VERSION:
            raise BadProof("not a version-1 proof")
        kind, key = data[1], data[2:22]
        if kind == 0:
            leaf, off = key + data[22:38], 38
        elif kind == 1:
            leaf, off = data[22:58], 58
        elif kind == 2:
            leaf, off = None, 22
        else:
            raise BadProof(f"unknown proof kind {kind}")
        if len(data) < off + 20 or (leaf is not None and len(leaf) != 36):
            raise BadProof("proof is truncated")
        bm = int.from_bytes(data[off:off + 20], "big")
        depths = tuple(d for d in range(160) if (bm >> (159 - d)) & 1)
        body = data[off + 20:]
        if len(body) != 32 * len(depths):
            raise BadProof(f"proof has {len(body)} sibling bytes for {len(depths)} depths")
        sibs = tuple(body[i:i + 32] for i in range(0, len(body), 32))
        if kind == 1 and leaf[:20] == key:
            raise BadProof("non-inclusion proof names the key itself")
        if kind == 2 and depths:
            raise BadProof("an empty-tree proof has no path")
        return cls(key, leaf, depths, sibs)

    def to_json(self) -> dict:
        """The JSON form (see the module docstring)."""
        leaf = None
        if self.leaf is not None:
            k, b, s = _LEAF.unpack(self.leaf)
            leaf = {"id": k.hex(), "balance": b, "seq": s}
        return {"v": VERSION, "kind": self.kind, "key": self.key.hex(), "leaf": leaf,
                "depths": list(self.depths), "siblings": [s.hex() for s in self.siblings]}

    @classmethod
    def from_json(cls, obj) -> "Proof":
        """Decode :meth:`to_json`. Raises :class:`BadProof` on any malformation."""
        try:
            if obj["v"] != VERSION:
                raise BadProof("not a version-1 proof")
            key = bytes.fromhex(obj["key"])
            leaf = None
            if obj["leaf"] is not None:
                lf = obj["leaf"]
                leaf = _LEAF.pack(bytes.fromhex(lf["id"]), int(lf["balance"]), int(lf["seq"]))
            depths = tuple(int(d) for d in obj["depths"])
            sibs = tuple(bytes.fromhex(s) for s in obj["siblings"])
            kind = obj["kind"]
        except BadProof:
            raise
        except (KeyError, TypeError, ValueError, struct.error) as e:
            raise BadProof(f"malformed proof JSON: {e}") from e
        p = cls(key, leaf, depths, sibs)
        if p.kind != kind:
            raise BadProof(f"proof says {kind!r} but its leaf makes it {p.kind!r}")
        return p


def compute_root(proof: Proof) -> bytes:
    """The root hash the proof leads to. Raises :class:`BadProof` if it is malformed.

    Pure: needs no store. Checks key and sibling sizes, that depths strictly increase
    within 0..159, and that a non-inclusion leaf agrees with the key at every depth.
    """
    key = proof.key
    if not isinstance(key, bytes) or len(key) != 20:
        raise BadProof("proof key is not 20 bytes")
    depths, sibs = proof.depths, proof.siblings
    if len(depths) != len(sibs):
        raise BadProof("proof has as many depths as siblings")
    if proof.leaf is None:
        if depths:
            raise BadProof("an empty-tree proof has no path")
        return EMPTY_HASH
    if len(proof.leaf) != 36:
        raise BadProof("proof leaf is not 36 bytes")
    k = int.from_bytes(key, "big")
    lk = int.from_bytes(proof.leaf[:20], "big")
    prev = -1
    for d in depths:
        if not (prev < d < 160):
            raise BadProof("proof depths must increase strictly within 0..159")
        prev = d
        if ((k ^ lk) >> (159 - d)) & 1:
            raise BadProof(f"leaf and key disagree at split depth {d}")
    h = blake3(LEAF + proof.leaf).digest()
    for i in range(len(depths) - 1, -1, -1):
        d, s = depths[i], sibs[i]
        if len(s) != 32:
            raise BadProof("a sibling hash is 32 bytes")
        if (k >> (159 - d)) & 1:
            h = blake3(NODE + bytes((d,)) + s + h).digest()
        else:
            h = blake3(NODE + bytes((d,)) + h + s).digest()
    return h


def verify(proof, root: bytes, key: bytes | None = None) -> tuple[int, int] | None:
    """Check ``proof`` (a :class:`Proof`, its bytes or its JSON dict) against ``root``.

    ``root`` is the 32-byte root hash (or its 64-hex string); ``key`` (20 bytes or 40 hex),
    if given, must be the key the proof is about. Returns (balance, seq) for an inclusion
    proof, None for a non-inclusion proof. Raises :class:`BadProof` if the proof is
    malformed, about another key, or leads to another root. Pure function: no store.
    """
    if isinstance(proof, (bytes, bytearray, memoryview)):
        proof = Proof.from_bytes(proof)
    elif isinstance(proof, dict):
        proof = Proof.from_json(proof)
    elif not isinstance(proof, Proof):
        raise BadProof("not a proof")
    if isinstance(root, str):
        try:
            root = bytes.fromhex(root)
        except ValueError as e:
            raise BadProof("root is not hex") from e
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key)
        except ValueError as e:
            raise BadProof("key is not hex") from e
    if len(root) != 32:
        raise BadProof("a root hash is 32 bytes")
    if key is not None and key != proof.key:
        raise BadProof(f"proof is about {proof.key.hex()}, not {key.hex()}")
    if compute_root(proof) != root:
        raise BadProof("proof does not lead to this root")
    return proof.account


def check(proof, root: bytes, key: bytes | None = None) -> bool:
    """True if :func:`verify` accepts the proof, False otherwise."""
    try:
        verify(proof, root, key)
        return True
    except BadProof:
        return False
