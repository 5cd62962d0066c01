"""The composition root: builds store, engine, view and services, and runs them in one
trio nursery (DESIGN.md "Layers": ``mimeifs/daemon.py``).

Everything the daemon does is a *service*: an object with ``async def run(self,
task_status=trio.TASK_STATUS_IGNORED)`` that calls ``task_status.started()`` once it
serves, and optionally ``stop()`` (ask it to finish) and ``essential`` (when it ends,
the daemon ends: the FUSE mount is essential, so ``umount`` stops the daemon). All
services are built here by constructor calls and nothing is set on them afterwards:

- :class:`~mimeifs.fuse.mount.FuseService`, the FUSE door (``mimeifs mount``; absent
  for the headless ``mimeifs serve``);
- :class:`Syncer`, committed data to disk every :data:`SYNC_EVERY` seconds;
- :class:`Signals`, SIGTERM / SIGINT / SIGHUP end the daemon cleanly;
- :class:`~mimeifs.resp.server.RespServer`, the RESP door onto db MiMei (always on the
  store's Unix socket ``resp.sock``, mode 0600; on TCP with ``extra["resp"]`` =
  ``"HOST:PORT"``, the ``--resp`` option of ``mount`` and ``serve``);
- :class:`~mimeifs.shares.service.SharesService`, the ``.mmfs`` shares: the folder
  followed, sources kept in step, scheduled backups (its registry is the view's
  ``shared/``; ``extra={"shares": False}`` leaves it out);
- :class:`~mimeifs.gateway.service.GatewayService`, the HTTP and WebDAV door
  (``--http HOST:PORT``; absent unless asked for);
- further doors and the network node are one more constructor call in
  :func:`build_services` each (a network node is also the engine's fetcher: it is made
  first, handed to :class:`Engine` as ``fetcher``, and its service gets the engine).

A service that fails is logged; the daemon goes on without it unless it is essential.

Concurrency contract (the daemon's threads):

- the trio thread runs every service's event loop, the FUSE handlers included. It never
  waits for the network (:func:`mimeifs.engine.fetch.forbid_fetching_here`): a request
  that needs a missing object is answered from a worker thread;
- ``trio.to_thread`` workers run whole-MiMei commands (backup, restore, ...), large
  reads, imports' invalidation and fetches;
- LMDB allows one write transaction at a time across the process; each is opened,
  filled and committed inside one engine call on one thread. FUSE writes hold it for one
  request (one 1 MiB write at most); a backup holds it for the whole freeze (from the
  first dirty tree to the signed record), during which cur writes wait; ``gc`` holds it
  for the whole mark and sweep. Reads never wait for it (MVCC snapshots).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass, field

import trio

from .engine.db import Store
from .engine.fetch import forbid_fetching_here
from .engine.mimei import Engine
from .view import View

log = logging.getLogger("mimeifs.daemon")

SYNC_EVERY = 5.0
STOP_GRACE = 10.0


def tune_malloc() -> bool:
    """Keep this process's 1-8 MiB buffers (frames, packs, reads) on glibc's heap.

    glibc serves an allocation of more than 128 KiB-32 MiB (adaptive) with its own
    ``mmap`` and gives it back with ``munmap`` when freed, so each 1 MiB pack that
    crosses the daemon costs 256 fresh page faults per copy, and trims the heap top as
    soon as 128 KiB are free. ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and
    ``M_TRIM_THRESHOLD`` 64 MiB reuse that memory instead (measured on a 512 MiB lazy
    read: ~12% less CPU on both nodes); at most 64 MiB freed memory stay with the
    process. Returns False where there is no glibc ``mallopt``."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 64 << 20))


@dataclass
class DaemonConfig:
    """What the user asked for. ``mountpoint`` None is a headless node (``serve``).

    Network, RESP and HTTP options are added here as those services are, with a
    default that opens nothing (no port listens unless the user says so)."""
    store_path: str
    mountpoint: str | None = None
    allow_other: bool = False
    debug: bool = False
    busy_poll_us: int = 100
    dir_readahead: bool = True
    http: str | None = None  # HOST:PORT of the HTTP/WebDAV gateway; None: no gateway
    extra: dict = field(default_factory=dict)


class Syncer:
    """Flushes committed LMDB transactions to disk every ``every`` seconds (the store
    runs without fsync per commit; see :class:`~mimeifs.engine.db.Store`)."""

    essential = False

    def __init__(self, store: Store, every: float = SYNC_EVERY):
        self.store = store
        self.every = every

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        while True:
            await trio.sleep(self.every)
            await trio.to_thread.run_sync(self.store.sync)


class Signals:
    """Ends the daemon on SIGTERM, SIGINT or SIGHUP (``stop`` is the daemon's)."""

    essential = False

    def __init__(self, stop):
        self.stop_daemon = stop

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as it:
            task_status.started()
            async for sig in it:
                log.info("signal %d: stopping", sig)
                self.stop_daemon()
                return


class Daemon:
    """One running node: the engine, the view and the services of ``cfg``.

    ``run(ready)`` blocks until the daemon stops; ``ready(msg)`` is called once with
    "ok" when every service serves, or with "error: ..." if one could not start."""

    def __init__(self, cfg: DaemonConfig):
        self.cfg = cfg
        self.store = Store.open(cfg.store_path)
        self.net_config = net_config(cfg)
        self.fetcher = None
        if self.net_config is not None:
            from .net.node import NetFetcher
            self.fetcher = NetFetcher()
        self.engine = Engine(self.store, fetcher=self.fetcher)
        reaped = self.engine.wt.reap_orphans()
        if reaped:
            log.info("freed %d orphaned inodes left by an earlier run", reaped)
        self.view = View(self.engine, os.getuid())
        self.services = build_services(self)
        self._stop: trio.Event | None = None  # made inside trio.run
        self._nursery = None
        self._token = None

    # ------------------------------------------------------------------ running
    def stop(self) -> None:
        """Ask the daemon to stop (any thread)."""
        if self._token is not None:
            self._token.run_sync_soon(self._stop.set)

    def notify(self, fn, *args) -> None:
        """Run ``await fn(*args)`` as a task of the daemon, from any thread (for engine
        change listeners, which run on whichever thread made the change)."""
        if self._token is None:
            return
        try:
            self._token.run_sync_soon(self._nursery.start_soon, fn, *args)
        except trio.RunFinishedError:
            pass

    async def _guard(self, svc, task_status=trio.TASK_STATUS_IGNORED):
        name = type(svc).__name__
        try:
            await svc.run(task_status=task_status)
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("service %s failed", name)
            if svc.essential:
                self._stop.set()
            return
        if svc.essential:
            log.info("service %s ended", name)
            self._stop.set()

    async def main(self, ready) -> None:
        with forbid_fetching_here():
            await self._main(ready)

    async def _main(self, ready) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as n:
            self._nursery = n
            # before any service serves: whoever sees the mount (or a port) finds the
            # daemon's pid (run() removes the file again if a service cannot start)
            self._write_info()
            try:
                for svc in self.services:
                    await n.start(self._guard, svc)
            except Exception as e:
                log.exception("a service could not start")
                ready(f"error: {e}")
                n.cancel_scope.cancel()
                return
            ready("ok")
            await self._stop.wait()
            for svc in self.services:
                stop = getattr(svc, "stop", None)
                if stop is not None:
                    try:
                        stop()
                    except Exception:
                        log.exception("stopping %s", type(svc).__name__)
            with trio.move_on_after(STOP_GRACE):
                while any(getattr(s, "running", False) for s in self.services):
                    await trio.sleep(0.05)
            n.cancel_scope.cancel()

    def run(self, ready=lambda msg: None) -> int:
        """Serve until stopped; returns the exit code (0 clean, 1 failed)."""
        code = 0
        tune_malloc()
        try:
            trio.run(self.main, ready)
        except BaseException:
            log.exception("daemon loop failed")
            ready("error: daemon loop failed")
            code = 1
        finally:
            for svc in self.services:
                close = getattr(svc, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        log.exception("closing %s", type(svc).__name__)
            self._remove_info()
            self.store.close()
            log.info("stopped")
        return code

    # ------------------------------------------------------------------ mount.json
    def _info_path(self) -> str:
        return os.path.join(self.store.path, "mount.json")

    def _write_info(self) -> None:
        mp = os.path.abspath(self.cfg.mountpoint) if self.cfg.mountpoint else None
        info = json.dumps({"pid": os.getpid(), "mountpoint": mp}).encode()
        try:  # in place over the last one's blocks: works on a full filesystem
            self.store.write_runfile("mount.json", info)
        except OSError as e:
            log.error("cannot write %s (%s): CLI commands will not find this daemon",
                      self._info_path(), e.strerror or e)
        if self.store.low_space:
            log.warning("%s: cur writes answer ENOSPC until space is freed",
                        self.store.low_space)
        log.info("serving %s%s (pid %d)", self.store.path, f" at {mp}" if mp else " headless",
                 os.getpid())

    def _remove_info(self) -> None:
        try:
            with open(self._info_path()) as f:
                if json.load(f).get("pid") != os.getpid():
                    return
            self.store.drop_runfile("mount.json")
        except (OSError, ValueError):
            pass


def build_services(d: Daemon) -> list:
    """The services of daemon ``d``, in start order (each a constructor call)."""
    cfg = d.cfg
    services: list = [Signals(d.stop), Syncer(d.store)]
    if cfg.extra.get("shares", True):
        from .shares.service import SharesService
        shares = SharesService(d.engine, d.view, d.store.path, cfg.mountpoint)
        d.view.shares = shares.registry  # what the view's shared/ shows
        services.append(shares)
    if cfg.mountpoint is not None:
        from .fuse.mount import FuseService
        services.append(FuseService(d.engine, d.view, cfg.mountpoint, allow_other=cfg.allow_other,
                                    debug=cfg.debug, busy_poll_us=cfg.busy_poll_us,
                                    dir_readahead=cfg.dir_readahead, notify=d.notify))
    from .resp.server import RespServer  # db MiMei over RESP: the store's Unix socket, TCP if asked
    services.append(RespServer(d.engine, cfg.extra.get("resp"),
                               None if cfg.extra.get("resp_unix", True) else ""))
    if d.net_config is not None:
        from .net.node import NetNode
        services.append(NetNode(d.store, d.net_config, d.engine, fetcher=d.fetcher))
    if cfg.http:
        from .gateway.service import GatewayService
        services.append(GatewayService(d.engine, d.view, cfg.http))
    return services


def net_config(cfg: DaemonConfig):
    """The network node's settings (``mimeifs/net/config.py``): the store's
    ``config.toml`` ``[net]`` under ``cfg.extra["net"]`` (``listen``, ``peers`` from the
    command line); None when neither listens nor names a peer (then no network runs and
    no port opens). Raises ``net.config.ConfigError``."""
    from .net.config import load
    opts = cfg.extra.get("net") or {}
    c = load(cfg.store_path, listen=opts.get("listen"), peers=list(opts.get("peers") or []) or None)
    return c if (c.listen or c.peers) else None


class StartError(Exception):
    """The daemon could not start; the message says why."""


def start(cfg: DaemonConfig, foreground: bool = False) -> int:
    """Run a daemon for ``cfg``. Foreground: serve until stopped, logging to stderr, and
    return the exit code. Background: fork a daemon (``setsid``, logging to
    ``<store>/mimeifs.log``) and return 0 once every service serves; raise
    :class:`StartError` with the daemon's own error otherwise."""
    import sys
    fmt = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    level = logging.DEBUG if cfg.debug else logging.INFO
    if foreground:
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt)
        try:
            d = Daemon(cfg)
        except Exception as e:
            log.error("cannot start: %s", e)
            return 1
        return d.run()
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        msg = b"".join(chunks).decode(errors="replace")
        if msg != "ok":
            os.waitpid(pid, 0)
            raise StartError(msg.removeprefix("error: ") or "the daemon exited before it served")
        return 0
    # child: the daemon
    os.close(r)
    said = False

    def ready(msg: str) -> None:
        nonlocal said
        if not said:
            said = True
            os.write(w, msg.encode()[:4000])
            os.close(w)

    code = 1
    try:
        os.setsid()
        fd = os.open(os.path.join(cfg.store_path, "mimeifs.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        nul = os.open(os.devnull, os.O_RDWR)
        os.dup2(nul, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(nul)
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt, force=True)
        try:
            d = Daemon(cfg)
        except Exception as e:
            log.error("cannot start: %s", e)
            ready(f"error: {e}")
        else:
            code = d.run(ready)
    except BaseException:
        code = 1
    finally:
        try:
            ready("error: the daemon exited before it served")
        except OSError:
            pass
    os._exit(code)
