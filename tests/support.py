"""Helpers every test folder uses, in a module that needs no kernel feature (the FUSE
folder's conftest skips itself where /dev/fuse is missing; these must not)."""

from __future__ import annotations

import os
import time


def wait_for(pred, timeout: float = 30.0, what: str = "condition", every: float = 0.05):
    """Poll ``pred`` until it returns a truthy value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap(pids, grace: float = 10.0) -> None:
    """Give each daemon in ``pids`` ``grace`` seconds to exit, then SIGKILL it (a test's
    teardown: nothing it started may outlive it)."""
    import signal
    for pid in pids:
        try:
            deadline = time.monotonic() + grace
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
