"""The FUSE door as a daemon service, and ``mimeifs mount`` / ``umount``.

:class:`FuseService` mounts the view with pyfuse3 and serves it on the daemon's trio
loop (:mod:`mimeifs.daemon` composes it with the other services). :func:`mount` checks
the mountpoint and starts the daemon (:func:`mimeifs.daemon.start`): it returns in the
parent only once the filesystem is mounted, or raises with the child's error. A
mountpoint left dead by a killed daemon ("Transport endpoint is not connected") is
lazily unmounted first. On SIGTERM / SIGINT the daemon unmounts cleanly.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess

import pyfuse3
import trio

from ..daemon import DaemonConfig, StartError, start
from .control import Controller
from .ctl import mount_info
from .loop import DEFAULT_BUSY_POLL_US, install as install_loop
from .ops import Operations

log = logging.getLogger("mimeifs.mount")

READ_AHEAD_KB = 1024


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


class FuseService:
    """The mounted view: pyfuse3 on the daemon's trio loop (essential: when the
    filesystem is unmounted, the daemon stops).

    ``notify(fn, *args)`` runs ``await fn(*args)`` on the daemon's loop from any thread;
    the service uses it to drop the kernel's caches of a MiMei whose records changed
    from outside (a remote MiMei's newer version)."""

    essential = True

    def __init__(self, engine, view, mountpoint: str, allow_other: bool = False,
                 debug: bool = False, busy_poll_us: int = DEFAULT_BUSY_POLL_US,
                 dir_readahead: bool = True, notify=None):
        self.mountpoint = os.path.abspath(mountpoint)
        self.ops = Operations(engine, os.getuid(), view=view, ctrl_factory=Controller,
                              dir_readahead=dir_readahead)
        self.options = set(pyfuse3.default_options) | {
            f"fsname=mimeifs:{engine.store.path}", "subtype=mimeifs"}
        if allow_other:
            self.options.add("allow_other")
        if debug:
            self.options.add("debug")
        self.busy_poll_us = busy_poll_us
        self.running = False
        self._mounted = False
        self.waiter = None
        if notify is not None:
            engine.subscribe(lambda mid: notify(self.ops.invalidate_all, mid))
            view.subscribe(lambda mid, inos, entries: self._mounted and notify(
                self.ops.invalidate_view, mid, inos, entries))  # no session before/after

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        pyfuse3.init(self.ops, self.mountpoint, self.options)
        self._mounted = True
        self.waiter = install_loop(self.busy_poll_us, idle=self.ops.prefetch)
        self.running = True
        log.info("mounted at %s", self.mountpoint)
        task_status.started()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._tune)
                await pyfuse3.main()
                n.cancel_scope.cancel()
        finally:
            self.running = False

    async def _tune(self):
        await trio.sleep(0.3)  # after the INIT handshake
        if await trio.to_thread.run_sync(raise_readahead, self.mountpoint):
            log.info("kernel readahead raised to %d KiB", READ_AHEAD_KB)

    def stop(self) -> None:
        if self.running:
            pyfuse3.terminate()

    def close(self) -> None:
        """Unmount (after the loop ended) and log the request loop's statistics."""
        if self.waiter is not None:
            log.info("requests: %(ready)d waiting, %(polled)d caught by busy-polling, "
                     "%(parked)d after sleeping; %(steps)d idle steps", self.waiter.stats)
            log.info("directory readahead: %(dirs)d directories, %(files)d files, %(bytes)d "
                     "bytes pushed; queue full at %(dropped)d opens", self.ops.prefetch.stats)
        if self._mounted:
            self._mounted = False
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", self.mountpoint)


def mount(store_path: str, mountpoint: str, foreground: bool = False,
          allow_other: bool = False, debug: bool = False,
          busy_poll_us: int = DEFAULT_BUSY_POLL_US, dir_readahead: bool = True,
          extra: dict | None = None) -> int:
    """Mount the store at ``mountpoint``. Foreground: serve until unmounted and return
    the exit code. Background: return 0 once mounted; raise :class:`MountError` else.
    ``busy_poll_us``: see :mod:`mimeifs.fuse.loop` (0 turns busy-polling off).
    ``dir_readahead``: see :mod:`mimeifs.fuse.prefetch`. ``extra``: options of further
    services (see :class:`mimeifs.daemon.DaemonConfig`)."""
    mountpoint = os.path.abspath(mountpoint)
    clear_stale(mountpoint)
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint}: something is already mounted there")
    check_not_running(store_path)
    cfg = DaemonConfig(store_path, mountpoint, allow_other, debug, busy_poll_us, dir_readahead,
                       dict(extra or {}))
    try:
        return start(cfg, foreground)
    except StartError as e:
        raise MountError(str(e)) from None


def check_not_running(store_path: str) -> None:
    """Raise :class:`MountError` if there is no store at ``store_path`` or a daemon
    already serves it (mounted or headless)."""
    if not os.path.exists(os.path.join(store_path, "node.key")):
        raise MountError(f"no store at {store_path} (run: mimeifs --store {store_path} init)")
    running = mount_info(store_path)
    if running:
        where = running["mountpoint"]
        raise MountError(f"store {store_path} is already "
                         f"{'mounted at ' + where if where else 'served headless'} (pid {running['pid']})")


def umount(mountpoint: str) -> None:
    """Unmount (``fusermount3 -u``). Raises :class:`MountError` with its message."""
    p = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if p.returncode:
        raise MountError(p.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
