"""Bad input, slow readers, floods and limits, over real loopback sockets.

Each test checks what a user would notice: the offender gets an error line or
a clean disconnect with a reason, and everyone else carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from chatd.daemon.server import Server
from tests.conftest import Connect, StartServer
from tests.helpers import Daemon, Event, LineClient, open_json, rss_kib, until_async


async def test_invalid_utf8_is_refused_and_the_connection_stays_usable(connect: Connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.send(b"bad \xc3\x28 byte", b"\xed\xa0\x80", "still here")
    for _ in range(2):
        assert (await alice.expect("error"))["code"] == "bad_encoding"
    assert (await bob.expect("message"))["text"] == "still here"


async def test_telnet_negotiation_is_stripped(server: Server) -> None:
    client = await LineClient.open("127.0.0.1", server.port)
    try:
        await client.line()
        # What a telnet client sends: option negotiation, then CRLF lines.
        await client.send(b"\xff\xfd\x03\xff\xfb\x18" + b"/format json\r\n")
        await client.expect("format")
        await client.send(b"/nick tel\xff\xf1net\r\n", b"\xff\xfa\x18\x00xterm\xff\xf0hi there\r\n")
        assert (await client.expect("registered"))["nick"] == "telnet"
        assert (await client.expect("message"))["text"] == "hi there"
    finally:
        client.close()


async def test_over_long_line_gets_one_error_and_its_tail_is_never_run(
    start_server: StartServer,
) -> None:
    server = await start_server(max_line=64)
    client = await open_json(server.port, "longwinded")
    try:
        # The tail of the long line looks like a command; it must not run.
        await client.send(b"x" * 100 + b" /quit\n/ping ok\n")
        events = await client.sync("ok")
        assert [e["code"] for e in events if e["type"] == "error"] == ["line_too_long"]
        await client.send(b"y" * 30 + b"\n")
        assert (await client.expect("message"))["text"] == "y" * 30
    finally:
        client.close()


@pytest.mark.slow
async def test_ten_megabyte_line_does_not_grow_the_daemon() -> None:
    daemon = await Daemon.start()
    client = None
    try:
        client = await open_json(daemon.port, "bulk")
        await client.sync("warm")
        before = rss_kib(daemon.proc.pid)
        chunk = b"z" * 65536
        for _ in range(160):  # 10 MiB, no newline
            client.writer.write(chunk)
            await client.writer.drain()
        await client.send(b"\n/ping after")
        events = await client.sync("after")
        assert [e.get("code") for e in events] == ["line_too_long"]
        grown = rss_kib(daemon.proc.pid) - before
        assert grown < 4096, f"daemon grew by {grown} KiB for one 10 MiB line"
    finally:
        if client is not None:
            client.close()
        assert await daemon.stop() == 0


@pytest.mark.both_stores
async def test_slow_consumer_is_cut_and_the_room_carries_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One client stops reading: it is dropped; the others lose nothing."""
    caplog.set_level(logging.WARNING, "chatd.daemon")
    server = await start_server(sndbuf=4096, max_queue_bytes=32 * 1024)
    stuck = await open_json(server.port, "stuck")
    stuck.stop_reading()
    talker = await open_json(server.port, "talker")
    listeners = [await open_json(server.port, f"listener{i}") for i in range(3)]
    try:
        for client in (talker, *listeners):
            await client.sync()
        count, payload, window = 2000, "p" * 200, 50

        async def talk() -> list[int]:
            """Send with at most ``window`` messages unconfirmed by their echo."""
            echoed: list[int] = []
            for start in range(0, count, window):
                await talker.send(*(f"{n} {payload}" for n in range(start, start + window)))
                while len(echoed) < start + window:
                    event = await talker.expect("message")
                    echoed.append(int(event["text"].split()[0]))
            return echoed

        async def receive_all(client: LineClient) -> tuple[list[int], list[Event]]:
            got: list[int] = []
            others: list[Event] = []
            while len(got) < count:
                event = await client.event(timeout=30)
                if event["type"] == "message" and event["from"] == "talker":
                    got.append(int(event["text"].split()[0]))
                else:
                    others.append(event)
            return got, others

        echoed, *results = await asyncio.gather(talk(), *(receive_all(c) for c in listeners))
        assert echoed == list(range(count))
        for got, _ in results:
            assert got == list(range(count))
        # Everyone saw the stuck client leave, with the reason.
        leaves = [e for _, others in results for e in others if e["type"] == "leave"]
        leaves += [e for e in await listeners[0].sync() if e["type"] == "leave"]
        assert any(e["nick"] == "stuck" and "send queue overflow" in e["reason"] for e in leaves), (
            leaves
        )
        stuck.resume_reading()
        await stuck.wait_closed()  # what was in flight, then the reset
        assert "send queue overflow" in caplog.text
    finally:
        for client in (stuck, talker, *listeners):
            client.close()


@pytest.mark.both_stores
async def test_replies_to_a_client_that_does_not_read_are_paced_not_dropped(
    start_server: StartServer,
) -> None:
    """A client that sends many commands before reading gets every answer."""
    server = await start_server(sndbuf=4096, max_queue_bytes=16 * 1024)
    client = await open_json(server.port, "pasty")
    try:
        client.stop_reading()
        await client.send(*(["/help"] * 1500), "/ping done")
        client.resume_reading()
        events = await client.sync("done")
        assert sum(e["type"] == "help" for e in events) == 1500
    finally:
        client.close()


@pytest.mark.both_stores
@pytest.mark.parametrize("register", [True, False], ids=["registered", "unregistered"])
async def test_a_client_that_never_reads_is_cut_by_the_write_timeout(
    start_server: StartServer, register: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Commands without reading: paced, then cut, whatever the other deadlines."""
    caplog.set_level(logging.WARNING, "chatd.daemon")
    server = await start_server(
        sndbuf=4096,
        max_queue_bytes=16 * 1024,
        write_timeout=1.0,
        register_lines=10_000,
        register_bytes=1 << 20,
    )
    client = await open_json(server.port, "mute" if register else None)
    client.stop_reading()
    try:
        client.writer.write(b"/help\n" * 3000)
        (session,) = server.sessions
        await server.wait_session_closed(session)
        assert "write timeout" in caplog.text
    finally:
        client.close()


@pytest.mark.both_stores
async def test_a_steady_sender_above_the_rate_is_slowed_never_cut(
    start_server: StartServer,
) -> None:
    """Half again the rate, for longer than the read-ahead lasts: all delivered."""
    server = await start_server(msg_rate=100, msg_burst=5, flood_lines=20)
    talker = await open_json(server.port, "steady")
    listener = await open_json(server.port, "listener")
    try:
        count = 200

        async def paced() -> None:
            # Pacing the load at 150 lines/s; nothing in the test waits on it.
            for n in range(count):
                await talker.send(f"line {n}")
                await asyncio.sleep(1 / 150)

        sender = asyncio.create_task(paced())
        texts = [(await listener.expect("message"))["text"] for _ in range(count)]
        await sender
        assert texts == [f"line {n}" for n in range(count)]
        await talker.send("/ping still-here")
        await talker.expect(lambda e: e.get("token") == "still-here")
    finally:
        talker.close()
        listener.close()


async def test_a_steady_flood_in_small_writes_is_cut(start_server: StartServer) -> None:
    """Ten times the rate, one line per write: pushback alone does not save it."""
    server = await start_server(msg_rate=20, msg_burst=5, flood_lines=20)
    flooder = await open_json(server.port, "flooder")
    try:

        async def flood() -> None:
            with contextlib.suppress(ConnectionError):
                for n in range(3000):
                    await flooder.send(f"spam {n}")
                    await asyncio.sleep(1 / 200)  # pacing the load, not waiting on it

        sender = asyncio.create_task(flood())
        data = await flooder.wait_closed()
        assert b'"code":"rate_limited"' in data
        sender.cancel()
        await asyncio.wait([sender])
    finally:
        flooder.close()


async def test_a_flood_is_cut_with_rate_limited(start_server: StartServer) -> None:
    server = await start_server(msg_rate=5, msg_burst=5, flood_lines=50)
    flooder = await open_json(server.port, "flooder")
    bystander = await open_json(server.port, "bystander")
    try:
        flooder.writer.write(b"".join(b"spam %d\n" % n for n in range(5000)))
        data = await flooder.wait_closed()
        assert b'"code":"rate_limited"' in data
        left = await bystander.expect(lambda e: e["type"] == "leave" and e["nick"] == "flooder")
        assert left["reason"] == "flooding"
        await bystander.send("/ping alive")
        await bystander.expect("pong")
    finally:
        flooder.close()
        bystander.close()


async def test_clients_resetting_together_leave_no_errors(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """Resets racing with the leave events they cause are ordinary, not errors."""
    caplog.set_level(logging.WARNING)
    watcher = await connect("watcher")
    crowd = [await connect(f"crowd{n}") for n in range(40)]
    await watcher.sync()
    for client in crowd:
        reset(client)
    for _ in crowd:
        await watcher.expect("leave")
    await watcher.send("still fine")
    assert (await watcher.expect("message"))["text"] == "still fine"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_reset_during_the_lingering_close_leaves_no_error(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    client = await open_json(server.port, "leaver")
    (session,) = server.sessions
    await client.send("/quit")
    await client.expect("bye")
    await client.expect_eof()  # the server is now lingering for our side to close
    reset(client)
    await server.wait_session_closed(session)
    del session
    gc.collect()  # an unretrieved error would be reported now
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def reset(client: LineClient) -> None:
    """Close with RST, as a crashed client or a middlebox does."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


async def test_server_full(start_server: StartServer) -> None:
    server = await start_server(max_clients=2)
    first = await open_json(server.port, "first")
    second = await open_json(server.port, "second")
    third = await LineClient.open("127.0.0.1", server.port)
    try:
        assert (await third.line()).startswith("! server_full:")
        await third.wait_closed()
        # A place frees up when someone leaves.
        (leaving,) = [s for s in server.sessions if s.nick == "second"]
        await second.send("/quit")
        await second.wait_closed()
        second.close()
        await server.wait_session_closed(leaving)
        fourth = await open_json(server.port, "fourth")
        fourth.close()
    finally:
        for client in (first, second, third):
            client.close()


async def test_connections_per_ip(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=2)
    clients = [await open_json(server.port) for _ in range(2)]
    extra = await LineClient.open("127.0.0.1", server.port)
    other_ip = await LineClient.open("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
    try:
        assert (await extra.line()).startswith("! too_many_connections:")
        await extra.wait_closed()
        assert (await other_ip.line()).startswith("* welcome")
    finally:
        for client in (*clients, extra, other_ip):
            client.close()


async def test_registration_timeout(start_server: StartServer) -> None:
    server = await start_server(register_timeout=1.5)  # room for "quick" on a busy machine
    silent = await LineClient.open("127.0.0.1", server.port)
    quick = await open_json(server.port, "quick")
    try:
        data = await silent.wait_closed()
        assert b"! registration_timeout:" in data
        await quick.send("/ping later")  # registered sessions have no such deadline
        await quick.expect("pong")
    finally:
        silent.close()
        quick.close()


async def test_registration_timeout_holds_for_a_throttled_client(
    start_server: StartServer,
) -> None:
    """Keeping a few bad nicknames always waiting does not dodge the deadline."""
    server = await start_server(register_timeout=1.0, msg_rate=20, msg_burst=1)
    client = await LineClient.open("127.0.0.1", server.port)
    try:
        await client.line()
        # A window of three lines: the server always has input waiting, so it
        # stays on its throttled path without reaching the flood limit.
        await client.send("bad nick", "bad nick", "bad nick")
        while (line := await client.line()).startswith("! bad_nick"):
            await client.send("bad nick")
        assert line.startswith("! registration_timeout:")
        await client.wait_closed()
    finally:
        client.close()


async def test_keepalive_and_nodelay_on_every_connection(connect: Connect, server: Server) -> None:
    await connect("kept")
    (session,) = server.sessions
    sock: Any = session.connection.get_extra_info("socket")
    settings = server.settings
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == settings.keepalive_idle
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == settings.keepalive_interval
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == settings.keepalive_count


async def test_a_storm_of_connections_all_get_in(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=1000)

    async def one(n: int) -> None:
        client = await LineClient.open("127.0.0.1", server.port)
        try:
            await client.use_json()
            await client.register(f"storm{n}")
        finally:
            client.close()

    async with asyncio.TaskGroup() as group:
        for n in range(300):
            group.create_task(one(n))


@pytest.mark.both_stores
async def test_shutdown_tells_everyone_and_leaves_no_task(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "chatd.daemon")
    server = await start_server(sndbuf=4096, shutdown_grace=1.0)
    readers = [await open_json(server.port, f"r{i}") for i in range(3)]
    stuck = await open_json(server.port, "stuck")
    stuck.stop_reading()
    try:
        # Fill the stuck client's buffers so its flush cannot finish.
        await readers[0].send(*(f"{'x' * 500}" for _ in range(300)))
        await readers[0].sync("filled")

        async def read_to_the_end(client: LineClient) -> Event:
            """As nc does: read until the server closes, then close."""
            shutdown = await client.expect("shutdown")
            await client.expect_eof()
            client.writer.close()
            return shutdown

        stopping = asyncio.create_task(server.shutdown())
        for event in await asyncio.gather(*(read_to_the_end(c) for c in readers)):
            assert event["reason"] == "server shutting down"
        await stopping
        assert server.session_count == 0
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, others
        # Only the client that never read was cut.
        cut = [r.getMessage() for r in caplog.records if "shutdown grace expired" in r.getMessage()]
        assert len(cut) == 1
        assert "stuck" in cut[0]
    finally:
        for client in (*readers, stuck):
            client.close()


async def test_a_room_limit_for_the_whole_server(start_server: StartServer) -> None:
    server = await start_server(max_total_rooms=3)
    alice = await open_json(server.port, "alice")
    try:
        await alice.send("/create one", "/create two", "/create three", "/join two")
        events = await alice.sync()
        errors = [e for e in events if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["too_many_rooms"]
        assert events[-1] == {"type": "current", "room": "two"}  # existing rooms still work
    finally:
        alice.close()


def test_refusals_are_logged_once_per_address_and_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from chatd.daemon.server import _WindowedLog

    now = [0.0]
    log = _WindowedLog("refused a connection from %s: %s", clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "chatd.daemon.server")
    for _ in range(1000):
        log.note("10.0.0.1", "too_many_connections")
    log.note("10.0.0.2", "server_full")
    assert len(caplog.records) == 2
    now[0] = 11.0
    log.note("10.0.0.1", "too_many_connections")
    messages = [r.getMessage() for r in caplog.records]
    assert "... and 999 more times from 10.0.0.1" in messages
    assert len(messages) == 4


class FaultyConnection:
    """A Connection whose writes fail with an unexpected error, or are kept."""

    def __init__(self, peer: str, *, fail: bool) -> None:
        self.peer = peer
        self.fail = fail
        self.written: list[bytes] = []
        self.aborted = False

    async def read(self) -> bytes:
        await asyncio.get_running_loop().create_future()  # never: no input
        return b""

    def write(self, chunks: list[bytes]) -> int:
        if self.fail:
            raise RuntimeError("a transport bug")
        self.written += chunks
        return sum(map(len, chunks))

    async def drain(self) -> None:
        return

    def congested(self) -> bool:
        return False

    def buffered(self) -> int:
        return 0

    def write_eof(self) -> None:
        return

    async def close(self) -> None:
        return

    async def wait_closed(self) -> None:
        return

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> object:
        return None


async def test_one_sessions_failing_flush_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from chatd.config import Settings
    from chatd.core.rooms import RoomManager
    from chatd.daemon.session import Session

    manager = RoomManager()
    bad_conn = FaultyConnection("bad", fail=True)
    good_conn = FaultyConnection("good", fail=False)
    bad = Session(manager, Settings(), bad_conn)  # type: ignore[arg-type]
    good = Session(manager, Settings(), good_conn)  # type: ignore[arg-type]
    manager.register(bad, "bad")  # bad is flushed first in every pass
    manager.register(good, "good")
    for text in ("one", "two"):
        manager.say(good, text)
        flushed = asyncio.Event()
        asyncio.get_running_loop().call_soon(flushed.set)  # after the flush pass
        await flushed.wait()
    assert b"[general] good: one\n" in good_conn.written
    assert b"[general] good: two\n" in good_conn.written
    assert bad_conn.aborted
    assert "flushing bad failed" in caplog.text


def test_a_finished_event_loop_is_not_kept_alive() -> None:
    import weakref

    from chatd.daemon.outbox import _flusher

    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    _flusher(loop).add  # noqa: B018 - registers the loop's flusher
    gone = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert gone() is None


@pytest.mark.both_stores
async def test_after_congestion_clears_no_writer_task_remains(start_server: StartServer) -> None:
    server = await start_server(sndbuf=4096)
    slow = await open_json(server.port, "slow")
    talker = await open_json(server.port, "talker")
    try:
        slow.stop_reading()
        await talker.send(*(f"{n} {'x' * 500}" for n in range(400)))
        await talker.sync("sent")
        slow.resume_reading()
        events = await slow.sync("caught-up")
        assert sum(e["type"] == "message" for e in events) == 400
        writers = [t for t in asyncio.all_tasks() if "_write_loop" in repr(t.get_coro())]
        assert writers == []
    finally:
        slow.close()
        talker.close()


async def test_replies_held_behind_a_message_count_against_the_outbox(tmp_path: Path) -> None:
    """A message the store has not confirmed holds back the replies to the
    commands after it. Those replies are output like any other: a client
    that asks for more of them than its soft limit, and reads none, is read
    no further until they go out (else one cheap line, /help, could fill
    the daemon's memory while the store is slow)."""
    db = tmp_path / "chat.db"
    daemon = await Daemon.start("--db", str(db))
    asker = await open_json(daemon.port, "asker")
    other = await open_json(daemon.port, "other")
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # the store waits (its busy timeout is 5 s)
        asker.stop_reading()
        # Some 3,000 help replies of about 2 KiB each: far over the soft limit.
        await asker.send(b"hello\n" + b"/help\n" * 3000 + b"/nick marker\n")
        for _ in range(2):  # the daemon has read and run what it would run
            await other.send("/who")
            await other.expect("who")
        await other.send("/who")
        assert "marker" not in (await other.expect("who"))["nicks"]
        locker.execute("ROLLBACK")
        asker.resume_reading()
        assert (await other.expect("message"))["text"] == "hello"

        async def renamed() -> bool:
            await other.send("/who")
            return "marker" in (await other.expect("who"))["nicks"]

        await until_async(renamed, "the rest of the asker's lines run")
    finally:
        locker.close()
        asker.close()
        other.close()
        assert await daemon.stop() == 0
