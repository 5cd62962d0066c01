"""Fixtures for the FUSE tests: a real store, a real ``mimeifs mount`` daemon, the real CLI.

Everything here drives mimeifs the way a user does: the CLI runs as a subprocess
(``sys.executable -m mimeifs.cli``), the daemon is the one ``mimeifs mount`` forks, and the
tests use ordinary syscalls and programs on the mountpoint. Teardown always unmounts
(``mimeifs umount``, falling back to ``fusermount3 -uz`` and, if the daemon still lives,
SIGKILL of that one pid), so a failing test never leaves a mount behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import pid_alive, reap, wait_for  # noqa: F401  (re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)


class CLIError(AssertionError):
    pass


CLI = [sys.executable, "-m", "mimeifs.cli"]  # the CLI as a subprocess, from this checkout


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for :data:`CLI`: this one, with the checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def tree_digest(root: str | os.PathLike) -> dict[str, tuple]:
    """{relative path: (kind, content sha256 | link target, mode bits)} of a directory tree."""
    out = {}
    root = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d", oct(st.st_mode & 0o7777))
            elif os.path.isfile(p):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        h.update(b)
                out[rel] = ("f", h.hexdigest(), oct(st.st_mode & 0o7777))
            else:
                out[rel] = ("o", oct(st.st_mode))
    return out


class MimeiFS:
    """A store plus (when mounted) its daemon at ``mnt``."""

    def __init__(self, base: Path, allow_other: bool = True):
        self.base = Path(base)
        self.store = self.base / "store"
        # the mountpoint lives in a world-traversable dir (pytest's tmp is 0700 to root), and
        # the mount uses allow_other, so tests can act as another uid
        self.mnt = Path(tempfile.mkdtemp(prefix="mimeifs-mnt-", dir="/tmp"))
        os.chmod(self.mnt, 0o755)
        self.allow_other = allow_other
        self.pids: list[int] = []

    # ---------------------------------------------------------------- CLI
    def run(self, *args, check: bool = True, timeout: float = 600, input=None,
            **kw) -> subprocess.CompletedProcess:
        cmd = [*CLI, "--store", str(self.store), *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                           env=cli_env(), cwd=str(self.base), **kw)
        if check and p.returncode != 0:
            raise CLIError(f"{' '.join(cmd[3:])} -> exit {p.returncode}\nstdout: {p.stdout}\n"
                           f"stderr: {p.stderr}\nlog tail:\n{self.log_tail()}")
        return p

    __call__ = run

    def init(self) -> None:
        self.run("init")

    def create(self, mark: str, mtype: str = "fs") -> str:
        mid = self.run("create", "--type", mtype, "--mark", mark).stdout.strip()
        assert len(mid) == 40, mid
        return mid

    def backup(self, mid: str, memo: str = "") -> int:
        args = ["backup", mid] + (["-m", memo] if memo else [])
        out = self.run(*args).stdout.split()
        assert len(out) == 2 and len(out[1]) == 64, out
        return int(out[0])

    def log(self, mid: str) -> list[dict]:
        return json.loads(self.run("log", mid, "--json").stdout)

    # ---------------------------------------------------------------- paths
    def mm(self, mid: str) -> Path:
        return self.mnt / "mm" / mid

    def cur(self, mid: str) -> Path:
        return self.mm(mid) / "cur"

    def v(self, mid: str, n: int) -> Path:
        return self.mm(mid) / "v" / str(n)

    # ---------------------------------------------------------------- daemon
    def mount(self) -> None:
        self.run("mount", self.mnt, *(["--allow-other"] if self.allow_other else []), timeout=60)
        assert os.path.ismount(self.mnt), "mount returned but nothing is mounted"
        pid = self.daemon_pid()
        assert pid and pid_alive(pid)
        self.pids.append(pid)

    def mount_info(self) -> dict | None:
        try:
            return json.loads((self.store / "mount.json").read_text())
        except (OSError, ValueError):
            return None

    def daemon_pid(self) -> int | None:
        info = self.mount_info()
        return info["pid"] if info else None

    def umount(self) -> None:
        pid = self.daemon_pid()
        self.run("umount", self.mnt, timeout=60)
        if pid:
            wait_for(lambda: not pid_alive(pid), 30, "daemon exit after umount")
        assert not os.path.ismount(self.mnt)

    def kill9(self) -> int:
        pid = self.daemon_pid()
        assert pid and pid_alive(pid)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, "daemon death after SIGKILL")
        return pid

    def cleanup(self, remove_mountpoint: bool = False) -> None:
        """Unmount whatever is left, whatever state it is in. Never raises."""
        try:
            if os.path.ismount(self.mnt) or _is_dead_mount(self.mnt):
                try:
                    self.run("umount", self.mnt, check=False, timeout=60)
                except Exception:
                    pass
                if os.path.ismount(self.mnt) or _is_dead_mount(self.mnt):
                    subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False,
                                   capture_output=True)
        except Exception:
            pass
        reap(self.pids)
        try:
            if remove_mountpoint and not os.path.ismount(self.mnt):
                os.rmdir(self.mnt)
        except OSError:
            pass

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = (self.store / "mimeifs.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def log_text(self) -> str:
        try:
            return (self.store / "mimeifs.log").read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        pid = self.daemon_pid()
        return bool(pid) and pid_alive(pid) and os.path.ismount(self.mnt)


def _is_dead_mount(p) -> bool:
    try:
        os.stat(p)
    except OSError as e:
        import errno
        return e.errno == errno.ENOTCONN
    return False


@contextlib.contextmanager
def mounted(m):
    """``m`` (a MimeiFS or subclass) initialised and mounted; unmounted and its
    mountpoint removed on the way out, however the test ended."""
    m.init()
    m.mount()
    try:
        yield m
    finally:
        m.cleanup(remove_mountpoint=True)


@pytest.fixture(scope="session")
def mfs(tmp_path_factory):
    """One store mounted for the whole session. Tests create their own MiMei in it."""
    with mounted(MimeiFS(tmp_path_factory.mktemp("mfs"))) as m:
        yield m


@pytest.fixture
def fresh_mfs(tmp_path):
    """A store of its own, mounted, for tests that remount, kill or swap keys."""
    with mounted(MimeiFS(tmp_path)) as m:
        yield m


_counter = [0]


@pytest.fixture
def mimei(mfs, request):
    """(mfs, id, cur path) of a new fs MiMei in the session store."""
    _counter[0] += 1
    name = f"{request.node.name}-{_counter[0]}".replace("[", "_").replace("]", "_")
    mid = mfs.create(name)
    cur = mfs.cur(mid)
    wait_for(lambda: cur.is_dir(), 10, "cur to appear")
    return mfs, mid, cur


CHILD_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable


def as_user(uid: int, gid: int):
    """preexec_fn: drop to uid/gid (no supplementary groups)."""
    def f():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return f
