"""References between MiMei (seed 001 §6.3: MMAddRef / MMDelRef / MMGetRef), as a mixin
of :class:`~.mimei.Engine`.

Records (engine sub-databases): ``refs`` source (20) + target (20) for cur's references,
``refs_in`` its reverse, ``vrefs`` target + source + n (4) for the references each
version keeps (written with the version record). A referenced MiMei is not removed.
"""

from __future__ import annotations

import errno
import struct

from .. import ids
from .db import scan_prefix
from .errors import MiMeiError

_N = struct.Struct(">I")


def id20(mimei: str) -> bytes:
    """The 20 bytes of a MiMei ID (40 hex). Raises NotFound for anything else."""
    if not ids.is_id(mimei):
        raise MiMeiError(errno.ENOENT, f"not a MiMei ID: {mimei!r}")
    return bytes.fromhex(mimei)


_id20 = id20


class References:
    """cur's references and who refers to a MiMei (mixed into the Engine, whose
    ``store``, ``d_refs``, ``d_refs_in``, ``d_vrefs``, ``d_state``, ``can_write`` and
    ``_state`` it uses)."""

    def referrers(self, mimei: str) -> list[str]:
        """IDs of MiMei whose cur or any version references ``mimei``."""
        return sorted(self.referrer_detail(mimei))

    def referrer_detail(self, mimei: str) -> dict[str, dict]:
        """Who refers to ``mimei`` and from where: ``{source ID: {"cur": bool,
        "versions": [n, ...]}}`` (a source's own references to itself left out)."""
        m20 = _id20(mimei)
        out: dict[str, dict] = {}
        with self.store.read() as txn:
            for k in scan_prefix(txn, self.d_refs_in, m20, values=False):
                out.setdefault(k[20:40].hex(), {"cur": False, "versions": []})["cur"] = True
            for k in scan_prefix(txn, self.d_vrefs, m20, values=False):
                src = k[20:40].hex()
                out.setdefault(src, {"cur": False, "versions": []})["versions"].append(_N.unpack(k[40:44])[0])
        out.pop(mimei, None)
        return out

    # ------------------------------------------------------------------ references
    def _refs_out(self, txn, m20: bytes) -> list[str]:
        return [k[20:].hex() for k in scan_prefix(txn, self.d_refs, m20, values=False)]

    def refs(self, mimei: str) -> tuple[list[str], list[str]]:
        """(references of cur out of ``mimei``, MiMei referring to it)."""
        m20 = _id20(mimei)
        with self.store.read() as txn:
            self._state(txn, m20)
            return self._refs_out(txn, m20), self.referrers(mimei)

    def add_ref(self, src: str, dst: str) -> None:
        """MMAddRef: ``src`` references ``dst``. Raises ENOENT, EACCES, EINVAL (self)."""
        s20, d20 = _id20(src), _id20(dst)
        if s20 == d20:
            raise MiMeiError(errno.EINVAL, "a MiMei cannot reference itself")
        if not self.can_write(s20):
            raise MiMeiError(errno.EACCES, f"{src} was not authored by this node")
        with self.store.write() as txn:
            self._state(txn, s20)
            self._state(txn, d20)
            txn.put(s20 + d20, b"", db=self.d_refs)
            txn.put(d20 + s20, b"", db=self.d_refs_in)

    def del_ref(self, src: str, dst: str) -> None:
        """MMDelRef. Raises ENOENT if there is no such reference."""
        s20, d20 = _id20(src), _id20(dst)
        if not self.can_write(s20):
            raise MiMeiError(errno.EACCES, f"{src} was not authored by this node")
        with self.store.write(room=False) as txn:
            if not txn.delete(s20 + d20, db=self.d_refs):
                raise MiMeiError(errno.ENOENT, f"{src} does not reference {dst}")
            txn.delete(d20 + s20, db=self.d_refs_in)

    def _set_refs(self, txn, m20: bytes, targets: list[str]) -> None:
        """Make cur's references exactly ``targets`` (hex IDs); a target this store
        does not hold is left out."""
        for t in self._refs_out(txn, m20):
            txn.delete(m20 + bytes.fromhex(t), db=self.d_refs)
            txn.delete(bytes.fromhex(t) + m20, db=self.d_refs_in)
        for t in targets:
            t20 = bytes.fromhex(t)
            if t20 != m20 and txn.get(t20, db=self.d_state) is not None:
                txn.put(m20 + t20, b"", db=self.d_refs)
                txn.put(t20 + m20, b"", db=self.d_refs_in)
