"""``mimeifs``: the command line, the user's door to the store, the mount and the ledger.

Every command finds its store by ``--store PATH``, else ``$MIMEIFS_STORE``, else the XDG
data dir (``~/.local/share/mimeifs``). Commands work whether or not the store is
mounted. Whole-MiMei commands (backup, release, restore, fork, rm) go to a running
daemon through its control file, so the mount shows their effect at once; without a
mount they run on the store directly. Errors print ``Error: ...`` (one line, no traceback)
and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .cli_support import (_backup_line, _engine, _fail, _human, _invalidate, _out, _progress, _resolve,
                          _whole, json_opt)
from .engine.db import Store, StoreError, default_store_path


class _Main(click.Group):
    """The top-level group. The ``ledger`` and ``credit`` groups, and ``shares`` /
    ``share``, are imported on first use: no engine command needs them, and their
    imports cost ~40 ms per command."""

    _LAZY = ("credit", "db", "ledger", "share", "shares")
    _LAZY_NET = ("pin", "unpin", "replicate", "peers", "providers", "net")

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._LAZY) | set(self._LAZY_NET))

    def get_command(self, ctx, name):
        if name == "db" and name not in self.commands:
            from .resp.cli import db
            self.add_command(db)
        elif name in ("credit", "ledger") and name not in self.commands:
            from .ledger.cli import credit, ledger
            self.add_command(ledger)
            self.add_command(credit)
        if name in ("share", "shares") and name not in self.commands:
            from .shares.cli import share, shares
            self.add_command(share)
            self.add_command(shares)
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
@json_opt
@click.pass_context
def init(ctx, as_json):
    """Create the store with this node's ed25519 key."""
    try:
        s = Store.create(ctx.obj["store_path"])
    except StoreError as e:
        raise _fail(str(e)) from None
    _out(as_json, {"store": s.path, "node": s.node_id}, f"store {s.path}\nnode  {s.node_id}")
    s.close()


@main.command()
@click.option("--type", "mtype", type=click.Choice(["fs", "file", "db"]), required=True)
@click.option("--mark", required=True, help="name of the MiMei; 'auto' makes a fresh one")
@click.option("--app-type", default="", help="associated application type")
@click.option("--ext", default="", help="extension (for file MiMei)")
@json_opt
@click.pass_context
def create(ctx, mtype, mark, app_type, ext, as_json):
    """Create a MiMei; prints its ID. A mark names one MiMei per author: the same mark,
    type and app type give the same ID again, a mark already used otherwise is refused."""
    from .engine.mimei import MiMeiError
    try:
        mid = _engine(ctx).create(mtype, mark, app_type, ext)
        doc = _engine(ctx).info(mid)
    except MiMeiError as e:
        raise _fail(str(e)) from None
    _out(as_json, {"id": mid, "mark": doc["mark"], "mimei_type": doc["mimei_type"],
                   "app_type": doc["app_type"], "ext": doc["ext"]}, mid)


@main.command(name="list")
@json_opt
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
@json_opt
@click.option("--signed", is_flag=True, help="print the signed info record as stored (times in ns)")
@click.pass_context
def info(ctx, spec, as_json, signed):
    """A MiMei's info (what <mnt>/mm/<id>/.info shows: created as ISO 8601 UTC, rights in
    octal, last and released version); --signed prints the signed record itself."""
    from .engine.mimei import MiMeiError, info_doc
    e = _engine(ctx)
    mid = _resolve(ctx, spec)
    try:
        rec, st = e.info(mid), e.state(mid)
    except MiMeiError as x:
        raise _fail(str(x)) from None
    if signed:
        click.echo(json.dumps(rec, indent=2, sort_keys=True))
        return
    doc = info_doc(rec, st)
    _out(as_json, doc, "\n".join(f"{k:10} {'-' if v is None or v == '' else v}" for k, v in doc.items()))


def _resp_option(ctx, param, value):
    """Check ``--resp HOST:PORT`` before a daemon is forked."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"want HOST:PORT, not {value!r}")
    return value


def service_options(fn):
    """The options every daemon takes (mount and serve): the further services it runs
    (--resp, --http, --listen/--peer; none opens a port unless named) and --json."""
    for deco in reversed([
        click.option("--resp", "resp", metavar="HOST:PORT", default=None, callback=_resp_option,
                     help="serve db MiMei over RESP (Redis protocol) on this TCP address too"),
        click.option("--http", "http", metavar="HOST:PORT", callback=lambda c, p, v: _http_opt(v),
                     help="serve HTTP and WebDAV there (a bare PORT: 127.0.0.1 only)"),
        click.option("--listen", metavar="HOST:PORT",
                     help="run the network node: TCP stream and UDP DHT on this address (default: "
                          "none, no port opens; or [net] listen in <store>/config.toml)"),
        click.option("--peer", "peers", metavar="HOST:PORT", multiple=True,
                     help="a node to connect to and join the DHT through (repeatable)"),
        json_opt,
    ]):
        fn = deco(fn)
    return fn


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground, log to stderr")
@click.option("--allow-other", is_flag=True, help="let other users in (needs user_allow_other for non-root)")
@click.option("--debug", is_flag=True, help="verbose logging and FUSE debug output")
@click.option("--busy-poll-us", type=click.IntRange(0, 10_000), default=100, show_default=True,
              help="poll /dev/fuse this long after each request before sleeping (0: never)")
@click.option("--dir-readahead/--no-dir-readahead", default=True, show_default=True,
              help="on opening a version file, push its small siblings into the page cache")
@service_options
@click.pass_context
def mount(ctx, mountpoint, foreground, allow_other, debug, busy_poll_us, dir_readahead, resp, http,
          listen, peers, as_json):
    """Mount the store at MOUNTPOINT (a daemon unless --foreground)."""
    from .fuse.ctl import mount_info
    from .fuse.mount import MountError, mount as do_mount
    if not os.path.lexists(mountpoint):
        raise _fail(f"mountpoint {mountpoint} does not exist (create it first: mkdir -p {mountpoint})")
    try:
        code = do_mount(ctx.obj["store_path"], mountpoint, foreground, allow_other, debug,
                        busy_poll_us=busy_poll_us, dir_readahead=dir_readahead,
                        extra={"resp": resp, "net": {"listen": listen, "peers": list(peers)}}, http=http)
    except MountError as e:
        raise _fail(str(e)) from None
    if not foreground:
        info = mount_info(ctx.obj["store_path"]) or {}
        _out(as_json, {"store": ctx.obj["store_path"], "mountpoint": os.path.abspath(mountpoint),
                       "pid": info.get("pid")},
             f"mounted {ctx.obj['store_path']} at {os.path.abspath(mountpoint)}")
    sys.exit(code)


@main.command()
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground, log to stderr")
@click.option("--debug", is_flag=True, help="verbose logging")
@service_options
@click.pass_context
def serve(ctx, foreground, debug, resp, http, listen, peers, as_json):
    """Run a headless node on the store (no FUSE mount): the services only.

    Stop it with `mimeifs stop` (or SIGTERM)."""
    from .daemon import DaemonConfig, StartError, start
    from .fuse.mount import MountError, check_not_running
    try:
        check_not_running(ctx.obj["store_path"])
        code = start(DaemonConfig(ctx.obj["store_path"], None, debug=debug, http=http,
                                  extra={"resp": resp, "net": {"listen": listen, "peers": list(peers)}}),
                     foreground)
    except (MountError, StartError) as e:
        raise _fail(str(e)) from None
    if not foreground:
        info = _daemon_info(ctx)
        _out(as_json, {"store": ctx.obj["store_path"], "pid": info["pid"] if info else None},
             f"serving {ctx.obj['store_path']} (pid {info['pid'] if info else '?'})")
    sys.exit(code)


def _http_opt(value: str | None) -> str | None:
    """Check ``--http HOST:PORT`` before the daemon starts (a clear error, not a log line)."""
    if value is None:
        return None
    from .gateway.service import check_bind, parse_bind
    try:
        bind = parse_bind(value)
        check_bind(bind)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    except OSError as e:
        raise click.BadParameter(e.strerror or str(e)) from None
    return bind


def _daemon_info(ctx):
    from .fuse.ctl import mount_info
    return mount_info(ctx.obj["store_path"])


@main.command()
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait")
@json_opt
@click.pass_context
def stop(ctx, timeout, as_json):
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
    _out(as_json, {"stopped": info["pid"]}, f"stopped daemon {info['pid']}")


@main.command()
@click.argument("mountpoint", type=click.Path())
@json_opt
def umount(mountpoint, as_json):
    """Unmount MOUNTPOINT and wait for the daemon to finish."""
    import errno

    from .fuse.ctl import call
    from .fuse.mount import MountError, umount as do_umount
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        raise _fail(f"{mountpoint} does not exist") from None
    except OSError as e:
        if e.errno != errno.ENOTCONN:  # a dead FUSE mount (daemon killed) still unmounts
            raise _fail(f"{mountpoint}: {e.strerror}") from None
    else:
        if not os.path.ismount(mountpoint):
            raise _fail(f"nothing is mounted at {mountpoint}")
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
    exited = pid is None
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            exited = True
            break
        time.sleep(0.05)
    where = os.path.abspath(mountpoint)
    _out(as_json, {"unmounted": where, "pid": pid, "daemon_exited": exited},
         f"unmounted {where}" + ("" if pid is None else
                                 f"; daemon {pid} " + ("exited" if exited else "still finishing after 30 s")))


@main.command(name="import")
@click.argument("src", type=click.Path(exists=True))
@click.argument("spec")
@click.option("--delete", is_flag=True, help="remove what cur has and SRC lacks (mirror)")
@click.option("--backup", "do_backup", is_flag=True, help="back up when done")
@click.option("-m", "--memo", default="", help="memo for --backup")
@click.option("--allow-empty", is_flag=True, help="with --backup: make a version even if nothing changed")
@json_opt
@click.pass_context
def import_(ctx, src, spec, delete, do_backup, memo, allow_empty, as_json):
    """Copy directory SRC into cur of a MiMei, straight through the engine."""
    from .engine.scan import walk_ahead
    ahead = walk_ahead(src)  # first: the child lists SRC while this process starts up
    try:
        from .engine.importer import Importer, scan_size
        from .engine.mimei import MiMeiError
        mid = _resolve(ctx, spec)
        if _engine(ctx).info(mid).get("mimei_type") == "db":
            raise _fail(f"{mid} is a db MiMei: load keys with `mimeifs db import {spec} FILE.jsonl`")
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
    done = f"imported {st['files']} files ({_human(st['bytes_read'])}), skipped {st['skipped']} unchanged, " \
           f"removed {st['removed']}, stored {_human(st['new_bytes'])} new, in {dt:.1f} s"
    _invalidate(ctx, mid)
    rec = _whole(ctx, "backup", id=mid, memo=memo, allow_empty=allow_empty) if do_backup else None
    if as_json:
        _out(True, {"id": mid, "import": dict(st, seconds=dt), "backup": rec}, None)
        return
    click.echo(done)
    if rec is not None:
        click.echo(_backup_line(rec))


@main.command()
@click.argument("spec")
@click.option("-m", "--memo", default="", help="what this version is")
@click.option("--allow-empty", is_flag=True, help="make a version even if cur equals the last one")
@json_opt
@click.pass_context
def backup(ctx, spec, memo, allow_empty, as_json):
    """Freeze cur into version n+1 (signed); prints n and the root hash. If cur equals the
    last version (content and references), says so and makes none, unless --allow-empty."""
    rec = _whole(ctx, "backup", id=_resolve(ctx, spec), memo=memo, allow_empty=allow_empty)
    _out(as_json, rec, _backup_line(rec))


@main.command()
@click.argument("spec")
@click.argument("n", type=int, required=False)
@json_opt
@click.pass_context
def release(ctx, spec, n, as_json):
    """Mark version N (default: last) as released."""
    rec = _whole(ctx, "release", id=_resolve(ctx, spec), n=n)
    _out(as_json, rec, f"released {rec['mimei']} v/{rec['n']}")


@main.command()
@click.argument("spec")
@click.argument("n", type=int)
@json_opt
@click.pass_context
def restore(ctx, spec, n, as_json):
    """Make cur equal to version N."""
    mid = _resolve(ctx, spec)
    _whole(ctx, "restore", id=mid, n=n)
    _out(as_json, {"id": mid, "n": n}, f"cur of {mid} is v/{n}")


@main.command()
@click.argument("spec")
@json_opt
@click.pass_context
def log(ctx, spec, as_json):
    """List versions: n, time, size, root, memo; the released one is marked
    "(release)" (with --json: "released": true, the records otherwise as signed)."""
    from .engine.mimei import MiMeiError
    e = _engine(ctx)
    try:
        mid = _resolve(ctx, spec)
        recs = e.versions(mid)
        rel = e.state(mid)["release"]
    except MiMeiError as x:
        raise _fail(str(x)) from None
    rn = None if rel is None else rel["n"]
    if as_json:
        click.echo(json.dumps([dict(r, released=r["n"] == rn) for r in recs], indent=2))
        return
    for r in recs:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"] / 1e9))
        mark = "  (release)" if r["n"] == rn else ""
        click.echo(f"{r['n']:>4}  {t}  {_human(r['size']):>10}  {r['root'][:16]}  {r['memo']}{mark}")


@main.command()
@click.argument("spec")
@click.option("--mark", required=True, help="mark of the new MiMei ('auto' for a fresh one)")
@json_opt
@click.pass_context
def fork(ctx, spec, mark, as_json):
    """New MiMei whose v/0 is SPEC[@N] (default: its last version); prints the new ID."""
    n = None
    if "@" in spec:
        spec, _, ns = spec.rpartition("@")
        try:
            n = int(ns)
        except ValueError:
            raise _fail(f"bad version {ns!r}") from None
    mid = _resolve(ctx, spec)
    res = _whole(ctx, "fork", id=mid, n=n, mark=mark)
    _out(as_json, {"id": res["id"], "fork_of": mid, "n": n}, res["id"])


@main.command()
@click.argument("spec")
@json_opt
@click.pass_context
def refs(ctx, spec, as_json):
    """List a MiMei's references (out) and who refers to it (in)."""
    from .engine.mimei import MiMeiError
    mid = _resolve(ctx, spec)
    try:
        out, inn = _engine(ctx).refs(mid)
    except MiMeiError as x:
        raise _fail(str(x)) from None
    if as_json:
        click.echo(json.dumps({"id": mid, "out": out, "in": inn}))
        return
    for t in out:
        click.echo(f"out {t}")
    for s in inn:
        click.echo(f"in  {s}")
    click.echo(f"{mid}: {len(out)} reference{'s' * (len(out) != 1)} out (of cur), "
               f"referred to by {len(inn)} MiMei (cur or versions)")


@main.command()
@click.argument("spec")
@json_opt
@click.pass_context
def rm(ctx, spec, as_json):
    """Delete a MiMei (refused while another MiMei refers to it)."""
    mid = _resolve(ctx, spec)
    _whole(ctx, "rm", id=mid)
    _out(as_json, {"removed": mid}, f"removed {mid}")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_opt
@click.pass_context
def put(ctx, file, as_json):
    """Store FILE as a Mac file; prints its blake3 (as b3sum does)."""
    try:
        h = _engine(ctx).put_mac(file)
    except OSError as e:
        raise _fail(f"put {file}: {e.strerror or e}") from None
    _out(as_json, {"hash": h, "file": file}, h)


@main.command()
@json_opt
@click.pass_context
def check(ctx, as_json):
    """Verify every block hash and every signature; exit 1 on problems."""
    from .engine.maintenance import check as do_check
    e = _engine(ctx)
    bar = _progress(0, "check")
    r = do_check(e, bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    if as_json:
        _out(True, dict(r, clean=not r["problems"]), None)
        if r["problems"]:
            sys.exit(1)
        return
    click.echo(f"checked {r['mimei']} MiMei, {r['versions']} versions, {r['trees']} trees, "
               f"{r['manifests']} files, {r['chunks']} chunks ({_human(r['bytes'])})")
    for p in r["problems"]:
        click.echo(f"problem: {p}")
    if r["problems"]:
        raise _fail(f"{len(r['problems'])} problems")
    click.echo("clean")


@main.command()
@json_opt
@click.pass_context
def gc(ctx, as_json):
    """Free blocks no version, cur or Mac file uses."""
    from .engine.maintenance import gc as do_gc
    r = do_gc(_engine(ctx))
    if as_json:
        _out(True, r, None)
        return
    click.echo(f"freed {r['chunks_freed']} chunks ({_human(r['bytes_freed'])}), "
               f"{r['manifests_freed']} manifests, {r['trees_freed']} trees; "
               f"{r['packs_freed']} packs deleted, {r['packs_rewritten']} repacked; "
               f"kept {r['chunks_kept']} chunks")


def _add_gateway_commands() -> None:
    from .gateway.cli import app, gateway
    main.add_command(gateway)
    main.add_command(app)


_add_gateway_commands()


if __name__ == "__main__":
    main()
