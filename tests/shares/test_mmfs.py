"""The .mmfs format alone: every key, every wrong type, the line of each error."""

from __future__ import annotations

import pytest

from mimeifs.shares import mmfs
from mimeifs.shares.mmfs import BadShare, parse

ID = "0123456789abcdef0123456789abcdef01234567"


def test_every_key_parses():
    s = parse(b'mark = "photos"\ntype = "fs"\nversion = "cur"\nsource = "/srv/p"\n'
              b'backup_every = "1h30m"\nreplicas = 2\nreadonly = true\n', "photos")
    assert (s.mark, s.type, s.version, s.source, s.backup_every, s.replicas, s.readonly) == \
        ("photos", "fs", "cur", "/srv/p", 5400.0, 2, True)
    assert parse(f'mimei = "{ID}"\nversion = 3\n', "x").version == 3
    assert parse(f'mimei = "{ID}"\n', "x").version is None  # decided by the author
    assert parse(b'mark = "m"\nbackup_every = 90\n', "x").backup_every == 90.0


@pytest.mark.parametrize("text, words", [
    (b"mark = ", ["not TOML", "line 1"]),
    (b'mark = "a"\nsorce = "/x"\n', ["line 2", "unknown key 'sorce'"]),
    (b'mimei = "xyz"\n', ["line 1", "40"]),
    (f'mimei = "{ID.upper()}"\n'.encode(), ["line 1", "MiMei ID"]),
    (b'mark = 5\n', ["line 1", "mark must be a string"]),
    (b'mark = "a"\nversion = "lates"\n', ["line 2", "version must be"]),
    (b'mark = "a"\nversion = true\n', ["line 2", "version must be"]),
    (b'mark = "a"\nversion = -1\n', ["line 2", "out of range"]),
    (b'mark = "a"\nreadonly = "yes"\n', ["line 2", "true or false"]),
    (b'mark = "a"\nreplicas = "2"\n', ["line 2", "an integer"]),
    (b'mark = "a"\nreplicas = 1000\n', ["line 2", "replicas must be"]),
    (b'mark = "a"\nbackup_every = "soon"\n', ["line 2", "not a duration"]),
    (b'mark = "a"\nbackup_every = "0s"\n', ["line 2", "at least 1 s"]),
    (b'mark = "a"\nsource = "rel/dir"\n', ["line 2", "absolute"]),
    (b'mark = "a"\nsource = "/x"\nversion = "last"\n', ["version must be cur"]),
    (b'mark = "a/b"\n', ["bad mark"]),
    (b'mark = "a"\n[extra]\nk = 1\n', ["line 2", "unknown key 'extra'"]),
    (b'source = ["/a"]\nmark = "a"\n', ["line 1", "single value"]),
    (f'mimei = "{ID}"\nmark = "a"\n'.encode(), ["not both"]),
    (f'mimei = "{ID}"\ntype = "file"\n'.encode(), ["type goes with mark"]),
    (b'version = "cur"\n', ["missing mimei"]),
    (b"", ["empty file"]),
    (b"\xff\xfe", ["not UTF-8"]),
])
def test_bad_files_say_why_with_the_line(text, words):
    with pytest.raises(BadShare) as ei:
        parse(text, "n")
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "x" * 201])
def test_bad_names(name):
    with pytest.raises(BadShare):
        parse(b'mark = "a"\n', name)


def test_render_reads_back():
    s = mmfs.from_dict({"mark": "m", "type": "file", "backup_every": "1d2h", "replicas": 3,
                        "readonly": True, "version": 2}, "n")
    again = parse(mmfs.render(s), "n")
    assert again == s
    assert mmfs.format_duration(93784) == "1d2h3m4s"
