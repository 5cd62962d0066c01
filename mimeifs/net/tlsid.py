"""TLS 1.3 identities bound to node keys (anchor: libp2p's TLS handshake, RFC 8446).

Each node presents a self-signed X.509 certificate whose public key is the node's own
ed25519 key (the store's ``node.key`` seed, :class:`mimeifs.ids.NodeKey`); the peer's
node ID is derived from that certificate's public key exactly as every ID is
(:func:`mimeifs.ids.id_of_public_key`), so a certificate names a node and nothing else.
Certificates are made with ``cryptography``; the handshake is Python's ``ssl``
(OpenSSL) over ``ssl.MemoryBIO`` (``tlsstream.py``). No cryptography is home-made.

Why this is sound although Python's ``ssl`` has no custom verify callback:

- *The server's identity.* The client runs with ``CERT_NONE`` (no chain building: the
  certificate is self-signed on purpose) and, after the handshake, reads the server's
  certificate with ``getpeercert(binary_form=True)`` and derives the node ID from its
  public key. ``CERT_NONE`` turns off only X.509 *chain* validation. TLS 1.3 itself
  (RFC 8446 §4.4.3) makes the server sign the whole handshake transcript with the private
  key of the certificate it sent (CertificateVerify), and OpenSSL checks that signature
  in every verify mode; the Finished MACs then bind the session keys to that transcript.
  So a completed handshake proves the server holds the key of the certificate, hence the
  node ID derived from it; the client compares that ID with the one it expected
  (:func:`peer_id_of_cert`), and a mismatch closes the connection.
- *The client's identity.* A server with ``CERT_OPTIONAL``/``CERT_REQUIRED`` would run
  chain validation on the client's self-signed certificate and abort, and it cannot be
  told to accept an unknown self-signed certificate without a callback. So the client
  authenticates inside the (already server-authenticated, encrypted) channel: the server
  sends a fresh 32-byte random nonce, and the client answers with its public key and an
  ed25519 signature over ``AUTH_CONTEXT | server node ID | nonce | client node ID``
  (:func:`auth_message`). The nonce is new for every connection (no replay), and the
  signed server ID is the identity the *client* verified through TLS, so a relay that
  terminates the client's TLS under its own key gets a signature naming itself, which
  the real server refuses (the same construction as SSH public-key user authentication,
  RFC 4252 §7, which signs the session identifier). Only then does the server accept any
  request from the connection.
"""

from __future__ import annotations

import datetime
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ..ids import NodeKey, id_of_public_key

AUTH_CONTEXT = b"mimeifs net v1 client auth\0"
NONCE_BYTES = 32


class PeerIdentityError(Exception):
    """A peer's certificate or authentication does not prove the node ID it should."""


def _seed(key: NodeKey) -> bytes:
    # NodeKey keeps the pynacl SigningKey; its bytes are the 32-byte ed25519 seed, which
    # is also the raw private key form RFC 8410 and ``cryptography`` use.
    return bytes(key._sk)


def make_certificate(key: NodeKey, directory: str) -> tuple[str, str]:
    """Write a self-signed certificate and its private key for ``key`` into
    ``directory`` (created with mode 0700; the key file has mode 0600). Returns
    ``(cert_path, key_path)``. The certificate's subject CN is the node ID; validity
    2020–2100 (the binding is to the key, not to time)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    priv = ed25519.Ed25519PrivateKey.from_private_bytes(_seed(key))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key.id)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(priv.public_key())
            .serial_number(int.from_bytes(key.public_key[:16], "big") >> 1 or 1)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc))
            .sign(priv, None))
    cpath, kpath = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    with open(cpath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(kpath + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(kpath + ".tmp", kpath)
    return cpath, kpath


def _base(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # see the module docstring: identity is checked after
    ctx.options |= ssl.OP_NO_TICKET   # no resumption: every connection proves its key anew
    return ctx


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The listening side's context: TLS 1.3 only, presents this node's certificate."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context() -> ssl.SSLContext:
    """The dialing side's context: TLS 1.3 only; the server's node ID is checked with
    :func:`peer_id_of_cert` after the handshake."""
    return _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def peer_id_of_cert(der: bytes | None) -> str:
    """The node ID (40 hex) of a DER certificate's ed25519 public key. Raises
    :class:`PeerIdentityError` if there is no certificate or its key is not ed25519."""
    if not der:
        raise PeerIdentityError("peer sent no certificate")
    try:
        pub = x509.load_der_x509_certificate(der).public_key()
    except ValueError as e:
        raise PeerIdentityError(f"unreadable peer certificate: {e}") from e
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise PeerIdentityError("peer certificate key is not ed25519")
    return id_of_public_key(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def auth_message(server_id: str, nonce: bytes, client_id: str) -> bytes:
    """The bytes a dialing node signs to prove its key to ``server_id`` (see above)."""
    return AUTH_CONTEXT + bytes.fromhex(server_id) + nonce + bytes.fromhex(client_id)


def check_auth(server_id: str, nonce: bytes, public_key: bytes, sig: bytes) -> str:
    """Verify a client's answer to ``nonce``; returns the client's node ID. Raises
    :class:`PeerIdentityError`."""
    from ..ids import BadSignature, verify
    if not isinstance(public_key, bytes) or len(public_key) != 32 or not isinstance(sig, bytes):
        raise PeerIdentityError("malformed client authentication")
    cid = id_of_public_key(public_key)
    try:
        verify(public_key, auth_message(server_id, nonce, cid), sig)
    except BadSignature as e:
        raise PeerIdentityError("client authentication signature does not verify") from e
    return cid
