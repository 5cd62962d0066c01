"""CLI commands of the gateway: ``mimeifs gateway token|url`` and ``mimeifs app install``.

Registered on the main group by :mod:`mimeifs.cli`; they import only click at load time.
"""

from __future__ import annotations

import click

APP_TYPE = "html5"


@click.group()
def gateway():
    """The HTTP / WebDAV gateway (`mimeifs mount|serve --http HOST:PORT`)."""


@gateway.command()
@click.pass_context
def token(ctx):
    """Print this node's gateway token (HTTP Basic password, or ?token= in a URL)."""
    from ..cli_support import _store
    from .auth import node_token
    s = _store(ctx)
    try:
        click.echo(node_token(s.key))
    finally:
        s.close()


@gateway.command()
@click.pass_context
def url(ctx):
    """Print the URL the running gateway of this store serves on."""
    from .service import gateway_url
    u = gateway_url(ctx.obj["store_path"])
    if u is None:
        raise click.ClickException("no gateway serves this store (start one with --http HOST:PORT)")
    click.echo(u)


@click.group()
def app():
    """HTML5 applications stored as MiMei and served by the gateway."""


@app.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--mark", required=True, help="mark of the application's MiMei")
@click.pass_context
def install(ctx, src, mark):
    """Put the HTML5 application in directory SRC into the MiMei MARK (created if
    missing; cur becomes a mirror of SRC), back it up, and print its URL."""
    from ..cli import import_
    from ..cli_support import _engine, _fail
    from ..engine.errors import EngineError
    from .service import gateway_url
    import os
    if not os.path.isfile(os.path.join(src, "index.html")):
        raise _fail(f"{src}: an application needs an index.html")
    e = _engine(ctx)
    owner = e.mark_id(mark)
    if owner is not None and e.info(owner).get("app_type") != APP_TYPE:
        raise _fail(f"mark {mark!r} already names MiMei {owner}, which is not an application; "
                    f"choose another mark")
    try:
        mid = e.create("fs", mark, APP_TYPE)
    except EngineError as err:
        raise _fail(str(err)) from None
    ctx.invoke(import_, src=src, spec=mid, delete=True, do_backup=True, memo=f"app install {mark}")
    n = _engine(ctx).state(mid)["last"]
    base = gateway_url(ctx.obj["store_path"])
    if base is None:
        click.echo(f"installed {mid}; no gateway runs now: start one with --http HOST:PORT, "
                   f"then open /name/{mark}/last/ there")
        return
    click.echo(f"{base}/name/{mark}/last/")
    click.echo(f"{base}/mm/{mid}/{n}/")
