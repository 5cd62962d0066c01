"""The share table: every ``<store>/shares/*.mmfs`` file, read, checked and resolved.

A file is read when it changes (the daemon's watch of the folder, or a write through
``<mnt>/shared/``, :meth:`Registry.file_changed`) and at every :meth:`Registry.scan`.
A file that cannot define a share (see :mod:`.mmfs`, and below) is *refused*: it is
kept with the reason (what ``mimeifs shares`` prints and the log says), the share does
not appear, and no other share is touched. Nothing a file holds can raise out of this
module.

Resolving a file against the store (:meth:`Registry.resolve`):

- ``mark``: this node's own MiMei with that mark, created (with ``type``) when missing;
- ``mimei``: any MiMei; one this store does not hold is another author's and is shown
  once the network node finds it (until then the share is valid but not available);
- ``version`` defaults to ``cur`` for this node's own MiMei and ``last`` for another's;
  ``cur`` of another author's MiMei is refused (this node keeps no cur of it);
- ``source`` and ``backup_every`` need this node's own fs MiMei at ``cur``; the source
  must be an existing directory outside the store and the mount, and one MiMei is
  kept in step with one source at most (a second share that asks is refused);
- a share of a version, one with a ``source`` (cur follows the source: what is
  written there is the source's to change, so the folder is read-only and one
  writes to the source instead), or ``readonly``, refuses writes (EROFS);
- a file emptied (an editor or ``>`` truncates before it writes) keeps the share as
  it was until it holds text again.

The table is also what the view shows as ``shared/`` (the protocol in
:mod:`mimeifs.view.shares`: ``folder``, ``get``, ``names``, ``file_changed``).
Thread-safe: reads from any thread; changes happen on the daemon's loop (or the CLI).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from dataclasses import dataclass

from .. import ids
from ..engine.errors import EngineError
from . import mmfs
from .mmfs import BadShare, Spec

log = logging.getLogger("mimeifs.shares")


@dataclass(frozen=True)
class Share:
    """A valid share. ``mimei`` resolved (40 hex), ``version`` "cur" | "last" |
    "release" | n, ``own`` (this node authored it), ``readonly`` (writes refused:
    asked for, a version, or a source), ``source`` (real path) or None; ``key``
    (name, MiMei, version) changes when what the view shows under the name does:
    ``readonly`` is looked up at each write instead, so toggling it renumbers
    nothing."""
    name: str
    spec: Spec
    mimei: str
    version: str | int
    own: bool
    readonly: bool
    source: str | None
    key: str


@dataclass(frozen=True)
class Entry:
    """One ``.mmfs`` file as last read: its bytes, and either ``share`` or ``error``
    (``parsed`` False when the text itself is wrong, so only a new text can mend it;
    True when the store decided, so a later look may succeed)."""
    name: str
    fname: str
    raw: bytes
    spec: Spec | None
    share: Share | None
    error: str | None
    parsed: bool


def share_name(fname: str) -> str | None:
    """The share a file of the folder defines (``NAME.mmfs`` -> ``NAME``), or None
    for a file that is not a share (another suffix, or hidden: starting with ``.``)."""
    if not fname.endswith(mmfs.SUFFIX) or fname.startswith("."):
        return None
    return fname[: -len(mmfs.SUFFIX)]


class Registry:
    """The shares of the store at ``folder`` (``<store>/shares``) over ``engine``.

    ``create_marks``: make a missing ``mark`` MiMei (the daemon does; the CLI's
    read-only listing does not). ``forbidden``: paths a source may not be in (the
    store, the mountpoint)."""

    def __init__(self, folder: str, engine, create_marks: bool = True,
                 forbidden: tuple[str, ...] = ()):
        self.folder = os.path.abspath(folder)
        self.e = engine
        self.create_marks = create_marks
        self.forbidden = tuple(os.path.realpath(p) for p in forbidden if p)
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()
        self._listeners: list = []

    # ------------------------------------------------------------------ the view's protocol
    def get(self, name: str) -> Share | None:
        """The valid share ``name``, or None."""
        e = self._entries.get(name)
        return None if e is None else e.share

    def names(self) -> list[str]:
        """Names of the valid shares, sorted."""
        return sorted(n for n, e in list(self._entries.items()) if e.share is not None)

    def file_changed(self, fname: str) -> None:
        """A file of the folder changed (written through the mount): read it now.
        Never raises (the write that called it has succeeded either way)."""
        try:
            self.reload(fname)
        except Exception:
            log.exception("reading %s", fname)

    # ------------------------------------------------------------------ reading
    def subscribe(self, fn) -> None:
        """Call ``fn(name, old: Entry | None, new: Entry | None)`` after an entry
        changed (its text, its share or its reason); on the thread that read it."""
        self._listeners.append(fn)

    def entries(self) -> list[Entry]:
        """Every ``.mmfs`` file, valid or refused, by name."""
        return [self._entries[n] for n in sorted(self._entries)]

    def scan(self) -> list[str]:
        """Read every file of the folder; forget entries whose file is gone. Returns
        the names that changed."""
        try:
            files = os.listdir(self.folder)
        except FileNotFoundError:
            os.makedirs(self.folder, exist_ok=True)
            files = []
        seen = set()
        changed = []
        for f in sorted(files):
            name = share_name(f)
            if name is None:
                continue
            seen.add(name)
            if self.reload(f):
                changed.append(name)
        for name in [n for n in list(self._entries) if n not in seen]:
            if self._set(name, None):
                changed.append(name)
        return changed

    def reload(self, fname: str) -> bool:
        """Read file ``fname`` of the folder again (gone: its share goes). Returns
        whether its entry changed."""
        name = share_name(fname)
        if name is None:
            return False
        path = os.path.join(self.folder, fname)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return self._set(name, None)
        except OSError as e:
            return self._set(name, self._refused(name, fname, b"", None, f"cannot open: {e.strerror}", False))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._set(name, self._refused(name, fname, b"", None, "not a regular file", False))
            raw = os.read(fd, mmfs.MAX_BYTES + 1)
        except OSError as e:
            return self._set(name, self._refused(name, fname, b"", None, f"cannot read: {e.strerror}", False))
        finally:
            os.close(fd)
        old = self._entries.get(name)
        if old is not None and old.raw == raw and (old.share is not None or not old.parsed):
            return False
        if not raw.strip() and old is not None and old.share is not None:
            return False  # being rewritten (an editor, cp, '>' truncate first): keep the share
        return self._set(name, self._entry(name, fname, raw))

    def recheck(self) -> list[str]:
        """Resolve the refused entries the store decided on again (a source directory
        made since, a share in the way removed). Returns the names that changed."""
        out = []
        for e in list(self._entries.values()):
            if e.share is None and e.parsed and e.spec is not None:
                cur = self._entries.get(e.name)
                if cur is not e:
                    continue
                if self._set(e.name, self._entry(e.name, e.fname, e.raw)):
                    out.append(e.name)
        return out

    def _entry(self, name: str, fname: str, raw: bytes) -> Entry:
        try:
            spec = mmfs.parse(raw, name)
        except BadShare as x:
            return self._refused(name, fname, raw, None, str(x), False)
        try:
            share = self.resolve(spec)
        except BadShare as x:
            return self._refused(name, fname, raw, spec, str(x), True)
        except EngineError as x:
            return self._refused(name, fname, raw, spec, str(x), True)
        return Entry(name, fname, raw, spec, share, None, True)

    @staticmethod
    def _refused(name, fname, raw, spec, why, parsed) -> Entry:
        return Entry(name, fname, raw, spec, None, why, parsed)

    def _set(self, name: str, new: Entry | None) -> bool:
        with self._lock:
            old = self._entries.get(name)
            if old == new:
                return False
            if new is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = new
        if new is not None and new.error and (old is None or old.error != new.error):
            level = logging.INFO if not new.raw.strip() else logging.WARNING
            log.log(level, "share %s refused (%s): %s", name, new.fname, new.error)
        elif new is not None and new.share and (old is None or old.share != new.share):
            log.info("share %s: %s at %s%s", name, new.share.mimei, new.share.version,
                     f", source {new.share.source}" if new.share.source else "")
        elif new is None and old is not None:
            log.info("share %s removed", name)
        for fn in list(self._listeners):
            try:
                fn(name, old, new)
            except Exception:
                log.exception("share listener failed for %s", name)
        if old is not None and old.share is not None and (new is None or new.share is None
                                                          or new.share.source != old.share.source):
            self.recheck()  # a share that was in another's way may be valid now
        return True

    # ------------------------------------------------------------------ resolving
    def resolve(self, spec: Spec) -> Share:
        """The share ``spec`` defines in this store (module docstring). Raises
        :class:`BadShare` saying why not."""
        e = self.e
        to_make = False
        if spec.mark is not None:
            mid = e.mark_id(spec.mark)
            if mid is None:
                if self.create_marks:
                    mid = e.create(spec.type, spec.mark)
                    log.info("share %s: created %s MiMei %s (mark %r)", spec.name, spec.type,
                             mid, spec.mark)
                else:  # the ID it will have (IDs derive from author, types and mark)
                    mid = ids.mimei_id(e.node_id, "", spec.type, spec.mark)
                    to_make = True
            elif "type" in spec.as_dict() and e.info(mid)["mimei_type"] != spec.type:
                raise BadShare(f"mark {spec.mark!r} is a {e.info(mid)['mimei_type']} MiMei, not {spec.type}")
        else:
            mid = spec.mimei
        held = e.exists(mid)
        own = to_make or (held and e.can_write(bytes.fromhex(mid)))
        version = spec.version if spec.version is not None else ("cur" if own else "last")
        if version == "cur" and not own:
            raise BadShare(f"version cur: {mid} is {'another author' if held else 'not this node'}'s "
                           "MiMei and its cur is not kept here; use last, release or a number")
        if spec.backup_every is not None and not own:
            raise BadShare("backup_every needs this node's own MiMei")
        source = None
        if spec.source is not None:
            source = self._check_source(spec, mid, own)
        readonly = spec.readonly or version != "cur" or source is not None
        key = "\n".join((spec.name, mid, str(version)))
        return Share(spec.name, spec, mid, version, own, readonly, source, key)

    def _check_source(self, spec: Spec, mid: str, own: bool) -> str:
        if not own:
            raise BadShare("source needs this node's own MiMei (its cur is what it keeps in step)")
        mtype = self.e.info(mid)["mimei_type"] if self.e.exists(mid) else spec.type
        if mtype != "fs":
            raise BadShare(f"source needs an fs MiMei; {mid} is a {mtype} MiMei")
        path = os.path.expanduser(spec.source)
        if not os.path.exists(path):
            raise BadShare(f"source directory {spec.source} does not exist")
        if not os.path.isdir(path):
            raise BadShare(f"source {spec.source} is not a directory")
        real = os.path.realpath(path)
        for f in self.forbidden:
            if real == f or real.startswith(f.rstrip("/") + "/") or f.startswith(real.rstrip("/") + "/"):
                raise BadShare(f"source {spec.source} overlaps {f} (the store or the mount)")
        for other in list(self._entries.values()):
            s = other.share
            if s is not None and s.name != spec.name and s.source and s.mimei == mid:
                raise BadShare(f"{mid} is already kept in step with {s.source} by share {s.name}")
        return real

    def status(self) -> list[dict]:
        """What ``mimeifs shares`` prints of each file (the daemon adds its own)."""
        out = []
        for e in self.entries():
            d = {"name": e.name, "file": os.path.join(self.folder, e.fname), "ok": e.share is not None,
                 "error": e.error}
            s, sp = e.share, e.spec
            if s is not None:
                d.update(mimei=s.mimei, version=s.version, own=s.own, readonly=s.readonly,
                         source=s.source)
            elif sp is not None:
                d.update(mimei=sp.mimei, mark=sp.mark, version=sp.version, source=sp.source)
            if sp is not None:
                d.update(mark=sp.mark, backup_every=None if sp.backup_every is None
                         else mmfs.format_duration(sp.backup_every), replicas=sp.replicas)
            out.append(d)
        return out


def write_file(folder: str, spec: Spec, overwrite: bool = False) -> str:
    """Write ``spec`` as ``<folder>/<name>.mmfs`` atomically (a hidden temporary file
    renamed into place, so a watcher never reads half of it). Raises FileExistsError
    unless ``overwrite``. Returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, spec.name + mmfs.SUFFIX)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, f"{path} exists", path)
    tmp = os.path.join(folder, f".{spec.name}.mmfs.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(mmfs.render(spec))
    if overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # fails if it appeared meanwhile
        finally:
            os.unlink(tmp)
    return path


__all__ = ["Registry", "Share", "Entry", "share_name", "write_file"]
