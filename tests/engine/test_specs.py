"""What the engine accepts from a user (issue 11 items 6-10): marks, SPECs with unique ID
prefixes, a backup of an unchanged cur, ``rm`` refused with what to do, the ``.info``
rendering, and the control file's checks of every field (``fuse/ctl.py``, no kernel)."""

from __future__ import annotations

import datetime
import errno
import json

import pytest

from mimeifs import ids
from mimeifs.engine.mimei import MARK_MAX_BYTES, MiMeiError, info_doc, info_json, mark_problem
from mimeifs.fuse.ctl import MAX_COMMAND_BYTES, BadCommand, parse_command, run_op

from .conftest import mkfile

BAD_MARKS = [".", "..", "", "a/b", "/", "a\nb", "tab\there", "nul\0", "del\x7f", "c1\x85",
             "x" * (MARK_MAX_BYTES + 1), "é" * (MARK_MAX_BYTES // 2 + 1), "ab" * 20, None, 5]


@pytest.mark.parametrize("mark", BAD_MARKS, ids=repr)
def test_bad_marks_are_refused_by_create_and_fork(engine, mark):
    e = engine
    src = e.create("fs", "src")
    e.backup(src)
    before = (e.list(), e.names())
    for call in (lambda: e.create("fs", mark), lambda: e.fork(src, 0, mark)):
        with pytest.raises(MiMeiError) as ex:
            call()
        assert ex.value.errno == errno.EINVAL and "bad mark" in str(ex.value)
    assert (e.list(), e.names()) == before


@pytest.mark.parametrize("mark", ["a", "my photos", "日本語", "-x", "a.b", "...", "x" * MARK_MAX_BYTES,
                                  "ab" * 19, "auto-1"])
def test_good_marks_are_accepted(engine, mark):
    assert mark_problem(mark) is None
    mid = engine.create("fs", mark)
    assert engine.names()[mark] == mid and engine.resolve(mark) == mid


def test_a_spec_that_cannot_be_a_mark_is_a_clean_not_found(engine):
    """``backup ''`` ended in lmdb.BadValsizeError; a mark lookup of a string that
    cannot be a mark no longer touches the store."""
    for spec in ("", "x" * 600, "a\0b", "./nothing-here"):
        with pytest.raises(MiMeiError) as ex:
            engine.resolve(spec)
        assert ex.value.errno == errno.ENOENT
        assert engine.mark_id(spec) is None


def test_unique_id_prefixes_resolve_like_git_short_hashes(engine):
    e = engine
    a, b = e.create("fs", "one"), e.create("fs", "two")
    k = max(4, next(i for i in range(40) if a[i] != b[i]) + 1)
    assert e.resolve(a[:k]) == a and e.resolve(b[:k]) == b
    assert e.resolve(a[:39]) == a and e.resolve(a) == a
    assert e.id_prefix(a[:k]) == [a]
    # too short (git's minimum is 4), upper case, not hex, nobody's: not found
    nobody = next(p for p in ("0000", "1111", "2222", "3333") if not e.id_prefix(p))
    upper = a.upper()[:next(i for i in range(40) if not a[i].isdigit()) + 1]  # an uppercase digit in it
    for spec in (a[:3], max(upper, a[:4].upper(), key=len), "zzzz", nobody):
        if spec == a[:len(spec)]:
            continue
        with pytest.raises(MiMeiError) as ex:
            e.resolve(spec)
        assert ex.value.errno == errno.ENOENT and "unique ID prefix" in str(ex.value)


def test_ambiguous_prefix_lists_every_candidate(engine):
    e = engine
    # 2 MiMei sharing a 4-digit prefix: search marks for a collision on 16 bits
    seen: dict[str, str] = {}
    i = 0
    while True:
        mark = f"c{i}"
        pre = ids.mimei_id(e.node_id, "", "fs", mark)[:4]
        if pre in seen:
            break
        seen[pre] = mark
        i += 1
    x, y = e.create("fs", seen[pre]), e.create("fs", mark)
    assert x[:4] == y[:4] == pre
    with pytest.raises(MiMeiError) as ex:
        e.resolve(pre)
    assert ex.value.errno == errno.EINVAL and "ambiguous" in str(ex.value)
    assert x in str(ex.value) and y in str(ex.value)
    assert sorted(e.id_prefix(pre)) == sorted([x, y])
    k = next(i for i in range(40) if x[i] != y[i]) + 1
    assert e.resolve(x[:k]) == x and e.resolve(y[:k]) == y


def test_a_mark_wins_over_an_id_prefix(engine):
    e = engine
    a = e.create("fs", "first")
    b = e.create("fs", a[:6])                   # a mark that is a prefix of a's ID
    assert e.resolve(a[:6]) == b and e.resolve(a[:7]) == a


def test_backup_of_an_unchanged_cur_makes_no_version_unless_allowed(fs):
    e, mid, root = fs
    mkfile(e, root, b"f", b"one")
    v0 = e.backup(mid, allow_empty=False)
    assert v0["n"] == 0 and v0["unchanged"] is False        # the first backup always counts
    same = e.backup(mid, "again", allow_empty=False)
    assert same["unchanged"] is True and same["n"] == 0 and same["root"] == v0["root"]
    assert [v["n"] for v in e.versions(mid)] == [0] and e.state(mid)["last"] == 0
    # a reference is a change, and so is content
    other = e.create("fs", "other")
    e.add_ref(mid, other)
    assert e.backup(mid, allow_empty=False)["n"] == 1
    mkfile(e, root, b"g", b"two")
    assert e.backup(mid, allow_empty=False)["n"] == 2
    assert e.backup(mid, allow_empty=False)["unchanged"] is True
    # the same bytes written again still move the mtime, which a version keeps
    e.wt.write(e.wt.lookup(root, b"g").ino, 0, b"two")
    assert e.backup(mid, allow_empty=False)["n"] == 3
    # --allow-empty (and the engine's default) makes the version anyway
    assert e.backup(mid, allow_empty=True)["n"] == 4
    assert e.backup(mid)["n"] == 5
    assert [v["n"] for v in e.versions(mid)] == [0, 1, 2, 3, 4, 5]
    # the control op defaults to no empty versions
    assert run_op(e, "backup", {"id": mid})["unchanged"] is True
    assert run_op(e, "backup", {"id": mid, "allow_empty": True})["n"] == 6


def test_rm_of_a_mimei_referenced_only_from_a_version_says_what_to_do(engine):
    e = engine
    src, target = e.create("fs", "src"), e.create("fs", "target")
    e.add_ref(src, target)
    e.backup(src)
    e.del_ref(src, target)                      # cur no longer refers: only v/0 does
    with pytest.raises(MiMeiError) as ex:
        e.rm(target)
    msg = str(ex.value)
    assert ex.value.errno == errno.EBUSY
    assert src in msg and "v/0" in msg and "remove those references first" not in msg
    assert "versions never change" in msg and f"rm the referring MiMei" in msg
    assert e.referrer_detail(target) == {src: {"cur": False, "versions": [0]}}
    # referenced from a cur: the message says how to drop that reference
    e.add_ref(src, target)
    with pytest.raises(MiMeiError) as ex:
        e.rm(target)
    assert ".refs/" + target in str(ex.value) and "its cur" in str(ex.value)
    # what the message says works: remove the referring MiMei, then the target goes
    e.rm(src)
    e.rm(target)
    assert e.list() == []


def test_info_shows_iso_times_and_octal_rights(engine):
    e = engine
    mid = e.create("file", "doc", app_type="notes", ext="txt")
    rec, st = e.info(mid), e.state(mid)
    doc = info_doc(rec, st)
    assert doc["rights"] == "0644"
    t = datetime.datetime.strptime(doc["created"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert abs(t.timestamp() - rec["created"] / 1e9) < 1e-5
    assert (doc["id"], doc["mark"], doc["ext"], doc["app_type"], doc["last"], doc["release"]) == \
        (mid, "doc", "txt", "notes", None, None)
    e.backup(mid)
    e.release(mid, 0)
    assert json.loads(e.info_file(mid)) == json.loads(info_json(e.info(mid), e.state(mid)))
    assert json.loads(e.info_file(mid))["release"] == 0


# ---------------------------------------------------------------------- control file fields
def _cmd(**kw) -> bytes:
    return json.dumps(dict({"token": "t1"}, **kw)).encode()


MID = "ab" * 20
BAD_COMMANDS = [
    (_cmd(op="backup", id=MID, memo=[1, 2]), "memo must be a string"),
    (_cmd(op="backup", id=MID, memo="x" * 5000), "at most 4096"),
    (_cmd(op="backup", id=MID, allow_empty="yes"), "allow_empty"),
    (b'{"token": "t1", "op": "restore", "id": "' + MID.encode() + b'", "n": 1e400}', "n is an integer"),
    (_cmd(op="restore", id=MID, n=2 ** 70), "n is an integer"),
    (_cmd(op="restore", id=MID, n=-1), "n is an integer"),
    (_cmd(op="restore", id=MID, n=True), "n is an integer"),
    (_cmd(op="restore", id=MID, n="3"), "n is an integer"),
    (_cmd(op="restore", id=MID), "missing field n"),
    (_cmd(op="fork", id=MID, mark=None), "a mark is a string"),
    (_cmd(op="fork", id=MID, mark=".."), "bad mark"),
    (_cmd(op="fork", id=MID, mark="ok", n=[]), "n is an integer"),
    (_cmd(op="rm", id=None), "id must be"),
    (_cmd(op="rm", id="zz"), "id must be"),
    (_cmd(op="rm", id=MID, extra=1), "unknown field"),
    (_cmd(op="explode"), "unknown control op"),
    (_cmd(op=["backup"]), "unknown control op"),
]


@pytest.mark.parametrize("raw,why", BAD_COMMANDS, ids=[w + str(i) for i, (_r, w) in enumerate(BAD_COMMANDS)])
def test_control_commands_with_bad_fields_are_einval_with_a_reason(raw, why):
    with pytest.raises(BadCommand) as ex:
        parse_command(raw)
    assert ex.value.errno == errno.EINVAL and why in str(ex.value) and ex.value.token == "t1"


@pytest.mark.parametrize("raw", [b"[" * 30_000 + b"]" * 30_000, b'{"token": "t", "op": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                 b"x" * (MAX_COMMAND_BYTES + 1), b"{not json", b"\xff\xfe", b"[1, 2]",
                                 b'{"op": "ping"}', b'{"token": 5, "op": "ping"}', b'{"token": "a b", "op": "ping"}',
                                 b'{"token": "' + b"t" * 65 + b'", "op": "ping"}', b"1" * 5000])
def test_malformed_control_commands_are_einval_never_an_exception(raw):
    with pytest.raises(BadCommand) as ex:
        parse_command(raw)
    assert ex.value.errno == errno.EINVAL and str(ex.value)


def test_good_control_commands_parse_to_checked_fields():
    assert parse_command(_cmd(op="backup", id=MID, memo="m" * 4096, allow_empty=True)) == \
        ("t1", "backup", {"id": MID, "memo": "m" * 4096, "allow_empty": True})
    assert parse_command(_cmd(op="release", id=MID, n=None))[2] == {"id": MID, "n": None}
    assert parse_command(_cmd(op="fork", id=MID, mark="auto", n=2 ** 32 - 1))[2]["n"] == 2 ** 32 - 1
    assert parse_command(_cmd(op="ping")) == ("t1", "ping", {})


@pytest.mark.parametrize("kw", [{"app_type": "a\nb"}, {"app_type": "x" * 201}, {"ext": "t\x00xt"},
                                {"ext": "e" * 65}, {"app_type": 5}], ids=repr)
def test_app_type_and_ext_are_short_text(engine, kw):
    with pytest.raises(MiMeiError) as ex:
        engine.create("file", "doc", **kw)
    assert ex.value.errno == errno.EINVAL
    assert engine.list() == []
    assert engine.create("file", "doc", app_type="notes/v2 ✓", ext="tar.gz")
