"""The DHT: the ``kademlia`` package (asyncio, UDP) in its own thread, behind a facade.

Anchors: Kademlia (Maymounkov & Mazières 2002), libp2p kad-dht (k = 20, alpha = 10,
provider records republished every 22 h, expiring after 48 h), BEP 5 / BEP 44.
What it stores and how values are validated and merged: ``records.py``.

The kademlia 2.2.3 / rpcudp 5.0.1 limits, and what this module does about each:

1. *Requests over 8 KiB are refused* (rpcudp raises before sending). Values are small
   signed records (``records.MAX_VALUE`` = 7 KiB; at most 16 provider records per
   MiMei); bulk data never goes through the DHT but over the stream protocol.
2. *``get`` answers from a local copy without asking the network, and otherwise takes
   the most common value of the first round that found any.* :meth:`DHTServer.lookup`
   replaces it: ``crawl.CollectCrawl`` keeps crawling until the k nearest nodes have
   all been asked, validates every value it is given, and merges them (provider sets
   united, the highest version kept) together with the local copy.
3. *``set`` reports success when every store refused* (``any`` of RPC results that are
   ``(True, False)`` tuples, which are truthy). :meth:`DHTServer.publish` counts only
   stores that answered ``True`` and returns that count.
4. *Stored values are overwritten, never validated.* :class:`RecordStorage` validates
   every value before storing (``rpc_store`` answers False when refused) and merges
   provider sets and keeps the higher version instead of overwriting.
5. *A contact is dropped after one missed reply* (``handle_call_response``): the
   Kademlia paper drops one only after several; :class:`RecordProtocol` drops it after
   ``max_misses`` (3) replies in a row are missed.
9. *A crawl asks every node it hears of, dead or not, and each round waits for its
   slowest answer* (``SpiderCrawl._find`` gathers ``alpha`` RPCs in lockstep). After
   nodes die, the live ones go on naming them in their answers until their own tables
   drop them, so every lookup waited ``wait_timeout`` per round that reached a dead node
   (seconds per lookup, and a reader that looks up several MiMei per fetch waited tens
   of seconds). :class:`RecordProtocol` remembers a node that missed a reply for
   ``skip_for`` seconds (forgotten as soon as it answers or sends a request), and the
   crawls (``crawl.py``: ``CollectCrawl``, ``NodeCrawl``) count such a node as not
   answering without asking it: Kademlia's rule that a node which fails to respond is
   left out of the lookup (Maymounkov & Mazieres 2002, section 2.3), kept across lookups.
   A round also stops waiting for the nodes still silent ``crawl.STRAGGLE`` seconds after
   its latest answer (``crawl._round``; the paper lets a lookup go on without them), so a
   node meets each dead one at the cost of about half a second, not ``wait_timeout``.
6. *``set_digest`` raises ValueError when no node answers* (``max()`` of an empty
   list): :meth:`DHTServer.publish` never calls it and stores locally in that case.
7. *``welcome_if_new`` hashes keys that are already hashed* (``digest(key)`` of a stored
   digest), so it hands values to the wrong new nodes. :class:`RecordProtocol`
   computes distances on the stored key itself.
8. *The table refresh republishes every stored value hourly as its own* (including
   other nodes' records, which would keep dead providers alive). Here only the bucket
   refresh runs; each node republishes its own records (``node.py``), and stored records
   die at their expiry.

Thread model: :class:`DHT` starts a daemon thread running an asyncio loop; every public
method is thread-safe and blocking (trio code calls them through
``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import IStorage

from . import records as R
from .crawl import CollectCrawl, NodeCrawl

log = logging.getLogger("mimeifs.net.dht")


class RecordStorage(IStorage):
    """Validated, merged DHT values: ``dkey -> (kind, payload, stored_at)``.
    ``__setitem__`` raises :class:`records.InvalidRecord` for a value it refuses."""

    def __init__(self):
        self.data: dict[bytes, tuple[str, object, float]] = {}
        self.lock = threading.Lock()

    def __setitem__(self, key, value):
        kind, payload = R.decode(bytes(key), value)
        with self.lock:
            old = self.data.get(key)
            if old is not None and old[0] != kind:
                raise R.InvalidRecord("value kind differs from the stored one")
            if kind == "prov":
                payload = R.merge_providers(old[1] if old else [], payload)
            else:
                payload = R.newer_version(old[1] if old else None, payload)
            self.data[key] = (kind, payload, time.monotonic())

    def _encoded(self, key):
        e = self.data.get(key)
        if e is None:
            return None
        if e[0] == "prov":
            live = R.merge_providers(e[1])
            if not live:
                del self.data[key]
                return None
            return R.encode_providers(live)
        return R.encode_version(e[1])

    def get(self, key, default=None):
        with self.lock:
            v = self._encoded(key)
        return default if v is None else v

    def __getitem__(self, key):
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def payload(self, key):
        """The stored (kind, payload) of ``key`` or None (providers culled of expired)."""
        with self.lock:
            e = self.data.get(key)
            if e is None:
                return None
            return (e[0], R.merge_providers(e[1]) if e[0] == "prov" else e[1])

    def iter_older_than(self, seconds_old):
        return []  # limit 8: no blanket republishing of others' records

    def __iter__(self):
        with self.lock:
            keys = list(self.data)
        out = []
        for k in keys:
            v = self.get(k)
            if v is not None:
                out.append((k, v))
        return iter(out)

    def __len__(self):
        return len(self.data)

    def __bool__(self):  # kademlia's Server does ``storage or ForgetfulStorage()``
        return True


class RecordProtocol(KademliaProtocol):
    """kademlia's protocol with validated stores, several misses before a contact is
    dropped, and ``welcome_if_new`` on the stored keys themselves (limits 4, 5, 7)."""

    max_misses = 3
    #: Seconds a node that missed a reply is not asked by crawls (limit 9); it is asked
    #: again as soon as it answers or sends anything.
    skip_for = 120.0

    def __init__(self, source_node, storage, ksize, wait_timeout=5.0):
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = wait_timeout
        self.misses: Counter = Counter()
        self.silent: dict[bytes, float] = {}     # node ID -> monotonic time of its last miss
        self.refused = 0
        self.skipped = 0

    def is_silent(self, node_id: bytes) -> bool:
        """Whether ``node_id`` missed a reply within ``skip_for`` seconds and has not
        been heard from since (crawls do not ask it)."""
        t = self.silent.get(node_id)
        if t is None:
            return False
        if time.monotonic() - t > self.skip_for:
            del self.silent[node_id]
            return False
        return True

    def heard_from(self, node_id: bytes) -> None:
        """``node_id`` answered or asked something: it is alive."""
        self.silent.pop(node_id, None)

    def rpc_store(self, sender, nodeid, key, value):
        source = Node(nodeid, sender[0], sender[1])
        self.welcome_if_new(source)
        try:
            self.storage[bytes(key)] = value
        except R.InvalidRecord as e:
            self.refused += 1
            log.info("refused a DHT store from %s:%s: %s", sender[0], sender[1], e)
            return False
        return True

    def welcome_if_new(self, node):
        self.heard_from(node.id)  # called for every request a node sends and every reply
        if not self.router.is_new_node(node):
            return
        for key, value in self.storage:
            keynode = Node(key)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                last = neighbors[-1].distance_to(keynode)
                new_node_close = node.distance_to(keynode) < last
                first = neighbors[0].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < first
            if not neighbors or (new_node_close and this_closest):
                asyncio.ensure_future(self.call_store(node, key, value))
        self.router.add_contact(node)

    def handle_call_response(self, result, node):
        if not result[0]:
            self.silent[node.id] = time.monotonic()
            if len(self.silent) > 10000:
                self.silent.pop(next(iter(self.silent)))
            self.misses[node.id] += 1
            if self.misses[node.id] >= self.max_misses:
                log.info("no reply from %s %d times: removing it", node, self.misses[node.id])
                self.router.remove_contact(node)
                del self.misses[node.id]
            return result
        self.misses.pop(node.id, None)
        self.welcome_if_new(node)
        return result


class DHTServer(Server):
    """kademlia's Server with :class:`RecordProtocol` and :class:`RecordStorage`, and
    :meth:`lookup` / :meth:`publish` in place of ``get`` / ``set`` (limits 2, 3, 6, 8)."""

    protocol_class = RecordProtocol

    def __init__(self, ksize=20, alpha=10, node_id=None, wait_timeout=5.0, refresh=3600.0):
        super().__init__(ksize, alpha, node_id, RecordStorage())
        self.wait_timeout = wait_timeout
        self.refresh = refresh
        self.hops: list[int] = []

    def _create_protocol(self):
        return self.protocol_class(self.node, self.storage, self.ksize, self.wait_timeout)

    def refresh_table(self, interval=None):
        asyncio.ensure_future(self._refresh_table())
        self.refresh_loop = asyncio.get_event_loop().call_later(self.refresh, self.refresh_table)

    async def _refresh_table(self):
        results = []
        for node_id in self.protocol.get_refresh_ids():
            node = Node(node_id)
            nearest = self.protocol.router.find_neighbors(node, self.alpha)
            results.append(NodeCrawl(self.protocol, node, nearest, self.ksize, self.alpha).find())
        await asyncio.gather(*results)

    async def lookup(self, dkey: bytes):
        """Crawl for ``dkey`` and merge every valid value with the local one; returns
        (kind, payload) or None. Records the lookup's rounds in ``hops``."""
        node = Node(dkey)
        local = self.storage.payload(dkey)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            return local
        crawl = CollectCrawl(self.protocol, node, nearest, self.ksize, self.alpha)
        await crawl.find()
        self.hops.append(crawl.first_hit_round or crawl.rounds)
        del self.hops[:-10000]
        kind, payload = crawl.kind, crawl.payload
        if local is not None:
            if kind is None:
                return local
            if local[0] == kind:
                payload = (R.merge_providers(payload, local[1]) if kind == "prov"
                           else R.newer_version(payload, local[1]))
        return None if kind is None else (kind, payload)

    async def publish(self, dkey: bytes, value: bytes) -> int:
        """Store ``value`` on the k nodes nearest ``dkey`` and locally; returns how many
        remote nodes accepted it (0 when alone). Raises records.InvalidRecord."""
        self.storage[dkey] = value  # validates; this node answers for its own records too
        node = Node(dkey)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            return 0
        nodes = await NodeCrawl(self.protocol, node, nearest, self.ksize, self.alpha).find()
        results = await asyncio.gather(*[self.protocol.call_store(n, dkey, value) for n in nodes])
        return sum(1 for ok, answer in results if ok and answer is True)


class DHT:
    """Thread-safe facade: a :class:`DHTServer` in its own asyncio thread.

    ``node_id``: this node's ID (40 hex) used as its Kademlia ID; ``host``/``port``: the
    UDP address to bind. Methods block the calling thread (never call them on the DHT's
    own thread). ``timeout`` bounds each call in seconds; a call past it raises
    TimeoutError.
    """

    def __init__(self, node_id: str, host: str, port: int, ksize: int = 20, alpha: int = 10,
                 wait_timeout: float = 5.0, refresh: float = 3600.0, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.server = DHTServer(ksize, alpha, bytes.fromhex(node_id), wait_timeout, refresh)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the UDP port and start the loop thread. Raises OSError (port taken)."""
        ready = threading.Event()
        err: list[BaseException] = []

        def main():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.listen(self.port, self.host))
            except BaseException as e:  # reported to start()'s caller
                err.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.server.stop()
            left = asyncio.all_tasks(self.loop)   # requests of crawls that stopped waiting
            for t in left:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

        self._thread = threading.Thread(target=main, name="mimeifs-dht", daemon=True)
        self._thread.start()
        ready.wait()
        if err:
            raise err[0]
        if self.port == 0:
            self.port = self.server.transport.get_extra_info("sockname")[1]

    def stop(self) -> None:
        """Stop the loop and close the UDP socket (idempotent)."""
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def _run(self, coro, timeout=None):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(self.timeout if timeout is None else timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def bootstrap(self, addrs: list[tuple[str, int]]) -> int:
        """Join through ``addrs`` (UDP host, port); returns the routing table's size."""
        self._run(self.server.bootstrap([(h, int(p)) for h, p in addrs]))
        return self.size()

    def size(self) -> int:
        """Contacts in the routing table."""
        return sum(len(b) for b in self.server.protocol.router.buckets)

    def announce(self, key, mimei: str, addr: tuple[str, int], ttl: float) -> int:
        """Publish this node as a provider of ``mimei`` (a record valid ``ttl`` s);
        returns how many nodes stored it."""
        rec = R.provider_record(key, mimei, addr, ttl)
        return self._run(self.server.publish(R.prov_key(mimei), R.encode_providers([rec])))

    def providers(self, mimei: str) -> list[dict]:
        """Valid, unexpired provider records of ``mimei`` found in the network."""
        got = self._run(self.server.lookup(R.prov_key(mimei)))
        return list(got[1]) if got and got[0] == "prov" else []

    def publish_version(self, info: dict, version: dict) -> int:
        """Publish the newest signed version record of a MiMei (with its info); returns
        how many nodes stored it. Raises records.InvalidRecord (bad, or too big)."""
        return self._run(self.server.publish(R.ver_key(info["id"]),
                                             R.encode_version({"info": info, "version": version})))

    def newest_version(self, mimei: str) -> dict | None:
        """The valid ``{"info", "version"}`` with the highest version number found."""
        got = self._run(self.server.lookup(R.ver_key(mimei)))
        return got[1] if got and got[0] == "ver" else None

    def contacts(self) -> list[tuple[str, str, int]]:
        """[(node ID hex, host, port)] of the routing table."""
        async def get():
            return [(n.id.hex(), n.ip, n.port) for b in self.server.protocol.router.buckets
                    for n in b.get_nodes()]
        return self._run(get(), 10)

    def stats(self) -> dict:
        """``{"size", "stored", "refused", "hops_median", "lookups", "skipped"}``
        (``skipped``: RPCs a crawl did not send to a node known to be silent)."""
        hops = sorted(self.server.hops)
        return {"size": self.size(), "stored": len(self.server.storage), "refused": self.server.protocol.refused,
                "hops_median": hops[len(hops) // 2] if hops else None, "lookups": len(hops),
                "skipped": self.server.protocol.skipped}
