"""What the ``mimeifs`` commands (:mod:`mimeifs.cli`) share: opening the store and the
engine, resolving a SPEC, running a whole-MiMei command in the daemon or on the store
(with a progress bar on a terminal), and printing (``--json`` or a line for people).

Errors become ``click.ClickException`` with a one-line message (exit 1).
"""

from __future__ import annotations

import json
import sys

import click

from .engine.db import Store, StoreError


def _fail(msg: str) -> "click.ClickException":
    return click.ClickException(msg)


def _store(ctx) -> Store:
    try:
        return Store.open(ctx.obj["store_path"])
    except StoreError as e:
        raise _fail(str(e)) from None


def _engine(ctx):
    from .engine.mimei import Engine
    if "engine" not in ctx.obj:
        ctx.obj["engine"] = Engine(_store(ctx))
    return ctx.obj["engine"]


def _resolve(ctx, spec: str) -> str:
    from .engine.mimei import MiMeiError
    try:
        return _engine(ctx).resolve(spec)
    except MiMeiError as e:
        raise _fail(str(e)) from None


def _daemon(ctx) -> str | None:
    from .fuse.ctl import mount_info
    info = mount_info(ctx.obj["store_path"])
    return info["mountpoint"] if info else None


def _whole(ctx, op: str, **args):
    """Run a whole-MiMei command in the daemon if mounted, else on the store."""
    from .engine.mimei import MiMeiError
    from .fuse.ctl import DaemonError, call, run_op
    mnt = _daemon(ctx)
    bar = _progress(None, op) if op == "backup" else None
    try:
        if mnt:
            return _call_with_bar(mnt, op, bar, args) if bar is not None else call(mnt, op, **args)
        return run_op(_engine(ctx), op, args, bar.update if bar is not None else None)
    except (MiMeiError, DaemonError) as x:
        raise _fail(str(x)) from None
    except OSError as x:  # e.g. EACCES from the control file: not the mounting user
        where = f" through the mount at {mnt}" if mnt else ""
        raise _fail(f"{op}{where}: {x.strerror or x}") from None
    finally:
        if bar is not None:
            bar.close()


def _call_with_bar(mnt: str, op: str, bar, args: dict):
    """``call`` the daemon while a thread moves ``bar`` to the command's progress
    (polled every 0.1 s through the control file)."""
    import threading

    from .fuse.ctl import call, new_token, progress_of
    token = new_token()
    finished = threading.Event()

    def follow() -> None:
        shown = 0
        while not finished.wait(0.1):
            done = progress_of(mnt, token)
            if done is not None and done > shown:
                bar.update(done - shown)
                shown = done

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    try:
        return call(mnt, op, token=token, **args)
    finally:
        finished.set()
        t.join()


def _invalidate(ctx, mimei: str) -> None:
    """Tell a running daemon that ``mimei`` changed behind the kernel's back."""
    from .fuse.ctl import DaemonError, call
    mnt = _daemon(ctx)
    if mnt:
        try:
            call(mnt, "invalidate", id=mimei)
        except (OSError, DaemonError):
            pass


def _progress(total: int | None, desc: str):
    """A tqdm byte counter on a terminal, None elsewhere. Test it with ``is not None``:
    a tqdm object's truth is its total (an error when unknown, False when 0)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, leave=False)


json_opt = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def _out(as_json: bool, obj, human: str | None) -> None:
    """Print ``obj`` as JSON with ``--json``, else the line(s) ``human`` (None: nothing)."""
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=True))
    elif human is not None:
        click.echo(human)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _backup_line(rec: dict) -> str:
    if rec.get("unchanged"):
        return (f"nothing to back up: cur equals v/{rec['n']} ({rec['root']}); "
                "no new version (--allow-empty makes one anyway)")
    return f"{rec['n']} {rec['root']}"
