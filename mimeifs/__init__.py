"""mimeifs: the MiMei system (seeds/001, 002) on a Linux node.

Layers (imports point down only), as ``DESIGN.md`` fixes them::

    cli -> fuse, net -> ledger -> engine -> ids
"""

__version__ = "0.1.0"
