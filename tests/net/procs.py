"""Real nodes as real processes for the network tests: ``mimeifs serve`` and
``mimeifs mount`` daemons on loopback ports, driven through the CLI. Every node started
here is stopped at teardown (``stop`` / ``umount``, then SIGKILL of its own pid, then
``fusermount3 -uz``), so a failing test leaves no daemon, mount or port behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import wait_for  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "mimeifs.cli"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(100):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free port")


class Node:
    """A store at ``path`` and the daemon serving it (headless or mounted)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        self.port = free_port()
        self.mnt: Path | None = None
        self.pid: int | None = None
        self.run("init")
        self.id = self._node_id()

    def _node_id(self) -> str:
        from mimeifs.ids import NodeKey
        return NodeKey.load(str(self.path / "node.key")).id

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, *args, check=True, timeout=300, input=None) -> str:
        p = subprocess.run(CLI + ["--store", str(self.path), *args], capture_output=True, text=True,
                           env=env(), timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"mimeifs {' '.join(args)} failed ({p.returncode}): {p.stderr}{p.stdout}")
        return p.stdout if check else p

    def json(self, *args):
        return json.loads(self.run(*args, "--json"))

    def serve(self, *peers: "Node", config: str | None = None) -> None:
        if config is not None:
            (self.path / "config.toml").write_text(config)
        args = ["serve", "--listen", self.addr] + [a for p in peers for a in ("--peer", p.addr)]
        self.run(*args)
        self.pid = json.loads((self.path / "mount.json").read_text())["pid"]

    def mount(self, mnt: Path, *peers: "Node") -> None:
        mnt.mkdir(exist_ok=True)
        self.mnt = mnt
        self.run("mount", str(mnt), "--listen", self.addr, *[a for p in peers for a in ("--peer", p.addr)])
        self.pid = json.loads((self.path / "mount.json").read_text())["pid"]

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def kill9(self) -> None:
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGKILL)
            wait_for(lambda: not self.alive(), 10, "the killed daemon to go")
        if self.mnt is not None:
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        self.pid = None

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            if self.mnt is not None:
                subprocess.run(CLI + ["umount", str(self.mnt)], capture_output=True, env=env(), timeout=60)
            else:
                subprocess.run(CLI + ["--store", str(self.path), "stop"], capture_output=True, env=env(), timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if self.alive():
            self.kill9()
        if self.mnt is not None and os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        self.pid = None

    def log(self) -> str:
        try:
            return (self.path / "mimeifs.log").read_text()
        except OSError:
            return ""
