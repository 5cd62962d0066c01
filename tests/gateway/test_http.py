"""The HTTP door with curl against a real headless daemon (`mimeifs serve --http`):
URL forms, headers, ranges, conditional requests, listings, rights, traversal."""

from __future__ import annotations

import json
import os

import blake3
import pytest

from .conftest import needs

pytestmark = needs


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_version_file_headers(site):
    r = site.curl(f"/mm/{site.mid}/0/a.txt")
    assert r.status == 200
    assert r.body == b"hello gateway\n"
    assert r.headers["etag"] == f'"{b3(r.body)}"'
    assert "immutable" in r.headers["cache-control"]
    assert r.headers["x-mimei-id"] == site.mid
    assert r.headers["x-mimei-version"] == "0"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-length"] == str(len(r.body))
    assert site.curl(f"/mm/{site.mid}/0/sub/page.html").headers["content-type"].startswith("text/html")
    assert site.curl(f"/mm/{site.mid}/0/sub/big.bin").headers["content-type"] == "application/octet-stream"


def test_cur_last_release_are_not_immutable(site):
    last = site.curl(f"/mm/{site.mid}/last/a.txt")
    assert last.status == 200 and last.headers["x-mimei-version"] == "0"
    assert "immutable" not in last.headers["cache-control"]
    cur = site.curl(f"/mm/{site.mid}/cur/a.txt")
    assert cur.status == 200 and cur.body == b"hello gateway\n"
    assert cur.headers["x-mimei-version"] == "cur"
    assert "immutable" not in cur.headers["cache-control"]
    assert cur.headers["etag"].startswith('W/"')
    assert site.curl(f"/mm/{site.mid}/release/a.txt").status == 404
    site.run("release", site.mid, "0")
    rel = site.curl(f"/mm/{site.mid}/release/a.txt")
    assert rel.status == 200 and rel.headers["x-mimei-version"] == "0"
    assert "immutable" not in rel.headers["cache-control"]
    assert site.curl(f"/mm/{site.mid}/7/a.txt").status == 404


def test_leither_name_and_mac_forms(site):
    want = (site.src / "sub" / "big.bin").read_bytes()
    for path in (f"/{site.mid}:0/sub/big.bin", "/name/site/0/sub/big.bin",
                 "/name/site/last/sub/big.bin", f"/mm/{site.mid}/v/0/sub/big.bin",
                 f"/{site.mid}:cur/sub/big.bin"):
        r = site.curl(path)
        assert r.status == 200, path
        assert r.body == want, path
    h = site.run("put", site.src / "sub" / "page.html").stdout.strip()
    r = site.curl(f"/mac/{h}")
    assert r.status == 200 and r.body == b"<p>page</p>"
    assert r.headers["etag"] == f'"{h}"' and "immutable" in r.headers["cache-control"]
    assert site.curl("/mac/" + "0" * 64).status == 404
    assert site.curl("/name/nosuchmark/0/a.txt").status == 404


def test_ranges(site):
    data = (site.src / "sub" / "big.bin").read_bytes()
    size = len(data)
    path = f"/mm/{site.mid}/0/sub/big.bin"
    r = site.curl(path, "-r", "100-199")
    assert r.status == 206 and r.body == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{size}"
    r = site.curl(path, "-r", "-1000")
    assert r.status == 206 and r.body == data[-1000:]
    r = site.curl(path, "-r", f"{size - 10}-")
    assert r.status == 206 and r.body == data[-10:]
    r = site.curl(path, "-r", f"1000-{size * 2}")  # clipped to the end
    assert r.status == 206 and r.body == data[1000:]
    r = site.curl(path, "-r", f"{size}-")
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{size}"
    r = site.curl(path, "-r", "0-1,5-9")  # several ranges: the whole file is allowed
    assert r.status == 200 and r.body == data
    r = site.curl(path, "-H", "If-Range: \"nope\"", "-r", "0-9")
    assert r.status == 200 and len(r.body) == size
    r = site.curl(f"/mm/{site.mid}/cur/sub/big.bin", "-r", "2000000-2000099")  # cur too
    assert r.status == 206 and r.body == data[2000000:2000100]


def test_conditional_and_head(site):
    path = f"/mm/{site.mid}/0/sub/big.bin"
    etag = site.curl(path, "-I").headers["etag"]
    r = site.curl(path, "-H", f"If-None-Match: {etag}")
    assert r.status == 304 and r.body == b"" and r.headers["etag"] == etag
    r = site.curl(path, "-H", "If-None-Match: \"other\", " + etag)
    assert r.status == 304
    r = site.curl(path, "-H", "If-None-Match: \"other\"")
    assert r.status == 200 and len(r.body) == 3 << 20
    h = site.curl(path, "-I")
    assert h.status == 200 and h.body == b"" and h.headers["content-length"] == str(3 << 20)
    cur = site.curl(f"/mm/{site.mid}/cur/a.txt")
    assert site.curl(f"/mm/{site.mid}/cur/a.txt", "-H", f"If-None-Match: {cur.headers['etag']}").status == 304


def test_directories(site):
    r = site.curl(f"/mm/{site.mid}/0/sub")
    assert r.status == 301 and r.headers["location"].endswith("/0/sub/")
    r = site.curl(f"/mm/{site.mid}/0/sub/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    page = r.body.decode()
    big = (site.src / "sub" / "big.bin").read_bytes()
    assert 'href="big.bin"' in page and str(len(big)) in page and b3(big) in page
    r = site.curl(f"/mm/{site.mid}/0/app/")
    assert r.status == 200 and b"app index" in r.body
    assert r.headers["etag"] == f'"{b3((site.src / "app" / "index.html").read_bytes())}"'
    top = site.curl(f"/mm/{site.mid}/").body.decode()
    assert 'href="cur/"' in top and 'href="0/"' in top and 'href="last/"' in top
    assert site.mid in site.curl("/mm/").body.decode()
    assert "site" in site.curl("/name/").body.decode()
    assert 'href="mm/"' in site.curl("/").body.decode()


def test_links(site):
    r = site.curl(f"/mm/{site.mid}/0/rel_link")
    assert r.status == 302 and r.headers["location"] == "a.txt"
    r = site.curl(f"/mm/{site.mid}/0/abs_link")
    assert r.status == 404 and b"root:" not in r.body


@pytest.mark.parametrize("path", [
    "/mm/{mid}/0/../../../../etc/passwd",
    "/mm/{mid}/0/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/mm/{mid}/0/sub/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/mm/{mid}/0/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "//etc/passwd",
    "/etc/passwd",
    "/mm/{mid}/0/a.txt%00.html",
    "/mm/{mid}/0/%00",
    "/{mid}:0/../../etc/passwd",
    "/name/site/cur/%2e%2e/%2e%2e/etc/passwd",
    "/mm/%2e%2e/etc/passwd",
    "/dav/../etc/passwd",
    "/dav/mm/{mid}/cur/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
])
def test_traversal_never_leaves_the_view(site, path):
    r = site.curl(path.format(mid=site.mid))
    assert r.status in (400, 404), r
    assert b"root:" not in r.body


def test_only_reads_outside_dav(site):
    r = site.curl(f"/mm/{site.mid}/cur/a.txt", "-d", "x", method="POST")
    assert r.status == 405
    r = site.curl(f"/mm/{site.mid}/cur/new.txt", "--data-binary", "x", method="PUT")
    assert r.status == 405
    assert site.curl(f"/mm/{site.mid}/cur/new.txt").status == 404


def _set_rights(store, mid: str, rights: int) -> None:
    """The author publishes a new signed info record of ``mid`` with ``rights``."""
    from mimeifs import ids
    from mimeifs.engine.db import Store
    s = Store.open(str(store))
    try:
        d = s.db("mimei")
        with s.write() as txn:
            info = json.loads(txn.get(bytes.fromhex(mid), db=d))
            info["rights"] = rights
            txn.put(bytes.fromhex(mid), ids.canonical(s.key.sign_record(info)), db=d)
    finally:
        s.close()


def test_private_mimei_needs_the_token(site):
    mid = site.create("private")
    _set_rights(site.store, mid, 0o640)
    site.run("import", site.src, mid, "--backup")
    path = f"/mm/{mid}/0/a.txt"
    r = site.curl(path)
    assert r.status == 401 and "basic" in r.headers["www-authenticate"].lower()
    assert b"hello" not in r.body
    assert site.curl(path, "-u", "x:wrong").status == 401
    assert site.curl(path + "?token=wrong").status == 401
    tok = site.token
    assert len(tok) == 64
    assert site.curl(path, "-u", f"anyone:{tok}").body == b"hello gateway\n"
    assert site.curl(path, "-H", f"Authorization: Bearer {tok}").status == 200
    assert site.curl(f"{path}?token={tok}").status == 200
    assert site.curl(f"/dav/mm/{mid}/0/a.txt").status == 401
    assert site.curl(f"/dav/mm/{mid}/0/a.txt", "-u", f"x:{tok}").body == b"hello gateway\n"
    # the public MiMei next to it still reads without a token
    assert site.curl(f"/mm/{site.mid}/0/a.txt").status == 200


def test_names_that_are_not_utf8(site, tmp_path):
    src = tmp_path / "odd"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"bad\xff\xfename.txt"), "wb") as f:
        f.write(b"odd")
    (src / "ok.txt").write_text("ok")
    mid = site.create("odd-names")
    site.run("import", src, mid, "--backup")
    for ver in ("0", "cur"):
        assert site.curl(f"/mm/{mid}/{ver}/").status == 200
        r = site.curl(f"/dav/mm/{mid}/{ver}/", "-H", "Depth: 1", method="PROPFIND")
        assert r.status == 207 and b"ok.txt" in r.body
        assert site.curl(f"/mm/{mid}/{ver}/ok.txt").body == b"ok"


@pytest.mark.parametrize("target", [
    "http://127.0.0.1/etc/passwd",
    "http://127.0.0.1/mm/{mid}/0/../../../../etc/passwd",
    "/mm/{mid}/0/..\\..\\..\\..\\etc\\passwd",
    "/mm/{mid}/0/%2e%2e%5c%2e%2e%5cetc%5cpasswd",
    "*",
    "../../etc/passwd",
])
def test_raw_request_targets(site, target):
    """What curl would normalize, sent as bytes on a socket."""
    import socket
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
        s.sendall(f"GET {target.format(mid=site.mid)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    status = int(got.split(b" ", 2)[1])
    assert status in (400, 404), got[:300]
    assert b"root:" not in got
