"""Crawls of the DHT (``dht.py``): kademlia's node and value crawls, with the rounds of
limit 9 there (nodes known to be silent are not asked; a round does not wait out
``wait_timeout`` for late ones) and, for values, every answer of the k nearest nodes
validated and merged (limit 2). Anchors: Kademlia (Maymounkov & Mazieres 2002, section
2.3: a node that fails to respond is left out of the lookup; alpha requests at a time).
"""

from __future__ import annotations

import asyncio
import logging

from kademlia.crawling import NodeSpiderCrawl, RPCFindResponse, ValueSpiderCrawl
from kademlia.node import Node

from . import records as R

log = logging.getLogger("mimeifs.net.dht")

#: A crawl round waits for its slowest answers at most this long after the latest one
#: (or twice the time its first answer took, if longer) instead of ``wait_timeout``.
STRAGGLE = 0.5


def _answer(t: asyncio.Task) -> tuple:
    """A finished request's ``(answered, value)``; one that failed counts as a miss."""
    return (False, None) if t.cancelled() or t.exception() is not None else t.result()


async def _round(crawl, rpcmethod, late: dict | None = None, patient: bool = False) -> dict:
    """One round of ``crawl`` (kademlia's ``SpiderCrawl._find`` up to its gather): ask
    its next uncontacted nodes, and return ``{node ID: (answered, value)}`` once all
    answered, or once the rest are late (:data:`STRAGGLE`; limit 9): a late node counts
    as not answering in this crawl (added to ``late``, ID -> Node), while its request
    runs on and its reply or miss is recorded by the protocol as usual. A round where
    nobody answers waits ``wait_timeout`` as before, and so does a ``patient`` one."""
    count = crawl.alpha
    if crawl.nearest.get_ids() == crawl.last_ids_crawled:
        count = len(crawl.nearest)
    crawl.last_ids_crawled = crawl.nearest.get_ids()
    tasks, peers = {}, {}
    for peer in crawl.nearest.get_uncontacted()[:count]:
        tasks[peer.id] = asyncio.ensure_future(rpcmethod(peer, crawl.node))
        peers[peer.id] = peer
        crawl.nearest.mark_contacted(peer)
    loop = asyncio.get_running_loop()
    start, first, pending = loop.time(), None, set(tasks.values())
    while pending:
        wait = None if first is None or patient else max(STRAGGLE, 2 * (first - start))
        done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        if first is None and any(_answer(t)[0] for t in done):
            first = loop.time()
    out = {}
    for pid, t in tasks.items():
        if t.done():
            out[pid] = _answer(t)
        else:
            t.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing left unretrieved
            out[pid] = (False, None)
            if late is not None:
                late[pid] = peers[pid]
    return out


async def _ask_unless_silent(protocol, method, peer, target, skipped: dict | None = None):
    """``method(peer, target)``, or a missed reply at once if ``peer`` is silent (limit 9;
    the peer is then added to ``skipped``, ID -> Node)."""
    if protocol.is_silent(peer.id):
        protocol.skipped += 1
        if skipped is not None:
            skipped[peer.id] = peer
        return (False, None)
    return await method(peer, target)


class NodeCrawl(NodeSpiderCrawl):
    """kademlia's node crawl that does not ask nodes known to be silent (limit 9)."""

    async def find(self):
        p = self.protocol
        found = await _round(self, lambda peer, target: _ask_unless_silent(p, p.call_find_node, peer, target))
        return await self._nodes_found(found)


class CollectCrawl(ValueSpiderCrawl):
    """A value crawl that does not stop at the first round with a value: it asks every
    one of the k nearest nodes, validates each value and merges them (limit 2).
    Nodes known to be silent are not asked, nor late ones waited for (limit 9), unless
    the crawl would otherwise end without any value: then it asks those too, once,
    waiting for them as kademlia would have.
    After :meth:`find`: ``rounds`` (RPC rounds, the lookup's hops) and ``values``."""

    def __init__(self, protocol, node, peers, ksize, alpha):
        super().__init__(protocol, node, peers, ksize, alpha)
        self.rounds = 0
        self.kind = None
        self.payload = None
        self.first_hit_round = None
        self.skipped: dict[bytes, Node] | None = {}   # None: silent nodes are asked too

    async def find(self):
        self.rounds += 1
        p, skipped = self.protocol, self.skipped
        if skipped is None:   # the last resort: silent ones asked, everyone waited for
            found = await _round(self, p.call_find_value, patient=True)
        else:
            found = await _round(self, lambda peer, target: _ask_unless_silent(p, p.call_find_value, peer,
                                                                               target, skipped), skipped)
        return await self._nodes_found(found)

    async def _nodes_found(self, responses):
        toremove = []
        for peerid, response in responses.items():
            response = RPCFindResponse(response)
            if not response.happened():
                toremove.append(peerid)
            elif response.has_value():
                try:
                    kind, payload = R.decode(self.node.id, response.get_value())
                except R.InvalidRecord as e:
                    log.info("ignored an invalid DHT value: %s", e)
                    continue
                self._merge(kind, payload)
                if self.first_hit_round is None:
                    self.first_hit_round = self.rounds
            else:
                self.nearest.push(response.get_node_list())
        self.nearest.remove(toremove)
        if self.nearest.have_contacted_all():
            if self.payload is not None or not self.skipped:
                return self.payload
            again, self.skipped = list(self.skipped.values()), None
            for n in again:
                self.nearest.contacted.discard(n.id)
            self.nearest.push(again)
        return await self.find()

    def _merge(self, kind, payload):
        if self.kind is None:
            self.kind = kind
        if kind != self.kind:
            return
        if kind == "prov":
            self.payload = R.merge_providers(self.payload or [], payload)
        else:
            self.payload = R.newer_version(self.payload, payload)
