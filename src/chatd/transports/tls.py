"""TLS for the chat port and the web port: contexts, reload, a development certificate.

The daemon's TLS sessions run over :class:`TLSConnection`: Python's
:class:`ssl.SSLObject` over memory buffers, on top of the same TCP stream a
plain session uses. The handshake is then an ordinary awaited step of the
connection, with its own deadline, so a plaintext client, a TLS client that
stalls, or a bad handshake is refused with one log line naming the peer, on
either event loop, and the per-address limits apply before any TLS work is
done.

Certificates are read again on SIGHUP (:meth:`ServerTLS.reload`): new
connections get the new certificate, open ones keep theirs, and a pair that
does not load leaves the old one in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from chatd.transports.tcp import StreamConnection

logger = logging.getLogger(__name__)

#: TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all
#: of that kind already and are not configured here).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


class ServerTLS:
    """The server's TLS context, built from a certificate and key file pair."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = self._context()

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def reload(self) -> bool:
        """Load the files again into the live context; False (and the old
        certificate kept) if they do not load."""
        try:
            self._context()  # check the pair on a scratch context first
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            logger.error("TLS certificate not reloaded, keeping the old one: %s", exc)
            return False
        logger.info("TLS certificate reloaded from %s", self.cert)
        return True


def client_context(cafile: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context that verifies the server, against ``cafile`` if given.

    ``insecure`` turns verification off (for a development certificate you
    have not copied to the client); the connection is then encrypted but the
    server is not authenticated.
    """
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TLSConnection(StreamConnection):
    """A :class:`~chatd.transports.base.Connection` carrying TLS over a TCP stream."""

    __slots__ = ("_incoming", "_outgoing", "_ssl")

    transport = "tls"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        read_size: int = 65536,
    ) -> None:
        super().__init__(reader, writer, read_size)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    async def handshake(self) -> None:
        """Complete the server side of the handshake. The caller bounds the time.

        Raises ``ssl.SSLError`` or ``ConnectionError``.
        """
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_outgoing()
                if not await self._receive():
                    raise ConnectionResetError("closed during the handshake") from None
            except ssl.SSLError:
                self._send_outgoing()  # the alert that tells the client why
                raise
        self._send_outgoing()

    def close_now(self) -> None:
        """Close after what was written (a TLS alert), without waiting."""
        self._writer.close()

    @property
    def version(self) -> str:
        return self._ssl.version() or "?"

    def _send_outgoing(self) -> None:
        data = self._outgoing.read()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _receive(self) -> bool:
        data = await self._reader.read(self.read_size)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def read(self) -> bytes:
        while True:
            try:
                data = self._ssl.read(self.read_size)
            except ssl.SSLWantReadError:
                self._send_outgoing()  # a read can need a write (key updates)
                if not await self._receive():
                    return b""
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise ConnectionResetError(f"TLS error: {exc.reason or exc}") from None
            self._send_outgoing()
            return data

    def write(self, chunks: list[bytes]) -> int:
        if self._writer.is_closing():
            raise ConnectionResetError("connection closed")
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise ConnectionResetError(f"TLS error: {exc.reason or exc}") from None
        self._send_outgoing()
        return len(data)

    def write_eof(self) -> None:
        # close_notify: the TLS way of saying "no more output".
        if self._writer.is_closing():
            return
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._send_outgoing()


def generate_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hosts: list[str],
    days: int = 365,
) -> None:
    """Write a self-signed certificate (ECDSA P-256) for ``hosts`` and its key.

    For development and tests: clients must be given the certificate
    (``--cafile``) to trust it. The key file is created with mode 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was there before
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
