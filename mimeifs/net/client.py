"""The client side: find providers, fetch blocks and records, pin, replicate.

Fetching blocks (:meth:`Client.fetch_objects`, anchor: Bitswap's want lists): the wants
are cut into batches of ``want_batch`` and all batches are sent at once, spread over up
to four providers (many wants in flight on each stream). Providers come from the DHT for
the MiMei being read (the engine's wants name no MiMei, so the providers of the MiMei
most recently looked up are asked first, then every connected peer: Bitswap's broadcast
to connected peers). Each peer's answer is verified and stored as it arrives through the
engine's ``chunks.accept`` (so a bad block is pinned on the peer that sent it, and
storing overlaps the transfer of the other answers); the fetcher then hands the engine
only the manifests (verified by the engine against their chunks) — the contract allows
fewer blocks than asked, and the engine finds the rest stored. A peer whose answer holds
one bad block has its whole answer dropped and is not asked again for ``bad_peer_for``
seconds; what is still missing goes to the next provider.

Records (:meth:`Client.fetch_mimei`): the newest signed version record in the DHT and
the records of up to four providers; each set is verified (``engine.remote
.verify_records``); the set with the highest version wins, and a version the DHT knows
that the providers lack is added (it is signed by the author, so it is believed). A
lower version never replaces a higher one (the engine's ``adopt`` keeps it so too).
"""

from __future__ import annotations

import logging
import time

import trio

from ..engine import blocks, objects, remote
from ..engine.errors import Corrupt
from . import verify
from .pin import Pinning
from .wire import E_BUSY, E_CREDIT, E_FORBIDDEN, RemoteError

log = logging.getLogger("mimeifs.net")

PROVIDER_CACHE = 10.0
#: A manifest of at least this many chunks has its chunks fetched ahead of the engine,
#: PREFETCH_WINDOW wants per request round, PREFETCH_PARALLEL rounds at once.
PREFETCH_MIN_CHUNKS = 64
PREFETCH_WINDOW = 256
PREFETCH_PARALLEL = 3


class Client(Pinning):
    """Client operations of one :class:`~.node.NetNode` (pinning: :class:`~.pin.Pinning`)."""

    def __init__(self, node):
        self.node = node
        self.recent: dict[str, float] = {}          # MiMei -> last use (providers asked first)
        self._prov: dict[str, tuple[float, list]] = {}
        self._crawling: dict[str, trio.Event] = {}  # MiMei -> its provider lookup in flight
        self.inflight: dict[tuple, trio.Event] = {}
        self._prefetch_slots = trio.Semaphore(PREFETCH_PARALLEL)
        self._tree_prefetch_busy = 0

    # ------------------------------------------------------------------ providers
    async def providers(self, mimei: str, fresh: bool = False) -> list[tuple[str, tuple]]:
        """[(node ID, (host, port))] of ``mimei`` from the DHT (cached 10 s; this node
        included if it provides)."""
        node = self.node
        if node.dht is None:
            return []
        hit = self._prov.get(mimei)
        if hit and not fresh and time.monotonic() - hit[0] < PROVIDER_CACHE:
            return hit[1]
        ev = self._crawling.get(mimei)
        if ev is not None:  # one crawl per MiMei at a time: the others wait for its answer
            await ev.wait()
            hit = self._prov.get(mimei)
            return hit[1] if hit else []
        ev = self._crawling[mimei] = trio.Event()
        try:
            try:
                recs = await trio.to_thread.run_sync(node.dht.providers, mimei, abandon_on_cancel=True)
            except Exception as e:  # a DHT failure is a miss, never a crash
                log.info("provider lookup of %s failed: %s", mimei[:12], e)
                recs = []
            got = [(r["node"], tuple(r["addr"])) for r in recs]
            self._prov[mimei] = (time.monotonic(), got)
            return got
        finally:
            del self._crawling[mimei]
            ev.set()

    def cached_providers(self, mimei: str) -> list[tuple[str, tuple]]:
        """The providers of ``mimei`` last found, however old (no lookup)."""
        hit = self._prov.get(mimei)
        return hit[1] if hit else []

    async def candidates(self, mimei: str | None = None, prefer: str | None = None) -> list[tuple[str, tuple]]:
        """Peers to ask, best first: ``prefer``, providers of ``mimei`` (or of the MiMei
        used most recently, and the last known providers of the three before it: after
        nodes die a lookup can take seconds, and a fetch round asked for four of them),
        then connected peers; bad peers left out."""
        out: list[tuple[str, tuple | None]] = []
        if prefer:
            out.append((prefer, self.node.addr_of(prefer)))
        if mimei:
            out.extend(await self.providers(mimei))
        else:  # the MiMei read last is looked up; the three before it from the cache only
            ms = sorted(self.recent, key=self.recent.get, reverse=True)[:4]
            for i, m in enumerate(ms):
                out.extend(await self.providers(m) if i == 0 else self.cached_providers(m))
        out.extend((p, c.peer_listen) for p, c in list(self.node.conns.items()))
        seen, res = set(), []
        for p, a in out:
            if p in seen or p == self.node.id or self.node.is_bad(p):
                continue
            if a is None and p not in self.node.conns:
                continue
            seen.add(p)
            res.append((p, a))
        return res

    # ------------------------------------------------------------------ blocks
    async def fetch_objects(self, wants: list, ahead: bool = True) -> list[tuple]:
        """Verified blocks for ``wants`` ([(kind, key)]); may be fewer than asked.
        A want another call is already fetching is not asked twice: this call waits for
        that one (the kernel sends several reads of one file at once, and each miss
        asks for the same read-ahead window)."""
        mine, waits = [], []
        for k, h in wants:
            w = (k, bytes(h))
            ev = self.inflight.get(w)
            if k == "manifest":  # returned to the engine, which stores it: never shared
                mine.append(w)
            elif ev is None:
                self.inflight[w] = trio.Event()
                mine.append(w)
            else:
                waits.append(ev)
        try:
            out = await self._fetch_objects(mine, ahead) if mine else []
        finally:
            for w in mine:
                if w[0] != "manifest":
                    self.inflight.pop(w).set()
        for ev in waits:
            await ev.wait()
        return out

    async def _fetch_objects(self, wants: list, ahead: bool) -> list[tuple]:
        need = dict.fromkeys(wants)
        out: list[tuple] = []
        tried: set[str] = set()
        for _round in range(6):
            if not need:
                break
            peers = [p for p in await self.candidates() if p[0] not in tried][:4]
            if not peers:
                break
            todo = list(need)
            b = max(1, self.node.cfg.want_batch)
            batches = [todo[i:i + b] for i in range(0, len(todo), b)]
            answers: list[tuple[str, list]] = []
            async with trio.open_nursery() as n:
                for i, batch in enumerate(batches):
                    n.start_soon(self._ask, peers[i % len(peers)], batch, answers)
            progress = set()
            for peer, blocks in answers:
                for blk in blocks:
                    new = [w for w in verify.covers(blk) if w in need]
                    if new and blk[0] == "manifest":
                        out.append(blk)
                        if ahead:
                            self._prefetch_soon(blk)
                    elif new and blk[0] == "tree" and ahead and blk[3]:
                        self.node.spawn(self._prefetch_trees, blk[3])
                    for w in new:
                        need.pop(w, None)
                        progress.add(peer)
            asked = {peers[i % len(peers)][0] for i in range(len(batches))}
            tried.update(p for p in asked if p not in progress)
        return out

    def _prefetch_soon(self, blk: tuple) -> None:
        """Start fetching a big manifest's chunks in the background. The engine verifies
        a manifest against all its chunks and asks for them batch after batch, storing
        each before asking the next; fetching them ahead overlaps those rounds (its
        requests then wait on these wants instead of asking again)."""
        m = blk[2]
        if len(m) < 1 + 12 + PREFETCH_MIN_CHUNKS * 36 or self.node.nursery is None:
            return
        count = int.from_bytes(m[9:13], "big")
        chunks = [bytes(m[13 + i * 36:13 + i * 36 + 32]) for i in range(count)]
        self.node.spawn(self._prefetch, chunks)

    async def _prefetch(self, chunks: list[bytes]) -> None:
        has = self.node.engine.chunks.has
        async with trio.open_nursery() as n:
            for i in range(0, len(chunks), PREFETCH_WINDOW):
                part = [("chunk", c) for c in chunks[i:i + PREFETCH_WINDOW]]
                part = await trio.to_thread.run_sync(lambda: [w for w in part if not has(*w)])
                part = [w for w in part if w not in self.inflight]
                if part:
                    await self._prefetch_slots.acquire()
                    n.start_soon(self._prefetch_one, part)

    async def _prefetch_one(self, part: list) -> None:
        try:
            await self.fetch_objects(part, ahead=False)
        except Exception as e:  # a hint only: the engine asks again for what is missing
            log.info("prefetch failed: %s", e)
        finally:
            self._prefetch_slots.release()

    async def _ask(self, peer: tuple, batch: list, answers: list) -> None:
        got = await self._on_peer(peer, "want", lambda c: c.want(batch, self.node.cfg.request_timeout))
        if got is not None:
            good = await self._store_answer(peer[0], got[0], "block")
            if good is not None:
                answers.append((peer[0], good))

    async def _on_peer(self, peer: tuple, what: str, fn):
        """``await fn(conn)`` on a connection to ``peer`` (node ID, address), or None if
        it fails: a refusal is noted (:meth:`_remote_error`), an unreachable peer marked
        down, anything else (timed out, connection lost) logged as the failed ``what``."""
        pid, addr = peer
        try:
            return await fn(await self.node.connect(pid, addr))
        except RemoteError as e:
            self._remote_error(pid, e)
        except OSError as e:
            self.node.mark_down(pid, str(e))
        except Exception as e:
            log.info("%s from %s failed: %s", what, pid[:12], e)
        return None

    async def _store_answer(self, pid: str, blocks: list, what: str) -> list | None:
        """Verify and store peer ``pid``'s answer (:meth:`_absorb`, in a worker thread);
        None if a block is bad (the peer is marked bad for serving a bad ``what``; none
        of the answer is kept) or storing failed here (disk full...: not its fault)."""
        try:
            return await trio.to_thread.run_sync(self._absorb, blocks)
        except (verify.BadBlock, Corrupt) as e:
            self.node.mark_bad(pid, f"served a bad {what}: {e}")
        except Exception:
            log.exception("storing %ss from %s", what, pid[:12])
        return None

    def _absorb(self, received: list) -> list[tuple]:
        """Verify one peer's answer and store its chunks, packs and trees at once
        (``chunks.accept``: one verification, and storing overlaps the other answers
        still on the wire); manifests are only checked for shape here and returned, since
        the engine verifies them with their chunks. Returns the blocks as verified
        tuples, the stored ones with their payload dropped. Raises BadBlock / Corrupt
        (nothing of the answer is kept)."""
        checked = [verify.check_shape(b) for b in received]
        rest = [b for b in checked if b[0] != "manifest"]
        if rest:
            self.node.engine.chunks.accept(rest)
            self.node.fetched_bytes += sum(len(b[2]) for b in rest)
        out = []
        for b in checked:
            if b[0] == "manifest":
                out.append(b)
            elif b[0] == "tree":  # its subdirectories, for the tree prefetch
                t = objects.decode_tree(b[1], blocks.decode_chunk(b[2]))
                out.append(("tree", b[1], b"", [e.hash for e in t.entries if e.is_dir]))
            else:
                out.append((b[0], b[1], b"", b[3] if b[0] == "pack" else None))
        return out

    async def _prefetch_trees(self, children: list[bytes]) -> None:
        """Fetch every tree below a fetched one, a level per round (a listing of a
        remote version then waits for a round trip per level, not per directory)."""
        if self._tree_prefetch_busy >= 2:
            return
        self._tree_prefetch_busy += 1
        try:
            engine = self.node.engine
            level, seen = list(dict.fromkeys(children)), set()
            while level:
                seen.update(level)
                want = await trio.to_thread.run_sync(
                    lambda: [("tree", h) for h in level if not engine.chunks.has("tree", h)])
                want = [w for w in want if w not in self.inflight]
                if want:
                    await self.fetch_objects(want, ahead=False)

                def children_of(hs):
                    out = []
                    for h in hs:
                        if not engine.chunks.has("tree", h):
                            continue  # a fetch that failed: the reader will ask for it
                        try:
                            out.extend(e.hash for e in engine.chunks.tree(h).entries if e.is_dir)
                        except Exception:  # not here (a failed fetch): the reader will ask
                            continue
                    return out
                nxt = await trio.to_thread.run_sync(children_of, level)
                level = [h for h in dict.fromkeys(nxt) if h not in seen]
        except Exception as e:
            log.info("tree prefetch failed: %s", e)
        finally:
            self._tree_prefetch_busy -= 1

    def _remote_error(self, pid: str, e: RemoteError) -> None:
        if e.code == E_CREDIT:
            self.node.refused_by[pid] = {"reason": e.msg, "time": time.time()}
            log.warning("peer %s refuses service: %s", pid[:12], e.msg)
        elif e.code == E_BUSY:
            log.info("peer %s is busy", pid[:12])
        else:
            log.info("peer %s: %s", pid[:12], e)

    # ------------------------------------------------------------------ records
    async def fetch_mimei(self, mimei: str, prefer: str | None = None) -> dict | None:
        """The newest verified records of ``mimei`` among providers and the DHT, or None."""
        self.recent[mimei] = time.monotonic()
        node = self.node
        dht_val = None
        if node.dht is not None:
            try:
                dht_val = await trio.to_thread.run_sync(node.dht.newest_version, mimei, abandon_on_cancel=True)
            except Exception as e:
                log.info("version lookup of %s failed: %s", mimei[:12], e)
        cands = await self.candidates(mimei, prefer)
        got: list[dict] = []

        async def ask(pid, addr):
            try:
                conn = await node.connect(pid, addr)
                r = (await conn.request("records", timeout=node.cfg.request_timeout, m=mimei)).get("r")
                mid, _info, versions, _rel = await trio.to_thread.run_sync(remote.verify_records, r)
                if mid != mimei:
                    raise Corrupt("records of another MiMei")
                got.append(r)
            except Corrupt as e:
                node.mark_bad(pid, f"sent bad records: {e}")
            except RemoteError as e:
                self._remote_error(pid, e)
                if e.code == E_FORBIDDEN:
                    node.forbidden[mimei] = e.msg
            except OSError as e:  # unreachable: gone, most likely (its records outlive it)
                node.mark_down(pid, str(e))
            except Exception as e:
                log.info("records of %s from %s failed: %s", mimei[:12], pid[:12], e)

        for i in range(0, min(len(cands), 16), 4):  # four at a time until one answers
            async with trio.open_nursery() as n:
                for pid, addr in cands[i:i + 4]:
                    n.start_soon(ask, pid, addr)
            if got:
                break
        best = None
        for r in got:
            top = max((v["n"] for v in r.get("versions") or []), default=-1)
            if best is None or top > best[0]:
                best = (top, r)
        if best is None:
            return None
        recs = dict(best[1])
        if dht_val is not None and dht_val["info"]["id"] == mimei and dht_val["version"]["n"] > best[0]:
            recs["versions"] = list(recs.get("versions") or []) + [dht_val["version"]]
        return recs
