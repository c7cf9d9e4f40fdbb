"""The limits of docs/PROTOCOL.md that have no other home: each one breached
over a real socket, and what the offender and everyone else see."""

from __future__ import annotations

import logging

import pytest

from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import LineClient, open_json


async def open_from(server: Server, host: str = "127.0.0.1") -> LineClient:
    """A raw client from a given loopback source address (127.0.0.N are distinct IPs)."""
    return await LineClient.open("127.0.0.1", server.port, local_addr=(host, 0))


async def test_new_connections_per_address_are_rate_limited(start_server: StartServer) -> None:
    server = await start_server(conn_rate=0.01, conn_burst=3)  # no refill within the test
    admitted = [await open_from(server) for _ in range(3)]
    refused = await open_from(server)
    other = await open_from(server, "127.0.0.2")
    try:
        for client in admitted:
            assert (await client.line()).startswith("* welcome")
        line = await refused.line()
        assert line.startswith("! too_many_connections: too many new connections from 127.0.0.1")
        await refused.wait_closed()
        assert (await other.line()).startswith("* welcome")  # another address is not affected
        # Closing connections gives no new tokens: this limit is about the rate.
        for client in admitted:
            client.close()
        again = await open_from(server)
        assert (await again.line()).startswith("! too_many_connections:")
        again.close()
    finally:
        for client in (*admitted, refused, other):
            client.close()


async def test_concurrent_connections_per_address_with_many_addresses(
    start_server: StartServer,
) -> None:
    """Five addresses of 127.0.0.0/8, each with its own max_per_ip."""
    server = await start_server(max_per_ip=3)
    clients: list[LineClient] = []
    try:
        for n in range(2, 7):
            host = f"127.0.0.{n}"
            for _ in range(3):
                clients.append(await open_from(server, host))
                assert (await clients[-1].line()).startswith("* welcome")
            extra = await open_from(server, host)
            clients.append(extra)
            assert (await extra.line()).startswith(
                f"! too_many_connections: too many connections from {host}"
            )
        assert server.session_count == 15
    finally:
        for client in clients:
            client.close()


async def test_too_many_lines_before_registration_end_the_connection(
    start_server: StartServer,
) -> None:
    server = await start_server(register_lines=5)
    patient = await LineClient.open("127.0.0.1", server.port)
    chatty = await LineClient.open("127.0.0.1", server.port)
    try:
        # Up to the limit, lines run as usual; the nickname may come last.
        await patient.line()
        await patient.send(*(f"/ping {n}" for n in range(4)), "/nick patient")
        await patient.expect_line(r"^\* now talking in #general$")
        # Six lines: five run, the sixth ends the connection.
        await chatty.line()
        await chatty.send(*(f"/ping {n}" for n in range(6)))
        data = await chatty.wait_closed()
        assert data.decode().splitlines() == [
            *(f"* pong {n}" for n in range(5)),
            "! registration_limit: more than 5 lines or 8192 bytes before choosing a nickname",
        ]
    finally:
        patient.close()
        chatty.close()


async def test_a_nickname_piped_with_many_lines_loses_none_of_them(
    start_server: StartServer,
) -> None:
    """printf 'bob\n...' | nc: one write, the nickname first, then far more
    lines and bytes than the limits before registration."""
    server = await start_server(register_lines=5, register_bytes=256)
    listener = await open_json(server.port, "listener")
    piper = await LineClient.open("127.0.0.1", server.port)
    try:
        lines = [f"line {n} " + "x" * 40 for n in range(100)]
        piper.writer.write(("piper\n" + "".join(f"{line}\n" for line in lines)).encode())
        await piper.writer.drain()
        said = [(await listener.expect("message"))["text"] for _ in lines]
        assert said == lines
    finally:
        listener.close()
        piper.close()


async def test_bytes_that_make_no_line_count_before_registration(
    start_server: StartServer,
) -> None:
    """Telnet negotiation and over-long lines produce no command, but their bytes count."""
    server = await start_server(register_bytes=2000, max_line=100)
    telnet = await LineClient.open("127.0.0.1", server.port)
    long_line = await LineClient.open("127.0.0.1", server.port)
    try:
        await telnet.line()
        telnet.writer.write(b"\xff\xf1" * 1500)  # IAC NOP: stripped, yet 3000 bytes
        assert b"! registration_limit:" in await telnet.wait_closed()
        await long_line.line()
        long_line.writer.write(b"x" * 3000)
        data = await long_line.wait_closed()
        assert data.startswith(b"! line_too_long:")
        assert b"! registration_limit:" in data
    finally:
        telnet.close()
        long_line.close()


async def test_members_per_room(start_server: StartServer) -> None:
    server = await start_server(max_room_members=2)
    a, b, c = [await open_json(server.port, nick) for nick in ("a", "b", "c")]
    try:
        for client in (a, b):
            await client.send("/join dev")
            await client.expect("current")
        await c.send("/join dev")
        error = await c.expect("error")
        assert error["code"] == "room_full"
        assert error["text"] == "#dev has 2 members, the most allowed"
        await c.send("/who general")  # general is exempt: all three are in it
        assert (await c.expect("who"))["nicks"] == ["a", "b", "c"]
        await b.send("/leave dev")
        await b.expect("current")
        await c.send("/join dev")
        assert (await c.expect("current"))["room"] == "dev"
    finally:
        for client in (a, b, c):
            client.close()


async def test_name_lengths_are_settings(start_server: StartServer) -> None:
    server = await start_server(max_nick_len=5, max_room_len=4)
    client = await open_json(server.port)
    try:
        await client.send("/nick sixsix")
        assert (await client.expect("error"))["code"] == "bad_nick"
        await client.send("longer")  # a bare first line is a nickname too
        error = await client.expect("error")
        assert (error["code"], error["text"]) == (
            "bad_nick",
            "invalid nickname 'longer': 1-5 letters, digits, '_', '-' or '.'",
        )
        await client.register("five5")
        await client.send("/create abcde")
        assert (await client.expect("error"))["code"] == "bad_room"
        await client.send("/join abcde")  # not a new room's name either
        assert (await client.expect("error"))["code"] == "bad_room"
        await client.send("/create abcd")
        assert (await client.expect("current"))["room"] == "abcd"
    finally:
        client.close()


async def test_a_reader_too_slow_for_its_room_is_cut_by_the_soft_limit(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Over queue_soft_bytes for queue_soft_seconds: cut, well before the hard limit."""
    caplog.set_level(logging.WARNING, "chatd.daemon")
    server = await start_server(
        sndbuf=4096,
        max_queue_bytes=8 << 20,
        queue_soft_bytes=64 * 1024,
        queue_soft_seconds=1.0,
        write_timeout=600.0,
    )
    talker = await open_json(server.port, "talker")
    stuck = await open_json(server.port, "stuck")
    try:
        stuck.stop_reading()
        # About 200 KiB for it: over the soft limit once the socket buffers
        # and the transport's own 64 KiB are full, far below the hard one.
        await talker.send(*(["x" * 1000] * 200))
        left = await talker.expect("leave")
        assert left["nick"] == "stuck"
        assert left["reason"] == "send queue over 65536 bytes for 1 s"
        assert "send queue overflow" not in caplog.text  # the hard limit was not reached
    finally:
        talker.close()
        stuck.close()


async def test_keepalive_pings_are_opt_in_and_unanswered_ones_end_the_session(
    start_server: StartServer,
) -> None:
    # Intervals of 2 s against the 1 s sweep: an answer is never late by a sweep.
    server = await start_server(ping_min_interval=1.0)
    watcher = await open_json(server.port, "watcher")
    client = await open_json(server.port, "prog")
    text = await LineClient.open("127.0.0.1", server.port)
    try:
        await text.line()
        await text.send("/ping every 30")
        assert (await text.line()).startswith("! bad_args: keepalive pings need JSON mode")
        await client.send("/ping every 0.5")
        assert (await client.expect("error"))["text"] == "the shortest keepalive interval is 1 s"
        await client.send("/ping every 2")
        assert await client.expect("keepalive") == {"type": "keepalive", "interval": 2}
        # Silence brings a ping; the answer keeps the session.
        ping = await client.expect("ping")
        await client.send(f"/pong {ping['token']}")
        second = await client.expect("ping")
        assert int(second["token"]) == int(ping["token"]) + 1
        # No answer: an error, then the connection closes and the room is told.
        error = await client.expect("error")
        assert error == {
            "type": "error",
            "code": "ping_timeout",
            "text": "no answer to a ping in 2 s",
        }
        await client.wait_closed()
        left = await watcher.expect("leave")
        assert (left["nick"], left["reason"]) == ("prog", "ping timeout")
    finally:
        for c in (watcher, client, text):
            c.close()
