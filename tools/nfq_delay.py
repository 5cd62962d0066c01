#!/usr/bin/env python3
"""A delay line for a kernel without ``sch_netem``: every packet that netfilter hands to
NFQUEUE number ``--queue`` is held ``--delay-ms`` milliseconds and then accepted, in
arrival order.

    ip netns exec NS python tools/nfq_delay.py --queue 0 --delay-ms 10
    ip netns exec NS iptables -A INPUT -i DEV -j NFQUEUE --queue-num 0

Used by ``tools/netns_link.py`` (the shaped link of ``tools/bench_net.py``'s ``netns``
benchmark) in place of ``tc qdisc ... netem delay``; the rate stays with ``tc ... tbf``.
Needs root (in the namespace), a kernel with CONFIG_NETFILTER_NETLINK_QUEUE and the
NFQUEUE target, and the NetfilterQueue package (Python bindings of libnetfilter_queue):
``apt-get install iptables libnetfilter-queue-dev && pip install NetfilterQueue``.

How: it binds the queue in copy-meta mode (the kernel keeps the packet and sends only its
ID, so no payload is copied to user space), appends each packet with its release time to a
FIFO, and waits with ``select`` on the queue's socket until the earlier of "a packet
arrives" and "the head's release time". Verdicts are given outside the NetfilterQueue
callback (``run(block=False)`` drains the socket; the ``Packet`` objects are kept and
``accept()``-ed later), so a packet waiting its 10 ms never holds up the ones behind it:
this is a delay line, not a per-packet sleep. A constant delay keeps the order.

Prints ``ready`` on stdout once the queue is bound (add the iptables rule after that, or
packets are dropped with no listener), and on SIGTERM/SIGINT accepts what it still holds,
unbinds, and prints one JSON line of statistics: packets, the largest number held at once,
the lateness of verdicts past their release time (p50/p99/max, ms), and CPU seconds.

Limits (measured numbers are in ``tools/netns_link.py --ceiling``):
- Python handles each packet (one netlink message in, one verdict out, ~10-20 us of CPU):
  some 20,000-40,000 packets/s on one core of this kind of machine. At 1500-byte packets a
  200 Mbit/s link is ~17,000 packets/s, too close to that; the link in
  ``tools/netns_link.py`` therefore runs the veth at MTU 64000, so a full-rate TCP flow is
  ~400 data packets/s plus their ACKs. The benchmark thus models a 20 ms RTT, 200 Mbit/s
  path with jumbo frames, not Ethernet-sized packets.
- NFQUEUE splits GSO packets into MTU-sized ones before queueing them (NetfilterQueue does
  not set NFQA_CFG_F_GSO); with MTU 64000 TCP rarely builds GSO packets at all.
- The delay is accurate to select's wake-up time (tens of us idle, up to a scheduler tick
  when the machine is busy); there is no jitter, loss or reordering model, unlike netem.
- If this process dies while the iptables rule is in place, the queued traffic is dropped
  (the rule has no ``--queue-bypass``): a link with the delay missing would silently
  measure the wrong thing, a dead link fails loudly.
- Queue length ``--max-len`` packets (default 8192); the kernel drops past that.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import select
import signal
import sys
import time


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def run(queue_num: int, delay_s: float, max_len: int = 8192) -> dict:
    """Run the delay line on NFQUEUE ``queue_num`` until SIGTERM/SIGINT; hold every
    packet ``delay_s`` seconds. Returns the statistics dict described in the module
    docstring. Raises OSError if the queue cannot be bound (not root, no NFQUEUE support,
    or the number already bound by another process)."""
    from netfilterqueue import COPY_META, NetfilterQueue

    held: collections.deque = collections.deque()
    clock = time.monotonic
    packets = 0
    most_held = 0
    late: list[float] = []

    def on_packet(pkt):
        held.append((clock() + delay_s, pkt))

    q = NetfilterQueue()
    q.bind(queue_num, on_packet, max_len=max_len, mode=COPY_META)
    fd = q.get_fd()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", flush=True)
    try:
        while True:
            wait = max(0.0, held[0][0] - clock()) if held else None
            ready = select.select([fd], [], [], wait)[0]
            if ready:
                q.run(block=False)
                if len(held) > most_held:
                    most_held = len(held)
            now = clock()
            while held and held[0][0] <= now:
                due, pkt = held.popleft()
                pkt.accept()
                packets += 1
                if len(late) < 1_000_000:
                    late.append(now - due)
    except _Stop:
        pass
    finally:
        while held:
            held.popleft()[1].accept()
        q.unbind()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    late.sort()
    ms = lambda f: round(late[min(len(late) - 1, int(len(late) * f))] * 1e3, 3) if late else None  # noqa: E731
    return {"packets": packets, "most_held": most_held, "late_ms_p50": ms(0.5), "late_ms_p99": ms(0.99),
            "late_ms_max": round(late[-1] * 1e3, 3) if late else None,
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queue", type=int, default=0, help="NFQUEUE number (per network namespace)")
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--max-len", type=int, default=8192, help="kernel queue length, packets")
    ap.add_argument("--realtime", action="store_true",
                    help="run under SCHED_FIFO (priority 10) so a busy machine delays verdicts less")
    a = ap.parse_args()
    if a.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except OSError as e:
            print(f"nfq_delay: SCHED_FIFO refused ({e}); running at normal priority", file=sys.stderr)
    stats = run(a.queue, a.delay_ms / 1e3, a.max_len)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
