"""The local door from the CLI to a running network node: ``<store>/net/ctl.sock``.

A Unix stream socket of mode 0600 in a 0700 directory (only the store's owner). One
request per connection: a JSON object on one line (``{"op": ..., args}``), answered by
one JSON line: the result, or ``{"error": message}``. Requests are at most 64 KiB.

Ops: ``status``, ``peers``, ``providers`` (``m``), ``pin`` (``m``, ``all``), ``unpin``
(``m``), ``replicate`` (``m``, ``copies``), ``settle`` (persist metering, send IOUs now).
This module imports no trio at top level, so the CLI's client side starts fast.
"""

from __future__ import annotations

import json
import os
import socket

MAX_REQUEST = 64 << 10


class CtlError(Exception):
    """No running node answers, or it answered with an error."""


def sock_path(store_path: str) -> str:
    return os.path.join(store_path, "net", "ctl.sock")


def call(store_path: str, op: str, timeout: float = 600.0, **args):
    """Send one request to the node running on ``store_path``; returns its answer.
    Raises CtlError."""
    path = sock_path(store_path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise CtlError("no network node is running on this store (start one with "
                       "`mimeifs serve --listen HOST:PORT` or `mimeifs mount MNT --listen HOST:PORT`)") from None
    try:
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            d = s.recv(1 << 16)
            if not d:
                break
            buf += d
    except OSError as e:
        raise CtlError(f"network node: {e}") from e
    finally:
        s.close()
    try:
        r = json.loads(buf)
    except ValueError:
        raise CtlError("the network node closed the connection without an answer") from None
    if isinstance(r, dict) and "error" in r:
        raise CtlError(r["error"])
    return r


async def serve_ctl(node, task_status=None):
    """Serve the control socket of ``node`` until cancelled (trio)."""
    import trio

    d = os.path.join(node.store.path, "net")
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = sock_path(node.store.path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream):
        async with stream:
            buf = b""
            with trio.move_on_after(10):
                while b"\n" not in buf and len(buf) < MAX_REQUEST:
                    d = await stream.receive_some(1 << 16)
                    if not d:
                        break
                    buf += d
            try:
                req = json.loads(buf.split(b"\n", 1)[0])
                if not isinstance(req, dict):
                    raise ValueError("a request is an object")
                out = await _dispatch(node, req)
            except Exception as e:  # every failure is an answer, never a dead node
                out = {"error": f"{type(e).__name__}: {e}" if not str(e) else str(e)}
            try:
                await stream.send_all(json.dumps(out).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    try:
        if task_status is not None:
            task_status.started()
        await trio.serve_listeners(handle, [listener])
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


async def _dispatch(node, req: dict):
    import trio

    from ..ids import is_id
    op = req.get("op")
    m = req.get("m")
    if op in ("providers", "pin", "unpin", "replicate") and not is_id(m):
        raise ValueError(f"not a MiMei ID: {m!r}")
    if op == "status":
        return await trio.to_thread.run_sync(node.status)
    if op == "peers":
        return node.peers()
    if op == "providers":
        return [{"node": p, "addr": list(a)} for p, a in await node.client.providers(m, fresh=True)]
    if op == "pin":
        return await node.client.pin(m, bool(req.get("all")))
    if op == "unpin":
        await trio.to_thread.run_sync(node.engine.set_pinned, m, False)
        node.replicas.pop(m, None)
        return {"mimei": m, "pinned": False}
    if op == "replicate":
        copies = req.get("copies")
        if not isinstance(copies, int) or copies < 1:
            raise ValueError("copies is a positive integer")
        return await node.replicate(m, copies)
    if op == "settle":
        await node.settle_accounts()
        return {"ok": True}
    raise ValueError(f"unknown op {op!r}")
