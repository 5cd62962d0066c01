#!/usr/bin/env python3
"""Per-request cost of the FUSE request loop: pyfuse3's own loop against mimeifs's
(``mimeifs.fuse.loop``: free lock, busy-polling), on a filesystem that does nothing.

Each variant mounts a tiny pyfuse3 filesystem (one directory, files ``f*`` of 4 KiB,
zero timeouts so every call reaches the daemon) and a client times two loops:

- ``getxattr``: ``os.getxattr(mnt/f1)`` = LOOKUP + GETXATTR, 20,000 times;
- ``open+read``: open, read, close of ``mnt/f1`` = LOOKUP, OPEN, READ, RELEASE, 5,000 times.

It reports µs per call (wall) and the daemon's user and system CPU per call, from
``/proc/<pid>/stat``. The anchor is the same filesystem written in C against libfuse's
low-level API (``fuse_session_loop``), compiled here when gcc and libfuse3-dev are
present. Needs root (or fuse permissions) and /dev/fuse. Not a test: numbers only.

    python tools/bench_loop.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

C_SOURCE = r"""
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
static char buf[4096];
static void st(fuse_ino_t ino, struct stat *s) { memset(s, 0, sizeof *s); s->st_ino = ino;
  s->st_mode = ino == 1 ? S_IFDIR | 0755 : S_IFREG | 0644; s->st_nlink = 1;
  s->st_size = ino == 1 ? 0 : 4096; }
static void ll_getattr(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *fi) {
  struct stat s; st(i, &s); fuse_reply_attr(r, &s, 0); }
static void ll_lookup(fuse_req_t r, fuse_ino_t p, const char *n) {
  if (n[0] != 'f') { fuse_reply_err(r, ENOENT); return; }
  struct fuse_entry_param e; memset(&e, 0, sizeof e); e.ino = 2; st(2, &e.attr);
  fuse_reply_entry(r, &e); }
static void ll_getxattr(fuse_req_t r, fuse_ino_t i, const char *n, size_t s) {
  fuse_reply_err(r, ENODATA); }
static void ll_open(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *fi) {
  fuse_reply_open(r, fi); }
static void ll_read(fuse_req_t r, fuse_ino_t i, size_t size, off_t off,
                    struct fuse_file_info *fi) {
  size_t n = off >= 4096 ? 0 : (4096 - off < size ? 4096 - off : size);
  fuse_reply_buf(r, buf, n); }
static const struct fuse_lowlevel_ops ops = {.lookup = ll_lookup, .getattr = ll_getattr,
  .getxattr = ll_getxattr, .open = ll_open, .read = ll_read};
int main(int argc, char **argv) {
  struct fuse_args args = FUSE_ARGS_INIT(1, argv); memset(buf, 'x', sizeof buf);
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se || fuse_session_mount(se, argv[1])) return 1;
  int r = fuse_session_loop(se); fuse_session_unmount(se); return r; }
"""


def serve(mnt: str, loop: str, busy_poll_us: int) -> None:
    """The pyfuse3 side: ``loop`` is "pyfuse3" (stock) or "mimeifs"."""
    import errno
    import stat

    import pyfuse3
    import trio

    class Ops(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            e = pyfuse3.EntryAttributes()
            e.st_ino = inode
            e.st_mode = (stat.S_IFDIR | 0o755) if inode == 1 else (stat.S_IFREG | 0o644)
            e.st_size = 0 if inode == 1 else 4096
            e.attr_timeout = e.entry_timeout = 0
            return e

        async def lookup(self, parent, name, ctx=None):
            if name.startswith(b"f"):
                return await self.getattr(2)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def getxattr(self, inode, name, ctx):
            raise pyfuse3.FUSEError(errno.ENODATA)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, keep_cache=False)

        async def read(self, fh, off, size):
            return b"x" * max(0, min(size, 4096 - off))

        async def release(self, fh):
            pass

    if loop == "mimeifs":
        from mimeifs.fuse.loop import install
        install(busy_poll_us)
    pyfuse3.init(Ops(), mnt, set(pyfuse3.default_options) | {"fsname=benchloop"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        p = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(p[11]) / hz, int(p[12]) / hz


def drive(mnt: str, pid: int, calls: int) -> dict:
    """Time both client loops; {name: (µs per call, daemon user µs, daemon system µs)}."""
    f1 = os.path.join(mnt, "f1")
    out = {}
    for name, n, fn in (("getxattr", calls, lambda: _getxattr(f1)),
                        ("open+read", calls // 4, lambda: _open_read(f1))):
        c0, t0 = cpu(pid), time.perf_counter()
        for _ in range(n):
            fn()
        dt, c1 = time.perf_counter() - t0, cpu(pid)
        out[name] = (dt * 1e6 / n, (c1[0] - c0[0]) * 1e6 / n, (c1[1] - c0[1]) * 1e6 / n)
    return out


def _getxattr(p: str) -> None:
    try:
        os.getxattr(p, "user.absent")
    except OSError:
        pass


def _open_read(p: str) -> None:
    with open(p, "rb") as f:
        f.read()


def run_variant(cmd: list[str], mnt: str, calls: int) -> dict:
    """Start the daemon ``cmd`` mounting ``mnt``, warm up, measure, unmount; see drive()."""
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]}: did not mount")
            time.sleep(0.05)
        drive(mnt, proc.pid, calls // 10)   # warm-up
        return drive(mnt, proc.pid, calls)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--serve", nargs=3, metavar=("MNT", "LOOP", "US"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], a.serve[1], int(a.serve[2]))
        return 0
    work = tempfile.mkdtemp(prefix="bench-loop-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    me = [sys.executable, os.path.abspath(__file__), "--serve", mnt]
    variants = [("pyfuse3 loop (stock)", me + ["pyfuse3", "0"]),
                ("mimeifs loop, busy-poll off", me + ["mimeifs", "0"])]
    variants += [(f"mimeifs loop, busy-poll {us} µs", me + ["mimeifs", str(us)])
                 for us in (50, 100, 200)]
    cfile = os.path.join(work, "hello_ll.c")
    with open(cfile, "w") as f:
        f.write(C_SOURCE)
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                               capture_output=True, text=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-o", os.path.join(work, "hello_ll"), cfile, *flags],
                       check=True, capture_output=True)
        variants.append(("C libfuse low-level loop (anchor)", [os.path.join(work, "hello_ll"), mnt]))
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"(no C anchor: {e})")
    print(f"{'variant':36} {'getxattr µs/call':>17} {'daemon usr/sys':>15} "
          f"{'open+read µs/call':>18} {'daemon usr/sys':>15}")
    try:
        for name, cmd in variants:
            r = run_variant(cmd, mnt, a.calls)
            g, o = r["getxattr"], r["open+read"]
            print(f"{name:36} {g[0]:17.1f} {g[1]:7.1f}/{g[2]:<7.1f} {o[0]:18.1f} "
                  f"{o[1]:7.1f}/{o[2]:<7.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
