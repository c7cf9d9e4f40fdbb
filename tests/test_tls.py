"""TLS: chatting over it, the misuses it must survive, reload, gencert."""

from __future__ import annotations

import logging
import os
import ssl
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from chatd.daemon.server import Server
from chatd.transports.tls import generate_certificate
from tests.conftest import Spawn, StartServer
from tests.helpers import (
    DEADLINE,
    Daemon,
    LineClient,
    PipeClient,
    child_env,
    open_json,
    signal_child,
    start_fails,
    until,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def tls_server(start_server: StartServer, cert_pair: tuple[str, str]) -> Server:
    cert, key = cert_pair
    return await start_server(tls_cert=cert, tls_key=key, tls_port=0, tls_handshake_timeout=1.0)


def trusting(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


async def open_tls(port: int, cert: str) -> LineClient:
    return await LineClient.open("127.0.0.1", port, ssl=trusting(cert), server_hostname="localhost")


async def wait_sessions(server: Server, count: int) -> None:
    """Wait until the server holds ``count`` sessions (handshakes included)."""
    await until(lambda: server.session_count == count, f"{count} sessions")


async def test_chatd_connect_chats_over_tls(
    tls_server: Server, cert_pair: tuple[str, str], spawn: Spawn
) -> None:
    bob = await open_json(tls_server.port, "bob")
    carol = await spawn(tls_server.tls_port, "--cafile", cert_pair[0], "--nick", "carol")
    await carol.expect(r"^\* now talking in #general$")
    await carol.send("hello over TLS")
    message = await bob.expect(lambda e: e.get("from") == "carol")
    assert message["text"] == "hello over TLS"
    await bob.send("hello back in the clear")
    await carol.expect(r"\[general\] bob: hello back in the clear$")
    assert await carol.finish() == 0
    assert carol.err == []
    bob.close()


async def test_chatd_connect_refuses_an_unknown_certificate(
    tls_server: Server, spawn: Spawn
) -> None:
    client = await spawn(tls_server.tls_port, "--tls", "--no-reconnect", "--nick", "eve")
    assert await client.wait() == 1
    assert any("certificate verify failed" in line for line in client.err), client.err


async def test_chatd_connect_insecure_skips_verification(tls_server: Server, spawn: Spawn) -> None:
    client = await spawn(tls_server.tls_port, "--insecure", "--nick", "dan")
    await client.expect(r"^\* you are dan$")
    assert await client.finish() == 0


async def test_chatd_connect_tls_takes_its_port_from_chatd_tls_port(tls_server: Server) -> None:
    """Beside a daemon's environment (the container image sets CHATD_PORT),
    ``chatd connect --tls`` without --port goes to CHATD_TLS_PORT, not to
    the plain port."""
    client = await PipeClient.start(
        None,
        "--insecure",
        "--nick",
        "dan",
        CHATD_PORT=str(tls_server.port),
        CHATD_TLS_PORT=str(tls_server.tls_port),
    )
    try:
        await client.expect(r"^\* you are dan$")
        assert await client.finish() == 0
        assert client.err == []
    finally:
        await client.aclose()


def test_chatd_connect_refuses_a_tls_port_that_is_not_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "connect", "--tls", "127.0.0.1"],
        env=child_env(CHATD_TLS_PORT="70000"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "chatd connect: CHATD_TLS_PORT: invalid port '70000' (1-65535)\n"


async def test_raw_tls_client_speaks_the_line_protocol(
    tls_server: Server, cert_pair: tuple[str, str]
) -> None:
    """What `openssl s_client -connect host:port` does: lines over TLS."""
    client = await open_tls(tls_server.tls_port, cert_pair[0])
    assert (await client.line()).startswith("* welcome to chatd")
    await client.send("zed")
    await client.expect_line(r"^\* you are zed$")
    tls = client.writer.get_extra_info("ssl_object")
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert tls_server.sessions[0].connection.transport == "tls"
    client.close()


async def test_a_plaintext_client_on_the_tls_port_is_dropped_and_logged(
    tls_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await LineClient.open("127.0.0.1", tls_server.tls_port)
    await client.send("alice")
    await client.wait_closed()
    client.close()
    await wait_sessions(tls_server, 0)
    assert tls_server.stats.tls_handshake_failures == 1
    failures = [r for r in caplog.records if "TLS handshake with 127.0.0.1 failed" in r.message]
    assert [r.levelno for r in failures] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_handshake_that_never_completes_is_cut_at_its_deadline(
    tls_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    silent = await LineClient.open("127.0.0.1", tls_server.tls_port)
    await wait_sessions(tls_server, 1)  # it holds a connection slot meanwhile
    await silent.wait_closed(timeout=DEADLINE)
    silent.close()
    await wait_sessions(tls_server, 0)
    assert "no handshake within 1 s" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_tls_client_on_the_plain_port_is_told_and_dropped(
    tls_server: Server, cert_pair: tuple[str, str]
) -> None:
    raw = await LineClient.open("127.0.0.1", tls_server.port)
    await raw.line()  # the welcome
    # The first bytes of a ClientHello: a handshake record, TLS 1.x.
    await raw.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    await raw.expect_line(r"^! wrong_protocol: this port speaks plain text, not TLS")
    await raw.wait_closed()
    raw.close()
    # A real TLS client fails its handshake (the welcome line is no TLS record).
    with pytest.raises(ssl.SSLError):
        await open_tls(tls_server.port, cert_pair[0])
    await wait_sessions(tls_server, 0)


async def test_tls_only_has_no_plain_port(
    start_server: StartServer, cert_pair: tuple[str, str]
) -> None:
    server = await start_server(
        tls_cert=cert_pair[0], tls_key=cert_pair[1], tls_port=0, tls_only=True
    )
    assert server.addresses == []
    client = await open_tls(server.tls_port, cert_pair[0])
    assert (await client.line()).startswith("* welcome")
    client.close()


def test_the_server_context_refuses_old_protocols(cert_pair: tuple[str, str]) -> None:
    from chatd.transports.tls import ServerTLS

    context = ServerTLS(*cert_pair).context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    ciphers = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert ciphers
    assert all("ECDHE" in name and ("GCM" in name or "CHACHA20" in name) for name in ciphers)


async def test_a_tls_1_1_client_cannot_connect(
    tls_server: Server, cert_pair: tuple[str, str]
) -> None:
    old = trusting(cert_pair[0])
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        await LineClient.open(
            "127.0.0.1", tls_server.tls_port, ssl=old, server_hostname="localhost"
        )
    await wait_sessions(tls_server, 0)
    assert tls_server.stats.tls_handshake_failures == 1


def _serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


async def _served_serial(port: int) -> int:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    client = await LineClient.open("127.0.0.1", port, ssl=insecure)
    der = client.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    client.close()
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.slow
async def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_certificate(cert, key, ["localhost"])
    first = _serial(cert.read_bytes())
    daemon = await Daemon.start(
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0", "--log-level", "info"
    )
    try:
        line = await daemon.wait_log(r"listening on \S+:(\d+) \(TLS\)")
        tls_port = int(line.rsplit(":", 1)[1].split()[0])
        assert await _served_serial(tls_port) == first
        kept = await LineClient.open(
            "127.0.0.1", tls_port, ssl=trusting(str(cert)), server_hostname="localhost"
        )
        await kept.line()

        generate_certificate(cert, key, ["localhost"])
        second = _serial(cert.read_bytes())
        signal_child(daemon.proc, 1)  # SIGHUP
        await daemon.wait_log(r"TLS certificate reloaded")
        assert await _served_serial(tls_port) == second
        await kept.send("kept")  # an open connection keeps working
        await kept.expect_line(r"^\* you are kept$")

        key.write_text("not a key")
        signal_child(daemon.proc, 1)
        await daemon.wait_log(r"TLS certificate not reloaded, keeping the old one")
        assert await _served_serial(tls_port) == second
        kept.close()
    finally:
        assert await daemon.stop() == 0


def test_gencert_writes_a_usable_pair(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    argv = [sys.executable, "-m", "chatd", "gencert", "--cert", str(cert), "--key", str(key)]
    done = subprocess.run(
        [*argv, "--host", "chat.example", "--host", "10.1.2.3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "chatd connect --cafile" in done.stdout
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["chat.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)

    again = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 1
    assert "exists (--force overwrites it)" in again.stderr


async def test_serve_with_a_missing_certificate_exits_1(tmp_path: Path) -> None:
    log = await start_fails(
        "--db",
        ":memory:",
        "--tls-cert",
        str(tmp_path / "nope.pem"),
        "--tls-key",
        str(tmp_path / "nope.key"),
    )
    assert "cannot load the TLS certificate" in log
