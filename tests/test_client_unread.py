"""The terminal client and an account's reading: mentions, unread counts,
the automatic ``/read`` of the room on screen, and the new lists.

The rendering first (pure), then the marks' timing on a loop, then
``chatd connect`` for real against the in-process daemon.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chatd.client import render_event
from chatd.client.marks import ReadMarks
from chatd.daemon.server import Server
from chatd.protocol import MarkRead
from tests.conftest import Connect, Spawn
from tests.helpers import DEADLINE, LineClient
from tests.test_client import interactive_client

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct-horse"
TS = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()


def render(event: dict[str, Any], *, colour: bool = False) -> str:
    return render_event(event, colour=colour, tz=UTC)


def said(room: str, sender: str, text: str, **flags: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "id": 7,
        "ts": TS,
        "room": room,
        "from": sender,
        "text": text,
    } | flags


# ---------------------------------------------------------------------------
# Rendering


def test_a_mention_is_marked_before_its_room_and_highlighted_in_colour() -> None:
    assert render(said("dev", "bob", "hi ann", mention=True)) == "07:08 ![dev] bob: hi ann"
    action = said("dev", "bob", "waves at ann", mention=True, action=True)
    assert render(action) == "07:08 ![dev] * bob waves at ann"
    assert render(said("dev", "bob", "hi all")) == "07:08 [dev] bob: hi all"
    coloured = render(said("dev", "bob", "hi ann", mention=True), colour=True)
    assert "\x1b[1;7m![dev]\x1b[0m" in coloured
    assert "\x1b[1mhi ann\x1b[0m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == "07:08 ![dev] bob: hi ann"
    assert "\a" not in coloured  # the bell is the terminal's, not the line's


def test_search_results_are_dated_and_say_found() -> None:
    found = said("dev", "bob", "deploy friday", search=True)
    assert render(found) == "found 2024-05-06 07:08 [dev] bob: deploy friday"
    assert render(found, colour=True) == (
        "\x1b[2mfound 2024-05-06 07:08 [dev] bob: deploy friday\x1b[0m"
    )
    dm = {"type": "dm", "id": 3, "ts": TS, "from": "ann", "to": "bob", "text": "x", "search": True}
    assert render(dm) == "found 2024-05-06 07:08 [ann -> bob] x"
    done = {"type": "search", "query": "deploy", "count": 2, "more": True, "before": 1187}
    assert render(done) == '* search "deploy": 2 found; more: repeat it with before=1187'
    none = {"type": "search", "query": "x", "count": 0, "more": False, "before": None}
    assert render(none | {"cut": True}) == (
        '* search "x": nothing found (cut short: the search took too long)'
    )


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {
                "type": "rooms",
                "rooms": [
                    {"name": "dev", "members": 1},
                    {"name": "general", "members": 4, "unread": 3, "mentions": 1},
                    {"name": "ops", "members": 2, "unread": 0, "mentions": 0},
                ],
            },
            "* rooms: #dev (1), #general (4, 3 unread, 1 mention), #ops (2)",
        ),
        (
            {"type": "rooms", "rooms": [{"name": "a", "members": 2, "unread": 5, "mentions": 2}]},
            "* rooms: #a (2, 5 unread, 2 mentions)",
        ),
        ({"type": "read", "room": "general", "peer": None, "id": 42}, "* read #general up to 42"),
        ({"type": "read", "room": None, "peer": "bob", "id": 9}, "* read @bob up to 9"),
        (
            {
                "type": "unread",
                "conversations": [
                    {"room": "general", "peer": None, "unread": 3, "mentions": 1, "last_read": 39},
                    {"room": "dev", "peer": None, "unread": 0, "mentions": 0, "last_read": 12},
                    {"room": None, "peer": "bob", "unread": 2, "mentions": 0, "last_read": 0},
                ],
            },
            "* unread: #general 3 (1 mention), @bob 2",
        ),
        ({"type": "unread", "conversations": []}, "* unread: nothing"),
    ],
)
def test_render_the_reading_events(event: dict[str, Any], line: str) -> None:
    assert render(event) == line


def test_sessions_are_a_heading_and_a_line_each_in_columns() -> None:
    since = datetime(2026, 11, 21, 2, 29, 39, tzinfo=UTC).timestamp()
    event = {
        "type": "sessions",
        "sessions": [
            {"id": "s3", "transport": "tcp", "address": "127.0.0.1", "since": since},
            {"id": "s17", "transport": "ws", "address": "10.0.0.2", "since": since + 22}
            | {"current": True},
        ],
    }
    assert render(event).split("\n") == [
        "* sessions of your account: 2",
        "  s3   tcp  127.0.0.1  since 2026-11-21 02:29:39",
        "  s17  ws   10.0.0.2   since 2026-11-21 02:30:01 (this one)",
    ]
    coloured = render(event, colour=True).split("\n")
    assert all(line.startswith("\x1b[2m") for line in coloured)
    assert render({"type": "sessions", "sessions": []}) == "* sessions of your account: none"


def test_no_field_of_a_session_starts_a_line_of_its_own() -> None:
    event = {
        "type": "sessions",
        "sessions": [
            {"id": "s4\n* you are root", "transport": "irc\x1b[2J", "address": 5, "since": "x"},
            "not an object",
        ],
    }
    lines = render(event).split("\n")
    assert lines == ["* sessions of your account: 1", "  s4* you are root  irc[2J  5  since ?"]


# ---------------------------------------------------------------------------
# When the marks go out


class Sent:
    """The ``send`` of a ReadMarks: records, and says whether it may send."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, int]] = []
        self.allowed = True
        self.arrived = asyncio.Event()

    def __call__(self, room: str, message_id: int) -> bool:
        if self.allowed:
            self.marks.append((room, message_id))
            self.arrived.set()
        return self.allowed

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE):
            while len(self.marks) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def test_the_first_mark_goes_at_once_and_the_rest_wait_for_the_round() -> None:
    sent = Sent()
    marks = ReadMarks(sent, interval=3600.0)  # no round comes during the test
    marks.on_screen("dev")  # nothing received yet: nothing to mark
    assert sent.marks == []
    marks.received("Dev", 5)
    marks.on_screen("dev")
    assert sent.marks == [("Dev", 5)]
    marks.on_screen("dev")  # nothing new
    marks.received("dev", 6)
    marks.on_screen("dev")
    marks.received("ops", 9)
    marks.on_screen("ops")
    assert sent.marks == [("Dev", 5)]  # waiting for the round
    marks.reset()


async def test_a_round_sends_one_mark_per_room_that_was_on_screen() -> None:
    sent = Sent()
    marks = ReadMarks(sent, interval=0.01)
    marks.received("dev", 5)
    marks.on_screen("dev")
    marks.received("dev", 6)
    marks.received("dev", 8)
    marks.on_screen("dev")
    marks.received("ops", 7)
    marks.on_screen("ops")
    marks.received("general", 9)  # never on screen
    await sent.wait_for(3)
    assert sent.marks == [("dev", 5), ("dev", 8), ("ops", 7)]
    # What the server says was read is not marked again; older ids never are.
    marks.read("dev", 10)
    marks.received("dev", 9)
    marks.on_screen("dev")
    marks.received("ops", 6)
    marks.on_screen("ops")
    # A mark that cannot go out now is dropped, and comes with the next one.
    sent.allowed = False
    marks.received("ops", 11)
    marks.on_screen("ops")
    sent.allowed = True
    marks.received("ops", 12)
    marks.on_screen("ops")
    await sent.wait_for(4)
    assert sent.marks[3:] == [("ops", 12)]
    marks.reset()


# ---------------------------------------------------------------------------
# chatd connect for real


def _is(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items())


async def login(connect: Connect, nick: str) -> LineClient:
    """Another connection of an account, in JSON, once its login is done."""
    client = await connect()
    await client.send(f"/login {nick} {PASSWORD}")
    await client.sync("logged-in")
    client.nick = nick
    return client


async def test_a_mention_is_marked_in_pipe_mode_without_a_bell(
    server: Server, connect: Connect, spawn: Spawn
) -> None:
    ann = await spawn(server.port, "--nick", "ann")
    await ann.expect(r"^\* now talking in #general$")
    bob = await connect("bob")
    await bob.send("hello all", "hey ann, look", "@Ann too", "annie is not you", "/me pokes ann")
    await ann.expect(r"^\d\d:\d\d \[general\] bob: hello all$")
    await ann.expect(r"^\d\d:\d\d !\[general\] bob: hey ann, look$")
    await ann.expect(r"^\d\d:\d\d !\[general\] bob: @Ann too$")
    await ann.expect(r"^\d\d:\d\d \[general\] bob: annie is not you$")
    await ann.expect(r"^\d\d:\d\d !\[general\] \* bob pokes ann$")
    await bob.send("/msg ann psst")
    await ann.expect(r"^\d\d:\d\d \[bob -> ann\] psst$")
    # Her own line that names her is no mention.
    await ann.send("ann here")
    await ann.expect(r"^\d\d:\d\d \[general\] ann: ann here$")
    assert await ann.finish() == 0
    assert not [line for line in ann.out if "\a" in line]
    assert ann.err == []


async def test_a_mention_and_a_private_message_ring_the_terminal(
    server: Server, connect: Connect
) -> None:
    kim = await connect("kim")
    async with interactive_client(server.port, "--nick", "lou") as (term, proc):
        pos = await term.expect(r"\[general\]>")
        await kim.expect(_is("join", nick="lou"))
        await kim.send("just talking", "hey lou, look")
        pos = await term.expect(r"\x07\d\d:\d\d !\[general\] kim: hey lou, look", pos)
        assert b"\x1b[1;7m![general]\x1b[0m" in term.data  # highlighted
        await kim.send("/msg lou psst")
        pos = await term.expect(r"\x07\d\d:\d\d \[kim -> lou\] psst", pos)
        term.type("/msg kim back\r")
        pos = await term.expect(r"\d\d:\d\d \[lou -> kim\] back", pos)
        # Ctrl-D at the prompt drawn again: typed between two prompts, the
        # terminal is in cooked mode for a moment and its line discipline
        # takes the byte for an end of file.
        await term.expect(r"\[general\]>", pos)
        term.type("\x04")
        async with asyncio.timeout(DEADLINE):
            assert await proc.wait() == 0
        # A line that is not for lou rings nothing, nor does lou's own DM.
        quiet = [
            line for line in term.stream.split("\n") if "just talking" in line or "back" in line
        ]
        assert quiet
        assert not [line for line in quiet if "\x07" in line]
        assert term.stream.count("\x07") == 2


async def test_rooms_count_what_was_said_while_the_account_was_away(
    server: Server, connect: Connect, spawn: Spawn
) -> None:
    dave = await spawn(server.port, "--nick", "dave")
    await dave.send(f"/register {PASSWORD}", "/join dev", "/join general")
    await dave.expect(r"^\* now talking in #dev$")
    await dave.expect(r"^\* now talking in #general$")
    assert await dave.finish() == 0

    bob = await connect("bob")
    await bob.send("/join dev", "dave, are you there?", "anyone?")
    await bob.expect(_is("message", text="anyone?"))

    back = await spawn(server.port)
    await back.send(f"/login dave {PASSWORD}", "/rooms", "/unread")
    await back.expect(r"^\* you are dave \(logged in\)$")
    # The login shows #dev from where dave stopped reading: what bob said.
    await back.expect(r"^\d{4}-\d\d-\d\d \d\d:\d\d \[dev\] bob: dave, are you there\?$")
    await back.expect(r"^\d{4}-\d\d-\d\d \d\d:\d\d \[dev\] bob: anyone\?$")
    await back.expect(r"^\* rooms: #dev \(2, 2 unread, 1 mention\), #general \(2\)$")
    await back.expect(r"^\* unread: #dev 2 \(1 mention\)$")
    assert await back.finish() == 0
    assert back.err == []


async def test_the_room_on_screen_is_marked_read(
    server: Server, connect: Connect, spawn: Spawn
) -> None:
    dave = await spawn(server.port, "--nick", "dave")
    await dave.send(f"/register {PASSWORD}", "/join dev", "/join general")
    await dave.expect(r"^\* now talking in #dev$")
    await dave.expect(r"^\* now talking in #general$")
    phone = await login(connect, "dave")  # sees every read of the account
    bob = await connect("bob")

    # #dev is not on screen: only #general is marked.
    await bob.send("/join dev", "dev news", "/join general", "general news")
    dev_news = (await bob.expect(_is("message", text="dev news")))["id"]
    general_news = (await bob.expect(_is("message", text="general news")))["id"]
    await dave.expect(r"^\d\d:\d\d \[general\] bob: general news$")
    first = await phone.expect("read")
    assert first == {"type": "read", "room": "general", "peer": None, "id": general_news}

    # More messages: marked up to the newest, in a round or two.
    await bob.send("second", "third")
    third = (await bob.expect(_is("message", text="third")))["id"]
    await phone.expect(_is("read", room="general", id=third))

    # Another room on screen: marked too.
    await dave.send("/join dev")
    await dave.expect(r"^\* now talking in #dev$")
    await phone.expect(_is("read", room="dev", id=dev_news))

    # A read of another connection is not shown; the user's own /read is.
    await bob.send("fourth")
    fourth = (await bob.expect(_is("message", text="fourth")))["id"]
    await dave.expect(r"^\d\d:\d\d \[general\] bob: fourth$")
    await phone.send("/read #general")
    await phone.expect(_is("read", room="general", id=fourth))
    await dave.send("/read #general")
    await dave.expect(rf"^\* read #general up to {fourth}$")
    assert await dave.finish() == 0
    assert [line for line in dave.out if line.startswith(("* read", "!"))] == [
        f"* read #general up to {fourth}"
    ]
    assert dave.err == []


async def test_a_guest_marks_nothing_read(
    server: Server, connect: Connect, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server would refuse a guest's /read: the client sends none."""
    reads: list[str | None] = []
    dispatch = server.dispatcher.dispatch

    def recording(caller: Any, command: Any) -> Any:
        if isinstance(command, MarkRead):
            reads.append(caller.nick)
        return dispatch(caller, command)

    monkeypatch.setattr(server.dispatcher, "dispatch", recording)
    eve = await spawn(server.port, "--nick", "eve")
    await eve.expect(r"^\* now talking in #general$")
    bob = await connect("bob")
    await bob.send("one", "two", "/join dev", "three")
    await eve.expect(r"^\d\d:\d\d \[general\] bob: two$")
    await eve.send("/join dev")
    await eve.expect(r"^\* now talking in #dev$")
    # The end of input is answered after everything eve sent before it.
    assert await eve.finish() == 0
    assert reads == []
    assert not [line for line in eve.out if line.startswith("!")]

    # Once logged in, it does mark.
    fay = await spawn(server.port, "--nick", "fay")
    await fay.send(f"/register {PASSWORD}")
    await fay.expect(r"^\* you are fay \(logged in\)$")
    await bob.send("/join general", "hi fay")
    await fay.expect(r"^\d\d:\d\d !\[general\] bob: hi fay$")
    assert await fay.finish() == 0
    assert reads == ["fay"]
