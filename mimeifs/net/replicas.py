"""Save on demand (seed 001 §8.2): keep ``copies`` live holders of a MiMei besides this
node. The *replicas* loop of :class:`~.node.NetNode` re-checks every target every
``follow`` seconds: live holders are the MiMei's providers that answer a ping, plus peers
that accepted a pin less than :data:`PIN_GRACE` seconds ago and are still connected
(they announce themselves once their copy is whole); while there are fewer than wanted,
peers that hold a good letter of credit from this node are asked to pin, nearest the
MiMei ID first. A peer accepts or declines by its own policy (``serve.py``) and says why.
"""

from __future__ import annotations

import logging
import time

import trio

from ..ledger.credit import CreditError
from . import conn as C

log = logging.getLogger("mimeifs.net")

#: Seconds a peer that accepted a pin counts as a holder before it announces its copy.
PIN_GRACE = 300.0


class Replication:
    """The replication half of :class:`~.node.NetNode` (it needs ``replicas``, ``cfg``,
    ``client``, ``connect``, ``conns``, ``dht``, ``meter``, ``id``, ``is_bad``,
    ``mark_down``)."""

    async def _loop_replicas(self) -> None:
        while True:
            await trio.sleep(max(1.0, self.cfg.follow))
            for m, want in list(self.replicas.items()):
                try:
                    await self.replicate(m, want["copies"])
                except Exception as e:
                    log.info("replicating %s: %s", m[:12], e)

    async def replicate(self, mimei: str, copies: int) -> dict:
        """Ask peers with credit here to pin ``mimei`` until ``copies`` live holders
        (other than this node) exist; remembered and re-checked in a loop. Peers are
        asked nearest first by XOR distance between their node ID and the MiMei ID
        (Kademlia's placement, Maymounkov & Mazieres 2002 section 2.3). Returns
        ``{"mimei", "copies", "holders", "asked": {peer: answer}}``."""
        entry = self.replicas.setdefault(mimei, {"copies": copies, "asked": {}, "pending": {}})
        entry["copies"] = copies
        holders = []
        for pid, addr in await self.client.providers(mimei, fresh=True):
            if pid == self.id:
                continue
            try:
                c = await self.connect(pid, addr)
                await c.request("ping", timeout=3)
                holders.append(pid)
                entry["pending"].pop(pid, None)
            except Exception:
                continue
        now = time.monotonic()
        for pid, since in list(entry["pending"].items()):
            # accepted, still copying (it announces itself when done): counted for a while
            c = self.conns.get(pid)
            if now - since < PIN_GRACE and c is not None and not c.closed.is_set() and pid not in holders:
                holders.append(pid)
            else:
                entry["pending"].pop(pid, None)
        target = int(mimei, 16)   # not the peers met first: those held a copy of everything
        cands = sorted((p for p in await self._credit_peers() if p[0] not in holders),
                       key=lambda p: int(p[0], 16) ^ target)
        for pid, addr in cands:
            if len(holders) >= copies:
                break
            try:
                c = await self.connect(pid, addr)
                r = await c.request("pin", timeout=self.cfg.request_timeout, m=mimei, all=False)
                holders.append(pid)
                entry["pending"][pid] = time.monotonic()
                entry["asked"][pid] = "accepted" + (" (already held)" if r.get("already") else "")
            except C.RemoteError as e:
                entry["asked"][pid] = f"declined: {e.msg}"
            except Exception as e:
                entry["asked"][pid] = f"unreachable: {e}"
                if isinstance(e, OSError):
                    self.mark_down(pid, str(e))
        entry["holders"] = holders
        return {"mimei": mimei, "copies": copies, "holders": holders, "asked": dict(entry["asked"]),
                "pending": sorted(entry["pending"])}

    async def _credit_peers(self) -> list[tuple[str, tuple]]:
        """Peers with a good letter of credit from this node, with an address: connected
        ones, DHT contacts, and the credit book's peers whose address is known."""
        out = {p: c.peer_listen for p, c in self.conns.items() if c.peer_listen}
        if self.dht is not None:
            for pid, host, port in await trio.to_thread.run_sync(self.dht.contacts):
                out.setdefault(pid, (host, port))
        good = []
        for pid, addr in out.items():
            if pid == self.id or self.is_bad(pid):
                continue
            try:
                await trio.to_thread.run_sync(self.meter.check, pid)
                good.append((pid, addr))
            except CreditError:
                continue
        return good
