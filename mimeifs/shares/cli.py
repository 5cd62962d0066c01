"""``mimeifs shares`` and ``mimeifs share add|rm``: the user's door to ``.mmfs`` shares.

``shares`` lists every ``<store>/shares/*.mmfs`` file: the share's name, MiMei,
version shown, source and its sync state, backups, replicas wanted and held, and for
a refused file why. While a daemon serves the store it reads the state the daemon
writes (``<store>/shares-status.json``); otherwise it reads the files itself and says
that nothing keeps the sources in step. ``share add`` writes a valid file (checked
with the same parser the daemon uses) atomically into the folder; a running daemon
takes it at once, and the command waits briefly to print the daemon's verdict.
"""

from __future__ import annotations

import json
import os
import time

import click

from ..engine.db import Store, StoreError
from . import mmfs
from .mmfs import BadShare
from .registry import Registry, write_file
from .service import STATUS_FILE


def _folder(ctx) -> str:
    return os.path.join(ctx.obj["store_path"], "shares")


def _daemon(ctx) -> dict | None:
    from ..fuse.ctl import mount_info
    return mount_info(ctx.obj["store_path"])


def _daemon_status(ctx) -> dict | None:
    """The daemon's share state, if a daemon serves the store and has written it."""
    info = _daemon(ctx)
    if info is None:
        return None
    try:
        with open(os.path.join(ctx.obj["store_path"], STATUS_FILE)) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    return st if st.get("pid") == info["pid"] else None


def _offline_status(ctx) -> dict:
    from ..engine.mimei import Engine
    try:
        store = Store.open(ctx.obj["store_path"])
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    try:
        reg = Registry(_folder(ctx), Engine(store), create_marks=False,
                       forbidden=(ctx.obj["store_path"],))
        reg.scan()
        return {"pid": None, "shares": reg.status()}
    finally:
        store.close()


def _when(t) -> str:
    return "never" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _describe(d: dict, daemon: bool) -> list[str]:
    if not d.get("ok"):
        return [f"{d['name']}: REFUSED: {d.get('error')}", f"  file: {d['file']}"]
    ver = d["version"]
    mode = ("read-only: it follows its source" if d.get("source") else "read-only") \
        if d.get("readonly") else "writable"
    lines = [f"{d['name']}: {d['mimei']} at {ver} ({mode}"
             f"{'' if d.get('own') else ', another author'})"]
    if d.get("available"):
        lines.append(f"  {d['available']}")
    if d.get("source"):
        s = d.get("sync")
        if s is None:
            state = "not kept in step: no daemon runs" if not daemon else "starting"
        else:
            state = f"{s['state']}; last sync {_when(s.get('synced'))}"
            if s.get("last_sync_s") is not None:
                state += f" ({s['last_sync_s']} s)"
            state += f", {s.get('syncs', 0)} syncs, {s.get('files', 0)} files taken"
            if s.get("mode") and s["mode"] != "inotify":
                state += f"; {s['mode']}"
            if s.get("errors"):
                state += f"; {len(s['errors'])} errors, last: {s['errors'][-1]}"
        lines.append(f"  source {d['source']}: {state}")
    if d.get("backup_every"):
        b = d.get("backup") or {}
        last = b.get("last")
        lines.append(f"  backups every {d['backup_every']}: "
                     + (f"last v/{last['n']} at {_when(last['time'])}" if last else "none yet")
                     + (f"; error: {b['error']}" if b.get("error") else ""))
    if d.get("replicas"):
        held = d.get("replicas_held")
        lines.append(f"  replicas: {d['replicas']} wanted, "
                     f"{'unknown' if held is None else held} held"
                     + (f" ({d['replicas_note']})" if d.get("replicas_note") else ""))
    return lines


@click.command(name="shares")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def shares(ctx, as_json):
    """List the .mmfs shares: MiMei, version, source and its sync state, backups,
    replicas, and for a refused file why."""
    st = _daemon_status(ctx)
    daemon = st is not None
    if st is None:
        st = _offline_status(ctx)
    if as_json:
        click.echo(json.dumps({"daemon": daemon, "shares": st["shares"]}, indent=2, default=str))
        return
    if not st["shares"]:
        click.echo(f"no shares (put NAME.mmfs files in {_folder(ctx)}, or: mimeifs share add)")
    for d in st["shares"]:
        for line in _describe(d, daemon):
            click.echo(line)
    if not daemon:
        click.echo("(no daemon serves this store: shares are shown and sources kept in step "
                   "while one runs)", err=True)


@click.group(name="share")
def share():
    """Add or remove a .mmfs share."""


@share.command(name="add")
@click.argument("name")
@click.option("--mark", help="this node's own MiMei by mark (created when missing)")
@click.option("--mimei", help="any MiMei by ID (40 hex)")
@click.option("--type", "mtype", type=click.Choice(["fs", "file"]), default=None,
              help="with --mark: the type a new MiMei is created with (default fs)")
@click.option("--version", "version", help="cur | last | release | N")
@click.option("--source", type=click.Path(), help="an OS directory kept in step with cur")
@click.option("--backup-every", help="back up cur when it changed, e.g. 1h, 15m, 1d")
@click.option("--replicas", type=int, help="copies wanted on other nodes")
@click.option("--readonly", is_flag=True, help="refuse writes through the share")
@click.option("--force", is_flag=True, help="replace an existing NAME.mmfs")
@click.pass_context
def share_add(ctx, name, mark, mimei, mtype, version, source, backup_every, replicas, readonly,
              force):
    """Write <store>/shares/NAME.mmfs: shared/NAME/ shows the MiMei."""
    doc: dict = {}
    if mark is not None:
        doc["mark"] = mark
    if mimei is not None:
        doc["mimei"] = mimei
    if mtype is not None:
        doc["type"] = mtype
    if version is not None:
        doc["version"] = int(version) if version.isdigit() else version
    if source is not None:
        doc["source"] = os.path.abspath(os.path.expanduser(source))
    if backup_every is not None:
        doc["backup_every"] = backup_every
    if replicas is not None:
        doc["replicas"] = replicas
    if readonly:
        doc["readonly"] = True
    try:
        spec = mmfs.from_dict(doc, name)
    except BadShare as e:
        raise click.ClickException(str(e)) from None
    if spec.source is not None and not os.path.isdir(spec.source):
        raise click.ClickException(f"source directory {spec.source} does not exist")
    try:
        path = write_file(_folder(ctx), spec, overwrite=force)
    except FileExistsError:
        raise click.ClickException(f"{name}.mmfs exists (--force replaces it)") from None
    info = _daemon(ctx)
    click.echo(path)
    if info is None:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = _daemon_status(ctx)
        for d in (st or {}).get("shares", []):
            if d["name"] == name and d.get("file") == path and (d.get("ok") or d.get("error")):
                if not d.get("ok"):
                    raise click.ClickException(f"the daemon refused it: {d['error']}")
                where = info.get("mountpoint")
                if where:
                    click.echo(f"shared at {os.path.join(where, 'shared', name)}")
                return
        time.sleep(0.05)
    click.echo("(the daemon has not reported on it yet: see mimeifs shares)", err=True)


@share.command(name="rm")
@click.argument("name")
@click.pass_context
def share_rm(ctx, name):
    """Remove NAME.mmfs: the share goes, the MiMei stays."""
    try:
        mmfs.check_name(name)
    except BadShare as e:
        raise click.ClickException(str(e)) from None
    path = os.path.join(_folder(ctx), name + mmfs.SUFFIX)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise click.ClickException(f"no share file {path}") from None
    click.echo(f"removed {path}")


__all__ = ["shares", "share"]
