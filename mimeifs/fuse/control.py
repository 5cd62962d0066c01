"""The control file: how CLI commands reach a running daemon (the pattern s3ql uses).

Protocol on ``<mnt>/.__mimeifs_ctrl__``:

1. ``setxattr(ctrl, "user.mimeifs.cmd", JSON)`` with ``{"token": hex, "op": name, ...args}``
   runs the command inside the daemon (so the kernel's caches are invalidated and an
   unlinked-but-open file is kept alive) and keeps the answer under the token.
2. ``getxattr(ctrl, "user.mimeifs.result.<token>")`` returns the answer (kept for the
   last 256 commands: the kernel may ask twice, once for the size):
   ``{"ok": true, "result": ...}`` or ``{"ok": false, "errno": n, "error": "..."}``.
3. While a command runs, ``getxattr(ctrl, "user.mimeifs.progress.<token>")`` returns
   ``{"done": bytes}`` (what the CLI's progress bar shows); ENODATA before and after.

Only root and the user who mounted may send commands (else EACCES). Ops and their fields
(``ctl.OPS``; every field checked for type, size and range by ``ctl.parse_command``, a
command at most 16 KiB of flat JSON): ``backup`` (id, memo, allow_empty), ``release``
(id, n), ``restore`` (id, n), ``fork`` (id, n, mark), ``rm`` (id), ``invalidate`` (id),
``ping``. A bad field is answered as ``{"ok": false, "errno": EINVAL, "error": reason}``.
"""

from __future__ import annotations

import errno
import json
import logging
import os

import pyfuse3
import trio

from ..engine.mimei import MiMeiError
from .ctl import CMD, PROGRESS, RESULT, BadCommand, parse_command, run_op

log = logging.getLogger("mimeifs.control")


class Controller:
    """Daemon side: runs commands for the CLI. ``ops`` is the mounted Operations."""

    def __init__(self, ops):
        self.ops = ops
        self.e = ops.e
        self.results: dict[bytes, bytes] = {}
        self.done: dict[bytes, int] = {}  # token -> bytes done, while the command runs

    def _allowed(self, ctx) -> None:
        if ctx.uid not in (0, self.ops.mount_uid):
            raise pyfuse3.FUSEError(errno.EACCES)

    def _run(self, op: str, a: dict, progress=None):
        e = self.e
        if op == "ping":
            return {"pid": os.getpid(), "store": e.store.path,
                    "vnodes": len(self.ops.vnodes), "lookups": len(self.ops.lookups)}
        if op == "invalidate":
            return {}
        if op == "restore":  # the names it removed leave the kernel's dentry cache too
            removed = e.restore(a["id"], int(a["n"]))
            return {"id": a["id"], "n": int(a["n"])}, removed
        return run_op(e, op, a, progress)

    async def command(self, name: bytes, value: bytes, ctx) -> None:
        """setxattr of ``user.mimeifs.cmd``: run the command and keep its answer.

        A command whose token cannot be read fails the setxattr with EINVAL (the reason
        goes to the log, with the command's size, never its bytes); any other bad field
        is answered under the token as EINVAL with the reason (:func:`ctl.parse_command`)."""
        self._allowed(ctx)
        if name != CMD:
            raise pyfuse3.FUSEError(errno.EINVAL)
        try:
            token_s, op, args = parse_command(bytes(value))
        except BadCommand as x:
            if x.token is None:
                log.warning("control command refused (%d bytes): %s", len(value), x)
                raise pyfuse3.FUSEError(errno.EINVAL) from None
            self._keep(x.token.encode(), {"ok": False, "errno": x.errno, "error": str(x)})
            return
        token = token_s.encode()
        done = self.done
        names: list = []

        def progress(n: int) -> None:  # the worker thread is the only writer of this key
            done[token] = done.get(token, 0) + n

        done[token] = 0
        try:
            res = await trio.to_thread.run_sync(self._run, op, args, progress)
            if op == "restore":
                res, names = res
            ans = {"ok": True, "result": res}
        except MiMeiError as x:
            ans = {"ok": False, "errno": x.errno, "error": str(x)}
        except OSError as x:
            ans = {"ok": False, "errno": x.errno or errno.EIO, "error": x.strerror or str(x)}
        except Exception as x:  # a bug: logged with its traceback; the daemon lives on
            log.exception("control op %s failed", op)
            ans = {"ok": False, "errno": errno.EIO, "error": f"{type(x).__name__}: {x}"}
        finally:
            done.pop(token, None)
        self._keep(token, ans)
        if ans["ok"] and op != "ping":
            await self.ops.invalidate_all(args.get("id"), removed=op == "rm", names=names)

    def _keep(self, token: bytes, ans: dict) -> None:
        """Keep ``ans`` under ``token`` (the last 256 answers)."""
        while len(self.results) >= 256:
            self.results.pop(next(iter(self.results)))
        self.results[token] = json.dumps(ans).encode()

    def result(self, name: bytes, ctx) -> bytes:
        self._allowed(ctx)
        if name.startswith(PROGRESS):
            n = self.done.get(name[len(PROGRESS):])
            if n is None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return json.dumps({"done": n}).encode()
        if not name.startswith(RESULT):
            raise pyfuse3.FUSEError(errno.ENODATA)
        v = self.results.get(name[len(RESULT):])
        if v is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return v
