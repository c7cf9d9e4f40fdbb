"""Connections and messages leave no reference cycles behind.

A daemon whose objects are frozen (``gc.freeze()``) or whose cyclic
collector runs rarely gets back what a connection used by reference
counting alone, so whatever a connection or a message makes must be freed
that way when it ends: an object of chatd's in a reference cycle is memory
only the cyclic collector returns. Classic sources: an exception kept (in
a future, a task, a local) whose traceback holds the frames that hold it,
and a task or a callback stored on the object it refers to.

Every way a connection ends is here, on plain TCP, TLS and WebSocket: a
``/quit``, an EOF, an abort, a reset (a WebSocket's too), a flood that is
cut, a slow reader cut by its send queue, a failed TLS handshake, the wrong
protocol. With
``gc.DEBUG_SAVEALL`` the collector keeps what it finds unreachable in
``gc.garbage`` instead of freeing it; none of it may be chatd's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import ssl
import struct
import types
from collections import Counter
from collections.abc import Iterator
from typing import cast

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import chatd
from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import DEADLINE, LineClient, open_json

pytestmark = [pytest.mark.both_stores, pytest.mark.timeout(60)]

#: Plain TCP clients per run, spread over the ways of using and leaving a connection.
CLIENTS = 192
#: Clients at once.
CONCURRENCY = 20

_CHATD = os.path.dirname(chatd.__file__) + os.sep


class CyclicGarbage:
    """What the cyclic collector found unreachable in a block: chatd's objects
    by type, and the chatd code whose frames were among them."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.frames: Counter[str] = Counter()

    def take(self, garbage: list[object]) -> None:
        for obj in garbage:
            # type(), not isinstance(): the garbage holds weak proxies to dead objects.
            kind = type(obj)
            # chatd's own, and the daemon's side of a WebSocket (the test's
            # clients have their own objects, in other modules).
            if kind.__module__.startswith(("chatd", "websockets.server")):
                self.types[f"{kind.__module__}.{kind.__qualname__}"] += 1
            elif kind is types.FrameType:
                frame = cast(types.FrameType, obj)
                code = frame.f_code
                if code.co_filename.startswith(_CHATD):
                    where = os.path.relpath(code.co_filename, _CHATD)
                    self.frames[f"{where}:{frame.f_lineno} {code.co_name}"] += 1

    def __str__(self) -> str:
        kinds = ", ".join(f"{name} x{n}" for name, n in self.types.most_common())
        frames = ", ".join(f"{name} x{n}" for name, n in self.frames.most_common())
        return f"chatd objects in reference cycles: {kinds}; chatd frames among them: {frames}"


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[CyclicGarbage]:
    """Record what becomes cyclic garbage in the block (``gc.DEBUG_SAVEALL``).

    The collector's debug flags are restored and ``gc.garbage`` emptied
    whatever happens; what it held is then freed by the next collection.
    """
    flags = gc.get_debug()
    found = CyclicGarbage()
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.take(gc.garbage)
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


def reset(client: LineClient) -> None:
    """Close with RST, as a crashed client or a middlebox does."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


async def hang_up(client: LineClient) -> None:
    """Read to the end the server makes, then close our side."""
    await client.wait_closed()
    client.writer.close()
    with contextlib.suppress(ConnectionError):
        await client.writer.wait_closed()


async def tcp_client(port: int, n: int) -> None:
    """One plain connection; ``n`` chooses how it is used and how it ends."""
    match n % 8:
        case 0:  # rooms, messages, queries; /quit
            client = await open_json(port, f"talker{n}")
            room = f"#room{n % 5}"
            await client.send(f"/join {room}", f"hello {n}", "/me waves", "/who", f"/part {room}")
            await client.send(f"/msg talker{n} note to self", "/rooms", "/history 3", "/topic")
            await client.sync()
            await client.send("/quit bye")
            await hang_up(client)
        case 1:  # text mode; reset
            client = await LineClient.open("127.0.0.1", port)
            await client.line()
            await client.send(f"plain{n}", f"/join #room{n % 5}", "in plain text")
            await client.expect_line(r"plain\d+: in plain text$")
            reset(client)
        case 2:  # every kind of bad input; the end of input (FIN)
            client = await open_json(port, f"clumsy{n}")
            await client.send(
                b"x" * 5000, b"\xff\xfe\xc3(", "/frobnicate", "/join", "/part #nowhere"
            )
            await client.send("/msg nobody hi", "/nick", f"/nick clumsy{n}b")
            errors = [e for e in await client.sync() if e["type"] == "error"]
            assert len(errors) >= 6, errors
            await client.send("/format text", "/ping text")
            await client.expect_line(r"pong")
            await client.send("/format json")
            await client.expect_line('"format"')
            client.writer.write_eof()
            await hang_up(client)
        case 3:  # never chooses a nickname; abort
            client = await LineClient.open("127.0.0.1", port)
            await client.line()
            await client.send("/who")
            assert (await client.line()).startswith("! not_registered")
            client.close()
        case 4:  # ``printf ... | nc``: all at once, then the end of input
            client = await LineClient.open("127.0.0.1", port)
            client.writer.write(f"piped{n}\n/join #piped\nfrom a pipe\n".encode())
            client.writer.write_eof()
            await hang_up(client)
        case 5:  # a burst, reset while its echoes are still coming
            client = await open_json(port, f"burst{n}")
            client.writer.write(b"".join(b"burst %d\n" % k for k in range(30)))
            await client.expect("message")
            reset(client)
        case 6:  # the wrong protocol on the chat port
            client = await LineClient.open("127.0.0.1", port)
            await client.line()
            client.writer.write(b"GET / HTTP/1.1\r\n\r\n")
            await client.wait_closed()
            client.close()
        case _:  # an account: register, log out, log in (a wrong password first, once)
            client = await open_json(port, f"member{n}")
            await client.send("/register secret-words")
            await client.expect("registered")
            await client.send("/logout")
            await client.expect("logout")
            if n < 8:
                await client.send(f"/login member{n} wrong-words")
                await client.expect("error")
            await client.send(f"/login member{n} secret-words")
            await client.expect("registered")
            await client.sync()
            client.close()


async def tls_client(port: int, cert: str, n: int) -> None:
    if n % 4 == 3:  # plain text on the TLS port: the handshake fails
        client = await LineClient.open("127.0.0.1", port)
        client.writer.write(b"hello\n")
        await client.wait_closed()
        client.close()
        return
    trust = ssl.create_default_context(cafile=cert)
    client = await LineClient.open("127.0.0.1", port, ssl=trust, server_hostname="localhost")
    await client.use_json()
    await client.register(f"secure{n}")
    await client.send(b"y" * 5000, "/join #secure", "over TLS")
    await client.sync()
    if n % 4 == 0:
        await client.send("/quit")
        await hang_up(client)
    elif n % 4 == 1:
        reset(client)
    else:
        client.close()


async def ws_client(port: int, cert: str, n: int) -> None:
    trust = ssl.create_default_context(cafile=cert)
    async with asyncio.timeout(DEADLINE):
        ws = await ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=trust)
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(f"/nick web{n}")
        await ws.send("/join #web")
        await ws.send("from a browser")
        await ws.send("z" * 5000)
        await ws.send("/ping done")
        while json.loads(await ws.recv()).get("type") != "pong":
            pass
        if n % 3 == 1:
            await ws.close()
            return
        if n % 3 == 2:
            # Gone without a close frame (a crash, a dropped network).
            cast(asyncio.Transport, ws.transport).abort()
            return
        await ws.send("/quit")
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass


async def flood(port: int) -> None:
    client = await open_json(port, "flooder")
    client.writer.write(b"".join(b"spam %d\n" % k for k in range(5000)))
    assert b'"code":"rate_limited"' in await client.wait_closed()
    client.close()


async def slow_reader(server: Server) -> None:
    """A client stops reading while its room talks: cut by its send queue."""
    stuck = await open_json(server.port, "stuck")
    stuck.stop_reading()
    talker = await open_json(server.port, "talker")
    (session,) = [s for s in server.sessions if s.nick == "stuck"]
    # The talker reads its echoes as they come, whatever else it does.
    echoes = asyncio.create_task(talker.wait_closed(timeout=DEADLINE * 2))
    await talker.send(*(f"{k} " + "p" * 500 for k in range(400)))
    async with asyncio.timeout(DEADLINE):
        await server.wait_session_closed(session)
    assert session.close_reason.startswith("send queue overflow"), session.close_reason
    stuck.close()
    talker.close()
    await echoes


async def all_closed(server: Server) -> None:
    """Every session of ``server`` has ended and released its connection."""
    async with asyncio.timeout(DEADLINE):
        for session in server.sessions:
            await server.wait_session_closed(session)


async def test_connections_leave_no_reference_cycles(
    start_server: StartServer, cert_pair: tuple[str, str]
) -> None:
    cert, key = cert_pair
    server = await start_server(
        http_port=0,
        tls_cert=cert,
        tls_key=key,
        tls_port=0,
        # Flood control on, far above what the clients other than the flooder send.
        msg_rate=200,
        msg_burst=50,
        flood_lines=100,
    )
    # A small send queue and socket buffer, on the memory store (the SQLite
    # file is the other server's).
    small = await start_server(db=":memory:", sndbuf=4096, max_queue_bytes=32 * 1024)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def tcp(n: int) -> None:
        async with limit:
            await tcp_client(server.port, n)

    with cyclic_garbage() as found:
        await asyncio.gather(*(tcp(n) for n in range(CLIENTS)))
        for n in range(8):
            await tls_client(server.tls_port, cert, n)
        for n in range(6):
            await ws_client(server.http_port, cert, n)
        await flood(server.port)
        await slow_reader(small)
        await all_closed(server)
        await all_closed(small)
    assert not found.types, str(found)
