#!/usr/bin/env python3
"""Benchmark of the db MiMei (issue 14): redis-benchmark against mimeifs's RESP server
and a real redis-server in the same run, and the cost of backing up a big database.

    python tools/bench_resp.py [-n 200000] [--clients 50] [--keys 1000000] [--skip-rps]

Part 1 runs ``redis-benchmark -t set,get,incr,lpush,rpop,sadd,hset,zadd,lrange_100``
with ``-P 1`` and ``-P 16``, alternating the two servers test by test (so load from
other processes falls on both alike), and prints requests/s and the ratio
mimeifs / redis-server. Targets: >= 0.5 at -P 1, >= 0.25 at -P 16.

Part 2 fills a db MiMei with ``--keys`` string keys (``key:%08d`` -> 40-byte values),
backs it up (v/0), changes 1% of the keys and backs up again, twice: once a contiguous
key range (how applications that write by time or by user touch a keyspace) and once
keys drawn at random. It prints each backup's seconds and new stored bytes (packs plus
manifests and tree) relative to v/0. Target: under 2 s and under 5% of v/0's bytes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TESTS = ["set", "get", "incr", "lpush", "rpop", "sadd", "hset", "zadd", "lrange_100"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def bench(port: int, test: str, n: int, clients: int, pipeline: int, password: str | None) -> float:
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test, "-n", str(n),
           "-c", str(clients), "-P", str(pipeline), "--csv"]
    if password:
        cmd += ["-a", password]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800).stdout
    rps = None
    for line in out.splitlines():
        parts = [p.strip('"') for p in line.split(",")]
        if len(parts) >= 2 and parts[0] != "test":
            try:
                rps = float(parts[1])
            except ValueError:
                continue
            if parts[0].lower().startswith(test.split("_")[0]):
                break
    if rps is None:
        raise RuntimeError(f"no result from redis-benchmark: {out[-500:]}")
    return rps


def part_rps(args, base: str) -> None:
    env = dict(os.environ, MIMEIFS_STORE=os.path.join(base, "store"), PYTHONPATH=REPO)
    cli = [sys.executable, "-m", "mimeifs.cli"]
    subprocess.run(cli + ["init"], env=env, check=True, capture_output=True)
    subprocess.run(cli + ["create", "--type", "db", "--mark", "bench"], env=env, check=True, capture_output=True)
    token = subprocess.run(cli + ["db", "token", "bench"], env=env, check=True, capture_output=True,
                           text=True).stdout.strip()
    mp, rp = free_port(), free_port()
    mm = subprocess.Popen(cli + ["serve", "--foreground", "--resp", f"127.0.0.1:{mp}"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rs = subprocess.Popen(["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", base],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(mp)
        wait_port(rp)
        print(f"redis-benchmark -n {args.n} -c {args.clients}; mimeifs serve --resp vs redis-server "
              f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")
        for pipeline in (1, 16):
            print(f"\n-P {pipeline:<3} {'test':<11} {'redis-server':>13} {'mimeifs':>10} {'ratio':>6}")
            ratios = []
            for t in TESTS:
                r = bench(rp, t, args.n, args.clients, pipeline, None)
                m = bench(mp, t, args.n, args.clients, pipeline, token)
                ratios.append(m / r)
                print(f"{'':7} {t:<11} {r:>13,.0f} {m:>10,.0f} {m / r:>6.2f}", flush=True)
            geo = 1.0
            for x in ratios:
                geo *= x
            print(f"{'':7} {'geo. mean':<11} {'':>13} {'':>10} {geo ** (1 / len(ratios)):>6.2f}")
    finally:
        for p in (mm, rs):
            p.terminate()
            p.wait(10)


def part_backup(args, base: str) -> None:
    from mimeifs.engine import kv
    from mimeifs.engine.db import Store
    from mimeifs.engine.mimei import Engine
    s = Store.create(os.path.join(base, "big"))
    e = Engine(s)
    mid = e.create("db", "big")
    ns = bytes.fromhex(mid)
    rnd = random.Random(7)
    n = args.keys
    t0 = time.perf_counter()
    step = 50_000
    for lo in range(0, n, step):
        with s.write() as txn:
            ks = kv.Keyspace(s, ns, txn, True)
            for i in range(lo, min(n, lo + step)):
                ks.put_head(b"key:%08d" % i, kv.STRING, 0, rnd.randbytes(20).hex().encode(), False)
            ks.finish()
    print(f"\nbackup of a {n:,}-key db MiMei (loaded in {time.perf_counter() - t0:.1f} s)")
    t = time.perf_counter()
    r0 = e.backup(mid)
    base_bytes = r0["stats"]["new_bytes"] + r0["stats"]["meta_bytes"]
    print(f"  v/0 full:           {time.perf_counter() - t:6.2f} s  {base_bytes / 1e6:8.2f} MB stored "
          f"({r0['size'] / 1e6:.1f} MB of JSON Lines)")
    k = n // 100
    for name, keys in (("1% contiguous", range(n // 2, n // 2 + k)),
                       ("1% random", rnd.sample(range(n), k))):
        with s.write() as txn:
            ks = kv.Keyspace(s, ns, txn, True)
            for i in keys:
                ks.put_head(b"key:%08d" % i, kv.STRING, 0, rnd.randbytes(20).hex().encode(), True)
            ks.finish()
        t = time.perf_counter()
        r = e.backup(mid)
        dt = time.perf_counter() - t
        nb = r["stats"]["new_bytes"] + r["stats"]["meta_bytes"]
        print(f"  {name + ':':<20}{dt:6.2f} s  {nb / 1e6:8.2f} MB stored = {100 * nb / base_bytes:5.1f}% of v/0 "
              f"({r['stats']['keys_serialized']:,} keys re-serialized)", flush=True)
    s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--skip-rps", action="store_true")
    ap.add_argument("--skip-backup", action="store_true")
    args = ap.parse_args()
    for exe in ("redis-server", "redis-benchmark"):
        if shutil.which(exe) is None:
            sys.exit(f"{exe} is not installed (bash tools/install.sh)")
    base = tempfile.mkdtemp(prefix="bench-resp-")
    try:
        if not args.skip_rps:
            part_rps(args, base)
        if not args.skip_backup:
            part_backup(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
