"""The web port: WebSocket sessions, the page's files, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from chatd.daemon.server import Server
from chatd.store import SqliteStore
from chatd.transports.tls import generate_certificate
from chatd.transports.web import origin_allowed
from tests.conftest import StartServer
from tests.helpers import DEADLINE, LineClient, fill_store, free_store, open_json, until

pytestmark = pytest.mark.timeout(60)

Event = dict[str, Any]


@pytest.fixture
async def web(start_server: StartServer) -> Server:
    return await start_server(http_port=0)


class WsClient:
    """A WebSocket client that reads events with deadlines, like LineClient."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, port: int, nick: str | None = None, **kwargs: Any) -> WsClient:
        scheme = "wss" if "ssl" in kwargs else "ws"
        async with asyncio.timeout(DEADLINE):
            ws = await connect(f"{scheme}://127.0.0.1:{port}/ws", **kwargs)
        client = cls(ws)
        assert (await client.event())["type"] == "welcome"
        if nick is not None:
            await client.send(f"/nick {nick}")
            await client.expect("current")
        return client

    async def send(self, *frames: str) -> None:
        for frame in frames:
            await self.ws.send(frame)

    async def event(self) -> Event:
        async with asyncio.timeout(DEADLINE):
            frame = await self.ws.recv()
        obj: Event = json.loads(frame)
        return obj

    async def expect(self, kind: str, **fields: Any) -> Event:
        seen: list[Event] = []
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    event = await self.event()
                    if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                        return event
                    seen.append(event)
        except TimeoutError:
            raise AssertionError(f"no {kind} {fields}; saw {seen}") from None

    async def close(self) -> None:
        await self.ws.close()


async def http(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request; (status, headers, body). The server closes after it."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **kwargs)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        writer.write(head.encode() + b"\r\n")
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    header, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = header.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, body


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


async def metrics(server: Server) -> str:
    status, headers, body = await http(server.http_port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    return body.decode()


# ---------------------------------------------------------------------------
# WebSocket sessions


async def test_websocket_and_tcp_clients_share_rooms_and_dms(web: Server) -> None:
    ann = await WsClient.open(web.http_port, "ann")
    tom = await open_json(web.port, "tom")
    await ann.expect("join", nick="tom", room="general")
    await tom.send("hello from tcp")
    assert (await ann.expect("message", **{"from": "tom"}))["text"] == "hello from tcp"
    await ann.send("hello from the web")
    message = await tom.expect(lambda e: e.get("from") == "ann")
    assert message["text"] == "hello from the web"
    long = "é" * 2000  # a frame with a 16-bit length, UTF-8 intact both ways
    await ann.send(long)
    assert (await tom.expect(lambda e: e.get("from") == "ann"))["text"] == long
    await ann.expect("message", text=long)
    await ann.send("/msg tom psst")
    direct = await tom.expect(lambda e: e.get("type") == "dm")
    assert (direct["from"], direct["to"], direct["text"]) == ("ann", "tom", "psst")
    await tom.send("/msg ann back")
    assert (await ann.expect("dm", **{"from": "tom"}))["text"] == "back"
    assert sorted(s.connection.transport for s in web.sessions) == ["tcp", "ws"]
    await ann.close()
    await tom.expect(lambda e: e.get("type") == "leave" and e.get("nick") == "ann")
    tom.close()


def test_frames_are_made_once_per_event_and_the_cache_is_bounded() -> None:
    from websockets.frames import Frame, Opcode

    from chatd.transports.web import _FrameCache

    cache = _FrameCache()
    cache.LIMIT = 1000
    event = b'{"type":"pong","token":"x"}\n'
    frame = cache.frame(event)
    assert frame == Frame(Opcode.TEXT, event[:-1]).serialize(mask=False)
    assert cache.frame(event) is frame
    for n in range(100):
        cache.frame(b"%d" % n * 50)
    assert cache._size <= 1000 + 2 * 150


async def test_each_frame_is_one_command_and_json_is_fixed(web: Server) -> None:
    ann = await WsClient.open(web.http_port, "ann")
    await ann.send("/format text")
    error = await ann.expect("error")
    assert error["code"] == "bad_args"
    assert "JSON" in error["text"]
    await ann.send("/ping still-json")
    assert (await ann.expect("pong"))["token"] == "still-json"
    await ann.ws.send(b"caf\xc3( is not utf-8")  # a binary frame of bad bytes
    assert (await ann.expect("error"))["code"] == "bad_encoding"
    await ann.close()


async def test_over_long_frames(start_server: StartServer) -> None:
    server = await start_server(http_port=0, max_line=100)
    ann = await WsClient.open(server.http_port, "ann")
    await ann.send("x" * 150)  # over max_line: an error, the session goes on
    assert (await ann.expect("error"))["code"] == "line_too_long"
    await ann.send("/ping after")
    await ann.expect("pong")
    await ann.send("x" * 1000)  # over 4 x max_line: websockets closes (1009)
    with pytest.raises(ConnectionClosed) as closed:
        await ann.expect("never")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_a_client_that_stops_answering_pings_is_dropped(start_server: StartServer) -> None:
    server = await start_server(http_port=0, ws_ping_interval=0.2, ws_ping_timeout=0.3)
    # A hand-made handshake, then silence: no pong ever comes back.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(DEADLINE):
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        while await reader.read(65536):  # pings and the welcome, until the end
            pass
    writer.close()
    await writer.wait_closed()


async def test_origins(start_server: StartServer) -> None:
    assert origin_allowed(None, "chat:8080", ())
    assert origin_allowed("https://chat:8080", "chat:8080", ())
    assert not origin_allowed("https://evil.example", "chat:8080", ())
    assert origin_allowed("https://app.example", "chat:8080", ("https://app.example",))
    assert origin_allowed("https://evil.example", "chat:8080", ("*",))

    server = await start_server(http_port=0, origins=("https://app.example",))
    port = server.http_port
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{port}/ws", origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    for origin in (f"http://127.0.0.1:{port}", "https://app.example"):
        ws = await connect(f"ws://127.0.0.1:{port}/ws", origin=origin)  # type: ignore[arg-type]
        await ws.close()


async def test_web_connections_count_against_the_connection_limits(
    start_server: StartServer,
) -> None:
    server = await start_server(http_port=0, max_per_ip=2)
    first = await WsClient.open(server.http_port, "first")
    # An idle connection to the web port holds a slot too, from accept on.
    _, idle = await asyncio.open_connection("127.0.0.1", server.http_port)
    await until(lambda: server._slots == 2, "the idle web connection is accepted")
    tcp = await LineClient.open("127.0.0.1", server.port)
    assert (await tcp.line()).startswith("! too_many_connections")
    tcp.close()
    with pytest.raises((OSError, InvalidMessage)):  # closed before any HTTP
        await connect(f"ws://127.0.0.1:{server.http_port}/ws")
    assert server.stats.refused["too_many_connections"] == 2
    idle.close()
    await idle.wait_closed()
    await first.close()
    # Both slots come back: two new connections get in.
    again = await WsClient.open(server.http_port, "again")
    status, _, _ = await http(server.http_port, "/healthz")
    assert status == 200
    await again.close()


async def test_a_frame_with_its_own_newline_is_one_line(start_server: StartServer) -> None:
    server = await start_server(http_port=0, msg_rate=5, msg_burst=4)
    ann = await WsClient.open(server.http_port, "ann")
    await ann.send("/ping a\n", "/ping b\r\n", "/ping c")
    for token in "abc":
        await ann.expect("pong", token=token)
    assert server.stats.rate_delayed == 0  # three lines, within the burst of four
    await ann.close()


async def test_shutdown_says_goodbye_to_websockets(start_server: StartServer) -> None:
    server = await start_server(http_port=0)
    ann = await WsClient.open(server.http_port, "ann")
    stopping = asyncio.create_task(server.shutdown())
    await ann.expect("shutdown")
    with pytest.raises(ConnectionClosed) as closed:
        await ann.event()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000
    await stopping


async def test_wss_when_tls_is_configured(start_server: StartServer, tmp_path: Any) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_certificate(cert, key, ["localhost", "127.0.0.1"])
    server = await start_server(http_port=0, tls_cert=str(cert), tls_key=str(key), tls_port=0)
    trust = ssl.create_default_context(cafile=str(cert))
    ann = await WsClient.open(server.http_port, "ann", ssl=trust)
    await ann.send("/ping secure")
    await ann.expect("pong", token="secure")
    await ann.close()
    status, _, body = await http(
        server.http_port, "/healthz", ssl=trust, server_hostname="localhost"
    )
    assert (status, body) == (200, b"ok\n")


# ---------------------------------------------------------------------------
# HTTP


async def test_the_page_and_its_files_are_served(web: Server) -> None:
    status, headers, body = await http(web.http_port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in body.lower()
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = await http(web.http_port, path)
        assert status == 200
        assert headers["content-type"].startswith(kind)
        assert body
    status, headers, body = await http(web.http_port, "/", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    assert (await http(web.http_port, "/nope"))[0] == 404
    assert (await http(web.http_port, "/", method="POST"))[0] == 405


async def test_healthz_follows_the_store(start_server: StartServer, tmp_path: Any) -> None:
    server = await start_server(http_port=0, db=str(tmp_path / "chat.db"))
    store = server.manager.store
    assert isinstance(store, SqliteStore)
    status, _, body = await http(server.http_port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    alice = await open_json(server.port, "alice")
    event, _ = await fill_store(store, alice)
    assert event["code"] == "storage_unavailable"
    status, _, body = await http(server.http_port, "/healthz")
    assert status == 503
    assert body == b"a store write failed in the last 30 s\n"
    # With no traffic to prove it healthy, the failure is forgotten in time.
    assert store.last_failure is not None
    store.last_failure -= store.FAILURE_MEMORY
    assert (await http(server.http_port, "/healthz"))[0] == 200
    event, _ = await fill_store(store, alice)  # the database is still full
    assert (await http(server.http_port, "/healthz"))[0] == 503

    await free_store(store)
    await alice.send("after")
    await alice.expect(lambda e: e.get("text") == "after")
    assert (await http(server.http_port, "/healthz"))[0] == 200
    alice.close()


async def test_healthz_is_unhealthy_while_shutting_down(start_server: StartServer) -> None:
    server = await start_server(http_port=0)
    assert (await server.health()) == (True, "ok")
    ann = await WsClient.open(server.http_port, "ann")
    stopping = asyncio.create_task(server.shutdown())
    await ann.expect("shutdown")
    assert (await server.health()) == (False, "shutting down")
    await ann.close()
    await stopping


async def test_metrics_move_with_traffic(start_server: StartServer) -> None:
    server = await start_server(http_port=0, msg_rate=5, msg_burst=2, flood_lines=5)
    before = await metrics(server)
    assert metric(before, "chatd_messages_received_total") == 0
    ann = await WsClient.open(server.http_port, "ann")
    tom = await open_json(server.port, "tom")
    text = await metrics(server)
    assert metric(text, 'chatd_clients{transport="ws"}') == 1
    assert metric(text, 'chatd_clients{transport="tcp"}') == 1
    assert metric(text, "chatd_rooms") == 1

    await ann.send("one", "two")
    await tom.expect(lambda e: e.get("text") == "two")
    text = await metrics(server)
    assert metric(text, "chatd_messages_received_total") == 2
    assert metric(text, "chatd_messages_delivered_total") == 4  # two members each
    assert metric(text, "chatd_fanout_latency_seconds_count") == 2
    assert metric(text, "chatd_store_write_latency_seconds_count") == 2
    assert metric(text, "chatd_bytes_sent_total") > metric(before, "chatd_bytes_sent_total")

    # Past the burst, lines wait (delayed); a flood is cut (disconnected).
    await tom.send(*[f"/ping {n}" for n in range(4)])
    await tom.expect(lambda e: e.get("token") == "3")
    flood = await LineClient.open("127.0.0.1", server.port)
    await flood.send(b"flooder\n" + b"/ping\n" * 2000)
    await flood.wait_closed()
    flood.close()
    text = await metrics(server)
    assert metric(text, 'chatd_rate_limited_total{action="delayed"}') >= 2
    assert metric(text, 'chatd_rate_limited_total{action="disconnected"}') == 1
    assert metric(text, "process_resident_memory_bytes") > 0
    await ann.close()
    tom.close()


async def test_metrics_count_slow_consumers(start_server: StartServer) -> None:
    server = await start_server(http_port=0, max_queue_bytes=16_384, sndbuf=4096, max_line=1000)
    slow = await open_json(server.port, "slow")
    slow.stop_reading()
    talker = await open_json(server.port, "talker")
    line = "y" * 900
    for _ in range(400):
        await talker.send(line)
        if server.stats.slow_consumers:
            break
        await talker.expect(lambda e: e.get("type") == "message")
    text = await metrics(server)
    assert metric(text, "chatd_slow_consumer_disconnects_total") == 1
    slow.close()
    talker.close()


async def test_a_wall_reaches_websocket_and_nc_clients_and_metrics_count_moderation(
    start_server: StartServer,
) -> None:
    server = await start_server(http_port=0, opers=("root",))
    text = await metrics(server)
    for action in ("kick", "ban", "kline"):
        assert metric(text, f'chatd_moderation_actions_total{{action="{action}"}}') == 0
    root = await open_json(server.port, "root")
    page = await WsClient.open(server.http_port, "pagey")
    nc = await LineClient.open("127.0.0.1", server.port)
    try:
        assert (await nc.line()).startswith("* welcome")
        await nc.send("ncuser")
        await nc.expect_line(r"^\* now talking in #general$")
        await root.send("/register correct-horse")
        await root.expect(lambda e: e["type"] == "registered" and e["account"])
        await root.send("/wall the server restarts at noon")
        assert await page.expect("wall") == {
            "type": "wall",
            "from": "root",
            "text": "the server restarts at noon",
        }
        await nc.expect_line(r"^! notice from root: the server restarts at noon$")
        await root.send("/join ops")
        await root.expect(lambda e: e["type"] == "current" and e["room"] == "ops")
        await page.send("/join ops")
        await page.expect("current", room="ops")
        await root.send("/kick pagey", "/ban ip:10.1.2.3", "/kline ip:10.9.9.9")
        await root.expect("kline")
        await page.expect("kick", nick="pagey", by="root")
        text = await metrics(server)
        assert metric(text, 'chatd_moderation_actions_total{action="kick"}') == 1
        assert metric(text, 'chatd_moderation_actions_total{action="ban"}') == 1
        assert metric(text, 'chatd_moderation_actions_total{action="kline"}') == 1
    finally:
        await page.ws.close()
        nc.close()
        root.close()
