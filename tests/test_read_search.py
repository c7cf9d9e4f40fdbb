"""Read markers, unread counts, mentions and search, end to end over real
sockets: what a user of one account on several connections notices, on the
memory store, on SQLite (across a restart) and in a cluster through Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.accountclients import PASSWORD, account, client, close_all
from tests.conftest import Nodes, StartServer
from tests.helpers import REDIS, LineClient, who
from tests.ircclient import IrcClient

pytestmark = pytest.mark.timeout(60)

needs_redis = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
)

Event = dict[str, Any]

_irc: list[IrcClient] = []


def _close_clients() -> None:
    close_all()
    while _irc:
        _irc.pop().close()


@pytest.fixture(autouse=True)
async def _clients_closed() -> AsyncIterator[None]:
    """Clients are closed, on the test's loop, even when a test fails halfway."""
    yield
    _close_clients()


@pytest.fixture
async def serve(start_server: StartServer) -> AsyncIterator[StartServer]:
    """``start_server``; the clients close before the daemons stop (which
    would otherwise wait for them)."""
    yield start_server
    _close_clients()


@pytest.fixture
async def cluster(nodes: Nodes) -> AsyncIterator[Nodes]:
    """``nodes``; the clients close before the daemons and Redis stop."""
    yield nodes
    _close_clients()


# ---------------------------------------------------------------------------
# Helpers


async def login(port: int, nick: str) -> tuple[LineClient, list[Event]]:
    """A new connection that logs in to ``nick`` as its first command, and
    everything it was told up to the end of its landing."""
    opened = await client(port)
    await opened.send(f"/login {nick} {PASSWORD}")
    await opened.expect(lambda e: e["type"] == "registered" and e["account"], "logged in")
    opened.nick = nick
    return opened, await opened.sync("landed")


async def enter(c: LineClient, room: str) -> None:
    await c.send(f"/join {room}")
    await c.expect(lambda e: e["type"] == "current" and e["room"] == room, f"in #{room}")


async def quit_(c: LineClient) -> None:
    """``/quit``, until the server has closed the connection."""
    await c.send("/quit")
    await c.expect("bye")
    await c.wait_closed()


async def say_all(c: LineClient, room: str, texts: list[str]) -> list[int]:
    """Say each line in ``c``'s current room ``room``; the ids of their echoes."""
    await c.send(*texts)
    ids = []
    for text in texts:
        echo = await c.expect(said(text, room), f"echo of {text!r}")
        ids.append(echo["id"])
    return ids


def said(text: str, room: str | None = None) -> Callable[[Event], bool]:
    return lambda e: (
        e.get("type") == "message"
        and e.get("text") == text
        and (room is None or e.get("room") == room)
    )


async def error(c: LineClient, command: str) -> str:
    """Send ``command``; the code of the error it gets."""
    await c.send(command)
    return str((await c.expect("error", f"error for {command}"))["code"])


async def unread(c: LineClient) -> dict[str, Event]:
    """``/unread``: each conversation by ``#room`` or ``@peer``."""
    await c.send("/unread")
    answer = await c.expect("unread")
    out: dict[str, Event] = {}
    for conv in answer["conversations"]:
        name = f"#{conv['room']}" if conv["room"] is not None else f"@{conv['peer']}"
        assert name not in out, answer
        out[name] = conv
    return out


async def search(c: LineClient, args: str) -> tuple[list[Event], Event]:
    """``/search ARGS``: the results, then the summary event."""
    await c.send(f"/search {args}")
    results: list[Event] = []
    while (event := await c.event())["type"] != "search":
        if event["type"] == "error":
            raise AssertionError(f"/search {args}: {event}")
        if event.get("search"):
            results.append(event)
    return results, event


def texts(events: list[Event]) -> list[str]:
    return [e["text"] for e in events]


# ---------------------------------------------------------------------------
# Read markers


@pytest.mark.both_stores
async def test_read_reaches_every_session_and_only_moves_forward(
    serve: StartServer,
) -> None:
    server = await serve()
    laptop = await account(server.port, "alice")
    phone = await client(server.port)
    await phone.send(f"/login alice {PASSWORD}")
    await phone.expect(lambda e: e["type"] == "registered" and e["account"], "logged in")
    await phone.sync("phone-landed")
    bob = await client(server.port, "bob")
    ids = await say_all(bob, "general", ["one", "two", "three"])
    for c in (laptop, phone):
        await c.expect(said("three"), "three")

    # /read with no argument: the current room, up to its newest message.
    await laptop.send("/read")
    for c in (laptop, phone):
        read = await c.expect("read")
        assert read == {"type": "read", "room": "general", "peer": None, "id": ids[-1]}

    # An older id changes nothing: the answer is the marker as it is.
    await phone.send(f"/read #general {ids[0]}")
    for c in (phone, laptop):
        assert (await c.expect("read"))["id"] == ids[-1]
    assert (await unread(laptop))["#general"]["last_read"] == ids[-1]

    # A newer message, read by id on the other connection.
    [newer] = await say_all(bob, "general", ["four"])
    await phone.expect(said("four"), "four")
    await phone.send(f"/read general {newer}")
    for c in (phone, laptop):
        assert (await c.expect("read"))["id"] == newer

    # A DM conversation, by @nick.
    await bob.send("/msg alice psst")
    dm = await laptop.expect("dm")
    await phone.expect("dm")
    await laptop.send("/read @bob")
    for c in (laptop, phone):
        assert await c.expect("read") == {
            "type": "read",
            "room": None,
            "peer": "bob",
            "id": dm["id"],
        }


@pytest.mark.both_stores
async def test_saying_something_marks_the_conversation_read(serve: StartServer) -> None:
    server = await serve()
    laptop = await account(server.port, "alice")
    phone, _ = await login(server.port, "alice")
    bob = await account(server.port, "bob")
    [first] = await say_all(bob, "general", ["one"])
    await laptop.expect(said("one"), "one")
    await laptop.send("/read")
    assert (await laptop.expect("read"))["id"] == first
    await say_all(bob, "general", ["two"])
    await laptop.expect(said("two"), "two")
    assert (await unread(laptop))["#general"]["unread"] == 1

    # Her own line marks the room read up to it, without a read event: what
    # came before it is read too, on every connection.
    [mine] = await say_all(laptop, "general", ["my own line"])
    events = await laptop.sync("no-read-event")
    assert not [e for e in events if e["type"] == "read"], events
    conversations = await unread(phone)
    assert (conversations["#general"]["unread"], conversations["#general"]["last_read"]) == (
        0,
        mine,
    )

    # The same for a DM conversation: answering bob reads what he sent.
    await bob.send("/msg alice are you there?")
    await laptop.expect("dm")
    assert (await unread(laptop))["@bob"]["unread"] == 1
    await phone.send("/msg bob yes")
    await phone.expect(lambda e: e["type"] == "dm" and e["text"] == "yes", "dm")
    conversations = await unread(laptop)
    assert "@bob" not in conversations, conversations  # nothing unread there


@pytest.mark.both_stores
async def test_read_refuses_rooms_not_joined_and_guests(serve: StartServer) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    await enter(bob, "dev")
    await bob.send("in dev")
    await bob.expect(said("in dev"))
    assert await error(alice, "/read dev") == "not_in_room"
    assert await error(alice, "/read #nowhere 5") == "not_in_room"
    assert await error(bob, "/read") == "not_logged_in"
    assert await error(bob, "/read dev") == "not_logged_in"
    assert await error(bob, "/unread") == "not_logged_in"
    # Both connections carry on.
    await alice.sync("alice-still-here")
    await bob.sync("bob-still-here")


async def test_read_markers_survive_a_restart(serve: StartServer, tmp_path: Path) -> None:
    db = str(tmp_path / "chat.db")
    server = await serve(db=db)
    alice = await account(server.port, "alice")
    await enter(alice, "dev")
    bob = await client(server.port, "bob")
    await enter(bob, "dev")
    ids = await say_all(bob, "dev", ["first", "second", "third"])
    await alice.expect(said("third", "dev"), "third")
    await alice.send(f"/read dev {ids[1]}")
    assert (await alice.expect("read"))["id"] == ids[1]
    _close_clients()
    await server.shutdown()

    server = await serve(db=db)
    again, _ = await login(server.port, "alice")
    conversations = await unread(again)
    assert conversations["#dev"] == {
        "room": "dev",
        "peer": None,
        "unread": 1,
        "mentions": 0,
        "last_read": ids[1],
    }
    # And it still only moves forward.
    await again.send(f"/read dev {ids[0]}")
    assert (await again.expect("read"))["id"] == ids[1]


@needs_redis
async def test_read_markers_cross_cluster_nodes(cluster: Nodes) -> None:
    one, two = await cluster(2)
    alice = await account(one.port, "alice")
    await enter(alice, "dev")
    bob = await client(one.port, "bob")
    await enter(bob, "dev")
    ids = await say_all(bob, "dev", ["a", "b", "c"])
    await alice.expect(said("c", "dev"), "c")
    await alice.send("/read dev")
    assert (await alice.expect("read"))["id"] == ids[-1]
    # /unread reads the markers after this node's writes: the marker is in Redis.
    assert (await unread(alice))["#dev"]["last_read"] == ids[-1]
    await quit_(alice)
    later = await say_all(bob, "dev", ["d", "e @alice"])

    # Logged in on the other node: the marker is there, and what came after it.
    again, events = await login(two.port, "alice")
    conversations = await unread(again)
    assert conversations["#dev"]["last_read"] == ids[-1]
    assert (conversations["#dev"]["unread"], conversations["#dev"]["mentions"]) == (2, 1)
    shown = [e["id"] for e in events if e["type"] == "message" and e["room"] == "dev"]
    assert shown == ids + later  # fewer unread than history_on_join: the last ones
    # Marked read on this node: the first node's /unread sees it too.
    await again.send("/read dev")
    assert (await again.expect("read"))["id"] == later[-1]
    assert (await unread(again))["#dev"]["last_read"] == later[-1]
    await quit_(again)
    third, _ = await login(one.port, "alice")
    conversations = await unread(third)
    assert (conversations["#dev"]["last_read"], conversations["#dev"]["unread"]) == (later[-1], 0)


# ---------------------------------------------------------------------------
# Unread and mention counts after an absence


@pytest.mark.both_stores
async def test_unread_and_mentions_after_an_absence(serve: StartServer) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    await enter(alice, "dev")
    bob = await client(server.port, "bob")
    carol = await client(server.port, "carol")
    for c in (bob, carol):
        await enter(c, "dev")
    before = await say_all(bob, "dev", ["read one", "read two"])
    await alice.expect(said("read two", "dev"), "read two")
    await alice.send("/read dev")
    assert (await alice.expect("read"))["id"] == before[-1]
    await alice.send("/read general")
    marker_general = (await alice.expect("read"))["id"]
    # Two DMs while she is here, not read.
    await bob.send("/msg alice psst", "/msg alice are you there alice?")
    await alice.expect(lambda e: e["type"] == "dm" and e["text"].startswith("are you"), "dm")
    await quit_(alice)

    # 30 messages in dev while she is away, 3 of them mention her.
    lines = [f"dev line {n}" for n in range(30)]
    lines[3] = "@alice look at this"
    lines[10] = "ALICE: ping"
    lines[20] = "ask alice."
    lines[21] = "malice and alice2 and alice.smith are not her"
    half = len(lines) // 2
    unread_ids = await say_all(bob, "dev", lines[:half])
    unread_ids += await say_all(carol, "dev", lines[half:])
    await enter(carol, "general")
    general_ids = await say_all(carol, "general", ["hello general alice", "and again"])

    me, events = await login(server.port, "alice")
    # /unread: the rooms she is in, then the DM conversation.
    conversations = await unread(me)
    assert sorted(conversations) == ["#dev", "#general", "@bob"]
    assert list(conversations)[-1] == "@bob"
    assert conversations["#dev"] == {
        "room": "dev",
        "peer": None,
        "unread": 30,
        "mentions": 3,
        "last_read": before[-1],
    }
    assert conversations["#general"] == {
        "room": "general",
        "peer": None,
        "unread": 2,
        "mentions": 1,
        "last_read": marker_general,
    }
    assert conversations["@bob"]["room"] is None
    assert (conversations["@bob"]["unread"], conversations["@bob"]["mentions"]) == (2, 1)
    assert conversations["@bob"]["last_read"] == 0
    assert general_ids[-1] > marker_general

    # /rooms carries the same counts for her rooms.
    await me.send("/rooms")
    rooms = {r["name"]: r for r in (await me.expect("rooms"))["rooms"]}
    assert (rooms["dev"]["unread"], rooms["dev"]["mentions"]) == (30, 3)
    assert (rooms["general"]["unread"], rooms["general"]["mentions"]) == (2, 1)
    # A guest's /rooms has no counts.
    await bob.send("/rooms")
    assert all("unread" not in r for r in (await bob.expect("rooms"))["rooms"])

    # The login showed the 30 unread messages of dev (more than history_on_join),
    # as history, and said that older ones exist.
    shown = [e for e in events if e["type"] == "message" and e["room"] == "dev"]
    assert [e["id"] for e in shown] == unread_ids
    assert all(e.get("history") is True for e in shown)
    assert all("mention" not in e for e in shown)
    [end] = [e for e in events if e["type"] == "history" and e["room"] == "dev"]
    assert (end["count"], end["more"], end["before"]) == (30, True, unread_ids[0])
    # ... which /history pages on from.
    await me.send(f"/history dev before={end['before']} 10")
    older = []
    while (event := await me.event())["type"] != "history":
        older.append(event)
    assert [e["id"] for e in older] == before


@pytest.mark.both_stores
async def test_a_login_shows_at_most_100_unread_and_at_least_history_on_join(
    serve: StartServer,
) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    await enter(alice, "big")
    await enter(alice, "small")
    bob = await client(server.port, "bob")
    await enter(bob, "big")
    read_big = await say_all(bob, "big", [f"old big {n}" for n in range(5)])
    await enter(bob, "small")
    read_small = await say_all(bob, "small", [f"old small {n}" for n in range(25)])
    await alice.expect(said("old small 24", "small"), "the last old line")
    await alice.send("/read big", "/read small")
    assert (await alice.expect("read"))["id"] == read_big[-1]
    assert (await alice.expect("read"))["id"] == read_small[-1]
    await quit_(alice)

    new_small = await say_all(bob, "small", ["new 1", "new 2", "new 3"])
    await enter(bob, "big")
    new_big = await say_all(bob, "big", [f"new big {n}" for n in range(120)])

    me, events = await login(server.port, "alice")
    big = [e["id"] for e in events if e["type"] == "message" and e["room"] == "big"]
    assert big == new_big[-100:]  # the newest 100 of 120 unread
    [end] = [e for e in events if e["type"] == "history" and e["room"] == "big"]
    assert (end["count"], end["more"], end["before"]) == (100, True, new_big[20])
    small = [e["id"] for e in events if e["type"] == "message" and e["room"] == "small"]
    assert small == (read_small + new_small)[-20:]  # 3 unread: the last 20, as any join
    [end] = [e for e in events if e["type"] == "history" and e["room"] == "small"]
    assert (end["count"], end["more"], end["before"]) == (20, True, small[0])
    conversations = await unread(me)
    assert conversations["#big"]["unread"] == 120
    assert conversations["#small"]["unread"] == 3


@pytest.mark.both_stores
async def test_a_login_shows_what_is_unread_in_general_too(serve: StartServer) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    await say_all(bob, "general", ["before"])
    await alice.expect(said("before"), "before")
    await alice.send("/read")
    await alice.expect("read")
    await quit_(alice)
    missed = await say_all(bob, "general", [f"missed {n}" for n in range(30)])

    _, events = await login(server.port, "alice")
    shown = [e["id"] for e in events if e["type"] == "message" and e["room"] == "general"]
    assert shown == missed
    [end] = [e for e in events if e["type"] == "history" and e["room"] == "general"]
    assert (end["count"], end["more"]) == (30, True)


# ---------------------------------------------------------------------------
# Mentions


@pytest.mark.both_stores
async def test_a_mention_is_marked_on_every_connection_of_its_reader_alone(
    serve: StartServer,
) -> None:
    server = await serve()
    laptop = await account(server.port, "alice")
    await enter(laptop, "dev")
    phone, _ = await login(server.port, "alice")
    bob = await client(server.port, "bob")
    carol = await client(server.port, "carol")
    for c in (bob, carol):
        await enter(c, "dev")
    for c in (laptop, phone):
        await c.sync("all-in")

    await carol.send("alice: the build is green")
    for c in (laptop, phone):
        assert (await c.expect(said("alice: the build is green", "dev")))["mention"] is True
    assert "mention" not in await bob.expect(said("alice: the build is green"))
    assert "mention" not in await carol.expect(said("alice: the build is green"))

    await bob.send("thanks @Alice and @carol")
    for c in (laptop, phone, carol):
        assert (await c.expect(said("thanks @Alice and @carol")))["mention"] is True
    assert "mention" not in await bob.expect(said("thanks @Alice and @carol"))

    # Not a mention: another word, or her own line about herself.
    await bob.send("malice aforethought")
    for c in (laptop, phone):
        assert "mention" not in await c.expect(said("malice aforethought"))
    await phone.send("alice is back")
    for c in (laptop, phone, bob):
        assert "mention" not in await c.expect(said("alice is back"))


# ---------------------------------------------------------------------------
# Search


@pytest.mark.both_stores
async def test_search_finds_words_prefixes_and_phrases_newest_first(
    serve: StartServer,
) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    lines = [
        "deploy on friday",
        "the deployment went fine",
        "ship it now",
        "it ships tomorrow",
        "we should ship it",
        "nothing to see",
    ]
    ids = dict(zip(lines, await say_all(bob, "general", lines), strict=True))
    await alice.expect(said("nothing to see"), "the last line")

    found, end = await search(alice, "deploy")
    assert texts(found) == ["deploy on friday"]
    assert end == {
        "type": "search",
        "query": "deploy",
        "count": 1,
        "more": False,
        "before": None,
        "cut": False,
    }
    first = found[0]
    assert (first["type"], first["room"], first["from"], first["id"], first["search"]) == (
        "message",
        "general",
        "bob",
        ids["deploy on friday"],
        True,
    )
    assert "history" not in first

    found, end = await search(alice, "deplo*")
    assert texts(found) == ["the deployment went fine", "deploy on friday"]
    assert end["count"] == 2

    found, end = await search(alice, '"ship it"')
    assert texts(found) == ["we should ship it", "ship it now"]
    assert (end["query"], end["more"]) == ('"ship it"', False)

    found, _ = await search(alice, "SHIP now")  # words in any order and case
    assert texts(found) == ["ship it now"]
    found, end = await search(alice, "kumquat")
    assert (found, end["count"], end["more"]) == ([], 0, False)
    # A guest searches the rooms it is in as well.
    found, _ = await search(bob, "deplo*")
    assert [e["id"] for e in found] == [ids["the deployment went fine"], ids["deploy on friday"]]


@pytest.mark.both_stores
async def test_search_pages_back_with_before(serve: StartServer) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    ids = await say_all(bob, "general", [f"page {n} of the log" for n in range(7)])
    await say_all(bob, "general", ["unrelated"])
    await alice.expect(said("unrelated"), "the last line")

    seen: list[int] = []
    found, end = await search(alice, "page 3")
    assert [e["id"] for e in found] == ids[::-1][:3]
    assert (end["count"], end["more"], end["before"]) == (3, True, ids[4])
    seen += [e["id"] for e in found]
    found, end = await search(alice, f"page before={end['before']} 3")
    assert [e["id"] for e in found] == ids[::-1][3:6]
    assert (end["more"], end["before"]) == (True, ids[1])
    seen += [e["id"] for e in found]
    found, end = await search(alice, f"page 3 before={end['before']}")  # either order
    assert [e["id"] for e in found] == [ids[0]]
    assert (end["count"], end["more"], end["before"]) == (1, False, None)
    seen += [e["id"] for e in found]
    assert seen == sorted(ids, reverse=True)


@pytest.mark.both_stores
async def test_search_finds_only_the_rooms_one_is_in(serve: StartServer) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    await enter(bob, "hidden")
    await say_all(bob, "hidden", ["needle in the hidden room"])
    await enter(bob, "general")
    await say_all(bob, "general", ["needle in general"])
    await alice.expect(said("needle in general"), "general's needle")

    found, end = await search(alice, "needle")
    assert texts(found) == ["needle in general"]
    assert (end["count"], end["more"]) == (1, False)
    assert await error(alice, "/search #hidden needle") == "not_in_room"
    assert await error(alice, "/search #nowhere needle") == "not_in_room"
    found, _ = await search(alice, "#general needle")
    assert texts(found) == ["needle in general"]

    # Once in the room she finds it; once out of it, no more.
    await enter(alice, "hidden")
    found, _ = await search(alice, "needle")
    assert texts(found) == ["needle in general", "needle in the hidden room"]
    found, _ = await search(alice, "#hidden needle")
    assert texts(found) == ["needle in the hidden room"]
    await alice.send("/leave hidden")
    await alice.expect(lambda e: e["type"] == "leave" and e["nick"] == "alice", "left")
    found, _ = await search(alice, "needle")
    assert texts(found) == ["needle in general"]


@pytest.mark.both_stores
async def test_search_keeps_private_messages_private(serve: StartServer) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await account(server.port, "bob")
    carol = await account(server.port, "carol")
    dave = await client(server.port, "dave")
    await alice.send("/msg bob quartz plan for monday")
    await bob.expect(lambda e: e["type"] == "dm" and e["text"].startswith("quartz plan"), "dm")
    await bob.send("/msg alice quartz received")
    await alice.expect(lambda e: e["type"] == "dm" and e["text"] == "quartz received", "dm")
    await dave.send("/msg alice quartz from a guest")
    await alice.expect(lambda e: e["type"] == "dm" and e["from"] == "dave", "dave's dm")
    # The same word where everyone may read it.
    await say_all(carol, "general", ["quartz is a mineral"])
    for c in (alice, bob, dave):
        await c.expect(said("quartz is a mineral"), "carol's line")

    found, end = await search(alice, "quartz")
    assert texts(found) == [
        "quartz is a mineral",
        "quartz from a guest",
        "quartz received",
        "quartz plan for monday",
    ]
    dms = [e for e in found if e["type"] == "dm"]
    assert [(e["from"], e["to"]) for e in dms] == [
        ("dave", "alice"),
        ("bob", "alice"),
        ("alice", "bob"),
    ]
    assert all(e["search"] is True for e in found)
    assert end["count"] == 4
    found, _ = await search(alice, "@bob quartz")
    assert texts(found) == ["quartz received", "quartz plan for monday"]

    found, _ = await search(bob, "quartz")
    assert texts(found) == ["quartz is a mineral", "quartz received", "quartz plan for monday"]

    # carol is logged in, in the same room: never anyone else's DMs.
    found, end = await search(carol, "quartz")
    assert texts(found) == ["quartz is a mineral"]
    for peer in ("alice", "bob"):
        found, end = await search(carol, f"@{peer} quartz")
        assert (found, end["count"]) == ([], 0)

    # A guest finds no DMs, not even its own.
    found, _ = await search(dave, "quartz")
    assert texts(found) == ["quartz is a mineral"]
    assert await error(dave, "/search @alice quartz") == "not_logged_in"


@pytest.mark.both_stores
async def test_a_bad_search_is_an_error_and_the_connection_carries_on(
    serve: StartServer,
) -> None:
    server = await serve()
    alice = await account(server.port, "alice")
    await say_all(alice, "general", ["something to find"])
    assert await error(alice, '/search "unclosed') == "bad_query"
    await alice.sync("after-bad-query")
    assert await error(alice, "/search " + "x" * 201) == "bad_args"
    assert await error(alice, "/search something 101") == "bad_args"
    assert await error(alice, "/search") == "bad_args"
    await alice.sync("after-bad-args")
    found, _ = await search(alice, "something")
    assert texts(found) == ["something to find"]
    found, _ = await search(alice, "x" * 200)
    assert found == []


@needs_redis
async def test_search_in_a_cluster_finds_what_another_node_stored(cluster: Nodes) -> None:
    one, two = await cluster(2)
    bob = await account(one.port, "bob")
    alice = await account(two.port, "alice")
    await bob.send("kumquat season on node one")
    await alice.expect(said("kumquat season on node one"), "bob's line")
    await bob.send("/msg alice a private kumquat")
    await alice.expect(lambda e: e["type"] == "dm" and e["from"] == "bob", "dm")
    carol = await client(two.port, "carol")

    found, end = await search(alice, "kumquat")
    assert texts(found) == ["a private kumquat", "kumquat season on node one"]
    assert [e["type"] for e in found] == ["dm", "message"]
    assert (end["count"], end["more"]) == (2, False)
    found, _ = await search(alice, "kumq*")
    assert len(found) == 2
    found, _ = await search(bob, '"kumquat season"')
    assert texts(found) == ["kumquat season on node one"]
    found, _ = await search(carol, "kumquat")
    assert texts(found) == ["kumquat season on node one"]

    # Paging back, on the other node.
    ids = await say_all(bob, "general", [f"fig {n}" for n in range(5)])
    await alice.expect(said("fig 4"), "the last fig")
    found, end = await search(alice, "fig 2")
    assert [e["id"] for e in found] == [ids[4], ids[3]]
    assert (end["more"], end["before"]) == (True, ids[3])
    found, end = await search(alice, f"fig 2 before={end['before']}")
    assert [e["id"] for e in found] == [ids[2], ids[1]]
    found, end = await search(alice, f"fig 2 before={end['before']}")
    assert [e["id"] for e in found] == [ids[0]]
    assert (end["more"], end["before"]) == (False, None)


# ---------------------------------------------------------------------------
# One account on several connections: IRC, and the limit


async def test_an_irc_login_lands_in_the_rooms_of_the_account(
    serve: StartServer,
) -> None:
    server = await serve(irc_port=0)
    laptop = await account(server.port, "alice")
    await enter(laptop, "dev")
    bob = await client(server.port, "bob")
    await enter(bob, "dev")

    irc = await IrcClient.open(server.irc_port)
    _irc.append(irc)
    lines = await irc.register("alice", password=PASSWORD)
    lines += await irc.sync()
    assert irc.nick == "alice"
    joined = {line.params[0] for line in lines if line.verb == "JOIN" and line.nick == "alice"}
    assert joined == {"#general", "#dev"}, [line.raw for line in lines]

    await bob.send("hello to every alice")
    message = await irc.expect("PRIVMSG", lambda m: m.params[0] == "#dev")
    assert (message.nick, message.text) == ("bob", "hello to every alice")
    await laptop.expect(said("hello to every alice", "dev"), "on the laptop too")
    assert list(await who(bob, "dev")) == ["alice", "bob"]
    # What the IRC client says reaches the laptop as the account's line.
    await irc.send("PRIVMSG #dev :from irc")
    mine = await laptop.expect(said("from irc", "dev"), "the IRC line")
    assert mine["from"] == "alice"


async def test_one_session_too_many_is_refused(serve: StartServer) -> None:
    server = await serve(max_sessions_per_account=1)
    first = await account(server.port, "alice")
    second = await client(server.port)
    await second.send(f"/login alice {PASSWORD}")
    refused = await second.expect("error")
    assert refused["code"] == "too_many_sessions"
    assert "alice" in refused["text"]
    # The first is untouched; once it is gone, the second may log in.
    await first.sync("first-still-here")
    await quit_(first)
    await second.send(f"/login alice {PASSWORD}")
    assert (await second.expect("registered"))["account"] is True
    await second.send("/sessions")
    assert len((await second.expect("sessions"))["sessions"]) == 1


@pytest.mark.both_stores
async def test_a_marker_is_never_set_past_the_newest_message(serve: StartServer) -> None:
    """An id from the future would hide every message until then: it counts
    as the newest, so what comes after is unread as it should be."""
    server = await serve()
    alice = await account(server.port, "alice")
    bob = await client(server.port, "bob")
    await bob.send("before")
    said = await alice.expect(lambda e: e["type"] == "message" and e["text"] == "before")
    await alice.send("/read general 999999999999999999")
    read = await alice.expect("read")
    assert read["id"] == said["id"]
    await bob.send("after alice")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "after alice")
    await alice.send("/unread")
    general = (await alice.expect("unread"))["conversations"][0]
    assert (general["room"], general["unread"], general["mentions"]) == ("general", 1, 1)
    await alice.send("/read @nobody 77")
    assert (await alice.expect("read"))["id"] == 0
