"""Cost of cur's page checksums: write and read N MiB of a cur file through the engine.

Runs the same measurement once per checkout given (each in its own process with that
checkout first on ``sys.path``), one right after the other, so a checkout from before
the checksums and one with them are compared in one run::

    python tools/bench_pages.py --mib 1024 /path/to/old/checkout .

Writes go through ``Worktree.write`` in 1 MiB calls (FUSE's max_write), reads through
``Worktree.read`` in 1 MiB calls, on a store in a fresh temporary directory (``--dir``,
default the system temp dir). Prints MB/s per phase and checkout (best of ``--runs``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def measure(mib: int, where: str) -> dict:
    from mimeifs.engine.db import Store
    from mimeifs.engine.mimei import Engine
    buf = os.urandom(1 << 20)
    with tempfile.TemporaryDirectory(dir=where) as d:
        store = Store.create(os.path.join(d, "s"), map_size=4 << 30)
        e = Engine(store)
        mid = e.create("file", "bench")
        ino = e.state(mid)["cur"]
        t = time.perf_counter()
        for i in range(mib):
            e.wt.write(ino, i << 20, buf)
        tw = time.perf_counter() - t
        t = time.perf_counter()
        n = 0
        for i in range(mib):
            n += len(e.wt.read(ino, i << 20, 1 << 20))
        tr = time.perf_counter() - t
        assert n == mib << 20
        store.close()
    return {"write": (mib << 20) / tw / 1e6, "read": (mib << 20) / tr / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.mib, a.dir)))
        return
    for run in range(a.runs):
        for c in a.checkouts:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(c))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mib", str(a.mib), c]
            if a.dir:
                cmd += ["--dir", a.dir]
            r = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                          text=True).stdout)
            print(f"run {run}  {c:40s} cur write {r['write']:7.0f} MB/s   "
                  f"cur read {r['read']:7.0f} MB/s", flush=True)


if __name__ == "__main__":
    main()
