"""Pinning: keep a full local copy of a MiMei's version (issue 12, seed 001 §8.2).

The order of a pin: the records (``fetch_mimei``) and ``adopt``; the version's trees,
level by level; then per batch of :data:`PIN_MANIFESTS` files their manifests, all their
missing chunks, and the manifests last (the engine verifies each against its chunks).

Chunks travel as whole packs (anchor: git's packfiles, Bitswap 1.2's want-have): the
pinning node asks one provider ``where`` it keeps the missing chunks (pack ID, offset,
length, pack size: ``ChunkStore.locate``), then wants each pack that holds at least
:data:`PACK_SHARE` of wanted bytes whole. The provider sends it as stored (no
decompression there, no recompression here); this node verifies the pack against its ID
and every member it asked for against its hash (``ChunkStore.accept``) and stores it as
is. What no pack brought (loose chunks, packs mostly of unwanted chunks, a provider that
failed) goes through :meth:`~.client.Client.fetch_objects` as chunk wants, which spread
over providers. A provider whose pack does not verify is marked bad, as for any block.
A pack may hold chunks this node did not ask for; only the asked members are indexed.
"""

from __future__ import annotations

import logging
import time

import trio

from ..engine import objects
from ..engine.errors import Corrupt, EngineError
from ..engine.fetch import FetchError

log = logging.getLogger("mimeifs.net")

#: Pinning: manifests per batch, chunk wants per request round, rounds at once (per batch).
PIN_MANIFESTS = 2048
PIN_WINDOW = 512
PIN_PARALLEL = 4
#: Batches of manifests in progress at once.
PIN_BATCHES = 2
#: Chunk hashes per ``where`` request; packs per ``want`` of whole packs.
WHERE_BATCH = 8192
PACKS_PER_WANT = 8
#: A pack is wanted whole when the wanted chunks are at least this share of its bytes.
PACK_SHARE = 0.5


class Pinning:
    """The pinning half of :class:`~.client.Client` (it needs ``node``, ``recent``,
    ``fetch_mimei``, ``fetch_objects``, ``candidates``, ``_on_peer``, ``_store_answer``)."""

    #: Whole packs fetched and stored by pins (``mimeifs net status``, tests).
    whole_packs = 0

    async def pin(self, mimei: str, all_versions: bool = False, prefer: str | None = None) -> dict:
        """Keep a full copy of ``mimei`` (its newest version, or all): adopt its records,
        mark it pinned, fetch every tree, manifest and chunk, announce this node as a
        provider. Returns ``{"mimei", "versions", "fetched"}``. Raises FetchError."""
        node, engine = self.node, self.node.engine
        self.recent[mimei] = time.monotonic()
        recs = await self.fetch_mimei(mimei, prefer)
        own = await trio.to_thread.run_sync(lambda: engine.exists(mimei) and not engine.is_remote(mimei))
        if recs is None and not await trio.to_thread.run_sync(engine.exists, mimei):
            raise FetchError(f"no provider has {mimei}")
        if recs is not None and not own:
            try:
                await trio.to_thread.run_sync(engine.adopt, recs)
            except Corrupt as e:
                raise FetchError(f"records of {mimei} do not verify: {e}") from e
        if not own:
            await trio.to_thread.run_sync(engine.set_pinned, mimei, True)
        versions = await trio.to_thread.run_sync(engine.versions, mimei)
        if not all_versions:
            versions = versions[-1:]
        before = node.fetched_bytes
        for v in versions:
            await self._pin_version(v)
        node.pinned_changed(mimei)
        return {"mimei": mimei, "versions": [v["n"] for v in versions],
                "fetched": node.fetched_bytes - before}

    async def pin_quietly(self, mimei: str, all_versions: bool, prefer: str | None) -> None:
        """:meth:`pin` for a peer's request: failures are logged, never raised."""
        try:
            await self.pin(mimei, all_versions, prefer)
            log.info("pinned %s at a peer's request", mimei[:12])
        except (FetchError, EngineError) as e:
            log.warning("pin of %s for %s failed: %s", mimei[:12], (prefer or "")[:12], e)

    async def _pin_version(self, rec: dict) -> None:
        """Fetch everything of one version: its trees level by level (the engine's
        ``ensure_trees``), then per batch of manifests the manifests, all their chunks in
        windows several at a time (stored as they arrive), and the manifests last, which
        the engine verifies against those chunks. Chunks go as whole packs where a
        provider's packs hold mostly wanted chunks (:meth:`_pin_packs`), the rest as
        chunk wants. The engine's ``ensure`` ends it, for
        anything still missing."""
        engine = self.node.engine
        root = bytes.fromhex(rec["root"])
        if rec["kind"] == "fs":
            await trio.to_thread.run_sync(engine.ensure_trees, root)
            files = await trio.to_thread.run_sync(self._files_of, root)
        else:
            files = [("manifest", root)]
        missing = await trio.to_thread.run_sync(engine.chunks.missing, files)
        slots = trio.Semaphore(PIN_BATCHES)

        async def batch(part):
            try:
                mans = [b for b in await self.fetch_objects(part, ahead=False) if b[0] == "manifest"]
                chunks = await trio.to_thread.run_sync(self._missing_chunks, mans)
                chunks = await self._pin_packs(chunks)
                await self._in_windows(chunks, PIN_WINDOW, lambda w: self.fetch_objects(w, ahead=False))
                try:
                    await trio.to_thread.run_sync(engine.chunks.accept, mans)
                except (Corrupt, EngineError) as e:
                    log.warning("pin: a manifest was refused (%s); the engine fetches it again", e)
            finally:
                slots.release()
        async with trio.open_nursery() as n:  # batches overlap: one verifies while one fetches
            for i in range(0, len(missing), PIN_MANIFESTS):
                await slots.acquire()
                n.start_soon(batch, missing[i:i + PIN_MANIFESTS])
        await trio.to_thread.run_sync(lambda: [engine.chunks.ensure(files[j:j + 4096])
                                               for j in range(0, len(files), 4096)])

    def _missing_chunks(self, mans: list) -> list:
        want = dict.fromkeys(("chunk", c) for b in mans for c in objects.Manifest.decode(b[1], b[2]).chunks)
        return self.node.engine.chunks.missing(list(want))

    def _files_of(self, root: bytes) -> list:
        """("manifest", hash) of every regular file under tree ``root`` (all local)."""
        engine = self.node.engine
        files, stack, seen = [], [root], set()
        while stack:
            h = stack.pop()
            if h in seen:
                continue
            seen.add(h)
            for e in engine.chunks.tree(h).entries:
                if e.is_dir:
                    stack.append(e.hash)
                elif e.is_file and e.hash:
                    files.append(("manifest", e.hash))
        return list(dict.fromkeys(files))

    async def _in_windows(self, items: list, size: int, fn) -> None:
        """``await fn(part)`` for each ``size``-long part of ``items``, at most
        :data:`PIN_PARALLEL` at once."""
        slots = trio.Semaphore(PIN_PARALLEL)

        async def one(part):
            try:
                await fn(part)
            finally:
                slots.release()
        async with trio.open_nursery() as n:
            for j in range(0, len(items), size):
                await slots.acquire()
                n.start_soon(one, items[j:j + size])

    async def _pin_packs(self, wants: list) -> list:
        """Fetch chunk ``wants`` as whole packs from the first provider that says where
        it keeps them; returns the wants still missing."""
        if not wants:
            return wants
        node = self.node

        async def where(conn):
            at: list = []
            for i in range(0, len(wants), WHERE_BATCH):
                r = await conn.request("where", timeout=node.cfg.request_timeout,
                                       w=[h for _, h in wants[i:i + WHERE_BATCH]])
                at.extend(r.get("at") or [])
            return at
        for peer in (await self.candidates())[:4]:
            at = await self._on_peer(peer, "where", where)
            if at is None:
                continue
            whole = self._whole_packs(at, {h for _, h in wants})
            log.info("pin: %d of %d chunks located at %s, %d packs wanted whole", len(at), len(wants),
                     peer[0][:12], len(whole))
            if whole:
                await self._in_windows(list(whole.items()), PACKS_PER_WANT,
                                       lambda part, p=peer: self._want_packs(p, dict(part)))
            return await trio.to_thread.run_sync(node.engine.chunks.missing, wants)
        return wants

    @staticmethod
    def _whole_packs(at: list, wanted: set) -> dict[bytes, list]:
        """{pack ID: [(hash, offset, length)]} of the packs worth wanting whole, from a
        ``where`` answer (malformed entries are skipped: what they name is fetched as
        chunks, and a lie about a member is caught when the pack is verified)."""
        packs: dict[bytes, list] = {}
        sizes: dict[bytes, int] = {}
        for a in at:
            if not (isinstance(a, list) and len(a) == 5 and isinstance(a[0], bytes) and a[0] in wanted
                    and isinstance(a[1], bytes) and len(a[1]) == 32
                    and all(isinstance(x, int) and x >= 0 for x in a[2:])):
                continue
            packs.setdefault(a[1], []).append((a[0], a[2], a[3]))
            sizes[a[1]] = a[4]
        return {p: m for p, m in packs.items()
                if sizes[p] > 0 and sum(n for _, _, n in m) >= PACK_SHARE * sizes[p]}

    async def _want_packs(self, peer: tuple, members: dict[bytes, list]) -> None:
        """Want the packs ``members`` names whole from ``peer``; verify and store each
        with its members. A bad pack marks the peer bad (its chunks are fetched again
        as chunk wants)."""
        got = await self._on_peer(peer, "pack want", lambda c: c.want([("pack", p) for p in members],
                                                                     self.node.cfg.request_timeout))
        if got is None:
            return
        blocks = []
        for b in got[0]:
            if not (isinstance(b, list) and len(b) == 4 and b[0] == "pack" and isinstance(b[1], bytes)
                    and bytes(b[1]) in members):
                self.node.mark_bad(peer[0], "answered a pack want with something else")
                return
            blocks.append(["pack", b[1], b[2], [list(m) for m in members[bytes(b[1])]]])
        if await self._store_answer(peer[0], blocks, "pack") is not None:
            self.whole_packs += len(blocks)
