"""mimeifs: the MiMei system (seeds/001, 002) on a Linux node.

Layers (imports point down only), as ``DESIGN.md`` fixes them::

    cli -> daemon (composition root) -> fuse (a door) -> view -> engine -> ids
                                     -> net, resp, gateway, shares (services)
    ledger -> ids (the credit book and the organization ledger; net meters with it)

The engine knows no protocol: the view says what the store looks like as a tree, the
doors (FUSE; HTTP/WebDAV and shares to come) speak their protocol over it, and the
network node is handed to the engine as its fetcher by ``daemon.py``.
"""

__version__ = "0.1.0"
