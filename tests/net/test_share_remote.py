"""A `.mmfs` share of another node's MiMei while the network node runs (issue 13):
two real daemons on loopback, the share shows the author's newest version through the
reader's mount and follows the author's next backup."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .procs import Node, wait_for
from .test_nodes import FAST, diff, make_tree

pytestmark = pytest.mark.timeout(240)

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)


def test_a_share_of_a_remote_mimei_follows_its_author(tmp_path):
    src = tmp_path / "src"
    make_tree(src, big=1 << 20)
    a, b = Node(tmp_path / "a", "a"), Node(tmp_path / "b", "b")
    try:
        for n in (a, b):
            (n.path / "config.toml").write_text(FAST)
        mid = a.run("create", "--type", "fs", "--mark", "photos").strip()
        a.run("import", str(src), mid, "--backup")
        a.serve()
        (b.path / "shares" / "theirs.mmfs").write_text(f'mimei = "{mid}"\nversion = "last"\n')
        b.mount(tmp_path / "mb", a)
        share = tmp_path / "mb" / "shared" / "theirs"

        def same():
            try:
                return diff(src, share)[0] == 0
            except OSError:
                return False
        wait_for(same, 60, "the share to show the remote MiMei")
        rows = json.loads(b.run("shares", "--json"))["shares"]
        row = next(r for r in rows if r["name"] == "theirs")
        assert row["mimei"] == mid, row
        # the author backs up a change; the share follows it
        (src / "added.txt").write_text("a new file\n")
        a.run("import", str(src), mid, "--backup")
        wait_for(lambda: (share / "added.txt").exists() and same(), 60, "the share to follow v/1")
        assert os.readlink(tmp_path / "mb" / "mm" / mid / "last") == "v/1"
    finally:
        b.stop()
        a.stop()
