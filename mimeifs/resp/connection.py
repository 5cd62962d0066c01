"""Connection commands of the RESP door: PING, ECHO, AUTH, HELLO, SELECT, CLIENT, INFO,
COMMAND, CONFIG GET, QUIT, MULTI, EXEC, DISCARD, WATCH, UNWATCH (Redis 7.0's replies
and error words; https://redis.io/commands). Each is ``fn(server, conn, args, batch)``.
"""

from __future__ import annotations

import re

from ..engine import kvsnap
from ..engine.kv import OK, Map, ReplyError, Status
from ..engine.kvcmd import COMMANDS, arity_error

QUIT = object()
QUEUED = Status("QUEUED")
CONN_COMMANDS: dict = {}
NOAUTH_OK = {"ping", "hello", "auth", "quit"}
IN_MULTI = {"multi", "exec", "discard", "watch", "quit"}
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
_NAME_OK = re.compile(rb"[!-~]*\Z")


def conn_command(name: str):
    def deco(fn):
        CONN_COMMANDS[name] = fn
        return fn
    return deco


def unknown(args) -> ReplyError:
    """Redis's reply to an unknown command (name and the first arguments quoted)."""
    name = args[0][:128].decode(errors="replace")
    tail = "".join(f"'{a[:128].decode(errors='replace')}' " for a in args[1:])
    return ReplyError(f"ERR unknown command '{name}', with args beginning with: {tail}")


def _auth_args(args):
    """(user | None, token) of an AUTH or HELLO command, or None."""
    name = args[0].lower()
    if name == b"auth":
        if len(args) == 2:
            return None, args[1]
        if len(args) == 3:
            return args[1], args[2]
        return None
    for i in range(2, len(args) - 2):
        if args[i].lower() == b"auth":
            return args[i + 1], args[i + 2]
    return None


def _grant(server, user, token):
    """(mimei, version n or None for cur, writable) for AUTH's arguments; ReplyError."""
    g = server.tokens.check(token)
    if g is None:
        raise ReplyError(WRONGPASS)
    e = server.engine
    version = g.version
    if user is not None and user != b"default":
        try:
            spec, _, ver = user.decode().partition("@")
            if e.resolve(spec) != g.mimei:
                raise ReplyError(WRONGPASS)
        except (UnicodeDecodeError, OSError, ValueError, LookupError) as ex:
            raise ReplyError(WRONGPASS) from ex
        except ReplyError:
            raise
        except Exception as ex:  # the engine's not-found error
            raise ReplyError(WRONGPASS) from ex
        if ver and ver != version:
            if version != "cur":
                raise ReplyError(WRONGPASS)
            version = ver
    try:
        info = e.info(g.mimei)
        st = e.state(g.mimei)
    except Exception:
        raise ReplyError(f"ERR no MiMei {g.mimei} in this store") from None
    if info.get("mimei_type") != "db":
        raise ReplyError(f"ERR {g.mimei} is not a db MiMei")
    if version == "cur":
        if st.get("remote"):
            raise ReplyError("ERR this node holds no cur of that MiMei")
        return g.mimei, None, g.writable and e.can_write(bytes.fromhex(g.mimei))
    if version == "last":
        n = st.get("last")
    elif version == "release":
        n = (st.get("release") or {}).get("n")
    elif version.isdigit():
        n = int(version)
    else:
        n = None
    if n is None:
        raise ReplyError(f"ERR {g.mimei} has no version {version}")
    try:
        e.version(g.mimei, n)
    except Exception:
        raise ReplyError(f"ERR {g.mimei} has no version {version}") from None
    return g.mimei, n, False


def auth_target(server, args):
    """(mimei, n | None) an AUTH / HELLO would open, or None if it would fail."""
    a = _auth_args(args)
    if a is None:
        return None
    try:
        m, n, _w = _grant(server, *a)
    except ReplyError:
        return None
    return m, n


def _login(server, conn, user, token) -> None:
    mimei, n, writable = _grant(server, user, token)
    try:
        ns = bytes.fromhex(mimei) if n is None else kvsnap.version_ns(server.engine, mimei, n)
    except Exception as e:  # a version whose blocks cannot be had (remote, damaged)
        raise ReplyError(f"ERR cannot open {mimei} v/{n}: {e}") from None
    server.unwatch(conn)
    conn.ns, conn.mimei, conn.version, conn.writable = ns, mimei, n, writable


@conn_command("auth")
def c_auth(server, conn, args, batch):
    if len(args) not in (2, 3):
        raise arity_error("auth")
    user, token = _auth_args(args)
    _login(server, conn, user, token)
    return OK


@conn_command("hello")
def c_hello(server, conn, args, batch):
    proto = conn.proto
    i = 1
    if len(args) > 1:
        try:
            proto = int(args[1])
        except ValueError:
            raise ReplyError("ERR Protocol version is not an integer or out of range") from None
        if proto not in (2, 3):
            raise ReplyError("NOPROTO unsupported protocol version")
        i = 2
    name = None
    while i < len(args):
        o = args[i].lower()
        if o == b"auth" and i + 2 < len(args):
            _login(server, conn, args[i + 1], args[i + 2])
            i += 3
        elif o == b"setname" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            raise ReplyError(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    if name is not None:
        _setname(conn, name)
    conn.proto = proto
    return Map([(b"server", b"redis"), (b"version", b"7.0.0"), (b"proto", proto),
                (b"id", conn.id), (b"mode", b"standalone"), (b"role", b"master"),
                (b"modules", [])])


@conn_command("ping")
def c_ping(server, conn, args, batch):
    if len(args) > 2:
        raise arity_error("ping")
    return Status("PONG") if len(args) == 1 else args[1]


@conn_command("echo")
def c_echo(server, conn, args, batch):
    if len(args) != 2:
        raise arity_error("echo")
    return args[1]


@conn_command("quit")
def c_quit(server, conn, args, batch):
    return QUIT


@conn_command("select")
def c_select(server, conn, args, batch):
    if len(args) != 2:
        raise arity_error("select")
    try:
        n = int(args[1])
    except ValueError:
        raise ReplyError("ERR value is not an integer or out of range") from None
    if n != 0:
        raise ReplyError("ERR DB index is out of range")
    return OK


def _setname(conn, name: bytes) -> None:
    if not _NAME_OK.match(name):
        raise ReplyError("ERR Client names cannot contain spaces, newlines or special characters.")
    conn.name = name


@conn_command("client")
def c_client(server, conn, args, batch):
    sub = args[1].lower() if len(args) > 1 else b""
    if sub == b"setname" and len(args) == 3:
        _setname(conn, args[2])
        return OK
    if sub == b"getname" and len(args) == 2:
        return conn.name or None
    if sub == b"id" and len(args) == 2:
        return conn.id
    if sub == b"setinfo" and len(args) == 4:
        return OK
    if sub in (b"list", b"info"):
        lines = [f"id={c.id} name={c.name.decode(errors='replace')} db=0 multi={-1 if c.multi is None else len(c.multi)}"
                 for c in ([conn] if sub == b"info" else server.conns.values())]
        return ("\n".join(lines) + "\n").encode()
    if sub in (b"no-evict", b"no-touch", b"reply") and len(args) == 3:
        return OK
    raise ReplyError(f"ERR unknown subcommand or wrong number of arguments for '{sub.decode(errors='replace')}'. Try CLIENT HELP.")


@conn_command("info")
def c_info(server, conn, args, batch):
    keys = batch.keyspace(False).count()
    return server.info_text() + f"db0:keys={keys},expires=0,avg_ttl=0\r\n".encode()


@conn_command("config")
def c_config(server, conn, args, batch):
    if len(args) >= 3 and args[1].lower() == b"get":
        known = {b"save": b"", b"appendonly": b"no", b"databases": b"1", b"maxmemory": b"0",
                 b"proto-max-bulk-len": b"67108864"}
        pat = args[2].lower()
        return Map((k, v) for k, v in known.items() if k == pat or pat == b"*")
    if len(args) >= 2 and args[1].lower() in (b"set", b"resetstat", b"rewrite"):
        raise ReplyError("ERR CONFIG is not supported by mimeifs beyond CONFIG GET")
    raise ReplyError("ERR unknown subcommand or wrong number of arguments for 'config'. Try CONFIG HELP.")


def _cmd_info(name: str):
    if name in COMMANDS:
        _fn, arity, write = COMMANDS[name]
        flags = [Status("write")] if write else [Status("readonly")]
        return [name.encode(), arity, flags, 1, 1, 1]
    if name in CONN_COMMANDS:
        return [name.encode(), -1, [Status("fast")], 0, 0, 0]
    return None


@conn_command("command")
def c_command(server, conn, args, batch):
    sub = args[1].lower() if len(args) > 1 else None
    names = sorted(set(COMMANDS) | set(CONN_COMMANDS))
    if sub is None:
        return [_cmd_info(n) for n in names]
    if sub == b"count":
        return len(names)
    if sub == b"list":
        return [n.encode() for n in names]
    if sub == b"info":
        return [_cmd_info(a.lower().decode(errors="replace")) for a in args[2:]]
    if sub == b"docs":
        return Map()
    raise ReplyError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try COMMAND HELP.")


@conn_command("multi")
def c_multi(server, conn, args, batch):
    if conn.multi is not None:
        raise ReplyError("ERR MULTI calls can not be nested")
    conn.multi, conn.multi_err = [], False
    return OK


@conn_command("exec")
def c_exec(server, conn, args, batch):
    if conn.multi is None:
        raise ReplyError("ERR EXEC without MULTI")
    return server.exec_multi(conn, batch)


@conn_command("discard")
def c_discard(server, conn, args, batch):
    if conn.multi is None:
        raise ReplyError("ERR DISCARD without MULTI")
    conn.multi, conn.multi_err = None, False
    server.unwatch(conn)
    return OK


@conn_command("watch")
def c_watch(server, conn, args, batch):
    if conn.multi is not None:
        raise ReplyError("ERR WATCH inside MULTI is not allowed")
    if len(args) < 2:
        raise arity_error("watch")
    ks = batch.keyspace(False)
    for k in args[1:]:
        if k in conn.watched:
            continue
        h = ks.head(k)
        conn.watched[k] = 0 if h is None else h[1]
        server.watch.setdefault((conn.ns, k), set()).add(conn)
    return OK


@conn_command("unwatch")
def c_unwatch(server, conn, args, batch):
    server.unwatch(conn)
    return OK
