"""Fixtures for the gateway tests: a real store, a real daemon (`mimeifs serve --http` or
`mimeifs mount --http`) on a loopback port, driven by real clients (curl, rclone,
chromium). Teardown stops the daemon (`mimeifs stop`, then SIGKILL of its pid), so no
port, mount or process is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support import pid_alive, reap, wait_for  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "mimeifs.cli"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Curl:
    """One curl run: ``status``, ``headers`` (lower-case names, last value wins) and
    ``body`` bytes."""

    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"<Curl {self.status} {self.headers} {self.body[:200]!r}>"


class Node:
    """A store and its daemon serving HTTP on 127.0.0.1:``port``."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.store = self.base / "store"
        self.port = free_port()
        self.pids: list[int] = []
        self.mnt: Path | None = None

    def run(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [*CLI, "--store", str(self.store), *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(),
                           cwd=str(self.base))
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}\n"
                                 f"{self.log_tail()}")
        return p

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.store / "mimeifs.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def create(self, mark: str) -> str:
        mid = self.run("create", "--type", "fs", "--mark", mark).stdout.strip()
        assert len(mid) == 40
        return mid

    def serve(self) -> None:
        self.run("serve", "--http", f"127.0.0.1:{self.port}", timeout=60)
        self._started()

    def mount(self, mnt: Path) -> None:
        self.mnt = mnt
        self.run("mount", mnt, "--http", f"127.0.0.1:{self.port}", timeout=60)
        assert os.path.ismount(mnt)
        self._started()

    def _started(self) -> None:
        info = json.loads((self.store / "mount.json").read_text())
        self.pids.append(info["pid"])

    @property
    def pid(self) -> int:
        return self.pids[-1]

    @property
    def token(self) -> str:
        return self.run("gateway", "token").stdout.strip()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def curl(self, path: str, *args: str, method: str | None = None) -> Curl:
        """curl ``path`` (``--path-as-is``: what we send is what the server sees)."""
        dump = [] if "-I" in args else ["-D", "-"]  # -I prints the headers itself
        cmd = ["curl", "-s", "--path-as-is", *dump, "-o", "-", "--max-time", "60", *args]
        if method:
            cmd += ["-X", method]
        cmd.append(self.url(path))
        out = subprocess.run(cmd, capture_output=True, timeout=90).stdout
        return parse_curl(out)

    def stop(self) -> None:
        if self.mnt is not None and os.path.ismount(self.mnt):
            self.run("umount", self.mnt, check=False, timeout=60)
            if os.path.ismount(self.mnt):
                subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        elif self.pids and pid_alive(self.pid):
            self.run("stop", check=False, timeout=60)
        reap(self.pids)


def parse_curl(out: bytes) -> Curl:
    """Split ``curl -D - -o -`` output (the last header block wins: redirects are not
    followed, 100-continue is skipped)."""
    rest = out
    status, headers = 0, {}
    while rest.startswith(b"HTTP/"):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 100:
            break
    return Curl(status, headers, rest)


needs = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served store holding MiMei ``site`` (v/0 and cur) with a small tree: text, a
    3 MiB random file, a directory with an index.html, one without, a symlink."""
    base = tmp_path_factory.mktemp("gw")
    node = Node(base)
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "app").mkdir()
    (src / "a.txt").write_text("hello gateway\n")
    (src / "sub" / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "page.html").write_text("<p>page</p>")
    (src / "app" / "index.html").write_text("<!DOCTYPE html><title>t</title><p id=x>app index</p>")
    os.symlink("/etc/passwd", src / "abs_link")
    os.symlink("a.txt", src / "rel_link")
    node.run("init")
    node.mid = node.create("site")
    node.run("import", src, node.mid, "--backup")
    node.src = src
    node.serve()
    try:
        yield node
    finally:
        node.stop()
