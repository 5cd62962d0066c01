#!/usr/bin/env python3
"""A delay line for a kernel without ``sch_netem``: every packet that netfilter hands to
NFQUEUE number ``--queue`` is held ``--delay-ms`` milliseconds and then accepted, in
arrival order.

    ip netns exec R python tools/nfq_delay.py --queue 0 --delay-ms 10 [--realtime]
    ip netns exec R iptables -A FORWARD -j NFQUEUE --queue-num 0

Used by ``tools/netns_link.py`` (the shaped path of ``tools/bench_net.py``'s ``netns``
benchmark, where it runs in a router namespace on ``FORWARD``) in place of
``tc qdisc ... netem delay``; the rate stays with ``tc ... tbf``.
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

Limits (measured with ``tools/netns_link.py``, one delay line for both directions, a TCP
flow of plain Python sockets, kernel 6.18, 2 cores shared with other work, load 0.7-1.0):
- Python handles each packet (one netlink message in, one verdict out): about 7 us of CPU
  per packet when busy. With no rate limit it passed 107,000 packets/s (993 Mbit/s at MTU
  1500) using 75% of a core, but verdicts then came late (p99 10 ms, max 31 ms): the delay
  is only trustworthy well below that. At 200 Mbit/s and MTU 1500 (21,000 packets/s with
  the ACKs) it used 23% of a core, the flow reached 189 Mbit/s and p99 lateness was 3.8 ms.
  So the path of ``tools/netns_link.py`` runs its veths at MTU 64000 (chosen): a full-rate
  flow is ~600 packets/s with ACKs, 3% of a core, p99 lateness 0.15-0.3 ms, 198.7 Mbit/s
  through tbf 200mbit; without the rate limit one flow reached 1115 Mbit/s (3,200
  packets/s, 12% of a core; the sender's 4 MB socket buffer, not the delay line, was the
  limit). The benchmark thus models a 20 ms RTT, 200 Mbit/s path with jumbo frames, not
  Ethernet-sized packets.
- ``--realtime`` (SCHED_FIFO priority 10, as the link runs it) keeps verdicts on time while
  other processes load the machine: p99 lateness 0.15-0.3 ms against ~2.2 ms at normal
  priority, at 200 Mbit/s. It blocks in ``select`` between packets, so it does not spin.
- NFQUEUE splits GSO packets into MTU-sized ones before queueing them (NetfilterQueue does
  not set NFQA_CFG_F_GSO); with MTU 64000 TCP rarely builds GSO packets at all.
- There is no jitter, loss or reordering model, unlike netem; the delay is the hold time
  plus the lateness above.
- If this process dies while the iptables rule is in place, the queued traffic is dropped
  (the rule has no ``--queue-bypass``): a link with the delay missing would silently
  measure the wrong thing, a dead link fails loudly.
- Queue length ``--max-len`` packets (default 8192); the kernel drops past that.
- Where the rule sits matters (see ``tools/netns_link.py``): on the sender's OUTPUT hook
  TCP Small Queues caps a flow; on the receiver's INPUT hook ``ping`` reports half the RTT;
  in a router namespace's FORWARD hook neither happens.
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
