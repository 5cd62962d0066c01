"""The protocol-free view of a store: what it looks like as a tree (see :mod:`.view`)."""

from .nodes import Attr, Node, vino
from .view import View

__all__ = ["Attr", "Node", "View", "vino"]
