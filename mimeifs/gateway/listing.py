"""The HTML listing page of a directory the gateway serves without an ``index.html``."""

from __future__ import annotations

import html
import stat
import time
from urllib.parse import quote


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9)) if ns else ""


def render(title: str, rows: list[tuple[str, bool, int, int, str]]) -> bytes:
    """A listing page: ``rows`` are (name, is_dir, size in bytes, mtime in ns, blake3
    hex or ""). Names are escaped and linked relative to the page (the page's URL ends
    in ``/``)."""
    t = html.escape(title)
    out = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>"
           "<style>body{font-family:sans-serif}td{padding:0 1em}"
           "td.h{font-family:monospace;font-size:small}</style></head><body>"
           f"<h1>{t}</h1><table><tr><th>name</th><th>size</th><th>modified (UTC)</th>"
           "<th>blake3</th></tr>", '<tr><td><a href="../">../</a></td></tr>']
    for name, is_dir, size, mtime, h in rows:
        shown = name + ("/" if is_dir else "")
        href = quote(name, safe="") + ("/" if is_dir else "")
        out.append(f'<tr><td><a href="{href}">{html.escape(shown)}</a></td>'
                   f'<td>{"" if is_dir else size}</td><td>{_when(mtime)}</td>'
                   f'<td class="h">{h}</td></tr>')
    out.append("</table></body></html>\n")
    return "".join(out).encode()


def view_rows(view, node) -> list[tuple[str, bool, int, int, str]]:
    """Rows for :func:`render` from the children of view directory ``node``: the
    blake3 of each file in a version or a Mac file (cur files have none stored; their
    column is empty)."""
    rows = []
    for name, child, a in view.children(node):
        is_dir = stat.S_ISDIR(a.mode)
        e = child.entry
        h = e.hash.hex() if e is not None and stat.S_ISREG(a.mode) and e.hash else ""
        rows.append((name.decode(errors="replace"), is_dir, a.size, a.mtime_ns, h))
    return rows
