"""Network commands: ``mimeifs pin / unpin / replicate / peers / providers / net status``.

They talk to the node running on the store (``mimeifs serve`` or ``mimeifs mount`` with
``--listen``) through its control socket (``ctl.py``); without one they say how to start
it and exit 1. ``SPEC`` is a MiMei ID (40 hex), or a mark / mount path of a MiMei the
store already holds. Every command takes ``--json``.
"""

from __future__ import annotations

import json
import time

import click

from ..ids import is_id
from .ctl import CtlError, call


def _store_path(ctx) -> str:
    return (ctx.obj or {}).get("store_path")


def _resolve(ctx, spec: str) -> str:
    if is_id(spec):
        return spec
    from ..engine.db import Store, StoreError
    from ..engine.mimei import Engine
    try:
        s = Store.open(_store_path(ctx))
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    try:
        return Engine(s).resolve(spec)
    except OSError as e:
        raise click.ClickException(str(e)) from e
    finally:
        s.close()


def _call(ctx, op: str, **args):
    try:
        return call(_store_path(ctx), op, **args)
    except CtlError as e:
        raise click.ClickException(str(e)) from e


def _out(as_json: bool, obj, human: str) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True) if as_json else human)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command()
@click.argument("spec")
@click.option("--all-versions", is_flag=True, help="keep every version, not only the newest")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pin(ctx, spec, all_versions, as_json):
    """Keep a full local copy of a MiMei, follow its new versions, announce this node."""
    m = _resolve(ctx, spec)
    t = time.monotonic()
    r = _call(ctx, "pin", m=m, all=all_versions)
    r["seconds"] = round(time.monotonic() - t, 3)
    _out(as_json, r, f"pinned {m}: version(s) {', '.join(map(str, r['versions'])) or '-'}, "
                     f"fetched {_size(r['fetched'])} in {r['seconds']:.1f} s")


@click.command()
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def unpin(ctx, spec, as_json):
    """Stop keeping a remote MiMei whole (its blocks become a cache gc may evict)."""
    m = _resolve(ctx, spec)
    r = _call(ctx, "unpin", m=m)
    _out(as_json, r, f"unpinned {m}")


@click.command()
@click.argument("spec")
@click.option("--copies", type=click.IntRange(1, 100), required=True, help="holders wanted besides this node")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def replicate(ctx, spec, copies, as_json):
    """Ask peers with credit here to pin a MiMei until COPIES hold it (save on demand)."""
    m = _resolve(ctx, spec)
    r = _call(ctx, "replicate", m=m, copies=copies)
    lines = [f"{m}: {len(r['holders'])} of {copies} copies held"]
    lines += [f"  {p}  {a}" for p, a in sorted(r["asked"].items())]
    _out(as_json, r, "\n".join(lines))


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def peers(ctx, as_json):
    """Connected peers: ID, address, direction, bytes in/out, bytes served (metered)."""
    r = _call(ctx, "peers")
    lines = [f"{p['peer']}  {':'.join(map(str, p['addr'] or ['?']))}  {p['direction']:3}  "
             f"in {_size(p['bytes_in'])}  out {_size(p['bytes_out'])}  served {_size(p['served'])}"
             + ("  (bad)" if p["bad"] else "") for p in r]
    _out(as_json, r, "\n".join(lines) if lines else "no peers connected")


@click.command()
@click.argument("mimei")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def providers(ctx, mimei, as_json):
    """Nodes the DHT names as providers of a MiMei."""
    if not is_id(mimei):
        raise click.BadParameter(f"not a MiMei ID: {mimei!r}")
    r = _call(ctx, "providers", m=mimei)
    _out(as_json, r, "\n".join(f"{p['node']}  {p['addr'][0]}:{p['addr'][1]}" for p in r) or "no providers found")


@click.group()
def net():
    """The network node running on this store."""


@net.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json):
    """DHT size, connections, bytes in/out, cache size, refusals."""
    r = _call(ctx, "status")
    d = r.get("dht") or {}
    lines = [f"node        {r['node']}",
             f"listen      {':'.join(map(str, r['listen'])) if r['listen'] else 'no (client only)'}",
             f"dht         {d.get('size', 0)} contacts, {d.get('stored', 0)} records stored, "
             f"{d.get('refused', 0)} refused, median hops {d.get('hops_median')}" if d else "dht         off",
             f"connections {r['connections']}",
             f"bytes       in {_size(r['bytes_in'])}, out {_size(r['bytes_out'])}",
             f"cache       store {_size(r['cache']['store_bytes'])}, fetched {_size(r['cache']['fetched_bytes'])}, "
             f"blocks refused {r['cache']['refused']}",
             f"metering    {'on' if r['metering'] else 'off'}"]
    for p, x in sorted(r["refused"].items()):
        lines.append(f"refusing    {p}: {x['reason']}")
    for p, x in sorted(r["refused_by"].items()):
        lines.append(f"refused by  {p}: {x['reason']}")
    for p, x in sorted(r["bad_peers"].items()):
        lines.append(f"bad peer    {p} ({x['for']:.0f} s more): {x['why']}")
    for m, x in sorted(r["replicas"].items()):
        lines.append(f"replicas    {m}: {len(x.get('holders', []))} of {x['copies']}")
    _out(as_json, r, "\n".join(lines))


COMMANDS = (pin, unpin, replicate, peers, providers, net)
