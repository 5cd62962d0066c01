"""The request loop's wait (mimeifs.fuse.loop): the three ways a wait ends, back-off,
fairness, closing, the lock; and a real mount with busy-polling on and off."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
import trio
import trio.testing

from mimeifs.fuse import loop
from .conftest import MimeiFS, wait_for


def _run_with_pipe(fn):
    r, w = os.pipe()
    try:
        return trio.run(fn, r, w)
    finally:
        os.close(r)
        os.close(w)


def _write_later(fd: int, delay: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), os.write(fd, b"x")))
    t.start()
    return t


def test_request_already_there_returns_without_polling_or_parking():
    async def main(r, w):
        waiter = loop.RequestWaiter(busy_poll_us=0)
        os.write(w, b"x")
        await waiter.wait_readable(r)
        return waiter.stats
    assert _run_with_pipe(main) == {"ready": 1, "polled": 0, "parked": 0, "steps": 0}


def test_request_arriving_within_the_window_is_caught_by_polling():
    async def main(r, w):
        waiter = loop.RequestWaiter(busy_poll_us=2_000_000)
        t = _write_later(w, 0.01)
        t0 = time.monotonic()
        await waiter.wait_readable(r)
        t.join()
        return waiter.stats, time.monotonic() - t0
    stats, dt = _run_with_pipe(main)
    assert stats == {"ready": 0, "polled": 1, "parked": 0, "steps": 0}
    assert dt < 1.5


def test_request_after_the_window_is_waited_for_in_trio():
    async def main(r, w):
        waiter = loop.RequestWaiter(busy_poll_us=1000)
        t = _write_later(w, 0.2)
        await waiter.wait_readable(r)
        t.join()
        assert os.read(r, 1) == b"x"
        return waiter.stats
    assert _run_with_pipe(main) == {"ready": 0, "polled": 0, "parked": 1, "steps": 0}


def test_polling_backs_off_after_misses_and_comes_back():
    # The request is written by a trio task, which can run only once the waiter has
    # parked (its polling never yields to trio): every wait is a miss whatever the
    # machine's load, where a thread writing after a sleep could land inside the window.
    async def main(r, w):
        waiter = loop.RequestWaiter(busy_poll_us=200)

        async def request():
            os.write(w, b"x")

        async with trio.open_nursery() as n:
            for i in range(loop.MISSES_TO_BACK_OFF + loop.BACK_OFF_WAITS + 1):
                n.start_soon(request)
                await waiter.wait_readable(r)
                os.read(r, 1)
                if i == loop.MISSES_TO_BACK_OFF - 1:
                    assert waiter._skip == loop.BACK_OFF_WAITS
        assert waiter._skip == 0
        return waiter.stats
    stats = _run_with_pipe(main)
    # no wait found its request within the 200 µs window: all parked, none polled
    assert stats["parked"] == loop.MISSES_TO_BACK_OFF + loop.BACK_OFF_WAITS + 1
    assert stats["polled"] == 0


def test_a_stream_of_ready_requests_still_lets_other_tasks_run():
    async def main(r, w):
        waiter = loop.RequestWaiter(busy_poll_us=100)
        os.write(w, b"x")   # never drained: always readable
        ran_at = []

        async def other():
            ran_at.append(waiter.stats["ready"])

        async with trio.open_nursery() as n:
            n.start_soon(other)
            for _ in range(3 * loop.FAIRNESS_EVERY):
                await waiter.wait_readable(r)
        return ran_at
    ran_at = _run_with_pipe(main)
    # trio runs each batch of runnable tasks in random order, so the other task gets in
    # at the first yield or at the second
    assert ran_at and ran_at[0] <= 2 * loop.FAIRNESS_EVERY


def test_closing_the_fd_wakes_a_parked_wait():
    async def main(r, w):
        waiter = loop.RequestWaiter(busy_poll_us=100)

        async def closer():
            await trio.sleep(0.05)
            trio.lowlevel.notify_closing(r)

        async with trio.open_nursery() as n:
            n.start_soon(closer)
            with pytest.raises(trio.ClosedResourceError):
                await waiter.wait_readable(r)
        return waiter.stats["parked"]
    assert _run_with_pipe(main) == 1


def test_lock_free_acquire_does_not_yield_and_waiters_go_in_order():
    async def main():
        lock = loop.Lock()
        trace = []

        async def bystander():
            trace.append("bystander")

        async def worker(name):
            async with lock:
                trace.append(f"{name} in")
                await trio.sleep(0.01)
                trace.append(f"{name} out")

        async with trio.open_nursery() as n:
            n.start_soon(bystander)
            async with lock:          # free: must not let the bystander run first
                trace.append("main in")
            trace.append("main out")
            await trio.testing.wait_all_tasks_blocked()
            async with lock:
                for name in "abc":        # they queue up in this order
                    n.start_soon(worker, name)
                    await trio.testing.wait_all_tasks_blocked()
        return trace
    trace = trio.run(main)
    assert trace[:2] == ["main in", "main out"]
    workers = [t for t in trace if t.split()[0] in ("a", "b", "c")]
    assert workers == ["a in", "a out", "b in", "b out", "c in", "c out"]


def _request_counts(m: MimeiFS) -> tuple[int, int, int]:
    found = re.findall(r"requests: (\d+) waiting, (\d+) caught by busy-polling, (\d+) after "
                       r"sleeping", m.log_text())
    assert found, m.log_tail()
    return tuple(map(int, found[-1]))


@pytest.mark.parametrize("busy_poll_us", [0, 2000])
def test_mount_serves_with_and_without_busy_polling(tmp_path, busy_poll_us):
    m = MimeiFS(tmp_path)
    try:
        m.init()
        mid = m.create("loop")
        m.run("mount", m.mnt, "--busy-poll-us", busy_poll_us, timeout=60)
        m.pids.append(m.daemon_pid())
        cur = m.cur(mid)
        for i in range(300):
            (cur / f"f{i}").write_bytes(b"%d" % i)
        assert [(cur / f"f{i}").read_bytes() for i in range(300)] == [b"%d" % i for i in range(300)]
        for i in range(300):
            with pytest.raises(OSError):
                os.getxattr(cur / f"f{i}", "user.absent")
        m.umount()
        ready, polled, parked = _request_counts(m)
        assert ready + polled + parked > 1500
        if busy_poll_us == 0:
            assert polled == 0
        else:
            assert polled > 0
        wait_for(lambda: not m.alive(), 10, "daemon exit")
    finally:
        m.cleanup(remove_mountpoint=True)


def test_idle_work_runs_between_polls_and_a_failing_hook_is_dropped():
    class Work:
        def __init__(self, n, fail_at=None):
            self.left, self.done, self.fail_at = n, 0, fail_at

        def step(self):
            if self.done == self.fail_at:
                raise RuntimeError("bug in idle work")
            if not self.left:
                return False
            self.left -= 1
            self.done += 1
            return True

    async def main(r, w):
        work = Work(50)
        waiter = loop.RequestWaiter(busy_poll_us=1000, idle=work)
        t = _write_later(w, 0.05)
        await waiter.wait_readable(r)    # all 50 steps, then polls, then the request
        t.join()
        os.read(r, 1)
        assert work.done == 50 and waiter.stats["steps"] == 50
        bad = Work(10, fail_at=3)
        waiter.idle = bad
        t = _write_later(w, 0.01)
        await waiter.wait_readable(r)
        t.join()
        assert bad.done == 3 and waiter.idle is None
    _run_with_pipe(main)
