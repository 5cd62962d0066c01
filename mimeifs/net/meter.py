"""Metering: every byte served to a peer counted against the letter of credit this node
granted it (seed 001/002 Part I, the credit model; DESIGN.md "Ledger"; issue 12).

- The letter and the persisted use come from the credit book (``ledger/credit.py``),
  cached per peer with the store's transaction ID they were read at; every charge opens
  one read snapshot to compare that ID (~2 µs) and reads the book again only when some
  transaction committed since. So ``mimeifs credit grant`` / ``revoke`` in another
  process takes effect at the next reply (a revoked peer is refused at once, a raised
  cap resumes), and a reply costs one snapshot and an addition, not three reads and
  three JSON decodes (measured: a pin of many small files spent ~10% of the serving
  node's CPU there).
- A peer met for the first time gets the configured default letter
  (``default_credit`` bytes; 0 = none, so such a peer is refused until granted).
- Use is counted in memory and persisted in batches (:meth:`Meter.flush`, called by the
  node every second and when a peer's pending count passes ``flush_bytes``), so the
  cost per reply is one read and an addition.
- What is counted: the wire bytes of every reply frame that carries data or an answer
  to a data request (``block``, ``blocks``, ``have``, ``dont_have``, ``done``, ``recs``); error
  replies are free. The borrower counts the same frames and signs cumulative IOUs for
  them (``client.py``), so both credit books agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from ..ledger.credit import CreditBook, CreditError, CreditRefused

log = logging.getLogger("mimeifs.net")

CHARGED = frozenset({"block", "blocks", "have", "dont_have", "done", "recs"})


class Meter:
    """Per-peer use in memory over a :class:`CreditBook`. ``enabled=False`` counts
    ``served`` only and refuses nothing (the benchmark's "metering off")."""

    def __init__(self, book: CreditBook, default_credit: int = 1 << 30, enabled: bool = True,
                 flush_bytes: int = 8 << 20):
        self.book, self.default_credit, self.enabled = book, default_credit, enabled
        self.flush_bytes = flush_bytes
        self.pending: Counter = Counter()
        self.served: Counter = Counter()
        self.refusals: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._state: dict[str, tuple] = {}   # peer -> (txnid, letter, used, coefficients)

    def _book(self, peer: str) -> tuple:
        """(letter or None, persisted use, coefficients) of ``peer``, from the cache while
        the store has not committed a transaction since it was read."""
        hit = self._state.get(peer)
        tid, loc, used, coef = self.book.serving_state(peer, hit[0] if hit else None)
        if loc is None and used is None:
            return hit[1:]
        if loc is None:
            loc = self._grant_default(peer)
            if loc is not None:  # the grant committed a transaction: read it back next time
                return loc, used, coef
        self._state[peer] = (tid, loc, used, coef)
        return loc, used, coef

    def _grant_default(self, peer: str) -> dict | None:
        loc = None
        if self.default_credit > 0:
            try:
                loc = self.book.grant(peer, self.default_credit)
                log.info("granted the default letter of %d bytes to %s", self.default_credit, peer[:12])
            except CreditError as e:
                log.warning("default letter for %s: %s", peer[:12], e)
        return loc

    def check(self, peer: str, nbytes: int = 0, now: float | None = None) -> None:
        """Raise :class:`CreditRefused` (with a message the peer is sent) if serving
        ``nbytes`` more to ``peer`` would not be covered by its letter."""
        if not self.enabled:
            return
        loc, used, coef = self._book(peer)
        now = time.time() if now is None else now
        used += self.pending[peer]
        if loc is None:
            raise self._refuse(CreditRefused(f"no letter of credit for {peer}", peer, used, 0))
        cap = loc["cap"] * coef[loc["unit"]] if loc["unit"] != "bw" else loc["cap"]
        if loc.get("revoked"):
            raise self._refuse(CreditRefused(f"letter of credit for {peer} is revoked", peer, used, 0))
        if loc["expires"] and now >= loc["expires"]:
            raise self._refuse(CreditRefused(f"letter of credit for {peer} expired", peer, used, cap))
        if used + nbytes > cap:
            raise self._refuse(CreditRefused(
                f"credit exhausted: {peer} has used {used} of its {cap}-byte letter of credit "
                f"(+{nbytes} refused)", peer, used, cap))
        self.refusals.pop(peer, None)

    def _refuse(self, e: CreditRefused) -> CreditRefused:
        self.refusals[e.peer] = {"reason": str(e), "used": e.used, "cap": e.cap, "time": time.time()}
        log.warning("refusing %s: %s", e.peer[:12], e)
        return e

    def charge(self, peer: str, nbytes: int) -> bool:
        """Check and count ``nbytes`` served to ``peer``. Returns True when the peer's
        pending count wants a flush. Raises :class:`CreditRefused` (nothing counted)."""
        self.check(peer, nbytes)
        with self._lock:
            self.served[peer] += nbytes
            if not self.enabled:
                return False
            self.pending[peer] += nbytes
            return self.pending[peer] >= self.flush_bytes

    def flush(self) -> int:
        """Persist pending use in the credit book (one transaction per peer); returns
        the bytes persisted. Blocking (LMDB write): call it from a worker thread."""
        with self._lock:
            todo, self.pending = self.pending, Counter()
        done = 0
        for peer, n in todo.items():
            try:
                self.book.record_served(peer, n)
                done += n
            except CreditError as e:  # the letter vanished: keep the count for next time
                log.warning("metering %s: %s", peer[:12], e)
                with self._lock:
                    self.pending[peer] += n
        return done
