"""An account's rooms over real sockets: a login takes the account back to them."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatd.daemon.server import Server
from chatd.store import StoredMessage, StoreError
from tests.conftest import Spawn, StartServer
from tests.helpers import LineClient, PipeClient, open_json

PASSWORD = "correct-horse"

_open: list[LineClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Clients are closed even when a test fails halfway."""
    yield
    while _open:
        _open.pop().close()


async def json_client(port: int, nick: str | None = None) -> LineClient:
    """A JSON client, closed after the test."""
    opened = await open_json(port, nick)
    _open.append(opened)
    return opened


async def login(port: int, nick: str) -> tuple[LineClient, list[dict[str, Any]]]:
    """Log in as the first command; return the client and what it was told."""
    opened = await json_client(port)
    await opened.send(f"/login {nick} {PASSWORD}")
    return opened, await opened.sync("logged-in")


async def rooms_of(client: LineClient) -> tuple[list[str], str | None]:
    """The rooms the server says the client is in (``/who`` of each), and its current one."""
    await client.send("/rooms")
    listed = [r["name"] for r in (await client.expect("rooms"))["rooms"]]
    mine = []
    for name in listed:
        await client.send(f"/who {name}")
        if client.nick in (await client.expect("who"))["nicks"]:
            mine.append(name)
    await client.send("/topic")
    topic = await client.expect(lambda e: e["type"] in ("topic", "error"))
    return mine, topic.get("room")


async def restart(start_server: StartServer, server: Server, db: str) -> Server:
    """The same daemon after a restart (SQLite), or the same one (memory: nothing survives)."""
    if db == ":memory:":
        return server
    await server.shutdown()
    return await start_server(db=db)


@pytest.mark.both_stores
async def test_login_rejoins_the_accounts_rooms(
    start_server: StartServer, chatd_store: str
) -> None:
    server = await start_server()
    dave = await json_client(server.port, "dave")
    await dave.send(f"/register {PASSWORD}", "/join a", "/join b", "said in b", "/join a")
    await dave.sync()
    dave.close()

    server = await restart(start_server, server, chatd_store)
    me, events = await login(server.port, "dave")
    me.nick = "dave"
    joins = [e["room"] for e in events if e["type"] == "join" and e["nick"] == "dave"]
    assert joins == ["general", "a", "b"]
    assert [e for e in events if e["type"] == "current"][-1] == {"type": "current", "room": "a"}
    # Rejoining shows the room's history, as any join does.
    replay = [e["text"] for e in events if e["type"] == "message" and e["room"] == "b"]
    assert replay == ["said in b"]
    assert all(e["history"] for e in events if e["type"] == "message")
    assert await rooms_of(me) == (["a", "b", "general"], "a")
    me.close()


@pytest.mark.both_stores
async def test_a_room_left_is_not_rejoined(start_server: StartServer, chatd_store: str) -> None:
    server = await start_server()
    erin = await json_client(server.port, "erin")
    await erin.send(f"/register {PASSWORD}", "/join a", "/join b", "/join c", "/leave b")
    await erin.sync()
    erin.close()

    server = await restart(start_server, server, chatd_store)
    me, events = await login(server.port, "erin")
    me.nick = "erin"
    assert [e["room"] for e in events if e["type"] == "join"] == ["general", "a", "c"]
    assert await rooms_of(me) == (["a", "c", "general"], "c")
    me.close()


async def test_rooms_joined_as_a_guest_become_the_accounts(server: Server) -> None:
    fred = await json_client(server.port, "fred")
    await fred.send("/join ops", "/join dev", f"/register {PASSWORD}", "/quit")
    await fred.expect("bye")
    fred.close()
    me, _ = await login(server.port, "fred")
    me.nick = "fred"
    assert await rooms_of(me) == (["dev", "general", "ops"], "dev")
    me.close()


async def test_a_guest_who_logs_in_keeps_its_rooms_and_gets_the_accounts(
    server: Server, tmp_path: Path
) -> None:
    gina = await json_client(server.port, "gina")
    await gina.send(f"/register {PASSWORD}", "/join a", "/quit")
    await gina.expect("bye")
    gina.close()
    guest = await json_client(server.port, "temp")
    await guest.send("/join lobby", f"/login gina {PASSWORD}")
    await guest.sync()
    guest.nick = "gina"
    assert await rooms_of(guest) == (["a", "general", "lobby"], "a")
    guest.close()


async def test_the_room_limit_still_applies_to_a_login(start_server: StartServer) -> None:
    server = await start_server(max_rooms_per_session=3)
    hank = await json_client(server.port, "hank")
    await hank.send(f"/register {PASSWORD}", "/join a", "/join b")
    await hank.sync()
    hank.close()
    guest = await json_client(server.port, "temp")
    await guest.send("/join lobby", f"/login hank {PASSWORD}")
    events = await guest.sync()
    errors = [e["code"] for e in events if e["type"] == "error"]
    assert errors == ["too_many_rooms"]
    guest.nick = "hank"
    assert await rooms_of(guest) == (["a", "general", "lobby"], "a")
    guest.close()


@pytest.mark.parametrize("history_on_join", [20, 2])
async def test_the_terminal_client_logs_back_in_and_shows_only_what_it_missed(
    start_server: StartServer, spawn: Spawn, tmp_path: Path, history_on_join: int
) -> None:
    """#b is on screen, so the client marked it read: the login shows all
    that came after, even with 2 messages on join (a room not on screen is
    replayed from its last messages and the rest fetched: see below)."""
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db, history_on_join=history_on_join)
    port = first.port
    dave = await spawn(port, "--nick", "dave")
    await dave.send(f"/register {PASSWORD}", "/join a", "/join b")
    await dave.expect(r"^\* now talking in #b$")
    bob = await json_client(port, "bob")
    await bob.send("/join b", "seen before the restart")
    await dave.expect(r"\[b\] bob: seen before the restart$")
    bob.close()

    await first.shutdown()
    await dave.expect(r"connection to .* lost", stream="err")
    missed = ["missed one", "missed two", "missed three"]
    # Held still while the daemon comes back and someone speaks.
    os.kill(dave.proc.pid, signal.SIGSTOP)
    try:
        await start_server(db=db, port=port, history_on_join=history_on_join)
        bob = await json_client(port, "bob")
        await bob.send("/join b", *missed)
        await bob.expect(lambda e: e.get("text") == missed[-1])
    finally:
        os.kill(dave.proc.pid, signal.SIGCONT)

    await dave.expect(r"reconnected as dave in #general, #a, #b; talking in #b$", stream="err")
    await bob.send("said live")
    await dave.expect(r"^\d\d:\d\d \[b\] bob: said live$")
    said = [line.partition("bob: ")[2] for line in dave.out if "[b] bob: " in line]
    assert said == ["seen before the restart", *missed, "said live"]
    for text in missed:  # shown as the past they are
        assert any(
            re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d \[b\] bob: {text}", line)
            for line in dave.out
        )
    assert not [line for line in dave.err if "could not take back" in line]
    await bob.send("/who b")
    assert (await bob.expect("who"))["nicks"] == ["bob", "dave"]
    bob.close()
    assert await dave.finish() == 0


async def test_the_terminal_client_logs_in_with_the_password_it_changed(
    start_server: StartServer, spawn: Spawn, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db)
    port = first.port
    ivy = await spawn(port, "--nick", "ivy")
    await ivy.send(f"/register {PASSWORD}", "/join a", f"/passwd {PASSWORD} another-horse")
    await ivy.expect(r"^\* password of ivy changed$")
    await first.shutdown()
    await ivy.expect(r"connection to .* lost", stream="err")
    await start_server(db=db, port=port)
    await ivy.expect(r"reconnected as ivy in #general, #a; talking in #a$", stream="err")
    assert await ivy.finish() == 0


async def _miss_while_away(
    client: PipeClient, start_server: StartServer, first: Server, db: str, says: list[str]
) -> tuple[Server, LineClient]:
    """Restart the daemon while ``client`` is held still; ``says`` are
    ``ROOM TEXT`` lines bob says before the client may reconnect."""
    port = first.port
    await first.shutdown()
    await client.expect(r"connection to .* lost", stream="err")
    os.kill(client.proc.pid, signal.SIGSTOP)
    try:
        second = await start_server(db=db, port=port, history_on_join=2)
        bob = await json_client(port, "bob")
        for line in says:
            room, _, text = line.partition(" ")
            await bob.send(f"/join #{room}", text)
            await bob.expect(lambda e, text=text: e.get("text") == text)
    finally:
        os.kill(client.proc.pid, signal.SIGCONT)
    return second, bob


def said_by_bob(client: PipeClient, room: str) -> list[str]:
    return [line.partition("bob: ")[2] for line in client.out if f"[{room}] bob: " in line]


@pytest.mark.parametrize("elsewhere", ["chatd connect", "nc"])
async def test_a_terminal_client_stays_beside_a_login_elsewhere_until_that_one_ends_it(
    server: Server, spawn: Spawn, elsewhere: str
) -> None:
    """A second login adds a session: the terminal client stays, and sees
    the account join a room there; ``/kick-session`` from there sends it
    away, and it says so and stays away."""
    dave = await spawn(server.port, "--nick", "dave")
    await dave.send(f"/register {PASSWORD}", "/join a")
    await dave.expect(r"^\* now talking in #a$")
    watcher = await json_client(server.port, "watcher")
    await watcher.send("/join a", "/join b")
    await watcher.sync()

    if elsewhere == "nc":
        other, _ = await login(server.port, "dave")
        await other.send("/join b", "/sessions")
        sessions = (await other.expect("sessions"))["sessions"]
        (first,) = [s["id"] for s in sessions if not s["current"]]
    else:
        laptop = await spawn(server.port)
        await laptop.send(f"/login dave {PASSWORD}")
        await laptop.expect(r"^\* you are dave \(logged in\)$")
        await laptop.send("/join b", "/sessions")
        await laptop.expect(r"^\* sessions of your account: 2$")
        listed = [await laptop.expect(r"^  s\d+ "), await laptop.expect(r"^  s\d+ ")]
        (first,) = [row.split()[0] for row in listed if not row.endswith("(this one)")]
    # The account joined #b over there: the terminal client is in it too,
    # and still talks in #a; the others saw one join.
    await dave.expect(r"^\* dave joined #b$")
    await watcher.expect(lambda e: e.get("type") == "join" and e.get("room") == "b")
    await dave.send("/who b", "still talking in a")
    await dave.expect(r"^\* in #b: dave, @watcher$")
    await dave.expect(r"^\d\d:\d\d \[a\] dave: still talking in a$")
    assert dave.proc.returncode is None

    if elsewhere == "nc":
        await other.send(f"/kick-session {first}")
    else:
        await laptop.send(f"/kick-session {first}")
    assert await dave.wait() == 1
    assert dave.out[-1] == "* bye (ended by another session of dave)"
    assert dave.err == ["chatd connect: another session of dave ended this one; not reconnecting"]

    # The session that remains keeps the account: nobody comes back to it.
    if elsewhere == "nc":
        await other.send("/sessions", "/who a", "/quit")
        assert len((await other.expect("sessions"))["sessions"]) == 1
        assert (await other.expect("who"))["nicks"] == ["dave", "watcher"]
        await other.expect("bye")
        other.close()
    else:
        await laptop.send("/sessions", "/who a")
        await laptop.expect(r"^\* sessions of your account: 1$")
        await laptop.expect(r"^\* in #a: ~dave, watcher$")
        assert await laptop.finish() == 0
        assert laptop.err == []
    watcher.close()


async def test_the_terminal_client_catches_up_in_a_room_named_by_digits(
    start_server: StartServer, spawn: Spawn, tmp_path: Path
) -> None:
    """``/history 2024`` would ask for 2024 messages: the fetch names ``#2024``."""
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db, history_on_join=2)
    dave = await spawn(first.port, "--nick", "dave")
    # Talking in #general: #2024 is not on screen, so it is not marked read,
    # and the login after the restart replays only its last messages.
    await dave.send(f"/register {PASSWORD}", "/join 2024", "/join general")
    await dave.expect(r"^\* now talking in #2024$")
    await dave.expect(r"^\* now talking in #general$")
    bob = await json_client(first.port, "bob")
    await bob.send("/join #2024", "seen before the restart")
    await dave.expect(r"\[2024\] bob: seen before the restart$")
    bob.close()

    missed = ["missed one", "missed two", "missed three"]
    _, bob = await _miss_while_away(
        dave, start_server, first, db, [f"2024 {text}" for text in missed]
    )
    await dave.expect(r"reconnected as dave in #general, #2024; talking in #general$", stream="err")
    await bob.send("said live")
    await dave.expect(r"^\d\d:\d\d \[2024\] bob: said live$")
    assert said_by_bob(dave, "2024") == ["seen before the restart", *missed, "said live"]
    assert not [line for line in dave.out if line.startswith("! bad_args")]
    bob.close()
    assert await dave.finish() == 0


async def test_a_failed_catch_up_fetch_holds_back_no_message(
    start_server: StartServer, spawn: Spawn, tmp_path: Path
) -> None:
    """The /history of missed messages fails: the live ones still come, and
    the client says what it could not show and how to ask again."""
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db, history_on_join=2)
    dave = await spawn(first.port, "--nick", "dave")
    # Talking in #general: #b is not marked read (see the test above).
    await dave.send(f"/register {PASSWORD}", "/join b", "/join general")
    await dave.expect(r"^\* now talking in #b$")
    await dave.expect(r"^\* now talking in #general$")
    bob = await json_client(first.port, "bob")
    await bob.send("/join b", "seen before the restart")
    await dave.expect(r"\[b\] bob: seen before the restart$")
    bob.close()

    port = first.port
    await first.shutdown()
    await dave.expect(r"connection to .* lost", stream="err")
    missed = ["missed one", "missed two", "missed three"]
    os.kill(dave.proc.pid, signal.SIGSTOP)
    try:
        second = await start_server(db=db, port=port, history_on_join=2)
        store = second.manager.store
        recent = store.recent

        async def unreadable_pages(
            conversation: str, limit: int, before: int | None = None, account: int | None = None
        ) -> tuple[list[StoredMessage], bool]:
            """The last messages (on join) are read; a page back fails."""
            if before is not None:
                raise StoreError("the database cannot be read: disk I/O error")
            return await recent(conversation, limit, before, account)

        store.recent = unreadable_pages  # type: ignore[method-assign]
        bob = await json_client(second.port, "bob")
        await bob.send("/join b", *missed)
        await bob.expect(lambda e: e.get("text") == missed[-1])
    finally:
        os.kill(dave.proc.pid, signal.SIGCONT)

    await dave.expect(r"^! storage_unavailable: the database cannot be read")
    await dave.expect(
        r"the missed messages could not be fetched; /history #b 1000 before=\d+$", stream="err"
    )
    await dave.expect(r"reconnected as dave in #general, #b; talking in #general$", stream="err")
    await bob.send("said live")
    await dave.expect(r"^\d\d:\d\d \[b\] bob: said live$")
    # The replay (the last two) was held for the fetch and follows its failure.
    assert said_by_bob(dave, "b") == [
        "seen before the restart",
        "missed two",
        "missed three",
        "said live",
    ]
    bob.close()
    assert await dave.finish() == 0


async def test_the_terminal_client_shows_what_was_missed_in_a_room_it_had_shown_nothing_of(
    start_server: StartServer, spawn: Spawn, tmp_path: Path
) -> None:
    """Ids are global: the newest message shown in #b bounds what #a had shown."""
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db, history_on_join=2)
    dave = await spawn(first.port, "--nick", "dave")
    await dave.send("/join a", "/join b", "/join a")
    await dave.expect(r"^\* now talking in #a$")
    bob = await json_client(first.port, "bob")
    await bob.send("/join b", "seen before the restart")
    await dave.expect(r"\[b\] bob: seen before the restart$")
    bob.close()

    missed = ["missed one", "missed two", "missed three"]
    _, bob = await _miss_while_away(dave, start_server, first, db, [f"a {t}" for t in missed])
    await dave.expect(r"reconnected as dave in #general, #a, #b; talking in #a$", stream="err")
    await bob.send("said live")
    await dave.expect(r"^\d\d:\d\d \[a\] bob: said live$")
    assert said_by_bob(dave, "a") == [*missed, "said live"]
    bob.close()
    assert await dave.finish() == 0
