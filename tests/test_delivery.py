"""Delivery on the store users get by default: bursts, pushback and order.

Every test here runs on the memory store and on SQLite (``both_stores``).
SQLite confirms writes in groups: a burst of messages from its group commit
must not cut a reader that keeps up, and a sender's own message must come
back before the reply to its next command, however late the store confirms.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chatd.transports.tls import generate_certificate
from tests.helpers import DEADLINE, Daemon, LineClient, free_port, open_json

pytestmark = pytest.mark.both_stores

Connect = Callable[..., Awaitable[LineClient]]
StartDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start_daemon(chatd_store: str) -> AsyncIterator[StartDaemon]:
    """``chatd serve`` in a process of its own, on this run's store, as users run it."""
    daemons: list[Daemon] = []

    async def start(*args: str) -> Daemon:
        daemon = await Daemon.start("--db", chatd_store, *args)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        assert await daemon.stop() == 0


@pytest.fixture
async def connect(start_daemon: StartDaemon) -> AsyncIterator[Connect]:
    """Clients of one daemon: ``await connect("alice")`` is registered in JSON mode."""
    daemon = await start_daemon()
    clients: list[LineClient] = []

    async def open_client(nick: str, *, json_mode: bool = True) -> LineClient:
        client = await LineClient.open("127.0.0.1", daemon.port)
        clients.append(client)
        if json_mode:
            await client.use_json()
        await client.register(nick, json_mode=json_mode)
        return client

    yield open_client
    for client in clients:
        client.close()


# -- order ---------------------------------------------------------------


async def test_own_message_comes_before_the_reply_to_the_next_command(
    connect: Connect,
) -> None:
    alice = await connect("alice")
    await alice.send("hello\n/who\n/ping done")
    events = await alice.sync("done")
    kinds = [e["type"] for e in events]
    assert kinds == ["message", "who"], events
    assert events[0]["text"] == "hello"


async def test_pipelined_commands_get_their_replies_in_command_order(
    connect: Connect,
) -> None:
    """Messages, commands that answer at once and commands that wait, mixed."""
    alice = await connect("alice")
    lines = ["one", "/topic things", "two", "/who", "/me waves", "/rooms", "three"]
    lines += ["/join #side", "four", "/history 2", "/msg alice five", "/ping end"]
    await alice.send("\n".join(lines))
    events = await alice.sync("end")
    said = [
        (e["type"], e.get("text"))
        for e in events
        if e["type"] in ("message", "topic", "who", "rooms", "current", "dm", "history")
        and not e.get("history")
    ]
    assert said == [
        ("message", "one"),
        ("topic", None),
        ("message", "two"),
        ("who", None),
        ("message", "waves"),
        ("rooms", None),
        ("message", "three"),
        ("current", None),
        ("message", "four"),
        ("history", None),
        ("dm", "five"),
    ], events


async def test_text_mode_keeps_the_order_too(connect: Connect) -> None:
    alice = await connect("alice", json_mode=False)
    await alice.send(b"hello\n/who\n/ping done\n")
    lines = []
    while not (line := await alice.line()).startswith("* pong"):
        lines.append(line)
    assert len(lines) == 2, lines
    assert lines[0].endswith("alice: hello"), lines
    assert lines[1] == "* in #general: alice", lines


async def test_messages_after_a_quit_are_not_lost_and_the_goodbye_comes_last(
    connect: Connect,
) -> None:
    bob = await connect("bob")
    alice = await connect("alice")
    await alice.send("last words\n/quit bye")
    closing = await alice.wait_closed()
    events = [json.loads(line) for line in closing.decode().splitlines()]
    assert [e["type"] for e in events][-2:] == ["message", "bye"], events
    assert (await bob.expect("message"))["text"] == "last words"


async def test_a_message_just_before_logout_still_comes_back(connect: Connect) -> None:
    """/logout leaves every room: it waits for the messages sent before it."""
    bob = await connect("bob")
    alice = await connect("alice")
    await alice.send("/register correct-horse")
    await alice.expect("registered")
    await alice.send("last words\n/logout")
    events = []
    while (event := await alice.event())["type"] != "logout":
        events.append(event)
    assert [e["text"] for e in events if e["type"] == "message"] == ["last words"], events
    assert (await bob.expect("message"))["text"] == "last words"


# -- bursts and pushback -------------------------------------------------


async def _read_messages(client: LineClient, want: int, sender: str | None = None) -> list[str]:
    """Read until ``want`` room messages (from ``sender``, if given) arrived.

    Readers share this test's one event loop: each lets the others run every
    few dozen events, as separate clients would read side by side, instead
    of parsing all it has buffered (megabytes) while the others read nothing.
    """
    texts: list[str] = []
    async with asyncio.timeout(DEADLINE * 12):
        while len(texts) < want:
            event = await client.event()
            if event["type"] == "message" and (sender is None or event["nick"] == sender):
                texts.append(event["text"])
                if len(texts) % 32 == 0:
                    await asyncio.sleep(0)  # a turn for the other readers, not a wait
            elif event["type"] in ("error", "bye"):
                raise AssertionError(f"{client.nick} got {event} after {len(texts)} messages")
    return texts


async def _talk(client: LineClient, lines: list[str]) -> None:
    """Write every line as fast as TCP takes them."""
    data = "".join(line + "\n" for line in lines).encode()
    for start in range(0, len(data), 1 << 16):
        client.writer.write(data[start : start + (1 << 16)])
        await client.writer.drain()


def _lines(who: str, count: int, size: int) -> list[str]:
    return [f"{who}-{i:06d}-".ljust(size, "x") for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("talkers", "count", "size"),
    [(1, 5000, 1000), (1, 20_000, 60), (6, 1000, 1000)],
    ids=["one-talker-large", "one-talker-small", "six-talkers-large"],
)
async def test_a_burst_cuts_no_reader_that_keeps_up(
    start_daemon: StartDaemon,
    talkers: int,
    count: int,
    size: int,
) -> None:
    """Talkers write as fast as TCP allows; a watcher reads as fast as it can;
    one member never reads. Only the one that never reads may be cut, and
    the watcher and every talker get every message, in each talker's order."""
    server = await start_daemon("--max-line", "2048")
    stuck = await open_json(server.port, "stuck")
    watcher = await open_json(server.port, "watcher")
    speakers = [await open_json(server.port, f"talker{n}") for n in range(talkers)]
    clients = [stuck, watcher, *speakers]
    try:
        stuck.stop_reading()
        scripts = {c.nick: _lines(c.nick or "", count, size) for c in speakers}
        total = talkers * count
        readers = [asyncio.create_task(_read_messages(c, total)) for c in (watcher, *speakers)]
        await asyncio.gather(*(_talk(c, scripts[c.nick or ""]) for c in speakers))
        received = await asyncio.gather(*readers)
        for texts in received:
            assert len(texts) == total
            for nick, script in scripts.items():
                assert [t for t in texts if t.startswith(nick + "-")] == script
        cut = [line for line in server.log if "dropping" in line]
        assert all(" stuck " in line for line in cut), cut
    finally:
        for client in clients:
            client.close()


async def test_a_sender_waits_for_the_store_rather_than_cut_the_room(
    start_daemon: StartDaemon,
) -> None:
    """A tight outbox: the store's confirmations must not arrive in one lump."""
    server = await start_daemon("--max-queue-bytes", str(64 * 1024), "--max-line", "1024")
    watcher = await open_json(server.port, "watcher")
    talker = await open_json(server.port, "talker")
    try:
        script = _lines("talker", 3000, 900)
        reading = asyncio.create_task(_read_messages(watcher, len(script)))
        echoes = asyncio.create_task(_read_messages(talker, len(script)))
        await _talk(talker, script)
        assert await reading == script
        assert await echoes == script
    finally:
        watcher.close()
        talker.close()


async def test_tls_keeps_the_order_too(start_daemon: StartDaemon, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_certificate(cert, key, ["localhost"])
    daemon = await start_daemon(
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", str(free_port())
    )
    line = await daemon.wait_log(r"listening on \S+:\d+ \(TLS\)")
    port = int(re.findall(r":(\d+) \(TLS\)", line)[0])
    context = ssl.create_default_context(cafile=str(cert))
    client = await LineClient.open("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        await client.use_json()
        await client.register("alice")
        await client.send("hello\n/who\n/ping done")
        events = await client.sync("done")
        assert [e["type"] for e in events] == ["message", "who"], events
    finally:
        client.close()
