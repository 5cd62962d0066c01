"""The CLI and the control file as a careful user meets them (issue 11 items 6-11): bad
marks refused, ``backup ''`` a clean error, one mark per MiMei, every control-file field
checked, ID prefixes, ``--json`` everywhere, no empty backups, ``log`` marking the
release, ``refs``/``umount`` saying what they did, and the messages that misled."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time

import pytest

from mimeifs import ids

from .conftest import CLI, MimeiFS, cli_env, pid_alive


@pytest.fixture
def store(tmp_path):
    """A new store, not mounted (tests mount it when they need to)."""
    m = MimeiFS(tmp_path)
    m.init()
    try:
        yield m
    finally:
        m.cleanup(remove_mountpoint=True)


def fails(m: MimeiFS, *args) -> str:
    """Run the CLI, expect exit 1 with an error message and no traceback; returns stderr."""
    p = m.run(*args, check=False)
    assert p.returncode == 1, (args, p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.startswith("Error: "), (args, p.stderr)
    return p.stderr


BAD_MARKS = [".", "..", "", "a/b", "a\nb", "tab\tx", "x" * 300, "ab" * 20]


def test_bad_marks_are_refused_with_a_clear_message(store):
    m = store
    src = m.create("src")
    m.run("backup", src, "--allow-empty")
    for mark in BAD_MARKS:
        assert "bad mark" in fails(m, "create", "--type", "fs", "--mark", mark), mark
        assert "bad mark" in fails(m, "fork", src, "--mark", mark), mark
    assert [r["mark"] for r in json.loads(m.run("list", "--json").stdout)] == ["src"]
    # inside a mount, "." is the directory you are in, never a MiMei marked "."
    mid = m.create("here")
    m.mount()
    (m.cur(mid) / "sub").mkdir()
    p = subprocess.run([*CLI, "--store", str(m.store), "info", ".", "--json"], capture_output=True,
                       text=True, env=cli_env(), cwd=m.cur(mid) / "sub", timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout)["id"] == mid, p.stderr


def test_backup_of_an_empty_spec_is_a_clean_error(store):
    m = store
    m.create("x")
    for spec in ("", " ", "\n"):
        err = fails(m, "backup", spec)
        assert "BadValsize" not in err and "no MiMei" in err, err


def test_one_mark_one_mimei_for_create_and_fork(store):
    m = store
    a = m.create("photos")
    m.run("backup", a, "--allow-empty")
    err = fails(m, "create", "--type", "file", "--mark", "photos")
    assert a in err and "one MiMei per author" in err
    err = fails(m, "fork", a, "--mark", "photos")
    assert a in err and "one MiMei per author" in err
    assert m.run("create", "--type", "fs", "--mark", "photos").stdout.strip() == a  # idempotent


def _ctl(m: MimeiFS, payload: bytes, token: str | None):
    """setxattr a raw command; (errno of the setxattr or 0, answer under token or None)."""
    ctrl = m.mnt / ".__mimeifs_ctrl__"
    try:
        os.setxattr(ctrl, "user.mimeifs.cmd", payload)
        code = 0
    except OSError as e:
        code = e.errno
    ans = None
    if token is not None:
        try:
            ans = json.loads(os.getxattr(ctrl, f"user.mimeifs.result.{token}"))
        except OSError:
            pass
    return code, ans


def test_control_file_checks_every_field(fresh_mfs):
    m = fresh_mfs
    mid = m.create("c")
    (m.cur(mid) / "f").write_text("x")
    m.backup(mid)
    pid = m.daemon_pid()
    log_before = len(m.log_text())
    cases = [  # (payload, token the answer is kept under or None, words of the reason)
        (json.dumps({"token": "m1", "op": "backup", "id": mid, "memo": [1, 2]}), "m1", "memo must be a string"),
        (json.dumps({"token": "m2", "op": "backup", "id": mid, "memo": "y" * 9000}), "m2", "at most 4096"),
        ('{"token": "n1", "op": "restore", "id": "%s", "n": 1e400}' % mid, "n1", "no version inf"),
        (json.dumps({"token": "n2", "op": "restore", "id": mid, "n": 10 ** 30}), "n2", "n is an integer"),
        (json.dumps({"token": "k1", "op": "fork", "id": mid, "mark": None}), "k1", "a mark is a string"),
        (json.dumps({"token": "k2", "op": "fork", "id": mid, "mark": "."}), "k2", "bad mark"),
        (json.dumps({"token": "u1", "op": "rm", "id": mid, "force": True}), "u1", "unknown field"),
        ("[" * 30_000 + "]" * 30_000, None, None),                  # deep JSON, too big
        ('{"token": "d1", "op": ' + "[" * 3000 + "]" * 3000 + "}", None, None),
        (json.dumps({"token": "z" * 100, "op": "ping"}), None, None),
        ("x" * 60_000, None, None),
    ]
    for payload, token, why in cases:
        code, ans = _ctl(m, payload.encode(), token)
        if token is None:
            assert code == errno.EINVAL, payload[:80]
        else:
            assert code == 0 and ans is not None, payload[:80]
            assert ans["ok"] is False and ans["errno"] == errno.EINVAL and why in ans["error"], (payload[:80], ans)
    # nothing happened, nothing crashed, the log has no traceback and no payloads
    assert m.daemon_pid() == pid and pid_alive(pid)
    assert [r["n"] for r in m.log(mid)] == [0]
    assert (m.cur(mid) / "f").read_text() == "x"
    new_log = m.log_text()[log_before:]
    assert "Traceback" not in new_log and "RecursionError" not in new_log
    assert "y" * 100 not in new_log and "[[[[[[[[" not in new_log and "x" * 100 not in new_log
    # and the CLI hears the reason of a refused field
    (m.cur(mid) / "f").write_text("changed")
    err = fails(m, "backup", mid, "-m", "z" * 5000)
    assert "memo" in err and "4096" in err


def test_id_prefixes_work_wherever_an_id_does(store):
    m = store
    a = m.create("p")
    node = json.loads(m.run("info", a, "--json").stdout)["author"]
    # two marks whose IDs share their first four hex digits (a birthday search, offline)
    seen, i = {}, 0
    while True:
        pre = ids.mimei_id(node, "", "fs", f"q{i}")[:4]
        if pre in seen and pre != a[:4]:
            break
        seen.setdefault(pre, f"q{i}")
        i += 1
    x, y = m.create(seen[pre]), m.create(f"q{i}")
    assert x[:4] == y[:4] == pre
    k = max(4, *(next(j for j in range(40) if a[j] != b[j]) + 1 for b in (x, y)))
    m.run("backup", a[:k], "--allow-empty")
    assert [r["n"] for r in m.log(a[:k])] == [0]
    assert json.loads(m.run("info", a[:k], "--json").stdout)["id"] == a
    assert m.run("fork", f"{a[:k]}@0", "--mark", "f").returncode == 0
    # an ambiguous prefix is refused, naming the candidates; one digit more decides
    err = fails(m, "log", pre)
    assert "ambiguous" in err and x in err and y in err
    d = next(j for j in range(40) if x[j] != y[j]) + 1
    assert m.run("refs", x[:d], "--json").stdout.count(x) == 1


def test_json_on_every_command_that_prints(store, tmp_path):
    m = store
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    (tmp_path / "mac").write_text("mac file")

    def j(*args):
        p = m.run(*args, "--json")
        return json.loads(p.stdout)

    mid = j("create", "--type", "fs", "--mark", "j")["id"]
    other = j("create", "--type", "fs", "--mark", "k")["id"]
    assert j("info", mid)["mark"] == "j"
    imp = j("import", src, mid, "--backup")
    assert imp["import"]["files"] == 1 and imp["backup"]["n"] == 0
    (src / "b").write_text("b")
    m.run("import", src, mid)
    assert j("backup", mid, "-m", "two")["n"] == 1
    assert j("release", mid, "0")["n"] == 0
    assert j("restore", mid, "1") == {"id": mid, "n": 1}
    assert j("log", mid)[0]["released"] is True
    fk = j("fork", mid, "--mark", "fk")
    assert fk["fork_of"] == mid
    assert j("refs", mid) == {"id": mid, "out": [], "in": []}
    assert sorted(r["id"] for r in j("list")) == sorted([mid, other, fk["id"]])
    assert j("put", tmp_path / "mac")["hash"] == __import__("blake3").blake3(b"mac file").hexdigest()
    assert j("check")["clean"] is True
    assert "chunks_freed" in j("gc")
    assert j("rm", other) == {"removed": other}
    mounted = j("mount", m.mnt)
    m.pids.append(mounted["pid"])
    assert mounted["mountpoint"] == str(m.mnt) and pid_alive(mounted["pid"])
    gone = j("umount", m.mnt)
    assert gone["unmounted"] == str(m.mnt) and gone["daemon_exited"] is True
    served = j("serve")
    m.pids.append(served["pid"])
    assert j("stop") == {"stopped": served["pid"]} and not pid_alive(served["pid"])
    # a fresh store's init too
    p = subprocess.run([*CLI, "--store", str(tmp_path / "s2"), "init", "--json"], capture_output=True,
                       text=True, env=cli_env(), timeout=60)
    assert len(json.loads(p.stdout)["node"]) == 40


@pytest.mark.parametrize("mounted", [False, True], ids=["store", "daemon"])
def test_backup_of_an_unchanged_cur_says_so_and_makes_no_version(store, mounted):
    m = store
    mid = m.create("u")
    if mounted:
        m.mount()
        (m.cur(mid) / "f").write_text("one")
    assert m.backup(mid) == 0
    p = m.run("backup", mid, "-m", "again")
    assert p.stdout.startswith("nothing to back up: cur equals v/0") and "--allow-empty" in p.stdout
    assert json.loads(m.run("backup", mid, "--json").stdout)["unchanged"] is True
    assert [r["n"] for r in m.log(mid)] == [0]
    assert m.run("backup", mid, "--allow-empty").stdout.split()[0] == "1"
    assert [r["n"] for r in m.log(mid)] == [0, 1]
    if mounted:
        assert sorted(os.listdir(m.mm(mid) / "v")) == ["0", "1"]


def test_log_marks_the_released_version(store):
    m = store
    mid = m.create("r")
    for _ in range(3):
        m.run("backup", mid, "--allow-empty")
    m.run("release", mid, "1")
    lines = m.run("log", mid).stdout.splitlines()
    assert [ln.endswith("(release)") for ln in lines] == [False, True, False], lines
    assert [r["released"] for r in m.log(mid)] == [False, True, False]


def test_refs_and_umount_say_what_they_did(store):
    m = store
    a, b = m.create("a"), m.create("b")
    out = m.run("refs", a).stdout
    assert out.strip() == f"{a}: 0 references out (of cur), referred to by 0 MiMei (cur or versions)"
    m.mount()
    os.symlink(f"../../{b}", m.mm(a) / ".refs" / b)
    assert m.run("refs", a).stdout.splitlines() == [
        f"out {b}", f"{a}: 1 reference out (of cur), referred to by 0 MiMei (cur or versions)"]
    pid = m.daemon_pid()
    out = m.run("umount", m.mnt).stdout.strip()
    assert out == f"unmounted {m.mnt}; daemon {pid} exited", out
    assert not os.path.ismount(m.mnt)


def test_messages_that_misled(store, tmp_path):
    m = store
    # a missing mountpoint is named as such (not "not a directory"); so is unmounting
    # what is not mounted
    err = fails(m, "mount", tmp_path / "nope")
    assert "does not exist" in err and "not a directory" not in err
    assert "does not exist" in fails(m, "umount", tmp_path / "nope")
    assert "nothing is mounted at" in fails(m, "umount", tmp_path)
    # rm of a MiMei referenced only from a version says what can be done
    a, t = m.create("a"), m.create("t")
    m.mount()
    os.symlink(f"../../{t}", m.mm(a) / ".refs" / t)
    m.run("backup", a, "--allow-empty")
    os.unlink(m.mm(a) / ".refs" / t)
    err = fails(m, "rm", t)
    assert "remove those references first" not in err and "v/0" in err and a in err
    assert "versions never change" in err
    m.umount()
    # the ledger: a negative amount, a proof file that is not there
    m.run("ledger", "init", "--org", "acme")
    m.run("ledger", "join", "bob")
    m.run("ledger", "approve", "bob")
    m.run("ledger", "pulse")
    err = fails(m, "ledger", "transfer", "me", "bob", "--", "-5")
    assert "amount must be positive" in err and "too large" not in err
    err = fails(m, "ledger", "verify", str(tmp_path / "nosuchfile"), "--root", "00" * 32)
    assert "no such file" in err and "version-1" not in err
    # an expired letter of credit: its time as ISO 8601, not a raw epoch
    peer = "ab" * 20
    m.run("credit", "grant", peer, "--cap", "1MiB", "--expires", "1s")
    time.sleep(1.2)
    err = fails(m, "credit", "use", peer, "1")
    assert "expired at" in err
    when = err.split("expired at ")[1].split()[0]
    assert time.strptime(when, "%Y-%m-%dT%H:%M:%SZ"), err
    # and a peer is named by a unique prefix of its ID like any ID
    assert m.run("credit", "revoke", peer[:6]).returncode == 0


def test_info_shows_iso_times_and_octal_rights(mimei):
    m, mid, _cur = mimei
    doc = json.loads((m.mm(mid) / ".info").read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["created"]), doc
    assert doc["rights"] == "0644" and doc["id"] == mid
    assert json.loads(m.run("info", mid, "--json").stdout) == doc          # one rendering
    lines = m.run("info", mid).stdout.splitlines()
    assert f"created    {doc['created']}" in lines and "rights     0644" in lines
    signed = json.loads(m.run("info", mid, "--signed").stdout)             # the record itself
    assert isinstance(signed["created"], int) and signed["rights"] == 0o644 and "sig" in signed
