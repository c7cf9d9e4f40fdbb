"""The IRC gateway with a real IRC library: the ``irc`` package from PyPI.

Its asyncio reactor (``irc.client_aio.AioReactor``) runs on the test's own
event loop; its events are collected as they come, and the test waits for
each one it expects, with a deadline. On the other side is a chatd user in
text mode, as ``nc`` shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from irc.client import Event as IrcEvent  # type: ignore[import-untyped]
from irc.client_aio import AioConnection, AioReactor  # type: ignore[import-untyped]

from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import DEADLINE, LineClient

pytestmark = pytest.mark.timeout(60)


class Library:
    """One connection of the ``irc`` package's asyncio client, and its events."""

    def __init__(self) -> None:
        self.reactor = AioReactor(loop=asyncio.get_running_loop())
        self.connection: AioConnection = self.reactor.server()
        self.events: list[IrcEvent] = []
        self._cursor = 0
        self._changed = asyncio.Event()
        self.reactor.add_global_handler("all_events", self._record, -20)

    def _record(self, connection: AioConnection, event: IrcEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def connect(self, port: int, nick: str) -> None:
        async with asyncio.timeout(DEADLINE):
            await self.connection.connect("127.0.0.1", port, nick, ircname=f"the {nick}")

    async def expect(self, kind: str, pred: Callable[[IrcEvent], bool] | None = None) -> IrcEvent:
        """The next event of type ``kind`` (after the last one matched) that ``pred`` takes."""
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    for i in range(self._cursor, len(self.events)):
                        event = self.events[i]
                        if event.type == kind and (pred is None or pred(event)):
                            self._cursor = i + 1
                            return event
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = [(e.type, str(e.source), e.target, e.arguments) for e in self.events]
            raise AssertionError(f"no {kind} event; saw {seen[self._cursor :]}") from None

    def close(self) -> None:
        if self.connection.is_connected():
            self.connection.transport.abort()
            self.connection.connected = False


@pytest.fixture
async def gateway(start_server: StartServer) -> Server:
    return await start_server(irc_port=0)


@pytest.fixture
async def library() -> AsyncIterator[Library]:
    client = Library()
    yield client
    client.close()


@pytest.fixture
async def nc(gateway: Server) -> AsyncIterator[Callable[[str], Any]]:
    """``await nc("bob")``: a text-mode chatd client, registered."""
    opened: list[LineClient] = []

    async def open_(nick: str) -> LineClient:
        client = await LineClient.open("127.0.0.1", gateway.port)
        opened.append(client)
        await client.register(nick, json_mode=False)
        return client

    yield open_
    for client in opened:
        client.close()


def source_nick(event: IrcEvent) -> str:
    return str(event.source.nick)


@pytest.mark.both_stores
async def test_an_irc_library_client_talks_with_an_nc_user(
    gateway: Server, library: Library, nc: Callable[[str], Any]
) -> None:
    bob: LineClient = await nc("bob")
    await bob.send("/join lib")
    await bob.expect_line(r"^\* now talking in #lib$")

    await library.connect(gateway.irc_port, "libbot")
    welcome = await library.expect("welcome")
    assert welcome.target == "libbot"
    await library.expect("endofmotd")
    assert library.connection.get_nickname() == "libbot"

    library.connection.join("#lib")
    join = await library.expect("join", lambda e: source_nick(e) == "libbot")
    assert join.target == "#lib"
    names = await library.expect("namreply")
    assert set(names.arguments[-1].split()) == {"@bob", "libbot"}
    await library.expect("endofnames")
    await bob.expect_line(r"^\* libbot joined #lib$")

    # nc -> the library: a message, an action, a private message.
    await bob.send("hello bot")
    said = await library.expect("pubmsg")
    assert (source_nick(said), said.target, said.arguments) == ("bob", "#lib", ["hello bot"])
    await bob.send("/me waves")
    action = await library.expect("action")
    assert (source_nick(action), action.target, action.arguments) == ("bob", "#lib", ["waves"])
    await bob.send("/msg libbot psst")
    private = await library.expect("privmsg")
    assert (source_nick(private), private.target, private.arguments) == (
        "bob",
        "libbot",
        ["psst"],
    )

    # The library -> nc.
    library.connection.privmsg("#lib", "hello nc")
    assert await bob.expect_line(r"^\[lib\] libbot") == "[lib] libbot: hello nc"
    library.connection.action("#lib", "bows")
    assert await bob.expect_line(r"^\[lib\] \* libbot") == "[lib] * libbot bows"
    library.connection.privmsg("bob", "back to you")
    assert await bob.expect_line(r"^\[libbot -> bob\]") == "[libbot -> bob] back to you"
    library.connection.topic("#lib", "set by a library")
    topic = await library.expect("topic")
    assert topic.arguments == ["set by a library"]
    await bob.expect_line(r"libbot set the topic of #lib: set by a library")

    # bob leaves and comes back; then the library quits.
    await bob.send("/leave lib")
    part = await library.expect("part")
    assert (source_nick(part), part.target) == ("bob", "#lib")
    await bob.send("/join lib")
    await library.expect("join", lambda e: source_nick(e) == "bob")
    library.connection.quit("done here")
    error = await library.expect("error")
    assert str(error.target).startswith("Closing link")
    assert "done here" in str(error.target)
    await library.expect("disconnect")
    assert await bob.expect_line(r"libbot left #lib") == "* libbot left #lib (quit: done here)"


async def test_the_library_sees_a_taken_nickname_and_picks_another(
    gateway: Server, library: Library, nc: Callable[[str], Any]
) -> None:
    await nc("taken")
    await library.connect(gateway.irc_port, "taken")
    refused = await library.expect("nicknameinuse")
    assert refused.arguments[0] == "taken"
    library.connection.nick("free")
    welcome = await library.expect("welcome")
    assert welcome.target == "free"
    assert library.connection.get_nickname() == "free"
    # A PING the library sends comes back as its "pong" event.
    library.connection.send_raw("PING :round-trip")
    pong = await library.expect("pong")
    assert pong.arguments == ["round-trip"]
