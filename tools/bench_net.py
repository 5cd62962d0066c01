#!/usr/bin/env python3
"""Network benchmarks of issue 12, every competitor in the same run (real processes on
loopback, or network namespaces with a delay and a rate limit).

    python tools/bench_net.py [--only lazy,pin,ls,meter,netns,dht] [--size-mib 512]
                              [--tree DIR] [--nodes 50] [--json out.json]

- ``lazy``: ``cat`` of a SIZE MiB file of a remote version through a mount (B reads
  from A over loopback) against ``rsync`` of the same file from an rsync daemon on
  loopback, and against a cold read of the same file through A's own fresh mount.
- ``meter``: the lazy read again with metering off on both nodes (``[net] metering =
  false``): the cost of metering.
- ``pin``: ``mimeifs pin`` of the demo tree (the Python standard library, or ``--tree``)
  from a peer against ``rsync -a`` from an rsync daemon: seconds and bytes on the wire.
- ``ls``: ``ls -lR`` of a remote unpinned version, first time, against the same tree on
  a local version (a fresh mount of the author's store).
- ``netns``: two network namespaces joined through a router namespace (``tools/netns_link.py``),
  20 ms RTT and 200 Mbit/s: ``tc netem`` for the delay where the kernel has it, else a delay
  line on NFQUEUE (``tools/nfq_delay.py``, veths at MTU 64000), else no delay (said in the
  result's ``shaping``); the rate with ``tc tbf``. ``mimeifs pin`` of the SIZE MiB file
  across it, as a share of the link rate. The delay line needs, beyond tools/install.sh:
      apt-get install iptables libnetfilter-queue-dev iputils-ping
      .venv/bin/pip install NetfilterQueue
- ``dht``: N headless nodes on loopback; ten of them author a MiMei and replicate it
  with ``--copies 3``; provider lookups from random nodes (median hops, p50/p99 time);
  then 20% of the nodes are killed (-9, authors among them); the surviving authors'
  replicas must come back to 3 live holders, and every MiMei must stay readable (pinned
  within 120 s) from a node that holds none; an unreadable one is listed with the error
  its pin printed, its holders (alive or killed) and the reader's provider lookup.

Prints a table and writes ``--json``. Nothing here is a test; CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mimeifs.cli"]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns_link import ShapedLink, ping_rtt  # noqa: E402  (tools/netns_link.py)

FAST = "[net]\nfollow = 1\nrepublish = 5\nprovider_ttl = 300\nrpc_timeout = 2\nmin_free = 0\n"


def free_port() -> int:
    while True:
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()


def mm(store, *args, check=True, prefix=(), timeout=3600):
    p = subprocess.run(list(prefix) + CLI + ["--store", str(store), *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f"mimeifs {' '.join(map(str, args))}: {p.stderr}{p.stdout}")
    return p.stdout


class Nodes:
    """Stores and daemons made by one benchmark; all stopped by :meth:`close`."""

    def __init__(self, work: Path):
        self.work = work
        self.running: list[tuple[Path, Path | None, int, tuple]] = []

    def store(self, name: str, config: str = FAST) -> Path:
        s = self.work / name
        shutil.rmtree(s, ignore_errors=True)
        mm(s, "init")
        (s / "config.toml").write_text(config)
        return s

    def _pid(self, s: Path) -> int:
        return json.loads((s / "mount.json").read_text())["pid"]

    def serve(self, s: Path, port: int, peers=(), prefix=()) -> int:
        mm(s, "serve", "--listen", f"{peers and prefix and '0.0.0.0' or '127.0.0.1'}:{port}",
           *[a for p in peers for a in ("--peer", p)], prefix=prefix)
        pid = self._pid(s)
        self.running.append((s, None, pid, tuple(prefix)))
        return pid

    def mount(self, s: Path, mnt: Path, port: int | None = None, peers=()) -> int:
        mnt.mkdir(parents=True, exist_ok=True)
        args = ["mount", mnt] + (["--listen", f"127.0.0.1:{port}"] if port else [])
        mm(s, *args, *[a for p in peers for a in ("--peer", p)])
        pid = self._pid(s)
        self.running.append((s, mnt, pid, ()))
        return pid

    def stop(self, s: Path) -> None:
        for e in [e for e in self.running if e[0] == s]:
            self.running.remove(e)
            _, mnt, pid, prefix = e
            if mnt is not None:
                subprocess.run(CLI + ["umount", str(mnt)], env=ENV, capture_output=True)
            else:
                subprocess.run(list(prefix) + CLI + ["--store", str(s), "stop"], env=ENV, capture_output=True)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def kill9(self, s: Path) -> None:
        for e in [e for e in self.running if e[0] == s]:
            self.running.remove(e)
            try:
                os.kill(e[2], signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        for s in list({e[0] for e in self.running}):
            self.stop(s)


class Rsyncd:
    """An rsync daemon on loopback serving ``path`` as module ``m``."""

    def __init__(self, path: Path, work: Path):
        self.port = free_port()
        conf = work / "rsyncd.conf"
        conf.write_text(f"use chroot = no\n[m]\npath = {path}\nread only = yes\nuid = root\ngid = root\n")
        self.p = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={self.port}",
                                   "--address=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def fetch(self, rel: str, dest: Path, *opts) -> tuple[float, int]:
        settle()
        t = time.perf_counter()
        p = subprocess.run(["rsync", *opts, "--stats", f"rsync://127.0.0.1:{self.port}/m/{rel}", str(dest)],
                           capture_output=True, text=True, check=True)
        dt = time.perf_counter() - t
        got = 0
        for line in p.stdout.splitlines():
            if line.startswith("Total bytes received"):
                got = int(line.split(":")[1].split()[0].replace(",", ""))
        return dt, got

    def close(self):
        self.p.terminate()
        self.p.wait()


def settle() -> None:
    """Write back what earlier lines left dirty before a timed line starts: gigabytes
    of writeback from the line before made the next line's numbers swing 2-3x."""
    os.sync()
    time.sleep(0.5)


def cat(path: Path) -> float:
    settle()
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - t


def author(nodes: Nodes, name: str, src: Path, config: str = FAST) -> tuple[Path, str]:
    s = nodes.store(name, config)
    mid = mm(s, "create", "--type", "fs", "--mark", name).strip()
    mm(s, "import", src, mid, "--backup")
    return s, mid


def bench_lazy(work: Path, size_mib: int, results: dict, metering: bool = True) -> None:
    src = work / "lazy-src"
    if not (src / "big.bin").exists():
        src.mkdir(exist_ok=True)
        with open(src / "big.bin", "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
    cfg = FAST + ("" if metering else "metering = false\n")
    nodes = Nodes(work)
    try:
        a, mid = author(nodes, "lazy-a", src, cfg)
        pa = free_port()
        nodes.serve(a, pa)
        b = nodes.store("lazy-b", cfg)
        mb = work / "mnt-b"
        nodes.mount(b, mb, free_port(), [f"127.0.0.1:{pa}"])
        dt = cat(mb / "mm" / mid / "last" / "big.bin")
        key = "lazy" if metering else "lazy_metering_off"
        results[key] = {"seconds": dt, "MiB/s": size_mib / dt}
        if not metering:
            return
        nodes.stop(b)
        nodes.stop(a)
        ma = work / "mnt-a"
        nodes.mount(a, ma)
        dt = cat(ma / "mm" / mid / "last" / "big.bin")
        results["lazy_local_cold"] = {"seconds": dt, "MiB/s": size_mib / dt}
        nodes.stop(a)
        r = Rsyncd(src, work)
        try:
            dest = work / "rsync-dest"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            dt, _ = r.fetch("big.bin", dest)
            results["lazy_rsync"] = {"seconds": dt, "MiB/s": size_mib / dt}
        finally:
            r.close()
    finally:
        nodes.close()


def bench_pin_ls(work: Path, tree: Path, results: dict, only: set) -> None:
    nodes = Nodes(work)
    try:
        a, mid = author(nodes, "pin-a", tree)
        pa = free_port()
        nodes.serve(a, pa)
        if "ls" in only:
            b = nodes.store("ls-b")
            mb = work / "mnt-ls"
            nodes.mount(b, mb, free_port(), [f"127.0.0.1:{pa}"])
            settle()
            t = time.perf_counter()
            subprocess.run(["ls", "-lR", str(mb / "mm" / mid / "last") + "/"], stdout=subprocess.DEVNULL, check=True)
            results["ls_remote"] = {"seconds": time.perf_counter() - t}
            nodes.stop(b)
        if "pin" in only:
            c = nodes.store("pin-c")
            nodes.serve(c, free_port(), [f"127.0.0.1:{pa}"])
            time.sleep(1)
            before = json.loads(mm(c, "net", "status", "--json"))["bytes_in"]
            settle()
            t = time.perf_counter()
            mm(c, "pin", mid)
            dt = time.perf_counter() - t
            wire = json.loads(mm(c, "net", "status", "--json"))["bytes_in"] - before
            results["pin"] = {"seconds": dt, "bytes_in": wire}
            nodes.stop(c)
            r = Rsyncd(tree, work)
            try:
                dest = work / "rsync-tree"
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                dt, got = r.fetch("", dest, "-a")
                results["pin_rsync"] = {"seconds": dt, "bytes_in": got}
            finally:
                r.close()
        if "ls" in only:
            nodes.stop(a)
            ma = work / "mnt-ls-a"
            nodes.mount(a, ma)
            settle()
            t = time.perf_counter()
            subprocess.run(["ls", "-lR", str(ma / "mm" / mid / "last") + "/"], stdout=subprocess.DEVNULL, check=True)
            results["ls_local"] = {"seconds": time.perf_counter() - t}
    finally:
        nodes.close()


def bench_netns(work: Path, size_mib: int, results: dict) -> None:
    """B pins the SIZE MiB file from A across a shaped path, 20 ms RTT and 200 Mbit/s
    (``tools/netns_link.py``: netem, or the NFQUEUE delay line where the kernel has no
    netem, or the rate alone, as its ``shaping`` says). Everything started here, daemons,
    delay line, iptables rule, namespaces and veths, is gone when this returns or raises."""
    link = ShapedLink(f"mmb{os.getpid() % 10000}")
    nodes = Nodes(work)
    try:
        link.open()
        src = work / "lazy-src"
        if not (src / "big.bin").exists():
            src.mkdir(exist_ok=True)
            with open(src / "big.bin", "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(1 << 20))
        a, mid = author(nodes, "ns-a", src)
        b = nodes.store("ns-b")
        port = 47990
        pa, pb = tuple(link.exec(0)), tuple(link.exec(1))
        mm(a, "serve", "--listen", f"{link.addrs[0]}:{port}", prefix=pa)
        nodes.running.append((a, None, nodes._pid(a), pa))
        mm(b, "serve", "--listen", f"{link.addrs[1]}:{port}", "--peer", f"{link.addrs[0]}:{port}", prefix=pb)
        nodes.running.append((b, None, nodes._pid(b), pb))
        try:
            rtt = ping_rtt(link)["avg_ms"]
        except (OSError, subprocess.CalledProcessError):
            rtt = None   # no ping installed
        time.sleep(2)
        load = os.getloadavg()[0]
        t = time.perf_counter()
        pin = subprocess.Popen(CLI + ["--store", str(b), "pin", mid], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        while True:   # a dead delay line drops every packet: stop at once rather than wait out timeouts
            try:
                out = pin.communicate(timeout=0.05)[0]
                break
            except subprocess.TimeoutExpired:
                dead, late = not link.delayers_alive(), time.perf_counter() - t > 3600
                if dead or late:
                    pin.kill()
                    pin.communicate()
                    raise RuntimeError("the NFQUEUE delay line died during the pin" if dead else "pin: timeout")
        dt = time.perf_counter() - t
        if pin.returncode:
            raise RuntimeError(f"mimeifs pin: {out}")
        mbit = size_mib * 8 * 1.048576 / dt
        results["netns_pin"] = {"seconds": dt, "Mbit/s": mbit, "share_of_200Mbit": mbit / 200,
                                "shaping": link.shaping, "ping_rtt_ms": rtt, "load1": round(load, 2)}
    finally:
        try:
            nodes.close()
        finally:
            link.close()
        if "netns_pin" in results and link.delayer_stats:
            results["netns_pin"]["delay_line"] = link.delayer_stats[0]


def bench_dht(work: Path, n: int, results: dict) -> None:
    nodes = Nodes(work)
    try:
        stores, ports = [], []
        first = None
        for i in range(n):
            s = nodes.store(f"dht{i:02d}")
            p = free_port()
            peers = [f"127.0.0.1:{first}"] if first else []
            if i > 1:
                peers.append(f"127.0.0.1:{random.choice(ports[1:] or ports)}")
            nodes.serve(s, p, peers)
            first = first or p
            stores.append(s)
            ports.append(p)
        time.sleep(5)
        src = work / "dht-src"
        src.mkdir(exist_ok=True)
        authors = stores[:10]
        mids = []
        for i, s in enumerate(authors):
            (src / "f.bin").write_bytes(os.urandom(256 << 10))
            mid = mm(s, "create", "--type", "fs", "--mark", f"d{i}").strip()
            mm(s, "import", src, mid, "--backup")
            mids.append(mid)
        time.sleep(7)  # publish loops
        first_holders = {}
        for s, mid in zip(authors, mids):
            first_holders[mid] = json.loads(mm(s, "replicate", mid, "--copies", "3", "--json"))["holders"]
        times, hops = [], []
        for _ in range(100):
            s = random.choice(stores)
            mid = random.choice(mids)
            t = time.perf_counter()
            got = json.loads(mm(s, "providers", mid, "--json"))
            times.append(time.perf_counter() - t)
            assert got, "no providers found"
        ids, held = {}, {}
        for s in stores:
            st = json.loads(mm(s, "net", "status", "--json"))
            ids[s] = st["node"]
            for mid, r in st["replicas"].items():
                held[mid] = r.get("holders", [])
            h = st["dht"]["hops_median"]
            if h is not None:
                hops.append(h)
        times.sort()
        results["dht_lookup"] = {"nodes": n, "hops_median": statistics.median(hops) if hops else None,
                                 "p50_s": times[len(times) // 2], "p99_s": times[int(len(times) * 0.99) - 1],
                                 "note": "time of `mimeifs providers` (CLI start ~0.1 s included)"}
        reader = stores[-1]
        victims = random.sample(stores[:-1], n // 5)   # 20% of the nodes, authors included
        dead = {ids[s] for s in victims}
        for s in victims:
            nodes.kill9(s)
        t0 = time.perf_counter()
        ok_copies = False
        alive_authors = [(s, mid) for s, mid in zip(authors, mids) if s not in victims]
        while time.perf_counter() - t0 < 120:
            reps = [json.loads(mm(s, "net", "status", "--json"))["replicas"].get(mid, {}) for s, mid in alive_authors]
            # restored = three holders, none of them killed, that finished their copy and
            # answer (none pending); the list an author shows may date from before the kill
            if all(len(set(r.get("holders", [])) - dead) >= 3 and not r.get("pending") for r in reps):
                ok_copies = True
                break
            time.sleep(2)
        restored = time.perf_counter() - t0
        readable, unreadable, pin_s = 0, {}, []
        for s, mid in zip(authors, mids):   # from a node that holds none of them, with 20% of the nodes gone
            t = time.perf_counter()
            try:
                mm(reader, "pin", mid, timeout=120)
                readable += 1
                pin_s.append(round(time.perf_counter() - t, 1))
            except subprocess.TimeoutExpired:
                err = "timed out after 120 s"
            except Exception as e:
                err = str(e).strip()
            else:
                continue
            # what the reader could see, for the report: its provider lookup now, and who
            # held the MiMei when it was replicated (alive or killed)
            try:
                provs = [p["node"] for p in json.loads(mm(reader, "providers", mid, "--json"))]
            except Exception as e:
                provs = f"lookup failed: {e}"
            unreadable[mid] = {"error": err, "seconds": round(time.perf_counter() - t, 1),
                               "author": ids[s], "author_killed": s in victims,
                               "replicated_to": {p: "killed" if p in dead else "alive"
                                                 for p in held.get(mid, first_holders.get(mid, []))},
                               "providers_seen_after": {p: "killed" if p in dead else "alive" for p in provs}
                               if isinstance(provs, list) else provs}
        after = []   # provider lookups with 20% of the nodes dead (their records still out)
        for _ in range(30):
            s = random.choice([s for s in stores if s not in victims])
            t = time.perf_counter()
            mm(s, "providers", random.choice(mids), "--json")
            after.append(time.perf_counter() - t)
        after.sort()
        results["dht_lookup_after_kill"] = {"p50_s": after[len(after) // 2], "p99_s": after[-1],
                                            "note": "30 lookups from live nodes after the pins; p99 = max"}
        results["dht_kill20"] = {"killed": len(victims), "authors_killed": len(mids) - len(alive_authors),
                                 "replicas_restored_to_3": ok_copies, "seconds_to_restore": restored,
                                 "readable": f"{readable}/{len(mids)}", "pin_seconds": pin_s,
                                 "unreadable": unreadable}
    finally:
        nodes.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="lazy,meter,pin,ls,netns,dht")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--tree", default=None, help="the demo tree (default: the Python standard library)")
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    only = set(a.only.split(","))
    work = Path(a.work or tempfile.mkdtemp(prefix="mmnet-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = Path(a.tree or subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                                          capture_output=True, text=True).stdout.strip())
    res: dict = {}
    try:
        if "lazy" in only:
            bench_lazy(work, a.size_mib, res)
        if "meter" in only:
            bench_lazy(work, a.size_mib, res, metering=False)
        if only & {"pin", "ls"}:
            bench_pin_ls(work, tree, res, only)
        if "netns" in only:
            bench_netns(work, a.size_mib, res)
        if "dht" in only:
            bench_dht(work, a.nodes, res)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    for k, v in res.items():
        print(f"{k:24} {json.dumps(v)}")
    if "lazy" in res and "lazy_rsync" in res:
        print(f"lazy cat / rsync throughput: {res['lazy']['MiB/s'] / res['lazy_rsync']['MiB/s']:.2f}x; "
              f"/ local cold read: {res['lazy']['MiB/s'] / res['lazy_local_cold']['MiB/s']:.2f}x")
    if "lazy" in res and "lazy_metering_off" in res:
        print(f"metering cost: {1 - res['lazy']['MiB/s'] / res['lazy_metering_off']['MiB/s']:+.1%} of throughput")
    if "pin" in res and "pin_rsync" in res:
        print(f"pin / rsync -a: time {res['pin']['seconds'] / res['pin_rsync']['seconds']:.2f}x, "
              f"bytes {res['pin']['bytes_in'] / max(1, res['pin_rsync']['bytes_in']):.2f}x")
    if "ls_remote" in res and "ls_local" in res:
        print(f"ls -lR remote / local: {res['ls_remote']['seconds'] / res['ls_local']['seconds']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
