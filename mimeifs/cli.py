"""``mimeifs``: the command line, the user's door to the store, the mount and the ledger.

Every command finds its store by ``--store PATH``, else ``$MIMEIFS_STORE``, else the XDG
data dir (``~/.local/share/mimeifs``). Commands work whether or not the store is
mounted. Whole-MiMei commands (backup, release, restore, fork, rm) go to a running
daemon through its control file, so the mount shows their effect at once; without a
mount they run on the store directly. Errors print ``mimeifs: error: ...`` and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .engine.db import Store, StoreError, default_store_path


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


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class _Main(click.Group):
    """The top-level group. The ``ledger`` and ``credit`` groups are imported on first
    use: no engine command needs them, and their imports cost ~40 ms per command."""

    _LAZY = ("credit", "ledger")
    _LAZY_NET = ("pin", "unpin", "replicate", "peers", "providers", "net")

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._LAZY) | set(self._LAZY_NET))

    def get_command(self, ctx, name):
        if name in self._LAZY and name not in self.commands:
            from .ledger.cli import credit, ledger
            self.add_command(ledger)
            self.add_command(credit)
        if name in self._LAZY_NET and name not in self.commands:
            from .net.cli import COMMANDS
            for c in COMMANDS:
                self.add_command(c)
        return super().get_command(ctx, name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store", metavar="PATH", help="store directory (default: $MIMEIFS_STORE, else ~/.local/share/mimeifs)")
@click.version_option(package_name="mimeifs")
@click.pass_context
def main(ctx, store):
    """mimeifs: MiMei on LMDB, mounted with FUSE."""
    ctx.ensure_object(dict)
    ctx.obj["store_path"] = default_store_path(store)


@main.command()
@click.pass_context
def init(ctx):
    """Create the store with this node's ed25519 key."""
    try:
        s = Store.create(ctx.obj["store_path"])
    except StoreError as e:
        raise _fail(str(e)) from None
    click.echo(f"store {s.path}\nnode  {s.node_id}")
    s.close()


@main.command()
@click.option("--type", "mtype", type=click.Choice(["fs", "file"]), required=True)
@click.option("--mark", required=True, help="name of the MiMei; 'auto' makes a fresh one")
@click.option("--app-type", default="", help="associated application type")
@click.option("--ext", default="", help="extension (for file MiMei)")
@click.pass_context
def create(ctx, mtype, mark, app_type, ext):
    """Create a MiMei (idempotent per author, app type, type and mark); prints its ID."""
    from .engine.mimei import MiMeiError
    try:
        click.echo(_engine(ctx).create(mtype, mark, app_type, ext))
    except MiMeiError as e:
        raise _fail(str(e)) from None


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx, as_json):
    """List the MiMei in the store."""
    e = _engine(ctx)
    rows = []
    for mid in e.list():
        info, st = e.info(mid), e.state(mid)
        rows.append({"id": mid, "type": info["mimei_type"], "mark": info["mark"],
                     "author": info["author"], "last": st["last"],
                     "release": None if st["release"] is None else st["release"]["n"]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['id']}  {r['type']:4}  last={r['last'] if r['last'] is not None else '-':<4} {r['mark']}")


@main.command()
@click.argument("spec")
@click.pass_context
def info(ctx, spec):
    """Print a MiMei's signed info record as JSON."""
    click.echo(json.dumps(_engine(ctx).info(_resolve(ctx, spec)), indent=2, sort_keys=True))


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground, log to stderr")
@click.option("--allow-other", is_flag=True, help="let other users in (needs user_allow_other for non-root)")
@click.option("--debug", is_flag=True, help="verbose logging and FUSE debug output")
@click.option("--busy-poll-us", type=click.IntRange(0, 10_000), default=100, show_default=True,
              help="poll /dev/fuse this long after each request before sleeping (0: never)")
@click.option("--dir-readahead/--no-dir-readahead", default=True, show_default=True,
              help="on opening a version file, push its small siblings into the page cache")
@click.option("--listen", metavar="HOST:PORT", help="run the network node: TCP stream and UDP DHT on this address (default: none, no port opens; or [net] listen in <store>/config.toml)")
@click.option("--peer", "peers", metavar="HOST:PORT", multiple=True, help="a node to connect to and join the DHT through (repeatable)")
@click.pass_context
def mount(ctx, mountpoint, foreground, allow_other, debug, busy_poll_us, dir_readahead, listen, peers):
    """Mount the store at MOUNTPOINT (a daemon unless --foreground)."""
    from .fuse.mount import MountError, mount as do_mount
    try:
        code = do_mount(ctx.obj["store_path"], mountpoint, foreground, allow_other, debug,
                        busy_poll_us=busy_poll_us, dir_readahead=dir_readahead,
                        extra={"net": {"listen": listen, "peers": list(peers)}})
    except MountError as e:
        raise _fail(str(e)) from None
    if not foreground:
        click.echo(f"mounted {ctx.obj['store_path']} at {os.path.abspath(mountpoint)}")
    sys.exit(code)


@main.command()
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground, log to stderr")
@click.option("--debug", is_flag=True, help="verbose logging")
@click.option("--listen", metavar="HOST:PORT", help="run the network node: TCP stream and UDP DHT on this address (default: none, no port opens; or [net] listen in <store>/config.toml)")
@click.option("--peer", "peers", metavar="HOST:PORT", multiple=True, help="a node to connect to and join the DHT through (repeatable)")
@click.pass_context
def serve(ctx, foreground, debug, listen, peers):
    """Run a headless node on the store (no FUSE mount): the services only.

    Stop it with `mimeifs stop` (or SIGTERM)."""
    from .daemon import DaemonConfig, StartError, start
    from .fuse.mount import MountError, check_not_running
    try:
        check_not_running(ctx.obj["store_path"])
        code = start(DaemonConfig(ctx.obj["store_path"], None, debug=debug,
                                  extra={"net": {"listen": listen, "peers": list(peers)}}), foreground)
    except (MountError, StartError) as e:
        raise _fail(str(e)) from None
    if not foreground:
        info = _daemon_info(ctx)
        click.echo(f"serving {ctx.obj['store_path']} (pid {info['pid'] if info else '?'})")
    sys.exit(code)


def _daemon_info(ctx):
    from .fuse.ctl import mount_info
    return mount_info(ctx.obj["store_path"])


@main.command()
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait")
@click.pass_context
def stop(ctx, timeout):
    """Stop the daemon serving the store (headless or mounted) and wait for it."""
    import signal
    info = _daemon_info(ctx)
    if info is None:
        raise _fail(f"no daemon serves {ctx.obj['store_path']}")
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(info["pid"], 0)
        except OSError:
            break
        if _daemon_info(ctx) is None:
            break
        time.sleep(0.05)
    else:
        raise _fail(f"daemon {info['pid']} did not stop within {timeout:g} s")
    click.echo(f"stopped daemon {info['pid']}")


@main.command()
@click.argument("mountpoint", type=click.Path())
def umount(mountpoint):
    """Unmount MOUNTPOINT and wait for the daemon to finish."""
    from .fuse.ctl import call
    from .fuse.mount import MountError, umount as do_umount
    pid = None
    try:
        pid = call(mountpoint, "ping")["pid"]
    except Exception:
        pass
    try:
        do_umount(mountpoint)
    except MountError as e:
        raise _fail(str(e)) from None
    deadline = time.monotonic() + 30
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.05)


@main.command(name="import")
@click.argument("src", type=click.Path(exists=True))
@click.argument("spec")
@click.option("--delete", is_flag=True, help="remove what cur has and SRC lacks (mirror)")
@click.option("--backup", "do_backup", is_flag=True, help="back up when done")
@click.option("-m", "--memo", default="", help="memo for --backup")
@click.pass_context
def import_(ctx, src, spec, delete, do_backup, memo):
    """Copy directory SRC into cur of a MiMei, straight through the engine."""
    from .engine.scan import walk_ahead
    ahead = walk_ahead(src)  # first: the child lists SRC while this process starts up
    try:
        from .engine.importer import Importer, scan_size
        from .engine.mimei import MiMeiError
        mid = _resolve(ctx, spec)
        bar = _progress(scan_size(src)[1], "import") if sys.stderr.isatty() else None
        t0 = time.monotonic()
        try:
            st = Importer(_engine(ctx), delete=delete, progress=bar.update if bar is not None else None).run(
                src, mid, ahead=ahead, sync=not do_backup)  # the backup syncs both
        except (OSError, MiMeiError) as e:
            raise _fail(f"import: {e}") from None
        finally:
            if bar is not None:
                bar.close()
    finally:
        if ahead is not None:
            ahead.close()
    dt = time.monotonic() - t0
    for err in st["errors"][:20]:
        click.echo(f"warning: {err}", err=True)
    click.echo(f"imported {st['files']} files ({_human(st['bytes_read'])}), skipped {st['skipped']} unchanged, "
               f"removed {st['removed']}, stored {_human(st['new_bytes'])} new, in {dt:.1f} s")
    _invalidate(ctx, mid)
    if do_backup:
        rec = _whole(ctx, "backup", id=mid, memo=memo)
        click.echo(f"{rec['n']} {rec['root']}")


@main.command()
@click.argument("spec")
@click.option("-m", "--memo", default="", help="what this version is")
@click.pass_context
def backup(ctx, spec, memo):
    """Freeze cur into version n+1 (signed); prints n and the root hash."""
    rec = _whole(ctx, "backup", id=_resolve(ctx, spec), memo=memo)
    click.echo(f"{rec['n']} {rec['root']}")


@main.command()
@click.argument("spec")
@click.argument("n", type=int, required=False)
@click.pass_context
def release(ctx, spec, n):
    """Mark version N (default: last) as released."""
    rec = _whole(ctx, "release", id=_resolve(ctx, spec), n=n)
    click.echo(f"released {rec['mimei']} v/{rec['n']}")


@main.command()
@click.argument("spec")
@click.argument("n", type=int)
@click.pass_context
def restore(ctx, spec, n):
    """Make cur equal to version N."""
    mid = _resolve(ctx, spec)
    _whole(ctx, "restore", id=mid, n=n)
    click.echo(f"cur of {mid} is v/{n}")


@main.command()
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log(ctx, spec, as_json):
    """List versions: n, time, size, memo, root."""
    from .engine.mimei import MiMeiError
    try:
        recs = _engine(ctx).versions(_resolve(ctx, spec))
    except MiMeiError as e:
        raise _fail(str(e)) from None
    if as_json:
        click.echo(json.dumps(recs, indent=2))
        return
    for r in recs:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"] / 1e9))
        click.echo(f"{r['n']:>4}  {t}  {_human(r['size']):>10}  {r['root'][:16]}  {r['memo']}")


@main.command()
@click.argument("spec")
@click.option("--mark", required=True, help="mark of the new MiMei ('auto' for a fresh one)")
@click.pass_context
def fork(ctx, spec, mark):
    """New MiMei whose v/0 is SPEC[@N] (default: its last version); prints the new ID."""
    n = None
    if "@" in spec:
        spec, _, ns = spec.rpartition("@")
        try:
            n = int(ns)
        except ValueError:
            raise _fail(f"bad version {ns!r}") from None
    res = _whole(ctx, "fork", id=_resolve(ctx, spec), n=n, mark=mark)
    click.echo(res["id"])


@main.command()
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def refs(ctx, spec, as_json):
    """List a MiMei's references (out) and who refers to it (in)."""
    out, inn = _engine(ctx).refs(_resolve(ctx, spec))
    if as_json:
        click.echo(json.dumps({"out": out, "in": inn}))
        return
    for t in out:
        click.echo(f"out {t}")
    for s in inn:
        click.echo(f"in  {s}")


@main.command()
@click.argument("spec")
@click.pass_context
def rm(ctx, spec):
    """Delete a MiMei (refused while another MiMei refers to it)."""
    mid = _resolve(ctx, spec)
    _whole(ctx, "rm", id=mid)
    click.echo(f"removed {mid}")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def put(ctx, file):
    """Store FILE as a Mac file; prints its blake3 (as b3sum does)."""
    click.echo(_engine(ctx).put_mac(file))


@main.command()
@click.pass_context
def check(ctx):
    """Verify every block hash and every signature; exit 1 on problems."""
    from .engine.maintenance import check as do_check
    e = _engine(ctx)
    bar = _progress(0, "check")
    r = do_check(e, bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    click.echo(f"checked {r['mimei']} MiMei, {r['versions']} versions, {r['trees']} trees, "
               f"{r['manifests']} files, {r['chunks']} chunks ({_human(r['bytes'])})")
    for p in r["problems"]:
        click.echo(f"problem: {p}")
    if r["problems"]:
        raise _fail(f"{len(r['problems'])} problems")
    click.echo("clean")


@main.command()
@click.pass_context
def gc(ctx):
    """Free blocks no version, cur or Mac file uses."""
    from .engine.maintenance import gc as do_gc
    r = do_gc(_engine(ctx))
    click.echo(f"freed {r['chunks_freed']} chunks ({_human(r['bytes_freed'])}), "
               f"{r['manifests_freed']} manifests, {r['trees_freed']} trees; "
               f"{r['packs_freed']} packs deleted, {r['packs_rewritten']} repacked; "
               f"kept {r['chunks_kept']} chunks")


if __name__ == "__main__":
    main()
