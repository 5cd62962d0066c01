"""How a MiMei's records read to a person: the ``.info`` document and the message of a
refused ``rm``.

``.info`` (``<mnt>/mm/<id>/.info`` and ``mimeifs info``) shows the signed info record's
fields with the creation time as ISO 8601 UTC and the rights in octal, plus the last and
released version numbers; the signed record itself stays as stored (ns, an int).
"""

from __future__ import annotations

import datetime
import json


def iso_time(ns: int) -> str:
    """A time in ns since the epoch as ISO 8601 in UTC with microseconds
    (``2026-11-30T15:40:00.123456Z``), what ``.info`` and ``log --json`` readers expect."""
    dt = datetime.datetime.fromtimestamp(ns // 1000 / 1e6, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def info_doc(info: dict, state: dict) -> dict:
    """What ``<mnt>/mm/<id>/.info`` and ``mimeifs info`` show of a MiMei: the fields of
    its signed info record (``created`` as ISO 8601 UTC, ``rights`` as an octal string
    like ``"0644"``) plus ``last`` and ``release`` (version numbers or null)."""
    doc = {k: info[k] for k in ("id", "author", "app_type", "mimei_type", "ext", "mark")}
    doc["created"] = iso_time(info["created"])
    doc["rights"] = f"{info['rights']:04o}"
    doc["last"] = state["last"]
    doc["release"] = None if state["release"] is None else state["release"]["n"]
    return doc


def info_json(info: dict, state: dict) -> bytes:
    """:func:`info_doc` as the bytes of the ``.info`` file: indented JSON, sorted keys,
    a final newline."""
    return (json.dumps(info_doc(info, state), indent=2, sort_keys=True) + "\n").encode()


def _versions_text(ns: list[int]) -> str:
    ns = sorted(ns)
    return "v/" + ", v/".join(map(str, ns[:5])) + (f" and {len(ns) - 5} more" if len(ns) > 5 else "")


def rm_refused(mimei: str, who: dict[str, dict]) -> str:
    """The message of a refused ``rm``: who refers, from where, and what to do."""
    lines = [f"{mimei} is referenced, so it is kept:"]
    from_cur = [s for s, d in sorted(who.items()) if d["cur"]]
    only_versions = [s for s, d in sorted(who.items()) if not d["cur"]]
    for s, d in sorted(who.items()):
        where = (["its cur"] if d["cur"] else []) + ([_versions_text(d["versions"])] if d["versions"] else [])
        lines.append(f"  {s} ({' and '.join(where)})")
    if from_cur:
        lines.append(f"  to drop a reference of a cur: rm <mnt>/mm/<source>/.refs/{mimei}")
    if any(who[s]["versions"] for s in who):
        lines.append("  versions never change: their references last as long as the referring MiMei"
                     + (f" ({', '.join(only_versions)} refers only from versions)" if only_versions else "")
                     + "; to delete this MiMei, first rm the referring MiMei, or keep it")
    return "\n".join(lines)
