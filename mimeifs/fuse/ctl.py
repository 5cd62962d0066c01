"""The control file's protocol and its client side, free of pyfuse3 and trio.

The protocol is described in :mod:`mimeifs.fuse.control` (the daemon side). This half
is what every CLI command needs (``call`` to reach a running daemon, ``run_op`` to do
the same work on the store when nothing is mounted); keeping pyfuse3 and trio out of
it saves each command ~0.3 s of imports.
"""

from __future__ import annotations

import json
import os
import re
import secrets

from .. import ids
from ..engine.errors import Invalid
from ..engine.mimei import mark_problem

CTRL_FILE = ".__mimeifs_ctrl__"
CMD = b"user.mimeifs.cmd"
RESULT = b"user.mimeifs.result."
PROGRESS = b"user.mimeifs.progress."


def mount_info(store_path: str) -> dict | None:
    """``{"pid", "mountpoint"}`` of the daemon serving this store, or None. A headless
    daemon (``mimeifs serve``) has ``mountpoint`` None."""
    try:
        with open(os.path.join(store_path, "mount.json")) as f:
            info = json.load(f)
        os.kill(info["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("mountpoint") is not None and not os.path.ismount(info["mountpoint"]):
        return None
    return info


class DaemonError(Exception):
    """A command the daemon refused; ``errno`` says why."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.errno = code


class BadCommand(Invalid):
    """A control command that is not well formed (EINVAL); ``token`` is its token when
    that much could be read, else None."""

    def __init__(self, msg: str, token: str | None = None):
        super().__init__(msg)
        self.token = token


MAX_COMMAND_BYTES = 16 << 10   # a command is a few short fields; the kernel allows 64 KiB
MAX_DEPTH = 2                  # a flat object; deeper JSON is refused before it is parsed
MEMO_MAX_BYTES = 4096          # UTF-8 bytes of a version's memo
N_MAX = (1 << 32) - 1          # version numbers are u32 keys in the store
_TOKEN_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")

# op -> {field: required?}; every op also has "op" and "token"
OPS = {
    "backup": {"id": True, "memo": False, "allow_empty": False},
    "release": {"id": True, "n": False},
    "restore": {"id": True, "n": True},
    "fork": {"id": True, "n": False, "mark": True},
    "rm": {"id": True},
    "invalidate": {"id": False},
    "ping": {},
}


def _depth(raw: bytes) -> int:
    """Deepest nesting of JSON arrays/objects in ``raw``, brackets inside strings ignored."""
    text = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", raw)
    depth = deepest = 0
    for c in text.translate(None, delete=bytes(set(range(256)) - set(b"[]{}"))):
        if c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_field(op: str, k: str, v):
    """The value of field ``k`` of command ``op`` if it has the right type and size;
    raises ValueError saying what is wrong."""
    if k == "id":
        if not ids.is_id(v):
            raise ValueError(f"id must be a MiMei ID (40 lowercase hex digits), not {_short(v)}")
    elif k == "n":
        if v is None and op in ("release", "fork"):
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= N_MAX:
            raise ValueError(f"there is no version {_short(v)}: n is an integer from 0 to {N_MAX}")
    elif k == "memo":
        if not isinstance(v, str):
            raise ValueError(f"memo must be a string, not {type(v).__name__}")
        size = len(v.encode("utf-8", "surrogatepass"))
        if size > MEMO_MAX_BYTES:
            raise ValueError(f"memo is {size} bytes of UTF-8; at most {MEMO_MAX_BYTES}")
    elif k == "mark":
        if v != "auto":
            why = mark_problem(v)
            if why is not None:
                raise ValueError(f"bad mark: {why}")
    elif k == "allow_empty":
        if not isinstance(v, bool):
            raise ValueError(f"allow_empty must be true or false, not {_short(v)}")
    return v


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_args(op, a: dict) -> dict:
    """The arguments of control op ``op`` checked field by field (type, size, range; no
    unknown fields, every required one present); returns them without ``op``/``token``.

    Raises :class:`BadCommand` (EINVAL) with the reason."""
    if not isinstance(op, str) or op not in OPS:
        raise BadCommand(f"unknown control op {_short(op)} (ops: {', '.join(OPS)})")
    fields = OPS[op]
    out = {}
    for k, v in a.items():
        if k in ("op", "token"):
            continue
        if k not in fields:
            raise BadCommand(f"{op}: unknown field {_short(k)}")
        try:
            out[k] = _check_field(op, k, v)
        except ValueError as e:
            raise BadCommand(f"{op}: {e}") from None
    missing = [k for k, req in fields.items() if req and k not in out]
    if missing:
        raise BadCommand(f"{op}: missing field {', '.join(missing)}")
    return out


def parse_command(raw: bytes) -> tuple[str, str, dict]:
    """A control command's bytes (see :mod:`mimeifs.fuse.control`) as
    ``(token, op, checked arguments)``.

    Checks size (``MAX_COMMAND_BYTES``) and nesting (``MAX_DEPTH``) before parsing, then
    every field (:func:`check_args`). Raises :class:`BadCommand` (EINVAL) with the
    reason and, when it could be read, the token; never another exception."""
    if len(raw) > MAX_COMMAND_BYTES:
        raise BadCommand(f"command is {len(raw)} bytes; at most {MAX_COMMAND_BYTES}")
    if _depth(raw) > MAX_DEPTH:
        raise BadCommand(f"command nests deeper than {MAX_DEPTH} levels (it is one flat JSON object)")
    try:
        req = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadCommand(f"command is not JSON: {e}") from None
    if not isinstance(req, dict):
        raise BadCommand(f"command must be a JSON object, not {type(req).__name__}")
    token = req.get("token")
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise BadCommand(f"token must be 1 to 64 letters, digits, '_' or '-', not {_short(token)}")
    op = req.get("op")
    try:
        return token, op, check_args(op, req)
    except BadCommand as e:
        e.token = token
        raise


def run_op(engine, op: str, a: dict, progress=None):
    """Run a whole-MiMei command (backup, release, restore, fork, rm) on ``engine``.

    The one dispatch both doors use: the daemon for a command from its control file,
    the CLI on the store when nothing is mounted. Arguments are checked first
    (:func:`check_args`). Raises MiMeiError (:class:`BadCommand` for bad arguments)."""
    a = check_args(op, a)
    if op == "backup":
        return engine.backup(a["id"], a.get("memo", ""), progress, allow_empty=a.get("allow_empty", False))
    if op == "release":
        return engine.release(a["id"], a.get("n"))
    if op == "restore":
        engine.restore(a["id"], a["n"])
        return {"id": a["id"], "n": a["n"]}
    if op == "fork":
        return {"id": engine.fork(a["id"], a.get("n"), a["mark"])}
    if op == "rm":
        engine.rm(a["id"])
        return {"id": a["id"]}
    raise BadCommand(f"{op} is not a whole-MiMei command")


def new_token() -> str:
    """A fresh command token (16 hex digits) for :func:`call` and :func:`progress_of`."""
    return secrets.token_hex(8)


def call(mountpoint: str, op: str, token: str | None = None, **args):
    """Client side: run ``op`` in the daemon mounted at ``mountpoint``; returns its result.

    ``token`` (from :func:`new_token`) lets another thread follow the command with
    :func:`progress_of` while this call waits. Raises :class:`DaemonError` with the
    daemon's errno and message.
    """
    ctrl = os.path.join(mountpoint, CTRL_FILE)
    token = token or new_token()
    os.setxattr(ctrl, CMD.decode(), json.dumps(dict(args, op=op, token=token)).encode())
    ans = json.loads(os.getxattr(ctrl, (RESULT + token.encode()).decode()))
    if not ans["ok"]:
        raise DaemonError(ans["errno"], ans["error"])
    return ans["result"]


def progress_of(mountpoint: str, token: str) -> int | None:
    """Bytes done so far by the running command ``token`` (see :func:`call`), or None
    when the daemon has no such command running (not started yet, or finished).

    A getxattr: unlike a second setxattr on the control file, it does not wait for the
    inode lock the running command's setxattr holds in the kernel."""
    try:
        raw = os.getxattr(os.path.join(mountpoint, CTRL_FILE), (PROGRESS + token.encode()).decode())
    except OSError:
        return None
    return int(json.loads(raw)["done"])
