#!/usr/bin/env python3
"""mimeifs benchmark on real data, against its anchors, all in one run.

Run as root (cold measurements drop the kernel caches) from the repository's venv:

    .venv/bin/python tools/bench_fs.py                 # full run, ~20 min on 2 cores
    .venv/bin/python tools/bench_fs.py --quick         # 2,000 files, 64 MiB sizes: ~1 min
    .venv/bin/python tools/bench_fs.py --only cur --skip-anchors

What it measures (the issue's benchmark):

backup   ``mimeifs import`` + ``mimeifs backup`` (first), then, after changing 1% of the
         files, ``mimeifs import --delete`` + ``mimeifs backup`` (second, both timed
         together), against ``borg create`` (repository ``-e none``, borg's default
         compression lz4, given explicitly), ``restic backup`` (repository format 2,
         default compression "auto" = zstd; restic always encrypts, AES-256 +
         Poly1305, there is no way to turn it off) and ``git add -A -f && git commit``
         (``gc.auto=0`` so no background gc runs: the repository holds zlib'd loose
         objects, as git leaves them right after the commit). Seconds, and bytes on
         disk as ``du -sb`` (apparent size) of each repository, plus allocated bytes
         (``du -s --block-size=1``) in the JSON.
read     ``ls -lR``, ``cat`` of every file (``find -type f -print0 | xargs -0 cat``)
         and ``cat`` of the one 512 MiB file, each cold (``sync; echo 3 >
         /proc/sys/vm/drop_caches`` before it), in mimeifs ``v/<n>`` of the second
         backup, the native scratch tree (same content), ``borg mount`` of the second
         archive and ``restic mount`` (snapshots/latest). The big file is also read a
         second time warm.
cur      In ``cur`` of an empty fs MiMei and in pyfuse3's own example passthrough
         filesystem (tools/passthroughfs.py runs upstream's file unchanged) over a local
         directory: sequential write (``dd bs=1M`` from a warm data file, close
         included, no fsync) and cold read of 1 GiB; create (open/write 4 KiB/close),
         ``ls -l`` (cold), stat (cold, then warm), read (cold) and delete of 10,000
         4 KiB files. s3ql 6.3's numbers on this machine kind are the second anchor.
         Right before each tool's backups, the timed write and after every cache drop
         (so before every cold measurement of the read and cur sections), every tool
         alike, up to 4 GiB of anonymous memory is touched and freed
         (``touch_free_memory``). This VM's
         virtio balloon reports free pages to the host, which then discards them; the
         next first touch of each such page costs a host page fault. Measured: the same
         1 GiB ``dd`` into cur took 9.3 s cold, 2.9 s right after touching 6 GiB, and
         6.6 s ten seconds later. Without the touch, whichever tool writes first after
         a ``drop_caches`` pays for the host, not for its own work.

The data: the source tree (default: the parent of sysconfig's purelib, the whole
installed Python library with site-packages) is copied once with ``cp -a`` to
``<work>/src``; a 512 MiB file ``mimeifs-bench-big.bin`` is added to it. Its content
is realistic, not a copy of the tree: real files of the tree in a seeded random order,
each XOR-ed with its own random byte key (so it compresses like the real files but
does not dedup against them), with 25% of it seeded random 1 MiB blocks
(incompressible). The 1 GiB write data for ``cur`` is made the same way (another
seed). The 1% change (seed 42) picks 1% of the regular files (never the big file):
every tenth of them gets 16 bytes overwritten in the middle (same size, new mtime),
the others get one line appended. It is applied once to the scratch tree, then every
tool runs its second backup of that same tree.

borg and restic come from Debian's packages (``apt-get install borgbackup restic``);
the script says so and skips them when they are missing. Mounts are always unmounted
(``fusermount3 -u``) on the way out, also on failure; every measured step has a
timeout, and a failed step is recorded with its error while the others go on.

Output: a JSON file (``--out``, default ``<work>/results.json``) and a table of
seconds, bytes and speeds, the ratio mimeifs/anchor on each line, the target and
PASS/MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG_NAME = "mimeifs-bench-big.bin"
MiB = 1 << 20

# s3ql 6.3 (pyfuse3 + trio) measured on this machine kind (the numbers).
S3QL = {"write_MiBps": 178.0, "read_cold_MiBps": 762.0, "create_s": 10.6, "ls_l_s": 1.76,
        "stat_cold_s": 4.4, "stat_warm_s": 0.03, "read_small_cold_s": 7.4, "delete_s": 7.3}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class StepError(Exception):
    pass


# --------------------------------------------------------------------------- helpers

def run(cmd, timeout, cwd=None, env=None, capture=False, check=True):
    """Run a command; return (seconds, stdout). Raise StepError with stderr on failure."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                           stderr=subprocess.PIPE, shell=isinstance(cmd, str),
                           executable="/bin/bash" if isinstance(cmd, str) else None)
    except subprocess.TimeoutExpired:
        raise StepError(f"timeout after {timeout}s: {cmd if isinstance(cmd, str) else ' '.join(cmd)}")
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        err = (p.stderr or b"").decode(errors="replace").strip()[-2000:]
        raise StepError(f"exit {p.returncode}: {cmd if isinstance(cmd, str) else ' '.join(cmd)}: {err}")
    return dt, (p.stdout.decode(errors="replace") if capture else "")


def sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def du_bytes(path: str) -> dict:
    _, a = run(["du", "-sb", path], 600, capture=True)
    _, b = run(["du", "-s", "--block-size=1", path], 600, capture=True)
    return {"bytes": int(a.split()[0]), "alloc": int(b.split()[0])}


def touch_free_memory(nbytes: int = 4 << 30) -> None:
    """Touch, then free, ``nbytes`` of anonymous memory (capped at half of MemAvailable),
    so the pages the next step gets are backed by the host (see the module docstring)."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f
                         if line.startswith("MemAvailable:"))
        nbytes = min(nbytes, avail // 2)
    except (OSError, StopIteration, ValueError):
        nbytes = min(nbytes, 1 << 30)
    b = bytearray(nbytes)          # calloc'd: pages appear on first write
    b[::4096] = b"\x01" * len(range(0, nbytes, 4096))
    del b


def drop_caches() -> bool:
    """Make the next step cold: sync, drop the kernel's caches, then touch free memory
    (:func:`touch_free_memory`) so no tool pays the host for pages the drop freed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        ok = True
    except OSError:
        ok = False
    touch_free_memory()
    return ok


def mounts_under(prefix: str) -> list[str]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix.rstrip("/") + "/"):
                out.append(mnt)
    return sorted(out, key=len, reverse=True)


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mounts_under(os.path.realpath(path))


def fuse_unmount(mnt: str) -> None:
    for args in (["fusermount3", "-u", mnt], ["fusermount3", "-u", "-z", mnt]):
        if not is_mounted(mnt):
            return
        subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        for _ in range(50):
            if not is_mounted(mnt):
                return
            time.sleep(0.1)


def wait_for(pred, timeout: float, what: str, proc=None) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            if pred():
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            err = ""
            if getattr(proc, "log_path", None):
                with open(proc.log_path, errors="replace") as f:
                    err = f.read()[-2000:]
            raise StepError(f"{what}: process exited with {proc.returncode}: {err}")
        time.sleep(0.2)
    raise StepError(f"{what}: not ready after {timeout}s")


def walk_files(root: str) -> list[str]:
    """Relative paths of regular files under root, sorted (deterministic)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return out


def make_realistic(path: str, size: int, seed: int, src_root: str, files: list[str]) -> dict:
    """Write `size` bytes of realistic data to `path` (see the module docstring)."""
    rng = random.Random(seed)
    order = [f for f in files if os.path.basename(f) != BIG_NAME]
    rng.shuffle(order)
    written = rand_bytes = 0
    i = 0
    with open(path, "wb") as out:
        while written < size:
            if rand_bytes < 0.25 * written or written == 0:
                piece = rng.randbytes(MiB)[: size - written]
                rand_bytes += len(piece)
            else:
                if i >= len(order):
                    i = 0
                    rng.shuffle(order)
                rel = order[i]
                i += 1
                try:
                    with open(os.path.join(src_root, rel), "rb") as f:
                        data = f.read(64 * MiB)
                except OSError:
                    continue
                key = rng.randrange(1, 256)
                piece = data.translate(bytes(b ^ key for b in range(256)))[: size - written]
            out.write(piece)
            written += len(piece)
    return {"size": size, "seed": seed, "random_fraction": round(rand_bytes / size, 3)}


def change_one_percent(root: str, seed: int = 42) -> dict:
    files = [f for f in walk_files(root) if f != BIG_NAME]
    rng = random.Random(seed)
    n = max(1, round(len(files) * 0.01))
    chosen = sorted(rng.sample(files, n))
    appended = overwritten = 0
    for k, rel in enumerate(chosen):
        p = os.path.join(root, rel)
        size = os.path.getsize(p)
        if k % 10 == 0 and size >= 64:
            with open(p, "r+b") as f:
                f.seek(size // 2)
                f.write(b"#mimeifs-bench#\n")
            overwritten += 1
        else:
            with open(p, "ab") as f:
                f.write(b"\n# mimeifs-bench change %d\n" % k)
            appended += 1
    return {"files": len(files), "changed": n, "paths": chosen, "appended": appended,
            "overwritten_16B_in_middle": overwritten, "seed": seed}


# --------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work)
        self.src = os.path.join(self.work, "src")
        self.stores = os.path.join(self.work, "stores")
        self.mnts = os.path.join(self.work, "mnt")
        self.quick = a.quick
        self.big_size = 64 * MiB if a.quick else 512 * MiB
        self.seq_size = 64 * MiB if a.quick else 1024 * MiB
        self.n_small = 1000 if a.quick else 10000
        self.T = 300 if a.quick else 1800          # per-step timeout, seconds
        self.mounted: list[tuple] = []    # (kind, mountpoint, foreground process or None)
        self.mimeifs = a.mimeifs
        self.venv_python = self._fuse_python()
        self.R = {"meta": {}, "backup": {}, "read": {}, "cur": {}, "errors": [], "notes": []}
        self.state = {}   # ids, version numbers, repos
        self.env = dict(os.environ)
        self.env.update({
            "BORG_BASE_DIR": os.path.join(self.work, "borg-home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "RESTIC_PASSWORD": "mimeifs-bench",
            "RESTIC_CACHE_DIR": os.path.join(self.work, "restic-cache"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "LC_ALL": "C",
        })
        # what users run with: Python writes and reuses bytecode caches
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    # ---- infrastructure
    def _fuse_python(self) -> str:
        try:
            import pyfuse3  # noqa: F401
            return sys.executable
        except ImportError:
            venv = os.environ.get("MIMEIFS_VENV") or os.path.join(REPO, ".venv")
            return os.path.join(venv, "bin", "python")

    def err(self, where: str, e: BaseException) -> None:
        msg = f"{where}: {e}"
        log("ERROR " + msg)
        self.R["errors"].append(msg)

    def step(self, where: str, fn, *args):
        log(where)
        self.R["meta"].setdefault("loadavg_1min_at_step", {})[where] = os.getloadavg()[0]
        try:
            return fn(*args)
        except StepError as e:
            self.err(where, e)
        except Exception as e:  # noqa: BLE001 - record and go on with the other tools
            self.err(where, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        return None

    def cleanup(self) -> None:
        for kind, mnt, proc in list(reversed(self.mounted)):
            self.umount(kind, mnt)

    def umount(self, kind: str, mnt: str) -> None:
        """Unmount one of our mounts; end the process that served it if it lingers."""
        entry = next((m for m in self.mounted if m[1] == mnt), (kind, mnt, None))
        proc = entry[2]
        if kind == "mimeifs" and is_mounted(mnt):
            try:
                run([self.mimeifs, "umount", mnt], 120)
            except (StepError, OSError) as e:
                self.err("mimeifs umount", e)
        fuse_unmount(mnt)
        self.mounted = [m for m in self.mounted if m[1] != mnt]
        if proc is not None:
            for sig in (None, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and proc.poll() is None:
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def fg_mount(self, kind: str, cmd: list[str], mnt: str, ready, timeout=120) -> None:
        os.makedirs(mnt, exist_ok=True)
        logf = open(os.path.join(self.work, f"{kind}-{os.path.basename(mnt)}.log"), "ab")
        p = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=logf, start_new_session=True)
        p.log_path = logf.name
        logf.close()
        self.mounted.append((kind, mnt, p))
        wait_for(lambda: is_mounted(mnt) and ready(), timeout, f"{kind} mount", proc=p)

    def have(self, tool: str) -> bool:
        return shutil.which(tool) is not None

    def anchors(self) -> list[str]:
        if self.a.skip_anchors:
            return []
        out = []
        for t in ("borg", "restic", "git"):
            if self.have(t):
                out.append(t)
            else:
                pkg = {"borg": "borgbackup"}.get(t, t)
                note = f"{t} not found: skipped (apt-get install {pkg})"
                log(note)
                self.R["notes"].append(note)
        return out

    def mimeifs_ok(self) -> bool:
        if self.a.skip_mimeifs:
            return False
        if "mimeifs_ok" in self.state:
            return self.state["mimeifs_ok"]
        ok = False
        try:
            _, out = run([self.mimeifs, "--help"], 60, capture=True)
            missing = [c for c in ("init", "create", "import", "backup", "mount", "umount")
                       if not re.search(rf"^\s+{c}\b", out, re.M)]
            if missing:
                self.err("mimeifs", f"`mimeifs --help` lists no command(s): {', '.join(missing)}")
            else:
                ok = True
        except (StepError, OSError) as e:
            self.err("mimeifs", e)
        self.state["mimeifs_ok"] = ok
        return ok

    def mm(self, store: str, *args, timeout=None, capture=False):
        return run([self.mimeifs, "--store", store, *args], timeout or self.T, env=self.env,
                   capture=capture)

    # ---- data
    def prepare(self) -> None:
        src_from = os.path.abspath(self.a.src)
        for m in mounts_under(self.work):
            fuse_unmount(m)
        marker = os.path.join(self.work, ".mimeifs-bench")
        if os.path.exists(self.work):
            if mounts_under(self.work):
                raise SystemExit(f"cannot unmount {mounts_under(self.work)}")
            shutil.rmtree(self.work)
        os.makedirs(self.stores)
        os.makedirs(self.mnts)
        open(marker, "w").close()
        t0 = time.perf_counter()
        if self.quick:
            files = walk_files(src_from)
            pick = self._quick_subset(src_from)
            log(f"quick: copying {pick} ({len(files)} files in the whole source)")
            run(["cp", "-a", os.path.join(src_from, pick), self.src], self.T)
        else:
            log(f"copying {src_from} -> {self.src} (cp -a)")
            run(["cp", "-a", src_from, self.src], self.T)
        copy_s = time.perf_counter() - t0
        files = walk_files(self.src)
        big = make_realistic(os.path.join(self.src, BIG_NAME), self.big_size, 1, self.src, files)
        n_files = len(files) + 1
        du = du_bytes(self.src)
        n_dirs = sum(1 for _ in os.walk(self.src))
        self.R["meta"]["tree"] = {"source": src_from, "copy": self.src, "files": n_files,
                                  "dirs": n_dirs, "bytes": du["bytes"], "copy_s": round(copy_s, 1),
                                  "big_file": dict(big, name=BIG_NAME)}
        log(f"tree: {n_files} files, {n_dirs} dirs, {du['bytes'] / 1e9:.2f} GB")

    def _quick_subset(self, root: str) -> str:
        """The first directory (walk order) with 1,500..6,000 files below it."""
        counts = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            parts = [] if rel == "." else rel.split(os.sep)
            for k in range(len(parts) + 1):
                key = os.sep.join(parts[:k]) or "."
                counts[key] = counts.get(key, 0) + len(filenames)
        cands = sorted((abs(c - 2000), d) for d, c in counts.items() if 1500 <= c <= 6000)
        if not cands:
            return "."
        return cands[0][1]

    # ---- backup section
    def backup_first(self, tool: str) -> None:
        r = self.R["backup"].setdefault(tool, {})
        st = os.path.join(self.stores, tool)
        if tool == "borg":
            run(["borg", "init", "-e", "none", st], 120, env=self.env)
            dt, _ = run(["borg", "create", "--compression", "lz4", f"{st}::first", "."],
                        self.T, cwd=self.src, env=self.env)
        elif tool == "restic":
            run(["restic", "-r", st, "init", "--repository-version", "2"], 120, env=self.env)
            dt, _ = run(["restic", "-r", st, "backup", "-q", "--host", "bench", self.src],
                        self.T, env=self.env)
        elif tool == "git":
            run(["git", "init", "-q", st], 60, env=self.env)
            dt, _ = run(self._git("add -A -f") + " && " + self._git("commit -q -m first"),
                        self.T, env=self.env)
            st = os.path.join(st, ".git")
        elif tool == "mimeifs":
            self.mm(st, "init", timeout=120)
            _, out = self.mm(st, "create", "--type", "fs", "--mark", "bench", capture=True,
                             timeout=120)
            mid = self._hexid(out, "create")
            self.state["mimeifs_id"] = mid
            self.R["meta"]["mimeifs_id"] = mid
            t0 = time.perf_counter()  # one command, as a user backs up a directory
            _, out = self.mm(st, "import", self.src, mid, "--backup", "-m", "first", capture=True)
            dt = time.perf_counter() - t0
            self.state["mimeifs_v_first"] = self._version_n(out)
        r["first_s"] = round(dt, 2)
        r.update({f"first_{k}": v for k, v in du_bytes(st).items()})
        log(f"{tool} first backup: {dt:.1f}s {r['first_bytes'] / 1e6:.0f} MB")

    def backup_second(self, tool: str) -> None:
        r = self.R["backup"].setdefault(tool, {})
        st = os.path.join(self.stores, tool)
        if tool == "borg":
            dt, _ = run(["borg", "create", "--compression", "lz4", f"{st}::second", "."],
                        self.T, cwd=self.src, env=self.env)
        elif tool == "restic":
            dt, _ = run(["restic", "-r", st, "backup", "-q", "--host", "bench", self.src],
                        self.T, env=self.env)
        elif tool == "git":
            dt, _ = run(self._git("add -A -f") + " && " + self._git("commit -q -m second"),
                        self.T, env=self.env)
            st = os.path.join(st, ".git")
        elif tool == "mimeifs":
            mid = self.state["mimeifs_id"]
            t0 = time.perf_counter()
            _, out = self.mm(st, "import", self.src, mid, "--delete", "--backup", "-m", "second",
                             capture=True)
            dt = time.perf_counter() - t0
            self.state["mimeifs_v_second"] = self._version_n(out)
            self.R["meta"]["mimeifs_v_second"] = self.state["mimeifs_v_second"]
        r["second_s"] = round(dt, 2)
        r.update({f"second_{k}": v for k, v in du_bytes(st).items()})
        log(f"{tool} second backup: {dt:.1f}s {r['second_bytes'] / 1e6:.0f} MB")

    def _git(self, sub: str) -> str:
        g = os.path.join(self.stores, "git", ".git")
        return (f"git -c user.name=bench -c user.email=bench@localhost -c gc.auto=0 "
                f"-c commit.gpgSign=false -c core.autocrlf=false "
                f"--git-dir={sh_quote(g)} --work-tree={sh_quote(self.src)} {sub}")

    @staticmethod
    def _hexid(out: str, what: str) -> str:
        m = re.findall(r"\b[0-9a-f]{40}\b", out)
        if not m:
            raise StepError(f"mimeifs {what} printed no 40-hex ID: {out.strip()[:300]!r}")
        return m[-1]

    @staticmethod
    def _version_n(out: str) -> int:
        m = re.search(r"^\s*(\d+)\s+[0-9a-f]{16,}", out, re.M)
        if not m:
            raise StepError(f"mimeifs backup did not print `n root-hash`: {out.strip()[:300]!r}")
        return int(m.group(1))

    def section_backup(self, tools: list[str]) -> None:
        for t in tools:
            touch_free_memory()   # untimed: every tool starts with host-backed memory
            self.step(f"backup: {t} first", self.backup_first, t)
        info = change_one_percent(self.src)
        self.R["meta"]["change"] = info
        log(f"changed {info['changed']} of {info['files']} files")
        for t in tools:
            if "first_s" in self.R["backup"].get(t, {}):
                touch_free_memory()
                self.step(f"backup: {t} second", self.backup_second, t)
        self.state["backups_done"] = True

    # ---- read section
    def read_dirs(self, tools: list[str]) -> dict:
        """Mount each tool's second snapshot; return {name: directory}."""
        dirs = {"native": self.src}
        for t in tools:
            mnt = os.path.join(self.mnts, t)
            st = os.path.join(self.stores, t)
            try:
                if t == "borg":
                    self.fg_mount("borg", ["borg", "mount", "-f", f"{st}::second", mnt], mnt,
                                  lambda: len(os.listdir(mnt)) > 0)
                    d = mnt
                    if not os.path.exists(os.path.join(d, BIG_NAME)):
                        raise StepError(f"borg mount: {BIG_NAME} not at {d}: {os.listdir(d)[:5]}")
                elif t == "restic":
                    d = os.path.join(mnt, "snapshots", "latest") + self.src
                    self.fg_mount("restic", ["restic", "-r", st, "mount", mnt], mnt,
                                  lambda: os.path.exists(os.path.join(d, BIG_NAME)), timeout=180)
                elif t == "mimeifs":
                    os.makedirs(mnt, exist_ok=True)
                    self.mounted.append(("mimeifs", mnt, None))
                    run([self.mimeifs, "--store", st, "mount", mnt], 120, env=self.env)
                    n = self.state["mimeifs_v_second"]
                    d = os.path.join(mnt, "mm", self.state["mimeifs_id"], "v", str(n))
                    wait_for(lambda: os.path.exists(os.path.join(d, BIG_NAME)), 60,
                             f"mimeifs v/{n}")
                else:
                    continue
                dirs[t] = d
            except (StepError, OSError) as e:
                self.err(f"read: mount {t}", e)
        return dirs

    def read_one(self, name: str, d: str) -> None:
        r = self.R["read"].setdefault(name, {})
        size = os.path.getsize(os.path.join(d, BIG_NAME))
        if not drop_caches():
            self.R["notes"].append("not root: read measurements are warm, not cold")
        q = sh_quote(d)
        dt, _ = run(f"ls -lR {q} > /dev/null", self.T)
        r["ls_lR_s"] = round(dt, 3)
        dt, _ = run(f"ls -lR {q} > /dev/null", self.T)
        r["ls_lR_warm_s"] = round(dt, 3)
        drop_caches()
        dt, _ = run(f"set -o pipefail; find {q} -type f -print0 | xargs -0 cat > /dev/null", self.T)
        r["cat_all_s"] = round(dt, 3)
        r["cat_all_MiBps"] = round(self.R["meta"]["tree"]["bytes"] / MiB / dt, 1)
        drop_caches()
        big = sh_quote(os.path.join(d, BIG_NAME))
        dt, _ = run(f"cat {big} > /dev/null", self.T)
        r["big_cold_s"] = round(dt, 3)
        r["big_cold_MiBps"] = round(size / MiB / dt, 1)
        dt, _ = run(f"cat {big} > /dev/null", self.T)
        r["big_warm_s"] = round(dt, 3)
        r["big_warm_MiBps"] = round(size / MiB / dt, 1)
        if name != "native":
            # The snapshot must hold the second state: compare the changed files.
            changed = self.R["meta"].get("change", {}).get("paths", [])
            wrong = []
            for rel in changed:
                with open(os.path.join(self.src, rel), "rb") as f1:
                    want = f1.read()
                try:
                    with open(os.path.join(d, rel), "rb") as f2:
                        got = f2.read()
                except OSError as e:
                    got = repr(e).encode()
                if got != want:
                    wrong.append(rel)
            r["changed_files_checked"] = len(changed)
            r["changed_files_wrong"] = len(wrong)
            if wrong:
                self.err(f"read: {name}", StepError(
                    f"{len(wrong)} of {len(changed)} changed files differ from the source in "
                    f"the second snapshot, e.g. {wrong[0]}"))
        log(f"read {name}: ls -lR {r['ls_lR_s']}s, cat all {r['cat_all_s']}s, "
            f"big cold {r['big_cold_MiBps']} MiB/s, warm {r['big_warm_MiBps']} MiB/s")

    def section_read(self, tools: list[str]) -> None:
        if not self.state.get("backups_done"):
            log("read: making the snapshots first (untimed)")
            self.section_backup(tools)
            for t in tools:
                self.R["backup"].pop(t, None)   # not a timed backup run
        try:
            dirs = self.read_dirs([t for t in tools if t != "git"])
            for name, d in dirs.items():
                self.step(f"read: {name}", self.read_one, name, d)
        finally:
            for kind, mnt, _ in list(reversed(self.mounted)):
                self.umount(kind, mnt)

    # ---- cur section
    def cur_dir(self, tool: str) -> str:
        mnt = os.path.join(self.mnts, f"cur-{tool}")
        if tool == "passthrough":
            backing = os.path.join(self.work, "pt-backing")
            os.makedirs(backing, exist_ok=True)
            self.fg_mount("passthrough", [self.venv_python, os.path.join(REPO, "tools",
                                                                         "passthroughfs.py"),
                                          backing, mnt], mnt, lambda: True)
            return mnt
        st = os.path.join(self.stores, "mimeifs-cur")
        self.mm(st, "init", timeout=120)
        _, out = self.mm(st, "create", "--type", "fs", "--mark", "cur", capture=True, timeout=120)
        mid = self._hexid(out, "create")
        os.makedirs(mnt, exist_ok=True)
        self.mounted.append(("mimeifs", mnt, None))
        run([self.mimeifs, "--store", st, "mount", mnt], 120, env=self.env)
        d = os.path.join(mnt, "mm", mid, "cur")
        wait_for(lambda: os.path.isdir(d), 60, "mimeifs cur")
        return d

    def cur_one(self, tool: str, data: str, payloads: list[bytes]) -> None:
        r = self.R["cur"].setdefault(tool, {})
        mnt = None
        try:
            d = self.cur_dir(tool)
            mnt = self.mounted[-1]
            seq = os.path.join(d, "seq.bin")
            os.sync()   # no writeback of earlier steps (the data file itself) during the run
            run(["cat", data], self.T, capture=False)       # data file warm in page cache
            touch_free_memory()
            dt, _ = run(["dd", f"if={data}", f"of={seq}", "bs=1M", "status=none"], self.T)
            r["write_s"] = round(dt, 3)
            r["write_MiBps"] = round(self.seq_size / MiB / dt, 1)
            if os.path.getsize(seq) != self.seq_size:
                raise StepError(f"{tool}: seq.bin has {os.path.getsize(seq)} bytes")
            drop_caches()
            dt, _ = run(["dd", f"if={seq}", "of=/dev/null", "bs=1M", "status=none"], self.T)
            r["read_cold_s"] = round(dt, 3)
            r["read_cold_MiBps"] = round(self.seq_size / MiB / dt, 1)
            os.unlink(seq)
            log(f"cur {tool}: write {r['write_MiBps']} MiB/s, cold read {r['read_cold_MiBps']} MiB/s")

            small = os.path.join(d, "small")
            os.mkdir(small)
            names = [os.path.join(small, f"f{i:05d}") for i in range(len(payloads))]
            t0 = time.perf_counter()
            for p, data_ in zip(names, payloads):
                with open(p, "wb") as f:
                    f.write(data_)
            r["create_s"] = round(time.perf_counter() - t0, 3)
            drop_caches()
            dt, _ = run(f"ls -l {sh_quote(small)} > /dev/null", self.T)
            r["ls_l_s"] = round(dt, 3)
            drop_caches()
            t0 = time.perf_counter()
            for p in names:
                os.stat(p)
            r["stat_cold_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            for p in names:
                os.stat(p)
            r["stat_warm_s"] = round(time.perf_counter() - t0, 3)
            drop_caches()
            t0 = time.perf_counter()
            bad = 0
            for p, data_ in zip(names, payloads):
                with open(p, "rb") as f:
                    bad += f.read() != data_
            r["read_small_cold_s"] = round(time.perf_counter() - t0, 3)
            if bad:
                raise StepError(f"{tool}: {bad} small files read back wrong")
            t0 = time.perf_counter()
            for p in names:
                os.unlink(p)
            r["delete_s"] = round(time.perf_counter() - t0, 3)
            log(f"cur {tool}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
        finally:
            if mnt:
                self.umount(mnt[0], mnt[1])

    def section_cur(self, tools: list[str]) -> None:
        data = os.path.join(self.work, "seq-data.bin")
        if not os.path.exists(data):
            info = make_realistic(data, self.seq_size, 2, self.src, walk_files(self.src))
            self.R["meta"]["seq_data"] = info
        rng = random.Random(7)
        payloads = [rng.randbytes(2048) + (b"line %06d of a small file\n" % i) * 79
                    + b"x" * (2048 - 27 * 79) for i in range(self.n_small)]
        payloads = [p[:4096].ljust(4096, b"\n") for p in payloads]
        for t in tools:
            self.step(f"cur: {t}", self.cur_one, t, data, payloads)

    # ---- report
    def report(self) -> str:
        rows = []   # (line, mimeifs, anchor, anchor value, ratio, target, verdict)
        B, Rd, C = self.R["backup"], self.R["read"], self.R["cur"]
        mb = B.get("mimeifs", {})

        def ratio(a, b):
            return a / b if (a is not None and b) else None

        def add(line, mval, anchor, aval, target=None, op=None, bound=None, fmt="{:.2f}"):
            rt = ratio(mval, aval)
            verdict = ""
            if target:
                verdict = "n/a" if rt is None else ("PASS" if op(rt, bound) else "MISS")
            rows.append((line, mval, anchor, aval, rt, target or "", verdict, fmt))

        le = lambda x, y: x <= y  # noqa: E731
        lt = lambda x, y: x < y  # noqa: E731
        ge = lambda x, y: x >= y  # noqa: E731
        gt = lambda x, y: x > y  # noqa: E731
        for t in ("borg", "restic", "git"):
            if t in B:
                tgt = ("<= 0.75", le, 0.75) if t == "borg" else (None, None, None)
                add("first backup s", mb.get("first_s"), t, B[t].get("first_s"), *tgt)
        for t in ("borg", "restic", "git"):
            if t in B:
                tgt = ("< 1", lt, 1.0) if t == "git" else (None, None, None)
                add("second backup s", mb.get("second_s"), t, B[t].get("second_s"), *tgt)
        for when in ("first", "second"):
            for t in ("borg", "restic", "git"):
                if t in B:
                    tgt = ("<= 1", le, 1.0) if t == "restic" else (None, None, None)
                    add(f"bytes after {when} (du -sb)", mb.get(f"{when}_bytes"), t,
                        B[t].get(f"{when}_bytes"), *tgt, fmt="{:,}")
        mr = Rd.get("mimeifs", {})
        for anchor in ("native", "borg", "restic"):
            if anchor not in Rd:
                continue
            a = Rd[anchor]
            nat = anchor == "native"
            add("ls -lR s (cold)", mr.get("ls_lR_s"), anchor, a.get("ls_lR_s"),
                *(("<= 2", le, 2.0) if nat else (None, None, None)))
            add("ls -lR s (warm, info)", mr.get("ls_lR_warm_s"), anchor, a.get("ls_lR_warm_s"))
            add("cat all MiB/s (cold)", mr.get("cat_all_MiBps"), anchor, a.get("cat_all_MiBps"),
                *((">= 0.9", ge, 0.9) if nat else (None, None, None)), fmt="{:.1f}")
            add("cat big MiB/s (cold)", mr.get("big_cold_MiBps"), anchor,
                a.get("big_cold_MiBps"), *((">= 1", ge, 1.0) if nat else (None, None, None)),
                fmt="{:.1f}")
            add("cat big MiB/s (warm)", mr.get("big_warm_MiBps"), anchor,
                a.get("big_warm_MiBps"), *((">= 1", ge, 1.0) if nat else (None, None, None)),
                fmt="{:.1f}")
        mc = C.get("mimeifs", {})
        lines = [("write_MiBps", "seq write MiB/s", True), ("read_cold_MiBps", "seq read MiB/s cold", True),
                 ("create_s", "create 10k s", False), ("ls_l_s", "ls -l 10k s (cold)", False),
                 ("stat_cold_s", "stat 10k s cold", False), ("stat_warm_s", "stat 10k s warm", False),
                 ("read_small_cold_s", "read 10k s cold", False), ("delete_s", "delete 10k s", False)]
        scale = self.n_small / 10000        # s3ql's 10k-file times, scaled in --quick
        s3ql = {k: (v if k.endswith("MiBps") else v * scale) for k, v in S3QL.items()}
        s3ql_name = "s3ql 6.3 ref" + (f" x{scale:g}" if scale != 1 else "")
        for key, line, higher in (lines if C else []):
            if self.quick:
                line = line.replace("10k", f"{self.n_small // 1000}k")
            for anchor, src in (("passthrough", C.get("passthrough", {})), (s3ql_name, s3ql)):
                if anchor == "passthrough" and "passthrough" not in C:
                    continue
                if higher:
                    add(line, mc.get(key), anchor, src.get(key), "> 1", gt, 1.0, fmt="{:.1f}")
                else:
                    add(line, mc.get(key), anchor, src.get(key), "< 1", lt, 1.0, fmt="{:.3f}")

        def f(v, fmt):
            return "-" if v is None else fmt.format(v)

        head = ("line", "mimeifs", "anchor", "anchor value", "mimeifs/anchor", "target", "")
        table = [head] + [(ln, f(m, fm), an, f(av, fm), f(rt, "{:.3f}"), tg, vd)
                          for ln, m, an, av, rt, tg, vd, fm in rows]
        w = [max(len(str(r[i])) for r in table) for i in range(len(head))]
        out = []
        for k, r in enumerate(table):
            out.append("  ".join(str(c).ljust(w[i]) if i in (0, 2, 5, 6) else str(c).rjust(w[i])
                                 for i, c in enumerate(r)).rstrip())
            if k == 0:
                out.append("-" * len(out[0]))
        self.R["table"] = [dict(zip(("line", "mimeifs", "anchor", "anchor_value", "ratio",
                                     "target", "verdict"), r[:7])) for r in rows]
        return "\n".join(out)

    # ---- main
    def main(self) -> int:
        t_start = time.time()
        marker = os.path.join(self.work, ".mimeifs-bench")
        if os.path.isdir(self.work) and os.listdir(self.work) and not os.path.exists(marker):
            raise SystemExit(f"--work {self.work} is not empty and was not made by this "
                             f"benchmark (no {marker}): refusing to wipe it")
        only = set(self.a.only.split(",")) if self.a.only else {"backup", "read", "cur"}
        bad = only - {"backup", "read", "cur"}
        if bad:
            raise SystemExit(f"--only: unknown section(s) {sorted(bad)}")
        self.R["meta"].update({
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": self.quick,
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "sections": sorted(only), "root": os.geteuid() == 0,
            "versions": self._versions(), "repo": self._repo_state()})
        if os.geteuid() != 0:
            self.R["notes"].append("not root: caches cannot be dropped, cold numbers are warm")
        tools = self.anchors()
        if self.mimeifs_ok():
            tools = ["mimeifs"] + tools
        self.R["meta"]["tools"] = tools
        try:
            self.prepare()
            if "backup" in only:
                self.section_backup(tools)
            if "read" in only:
                self.section_read([t for t in tools if t != "git"])
            if "cur" in only:
                cur_tools = (["mimeifs"] if "mimeifs" in tools else []) + \
                            ([] if self.a.skip_anchors else ["passthrough"])
                self.section_cur(cur_tools)
        finally:
            self.cleanup()
            self.R["meta"]["wall_s"] = round(time.time() - t_start, 1)
            table = self.report()
            out = self.a.out or os.path.join(self.work, "results.json")
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(self.R, f, indent=2)
            print(table)
            for n in self.R["notes"]:
                print("note:", n)
            for e in self.R["errors"]:
                print("ERROR:", e.splitlines()[0][:400])
            repo = self.R["meta"].get("repo", {})
            print(f"mimeifs at {repo.get('head', '?')[:12]}"
                  + (f" + uncommitted {repo['mimeifs_dirty_files']}" if repo.get("mimeifs_dirty_files") else "")
                  + "; 1-min load average at the steps: "
                  + ", ".join(f"{v:.1f}" for v in self.R["meta"].get("loadavg_1min_at_step", {}).values()))
            print(f"wall time {self.R['meta']['wall_s']:.0f} s; results in {out}")
        return 1 if self.R["errors"] else 0

    @staticmethod
    def _repo_state() -> dict:
        """Which mimeifs code was measured (the checkout is shared and changes)."""
        try:
            head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=30).stdout.strip()
            dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "mimeifs"],
                                   capture_output=True, text=True, timeout=30).stdout.split("\n")
            return {"head": head, "mimeifs_dirty_files": [d[3:] for d in dirty if d.strip()]}
        except (OSError, subprocess.TimeoutExpired):
            return {}

    def _versions(self) -> dict:
        v = {}
        for name, cmd in (("borg", ["borg", "--version"]), ("restic", ["restic", "version"]),
                          ("git", ["git", "--version"])):
            try:
                v[name] = subprocess.run(cmd, capture_output=True, text=True,
                                         timeout=30).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                v[name] = None
        try:
            import importlib.metadata as md
            v["pyfuse3"] = md.version("pyfuse3")
        except Exception:  # noqa: BLE001
            v["pyfuse3"] = None
        return v


def main() -> int:
    # The installed library of the interpreter itself, not of a venv it may run in.
    default_src = os.path.dirname(sysconfig.get_paths(
        vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})["purelib"])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=default_src, help=f"source tree (default {default_src})")
    p.add_argument("--work", default="/tmp/mmbench", help="scratch directory (wiped first)")
    p.add_argument("--out", help="JSON results file (default <work>/results.json)")
    p.add_argument("--only", help="comma list of sections: backup,read,cur")
    p.add_argument("--skip-anchors", action="store_true", help="measure mimeifs only")
    p.add_argument("--skip-mimeifs", action="store_true", help="measure the anchors only")
    p.add_argument("--quick", action="store_true",
                   help="a ~2,000-file subtree, 64 MiB sizes, 1,000 small files")
    p.add_argument("--mimeifs", default=shutil.which("mimeifs") or
                   os.path.join(REPO, ".venv", "bin", "mimeifs"), help="the mimeifs command")
    a = p.parse_args()
    b = Bench(a)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    return b.main()


if __name__ == "__main__":
    sys.exit(main())
