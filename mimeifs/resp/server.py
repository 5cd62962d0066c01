"""The RESP door: a trio server that speaks the Redis protocol onto db MiMei.

DESIGN.md "Layers" (``mimeifs/resp/``: RESP door onto db MiMei), issue 14. Listens on
TCP (``--resp HOST:PORT``) and on a Unix socket in the store (``<store>/resp.sock``).
A connection names its MiMei and right with ``AUTH <token>`` or ``AUTH <id|mark>[@v]
<token>`` (tokens: ``auth``); before that only PING, HELLO, AUTH, QUIT are answered.
Data commands run in ``engine.kvcmd``; this module does connections, MULTI/EXEC/WATCH
(Redis's optimistic concurrency: an EXEC whose watched keys were written, or expired,
since WATCH replies a null array), and the durability rule: the writes of every
connection that runs in one turn of the event loop share one LMDB write transaction
(group commit, :class:`Group`), and no reply of theirs is sent before it commits.
"""

from __future__ import annotations

import logging
import os
import resource
import socket as _socket
import time

import trio

from ..engine import kvsnap
from ..engine.kv import NIL_ARRAY, OK, Keyspace, ReplyError
from ..engine.kvcmd import COMMANDS, arity_error
from . import connection as cc
from .auth import Tokens
from .proto import RequestParser, encode

log = logging.getLogger("mimeifs.resp")
SOCKET_NAME = "resp.sock"
_AUTHS = (b"auth", b"hello")
_BY_BYTES = {v: (*spec, k) for k, spec in COMMANDS.items() for v in (k.encode(), k.upper().encode())}


def parse_listen(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port). Raises ValueError."""
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--resp wants HOST:PORT, not {spec!r}")
    return host.strip("[]"), int(port)


class Conn:
    """One client connection's state."""

    __slots__ = ("id", "name", "proto", "ns", "mimei", "version", "writable", "multi",
                 "multi_err", "watched", "dirty", "lib")

    def __init__(self, cid: int):
        self.id, self.name, self.proto, self.lib = cid, b"", 2, b""
        self.ns: bytes | None = None
        self.mimei = self.version = None
        self.writable = False
        self.multi: list | None = None
        self.multi_err = False
        self.watched: dict[bytes, int] = {}  # key -> expire_at_ms seen at WATCH
        self.dirty = False


class Group:
    """One LMDB write transaction shared by the write batches of every connection that
    runs in one turn of the event loop (group commit, as databases batch their log
    flushes): its members wait for :attr:`done` and send their replies only after the
    commit, so an acknowledged write is committed; ``error`` is set if it was not."""

    __slots__ = ("txn", "kss", "done", "error", "failed")

    def __init__(self, store):
        self.txn = store.begin_write()
        self.kss: dict[bytes, Keyspace] = {}
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.failed = False


class Batch:
    """The transactions of one connection's batch of commands: a read snapshot for reads
    while no group is open; the server's open :class:`Group` for writes (and for reads
    once a group is open, so a reply never shows what is not yet committed)."""

    __slots__ = ("s", "conn", "txn", "ks", "group")

    def __init__(self, server: "RespServer", conn: Conn):
        self.s, self.conn = server, conn
        self.txn = self.ks = None
        self.group: Group | None = None

    def keyspace(self, write: bool) -> Keyspace:
        c = self.conn
        if self.group is not None:
            return self.ks
        s = self.s
        if c.version is None and (write or s.group is not None):
            if self.txn is not None:  # reads so far came from a snapshot: same data
                s.store.end_read(self.txn)
                self.txn = None
            g = s.group if s.group is not None else s.open_group()
            ks = g.kss.get(c.ns)
            if ks is None:
                ks = g.kss[c.ns] = Keyspace(s.store, c.ns, g.txn, True)
            self.group, self.ks = g, ks
            return ks
        if self.ks is None:
            self.txn = s.store.begin_read()
            self.ks = Keyspace(s.store, c.ns, self.txn, False, track_dirty=c.version is None)
        return self.ks

    def end(self) -> None:
        """Release the read snapshot (a group is committed by the server)."""
        if self.txn is not None:
            self.s.store.end_read(self.txn)
            self.txn = None


class RespServer:
    """A trio service: ``await nursery.start(server.run)``; ``server.port`` is the bound
    TCP port afterwards (useful with port 0), ``server.unix_path`` the socket path.

    ``engine`` is an ``engine.mimei.Engine``; ``listen`` ``"HOST:PORT"`` or None;
    ``unix_path`` defaults to ``<store>/resp.sock`` (None: ``""`` disables it).
    The server never dies from what a client sends: a protocol error gets Redis's error
    line and closes that connection; anything unexpected in a command is answered with
    ``-ERR`` and logged.
    """

    essential = False  # the daemon goes on without it (a port in use, say)

    def __init__(self, engine, listen: str | None = None, unix_path: str | None = None):
        self.engine = engine
        self.store = engine.store
        self.listen = parse_listen(listen) if listen else None
        self.unix_path = os.path.join(self.store.path, SOCKET_NAME) if unix_path is None else unix_path
        self.tokens = Tokens(self.store.key)
        self.port: int | None = None
        self.conns: dict[int, Conn] = {}
        self.watch: dict[tuple[bytes, bytes], set] = {}
        self._ids = 0
        self.group: Group | None = None
        self._nursery = None
        self.started = time.time()
        self.calls = 0

    # ------------------------------------------------------------------ listening
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        _raise_nofile()
        listeners = []
        if self.listen:
            host, port = self.listen
            listeners += await trio.open_tcp_listeners(port, host=host)
            self.port = listeners[0].socket.getsockname()[1]
        if self.unix_path:
            with _suppress_oserror():
                os.unlink(self.unix_path)
            sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            await sock.bind(self.unix_path)
            os.chmod(self.unix_path, 0o600)
            sock.listen(512)
            listeners.append(trio.SocketListener(sock))
        token = trio.lowlevel.current_trio_token()

        def changed(mimei: str) -> None:  # any thread: hop to the loop
            try:
                token.run_sync_soon(self.mimei_changed, mimei)
            except trio.RunFinishedError:
                pass
        self.engine.subscribe(changed)
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                await n.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(self)
        finally:
            if self.unix_path:
                with _suppress_oserror():
                    os.unlink(self.unix_path)

    async def _handle(self, stream) -> None:
        self._ids += 1
        conn = Conn(self._ids)
        self.conns[conn.id] = conn
        parser = RequestParser()
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    break
                parser.feed(data)
                cmds, err = parser.commands()
                if not cmds and err is None:
                    continue
                for args in cmds:
                    if args[0] in _AUTHS or args[0].lower() in _AUTHS:
                        await self._prepare(conn, cmds)
                        break
                out: list = []
                close, group = self.execute(conn, cmds, out)
                if group is not None:
                    await group.done.wait()
                    if group.error is not None:
                        msg = f"-ERR write not committed: {type(group.error).__name__}: {group.error}\r\n"
                        out = [msg.encode()] * len(cmds)
                if err is not None:
                    out.append(b"-" + str(err).encode() + b"\r\n")
                    close = True
                if out:
                    await stream.send_all(b"".join(out))
                if close:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except OSError as e:
            log.debug("connection %d: %s", conn.id, e)
        finally:
            self.unwatch(conn)
            del self.conns[conn.id]
            with _suppress_oserror():
                await stream.aclose()

    async def _prepare(self, conn: Conn, cmds) -> None:
        """Materialize the version a batch's AUTH / HELLO names, in a worker thread
        (a big version takes seconds; the loop keeps serving others meanwhile)."""
        for args in cmds:
            name = args[0].lower()
            if name not in (b"auth", b"hello"):
                continue
            target = cc.auth_target(self, args)
            if target is not None and target[1] is not None:
                mimei, n = target
                if not kvsnap.is_ready(self.engine, mimei, n):
                    with _suppress_all():
                        await trio.to_thread.run_sync(kvsnap.version_ns, self.engine, mimei, n)

    # ------------------------------------------------------------------ commands
    def execute(self, conn: Conn, cmds, out: list) -> tuple[bool, Group | None]:
        """Run a batch of commands, appending replies to ``out``. Returns (close after,
        the group whose commit must come before the replies are sent, or None)."""
        batch = Batch(self, conn)
        start = len(out)
        close = False
        try:
            for args in cmds:
                try:
                    r = self.one(conn, args, batch)
                except ReplyError as e:
                    r = e
                if r is cc.QUIT:
                    encode(OK, out, conn.proto)
                    close = True
                    break
                encode(r, out, conn.proto)
        except Exception as e:  # a bug or a full disk: the group is not applied
            log.exception("resp command failed")
            if batch.group is not None:
                batch.group.failed = True
                batch.group.error = e
            del out[start:]
            msg = f"ERR internal error, batch not applied: {type(e).__name__}: {e}"
            for _ in cmds:
                encode(ReplyError(msg), out, conn.proto)
        finally:
            batch.end()
        return close, batch.group

    def open_group(self) -> Group:
        """Open the shared write transaction of this loop turn; it commits once every
        connection that was ready has run (:meth:`_commit_group`)."""
        g = self.group = Group(self.store)
        self._nursery.start_soon(self._commit_group, g)
        return g

    async def _commit_group(self, g: Group) -> None:
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()  # the others that are ready run
        finally:
            self.group = None
            ended = False
            try:
                if g.failed:
                    ended = True
                    self.store.end_write(g.txn, commit=False)
                else:
                    for ks in g.kss.values():
                        ks.finish()
                    ended = True
                    self.store.end_write(g.txn, commit=True)
            except BaseException as e:
                if not ended:
                    self.store.end_write(g.txn, commit=False)
                g.error = e
                log.exception("committing a group of RESP writes failed")
            g.done.set()

    def one(self, conn: Conn, args: list[bytes], batch: Batch):
        """One command's reply (ReplyError raised for an error)."""
        self.calls += 1
        spec = _BY_BYTES.get(args[0])  # the names as clients send them, without lower()
        if spec is not None:
            name = spec[3]
        else:
            try:
                name = args[0].lower().decode()
            except UnicodeDecodeError:
                name = args[0].lower().decode("latin-1")
            spec = COMMANDS.get(name)
        if spec is None:
            fn = cc.CONN_COMMANDS.get(name)
            if fn is None:
                err = cc.unknown(args)
                if conn.multi is not None:
                    conn.multi_err = True
                raise err
            if conn.ns is None and name not in cc.NOAUTH_OK:
                raise ReplyError("NOAUTH Authentication required.")
            if conn.multi is not None and name not in cc.IN_MULTI:
                conn.multi.append((fn, None, args))
                return cc.QUEUED
            return fn(self, conn, args, batch)
        fn, arity, write = spec[0], spec[1], spec[2]
        n = len(args)
        if conn.ns is None:
            raise ReplyError("NOAUTH Authentication required.")
        if (arity > 0 and n != arity) or (arity < 0 and n < -arity):
            if conn.multi is not None:
                conn.multi_err = True
            raise arity_error(name)
        if write and not conn.writable:
            if conn.multi is not None:
                conn.multi_err = True
            raise ReplyError("READONLY You can't write against a read only version.")
        if conn.multi is not None:
            conn.multi.append((fn, write, args))
            return cc.QUEUED
        return self.run_data(conn, fn, write, args, batch)

    def run_data(self, conn: Conn, fn, write: bool, args, batch: Batch):
        ks = batch.keyspace(write)
        r = fn(ks, args[1:])
        if ks.touched:
            if self.watch:
                self.touched(conn.ns, ks.touched)
            ks.touched.clear()
        return r

    def mimei_changed(self, mimei: str) -> None:
        """A db MiMei's cur changed behind the door (restore) or went away (rm): every
        transaction watching its keys fails; connections to a removed one must AUTH."""
        gone = not self.engine.exists(mimei)
        for c in self.conns.values():
            if c.mimei == mimei and c.version is None:
                if c.watched:
                    c.dirty = True
                if gone:
                    self.unwatch(c)
                    c.ns, c.mimei, c.writable, c.multi = None, None, False, None

    # ------------------------------------------------------------------ WATCH
    def touched(self, ns: bytes, keys) -> None:
        for k in keys:
            for c in self.watch.get((ns, k), ()):
                c.dirty = True

    def unwatch(self, conn: Conn) -> None:
        for k in conn.watched:
            s = self.watch.get((conn.ns, k))
            if s is not None:
                s.discard(conn)
                if not s:
                    del self.watch[(conn.ns, k)]
        conn.watched.clear()
        conn.dirty = False

    def exec_multi(self, conn: Conn, batch: Batch):
        q, conn.multi = conn.multi, None
        err, conn.multi_err = conn.multi_err, False
        try:
            if err:
                return ReplyError("EXECABORT Transaction discarded because of previous errors.")
            if conn.dirty or self._watch_expired(conn, batch):
                return NIL_ARRAY
            out = []
            for fn, write, args in q:
                try:
                    if write is None:
                        out.append(fn(self, conn, args, batch))
                    else:
                        out.append(self.run_data(conn, fn, write, args, batch))
                except ReplyError as e:
                    out.append(e)
            return out
        finally:
            self.unwatch(conn)

    def _watch_expired(self, conn: Conn, batch: Batch) -> bool:
        if not any(conn.watched.values()):
            return False
        ks = batch.keyspace(False)
        for k, exp in conn.watched.items():
            if exp and exp <= ks.now:
                return True
        return False

    def info_text(self) -> bytes:
        return (
            "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n"
            f"mimeifs_node:{self.store.node_id}\r\nprocess_id:{os.getpid()}\r\n"
            f"tcp_port:{self.port or 0}\r\nuptime_in_seconds:{int(time.time() - self.started)}\r\n"
            f"\r\n# Clients\r\nconnected_clients:{len(self.conns)}\r\n"
            f"\r\n# Stats\r\ntotal_commands_processed:{self.calls}\r\n"
            "\r\n# Replication\r\nrole:master\r\n"
            "\r\n# Keyspace\r\n").encode()


def _raise_nofile() -> None:
    """Lift the soft open-files limit to the hard one (10,000 idle clients need it)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, t, v, tb):
        return t is not None and issubclass(t, OSError)


class _suppress_all:
    """Log and swallow an Exception (a version that cannot be built answers at AUTH)."""

    def __enter__(self):
        return self

    def __exit__(self, t, v, tb):
        if t is not None and issubclass(t, Exception):
            log.warning("preparing a version failed: %s", v)
            return True
        return False

