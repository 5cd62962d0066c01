"""Fixtures for the db MiMei tests: a real Debian ``redis-server`` and a real mimeifs
daemon (``mimeifs serve --foreground --resp``) side by side, and a raw RESP client whose
replies (hiredis-parsed, errors as values) compare byte for byte."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hiredis
import pytest

CLI = [sys.executable, "-m", "mimeifs.cli"]
REPO = Path(__file__).resolve().parents[2]


def cli_env(store: str) -> dict:
    env = dict(os.environ, MIMEIFS_STORE=store)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def _plain(x):
    """A reply with every error (also inside arrays) as ("ERR", text)."""
    if isinstance(x, hiredis.ReplyError):
        return ("ERR", str(x))
    if isinstance(x, list):
        return [_plain(y) for y in x]
    return x


class Raw:
    """A minimal RESP client on a socket: ``cmd(*args)`` sends one command and returns
    the hiredis-parsed reply; an error reply comes back as ``("ERR", text)``."""

    def __init__(self, port: int, password: str | None = None, path: str | None = None):
        if path:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.connect(path)
        else:
            self.s = socket.create_connection(("127.0.0.1", port))
        self.r = hiredis.Reader()
        if password is not None:
            assert self.cmd("AUTH", password) == b"OK"

    def send_raw(self, data: bytes) -> None:
        self.s.sendall(data)

    def read(self, timeout: float = 10):
        self.s.settimeout(timeout)
        while True:
            x = self.r.gets()
            if x is not False:
                return _plain(x)
            data = self.s.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.r.feed(data)

    def cmd(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(a), a))
        self.s.sendall(b"".join(parts))
        return self.read()

    def close(self) -> None:
        self.s.close()


class MimeiDb:
    """A store with one db MiMei, served by a headless daemon (``mimeifs serve``) in its
    own process."""

    def __init__(self, base: Path):
        self.base = base
        self.store = str(base / "store")
        self.env = cli_env(self.store)
        self.proc = None
        self.port = None
        self.run("init")
        self.mid = self.run("create", "--type", "db", "--mark", "t").strip()
        self.token = self.run("db", "token", "t").strip()

    def run(self, *args, check=True, input=None) -> str:
        p = subprocess.run(CLI + list(args), env=self.env, capture_output=True, text=True,
                           timeout=300, input=input, check=False)
        if check and p.returncode != 0:
            raise RuntimeError(f"{args}: {p.returncode} {p.stderr}")
        return p.stdout

    def start(self) -> None:
        self.port = free_port()
        with open(self.base / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(CLI + ["serve", "--foreground", "--resp", f"127.0.0.1:{self.port}"],
                                         env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        wait_port(self.port, self.proc)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def client(self, password=None) -> Raw:
        return Raw(self.port, self.token if password is None else password)


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory):
    """A real redis-server (Debian), no persistence, loopback only."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (tools/install.sh installs it)")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(d)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, p)
        yield port
    finally:
        p.terminate()
        p.wait(10)


@pytest.fixture(scope="session")
def mm_db(tmp_path_factory):
    m = MimeiDb(tmp_path_factory.mktemp("mmdb"))
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def fresh_db(tmp_path):
    m = MimeiDb(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def pair(redis_port, mm_db):
    """(real redis client, mimeifs client), both databases empty."""
    a, b = Raw(redis_port), mm_db.client()
    assert a.cmd("FLUSHDB") == b"OK" and b.cmd("FLUSHDB") == b"OK"
    try:
        yield a, b
    finally:
        a.close()
        b.close()
