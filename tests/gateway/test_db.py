"""``/db/<id>/<ver>/<key>``: keys of a db MiMei as JSON through the gateway, with the db
door's read rights (node token or a db token for that version), via curl against a
real headless daemon."""

from __future__ import annotations

import json

import pytest

from .conftest import Node, needs

pytestmark = needs

LINES = [
    {"type": "string", "key": "greeting", "value": "hello, db"},
    {"type": "hash", "key": "user/1", "value": [["born", "1815"], ["name", "Ada"]]},
    {"type": "list", "key": "queue", "value": ["a", "b", "c"]},
    {"type": "zset", "key": "scores", "value": [["ada", 3.5], ["bob", 7]]},
]


@pytest.fixture(scope="module")
def dbnode(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("gwdb"))
    n.run("init")
    n.mid = n.run("create", "--type", "db", "--mark", "kv").stdout.strip()
    src = n.base / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in LINES))
    n.run("db", "import", n.mid, src)
    n.run("backup", n.mid)
    n.serve()
    try:
        yield n
    finally:
        n.stop()


def test_keys_of_cur_and_versions(dbnode):
    n, tok = dbnode, dbnode.token
    auth = ["-u", f"app:{tok}"]
    for x in LINES:
        path = x["key"].replace("/", "%2F")
        r = n.curl(f"/db/{n.mid}/0/{path}", *auth)
        assert r.status == 200, r
        got = json.loads(r.body)
        assert got["type"] == x["type"] and got["key"] == x["key"]
        assert r.headers["content-type"] == "application/json"
        assert "immutable" in r.headers["cache-control"] and r.headers["x-mimei-version"] == "0"
    assert json.loads(n.curl(f"/db/{n.mid}/0/greeting", *auth).body)["value"] == "hello, db"
    assert json.loads(n.curl(f"/db/{n.mid}/0/user/1", *auth).body)["value"] == [["born", "1815"], ["name", "Ada"]]
    assert json.loads(n.curl(f"/db/{n.mid}/0/queue", *auth).body)["value"] == ["a", "b", "c"]
    # cur moves on, the version does not
    (n.base / "more.jsonl").write_text(json.dumps({"type": "string", "key": "greeting", "value": "changed"}) + "\n")
    n.run("db", "import", n.mid, n.base / "more.jsonl")
    r = n.curl(f"/db/{n.mid}/cur/greeting", *auth)
    assert json.loads(r.body)["value"] == "changed" and r.headers["cache-control"] == "no-cache"
    assert json.loads(n.curl(f"/db/{n.mid}/0/greeting", *auth).body)["value"] == "hello, db"
    r = n.curl("/db/kv/last/greeting", *auth)  # by mark, last = 0
    assert r.status == 200 and r.headers["x-mimei-version"] == "0"
    etag = r.headers["etag"]
    assert n.curl("/db/kv/0/greeting", *auth, "-H", f"If-None-Match: {etag}").status == 304
    assert n.curl(f"/db/{n.mid}/0/nosuchkey", *auth).status == 404
    assert n.curl(f"/db/{n.mid}/9/greeting", *auth).status == 404
    assert n.curl(f"/db/{'0' * 40}/0/greeting", *auth).status == 404


def test_db_read_rights(dbnode):
    n = dbnode
    ro0 = n.run("db", "token", f"{n.mid}@0", "--read-only").stdout.strip()
    cur = n.run("db", "token", n.mid).stdout.strip()
    assert n.curl(f"/db/{n.mid}/0/greeting").status == 401  # public file rights do not open a db
    assert n.curl(f"/db/{n.mid}/0/greeting", "-u", "x:wrong").status == 401
    assert n.curl(f"/db/{n.mid}/0/greeting?token={ro0}").status == 200
    assert n.curl(f"/db/{n.mid}/0/greeting", "-H", f"Authorization: Bearer {ro0}").status == 200
    assert n.curl(f"/db/{n.mid}/cur/greeting?token={ro0}").status == 401  # a v/0 token is not cur's
    assert n.curl(f"/db/{n.mid}/cur/greeting?token={cur}").status == 200
    assert n.curl(f"/db/{n.mid}/0/greeting?token={cur}").status == 401
    forged = ro0[:-1] + ("0" if ro0[-1] != "0" else "1")
    assert n.curl(f"/db/{n.mid}/0/greeting?token={forged}").status == 401


def test_db_paths_for_other_things(dbnode, tmp_path):
    n, tok = dbnode, dbnode.token
    fs = n.run("create", "--type", "fs", "--mark", "files").stdout.strip()
    assert n.curl(f"/db/{fs}/cur/x", "-u", f"a:{tok}").status == 404  # not a db
    for bad in (f"/db/{n.mid}", f"/db/{n.mid}/0", f"/db/{n.mid}/0/", f"/db/{n.mid}/../../etc/passwd",
                f"/db/{n.mid}/zero/greeting", f"/db/{n.mid}/0/a%00b"):
        r = n.curl(bad, "-u", f"a:{tok}")
        assert r.status in (400, 404), (bad, r)
