"""An account's rooms over real sockets: a login takes the account back to them."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatd.server import Server
from tests.conftest import Spawn, StartServer
from tests.helpers import LineClient, open_json

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
    """With 2 messages on join, the replay is not enough: the rest is fetched."""
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
