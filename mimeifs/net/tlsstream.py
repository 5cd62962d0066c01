"""TLS over a trio TCP stream through Python's ``ssl.MemoryBIO`` / ``SSLObject``.

The same construction as ``trio.SSLStream`` (the standard library's ``wrap_bio``, OpenSSL
doing all of TLS), with one difference that matters for bulk transfer: a receive reads
up to 1 MiB of ciphertext from the socket at once and decrypts every whole record it
holds in one synchronous loop. ``trio.SSLStream`` returns one TLS record (16 KiB) per
``receive_some`` and passes through the scheduler for each, which capped one connection
at ~160 MiB/s on this machine with nothing else to do (measured: tools/bench_net.py
history in the README); here the cost per record is one ``SSLObject.read`` call.

Ordering: every drain of the outgoing BIO and the socket send that follows happen under
one lock, so ciphertext leaves in the order OpenSSL produced it (post-handshake
messages a read produces are sent by the next sender, ahead of its data).
"""

from __future__ import annotations

import ssl

import trio

READ_SIZE = 1 << 20


class TLSStream:
    """A TLS connection over ``tcp`` (a trio stream). API: :meth:`do_handshake`,
    :meth:`receive_some`, :meth:`send_all`, :meth:`aclose`, :meth:`getpeercert`,
    :meth:`version`. Errors: trio.BrokenResourceError for a broken transport or a TLS
    failure (the ``ssl.SSLError`` is its cause)."""

    def __init__(self, tcp, ctx: ssl.SSLContext, server_side: bool):
        self.tcp = tcp
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=None)
        self._send_lock = trio.Lock()
        self._eof = False

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._out.read()
            if data:
                await self.tcp.send_all(data)

    async def _refill(self) -> bool:
        data = await self.tcp.receive_some(READ_SIZE)
        if not data:
            return False
        self._in.write(data)
        return True

    async def do_handshake(self) -> None:
        """Run the TLS handshake. Raises trio.BrokenResourceError."""
        while True:
            try:
                self.obj.do_handshake()
                await self._flush()
                return
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._refill():
                    raise trio.BrokenResourceError("connection closed during the TLS handshake")
            except ssl.SSLError as e:
                try:
                    await self._flush()  # the alert, if any
                except Exception:
                    pass
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e

    async def receive_some(self, max_bytes: int = READ_SIZE) -> bytes:
        """Up to ``max_bytes`` of plaintext (at least one byte), or b"" at the end."""
        if self._eof:
            return b""
        parts, total = [], 0
        while True:
            try:
                while total < max_bytes:
                    d = self.obj.read(max_bytes - total)
                    if not d:
                        self._eof = True
                        break
                    parts.append(d)
                    total += len(d)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self._eof = True
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS: {e}") from e
            if self._out.pending:
                await self._flush()
            if parts or self._eof:
                return b"".join(parts)
            if not await self._refill():
                self._eof = True
                return b""

    async def read_exact(self, n: int) -> bytearray | None:
        """Exactly ``n`` bytes of plaintext decrypted straight into one buffer (no
        intermediate copies), or None at a clean end before the first byte. Raises
        trio.BrokenResourceError if the stream ends inside them."""
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            if self._eof:
                break
            try:
                k = self.obj.read(n - got, mv[got:])
                if k == 0:
                    self._eof = True
                    break
                got += k
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS: {e}") from e
            if self._out.pending:
                await self._flush()
            if not await self._refill():
                self._eof = True
        if got == n:
            return buf
        if got == 0:
            return None
        raise trio.BrokenResourceError("stream ended inside a frame")

    async def send_all(self, data) -> None:
        """Encrypt and send ``data``. Raises trio.BrokenResourceError / ClosedResourceError."""
        async with self._send_lock:
            try:
                self.obj.write(data)
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS: {e}") from e
            await self.tcp.send_all(self._out.read())

    async def aclose(self) -> None:
        """Send close_notify (best effort) and close the socket."""
        try:
            with trio.move_on_after(1):
                try:
                    self.obj.unwrap()
                except ssl.SSLError:
                    pass
                await self._flush()
        except Exception:
            pass
        finally:
            await self.tcp.aclose()

    def getpeercert(self, binary_form: bool = False):
        return self.obj.getpeercert(binary_form)

    def version(self) -> str | None:
        return self.obj.version()
