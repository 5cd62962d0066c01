"""The serving side: what this node answers a peer's requests with (``wire.py``).

- ``want`` (Bitswap 1.2's want-block): the engine's ``chunks.export`` gives the blocks
  (a chunk want is answered with its whole pack plus members when most of the pack is
  wanted; a ``pack`` want with the pack as stored), sent in ``blocks`` frames of up to
  :data:`BLOCKS_FRAME` payload bytes (a bigger block alone), then one ``dont_have`` for what this
  node lacks, then ``done``. Every frame is charged to the peer's letter of credit
  before it is queued (``meter.py``); past the cap the answer is an ``error`` with code
  ``credit`` and a message saying how much was used of how much.
- ``where``: for up to :data:`MAX_WHERE` chunk hashes, where this node keeps each one
  (``engine.chunks.locate``: pack id, offset, length, pack size), in one ``have`` frame.
  A pinning peer asks this, then wants whole packs (kind ``pack``), each sent as stored.
- ``records``: the MiMei's signed records (``engine.records``) if its rights let this
  peer read it: guest read (``rights & 0o004``) for anyone, member read (``0o040``) for
  an account this node's organization ledger lists as a member or supervisor; otherwise
  ``forbidden``, saying so. Blocks are addressed by hash only; the root hashes of a
  private MiMei are never handed to a non-member (nor announced in the DHT), which is
  what keeps its blocks from being asked for.
- ``pin``: save on demand (seed 001 §8.2). Accepted only if this node accepts pins at
  all, the asking peer has credit here (its letter is good), and the MiMei's newest
  version fits with ``min_free`` bytes to spare; declined with the reason otherwise.
- ``iou``: a borrower's signed, cumulative IOU, kept in the credit book if it verifies
  and is newer (``CreditBook.accept_iou``).
"""

from __future__ import annotations

import json
import logging
import os

import trio

from ..engine.errors import EngineError, NotFound
from ..ids import is_id
from ..ledger.credit import CreditError, CreditRefused
from .conn import Connection, ServeError
from .wire import (E_BAD_RECORD, E_CREDIT, E_DECLINED, E_FORBIDDEN, E_MALFORMED, E_NOT_FOUND, encode)

log = logging.getLogger("mimeifs.net")

KINDS = ("chunk", "manifest", "tree", "pack")
MAX_WANTS = 1024
MAX_WHERE = 8192
#: Blocks of one answer share a ``blocks`` frame up to this many payload bytes (one
#: frame per small block cost ~60 µs of the reader's event loop each: a pin of 50,000
#: small files sent 100,000 frames).
BLOCKS_FRAME = 1 << 20
GUEST_READ, MEMBER_READ = 0o004, 0o040


def parse_wants(raw) -> list[tuple[str, bytes]]:
    """Wants off the wire -> [(kind, 32-byte key)]. Raises ServeError (malformed)."""
    if not isinstance(raw, list) or len(raw) > MAX_WANTS:
        raise ServeError(E_MALFORMED, f"a want list is a list of at most {MAX_WANTS}")
    out = []
    for w in raw:
        if not (isinstance(w, list) and len(w) == 2 and w[0] in KINDS and isinstance(w[1], bytes) and len(w[1]) == 32):
            raise ServeError(E_MALFORMED, "a want is [kind, 32-byte key]")
        out.append((w[0], w[1]))
    return out


class Serving:
    """Request handlers of one :class:`~.node.NetNode` (``node``)."""

    def __init__(self, node):
        self.node = node
        self.export_limit = trio.CapacityLimiter(2)
        self._flushing = False

    async def handle(self, conn: Connection, msg: dict) -> None:
        t, rid = msg["t"], msg["id"]
        if t == "ping":
            await conn.reply(rid, "ok", node=self.node.id)
        elif t == "want":
            await self._want(conn, rid, parse_wants(msg.get("w")))
        elif t == "where":
            await self._where(conn, rid, msg.get("w"))
        elif t == "records":
            await self._records(conn, rid, msg.get("m"))
        elif t == "pin":
            await self._pin(conn, rid, msg.get("m"), bool(msg.get("all")))
        elif t == "iou":
            await self._iou(conn, rid, msg.get("iou"))
        else:
            raise ServeError(E_DECLINED, f"{t} is not served here")

    # ------------------------------------------------------------------ metering
    async def _charged(self, conn: Connection, rid: int, t: str, **fields) -> None:
        frame = encode({"t": t, "re": rid, **fields}, conn.max_frame)
        try:
            flush = self.node.meter.charge(conn.peer_id, len(frame))
        except CreditRefused as e:
            raise ServeError(E_CREDIT, str(e)) from None
        await conn.send_frame(frame)
        if flush and not self._flushing:
            self._flushing = True
            self.node.spawn(self._flush)

    async def _flush(self) -> None:
        try:
            await trio.to_thread.run_sync(self.node.meter.flush)
        finally:
            self._flushing = False

    def _check_credit(self, peer: str) -> None:
        try:
            self.node.meter.check(peer)
        except CreditRefused as e:
            raise ServeError(E_CREDIT, str(e)) from None

    # ------------------------------------------------------------------ handlers
    async def _want(self, conn: Connection, rid: int, wants: list) -> None:
        self._check_credit(conn.peer_id)
        engine = self.node.engine
        async with self.export_limit:
            blocks = await trio.to_thread.run_sync(engine.chunks.export, wants)
        covered = set()
        batch, size = [], 0
        for b in blocks:
            covered.add((b[0], bytes(b[1])))
            if b[0] == "pack":
                covered.update(("chunk", bytes(m[0])) for m in b[3])
            item = [b[0], b[1], b[2]] + ([[list(m) for m in b[3]]] if b[0] == "pack" else [])
            if batch and size + len(b[2]) > BLOCKS_FRAME:
                await self._charged(conn, rid, "blocks", bs=batch)
                batch, size = [], 0
            batch.append(item)
            size += len(b[2])
        if batch:
            await self._charged(conn, rid, "blocks", bs=batch)
        missing = [[k, h] for k, h in wants if (k, h) not in covered]
        if missing:
            await self._charged(conn, rid, "dont_have", w=missing)
        await self._charged(conn, rid, "done")

    async def _where(self, conn: Connection, rid: int, hashes) -> None:
        if not (isinstance(hashes, list) and len(hashes) <= MAX_WHERE
                and all(isinstance(h, bytes) and len(h) == 32 for h in hashes)):
            raise ServeError(E_MALFORMED, f"where wants a list of at most {MAX_WHERE} 32-byte chunk hashes")
        self._check_credit(conn.peer_id)
        async with self.export_limit:
            at = await trio.to_thread.run_sync(self.node.engine.chunks.locate, hashes)
        await self._charged(conn, rid, "have", at=[list(a) for a in at])

    def may_read(self, info: dict, peer: str) -> bool:
        """Whether ``peer`` may read the MiMei of ``info`` (see the module docstring)."""
        rights = info.get("rights", 0o644)
        if not isinstance(rights, int):
            return False
        if rights & GUEST_READ or peer == info.get("author"):
            return True
        return bool(rights & MEMBER_READ) and self.node.is_member(peer)

    async def _records(self, conn: Connection, rid: int, mimei) -> None:
        if not is_id(mimei):
            raise ServeError(E_MALFORMED, "records wants a MiMei ID")
        self._check_credit(conn.peer_id)
        try:
            recs = await trio.to_thread.run_sync(self.node.engine.records, mimei)
        except (NotFound, EngineError):
            raise ServeError(E_NOT_FOUND, f"this node does not hold {mimei}") from None
        if not self.may_read(recs["info"], conn.peer_id):
            raise ServeError(E_FORBIDDEN, f"{mimei}'s rights do not let guests read it, and "
                                          f"{conn.peer_id} is not a member here")
        await self._charged(conn, rid, "recs", r=recs)

    async def _pin(self, conn: Connection, rid: int, mimei, all_versions: bool) -> None:
        node = self.node
        if not is_id(mimei):
            raise ServeError(E_MALFORMED, "pin wants a MiMei ID")
        if not node.cfg.accept_pins:
            raise ServeError(E_DECLINED, "this node does not accept pin requests")
        try:
            node.meter.check(conn.peer_id)
        except CreditRefused as e:
            raise ServeError(E_DECLINED, f"no credit here: {e}") from None
        if await trio.to_thread.run_sync(node.is_pinned, mimei):
            await conn.reply(rid, "ok", accepted=True, already=True)
            return
        recs = await node.client.fetch_mimei(mimei, prefer=conn.peer_id)
        if not recs:
            raise ServeError(E_DECLINED, f"cannot find {mimei}'s records")
        need = sum(v.get("size", 0) for v in recs.get("versions", [])[-1:])
        st = os.statvfs(node.store.path)
        free = st.f_bavail * st.f_frsize
        if free - need < node.cfg.min_free:
            raise ServeError(E_DECLINED, f"not enough space: {free} bytes free, {need} needed, "
                                         f"{node.cfg.min_free} kept spare")
        node.spawn(node.client.pin_quietly, mimei, all_versions, conn.peer_id)
        await conn.reply(rid, "ok", accepted=True, already=False)

    async def _iou(self, conn: Connection, rid: int, rec) -> None:
        if not isinstance(rec, dict) or rec.get("borrower") != conn.peer_id:
            raise ServeError(E_BAD_RECORD, "an IOU is signed by the peer that sends it")
        try:
            await trio.to_thread.run_sync(self.node.book.accept_iou, rec)
        except CreditError as e:
            raise ServeError(E_BAD_RECORD, str(e)) from None
        await conn.reply(rid, "ok")


def read_members(store) -> set[str]:
    """IDs this node's organization ledger admits as member or supervisor (empty if
    the store has no ledger)."""
    out = set()
    with store.read() as txn:
        for k, v in txn.cursor(db=store.db("ledger.members")):
            try:
                if json.loads(v).get("role") in ("member", "supervisor", "founder"):
                    out.add(bytes(k).hex())
            except ValueError:
                continue
    return out
