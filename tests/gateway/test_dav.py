"""WebDAV under /dav/ with real clients: rclone copies a tree into cur and back
(`diff -r` clean), versions refuse writes, unauthenticated writes are refused."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .conftest import needs

pytestmark = [needs, pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone")]


def rclone(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RCLONE_CONFIG="/dev/null")
    return subprocess.run(["rclone", *args], capture_output=True, text=True, timeout=300, env=env)


def remote(site, path: str, token: str | None) -> str:
    """An rclone remote for ``/dav`` + ``path``: its last part is a directory inside the
    remote's root (rclone never creates its root itself)."""
    base, _, sub = path.rpartition("/")
    spec = f":webdav,url='{site.url('/dav' + base)}'"
    if token is not None:
        obscured = rclone("obscure", token).stdout.strip()
        spec += f",user=me,pass='{obscured}'"
    return spec + ":" + sub


def make_tree(root):
    (root / "d1" / "d2").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(1, 6):
        (root / "d1" / f"f{i}.bin").write_bytes(os.urandom(i * 37000))
    (root / "d1" / "d2" / "note.txt").write_text("deep\n")
    (root / "big.bin").write_bytes(os.urandom(5 << 20))
    (root / "name with space & ü.txt").write_text("odd name\n")


def test_rclone_round_trip_through_cur(site, tmp_path):
    tree, back = tmp_path / "tree", tmp_path / "back"
    make_tree(tree)
    tok = site.token
    p = rclone("copy", "--create-empty-src-dirs", str(tree), remote(site, f"/mm/{site.mid}/cur/up", tok))
    assert p.returncode == 0, p.stderr
    p = rclone("copy", "--create-empty-src-dirs", remote(site, f"/mm/{site.mid}/cur/up", tok), str(back))
    assert p.returncode == 0, p.stderr
    d = subprocess.run(["diff", "-r", str(tree), str(back)], capture_output=True, text=True)
    assert d.returncode == 0, d.stdout + d.stderr
    # what went in is cur: a backup freezes it and HTTP serves it from the new version
    n = int(site.run("backup", site.mid).stdout.split()[0])
    r = site.curl(f"/mm/{site.mid}/{n}/up/big.bin")
    assert r.status == 200 and r.body == (tree / "big.bin").read_bytes()
    # rename (MOVE) and delete inside cur
    auth = ["-u", f"me:{tok}"]
    mv = site.curl(f"/dav/mm/{site.mid}/cur/up/d1/f1.bin", *auth, "-H",
                   f"Destination: {site.url(f'/dav/mm/{site.mid}/cur/up/d1/moved.bin')}", method="MOVE")
    assert mv.status in (201, 204), mv
    assert site.curl(f"/mm/{site.mid}/cur/up/d1/moved.bin").body == (tree / "d1" / "f1.bin").read_bytes()
    assert site.curl(f"/mm/{site.mid}/cur/up/d1/f1.bin").status == 404
    rm = site.curl(f"/dav/mm/{site.mid}/cur/up/d1", *auth, method="DELETE")
    assert rm.status == 204, rm
    assert site.curl(f"/mm/{site.mid}/cur/up/d1/").status == 404
    # a ranged GET through WebDAV
    r = site.curl(f"/dav/mm/{site.mid}/{n}/up/big.bin", "-r", "10-19")
    assert r.status == 206 and r.body == (tree / "big.bin").read_bytes()[10:20]


def test_versions_and_listings_refuse_writes(site, tmp_path):
    tok = site.token
    auth = ["-u", f"me:{tok}"]
    v0 = f"/dav/mm/{site.mid}/0"
    for path, method, extra in [
        (f"{v0}/a.txt", "PUT", ["--data-binary", "x"]),
        (f"{v0}/new.txt", "PUT", ["--data-binary", "x"]),
        (f"{v0}/newdir", "MKCOL", []),
        (f"{v0}/a.txt", "DELETE", []),
        (f"{v0}/sub", "DELETE", []),
        (f"/dav/mm/{site.mid}/last/a.txt", "PUT", ["--data-binary", "x"]),
        ("/dav/name/site/0/a.txt", "DELETE", []),
        (f"/dav/mm/{site.mid}/0", "DELETE", []),
        ("/dav/mm/newdir", "MKCOL", []),
        (f"{v0}/a.txt", "MOVE", ["-H", f"Destination: {site.url(f'/dav/mm/{site.mid}/cur/stolen.txt')}"]),
        (f"/dav/mm/{site.mid}/cur/a.txt", "MOVE", ["-H", f"Destination: {site.url(f'/dav/mm/{site.mid}/0/x.txt')}"]),
    ]:
        r = site.curl(path, *auth, *extra, method=method)
        assert r.status in (403, 405, 409), (path, method, r)
    assert site.curl(f"/mm/{site.mid}/0/a.txt").body == b"hello gateway\n"
    assert site.curl(f"/mm/{site.mid}/cur/a.txt").body == b"hello gateway\n"
    assert site.curl(f"/mm/{site.mid}/0/new.txt").status == 404
    p = rclone("copy", str(site.src / "sub"), remote(site, f"/mm/{site.mid}/0/x", tok))
    assert p.returncode != 0
    assert site.curl(f"/mm/{site.mid}/0/x/").status == 404


def test_unauthenticated_writes_are_refused(site):
    cur = f"/dav/mm/{site.mid}/cur"
    for creds in ([], ["-u", "me:wrong"], ["-H", "Authorization: Bearer nope"]):
        for path, method, extra in [
            (f"{cur}/a.txt", "PUT", ["--data-binary", "evil"]),
            (f"{cur}/evil.txt", "PUT", ["--data-binary", "evil"]),
            (f"{cur}/evildir", "MKCOL", []),
            (f"{cur}/a.txt", "DELETE", []),
            (f"{cur}/a.txt", "MOVE", ["-H", f"Destination: {site.url(cur + '/b.txt')}"]),
            (f"{cur}/a.txt", "PROPPATCH", ["--data-binary", "<x/>"]),
        ]:
            r = site.curl(path, *creds, *extra, method=method)
            assert r.status == 401, (path, method, creds, r)
    assert site.curl(f"/mm/{site.mid}/cur/a.txt").body == b"hello gateway\n"
    assert site.curl(f"/mm/{site.mid}/cur/evil.txt").status == 404
    assert site.curl(f"/mm/{site.mid}/cur/evildir/").status == 404
    # reading a public MiMei needs no token
    r = site.curl(f"{cur}/", "-H", "Depth: 1", method="PROPFIND")
    assert r.status == 207 and b"a.txt" in r.body
    # the token in the URL works for applications
    r = site.curl(f"{cur}/by-url.txt?token={site.token}", "--data-binary", "ok", method="PUT")
    assert r.status in (201, 204), r
    assert site.curl(f"/mm/{site.mid}/cur/by-url.txt").body == b"ok"


def test_dav_paths_never_leave_the_view(site):
    tok = site.token
    auth = ["-u", f"me:{tok}"]
    cur = f"/dav/mm/{site.mid}/cur"
    for path, method, extra in [
        ("/dav//etc/passwd", "GET", []),
        ("/dav//tmp/evil.txt", "PUT", ["--data-binary", "x"]),
        (f"{cur}/../../../../tmp/evil.txt", "PUT", ["--data-binary", "x"]),
        (f"{cur}/%2e%2e/%2e%2e/%2e%2e/tmp/evil.txt", "PUT", ["--data-binary", "x"]),
        (f"{cur}/evil%00.txt", "PUT", ["--data-binary", "x"]),
        (f"{cur}/a.txt", "MOVE", ["-H", "Destination: /etc/evil.txt"]),
        (f"{cur}/a.txt", "MOVE", ["-H", f"Destination: {site.url(cur + '/../../../../tmp/evil.txt')}"]),
        (f"{cur}/a.txt", "COPY", ["-H", f"Destination: {site.url(cur + '/%2e%2e/%2e%2e/evil.txt')}"]),
        (f"{cur}/a.txt", "COPY", ["-H", "Destination: http://127.0.0.2:1/elsewhere.txt"]),
    ]:
        r = site.curl(path, *auth, *extra, method=method)
        assert r.status >= 400, (path, method, r)
        assert b"root:" not in r.body
    assert not os.path.exists("/tmp/evil.txt") and not os.path.exists("/etc/evil.txt")
    assert site.curl(f"/mm/{site.mid}/cur/a.txt").body == b"hello gateway\n"
    listing = site.curl(f"{cur}/", "-H", "Depth: 1", method="PROPFIND").body
    assert b"evil" not in listing


def test_unauthenticated_bodies_are_refused_before_they_are_read(site):
    """hypercorn's WSGI support would hold a whole body in memory before WsgiDAV checks
    the token: a write without it is answered at its headers."""
    import socket
    import time
    for creds, want in (("", b" 401 "), (f"Authorization: Bearer {'0' * 64}\r\n", b" 401 ")):
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
            s.sendall(f"PUT /dav/mm/{site.mid}/cur/huge.bin HTTP/1.1\r\nHost: x\r\n{creds}"
                      f"Content-Length: {64 << 30}\r\n\r\n".encode() + b"x" * 65536)
            t = time.monotonic()
            got = s.recv(65536)
            assert want in got.split(b"\r\n", 1)[0], got[:200]
            assert time.monotonic() - t < 5
    tok = site.token
    r = site.curl(f"/dav/mm/{site.mid}/cur/huge.bin", "-u", f"me:{tok}", "-H",
                  f"Content-Length: {64 << 30}", "--data-binary", "x", method="PUT")
    assert r.status in (400, 413), r  # over the limit even with the token
    assert site.curl(f"/mm/{site.mid}/cur/huge.bin").status == 404
