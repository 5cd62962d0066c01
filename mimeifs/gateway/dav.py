"""WebDAV under ``/dav/``: a WsgiDAV provider over the view (not over an OS directory).

The URL space is the gateway's (:mod:`.places`): ``/dav/mm/<id>/cur/...`` is the
writable working copy, ``/dav/mm/<id>/<n>/...``, ``last`` and ``release`` are
read-only versions, ``/dav/name/<mark>/...`` the same for this node's marks, and the
listing levels (``/dav/``, ``/dav/mm/``, ``/dav/mm/<id>/``) are read-only collections.

Writes (PUT, MKCOL, DELETE, MOVE, COPY into cur) go through the view's cur operations,
so the rules are the mount's: versions refuse (EROFS, answered 403 as RFC 4918 wants
for a resource that cannot change), another author's cur refuses (EACCES, 403).
Authentication is the gateway's (:mod:`.auth`) through WsgiDAV's HTTP authenticator
with :class:`GatewayDomainController`: Basic with the node token for every write and
for reading a MiMei that is not public; ``?token=`` in the URL does the same.

WsgiDAV is a WSGI application: hypercorn runs each request in a worker thread, so
every view call here is blocking and may fetch. A PUT body is written in blocks of
:data:`BLOCK` bytes (one LMDB write transaction each).
"""

from __future__ import annotations

import errno
import io
import mimetypes
import os
import stat

from wsgidav.dav_error import (HTTP_BAD_REQUEST, HTTP_CONFLICT, HTTP_FORBIDDEN,
                               HTTP_INTERNAL_ERROR, HTTP_NOT_FOUND, DAVError)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
from wsgidav.dc.base_dc import BaseDomainController

from ..engine.errors import EngineError
from .auth import WRITE_METHODS, presented
from .places import locate, split

BLOCK = 1 << 20
_DAV_STATUS = {errno.ENOENT: HTTP_NOT_FOUND, errno.ENOTDIR: HTTP_CONFLICT,
               errno.EROFS: HTTP_FORBIDDEN, errno.EACCES: HTTP_FORBIDDEN,
               errno.EPERM: HTTP_FORBIDDEN, errno.EEXIST: 405, errno.ENOTEMPTY: HTTP_CONFLICT,
               errno.EINVAL: HTTP_BAD_REQUEST, errno.EISDIR: HTTP_CONFLICT, errno.ENOSPC: 507}


def _dav(e: OSError) -> DAVError:
    return DAVError(_DAV_STATUS.get(e.errno or 0, HTTP_INTERNAL_ERROR), str(e))


def _name(path: str) -> bytes:
    return path.rstrip("/").rsplit("/", 1)[-1].encode()


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] or "/"


class _Common:
    """What files and directories of the view share: the view, the place, the node."""

    def _setup(self, provider, place):
        self.p = provider
        self.view = provider.view
        self.place = place
        self.node = place.node
        self.a = self.view.attr(place.node) if place.node is not None else None

    def get_display_name(self):
        return self.name

    def get_creation_date(self):
        return self.a.ctime_ns / 1e9 if self.a else None

    def get_last_modified(self):
        return self.a.mtime_ns / 1e9 if self.a else None

    def _parent_node(self):
        par = self.p.place(_parent(self.path))
        if par is None or par.node is None:
            raise DAVError(HTTP_FORBIDDEN, "not inside a MiMei's cur")
        return par.node

    def handle_delete(self):
        """Refuse at once outside cur (no per-member multistatus for a version)."""
        if self.node is None or self.node.kind != "cur":
            raise DAVError(HTTP_FORBIDDEN, "read-only: only a MiMei's cur changes")
        return False

    def delete(self):
        parent, name = self._parent_node(), _name(self.path)
        try:
            if self.is_collection:
                self.view.rmdir(parent, name)
            else:
                self.view.unlink(parent, name)
        except OSError as e:
            raise _dav(e) from None
        # the name by name: a mount's cached dentry of it goes (dropping only the parent
        # can leave a child dentry that the kernel splices back under its directory)
        self.view.changed(None, [], [(parent.ino, name)])
        self.remove_all_properties(recursive=True)
        self.remove_all_locks(recursive=True)

    def handle_move(self, dest_path):
        """MOVE inside one cur is a rename (one engine call, whole subtrees at once)."""
        dst_parent = self.p.place(_parent(dest_path))
        if dst_parent is None or dst_parent.node is None:
            raise DAVError(HTTP_CONFLICT, "no such destination collection")
        src = self._parent_node()
        try:
            self.view.rename(src, _name(self.path), dst_parent.node, _name(dest_path))
        except OSError as e:
            raise _dav(e) from None
        self.view.changed(None, [], [(src.ino, _name(self.path)), (dst_parent.node.ino, _name(dest_path))])
        return True

    def support_recursive_move(self, dest_path):
        return False


class Listing(_Common, DAVCollection):
    """A gateway listing level (read-only collection of names)."""

    def __init__(self, path, environ, provider, place):
        DAVCollection.__init__(self, path, environ)
        self._setup(provider, place)

    def get_member_names(self):
        return list(self.place.names)

    def get_member(self, name):
        return self.p.get_resource_inst(self.path.rstrip("/") + "/" + name, self.environ)

    def delete(self):
        raise DAVError(HTTP_FORBIDDEN)

    def handle_move(self, dest_path):
        raise DAVError(HTTP_FORBIDDEN)


class Folder(_Common, DAVCollection):
    """A directory of the view (cur or a version)."""

    def __init__(self, path, environ, provider, place):
        DAVCollection.__init__(self, path, environ)
        self._setup(provider, place)

    def get_member_names(self):
        """Directories and regular files whose names are UTF-8 (links, devices and
        names no URL can carry are not WebDAV resources)."""
        try:
            kids = self.view.children(self.node)
        except OSError as e:
            raise _dav(e) from None
        out = []
        for n, _c, a in kids:
            if stat.S_ISDIR(a.mode) or stat.S_ISREG(a.mode):
                try:
                    out.append(n.decode())
                except UnicodeDecodeError:
                    continue
        return out

    def get_member(self, name):
        return self.p.get_resource_inst(self.path.rstrip("/") + "/" + name, self.environ)

    def get_etag(self):
        e = self.node.entry
        return e.hash.hex() if e is not None and e.hash else None

    def support_etag(self):
        return self.node.entry is not None

    def _make(self, name: str, mode: int):
        try:
            self.view.make(self.node, name.encode(), mode, self.view.owner_uid, os.getgid())
        except OSError as e:
            raise _dav(e) from None
        return self.get_member(name)

    def create_empty_resource(self, name):
        return self._make(name, stat.S_IFREG | 0o644)

    def create_collection(self, name):
        self._make(name, stat.S_IFDIR | 0o755)

    def copy_move_single(self, dest_path, *, is_move):
        par = self.p.place(_parent(dest_path))
        if par is None or par.node is None:
            raise DAVError(HTTP_CONFLICT)
        try:
            self.view.make(par.node, _name(dest_path), stat.S_IFDIR | 0o755, self.view.owner_uid, os.getgid())
        except EngineError as e:
            if e.errno != errno.EEXIST:
                raise _dav(e) from None


class _Reader(io.RawIOBase):
    """A seekable reader over a view file node (what WsgiDAV's GET streams from)."""

    def __init__(self, view, node, size):
        self.view, self.node, self.size, self.pos = view, node, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def tell(self):
        return self.pos

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size - self.pos
        data = self.view.read(self.node, self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Writer:
    """Buffers a PUT body and writes it into a cur file in :data:`BLOCK` pieces."""

    def __init__(self, view, node):
        self.view, self.node, self.pos, self.buf = view, node, 0, bytearray()

    def write(self, data):
        self.buf += data
        if len(self.buf) >= BLOCK:
            self._flush()

    def _flush(self):
        if self.buf:
            self.view.write(self.node, self.pos, bytes(self.buf))
            self.pos += len(self.buf)
            self.buf.clear()

    def close(self):
        self._flush()


class File(_Common, DAVNonCollection):
    """A file of the view (cur, a version, a Mac file)."""

    def __init__(self, path, environ, provider, place):
        DAVNonCollection.__init__(self, path, environ)
        self._setup(provider, place)

    def get_content_length(self):
        return self.a.size

    def get_content_type(self):
        return mimetypes.guess_type(self.path, strict=False)[0] or "application/octet-stream"

    def get_etag(self):
        e = self.node.entry
        if e is not None and e.hash:
            return e.hash.hex()
        return f"{self.a.ino}-{self.a.size}-{self.a.mtime_ns}"

    def support_etag(self):
        return True

    def support_ranges(self):
        return True

    def get_content(self):
        return io.BufferedReader(_Reader(self.view, self.node, self.a.size), BLOCK)

    def begin_write(self, *, content_type=None):
        try:
            self.view.open_check(self.node, True)
            if self.a.size:
                self.view.setattr(self.node, size=0)
        except OSError as e:
            raise _dav(e) from None
        return _Writer(self.view, self.node)

    def end_write(self, *, with_errors):
        pass

    def copy_move_single(self, dest_path, *, is_move):
        par = self.p.place(_parent(dest_path))
        if par is None or par.node is None:
            raise DAVError(HTTP_CONFLICT)
        name = _name(dest_path)
        try:
            try:
                dst = self.view.lookup(par.node, name)
                self.view.setattr(dst, size=0)
            except EngineError as e:
                if e.errno != errno.ENOENT:
                    raise
                dst = self.view.make(par.node, name, stat.S_IFREG | 0o644, self.view.owner_uid, os.getgid())
            w = _Writer(self.view, dst)
            pos = 0
            while pos < self.a.size:
                data = self.view.read(self.node, pos, BLOCK)
                if not data:
                    break
                w.write(data)
                pos += len(data)
            w.close()
        except OSError as e:
            raise _dav(e) from None


class MiMeiProvider(DAVProvider):
    """WsgiDAV provider over ``view``: resources from :func:`.places.locate`."""

    def __init__(self, view):
        super().__init__()
        self.view = view

    def is_readonly(self):
        return False

    def place(self, path: str):
        """The place ``path`` names, or None (not found)."""
        try:
            return locate(self.view, path)
        except EngineError:
            return None

    def get_resource_inst(self, path, environ):
        place = self.place(path)
        if place is None:
            return None
        if place.node is None:
            return Listing(path, environ, self, place)
        try:
            a = self.view.attr(place.node)
        except OSError:
            return None
        if stat.S_ISDIR(a.mode):
            return Folder(path, environ, self, place)
        if stat.S_ISREG(a.mode):
            return File(path, environ, self, place)
        return None  # links and devices are not WebDAV resources


def mimei_in(engine, path_info: str) -> str:
    """The MiMei ID a gateway path names (``mm/<id>``, ``name/<mark>``, ``<id>:<ver>``),
    or "" (listing levels, Mac files, bad paths)."""
    try:
        segs = split(path_info)
    except EngineError:
        return ""
    if len(segs) >= 2 and segs[0] == "mm":
        return segs[1]
    if len(segs) >= 2 and segs[0] == "name":
        return engine.mark_id(segs[1]) or ""
    if segs and ":" in segs[0]:
        return segs[0].split(":", 1)[0]
    return ""


class _TellOtherDoors:
    """WSGI middleware: after a WebDAV request that changed a MiMei's cur (a write
    method answered 2xx), tell the engine's change listeners (the FUSE door drops what
    the kernel caches of cur), as an import from the CLI does through the control file."""

    def __init__(self, app, engine):
        self.app, self.e = app, engine

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "").upper()
        if method not in WRITE_METHODS or method in ("LOCK", "UNLOCK"):
            return self.app(environ, start_response)
        return self._writing(environ, start_response)

    def _writing(self, environ, start_response):
        status = []

        def start(st, headers, exc_info=None):
            status.append(st)
            return start_response(st, headers, exc_info)

        try:
            yield from self.app(environ, start)
        finally:
            if status and status[0][:1] == "2":
                changed = {mimei_in(self.e, environ.get("PATH_INFO", ""))}
                dest = environ.get("HTTP_DESTINATION", "")
                if dest:
                    changed.add(mimei_in(self.e, "/" + dest.split("/dav/", 1)[-1]))
                for mid in changed - {""}:
                    self.e.changed(mid)


class GatewayDomainController(BaseDomainController):
    """WsgiDAV's authentication hook, answered by the gateway's :class:`~.auth.Guard`
    (found in the WsgiDAV config under ``mimeifs_guard``)."""

    def __init__(self, wsgidav_app, config):
        super().__init__(wsgidav_app, config)
        self.guard = config["mimeifs_guard"]

    def get_domain_realm(self, path_info, environ):
        return "mimeifs"

    def _mimei(self, path_info: str) -> str:
        return mimei_in(self.guard.e, path_info)

    def require_authentication(self, realm, environ):
        if environ is None:  # WsgiDAV asking at start whether the share is anonymous
            return False
        given = presented(None, environ.get("QUERY_STRING", ""))
        if self.guard.valid(given):
            return False
        method = environ["REQUEST_METHOD"].upper()
        mimei = self._mimei(environ.get("PATH_INFO", ""))
        if method in WRITE_METHODS:
            return True
        dest = environ.get("HTTP_DESTINATION")
        return bool(dest) or not self.guard.public(mimei)

    def basic_auth_user(self, realm, user_name, password, environ):
        return self.guard.valid(password)

    def supports_http_digest_auth(self):
        return False


def make_dav_app(view, guard):
    """The WsgiDAV WSGI application over ``view`` (mounted by the gateway at ``/dav``)."""
    from wsgidav.wsgidav_app import WsgiDAVApp
    config = {
        "provider_mapping": {"/": MiMeiProvider(view)},
        "mount_path": "/dav",
        "mimeifs_guard": guard,
        "http_authenticator": {"domain_controller": GatewayDomainController,
                               "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False},
        "verbose": 1,
        "logging": {"enable": False},
        "block_size": BLOCK,
        "dir_browser": {"enable": False},
        "lock_storage": True,
        "property_manager": None,
        "suppress_version_info": True,
    }
    return _TellOtherDoors(WsgiDAVApp(config), view.e)
