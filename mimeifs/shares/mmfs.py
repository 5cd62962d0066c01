"""The ``.mmfs`` file: TOML that says which MiMei a shared folder shows and keeps.

Seed 001 §6.4.1 ("created by Leither automatically using configure file with .mmfs
extension"), DESIGN.md ".mmfs shares". A file ``NAME.mmfs`` in ``<store>/shares/``
defines the share ``NAME`` (``<mnt>/shared/NAME/``). Keys (every other key, a table,
or a value of the wrong type is an error naming its line)::

    mimei        = "<40 hex>"   # any MiMei, this node's or another author's   } exactly
    mark         = "photos"     # this node's own MiMei, created when missing  } one
    type         = "fs"         # with mark: the type it is created with (fs | file)
    version      = "cur"        # cur | last | release | a version number (integer);
                                # default: cur for this node's own, last for another's
    source       = "/srv/photos"  # an OS directory kept in step with cur
    backup_every = "1h"         # back up cur on this schedule when it changed
                                # ("90s", "15m", "1h30m", "1d", or an integer of seconds)
    replicas     = 2            # copies wanted on other nodes (the network node's)
    readonly     = true         # the folder refuses writes even where cur could take them

:func:`parse` checks what the file alone can tell (syntax, keys, types, values);
whether the MiMei, the version or the source directory exist is for the registry
(:mod:`.registry`), which knows the store. :func:`render` writes a file back.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import tomli_w

from .. import ids

SUFFIX = ".mmfs"
KEYS = ("mimei", "mark", "type", "version", "source", "backup_every", "replicas", "readonly")
VERSIONS = ("cur", "last", "release")
MAX_REPLICAS = 64
MAX_BYTES = 64 * 1024
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DUR = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


class BadShare(ValueError):
    """A ``.mmfs`` file (or the values for one) that cannot define a share. The
    message names every problem, each with its line where the file has one."""


@dataclass(frozen=True)
class Spec:
    """What one ``.mmfs`` file says. ``version`` None: the default (decided once the
    MiMei's author is known); ``backup_every`` in seconds."""
    name: str
    mimei: str | None = None
    mark: str | None = None
    type: str = "fs"
    version: str | int | None = None
    source: str | None = None
    backup_every: float | None = None
    replicas: int = 0
    readonly: bool = False

    def as_dict(self) -> dict:
        """The keys as a file would hold them (defaults left out)."""
        d: dict = {}
        if self.mimei is not None:
            d["mimei"] = self.mimei
        if self.mark is not None:
            d["mark"] = self.mark
            if self.type != "fs":
                d["type"] = self.type
        if self.version is not None:
            d["version"] = self.version
        if self.source is not None:
            d["source"] = self.source
        if self.backup_every is not None:
            d["backup_every"] = format_duration(self.backup_every)
        if self.replicas:
            d["replicas"] = self.replicas
        if self.readonly:
            d["readonly"] = True
        return d


def check_name(name: str) -> None:
    """A share's name: what ``shared/`` shows, the file name without ``.mmfs``.
    Raises :class:`BadShare` for an empty name, one with ``/`` or NUL, one starting
    with ``.`` (hidden files of the folder are not shares), or over 200 bytes."""
    if not name:
        raise BadShare("a share needs a name")
    if "/" in name or "\0" in name:
        raise BadShare(f"bad share name {name!r}: no '/' or NUL in a name")
    if name.startswith("."):
        raise BadShare(f"bad share name {name!r}: a name may not start with '.'")
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        raise BadShare(f"bad share name {name[:20]!r}...: longer than 200 bytes")


def parse_duration(v) -> float:
    """``"1h30m"`` -> 5400.0; an integer is seconds. Raises ValueError (below 1 s)."""
    if isinstance(v, bool):
        raise ValueError("a duration is a string such as \"1h\" or a number of seconds")
    if isinstance(v, (int, float)):
        secs = float(v)
    elif isinstance(v, str):
        s = v.strip().lower()
        pos, secs = 0, 0.0
        for m in _DUR.finditer(s):
            if s[pos:m.start()].strip():
                break
            secs += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not s or s[pos:].strip() or pos == 0:
            raise ValueError(f"not a duration: {v!r} (e.g. \"90s\", \"15m\", \"1h30m\", \"1d\")")
    else:
        raise ValueError("a duration is a string such as \"1h\" or a number of seconds")
    if secs < 1:
        raise ValueError(f"backup_every must be at least 1 s, not {v!r}")
    return secs


def format_duration(secs: float) -> str:
    """5400 -> ``"1h30m"`` (what :func:`parse_duration` reads back)."""
    s = int(round(secs))
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out or "0s"


def _key_lines(text: str) -> dict[str, int]:
    """Top-level key -> its line (1-based), found by a scan of the text (tomllib
    gives values, not where they were)."""
    out: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), 1):
        m = re.match(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_.-]+))\s*=""", line)
        if m:
            k = next(g for g in m.groups() if g is not None)
            out.setdefault(k, i)
        elif re.match(r"\s*\[", line):
            m = re.match(r"\s*\[+\s*([^\]]*?)\s*\]", line)
            if m:
                out.setdefault(m.group(1).split(".")[0].strip("\"'"), i)
    return out


def _kind(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            dict: "a table", list: "an array"}.get(type(v), type(v).__name__)


def parse(text: str | bytes, name: str) -> Spec:
    """The share ``name`` defined by ``text`` (the bytes or text of ``NAME.mmfs``).
    Raises :class:`BadShare` naming every problem, with the line of each key."""
    check_name(name)
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise BadShare(f"file is {len(text)} bytes; a .mmfs file is at most {MAX_BYTES}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadShare(f"not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise BadShare("empty file: it needs mimei = \"<id>\" or mark = \"<name>\"")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)
        if m:
            where = f"line {m.group(1)}, column {m.group(2)}"
            msg = msg[:m.start()] + msg[m.end():]
        else:
            where = f"line {max(1, len(text.splitlines()))}"
            msg = re.sub(r"\s*\(at end of document\)", " at the end", msg)
        raise BadShare(f"{where}: not TOML: {msg}") from None
    return from_dict(doc, name, _key_lines(text))


def from_dict(doc: dict, name: str, lines: dict[str, int] | None = None) -> Spec:
    """:func:`parse` for keys already read (``share add`` builds one). Raises
    :class:`BadShare`."""
    check_name(name)
    lines = lines or {}
    errs: list[str] = []

    def bad(key: str, msg: str) -> None:
        at = f"line {lines[key]}: " if key in lines else ""
        errs.append(f"{at}{msg}")

    for k, v in doc.items():
        if k not in KEYS:
            bad(k, f"unknown key {k!r} (keys: {', '.join(KEYS)})")
        elif isinstance(v, (dict, list)):
            bad(k, f"{k} must be a single value, not {_kind(v)}")

    def typed(key: str, types: tuple, what: str):
        v = doc.get(key)
        if v is None or isinstance(v, (dict, list)):
            return None
        if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
            bad(key, f"{key} must be {what}, not {_kind(v)} {v!r}")
            return None
        return v

    mimei = typed("mimei", (str,), "a MiMei ID (40 hex characters)")
    mark = typed("mark", (str,), "a string")
    mtype = typed("type", (str,), "fs or file")
    version = doc.get("version")
    source = typed("source", (str,), "a directory path")
    every = doc.get("backup_every")
    replicas = typed("replicas", (int,), "an integer")
    readonly = typed("readonly", (bool,), "true or false")

    if mimei is not None and not ids.is_id(mimei):
        bad("mimei", f"mimei must be a MiMei ID (40 lowercase hex characters), not {mimei!r}")
        mimei = None
    if mark is not None and (not mark or "/" in mark or "\0" in mark or len(mark.encode()) > 200):
        bad("mark", f"bad mark {mark!r}: non-empty, no '/' or NUL, at most 200 bytes")
        mark = None
    if "mimei" in doc and "mark" in doc:
        bad("mark", "give mimei or mark, not both")
    elif "mimei" not in doc and "mark" not in doc:
        errs.append("missing mimei = \"<id>\" or mark = \"<name>\"")
    if mtype is not None:
        if mtype not in ("fs", "file"):
            bad("type", f"type must be fs or file, not {mtype!r}")
        elif "mark" not in doc:
            bad("type", "type goes with mark (it is the type a new MiMei is created with)")
    if version is not None and not isinstance(version, (dict, list)):
        if isinstance(version, bool) or not isinstance(version, (str, int)):
            bad("version", f"version must be cur, last, release or a version number, not {_kind(version)}")
            version = None
        elif isinstance(version, str) and version not in VERSIONS:
            bad("version", f"version must be cur, last, release or a version number, not {version!r}")
            version = None
        elif isinstance(version, int) and not 0 <= version < 1 << 32:
            bad("version", f"version number {version} is out of range")
            version = None
    elif isinstance(version, (dict, list)):
        version = None
    if source is not None:
        if not source.strip():
            bad("source", "source is empty")
            source = None
        elif not source.startswith(("/", "~")):
            bad("source", f"source must be an absolute path, not {source!r}")
            source = None
    if every is not None and not isinstance(every, (dict, list)):
        try:
            every = parse_duration(every)
        except ValueError as e:
            bad("backup_every", str(e))
            every = None
    elif isinstance(every, (dict, list)):
        every = None
    if replicas is not None and not 0 <= replicas <= MAX_REPLICAS:
        bad("replicas", f"replicas must be 0..{MAX_REPLICAS}, not {replicas}")
    if source is not None and version is not None and version != "cur":
        bad("version", f"a share with a source keeps cur in step: version must be cur, not {version!r}")
    if errs:
        raise BadShare("; ".join(errs))
    return Spec(name=name, mimei=mimei, mark=mark, type=mtype or "fs", version=version,
                source=source, backup_every=every, replicas=replicas or 0,
                readonly=bool(readonly))


def render(spec: Spec) -> str:
    """The TOML text of ``spec`` (what ``mimeifs share add`` writes)."""
    return f"# share {spec.name}: <mnt>/shared/{spec.name}/\n" + tomli_w.dumps(spec.as_dict())
