"""The trio face pyfuse3's request loop runs on: trio, with a cheaper wait for requests.

pyfuse3 looks up the event-loop module at run time as ``pyfuse3.trio`` (its own
``pyfuse3.asyncio.enable()`` swaps in asyncio the same way). Its request loop uses
seven names from it: ``Lock``, ``lowlevel.wait_readable``, ``lowlevel.notify_closing``,
``lowlevel.current_task``, ``lowlevel.current_trio_token``, ``open_nursery`` and
``ClosedResourceError``. :func:`install` puts a namespace there that is real trio for
all of them but two:

- ``Lock``: free acquire and release take no trip through trio's scheduler. trio's Lock
  checkpoints on every acquire, which costs a scheduler pass per FUSE request.
- ``lowlevel.wait_readable(fd)``: first looks whether ``/dev/fuse`` already holds a
  request (``poll`` with timeout 0), then **busy-polls** it for up to ``busy_poll_us``
  microseconds, and only then parks the task in trio's epoll. This is the idea of
  Linux's ``net.core.busy_poll`` (and of SPDK and DPDK): a program that issues one
  request after another (``cat``, ``ls``, ``find``, ``git``) sends the next one a few
  tens of microseconds after the reply. Polling meanwhile saves the sleep and the
  wake-up. On this project's 2-core VM a sleep/wake-up across cores costs ~70 µs, and
  trio's park-and-wake ~50 µs of Python on top.

  Idle work: before polling (whatever the polling window, 0 included), the waiter runs
  its ``idle`` hook's ``step()`` with a poll after each step (the directory readahead of
  :mod:`mimeifs.fuse.prefetch`), so the time spent waiting for the next request does
  useful work; a request that arrives is taken after at most one step. After
  ``IDLE_SLICE`` seconds of steps it lets trio run once.

  Adaptive: after ``MISSES_TO_BACK_OFF`` polls in a row that ran out of time, polling
  stops for the next ``BACK_OFF_WAITS`` waits. So an idle mount or a slow client costs
  at most a few polls per hundred requests. Each poll is preceded by ``sched_yield``:
  when another thread wants this core (the kernel's writeback of the store, the client
  itself), it gets it. Without the yield, 1 GiB written to cur took twice as long
  (2.5 s against 1.2 s), and with it the poll costs nothing measurable. Every
  ``FAIRNESS_EVERY`` requests taken without parking, the task yields once
  (``trio.lowlevel.checkpoint``) so that timers, thread completions and the control
  socket keep running.

Measured (``tools/bench_loop.py``, a do-nothing pyfuse3 filesystem, lookup + getxattr per
call, 2-core VM): stock loop 293 µs per call; this loop with polling off 246 µs, with
50–200 µs polling 82–93 µs. The C libfuse low-level example does 151 µs on the same
machine (it sleeps between requests).
"""

from __future__ import annotations

import logging
import os
import select
import time
import types

import trio

log = logging.getLogger("mimeifs.loop")

DEFAULT_BUSY_POLL_US = 100
MISSES_TO_BACK_OFF = 8
BACK_OFF_WAITS = 64
FAIRNESS_EVERY = 64
IDLE_SLICE = 0.002


class Lock:
    """An async mutex whose free acquire does not yield (asyncio.Lock's rule).

    Waiters park on a ``trio.lowlevel.ParkingLot`` and are woken first come, first
    served. Not reentrant; use as ``async with lock:``.
    """

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:
            await self._lot.park()
        self._held = True

    async def __aexit__(self, *exc) -> None:
        self._held = False
        if self._lot:
            self._lot.unpark()


class RequestWaiter:
    """``wait_readable`` for the FUSE fd with a poll fast path and adaptive busy-polling.

    ``busy_poll_us``: how long (µs) to poll before parking; 0 disables polling but keeps
    the zero-timeout look. ``idle``: an object whose ``step() -> bool`` does one small
    piece of background work and says whether there was any (or None). ``stats`` counts
    how each wait ended: ``ready`` (request already there), ``polled`` (arrived while
    polling or doing idle work), ``parked`` (went to trio); and ``steps`` of idle work.
    """

    def __init__(self, busy_poll_us: int = DEFAULT_BUSY_POLL_US, idle=None) -> None:
        self.window = max(0, busy_poll_us) / 1e6
        self.idle = idle
        self._polls: dict[int, select.poll] = {}
        self._streak = 0      # requests taken without a scheduler pass
        self._misses = 0      # polls in a row that ran out of time
        self._skip = 0        # waits left before polling again
        self.stats = {"ready": 0, "polled": 0, "parked": 0, "steps": 0}

    def _took(self, how: str) -> None:
        """A request is there without a trip through trio: count it as ``how``."""
        self._streak += 1
        self.stats[how] += 1

    def _poller(self, fd: int) -> select.poll:
        p = self._polls.get(fd)
        if p is None:
            p = self._polls[fd] = select.poll()
            p.register(fd, select.POLLIN)
        return p

    async def wait_readable(self, fd: int) -> None:
        """Return once ``fd`` is readable; raises ``trio.ClosedResourceError`` like trio's
        when :func:`trio.lowlevel.notify_closing` is called on it while parked."""
        if self._streak >= FAIRNESS_EVERY:
            self._streak = 0
            await trio.lowlevel.checkpoint()
        poll = self._poller(fd).poll
        if poll(0):
            self._took("ready")
            return
        if self.idle is not None and await self._idle_work(poll):
            return
        if self.window:
            if self._skip:
                self._skip -= 1
            else:
                clock = time.perf_counter
                end = clock() + self.window
                while clock() < end:
                    os.sched_yield()
                    if poll(0):
                        self._misses = 0
                        self._took("polled")
                        return
                self._misses += 1
                if self._misses >= MISSES_TO_BACK_OFF:
                    self._misses = 0
                    self._skip = BACK_OFF_WAITS
        self._streak = 0
        self.stats["parked"] += 1
        await trio.lowlevel.wait_readable(fd)

    async def _idle_work(self, poll) -> bool:
        """Run idle steps until a request comes (True) or there is no work (False)."""
        step = self.idle.step
        clock = time.perf_counter
        while True:
            end = clock() + IDLE_SLICE
            while clock() < end:
                try:
                    more = step()
                except Exception:   # never let idle work take the request loop down
                    log.exception("idle work failed; turning it off")
                    self.idle = None
                    return False
                if not more:
                    return False
                self.stats["steps"] += 1
                if poll(0):
                    self._took("polled")
                    return True
            self._streak = 0
            await trio.lowlevel.checkpoint()


def shim(waiter: RequestWaiter) -> types.SimpleNamespace:
    """The namespace pyfuse3 uses as ``trio``: trio itself but for ``Lock`` and
    ``lowlevel.wait_readable`` (``waiter``'s)."""
    lowlevel = types.SimpleNamespace(
        current_trio_token=trio.lowlevel.current_trio_token,
        wait_readable=waiter.wait_readable,
        notify_closing=trio.lowlevel.notify_closing,
        current_task=trio.lowlevel.current_task,
    )
    return types.SimpleNamespace(lowlevel=lowlevel, Lock=Lock, open_nursery=trio.open_nursery,
                                 ClosedResourceError=trio.ClosedResourceError)


def install(busy_poll_us: int = DEFAULT_BUSY_POLL_US, idle=None) -> RequestWaiter:
    """Make pyfuse3's request loop use :func:`shim`; call before ``pyfuse3.main()``.
    ``idle``: see :class:`RequestWaiter`. Returns the waiter (its ``stats`` tell how
    requests arrived)."""
    import pyfuse3

    waiter = RequestWaiter(busy_poll_us, idle)
    pyfuse3.trio = shim(waiter)
    return waiter
