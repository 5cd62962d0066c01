"""``mimeifs db …``: tokens, export and import for db MiMei (the RESP server itself runs
in the daemon: ``mimeifs serve --resp HOST:PORT`` or ``mimeifs mount --resp …``).

``SPEC`` is a MiMei ID, a mark or a mount path; ``SPEC@VERSION`` names a version
(``@3``, ``@last``, ``@release``). The export format is the versions' JSON Lines (one
key per line, see ``engine.kvsnap``), so ``db export`` of a version equals the
concatenation of its files under ``mm/<id>/v/<n>/``.
"""

from __future__ import annotations

import sys

import click


def _engine(ctx):
    from ..cli import _engine as eng
    return eng(ctx)


def _split(ctx, spec: str):
    """(mimei, version string | None) of ``SPEC[@VERSION]``; a db MiMei only."""
    from ..cli import _resolve
    base, at, ver = spec.rpartition("@") if "@" in spec else (spec, "", "")
    mid = _resolve(ctx, base if at else spec)
    info = _engine(ctx).info(mid)
    if info.get("mimei_type") != "db":
        raise click.ClickException(f"{mid} is a {info.get('mimei_type')} MiMei, not a db")
    if at and not (ver in ("cur", "last", "release") or ver.isdigit()):
        raise click.ClickException(f"bad version {ver!r}: a number, last, release or cur")
    return mid, (ver if at and ver != "cur" else None)


def _version_n(ctx, mid: str, ver: str) -> int:
    st = _engine(ctx).state(mid)
    n = st.get("last") if ver == "last" else (
        (st.get("release") or {}).get("n") if ver == "release" else int(ver))
    if n is None:
        raise click.ClickException(f"{mid} has no version {ver}")
    return n


@click.group()
def db():
    """db MiMei: RESP tokens, export, import."""


@db.command()
@click.argument("spec")
@click.option("--read-only", is_flag=True, help="a token that cannot write cur")
@click.pass_context
def token(ctx, spec, read_only):
    """Print a token for AUTH: SPEC[@VERSION] (versions are read-only)."""
    from .auth import Tokens
    mid, ver = _split(ctx, spec)
    e = _engine(ctx)
    if ver is not None and ver.isdigit():
        e.version(mid, int(ver))  # ENOENT for a version that does not exist
    click.echo(Tokens(e.store.key).mint(mid, ver or "cur", read_only))


@db.command(name="export")
@click.argument("spec")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def export_(ctx, spec, file):
    """Write cur (or SPEC@VERSION) as JSON Lines to FILE ('-': stdout)."""
    from ..engine import kv, kvsnap
    mid, ver = _split(ctx, spec)
    e = _engine(ctx)
    out = sys.stdout.buffer if file == "-" else open(file, "wb")
    n = 0
    try:
        with e.store.read() as txn:
            if ver is None:
                ks = kv.Keyspace(e.store, bytes.fromhex(mid), txn, False)
                for key, t, exp in ks.iter_keys():
                    raw = txn.get(ks.ns + key, db=ks.d_kv)
                    out.write(kvsnap.key_line(ks, key, t, exp, raw[9:]))
                    n += 1
            else:
                rec = e.version(mid, _version_n(ctx, mid, ver))
                for line in kvsnap.iter_version_lines(txn, e.store, bytes.fromhex(rec["root"])):
                    out.write(line + b"\n")
                    n += 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    click.echo(f"exported {n} keys", err=True)


@db.command(name="import")
@click.argument("spec")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--replace", is_flag=True, help="delete every key of cur first")
@click.pass_context
def import_(ctx, spec, file, replace):
    """Load JSON Lines from FILE into cur (keys in the file replace keys of that name),
    in one transaction: a bad line changes nothing."""
    from ..engine import kv, kvsnap
    mid, ver = _split(ctx, spec)
    if ver is not None:
        raise click.ClickException("versions are read-only: import into cur")
    e = _engine(ctx)
    if not e.can_write(bytes.fromhex(mid)):
        raise click.ClickException(f"{mid} was not authored by this node")
    src = sys.stdin.buffer if file == "-" else open(file, "rb")
    try:
        with e.store.write() as txn:
            ks = kv.Keyspace(e.store, bytes.fromhex(mid), txn, True)
            if replace:
                ks.flush()
            n = kvsnap.load_lines(ks, src)
            ks.finish()
    except ValueError as x:
        raise click.ClickException(f"{file}: {x}; nothing imported") from None
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    click.echo(f"imported {n} keys into {mid}")
