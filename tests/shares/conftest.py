"""Fixtures for the share tests: a real store and mount (the FUSE tests' helpers), and
helpers to read what ``mimeifs shares --json`` and the mount say."""

from __future__ import annotations

import json
import os

import pytest

from fuse.conftest import MimeiFS, mounted, pid_alive, wait_for  # noqa: F401  (re-exported)


class SharedFS(MimeiFS):
    """A mounted store with share helpers."""

    @property
    def folder(self):
        return self.store / "shares"

    def shared(self, name: str = ""):
        return self.mnt / "shared" / name if name else self.mnt / "shared"

    def shares(self) -> dict:
        """``{name: entry}`` from ``mimeifs shares --json``."""
        out = json.loads(self.run("shares", "--json").stdout)
        return {d["name"]: d for d in out["shares"]}

    def wait_share(self, name: str, pred, what: str, timeout: float = 10.0):
        return wait_for(lambda: (lambda d: d if d is not None and pred(d) else None)(
            self.shares().get(name)), timeout, what, every=0.1)

    def assert_alive(self):
        pid = self.daemon_pid()
        assert pid and pid_alive(pid) and os.path.ismount(self.mnt), self.log_tail()


@pytest.fixture(scope="module")
def sfs(tmp_path_factory):
    """One store mounted for a test module; tests use share names of their own."""
    with mounted(SharedFS(tmp_path_factory.mktemp("shares"))) as m:
        yield m
