"""The HTTP door's read side: an ASGI application serving the view with GET and HEAD.

Per request (URL forms in :mod:`.places`):

- a file: its bytes, ``Content-Type`` from :mod:`mimetypes`, ``ETag`` = the file's
  blake3 in a version or a Mac file (``"<64 hex>"``; a cur file, which has no stored
  hash, gets a weak ``W/"<inode>-<size>-<mtime ns>"``), ``Last-Modified``,
  ``X-MiMei-Id`` and ``X-MiMei-Version`` (the number ``last`` / ``release`` named at
  that moment, or ``cur``), ``Cache-Control: public, max-age=31536000, immutable`` for
  numbered versions and Mac files and ``no-cache`` for cur, last and release;
- a single byte range (RFC 9110 §14: ``bytes=a-b``, ``a-``, ``-n``; 206 with
  ``Content-Range``; 416 when unsatisfiable; ``If-Range`` with an ETag; several
  ranges are answered with the whole file, which the RFC allows);
- ``If-None-Match`` (a list or ``*``): 304;
- a directory: a redirect to its URL with a ``/`` first, then ``index.html`` when it
  has one (an HTML5 application runs from its own URL), else a listing page
  (:mod:`.listing`) with sizes, times and each version file's blake3;
- a symbolic link in a version or cur: a redirect to its relative target (an absolute
  target is 404: it would name something outside the view).

Reads of more than :data:`INLINE` bytes run in worker threads in blocks of
:data:`BLOCK` bytes (:data:`SMALL_BLOCK` once :data:`BIG_STREAMS` streams hold a big
one); the next block is read while one is sent, so a slow client holds only its own
tasks and two blocks: a thousand stalled readers hold at most 256 MiB + 1000 x 512 KiB. Anything
else runs on the event loop's thread, where fetching is forbidden: a request that needs
an object this store lacks is prepared again in a worker thread, where the engine
fetches it (the FUSE door's pattern). Errors map once (:func:`status_of`).
"""

from __future__ import annotations

import errno
import logging
import mimetypes
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import quote

import blake3
import trio

from ..engine.errors import ChunkMissing, EngineError
from . import listing
from .dbkeys import DbKeys
from .auth import Guard, presented
from .places import Place, locate

log = logging.getLogger("mimeifs.gateway")

BLOCK = 1 << 20
SMALL_BLOCK = 256 << 10
#: Streams that may hold a :data:`BLOCK` at once; further ones use :data:`SMALL_BLOCK`
#: (the engine reads 1 MiB at a time fastest; this bounds what stalled readers hold).
BIG_STREAMS = 128
INLINE = 128 << 10
IMMUTABLE = "public, max-age=31536000, immutable"
_STATUS = {errno.ENOENT: 404, errno.ENOTDIR: 404, errno.EACCES: 403, errno.EPERM: 403,
           errno.EROFS: 405, errno.EISDIR: 405, errno.EINVAL: 400, errno.ENAMETOOLONG: 414,
           errno.EEXIST: 409, errno.ENOTEMPTY: 409, errno.ENOSPC: 507, errno.EBUSY: 423}


def status_of(e: OSError) -> int:
    """The HTTP status for an engine error (ENOENT 404, EACCES 403, EROFS 405, ...);
    a missing object that could not be fetched is 503, anything else 500."""
    if isinstance(e, ChunkMissing):
        return 503
    return _STATUS.get(e.errno or 0, 500)


@dataclass(slots=True)
class _Facts:
    """What a small file of a numbered version or a Mac file answers with, whatever
    the conditional and range headers: its MiMei, node, size, ETag, headers, bytes."""
    mimei: str
    node: object
    size: int
    etag: str
    headers: list
    body: bytes | None


class HotFiles:
    """Replies of small immutable files (numbered versions, Mac files) by URL path,
    least recently used first out, at most ``budget`` bytes of content. Immutable
    content never goes stale; a removed MiMei is checked for on every hit."""

    def __init__(self, budget: int = 64 << 20, max_entries: int = 65536):
        self.budget, self.max_entries = budget, max_entries
        self.used = 0
        self._d: OrderedDict[str, _Facts] = OrderedDict()

    def get(self, path: str) -> "_Facts | None":
        f = self._d.get(path)
        if f is not None:
            self._d.move_to_end(path)
        return f

    def put(self, path: str, f: "_Facts") -> None:
        old = self._d.pop(path, None)
        if old is not None:
            self.used -= old.size
        self._d[path] = f
        self.used += f.size
        while self.used > self.budget or len(self._d) > self.max_entries:
            _k, gone = self._d.popitem(last=False)
            self.used -= gone.size


@dataclass
class Reply:
    """What a request gets: status, headers, a body in memory, or a file to stream
    (``node``, ``start``, ``length``)."""
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    node: object = None
    start: int = 0
    length: int = 0

    def add(self, name: str, value: str) -> None:
        self.headers.append((name.encode(), value.encode("latin-1", "replace")))


def _plain(status: int, text: str, **hdr) -> Reply:
    r = Reply(status, body=(text + "\n").encode())
    r.add("content-type", "text/plain; charset=utf-8")
    for k, v in hdr.items():
        r.add(k.replace("_", "-"), v)
    return r


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    strip = lambda t: t.strip().removeprefix("W/")  # noqa: E731 (weak comparison, RFC 9110 §13.1.2)
    return strip(etag) in (strip(t) for t in header.split(","))


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """(start, length) of a single ``bytes=`` range of a ``size``-byte file; None to
    serve the whole file (no range, several ranges, or a unit we do not know);
    ``"unsatisfiable"`` for 416."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    a, dash, b = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return "unsatisfiable"
            start = max(0, size - n)
            return start, size - start
        start = int(a)
        end = int(b) if b != "" else size - 1
    except ValueError:
        return None
    if start < 0:
        return None
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None
    end = min(end, size - 1)
    return start, end - start + 1


async def _until_disconnect(receive, scope: trio.CancelScope, gone: trio.Event,
                            watch: trio.CancelScope) -> None:
    """Cancel ``scope`` (a file's stream) when the client goes away, so no more blocks
    are read for nobody (ASGI's ``http.disconnect``); ``gone`` tells the stream. The
    stream cancels ``watch`` before its last block: hypercorn's own end of the request
    (the disconnect it reports after every response) is not the client leaving."""
    with watch:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone.set()
                scope.cancel()
                return


class WebApp:
    """ASGI application (HTTP scope, GET / HEAD / OPTIONS) over ``view`` with
    ``guard`` (:class:`~.auth.Guard`) deciding who may read what. ``fetching``: the
    engine has a fetcher, so a missing object is worth a worker thread."""

    def __init__(self, view, guard: Guard, fetching: bool = False):
        self.view = view
        self.guard = guard
        self.fetching = fetching
        self._big = 0  # streams holding a BLOCK now (event loop thread only)
        self.hot = HotFiles()
        self.db = DbKeys(view, guard)

    async def __call__(self, scope, receive, send):
        method = scope["method"]
        if method == "OPTIONS":
            r = Reply(204)
            r.add("allow", "GET, HEAD, OPTIONS")
        elif method not in ("GET", "HEAD"):
            r = _plain(405, "method not allowed here (WebDAV is under /dav/)", allow="GET, HEAD, OPTIONS")
        else:
            hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                if scope["path"].startswith("/db/"):
                    r = await self._db(scope, hdrs)
                else:
                    r = await self._call(self.prepare, method, scope["path"],
                                         scope.get("query_string", b"").decode("latin-1"), hdrs)
            except OSError as e:
                st = status_of(e)
                if st >= 500:
                    log.warning("%s %r: %s", method, scope["path"], e)
                r = _plain(st, f"{st}: {e.strerror or e}")
            except Exception:
                log.exception("%s %r failed", method, scope["path"])
                r = _plain(500, "500: internal error")
        await self._send(send, r, method == "HEAD", receive)

    async def _db(self, scope, hdrs: dict) -> Reply:
        """``/db/<id>/<ver>/<key>`` (:mod:`.dbkeys`), in a worker thread: opening a
        version may build its keyspace and fetch."""
        given = presented(hdrs.get("authorization"), scope.get("query_string", b"").decode("latin-1"))
        status, facts, body = await trio.to_thread.run_sync(self.db.read, scope["path"], given)
        r = Reply(status, body=body)
        r.add("content-type", "application/json")
        r.add("x-mimei-id", facts["mimei"])
        r.add("x-mimei-version", facts["version"])
        r.add("cache-control", IMMUTABLE if facts["immutable"] and status == 200 else "no-cache")
        if status == 401:
            r.add("www-authenticate", 'Basic realm="mimeifs"')
        elif status == 200:
            etag = f'"{blake3.blake3(body).hexdigest()}"'
            r.add("etag", etag)
            inm = hdrs.get("if-none-match")
            if inm is not None and _etag_matches(inm, etag):
                r.status, r.body = 304, b""
        return r

    async def _call(self, fn, *args):
        try:
            return fn(*args)
        except ChunkMissing:
            if not self.fetching:
                raise
        return await trio.to_thread.run_sync(fn, *args)

    # ------------------------------------------------------------------ deciding
    def prepare(self, method: str, path: str, query: str, hdrs: dict) -> Reply:
        """The reply to a GET or HEAD of decoded URL ``path`` (synchronous; raises
        EngineError). Small files are read here; large ones are streamed later."""
        hit = self.hot.get(path)
        if hit is not None and self.view.e.exists(hit.mimei):
            if not self.guard.allowed(method, hit.mimei, presented(hdrs.get("authorization"), query)):
                return _plain(401, "401: this MiMei is not public; give the node token",
                              www_authenticate='Basic realm="mimeifs"')
            return self._answer(hit, hdrs)
        place = locate(self.view, path)
        if not self.guard.allowed(method, place.mimei, presented(hdrs.get("authorization"), query)):
            return _plain(401, "401: this MiMei is not public; give the node token",
                          www_authenticate='Basic realm="mimeifs"')
        if not path.endswith("/") and (place.node is None or stat.S_ISDIR(self.view.attr(place.node).mode)):
            loc = quote(path, safe="/:") + "/" + (f"?{query}" if query else "")
            return _plain(301, "moved", location=loc)
        if place.node is None:
            body = listing.render(path, [(n, True, 0, 0, "") for n in place.names])
            return self._page(place, body)
        node, a = place.node, self.view.attr(place.node)
        if stat.S_ISDIR(a.mode):
            try:
                idx = self.view.lookup(node, b"index.html")
                ia = self.view.attr(idx)
            except EngineError:
                idx = None
            if idx is not None and stat.S_ISREG(ia.mode):
                return self._file(place, idx, ia, "index.html", hdrs, path)
            body = listing.render(path, listing.view_rows(self.view, node))
            r = self._page(place, body)
            if a.immutable and node.entry is not None:
                r.add("etag", f'W/"{node.entry.hash.hex()}"')
            return r
        if stat.S_ISLNK(a.mode):
            target = self.view.readlink(node).decode(errors="replace")
            if target.startswith("/") or "\0" in target:
                return _plain(404, "404: a link to an absolute path")
            return _plain(302, "a symbolic link", location=quote(target, safe="/:"))
        if not stat.S_ISREG(a.mode):
            return _plain(404, "404: not a regular file")
        return self._file(place, node, a, path.rsplit("/", 1)[-1], hdrs, path)

    def _common(self, r: Reply, place: Place) -> None:
        if place.mimei:
            r.add("x-mimei-id", place.mimei)
            r.add("x-mimei-version", place.version)
        r.add("cache-control", IMMUTABLE if place.immutable else "no-cache")

    def _page(self, place: Place, body: bytes) -> Reply:
        r = Reply(200, body=body)
        r.add("content-type", "text/html; charset=utf-8")
        self._common(r, place)
        return r

    def _file(self, place: Place, node, a, name: str, hdrs: dict, path: str = "") -> Reply:
        e = node.entry
        etag = f'"{e.hash.hex()}"' if e is not None and e.hash else f'W/"{a.ino}-{a.size}-{a.mtime_ns}"'
        r = Reply(200)
        self._common(r, place)
        r.add("etag", etag)
        r.add("last-modified", formatdate(a.mtime_ns / 1e9, usegmt=True))
        r.add("accept-ranges", "bytes")
        ctype, enc = mimetypes.guess_type(name, strict=False)
        r.add("content-type", ctype or "application/octet-stream")
        if enc:
            r.add("content-encoding", enc)
        body = self.view.read(node, 0, a.size) if a.size <= INLINE else None
        facts = _Facts(place.mimei, node, a.size, etag, r.headers, body)
        if place.immutable and body is not None and path:
            self.hot.put(path, facts)
        return self._answer(facts, hdrs)

    def _answer(self, f: "_Facts", hdrs: dict) -> Reply:
        """The reply for file facts ``f`` under the request's conditional and range
        headers (RFC 9110 §13 and §14)."""
        r = Reply(200, list(f.headers))
        inm = hdrs.get("if-none-match")
        if inm is not None and _etag_matches(inm, f.etag):
            r.status = 304
            return r
        size, start, length = f.size, 0, f.size
        rng = hdrs.get("range")
        if rng is not None and ("if-range" not in hdrs or hdrs["if-range"].strip() == f.etag):
            got = parse_range(rng, size)
            if got == "unsatisfiable":
                r.status = 416
                r.add("content-range", f"bytes */{size}")
                return r
            if got is not None:
                start, length = got
                r.status = 206
                r.add("content-range", f"bytes {start}-{start + length - 1}/{size}")
        if f.body is not None:
            r.body = f.body if (start, length) == (0, size) else f.body[start:start + length]
        else:
            r.node, r.start, r.length = f.node, start, length
        return r

    # ------------------------------------------------------------------ sending
    async def _send(self, send, r: Reply, head: bool, receive=None) -> None:
        n = r.length if r.node is not None else len(r.body)
        if r.status not in (204, 304):
            r.add("content-length", str(n))
        await send({"type": "http.response.start", "status": r.status, "headers": r.headers})
        if head or r.status in (204, 304) or r.node is None:
            await send({"type": "http.response.body", "body": b"" if head else r.body})
            return
        pos, end = r.start, r.start + r.length
        big = self._big < BIG_STREAMS
        block = BLOCK if big else SMALL_BLOCK
        self._big += big
        sent = pos
        gone = trio.Event()
        try:
            # the next block is read in a worker thread while this one is sent
            blocks_in, blocks_out = trio.open_memory_channel(0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, r.node, pos, end, block, blocks_in)
                watch = trio.CancelScope()
                if receive is not None:
                    nursery.start_soon(_until_disconnect, receive, nursery.cancel_scope, gone, watch)
                async with blocks_out:
                    async for data in blocks_out:
                        sent += len(data)
                        if sent >= end:
                            watch.cancel()
                        await send({"type": "http.response.body", "body": data, "more_body": sent < end})
                        del data
                watch.cancel()
        finally:
            self._big -= big
        if sent < end and not gone.is_set():  # the file shrank (cur): the client sees a short body
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _reader(self, node, pos: int, end: int, block: int, out) -> None:
        async with out:
            while pos < end:
                data = await trio.to_thread.run_sync(self.view.read, node, pos, min(block, end - pos))
                if not data:
                    return
                pos += len(data)
                await out.send(data)
                del data
