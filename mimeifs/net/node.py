"""The network node: a daemon service (``async run(task_status)``) that listens, dials,
runs the DHT, serves peers, fetches for the engine, follows and announces MiMei.

Composition (``mimeifs/daemon.py``)::

    fetcher = NetFetcher()
    engine = Engine(store, fetcher=fetcher)
    services.append(NetNode(store, config, engine, fetcher))   # config: net/config.py

Without ``config.listen`` no port is opened: no TCP listener and no DHT; the node can
still dial ``config.peers`` and fetch from them. With it, TCP (the stream protocol) and
UDP (the DHT) share the port number.

Loops (times in ``NetConfig``):

- *publish*: for every MiMei of this node's own whose rights let guests read, and every
  pinned one, a provider record every ``republish`` seconds (expiring after
  ``provider_ttl``); for this node's own, its newest signed version record as soon as
  ``last`` changes (checked every ``follow`` seconds).
- *follow*: for every remote MiMei, the DHT's newest version; a higher one than held is
  adopted (records from a provider), and fetched whole if pinned.
- *accounts*: every second, metered use is persisted (``meter.py``) and a cumulative
  IOU is signed and sent to every lender that served this node more since the last one.
- *replicas*: for every ``replicate`` target, live holders are counted (a provider that
  answers a ping) and more peers are asked to pin while there are fewer than wanted.

The local control socket ``<store>/net/ctl.sock`` (mode 0600) answers the CLI
(``ctl.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter

import trio

from ..ledger.credit import CreditBook, CreditError
from . import conn as C
from . import tlsid
from .client import Client
from .config import NetConfig
from .dht import DHT
from .meter import CHARGED, Meter
from .replicas import Replication
from .serve import GUEST_READ, Serving, read_members

log = logging.getLogger("mimeifs.net")
# kademlia logs every crawl at INFO (a line of 20 contacts) and rpcudp every missed reply at
# ERROR; both are routine here (dht.py counts misses itself)
logging.getLogger("kademlia").setLevel(logging.WARNING)
logging.getLogger("rpcudp").setLevel(logging.CRITICAL)


#: Seconds an unreachable peer is left out of candidate lists.
DOWN_FOR = 30.0


class NetFetcher:
    """The engine's fetcher (``engine/fetch.py``): blocking calls from worker threads,
    run on the node's trio loop. Made before the engine; the :class:`NetNode` built
    with it binds itself as ``node``."""

    def __init__(self, node: "NetNode | None" = None):
        self.node = node

    def _call(self, fn, *args):
        from ..engine.fetch import FetchError
        if self.node is None or self.node.token is None:
            raise FetchError("the network node is not running")
        try:
            return trio.from_thread.run(fn, *args, trio_token=self.node.token)
        except trio.RunFinishedError as e:
            raise FetchError("the network node stopped") from e

    def fetch_objects(self, wants):
        return self._call(self.node.client.fetch_objects, wants)

    def fetch_mimei(self, mimei):
        return self._call(self.node.client.fetch_mimei, mimei)


class NetNode(Replication):
    """One node on the network (see the module docstring). ``store``: an open Store;
    ``config``: a :class:`NetConfig`; ``engine``: the engine it serves from (or later
    through :meth:`attach`); ``fetcher``: the :class:`NetFetcher` the engine was made
    with (one is made if None). A daemon service: not essential (the daemon goes on
    without the network if it fails)."""

    essential = False

    def __init__(self, store, config: NetConfig | None = None, engine=None, fetcher: NetFetcher | None = None):
        self.store, self.cfg, self.engine = store, config or NetConfig(), engine
        self.key = store.key
        self.id = store.key.id
        self.book = CreditBook(store)
        self.meter = Meter(self.book, self.cfg.default_credit, self.cfg.metering)
        self.fetcher = fetcher or NetFetcher()
        self.fetcher.node = self
        self.client = Client(self)
        self.serving = Serving(self)
        self.conns: dict[str, C.Connection] = {}
        self.addrs: dict[str, tuple] = {}
        self.bad: dict[str, tuple[float, str]] = {}
        self.violations: Counter = Counter()
        self.refused_by: dict[str, dict] = {}
        self.forbidden: dict[str, str] = {}
        self.received: Counter = Counter()       # lender -> bytes not yet in an IOU
        self.closed_bytes = Counter()
        self.fetched_bytes = 0
        self.replicas: dict[str, dict] = {}
        self.announced: dict[str, float] = {}
        self.published_version: dict[str, int] = {}
        self.dht: DHT | None = None
        self.token = None
        self.nursery = None
        self.listen_addr: tuple | None = None
        self._dial_locks: dict[str, trio.Lock] = {}
        self._members: tuple[float, set] = (0.0, set())
        self.started_at = time.time()

    def spawn(self, fn, *args) -> None:
        """Run ``await fn(*args)`` in the node's nursery; an exception is logged, never
        allowed to end the node (a peer's request or a prefetch must not take it down)."""
        async def guarded():
            try:
                await fn(*args)
            except Exception:
                log.exception("network task %s failed", getattr(fn, "__name__", fn))
        self.nursery.start_soon(guarded)

    def attach(self, engine) -> None:
        """Give the node the engine it serves from and fetches for."""
        self.engine = engine

    # ------------------------------------------------------------------ lifecycle
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: listener, DHT, control socket and loops."""
        from .ctl import serve_ctl
        self.token = trio.lowlevel.current_trio_token()
        cfg = self.cfg
        self.cctx = tlsid.client_context()
        try:
            async with trio.open_nursery() as n:
                self.nursery = n
                if cfg.listen:
                    cert, key = tlsid.make_certificate(self.key, os.path.join(self.store.path, "net"))
                    self.sctx = tlsid.server_context(cert, key)
                    host, port = cfg.listen
                    listeners = await trio.open_tcp_listeners(port, host=host)
                    port = listeners[0].socket.getsockname()[1]
                    self.listen_addr = (host, port)
                    self.dht = DHT(self.id, host, port, cfg.ksize, cfg.alpha, cfg.rpc_timeout, cfg.dht_refresh,
                                   timeout=max(30.0, cfg.rpc_timeout * 6))
                    await trio.to_thread.run_sync(self.dht.start)
                    n.start_soon(trio.serve_listeners, self._on_tcp, listeners)
                    log.info("node %s listening on %s:%d (TCP stream, UDP DHT)", self.id, host, port)
                for m in await trio.to_thread.run_sync(self._remote_mimei):
                    self.client.recent[m] = 0.0
                await n.start(serve_ctl, self)
                for addr in cfg.peers:
                    n.start_soon(self._keep_peer, tuple(addr))
                n.start_soon(self._loop_publish)
                n.start_soon(self._loop_follow)
                n.start_soon(self._loop_accounts)
                n.start_soon(self._loop_replicas)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._shutdown)

    def _shutdown(self) -> None:
        try:
            self.meter.flush()
        except Exception:
            log.exception("flushing the meter")
        if self.dht is not None:
            self.dht.stop()
        self.token = None

    async def _on_tcp(self, tcp) -> None:
        try:
            c = await C.accept(tcp, self.key, self.sctx, **self._conn_kw())
        except Exception as e:
            log.info("refused an incoming connection: %s", e)
            return
        await self._run_conn(c)

    def _conn_kw(self) -> dict:
        return {"max_frame": self.cfg.max_frame, "max_inflight": self.cfg.max_inflight,
                "on_violation": self._violation, "on_reply": self._on_reply}

    async def _run_conn(self, c: C.Connection) -> None:
        old = self.conns.get(c.peer_id)
        self.conns[c.peer_id] = c
        if c.peer_listen:
            self.addrs[c.peer_id] = c.peer_listen
        log.info("connected to %s (%s)", c.peer_id[:12], "out" if c.outbound else "in")
        try:
            await trio.to_thread.run_sync(self.meter.check, c.peer_id)  # the default letter
        except CreditError:
            pass
        try:
            await c.run(self.serving.handle)
        finally:
            self.closed_bytes["in"] += c.bytes_in
            self.closed_bytes["out"] += c.bytes_out
            if self.conns.get(c.peer_id) is c:
                if old is not None and not old.closed.is_set():
                    self.conns[c.peer_id] = old
                else:
                    del self.conns[c.peer_id]

    async def connect(self, peer: str | None, addr: tuple | None) -> C.Connection:
        """An open connection to ``peer`` (dialing ``addr`` if needed; ``peer`` None:
        whoever answers there). Raises OSError, TooSlowError, PeerIdentityError, ..."""
        c = self.conns.get(peer) if peer else None
        if c is not None and not c.closed.is_set():
            return c
        lock = self._dial_locks.setdefault(peer or repr(addr), trio.Lock())
        async with lock:
            c = self.conns.get(peer) if peer else None
            if c is not None and not c.closed.is_set():
                return c
            if addr is None:
                raise OSError(f"no address known for {peer}")
            c = await C.dial(addr[0], addr[1], self.key, self.cctx, expected=peer,
                             listen=self.listen_addr, **self._conn_kw())
            self.conns[c.peer_id] = c
            self.spawn(self._run_conn, c)
            return c

    async def _keep_peer(self, addr: tuple) -> None:
        """Stay connected to a configured peer; bootstrap the DHT through it."""
        delay = 0.5
        while True:
            try:
                pid = next((p for p, a in self.addrs.items() if a == addr), None)
                c = await self.connect(pid, addr)
                if self.dht is not None and self.dht.size() == 0:
                    await trio.to_thread.run_sync(self.dht.bootstrap, [addr], abandon_on_cancel=True)
                delay = 0.5
                await c.closed.wait()
            except Exception as e:
                log.info("peer %s:%s unreachable: %s", addr[0], addr[1], e)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    # ------------------------------------------------------------------ bookkeeping
    def _violation(self, peer: str, why: str) -> None:
        self.violations[peer] += 1
        if why != "busy":
            self.mark_bad(peer, why)

    def mark_bad(self, peer: str, why: str) -> None:
        """Do not ask ``peer`` for anything for ``bad_peer_for`` seconds."""
        self.bad[peer] = (time.monotonic() + self.cfg.bad_peer_for, why)
        log.warning("peer %s marked bad for %.0f s: %s", peer[:12], self.cfg.bad_peer_for, why)

    def mark_down(self, peer: str, why: str) -> None:
        """``peer`` could not be reached: leave it out of candidate lists for
        ``down_for`` seconds (its provider records outlive it until they expire)."""
        until = time.monotonic() + DOWN_FOR
        if self.bad.get(peer, (0, ""))[0] < until:
            self.bad[peer] = (until, f"unreachable: {why}")
        log.info("peer %s unreachable: %s", peer[:12], why)

    def is_bad(self, peer: str) -> bool:
        b = self.bad.get(peer)
        return b is not None and b[0] > time.monotonic()

    def addr_of(self, peer: str) -> tuple | None:
        c = self.conns.get(peer)
        return (c.peer_listen if c else None) or self.addrs.get(peer)

    def is_member(self, peer: str) -> bool:
        """Whether this node's organization ledger admits ``peer`` (cached 5 s)."""
        t, ms = self._members
        if time.monotonic() - t > 5:
            ms = read_members(self.store)
            self._members = (time.monotonic(), ms)
        return peer in ms

    def _on_reply(self, peer: str, t: str, n: int) -> None:
        if t in CHARGED:
            self.received[peer] += n

    def is_pinned(self, mimei: str) -> bool:
        try:
            st = self.engine.state(mimei)
        except Exception:
            return False
        return bool(st.get("pinned")) or not st.get("remote")

    def pinned_changed(self, mimei: str) -> None:
        self.announced.pop(mimei, None)

    def _remote_mimei(self) -> list[str]:
        return [m for m in self.engine.list() if self.engine.state(m).get("remote")]

    # ------------------------------------------------------------------ loops
    def _to_announce(self) -> list[tuple[str, dict | None]]:
        """(MiMei, newest version record to publish or None) for own public + pinned."""
        e, out = self.engine, []
        for m in e.list():
            st = e.state(m)
            if st.get("remote"):
                if st.get("pinned"):
                    out.append((m, None))
                continue
            info = e.info(m)
            if not info.get("rights", 0o644) & GUEST_READ or st.get("last") is None:
                continue
            out.append((m, {"info": info, "version": e.version(m, st["last"])}))
        return out

    async def _loop_publish(self) -> None:
        while True:
            if self.dht is not None and self.listen_addr is not None:
                try:
                    todo = await trio.to_thread.run_sync(self._to_announce)
                except Exception:
                    log.exception("listing MiMei to announce")
                    todo = []
                now = time.monotonic()
                for m, val in todo:
                    try:
                        if now - self.announced.get(m, -1e18) >= self.cfg.republish:
                            await trio.to_thread.run_sync(self.dht.announce, self.key, m, self.listen_addr,
                                                          self.cfg.provider_ttl, abandon_on_cancel=True)
                            self.announced[m] = now
                        if val is not None and self.published_version.get(m) != val["version"]["n"]:
                            await trio.to_thread.run_sync(self.dht.publish_version, val["info"], val["version"],
                                                          abandon_on_cancel=True)
                            self.published_version[m] = val["version"]["n"]
                    except Exception as e:
                        log.info("announcing %s: %s", m[:12], e)
            await trio.sleep(min(self.cfg.follow, self.cfg.republish))

    async def _loop_follow(self) -> None:
        while True:
            await trio.sleep(self.cfg.follow)
            try:
                ms = await trio.to_thread.run_sync(self._remote_mimei)
            except Exception:
                continue
            for m in ms:
                try:
                    await self.follow(m)
                except Exception as e:
                    log.info("following %s: %s", m[:12], e)

    async def follow(self, mimei: str) -> bool:
        """Adopt a newer version of remote ``mimei`` if the network has one (and fetch
        it if pinned). Returns True if something new was adopted."""
        e = self.engine
        st = await trio.to_thread.run_sync(e.state, mimei)
        held = st.get("last")
        newest = None
        if self.dht is not None:
            val = await trio.to_thread.run_sync(self.dht.newest_version, mimei, abandon_on_cancel=True)
            newest = val["version"]["n"] if val else None
            if newest is None or (held is not None and newest <= held):
                return False
        recs = await self.client.fetch_mimei(mimei)
        if not recs:
            return False
        top = max((v["n"] for v in recs.get("versions") or []), default=-1)
        if held is not None and top <= held:
            return False
        await trio.to_thread.run_sync(e.adopt, recs)
        log.info("%s: adopted version %d", mimei[:12], top)
        if st.get("pinned"):
            await self.client.pin(mimei, False)
        return True

    async def _loop_accounts(self) -> None:
        while True:
            await trio.sleep(1.0)
            await self.settle_accounts()

    async def settle_accounts(self) -> None:
        """Persist metered use and send every lender a new cumulative IOU."""
        try:
            await trio.to_thread.run_sync(self.meter.flush)
        except Exception:
            log.exception("flushing the meter")
        for lender in [p for p, n in self.received.items() if n > 0]:
            n = self.received.pop(lender)
            try:
                rec = await trio.to_thread.run_sync(self._sign_iou, lender, n)
            except CreditError as e:
                log.warning("IOU to %s: %s", lender[:12], e)
                continue
            c = self.conns.get(lender)
            if c is None or c.closed.is_set():
                continue  # kept as iou_out; the next one (cumulative) will carry it
            try:
                await c.request("iou", timeout=10, iou=rec)
            except Exception as e:
                log.info("IOU to %s not taken: %s", lender[:12], e)

    def _sign_iou(self, lender: str, n: int) -> dict:
        old = self.book.iou_out(lender)
        return self.book.issue_iou(lender, (old["amount"] if old else 0) + n)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """What ``mimeifs net status`` shows (JSON-ready)."""
        live = [c for c in self.conns.values() if not c.closed.is_set()]
        now = time.monotonic()
        st = os.stat(os.path.join(self.store.path, "lmdb", "data.mdb"))
        return {
            "node": self.id, "listen": list(self.listen_addr) if self.listen_addr else None,
            "uptime": round(time.time() - self.started_at, 1),
            "dht": self.dht.stats() if self.dht else None,
            "connections": len(live),
            "bytes_in": self.closed_bytes["in"] + sum(c.bytes_in for c in live),
            "bytes_out": self.closed_bytes["out"] + sum(c.bytes_out for c in live),
            "served": dict(self.meter.served),
            "cache": {"store_bytes": st.st_blocks * 512, "fetched_bytes": self.fetched_bytes,
                      "refused": self.engine.chunks.stats.get("refused", 0)},
            "refused": self.meter.refusals,
            "refused_by": self.refused_by,
            "forbidden": self.forbidden,
            "bad_peers": {p: {"for": round(u - now, 1), "why": w} for p, (u, w) in self.bad.items() if u > now},
            "replicas": self.replicas,
            "metering": self.cfg.metering,
        }

    def peers(self) -> list[dict]:
        """Connected peers: ID, address, direction, bytes both ways, served (metered)."""
        return [{"peer": p, "addr": list(c.peer_listen) if c.peer_listen else None,
                 "direction": "out" if c.outbound else "in", "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
                 "served": self.meter.served.get(p, 0), "bad": self.is_bad(p)}
                for p, c in sorted(self.conns.items()) if not c.closed.is_set()]
