"""The mount daemon: open the store, mount with pyfuse3, serve on trio until unmounted.

``mount()`` daemonizes by default (fork, setsid, log to ``<store>/mimeifs.log``) and
returns in the parent only once the filesystem is mounted, or raises with the child's
error. ``<store>/mount.json`` records ``{"pid", "mountpoint"}`` while it runs, so CLI
commands find the daemon. Every 5 s (and on fsync) committed data is flushed to disk;
on SIGTERM / SIGINT the daemon unmounts cleanly. A mountpoint left dead by a killed
daemon ("Transport endpoint is not connected") is lazily unmounted first.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys

import pyfuse3
import trio

from ..engine.db import Store
from ..engine.mimei import Engine
from .control import Controller
from .ctl import mount_info
from .loop import DEFAULT_BUSY_POLL_US, install as install_loop
from .ops import Operations

log = logging.getLogger("mimeifs.mount")

SYNC_EVERY = 5.0


class MountError(Exception):
    """The filesystem could not be mounted; the message says why."""


def clear_stale(mountpoint: str) -> None:
    """Lazily unmount a FUSE mount whose daemon died.

    ``statfs`` always goes to the daemon (``stat`` may be answered from the kernel's
    attribute cache), so a dead one shows as ENOTCONN there.
    """
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            subprocess.run(["fusermount3", "-uz", mountpoint], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


READ_AHEAD_KB = 1024


def raise_readahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> bool:
    """Raise the mount's kernel readahead (``/sys/class/bdi/<dev>/read_ahead_kb``).

    FUSE negotiates 128 KiB at INIT; with max_write at 1 MiB the kernel can send 1 MiB
    reads, which cuts the round trips of a sequential read by 8. Needs root and must
    run after INIT (which would clamp it back). Returns whether it took effect.
    """
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kb))
        return True
    except OSError:
        return False


async def _serve(ops: Operations, store: Store, mountpoint: str) -> None:
    async def tune():
        await trio.sleep(0.3)  # after the INIT handshake
        if await trio.to_thread.run_sync(raise_readahead, mountpoint):
            log.info("kernel readahead raised to %d KiB", READ_AHEAD_KB)

    async def syncer():
        while True:
            await trio.sleep(SYNC_EVERY)
            await trio.to_thread.run_sync(store.sync)

    async def signals():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as it:
            async for sig in it:
                log.info("signal %d: unmounting", sig)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as n:
        n.start_soon(syncer)
        n.start_soon(signals)
        n.start_soon(tune)
        await pyfuse3.main()
        n.cancel_scope.cancel()


def _run(store_path: str, mountpoint: str, allow_other: bool, debug: bool, ready_fd: int | None,
         busy_poll_us: int = DEFAULT_BUSY_POLL_US, dir_readahead: bool = True) -> int:
    def ready(msg: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, msg.encode()[:4000])
            os.close(ready_fd)

    try:
        store = Store.open(store_path)
        engine = Engine(store)
        reaped = engine.wt.reap_orphans()
        if reaped:
            log.info("freed %d orphaned inodes left by an earlier run", reaped)
        ops = Operations(engine, os.getuid())
        ops.ctrl = Controller(ops)
        ops.prefetch.enabled = dir_readahead
        options = set(pyfuse3.default_options)
        options |= {f"fsname=mimeifs:{store.path}", "subtype=mimeifs"}
        if allow_other:
            options.add("allow_other")
        if debug:
            options.add("debug")
        pyfuse3.init(ops, mountpoint, options)
    except Exception as e:
        log.error("mount failed: %s", e)
        ready(f"error: {e}")
        return 1
    info_path = os.path.join(store.path, "mount.json")
    with open(info_path, "w") as f:
        json.dump({"pid": os.getpid(), "mountpoint": os.path.abspath(mountpoint)}, f)
    log.info("mounted %s at %s (pid %d)", store.path, mountpoint, os.getpid())
    ready("ok")
    code = 0
    waiter = install_loop(busy_poll_us, idle=ops.prefetch)
    try:
        trio.run(_serve, ops, store, mountpoint)
    except BaseException:
        log.exception("daemon loop failed")
        code = 1
    finally:
        log.info("requests: %(ready)d waiting, %(polled)d caught by busy-polling, "
                 "%(parked)d after sleeping; %(steps)d idle steps", waiter.stats)
        log.info("directory readahead: %(dirs)d directories, %(files)d files, %(bytes)d bytes "
                 "pushed; queue full at %(dropped)d opens", ops.prefetch.stats)
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("close")
        try:
            os.unlink(info_path)
        except OSError:
            pass
        store.close()
        log.info("unmounted %s", mountpoint)
    return code


def mount(store_path: str, mountpoint: str, foreground: bool = False,
          allow_other: bool = False, debug: bool = False,
          busy_poll_us: int = DEFAULT_BUSY_POLL_US, dir_readahead: bool = True) -> int:
    """Mount the store at ``mountpoint``. Foreground: serve until unmounted and return
    the exit code. Background: return 0 once mounted; raise :class:`MountError` else.
    ``busy_poll_us``: see :mod:`mimeifs.fuse.loop` (0 turns busy-polling off).
    ``dir_readahead``: see :mod:`mimeifs.fuse.prefetch`."""
    mountpoint = os.path.abspath(mountpoint)
    clear_stale(mountpoint)
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint}: something is already mounted there")
    if not os.path.exists(os.path.join(store_path, "node.key")):
        raise MountError(f"no store at {store_path} (run: mimeifs --store {store_path} init)")
    running = mount_info(store_path)
    if running:
        raise MountError(f"store {store_path} is already mounted at {running['mountpoint']} (pid {running['pid']})")
    if foreground:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        return _run(store_path, mountpoint, allow_other, debug, None, busy_poll_us, dir_readahead)
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
            raise MountError(msg.removeprefix("error: ") or "the daemon exited before mounting")
        return 0
    # child: the daemon
    os.close(r)
    try:
        os.setsid()
        logfile = os.path.join(store_path, "mimeifs.log")
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        nul = os.open(os.devnull, os.O_RDWR)
        os.dup2(nul, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(nul)
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
                            force=True)
        code = _run(store_path, mountpoint, allow_other, debug, w, busy_poll_us, dir_readahead)
    except BaseException:
        code = 1
    os._exit(code)


def umount(mountpoint: str) -> None:
    """Unmount (``fusermount3 -u``). Raises :class:`MountError` with its message."""
    p = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if p.returncode:
        raise MountError(p.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
