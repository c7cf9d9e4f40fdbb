"""The terminal client: the pure rendering, then ``chatd connect`` for real.

The end-to-end tests run ``python -m chatd connect`` as a subprocess (with
pipes, or on a pseudo-terminal for the interactive mode) against the
in-process daemon, on the same event loop implementation as the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import struct
import termios
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chatd.client import (
    Backoff,
    ClientOptions,
    _no_secrets_history,
    help_lines,
    json_line,
    nick_colour,
    parse_server_line,
    render_event,
    restore_commands,
)
from chatd.core.rooms import Member
from chatd.daemon.server import Server
from chatd.protocol import COMMAND_HELP, Format
from tests.conftest import TEST_SETTINGS, Connect, Spawn, StartServer
from tests.helpers import (
    DEADLINE,
    LineClient,
    child_env,
    connect_argv,
    free_port,
    signal_child,
)

# ---------------------------------------------------------------------------
# Rendering

TS = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()


def test_history_is_dimmed_and_dated() -> None:
    old = {"type": "message", "id": 1, "ts": TS, "room": "dev", "from": "bob", "text": "hi"}
    old["history"] = True
    assert render_event(old, tz=UTC) == "2024-05-06 07:08 [dev] bob: hi"
    assert render_event(old, colour=True, tz=UTC) == "\x1b[2m2024-05-06 07:08 [dev] bob: hi\x1b[0m"
    end = {"type": "history", "room": "dev", "peer": None, "count": 1, "more": False}
    assert render_event(end) == "-- 1 earlier message of #dev --"


def test_passwords_stay_out_of_the_prompt_history() -> None:
    history = _no_secrets_history()
    for line in ("hello", "/login ann secret-pass", "/REGISTER secret-pass", "/passwd a b"):
        history.append_string(line)
    assert list(history.get_strings()) == ["hello"]


def render(event: dict[str, Any]) -> str:
    return render_event(event, colour=False, tz=UTC)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {"type": "message", "id": 1, "ts": TS, "room": "general", "from": "bob", "text": "hi"},
            "07:08 [general] bob: hi",
        ),
        (
            {"type": "message", "id": 2, "ts": TS, "room": "dev", "from": "bob", "text": "waves"}
            | {"action": True},
            "07:08 [dev] * bob waves",
        ),
        (
            {"type": "dm", "id": 3, "ts": TS, "from": "ann", "to": "bob", "text": "psst"},
            "07:08 [ann -> bob] psst",
        ),
        ({"type": "join", "room": "dev", "nick": "ann"}, "* ann joined #dev"),
        ({"type": "leave", "room": "dev", "nick": "ann", "reason": ""}, "* ann left #dev"),
        (
            {"type": "leave", "room": "dev", "nick": "ann", "reason": "quit"},
            "* ann left #dev (quit)",
        ),
        ({"type": "current", "room": "dev"}, "* now talking in #dev"),
        ({"type": "current", "room": None}, "* you are in no room; /join one"),
        ({"type": "nick", "old": "ann", "new": "anna"}, "* ann is now known as anna"),
        (
            {"type": "topic", "room": "dev", "topic": "t", "by": "ann", "changed": True},
            "* ann set the topic of #dev: t",
        ),
        (
            {"type": "topic", "room": "dev", "topic": "t", "by": "ann", "changed": False},
            "* topic of #dev: t (set by ann)",
        ),
        (
            {"type": "topic", "room": "dev", "topic": "", "by": None, "changed": False},
            "* #dev has no topic",
        ),
        (
            {
                "type": "rooms",
                "rooms": [{"name": "dev", "members": 2}, {"name": "x", "members": 0}],
            },
            "* rooms: #dev (2), #x (0)",
        ),
        ({"type": "rooms", "rooms": []}, "* rooms: none"),
        ({"type": "who", "room": "dev", "nicks": ["ann", "bob"]}, "* in #dev: ann, bob"),
        ({"type": "who", "room": "dev", "nicks": []}, "* in #dev: nobody"),
        ({"type": "pong", "token": "abc"}, "* pong abc"),
        ({"type": "pong", "token": ""}, "* pong"),
        ({"type": "format", "format": "json"}, "* format: json"),
        ({"type": "registered", "nick": "ann"}, "* you are ann"),
        (
            {"type": "welcome", "server": "chatd", "version": "1.2"},
            "* welcome to chatd 1.2; /help lists the commands",
        ),
        (
            {"type": "error", "code": "nick_taken", "text": "nickname ann is taken"},
            "! nick_taken: nickname ann is taken",
        ),
        ({"type": "bye", "reason": ""}, "* bye"),
        ({"type": "bye", "reason": "later"}, "* bye (later)"),
        (
            {"type": "shutdown", "reason": "server shutting down"},
            "! shutdown: server shutting down",
        ),
        (
            {"type": "help", "commands": [{"usage": "/a X", "help": "does a"}]},
            "* commands: /a X - does a",
        ),
        ({"type": "text", "text": "plain words"}, "plain words"),
        ({"type": "surprise", "n": 1}, '* surprise: {"n": 1}'),
    ],
)
def test_render_each_event_type(event: dict[str, Any], line: str) -> None:
    assert render(event) == line


def test_render_uses_local_time_by_default() -> None:
    event = {"type": "message", "ts": TS, "room": "r", "from": "a", "text": "t"}
    local = datetime.fromtimestamp(TS).strftime("%H:%M")
    assert render_event(event) == f"{local} [r] a: t"


def test_render_strips_control_characters_from_every_field() -> None:
    event = {
        "type": "message",
        "ts": TS,
        "room": "ro\x1b[2Jom",
        "from": "ev\x07il",
        "text": "a\rb\x00c\x1b]0;title\x07d\x9be\tf",
    }
    line = render(event)
    assert line == "07:08 [ro[2Jom] evil: abc]0;titlede f"
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", line)
    who = render({"type": "who", "room": "x", "nicks": ["a\x1bb", "c"]})
    assert who == "* in #x: ab, c"
    odd = render({"type": "who", "room": "x\x1b", "nicks": ["a\x1bb", 5]})  # malformed
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", odd)
    error = render({"type": "error", "code": "x\ny", "text": "z\x1b"})
    assert error == "! xy: z"


def test_render_survives_malformed_events() -> None:
    assert render({"type": "message"}) == "--:-- [] : "
    assert render({"type": "message", "ts": "soon", "from": 7, "text": None}) == "--:-- [] 7: "
    assert render({"type": "message", "ts": 1e300}).startswith("--:--")
    # Malformed system events are shown as they came, cleaned.
    assert render({"type": "rooms", "rooms": "lots"}) == '* rooms: {"rooms": "lots"}'
    assert render({"type": "rooms", "rooms": [1]}) == '* rooms: {"rooms": [1]}'
    assert render({"type": "who", "nicks": None}) == '* who: {"nicks": null}'
    assert render({"type": "join", "room": "dev"}) == '* join: {"room": "dev"}'
    assert render({}) == "* event: {}"
    assert render({"type": "help", "commands": {"no": "list"}}) == "* commands: "


def test_render_with_colour() -> None:
    event = {"type": "message", "ts": TS, "room": "dev", "from": "bob", "text": "hi"}
    line = render_event(event, colour=True, tz=UTC)
    assert f"{nick_colour('bob')}bob\x1b[0m" in line
    assert re.sub(r"\x1b\[[0-9;]*m", "", line) == "07:08 [dev] bob: hi"
    error = render_event({"type": "error", "code": "c", "text": "t"}, colour=True)
    assert error == "\x1b[31m! c: t\x1b[0m"
    system = render_event({"type": "join", "room": "dev", "nick": "ann"}, colour=True)
    assert system == "\x1b[2m* ann joined #dev\x1b[0m"
    shutdown = render_event({"type": "shutdown", "reason": "r"}, colour=True)
    assert shutdown.startswith("\x1b[31m")
    dm = render_event({"type": "dm", "ts": TS, "from": "a", "to": "b", "text": "x"}, colour=True)
    assert nick_colour("a") in dm
    assert nick_colour("b") in dm
    # No colour: no escape at all.
    assert "\x1b" not in render_event(event, colour=False)


def test_nick_colour_is_stable_and_case_insensitive() -> None:
    assert nick_colour("Alice") == nick_colour("alice") == nick_colour("ALICE")
    assert "\x1b[31m" not in {nick_colour(f"n{i}") for i in range(200)}  # red means error
    assert len({nick_colour(f"n{i}") for i in range(200)}) > 5


def test_help_lines_are_an_aligned_table() -> None:
    event = {"type": "help", "commands": [{"usage": u, "help": h} for u, h in COMMAND_HELP]}
    lines = help_lines(event)
    shown = [(u, h) for u, h in COMMAND_HELP if not u.startswith("/format")]  # refused here
    assert lines[0] == "* commands:"
    assert len(lines) == len(shown) + 2
    assert lines[1].startswith("  /nick NAME ")
    columns = {line.index(text) for line, (_, text) in zip(lines[1:-1], shown, strict=True)}
    assert len(columns) == 1
    assert all(line.startswith("\x1b[2m") for line in help_lines(event, colour=True))


def test_json_line_keeps_the_server_text_but_strips_controls() -> None:
    raw = '{"type":"message","text":"a\x9bb\x7f"}'
    assert json_line({}, raw) == '{"type":"message","text":"ab"}'
    assert json_line({"type": "text", "text": "é"}) == '{"type":"text","text":"é"}'


def test_parse_server_line() -> None:
    assert parse_server_line('{"type":"pong","token":"x"}') == (
        {"type": "pong", "token": "x"},
        True,
    )
    welcome = "* welcome to chatd 0.1.0. Pick a nickname: type it, or /nick NAME."
    assert parse_server_line(welcome) == (
        {"type": "welcome", "server": "chatd", "version": "0.1.0"},
        False,
    )
    assert parse_server_line("! server_full: the server is full (3 clients)") == (
        {"type": "error", "code": "server_full", "text": "the server is full (3 clients)"},
        False,
    )
    for odd in ("[1,2]", '{"no":"type"}', '{"type":3}', "{broken", "hello"):
        assert parse_server_line(odd) == ({"type": "text", "text": odd}, False)


@pytest.mark.parametrize(
    ("rooms", "current", "commands"),
    [
        (["general"], "general", ["/join general"]),
        (["general", "dev"], "dev", ["/join dev", "/join dev"]),
        (["dev", "general"], "general", ["/join dev", "/join general"]),
        (["dev", "ops"], "dev", ["/join dev", "/join ops", "/leave general", "/join dev"]),
        (["General"], "General", ["/join General"]),
        ([], None, ["/leave general"]),
    ],
)
def test_restore_commands(rooms: list[str], current: str | None, commands: list[str]) -> None:
    assert restore_commands(rooms, current) == commands


def test_restore_commands_give_the_keys_of_rooms_with_one() -> None:
    assert restore_commands(["vault", "general"], "vault", {"vault": "door"}) == [
        "/join vault door",
        "/join vault",
    ]


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    flat = Backoff(0.5, 30.0, jitter=0.2, rng=lambda: 0.5)
    assert [flat.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    flat.reset()
    assert flat.next() == 0.5
    low = Backoff(0.5, 30.0, jitter=0.2, rng=lambda: 0.0)
    high = Backoff(0.5, 30.0, jitter=0.2, rng=lambda: 0.999999)
    assert low.next() == pytest.approx(0.4)
    assert high.next() == pytest.approx(0.6, abs=1e-5)
    assert max(high.next() for _ in range(20)) == 30.0


def test_client_options() -> None:
    options = ClientOptions(host="h", port=1, nick=None, reconnect=True, json_output=False)
    with pytest.raises(AttributeError):
        options.port = 2  # type: ignore[misc]
    assert not hasattr(options, "__dict__")
    with pytest.raises(ValueError, match="backoff"):
        ClientOptions(host="h", port=1, backoff_initial=0)


# ---------------------------------------------------------------------------
# The client as a subprocess


def _is(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items())


async def test_pipe_mode_chats_both_ways(server: Server, connect: Connect, spawn: Spawn) -> None:
    bob = await connect("bob")
    alice = await spawn(server.port, "--nick", "alice")
    await alice.expect(r"^\* you are alice$")
    await alice.expect(r"^\* now talking in #general$")
    await bob.expect(_is("join", nick="alice", room="general"))

    await alice.send("hello bob", "//slash at the start")
    assert (await bob.expect(_is("message", **{"from": "alice"})))["text"] == "hello bob"
    assert (await bob.expect(_is("message", **{"from": "alice"})))["text"] == "/slash at the start"

    await bob.send("hi alice")
    await alice.expect(r"^\d\d:\d\d !\[general\] bob: hi alice$")  # it mentions her

    assert await alice.finish() == 0
    assert alice.err == []
    # The client's own chatter is not printed: welcome, format ack, pongs, bye.
    assert not [line for line in alice.out if re.search(r"welcome|format|pong|bye", line)]
    await bob.expect(_is("leave", nick="alice", reason="quit"))


async def test_pipe_end_of_input_waits_for_every_answer(server: Server, spawn: Spawn) -> None:
    cara = await spawn(server.port, "--nick", "cara")
    await cara.send(
        "/join dev",
        "/topic testing",
        "/who",
        "/rooms",
        "/ping mine",
        "/help",
        "/nosuch",
    )
    assert await cara.finish() == 0
    out = cara.out
    assert out[:3] == ["* you are cara", "* cara joined #general", "* now talking in #general"]
    assert out[3:] == [
        "* cara joined #dev",
        "* now talking in #dev",
        "* cara set the topic of #dev: testing",
        "* in #dev: @cara",  # the guest who brought #dev into use is its op
        "* rooms: #dev (1), #general (1)",
        "* pong mine",
        out[9],
        "! unknown_command: unknown command /nosuch; /help lists the commands",
    ]
    assert out[9].startswith("* commands: /nick NAME - choose or change your nickname; ")
    assert cara.err == []


async def test_pipe_mode_without_nick_registers_with_the_first_line(
    server: Server, spawn: Spawn
) -> None:
    dan = await spawn(server.port)
    await dan.send("/who", "dan", "/who")
    assert await dan.finish() == 0
    assert dan.out == [
        "! not_registered: choose a nickname first: type it, /nick NAME, or /login NICK PASSWORD",
        "* you are dan",
        "* dan joined #general",
        "* now talking in #general",
        "* in #general: dan",
    ]


async def test_pipe_mode_direct_messages_and_rooms(
    server: Server, connect: Connect, spawn: Spawn
) -> None:
    bob = await connect("bob")
    eve = await spawn(server.port, "--nick", "eve")
    await eve.expect(r"now talking in #general")

    await eve.send("/msg bob psst")
    dm = await bob.expect("dm")
    assert (dm["from"], dm["to"], dm["text"]) == ("eve", "bob", "psst")
    await eve.expect(r"^\d\d:\d\d \[eve -> bob\] psst$")
    await bob.send("/msg eve back at you")
    await eve.expect(r"^\d\d:\d\d \[bob -> eve\] back at you$")

    await eve.send("/join dev")
    await eve.expect(r"^\* now talking in #dev$")
    await bob.send("/join dev")
    await eve.expect(r"^\* bob joined #dev$")
    await bob.send("in dev now")
    await eve.expect(r"^\d\d:\d\d \[dev\] bob: in dev now$")
    await eve.send("/me waves")
    action = await bob.expect(_is("message", **{"from": "eve"}))
    assert (action["room"], action["text"], action.get("action")) == ("dev", "waves", True)
    await eve.send("/msg nobody hello")
    await eve.expect(r"^! no_such_nick: nobody is called nobody$")
    assert await eve.finish() == 0


async def test_pipe_mode_json_output(server: Server, connect: Connect, spawn: Spawn) -> None:
    bob = await connect("bob")
    fay = await spawn(server.port, "--nick", "fay", "--json")
    await fay.send("/join dev")
    await fay.expect(r'^\{"type":"current","room":"dev"\}$')
    await bob.send("/join dev", "hi fay")
    await fay.expect(r'"text":"hi fay"')
    await fay.send("/msg bob x", "/ping p1")
    assert await fay.finish() == 0
    events = [json.loads(line) for line in fay.out]
    kinds = [e["type"] for e in events]
    assert kinds[:5] == ["registered", "join", "current", "join", "current"]
    assert {"message", "dm", "pong"} <= set(kinds)
    assert not {"welcome", "format", "bye"} & set(kinds)
    assert [e["token"] for e in events if e["type"] == "pong"] == ["p1"]
    message = next(e for e in events if e["type"] == "message")
    assert message["room"] == "dev"
    assert message["from"] == "bob"
    assert isinstance(message["ts"], float)
    assert fay.err == []


async def test_format_is_not_passed_through(server: Server, spawn: Spawn) -> None:
    gus = await spawn(server.port, "--nick", "gus")
    await gus.send("/format text", "/who")
    await gus.expect(r"/format is not sent", stream="err")
    await gus.expect(r"^\* in #general: gus$")
    assert await gus.finish() == 0


async def test_help_lists_only_what_the_client_sends(server: Server, spawn: Spawn) -> None:
    ivy = await spawn(server.port, "--nick", "ivy")
    await ivy.send("/help")
    line = await ivy.expect(r"^\* commands: ")
    listed = [(u, h) for u, h in COMMAND_HELP if f"{u} - {h}" in line]
    assert line == "* commands: " + "; ".join(f"{u} - {h}" for u, h in listed)
    assert "/format" not in line
    # Every command it lists goes to the server: none is refused on the spot.
    names = list(dict.fromkeys(usage.split()[0] for usage, _ in listed))
    assert names[-1] == "//TEXT"
    assert "/quit" in names
    await ivy.send(*(name for name in names[:-1] if name != "/quit"), "//TEXT", "/quit done")
    assert await ivy.wait() == 0
    assert ivy.out[-1] == "* bye (done)"
    assert ivy.err == []


async def test_no_connection_at_start_is_an_error(spawn: Spawn) -> None:
    client = await spawn(free_port(), "--nick", "x")
    assert await client.wait() == 1
    assert client.out == []
    assert len(client.err) == 1
    assert re.search(r"cannot connect to 127\.0\.0\.1:\d+", client.err[0])


async def test_no_reconnect_exits_1_when_the_server_goes(
    start_server: StartServer, spawn: Spawn
) -> None:
    server = await start_server()
    hal = await spawn(server.port, "--nick", "hal", "--no-reconnect")
    await hal.expect(r"now talking in #general")
    await server.shutdown()
    assert await hal.wait() == 1
    assert hal.out[-1] == "! shutdown: server shutting down"
    assert len(hal.err) == 1
    assert re.search(r"connection to .* lost: .*not reconnecting \(--no-reconnect\)", hal.err[0])


async def test_reconnects_and_restores_nick_and_rooms(
    start_server: StartServer, spawn: Spawn
) -> None:
    first = await start_server()
    port = first.port
    ida = await spawn(port, "--nick", "ida")
    await ida.send("/join dev", "/join ops", "/leave general", "/join dev")
    await ida.send("/ping before")
    await ida.expect(r"^\* pong before$")

    await first.shutdown()
    await ida.expect(r"^! shutdown: server shutting down$")
    await ida.expect(r"connection to .* lost", stream="err")
    second = await start_server(port=port)
    await ida.expect(r"reconnected as ida in #dev, #ops; talking in #dev$", stream="err")

    jon = await LineClient.open("127.0.0.1", second.port)
    try:
        await jon.use_json()
        await jon.register("jon")
        await jon.send("/who dev", "/who ops", "/who general")
        assert (await jon.expect("who"))["nicks"] == ["ida"]
        assert (await jon.expect("who"))["nicks"] == ["ida"]
        assert (await jon.expect("who"))["nicks"] == ["jon"]

        await jon.send("/join dev")
        await ida.expect(r"^\* jon joined #dev$")
        await ida.send("back again")
        message = await jon.expect(_is("message", **{"from": "ida"}))
        assert (message["room"], message["text"]) == ("dev", "back again")
        await jon.send("welcome back")
        await ida.expect(r"^\d\d:\d\d \[dev\] jon: welcome back$")
    finally:
        jon.close()
    # The restore itself printed nothing on stdout (only the status on stderr).
    restore = ida.out[ida.out.index("! shutdown: server shutting down") + 1 :]
    assert restore[0] == "* jon joined #dev"
    assert await ida.finish() == 0


async def test_pipe_quit_command_ends_the_client(server: Server, spawn: Spawn) -> None:
    oli = await spawn(server.port, "--nick", "oli")
    await oli.send("/who", "/quit see you", "never sent")
    assert await oli.wait() == 0
    assert oli.out[-2:] == ["* in #general: oli", "* bye (see you)"]


class Holder(Member):
    """Someone holding a nickname on the server, without a connection."""

    __slots__ = ("arrived", "received")

    def __init__(self) -> None:
        super().__init__(Format.JSON)
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def deliver(self, data: bytes) -> None:
        self.received.append(json.loads(data))
        self.arrived.set()

    reply = deliver


async def test_reconnect_when_the_nick_was_taken_meanwhile(
    start_server: StartServer, spawn: Spawn
) -> None:
    first = await start_server()
    port = first.port
    pat = await spawn(port, "--nick", "pat")
    await pat.send("/join dev")
    await pat.expect(r"^\* now talking in #dev$")
    await first.shutdown()
    await pat.expect(r"connection to .* lost", stream="err")
    # The new server has given the nickname away before it accepts anyone.
    second = Server(dataclasses.replace(TEST_SETTINGS, port=port))
    holder = Holder()
    second.manager.register(holder, "pat")
    await second.start()
    try:
        await pat.expect(r"could not take back the nickname pat \(nick_taken\)", stream="err")
        await pat.expect(r"^! nick_taken: nickname pat is taken; pick another$")
        await pat.send("/nick pat2", "/who")
        await pat.expect(r"^\* you are pat2$")
        await pat.expect(r"^\* in #general: pat, pat2$")
        await pat.send("still here")
        async with asyncio.timeout(DEADLINE):
            while not any(e.get("text") == "still here" for e in holder.received):
                holder.arrived.clear()
                await holder.arrived.wait()
        (message,) = [e for e in holder.received if e.get("text") == "still here"]
        assert message["from"] == "pat2"
        assert await pat.finish() == 0
    finally:
        await second.shutdown()


# ---------------------------------------------------------------------------
# The interactive mode, on a pseudo-terminal

#: CSI sequences, OSC strings, charset selections, and any other two-byte escape.
_ESCAPE = r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|.)"
_ESCAPE_RE = re.compile(_ESCAPE)
_TOKEN_RE = re.compile(rf"{_ESCAPE}|[\x00-\x1f]|[^\x00-\x1f\x1b]+", re.DOTALL)


def emulate(output: str) -> str:
    """What a terminal shows after ``output``: just enough of a VT100 for a prompt.

    Handles text, CR, LF, BS and the cursor and erase sequences
    prompt_toolkit uses outside full-screen mode (CSI A B C D G J K);
    other sequences do not move anything here.
    """
    lines: list[list[str]] = [[]]
    row = col = 0
    for token in _TOKEN_RE.findall(output):
        if token.startswith("\x1b["):
            params, final = token[2:-1], token[-1]
            if params.startswith("?"):
                continue
            n = int(params) if params.isdigit() else 1
            if final == "A":
                row = max(0, row - n)
            elif final == "B":
                row += n
            elif final == "C":
                col += n
            elif final == "D":
                col = max(0, col - n)
            elif final == "G":
                col = n - 1
            elif final in "JK" and row < len(lines):
                del lines[row][col:]
                if final == "J":
                    del lines[row + 1 :]
        elif token.startswith("\x1b"):
            continue
        elif token == "\r":
            col = 0
        elif token == "\n":
            row += 1
        elif token == "\b":
            col = max(0, col - 1)
        elif token >= " ":
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            for char in token:
                line.extend(" " * (col - len(line)))
                line[col : col + 1] = [char]
                col += 1
    return "\n".join("".join(line).rstrip() for line in lines).rstrip("\n")


class Terminal:
    """The master side of a pseudo-terminal, read without blocking the loop."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = bytearray()
        self.closed = False
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(master, False)
        self._loop.add_reader(master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the child side is gone
            chunk = b""
        if chunk:
            self.data += chunk
        else:
            self.closed = True
            self._loop.remove_reader(self.master)
        self._changed.set()

    @property
    def stream(self) -> str:
        """Everything written so far, without escape sequences or carriage returns."""
        text = _ESCAPE_RE.sub("", self.data.decode("utf-8", "replace"))
        return text.replace("\r", "")

    @property
    def screen(self) -> str:
        """What a person would see on the terminal now, line by line."""
        return emulate(self.data.decode("utf-8", "replace"))

    async def expect_screen(self, pattern: str, timeout: float = DEADLINE) -> None:
        """Wait until the screen matches (multi-line mode: ``^`` and ``$`` are lines)."""
        regex = re.compile(pattern, re.MULTILINE)
        try:
            async with asyncio.timeout(timeout):
                while not regex.search(self.screen):
                    if self.closed:
                        break
                    self._changed.clear()
                    await self._changed.wait()
                else:
                    return
        except TimeoutError:
            pass
        raise AssertionError(f"no {pattern!r} on the screen:\n{self.screen}")

    async def expect(self, pattern: str, start: int = 0, timeout: float = DEADLINE) -> int:
        """Wait until the regular expression matches at or after ``start``; return its end.

        The prompt may draw a space as a cursor movement, so patterns use `` ?``.
        """
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if m := regex.search(self.stream, start):
                        return m.end()
                    if self.closed:
                        break
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        raise AssertionError(f"no {pattern!r} in the output after {start}: {self.stream!r}")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if not self.closed:
            self._loop.remove_reader(self.master)
            self.closed = True
        os.close(self.master)


@contextlib.asynccontextmanager
async def interactive_client(port: int, *args: str) -> AsyncIterator[tuple[Terminal, Any]]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    try:
        proc = await asyncio.create_subprocess_exec(
            *connect_argv(port, *args),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=child_env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR=""),
            start_new_session=True,
        )
    finally:
        os.close(slave)
    terminal = Terminal(master)
    try:
        yield terminal, proc
    finally:
        if proc.returncode is None:
            signal_child(proc)
            await proc.wait()
        terminal.close()


async def test_interactive_prompt_never_garbles_the_typed_line(
    server: Server, connect: Connect
) -> None:
    kim = await connect("kim")
    async with interactive_client(server.port, "--nick", "lou") as (term, proc):
        pos = await term.expect(r"\* now talking in #general")
        pos = await term.expect(r"\[general\]>", pos)
        await kim.expect(_is("join", nick="lou"))

        term.type("hello from a terminal\r")
        message = await kim.expect(_is("message", **{"from": "lou"}))
        assert message["text"] == "hello from a terminal"
        pos = await term.expect(r"\d\d:\d\d \[general\] lou: hello from a terminal\n", pos)
        pos = await term.expect(r"\[general\]>", pos)

        # Half a line typed, then a message arrives: it is printed above the
        # prompt on a line of its own, and the half line is drawn again after
        # it, still being edited.
        term.type("half a li")
        pos = await term.expect(r"half a li", pos)
        await kim.send("interrupting you")
        pos = await term.expect(r"kim: interrupting you", pos)
        await term.expect(r"\[general\]> ?half a li", pos)
        await term.expect_screen(
            r"^\d\d:\d\d \[general\] lou: hello from a terminal\n"
            r"\d\d:\d\d \[general\] kim: interrupting you\n"
            r"\[general\]> half a li\Z"
        )
        term.type("ne, intact\r")
        message = await kim.expect(_is("message", **{"from": "lou"}))
        assert message["text"] == "half a line, intact"

        term.type("/join dev\r")
        pos = await term.expect(r"\* now talking in #dev\n", pos)
        await term.expect(r"\[dev\]>", pos)

        term.type("\x04")  # Ctrl-D at an empty prompt
        async with asyncio.timeout(DEADLINE):
            assert await proc.wait() == 0
        await kim.expect(_is("leave", nick="lou", reason="quit"))
        await term.expect(r"\* bye", pos)
        assert "Traceback" not in term.stream


async def test_interactive_ctrl_c_quits_cleanly(server: Server) -> None:
    async with interactive_client(server.port) as (term, proc):
        pos = await term.expect(r"pick a nickname")
        term.type("mia\r")
        pos = await term.expect(r"\* you are mia", pos)
        await term.expect(r"\[general\]>", pos)
        term.type("\x03")  # Ctrl-C
        async with asyncio.timeout(DEADLINE):
            assert await proc.wait() == 0
        assert "Traceback" not in term.stream


async def test_interactive_no_reconnect_exits_1(start_server: StartServer) -> None:
    server = await start_server()
    async with interactive_client(server.port, "--nick", "ned", "--no-reconnect") as (term, proc):
        pos = await term.expect(r"\[general\]>")
        term.type("unsent half")
        await term.expect(r"unsent half", pos)
        await server.shutdown()
        async with asyncio.timeout(DEADLINE):
            assert await proc.wait() == 1
        pos = await term.expect(r"! shutdown: server shutting down", pos)
        await term.expect(r"lost: .*not reconnecting \(--no-reconnect\)", pos)
        assert "Traceback" not in term.stream


# ---------------------------------------------------------------------------
# The whole story: two nc users and one chatd connect user


async def test_two_nc_users_and_a_terminal_client_chat_across_rooms_and_privately(
    server: Server, connect: Connect, spawn: Spawn
) -> None:
    ann = await connect("ann", json_mode=False)  # nc users: plain text
    bob = await connect("bob", json_mode=False)
    cat = await spawn(server.port, "--nick", "cat")
    await cat.expect(r"^\* now talking in #general$")
    await ann.expect_line(r"^\* cat joined #general$")

    # In general, everyone hears everyone.
    await ann.send("hello all")
    await bob.expect_line(r"^\[general\] ann: hello all$")
    await cat.expect(r"^\d\d:\d\d \[general\] ann: hello all$")
    await cat.send("hi from the terminal")
    await ann.expect_line(r"^\[general\] cat: hi from the terminal$")
    await bob.expect_line(r"^\[general\] cat: hi from the terminal$")

    # A room of two: what is said there stays there.
    await bob.send("/create dev")
    await bob.expect_line(r"^\* now talking in #dev$")
    await cat.send("/join dev")
    await bob.expect_line(r"^\* cat joined #dev$")
    await cat.send("dev only")
    await bob.expect_line(r"^\[dev\] cat: dev only$")
    await ann.send("/ping sync")
    await ann.expect_line(r"^\* pong sync$")  # ann has seen everything up to now...
    await bob.send("/msg ann psst, ann")
    assert await ann.expect_line(r"psst") == "[bob -> ann] psst, ann"  # ...and no dev talk

    # Private messages between nc and the terminal client, both ways.
    await ann.send("/msg cat are you there?")
    await cat.expect(r"ann -> cat.*are you there\?")
    await cat.send("/msg ann yes")
    assert await ann.expect_line(r"yes$") == "[cat -> ann] yes"
    assert await cat.finish() == 0
    await ann.expect_line(r"^\* cat left #general \(quit\)$")
