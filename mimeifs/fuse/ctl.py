"""The control file's protocol and its client side, free of pyfuse3 and trio.

The protocol is described in :mod:`mimeifs.fuse.control` (the daemon side). This half
is what every CLI command needs (``call`` to reach a running daemon, ``run_op`` to do
the same work on the store when nothing is mounted); keeping pyfuse3 and trio out of
it saves each command ~0.3 s of imports.
"""

from __future__ import annotations

import errno
import json
import os
import secrets

from ..engine.mimei import MiMeiError

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


def run_op(engine, op: str, a: dict, progress=None):
    """Run a whole-MiMei command (backup, release, restore, fork, rm) on ``engine``.

    The one dispatch both doors use: the daemon for a command from its control file,
    the CLI on the store when nothing is mounted. Raises MiMeiError, KeyError."""
    if op == "backup":
        return engine.backup(a["id"], a.get("memo", ""), progress)
    if op == "release":
        return engine.release(a["id"], a.get("n"))
    if op == "restore":
        engine.restore(a["id"], int(a["n"]))
        return {"id": a["id"], "n": int(a["n"])}
    if op == "fork":
        return {"id": engine.fork(a["id"], a.get("n"), a["mark"])}
    if op == "rm":
        engine.rm(a["id"])
        return {"id": a["id"]}
    raise MiMeiError(errno.EINVAL, f"unknown control op {op!r}")


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
