#!/usr/bin/env python3
"""Benchmark: a share's source kept in step (issue 13), against rsync and Syncthing's model.

    python tools/bench_shares.py [--tree DIR] [--percent 1] [--idle 30] [--work DIR]

1. copies the tree (default: the Python standard library, the README demo's tree) to
   ``<work>/src`` and to ``<work>/plain``; makes a store whose share ``bench`` keeps
   ``src`` in step; mounts it and times the first sync;
2. changes ``--percent`` of the files (appends a line: new content and mtime) and times
   until ``<mnt>/shared/bench/`` shows every change (size and mtime of each, polled
   through the mount every 20 ms), from the last write and from the first;
3. the same change carried into ``plain`` by ``rsync -a src/ plain/`` (what a cron job
   or a user does), timed in the same run;
4. Syncthing's documented model: its watcher waits ``fsWatcherDelayS`` (10 s by
   default) before it scans what changed, and without the watcher it rescans the whole
   folder every ``rescanIntervalS`` (3600 s by default); the script times one full
   rescan of the tree here (mimeifs's own full import with the skip rule: an
   ``lstat`` of every entry, which is what a full rescan must do at least) and prints
   10 s + that, and 3600 s / 2 (the mean wait for the next rescan) + that;
5. the daemon's CPU over ``--idle`` seconds of nothing happening (``/proc/<pid>/stat``).

Targets (issue 13): every change visible in under 2 s; idle CPU near zero.
Everything it makes is under ``--work`` and removed at the end (the mount unmounted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "mimeifs.cli"]
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
TICK = os.sysconf("SC_CLK_TCK")


def mm(store: str, *args, check: bool = True) -> str:
    p = subprocess.run([*CLI, "--store", store, *map(str, args)], capture_output=True,
                       text=True, env=ENV)
    if check and p.returncode:
        raise SystemExit(f"mimeifs {' '.join(map(str, args))}: {p.stderr}")
    return p.stdout


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def share_state(store: str) -> dict:
    out = json.loads(mm(store, "shares", "--json"))
    return {d["name"]: d for d in out["shares"]}


def files_of(root: str) -> list[str]:
    out = []
    for d, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--percent", type=float, default=1.0)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--work", default=None, help="scratch directory (default: a new one in /tmp)")
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()

    work = a.work or tempfile.mkdtemp(prefix="bench-shares-")
    os.makedirs(work, exist_ok=True)
    src, plain = os.path.join(work, "src"), os.path.join(work, "plain")
    store, mnt = os.path.join(work, "store"), os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    pid = None
    try:
        print(f"tree {a.tree} -> {src}", flush=True)
        subprocess.run(["cp", "-a", a.tree + "/.", src], check=True)
        subprocess.run(["rsync", "-a", src + "/", plain + "/"], check=True)
        files = files_of(src)
        ndirs = sum(1 for _ in os.walk(src))
        print(f"{len(files)} files, {ndirs} directories", flush=True)

        mm(store, "init")
        mm(store, "share", "add", "bench", "--mark", "bench", "--source", src)
        t0 = time.monotonic()
        mm(store, "mount", mnt)
        pid = json.load(open(os.path.join(store, "mount.json")))["pid"]
        while True:
            s = share_state(store)["bench"].get("sync") or {}
            if s.get("state", "").startswith("in step") and s.get("syncs", 0) >= 1:
                break
            time.sleep(0.2)
        first = time.monotonic() - t0
        print(f"first sync (mount + import of the whole tree): {first:.2f} s, "
              f"{s.get('watches')} inotify watches", flush=True)
        share = os.path.join(mnt, "shared", "bench")
        time.sleep(2.0)

        # -- the change: percent of the files get a line more
        rnd = random.Random(a.seed)
        picked = rnd.sample(files, max(1, int(len(files) * a.percent / 100)))
        c0 = cpu_s(pid)
        t_first = time.monotonic()
        for rel in picked:
            with open(os.path.join(src, rel), "ab") as f:
                f.write(b"\n# touched by bench_shares\n")
        t_last = time.monotonic()
        want = {}
        for rel in picked:
            st = os.stat(os.path.join(src, rel))
            want[rel] = (st.st_size, st.st_mtime_ns)
        pending = set(picked)
        while pending:
            for rel in list(pending):
                try:
                    st = os.stat(os.path.join(share, rel))
                except OSError:
                    continue
                if (st.st_size, st.st_mtime_ns) == want[rel]:
                    pending.discard(rel)
            if pending:
                time.sleep(0.02)
            if time.monotonic() - t_last > 120:
                print(f"gave up: {len(pending)} changes not visible after 120 s")
                break
        t_seen = time.monotonic()
        sync_cpu = cpu_s(pid) - c0
        bad = [r for r in picked if open(os.path.join(share, r), "rb").read()
               != open(os.path.join(src, r), "rb").read()]
        print(f"changed {len(picked)} files ({a.percent:g}%) in {t_last - t_first:.3f} s", flush=True)
        print(f"mimeifs share: all visible {t_seen - t_last:.3f} s after the last write "
              f"({t_seen - t_first:.3f} s after the first); daemon CPU {sync_cpu:.2f} s; "
              f"content {'identical' if not bad else f'DIFFERENT in {len(bad)} files'}", flush=True)

        # -- rsync -a of the same change into a plain directory
        t = time.monotonic()
        subprocess.run(["rsync", "-a", src + "/", plain + "/"], check=True)
        rs = time.monotonic() - t
        print(f"rsync -a src/ plain/ (the same change): {rs:.3f} s", flush=True)

        # -- a full rescan of the tree, as Syncthing's model needs one
        mid = share_state(store)["bench"]["mimei"]
        t = time.monotonic()
        mm(store, "import", src, mid, "--delete")
        full = time.monotonic() - t
        print(f"one full rescan of the tree (mimeifs import --delete, skip rule): {full:.3f} s",
              flush=True)
        print(f"Syncthing's documented model: watcher delay 10 s + scan = {10 + full:.1f} s; "
              f"without the watcher, rescan every 3600 s: mean {1800 + full:.0f} s", flush=True)

        # -- idle
        time.sleep(1.0)
        c0, t = cpu_s(pid), time.monotonic()
        time.sleep(a.idle)
        idle = cpu_s(pid) - c0
        el = time.monotonic() - t
        print(f"daemon CPU while idle: {idle:.2f} s in {el:.0f} s ({100 * idle / el:.2f}%)",
              flush=True)
        print(json.dumps({"files": len(files), "dirs": ndirs, "changed": len(picked),
                          "first_sync_s": round(first, 3),
                          "visible_after_last_write_s": round(t_seen - t_last, 3),
                          "visible_after_first_write_s": round(t_seen - t_first, 3),
                          "sync_cpu_s": round(sync_cpu, 3), "rsync_s": round(rs, 3),
                          "full_rescan_s": round(full, 3), "idle_cpu_s": round(idle, 3),
                          "idle_window_s": round(el, 1)}))
        return 0 if not bad and not pending else 1
    finally:
        if pid is not None:
            mm(store, "umount", mnt, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
