"""One account on many connections, over real sockets: TCP and WebSocket
connections of one account share its nickname, rooms, messages and DMs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.accountclients import PASSWORD, account, client, close_all, device
from tests.conftest import StartServer
from tests.helpers import LineClient, who
from tests.test_web import WsClient

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_stores]

Event = dict[str, Any]


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Clients are closed, on the test's loop, even when a test fails halfway."""
    yield
    close_all()


async def test_tcp_and_websocket_of_one_account_share_everything(
    start_server: StartServer,
) -> None:
    server = await start_server(http_port=0)
    laptop = await account(server.port, "alice")
    await laptop.send("/join dev")
    await laptop.expect(lambda e: e["type"] == "current" and e["room"] == "dev", "in dev")
    phone = await WsClient.open(server.http_port)
    await phone.send(f"/login alice {PASSWORD}")
    await phone.expect("registered", nick="alice", account=True)
    # The phone lands in the account's rooms, dev current as it was.
    await phone.expect("current", room="dev")
    bob = await client(server.port, "bob")
    await bob.send("/join dev")
    await laptop.expect(lambda e: e["type"] == "join" and e["nick"] == "bob", "bob joins")
    await phone.expect("join", room="dev", nick="bob")

    # A room message reaches both; the sender's other connection sees its own line.
    await bob.send("hello dev")
    for_laptop = await laptop.expect("message")
    for_phone = await phone.expect("message")
    assert for_laptop["text"] == for_phone["text"] == "hello dev"
    await laptop.send("from the laptop")
    assert (await phone.expect("message"))["from"] == "alice"
    assert (await laptop.expect("message"))["text"] == "from the laptop"

    # A DM to the account reaches both; one sent from the phone shows on the laptop.
    await bob.send("/msg alice psst")
    assert (await laptop.expect("dm"))["text"] == "psst"
    assert (await phone.expect("dm"))["text"] == "psst"
    await phone.send("/msg bob back at you")
    sent = await laptop.expect("dm")
    assert (sent["from"], sent["to"], sent["text"]) == ("alice", "bob", "back at you")
    await bob.expect(lambda e: e["type"] == "dm" and e["text"] == "back at you", "dm")

    # A join on the phone is a join on the laptop: told, current room kept.
    await phone.send("/join ops")
    await phone.expect("current", room="ops")
    joined = await laptop.expect(lambda e: e["type"] == "join" and e["room"] == "ops", "ops")
    assert joined["nick"] == "alice"
    events = await laptop.sync()
    assert not [e for e in events if e["type"] == "current"], events
    await laptop.send("/topic")
    assert (await laptop.expect("topic"))["room"] == "dev"
    await phone.close()


async def test_the_account_is_in_a_room_until_its_last_connection_goes(
    start_server: StartServer,
) -> None:
    server = await start_server()
    one = await account(server.port, "alice")
    two = await device(server.port, "alice")
    bob = await client(server.port, "bob")
    assert list(await who(bob, "general")) == ["alice", "bob"]  # once, not twice
    await bob.send("/rooms")
    rooms = (await bob.expect("rooms"))["rooms"]
    assert {r["name"]: r["members"] for r in rooms}["general"] == 2

    one.close()
    # bob hears nothing of it: alice is still here through her other connection.
    two_events = await two.sync("still-here")
    assert not [e for e in two_events if e["type"] == "leave"]
    events = await bob.sync("no-leave")
    assert not [e for e in events if e["type"] == "leave"], events
    assert list(await who(bob, "general")) == ["alice", "bob"]

    await two.send("/quit bye")
    leave = await bob.expect("leave")
    assert leave["nick"] == "alice"
    assert list(await who(bob, "general")) == ["bob"]


async def test_leaving_on_one_connection_leaves_on_all(start_server: StartServer) -> None:
    server = await start_server()
    one = await account(server.port, "alice")
    await one.send("/join dev")
    await one.expect("current")
    two = await device(server.port, "alice")
    bob = await client(server.port, "bob")
    await bob.send("/join dev")
    await bob.expect("current")
    await one.send("/leave dev")
    for c in (one, two, bob):
        left = await c.expect(lambda e: e["type"] == "leave" and e["room"] == "dev", "leave")
        assert left["nick"] == "alice"
    # The connection whose current room it was falls back to another.
    current = await two.expect("current")
    assert current["room"] == "general"
    assert list(await who(bob, "dev")) == ["bob"]


async def test_sessions_list_kick_and_logout_everywhere(start_server: StartServer) -> None:
    server = await start_server()
    one = await account(server.port, "alice")
    two = await device(server.port, "alice")
    three = await device(server.port, "alice")
    await two.send("/sessions")
    sessions = (await two.expect("sessions"))["sessions"]
    assert len(sessions) == 3
    assert [s["current"] for s in sessions].count(True) == 1
    assert {s["transport"] for s in sessions} == {"tcp"}
    assert all(s["address"] == "127.0.0.1" and s["since"] > 0 for s in sessions)
    mine = next(s for s in sessions if s["current"])
    other = next(s for s in sessions if not s["current"])

    await two.send(f"/kick-session {mine['id']}")
    assert (await two.expect("error"))["code"] == "bad_args"
    await two.send("/kick-session s999999")
    assert (await two.expect("error"))["code"] == "bad_args"
    await two.send(f"/kick-session {other['id']}")
    after = (await two.expect("sessions"))["sessions"]
    assert len(after) == 2
    ended = [c for c in (one, three) if c is not two]
    gone = 0
    for c in ended:
        events = await _until_closed_or_synced(c)
        gone += any(e["type"] == "bye" for e in events)
    assert gone == 1

    await two.send("/logout --all")
    assert (await two.expect("logout"))["nick"] == "alice"
    survivor = next(c for c in ended if not c.reader.at_eof())
    bye = await survivor.expect("bye")
    assert "alice" in bye["reason"]
    await survivor.wait_closed()


async def _until_closed_or_synced(c: LineClient) -> list[Event]:
    """The events a connection gets until it closes, or until a ping answers."""
    events: list[Event] = []
    try:
        await c.send("/ping probe")
        while True:
            event = await c.event()
            events.append(event)
            if event["type"] == "pong":
                return events
    except (AssertionError, ConnectionError):
        return events


async def test_too_many_sessions_is_a_clear_error(start_server: StartServer) -> None:
    server = await start_server(max_sessions_per_account=2)
    await account(server.port, "alice")
    await device(server.port, "alice")
    third = await client(server.port)
    await third.send(f"/login alice {PASSWORD}")
    error = await third.expect("error")
    assert error["code"] == "too_many_sessions"
    assert "2 sessions" in error["text"]
    await third.send("/nick carol")  # still free to be a guest
    assert (await third.expect("registered"))["nick"] == "carol"


async def test_a_connection_sharing_its_account_keeps_the_nickname(
    start_server: StartServer,
) -> None:
    server = await start_server()
    one = await account(server.port, "alice")
    await device(server.port, "alice")
    await one.send("/nick alicia")
    error = await one.expect("error")
    assert error["code"] == "bad_args"
    assert "/logout" in error["text"]


async def test_guests_are_unchanged(start_server: StartServer) -> None:
    server = await start_server()
    await client(server.port, "guest")
    other = await client(server.port)
    await other.send("/nick guest")
    assert (await other.expect("error"))["code"] == "nick_taken"


async def test_a_mention_is_marked_for_its_reader_alone(start_server: StartServer) -> None:
    server = await start_server()
    alice = await client(server.port, "alice")
    bob = await client(server.port, "bob")
    carol = await client(server.port, "carol")
    await carol.send("hey @Bob, and bobby is not you")
    for_bob = await bob.expect("message")
    for_alice = await alice.expect("message")
    for_carol = await carol.expect("message")
    assert for_bob.get("mention") is True
    assert "mention" not in for_alice
    assert "mention" not in for_carol  # the sender's own line never is
    await alice.send("bobby and bob.smith are other people")
    assert "mention" not in await bob.expect("message")


async def test_a_login_lands_in_the_accounts_rooms_in_one_step(start_server: StartServer) -> None:
    """A connection is one of the account's only once it is in its rooms: the
    other connection dropping right after the login's ``registered`` is
    unseen (no join again), and the member counts stay right."""
    server = await start_server()
    first = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    rooms = [f"v{i}" for i in range(30)]
    for room in rooms:
        await bob.send(f"/join {room}")
    await bob.sync()
    for room in rooms:
        await first.send(f"/join {room}", f"said in {room}")  # a read marker in each
    await first.sync()
    await bob.sync()
    second = await client(server.port)
    await second.send(f"/login alice {PASSWORD}")
    await second.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    first.writer.transport.abort()
    events = await second.sync("landed")
    assert {e["room"] for e in events if e["type"] == "join"} == {"general", *rooms}
    bob_saw = await bob.sync("seen")
    assert not [e for e in bob_saw if e.get("nick") == "alice"], bob_saw
    await bob.send("/rooms")
    counts = {r["name"]: r["members"] for r in (await bob.expect("rooms"))["rooms"]}
    assert all(counts[room] == 2 for room in rooms), counts
    await second.send("/quit")
    await bob.expect(lambda e: e["type"] == "leave" and e["room"] == "v29", "alice leaves v29")
    await bob.send("/rooms")
    counts = {r["name"]: r["members"] for r in (await bob.expect("rooms"))["rooms"]}
    assert all(counts[room] == 1 for room in rooms), counts


async def test_as_many_logins_at_once_as_an_account_may_have_sessions(
    start_server: StartServer,
) -> None:
    """Ten devices reconnecting together all get in: a login in progress
    counts against the guessing limit, which leaves room for them."""
    server = await start_server()
    (await account(server.port, "alice")).close()
    devices = [await client(server.port) for _ in range(10)]
    for d in devices:
        await d.send(f"/login alice {PASSWORD}")
    for d in devices:
        answer = await d.expect(lambda e: e["type"] in ("registered", "error"), "login")
        assert answer["type"] == "registered", answer


async def test_a_login_alone_makes_one_room_current(start_server: StartServer) -> None:
    """A client takes its current room for the one on screen and marks it
    read: a login that rejoins the account's rooms makes only the saved
    current room current, not each room on the way."""
    server = await start_server()
    first = await account(server.port, "alice")
    await first.send("/join dev", "/join ops", "/join dev")
    await first.expect(lambda e: e["type"] == "current" and e["room"] == "ops", "in ops")
    await first.expect(lambda e: e["type"] == "current" and e["room"] == "dev", "in dev")
    await first.send("/quit")
    await first.expect("bye")
    back = await client(server.port)
    await back.send(f"/login alice {PASSWORD}")
    events = await back.sync("landed")
    assert {e["room"] for e in events if e["type"] == "join"} == {"general", "dev", "ops"}
    assert [e["room"] for e in events if e["type"] == "current"] == ["dev"]
