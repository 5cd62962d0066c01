"""The HTTP and WebDAV door onto the view (issue 15; seed 001 §VII and §6.4.1).

- :mod:`.places`  what a URL path names (``/mm/<id>/<ver>/<path>``, ``mid:ver/path``,
  ``/name/<mark>/...``, ``/mac/<hash>``);
- :mod:`.web`     GET / HEAD as an ASGI application (ranges, ETags, listings);
- :mod:`.dav`     WebDAV under ``/dav/`` (a WsgiDAV provider over the view);
- :mod:`.auth`    the node token and who may read or write what;
- :mod:`.service` hypercorn on trio as a daemon service (``--http HOST:PORT``);
- :mod:`.cli`     ``mimeifs gateway token|url`` and ``mimeifs app install``.
"""
