#!/usr/bin/env python3
"""A shaped path between two network namespaces for the benchmarks: namespaces A and B,
each joined by a veth pair to a router namespace R, each endpoint's outgoing traffic
limited to RATE with ``tc ... tbf`` and every packet R forwards delayed DELAY ms, so the
round trip is 2 x DELAY (the ``netns`` benchmark of ``tools/bench_net.py``: 10 ms each way,
200 Mbit/s).

    A 10.231.1.1 --veth-- 10.231.1.254 R 10.231.2.254 --veth-- 10.231.2.1 B

The delay comes from ``tc ... netem`` on R's two devices where the kernel has sch_netem;
otherwise from a delay line in user space (``tools/nfq_delay.py``, one process in R) fed by
an iptables ``FORWARD -j NFQUEUE`` rule in R, with every veth at MTU 64000 so the delay line
handles few, large packets (see nfq_delay.py for its limits). If neither is available the
path has the rate alone, and :attr:`ShapedLink.shaping` says so.

Why a router in the middle rather than a rule on the endpoints (measured, kernel 6.18):
- holding packets on the sender's way out (OUTPUT) keeps them charged to the sending TCP
  socket, and TCP Small Queues lets only a couple of packets per socket be below TCP at
  once: one flow through a 10 ms egress hold reached only 195 Mbit/s at MTU 64000 with no
  rate limit at all, and 4.5 Mbit/s at MTU 1500, so the cap would not be the link's;
- holding them on the receiver's way in (INPUT) has no such cap (veth has detached them
  from the socket), but the kernel stamps a packet's receive time before INPUT, so ``ping``
  (which reports that stamp) shows 10 ms for a 20 ms round trip (``ping -U`` shows 20).
In R's FORWARD hook packets are detached from the sender and not yet received, like a real
path: ``ping`` shows 20 ms and one flow is limited by the link.

    with ShapedLink("mmb1") as link:          # namespaces mmb1a, mmb1b, mmb1r
        subprocess.run(link.exec(0, "ping", "-c", "3", link.addrs[1]))
    print(link.shaping, link.delayer_stats)

Run directly, it checks the path: ping RTT and a one-way TCP flow (plain Python sockets)
from A to B, and the delay line's statistics:

    python tools/netns_link.py [--delay-ms 10] [--rate 200mbit|none] [--mtu N]
                               [--delay auto|netem|nfqueue|none] [--seconds 10]
    python tools/netns_link.py --ceiling     # the delay line alone: no rate limit, once
                                             # at MTU 64000 and once at MTU 1500
Needs root, iproute2, and for the delay line iptables + NetfilterQueue (see nfq_delay.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NFQ_MTU = 64000


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def _iptables() -> str | None:
    """The legacy iptables binary when present (this kernel builds ip_tables in), else the
    nft-backed one; None when neither is installed."""
    return shutil.which("iptables-legacy") or shutil.which("iptables")


class ShapedLink:
    """Namespaces ``<tag>a`` (address ``addrs[0]``), ``<tag>b`` (``addrs[1]``) and the router
    ``<tag>r`` between them; veths ``<tag>a0``/``<tag>a1`` and ``<tag>b0``/``<tag>b1`` (the
    ``1`` ends in R). ``tag``: at most 12 characters. ``delay``: "auto" (netem, else the
    NFQUEUE delay line, else none), "netem", "nfqueue" or "none"; ``delay_ms``: one way.
    ``rate``: a tc rate ("200mbit") for each endpoint's outgoing traffic, or None.
    ``mtu``: of every veth; None = 1500 with netem or no delay, 64000 with the delay line.

    After :meth:`open`: ``ns`` (A, B, R names), ``addrs``, ``mtu``, ``shaping`` (what was
    applied, for the results), ``delay_kind`` ("netem", "nfqueue" or None). :meth:`close`
    (also on ``with`` exit, and when ``open`` fails half-way) stops the delay line, removes
    its rule and deletes the namespaces, which removes the veths; after it
    ``delayer_stats`` holds the delay line's statistics (see nfq_delay.py). Raises
    subprocess.CalledProcessError when ip/tc fail, RuntimeError when a delay kind asked for
    explicitly cannot be set up."""

    def __init__(self, tag: str, delay_ms: float = 10.0, rate: str | None = "200mbit", delay: str = "auto",
                 mtu: int | None = None, realtime: bool = True):
        self.tag, self.delay_ms, self.rate, self.realtime = tag, delay_ms, rate, realtime
        self.want_delay, self.want_mtu = delay, mtu
        self.ns = (f"{tag}a", f"{tag}b", f"{tag}r")
        self.addrs = ("10.231.1.1", "10.231.2.1")
        self.gws = ("10.231.1.254", "10.231.2.254")
        self.ends = (f"{tag}a0", f"{tag}b0")      # in A, in B
        self.rdevs = (f"{tag}a1", f"{tag}b1")     # in R, towards A, towards B
        self.mtu = 1500
        self.shaping = ""
        self.delay_kind: str | None = None
        self.delayers: list[subprocess.Popen] = []
        self.rules: list[tuple[str, list[str]]] = []
        self.delayer_stats: list[dict] = []
        self.delayer_error = ""

    def exec(self, side: int, *cmd: str) -> list[str]:
        """The command line that runs ``cmd`` inside namespace ``side`` (0 = A, 1 = B, 2 = R)."""
        return ["ip", "netns", "exec", self.ns[side], *cmd]

    def __enter__(self) -> "ShapedLink":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        r = self.ns[2]
        for ns in self.ns:
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        for side in (0, 1):
            ns, end, rdev = self.ns[side], self.ends[side], self.rdevs[side]
            _sh("ip", "link", "add", end, "netns", ns, "type", "veth", "peer", "name", rdev, "netns", r)
            _sh("ip", "-n", ns, "addr", "add", f"{self.addrs[side]}/24", "dev", end)
            _sh("ip", "-n", r, "addr", "add", f"{self.gws[side]}/24", "dev", rdev)
            _sh("ip", "-n", ns, "link", "set", end, "up")
            _sh("ip", "-n", r, "link", "set", rdev, "up")
            _sh("ip", "-n", ns, "route", "add", "default", "via", self.gws[side])
        _sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        kind = self.want_delay if self.delay_ms else "none"
        if kind in ("auto", "netem") and self._try_netem():
            self.delay_kind = "netem"
        elif kind == "netem":
            raise RuntimeError("tc netem is not available in this kernel")
        elif kind in ("auto", "nfqueue") and self._try_nfqueue():
            self.delay_kind = "nfqueue"
        elif kind == "nfqueue":
            raise RuntimeError(f"NFQUEUE delay line unavailable: {self.delayer_error}")
        else:
            self._set_mtu(self.want_mtu or 1500)
        if self.rate:
            for side in (0, 1):
                _sh(*self.exec(side, "tc", "qdisc", "add", "dev", self.ends[side], "root", "tbf", "rate", self.rate,
                               "burst", "256kb", "latency", "50ms"))
        what = {"netem": f"tc netem delay {self.delay_ms:g}ms each way in a router namespace",
                "nfqueue": f"NFQUEUE delay line (tools/nfq_delay.py) {self.delay_ms:g}ms each way in a router "
                           f"namespace, veth MTU {self.mtu}"}.get(self.delay_kind)
        rate = f"tbf rate {self.rate}" if self.rate else "no rate limit"
        if what:
            self.shaping = f"{what} ({2 * self.delay_ms:g} ms RTT), {rate}"
        else:
            why = "" if kind == "none" else (
                f": no added delay (this kernel has no sch_netem, and the NFQUEUE delay line failed: "
                f"{self.delayer_error})")
            self.shaping = f"{rate} only{why}"

    def _set_mtu(self, mtu: int) -> None:
        for side in (0, 1):
            _sh("ip", "-n", self.ns[side], "link", "set", self.ends[side], "mtu", str(mtu))
            _sh("ip", "-n", self.ns[2], "link", "set", self.rdevs[side], "mtu", str(mtu))
        self.mtu = mtu

    def _try_netem(self) -> bool:
        self._set_mtu(self.want_mtu or 1500)
        done = []
        try:
            for rdev in self.rdevs:
                _sh(*self.exec(2, "tc", "qdisc", "add", "dev", rdev, "root", "netem", "delay", f"{self.delay_ms:g}ms",
                               "limit", "100000"))
                done.append(rdev)
            return True
        except subprocess.CalledProcessError:
            for rdev in done:
                subprocess.run(self.exec(2, "tc", "qdisc", "del", "dev", rdev, "root"), capture_output=True)
            return False

    def _try_nfqueue(self) -> bool:
        ipt = _iptables()
        if ipt is None:
            self.delayer_error = "iptables is not installed"
            return False
        self._set_mtu(self.want_mtu or NFQ_MTU)
        p = subprocess.Popen(self.exec(2, sys.executable, str(HERE / "nfq_delay.py"), "--queue", "0",
                                       "--delay-ms", f"{self.delay_ms:g}", *(["--realtime"] * self.realtime)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.delayers.append(p)
        rule = ["FORWARD", "-j", "NFQUEUE", "--queue-num", "0"]
        try:
            if not select.select([p.stdout], [], [], 15)[0] or p.stdout.readline().strip() != "ready":
                p.kill()
                err = p.communicate(timeout=5)[1].strip().splitlines()
                raise RuntimeError(err[-1] if err else f"nfq_delay.py exited with {p.returncode}")
            _sh(*self.exec(2, ipt, "-A", *rule))
            self.rules.append((self.ns[2], [ipt, "-D", *rule]))
            return True
        except (RuntimeError, subprocess.CalledProcessError) as e:
            self.delayer_error = str(e) if isinstance(e, RuntimeError) else f"{ipt}: {e.stderr.strip()}"
            self._stop_delayers()
            return False

    def _stop_delayers(self) -> None:
        for ns, cmd in self.rules:
            subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True)
        self.rules.clear()
        for p in self.delayers:
            if p.poll() is None:
                p.terminate()
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            for line in (out or "").splitlines():
                if line.startswith("{"):
                    self.delayer_stats.append(json.loads(line))
        self.delayers.clear()

    def delayers_alive(self) -> bool:
        """True when every delay line this link started is still running."""
        return all(p.poll() is None for p in self.delayers)

    def close(self) -> None:
        """Stop the delay line, remove its rule, delete the namespaces (and so the veths).
        Safe to call twice and after a failed :meth:`open`."""
        try:
            self._stop_delayers()
        finally:
            for ns in self.ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- the check -------------------------------------------------------------------------------

def ping_rtt(link: ShapedLink, count: int = 5) -> dict:
    """``ping -c count`` from side 0 to side 1: min/avg/max RTT in ms."""
    p = subprocess.run(link.exec(0, "ping", "-c", str(count), "-i", "0.2", link.addrs[1]),
                       capture_output=True, text=True, check=True)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", p.stdout)
    return {"min_ms": float(m[1]), "avg_ms": float(m[2]), "max_ms": float(m[3])}


def _recv(port: int) -> None:
    """Receiver of the TCP check: accept one connection, read until EOF, print JSON
    {bytes, seconds} timed from the first byte."""
    srv = socket.create_server(("0.0.0.0", port))
    print("listening", flush=True)
    c, _ = srv.accept()
    buf = bytearray(1 << 20)
    n = c.recv_into(buf)
    t = time.perf_counter()
    total = 0
    while n:
        total += n
        n = c.recv_into(buf)
    print(json.dumps({"bytes": total, "seconds": time.perf_counter() - t}), flush=True)


def _send(host: str, port: int, seconds: float) -> None:
    """Sender of the TCP check: send zeros for ``seconds``, then close."""
    c = socket.create_connection((host, port))
    data = bytes(1 << 20)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()


def tcp_flow(link: ShapedLink, seconds: float = 10.0, port: int = 5299) -> dict:
    """One TCP flow from side 0 to side 1 for ``seconds``: Mbit/s at the receiver."""
    r = subprocess.Popen(link.exec(1, sys.executable, __file__, "_recv", str(port)),
                         stdout=subprocess.PIPE, text=True)
    try:
        assert r.stdout.readline().strip() == "listening"
        subprocess.run(link.exec(0, sys.executable, __file__, "_send", link.addrs[1], str(port), str(seconds)),
                       check=True, timeout=seconds + 60)
        out = json.loads(r.communicate(timeout=60)[0])
    finally:
        if r.poll() is None:
            r.kill()
            r.wait()
    return {"Mbit/s": round(out["bytes"] * 8 / out["seconds"] / 1e6, 1), "bytes": out["bytes"],
            "seconds": round(out["seconds"], 2)}


def check(tag: str, delay: str, delay_ms: float, rate: str | None, mtu: int | None, seconds: float,
          realtime: bool = True) -> dict:
    """Set up a link, ping across it, run one TCP flow, tear it down; the results."""
    res: dict = {"load": os.getloadavg()}
    with ShapedLink(tag, delay=delay, delay_ms=delay_ms, rate=rate, mtu=mtu, realtime=realtime) as link:
        res["shaping"] = link.shaping
        res["mtu"] = link.mtu
        res["ping"] = ping_rtt(link)
        res["tcp"] = tcp_flow(link, seconds)
    if link.delayer_stats:
        res["delayers"] = link.delayer_stats
        # packets/s through the delay line (both directions) while the flow ran
        res["delayer_packets_per_s"] = round(sum(s["packets"] for s in link.delayer_stats) / seconds)
    res["load_after"] = os.getloadavg()
    return res


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_recv":
        _recv(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_send":
        _send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description="check a shaped netns link: ping RTT and one TCP flow")
    ap.add_argument("--delay", default="auto", choices=["auto", "netem", "nfqueue", "none"])
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--rate", default="200mbit", help="tc rate, or 'none'")
    ap.add_argument("--mtu", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-realtime", action="store_true", help="run the delay line at normal priority")
    ap.add_argument("--ceiling", action="store_true",
                    help="the NFQUEUE delay line's own ceiling: no rate limit, MTU 64000 and MTU 1500")
    a = ap.parse_args()
    tag = f"mml{os.getpid() % 10000}"
    rate = None if a.rate == "none" else a.rate
    if a.ceiling:
        for mtu in (NFQ_MTU, 1500):
            out = check(tag, "nfqueue", a.delay_ms, None, mtu, a.seconds, not a.no_realtime)
            print(json.dumps(out), flush=True)
    else:
        print(json.dumps(check(tag, a.delay, a.delay_ms, rate, a.mtu, a.seconds, not a.no_realtime)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
