"""The fetcher seam: how the engine asks someone else for objects it does not hold.

The engine knows no network. Whoever composes the daemon (``mimeifs/daemon.py``) may hand
the :class:`~mimeifs.engine.mimei.Engine` an object with the two methods of
:class:`Fetcher`; the network node is one. On a miss (:class:`~.errors.ChunkMissing`) the
engine calls it *outside any LMDB write transaction*, verifies and stores what arrives
(:meth:`~.chunkstore.ChunkStore.accept`, :meth:`~.mimei.Engine.adopt`), and retries.

Shapes::

    Want  = (kind, key)    kind "chunk" | "manifest" | "tree": key = 32-byte blake3
                           kind "mimei": key = 20-byte MiMei ID (its signed records)
    Block = ("chunk", h, data)              raw chunk bytes; blake3(data) == h
          | ("pack", pid, stored, members)  stored = codec byte + payload (blocks.py);
                                            members = [(chunk hash, offset, length)]
                                            into the uncompressed pack
          | ("manifest", h, encoded)        objects.Manifest encoding (verified with its
                                            content: blake3 of all its chunks == h)
          | ("tree", h, stored)             codec byte + tree encoding

Where fetching may happen is per thread (:func:`fetching_allowed`): a door's event-loop
thread forbids it (a network round trip there would stall every other request); such a
door catches ``ChunkMissing`` and runs the same call again in a worker thread, where the
engine fetches. Fetches never run inside a write transaction: the miss aborts the
transaction (nothing half-done is kept), the fetch runs, the whole call runs again.
"""

from __future__ import annotations

import threading
from typing import Protocol

Want = tuple[str, bytes]
Block = tuple

KINDS = ("chunk", "manifest", "tree", "mimei")

#: Most fetch rounds one call may take (a tree, then its manifests, then their chunks...).
MAX_ROUNDS = 64


class FetchError(Exception):
    """A fetcher could not get what was asked (no provider, refused, timed out)."""


class Fetcher(Protocol):
    """What the engine needs from a source of objects it lacks (the network node).

    Both methods block, run in a worker thread, and may raise :class:`FetchError`.
    """

    def fetch_objects(self, wants: list[Want]) -> list[Block]:
        """Blocks for ``wants`` (kinds chunk, manifest, tree); may return fewer (the
        engine then reports the rest missing) or more (a whole pack for one chunk)."""
        ...

    def fetch_mimei(self, mimei: str) -> dict | None:
        """The newest signed records of MiMei ``mimei`` (40 hex) a provider holds:
        ``{"info": signed info, "versions": [signed version records], "release":
        signed release pointer or None}``; None if nobody has it."""
        ...


_tls = threading.local()


def fetching_allowed() -> bool:
    """Whether an engine call on this thread may wait for a fetch (default: yes)."""
    return not getattr(_tls, "forbidden", False)


def forbid_fetching_here() -> None:
    """Mark the calling thread as one that must never wait for the network (a door's
    event loop): misses there raise :class:`~.errors.ChunkMissing` at once."""
    _tls.forbidden = True
