"""The gateway as a daemon service: hypercorn on trio serving the HTTP door and WebDAV.

One port (``--http HOST:PORT``) serves both: ``/dav/...`` goes to WsgiDAV
(:mod:`.dav`) through hypercorn's own WSGI support, which runs each WebDAV request in a
worker thread (``trio.to_thread``: the engine may fetch and LMDB writes may wait there,
never on the event loop's thread); everything else goes to the ASGI application
:class:`~.web.WebApp`. The service runs in the daemon's nursery
(:mod:`mimeifs.daemon`), calls ``task_status.started()`` once the socket listens, and
ends when :meth:`GatewayService.stop` is called (hypercorn's graceful shutdown).

Addresses: nothing listens unless the user gives ``--http``; a bare port or a host
left out binds 127.0.0.1 only (:func:`parse_bind`).
"""

from __future__ import annotations

import json
import logging
import os

import trio

from .auth import WRITE_METHODS, Guard, node_token, presented
from .web import WebApp

log = logging.getLogger("mimeifs.gateway")

#: Largest WebDAV request body (hypercorn's WSGI support holds a body in memory).
DAV_MAX_BODY = 1 << 30
DAV_PREFIX = "/dav"
#: Seconds a connection may stay silent while the server waits to read from it.
READ_TIMEOUT = 120
#: ``<store>/gateway.json``: {"pid", "urls"} while a gateway serves the store.
INFO_FILE = "gateway.json"


def gateway_url(store_path: str) -> str | None:
    """The first URL a running gateway of the store listens on, or None."""
    try:
        with open(os.path.join(store_path, INFO_FILE)) as f:
            info = json.load(f)
        os.kill(int(info["pid"]), 0)
        return info["urls"][0].rstrip("/")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def parse_bind(spec: str) -> str:
    """``HOST:PORT`` as hypercorn's bind string; ``PORT`` or ``:PORT`` means
    127.0.0.1 (loopback unless the user names another address); ``[::1]:PORT`` for
    IPv6. Raises ValueError for anything else."""
    spec = spec.strip()
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = "", spec
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http wants HOST:PORT, not {spec!r}")
    host = host or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    return f"{host}:{int(port)}"


def _raise_fd_limit(want: int = 65536) -> None:
    """Raise this process's soft open-file limit toward its hard one: each connection
    is a descriptor, and a thousand clients must not hit a 1,024 soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d", soft)


def check_bind(bind: str) -> None:
    """Raise OSError with a clear message if ``bind`` (from :func:`parse_bind`) cannot be
    listened on now (in use, not an address of this machine, a privileged port)."""
    import socket
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {bind}: {e.strerror}") from None


class _Dispatch:
    """hypercorn's app-wrapper protocol over two applications: WebDAV (WSGI, in
    hypercorn's worker threads) under :data:`DAV_PREFIX`, the ASGI app elsewhere."""

    def __init__(self, asgi, wsgi, guard: Guard):
        from hypercorn.app_wrappers import ASGIWrapper, WSGIWrapper
        self.asgi = ASGIWrapper(asgi)
        self.wsgi = WSGIWrapper(wsgi, DAV_MAX_BODY) if wsgi is not None else None
        self.guard = guard

    async def _refuse(self, send, status: int, text: bytes, extra=()) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(text)).encode()), *extra]})
        await send({"type": "http.response.body", "body": text})

    def _dav_precheck(self, scope) -> tuple[int, bytes, tuple] | None:
        """hypercorn's WSGI support reads a whole body before WsgiDAV sees the request:
        a write without the token (401) or with a body over :data:`DAV_MAX_BODY` (413)
        is answered before a byte of its body is read."""
        if scope["method"].upper() not in WRITE_METHODS:
            return None
        hdrs = {k.lower(): v for k, v in scope["headers"]}
        auth = hdrs.get(b"authorization", b"").decode("latin-1")
        given = presented(auth or None, scope.get("query_string", b"").decode("latin-1"))
        if not self.guard.valid(given):
            return 401, b"401: writing needs the node token\n", (
                (b"www-authenticate", b'Basic realm="mimeifs"'),)
        try:
            if int(hdrs.get(b"content-length", b"0")) > DAV_MAX_BODY:
                return 413, b"413: body too large\n", ()
        except ValueError:
            return 400, b"400: bad content-length\n", ()
        return None

    async def __call__(self, scope, receive, send, sync_spawn, call_soon):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        p = scope["path"]
        if "\0" in p or ".." in p.split("/"):  # refused before any application sees it
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"14")]})
            await send({"type": "http.response.body", "body": b"404: bad path\n"})
            return
        if self.wsgi is not None and (p == DAV_PREFIX or p.startswith(DAV_PREFIX + "/")):
            refused = self._dav_precheck(scope)
            if refused is not None:
                await self._refuse(send, *refused)
                return
            await self.wsgi(dict(scope, root_path=DAV_PREFIX), receive, send, sync_spawn, call_soon)
        else:
            await self.asgi(scope, receive, send, sync_spawn, call_soon)


class GatewayService:
    """HTTP + WebDAV door of the daemon on ``bind`` (``HOST:PORT``) over ``view``.

    ``dav``: serve WebDAV under ``/dav/``. ``max_connections`` bounds the open
    connections (hypercorn's backlog and a per-connection task each; the event loop
    answers them one request step at a time). ``bound`` holds the address(es) listened
    on once started (port 0 picks a free one)."""

    essential = False

    def __init__(self, engine, view, bind: str, dav: bool = True, backlog: int = 1024):
        self.engine = engine
        self.view = view
        self.bind = parse_bind(bind)
        self.token = node_token(engine.store.key)
        self.guard = Guard(engine, self.token)
        self.web = WebApp(view, self.guard, fetching=engine.fetcher is not None)
        self.dav_app = None
        if dav:
            from .dav import make_dav_app
            self.dav_app = make_dav_app(view, self.guard)
        self.backlog = backlog
        self.bound: list[str] = []
        self.running = False
        self._stop: trio.Event | None = None

    def config(self):
        from hypercorn.config import Config
        c = Config()
        c.bind = [self.bind]
        c.backlog = self.backlog
        c.accesslog = None
        c.errorlog = logging.getLogger("mimeifs.gateway.hypercorn")
        c.keep_alive_timeout = 30
        c.read_timeout = READ_TIMEOUT  # a client silent this long mid-request is dropped
        c.graceful_timeout = 3
        c.wsgi_max_body_size = DAV_MAX_BODY
        c.include_server_header = False
        return c

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        from hypercorn.trio.run import worker_serve
        _raise_fd_limit()
        self._stop = trio.Event()
        self.running = True
        try:
            app = _Dispatch(self.web, self.dav_app, self.guard)

            class _Status:
                def started(inner, value=None):
                    self.bound = list(value or [])
                    log.info("gateway serves http on %s", ", ".join(self.bound))
                    self._write_info()
                    task_status.started()
            await worker_serve(app, self.config(), shutdown_trigger=self._stop.wait,
                               task_status=_Status())
        finally:
            self.running = False
            self._remove_info()

    # ------------------------------------------------------------------ gateway.json
    def _info_path(self) -> str:
        return os.path.join(self.engine.store.path, INFO_FILE)

    def _write_info(self) -> None:
        with open(self._info_path(), "w") as f:
            json.dump({"pid": os.getpid(), "urls": self.bound}, f)

    def _remove_info(self) -> None:
        try:
            with open(self._info_path()) as f:
                if json.load(f).get("pid") != os.getpid():
                    return
            os.unlink(self._info_path())
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
