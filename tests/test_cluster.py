"""Cluster mode: several daemons, one chat, through a real redis-server.

Each test starts its own ``redis-server`` on a free loopback port and two or
three daemons joined through it, and talks to each daemon over TCP.
Without redis-server the tests skip, except under CI (CI=true), where they
fail: CI installs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatd.daemon.server import Server
from tests.conftest import Nodes, StartServer
from tests.helpers import (
    REDIS,
    Daemon,
    LineClient,
    RedisServer,
    child_env,
    open_json,
    signal_child,
    until,
)

if REDIS is None and os.environ.get("CI") == "true":
    pytest.fail("redis-server is required under CI (.ci/run installs it)", pytrace=False)

pytestmark = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
)


_open: list[LineClient] = []


@pytest.fixture(autouse=True)
async def _close_clients(
    redis_server: RedisServer, start_server: StartServer
) -> AsyncIterator[None]:
    """Clients close first, then the daemons stop, then Redis."""
    yield
    while _open:
        _open.pop().close()


async def client(port: int, nick: str | None = None) -> LineClient:
    """A JSON client, closed after the test."""
    opened = await open_json(port, nick)
    _open.append(opened)
    return opened


async def clients(*pairs: tuple[Server, str]) -> list[LineClient]:
    return [await client(server.port, nick) for server, nick in pairs]


def said(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "message" and e.get("text") == text


async def test_a_room_message_reaches_members_on_every_node(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    await alice.expect(lambda e: e.get("type") == "join" and e.get("nick") == "bob", "bob joins")
    await alice.send("hello from node1")
    got = await bob.expect(said("hello from node1"))
    mine = await alice.expect(said("hello from node1"))
    assert got["from"] == "alice"
    assert got["room"] == "general"
    assert got["id"] == mine["id"]
    await bob.send("hi from node2")
    await alice.expect(said("hi from node2"))


async def test_every_node_sees_one_order(nodes: Nodes) -> None:
    """Two talkers on two nodes at once: both listeners see the same sequence."""
    one, two = await nodes(2)
    a, b, la, lb = await clients((one, "a"), (two, "b"), (one, "la"), (two, "lb"))
    for i in range(50):
        await a.send(f"a{i}")
        await b.send(f"b{i}")

    async def sequence(client: LineClient) -> list[int]:
        ids: list[int] = []
        while len(ids) < 100:
            event = await client.expect("message")
            ids.append(event["id"])
        return ids

    seen_a, seen_b = await asyncio.gather(sequence(la), sequence(lb))
    assert seen_a == seen_b
    assert seen_a == sorted(seen_a)


async def test_nicknames_are_unique_across_nodes(nodes: Nodes) -> None:
    one, two = await nodes(2)
    await client(one.port, "alice")
    other = await client(two.port)
    await other.send("/nick Alice")
    error = await other.expect("error")
    assert error["code"] == "nick_taken"
    await other.send("/nick bob")
    await other.expect("current")


async def test_presence_and_room_list_span_the_cluster(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    await alice.send("/create lounge")
    await alice.expect(lambda e: e.get("type") == "current" and e.get("room") == "lounge")
    await bob.send("/join lounge")
    await bob.expect(lambda e: e.get("type") == "current" and e.get("room") == "lounge")
    await alice.expect(lambda e: e.get("type") == "join" and e.get("nick") == "bob", "bob joins")
    await alice.send("/who")
    who = await alice.expect("who")
    assert who["nicks"] == ["alice", "bob"]
    await bob.send("/rooms")
    rooms = await bob.expect("rooms")
    assert {"name": "lounge", "members": 2} in rooms["rooms"]
    assert {"name": "general", "members": 2} in rooms["rooms"]
    await bob.send("/create lounge")
    assert (await bob.expect("error"))["code"] == "room_exists"
    await bob.send("/leave lounge")
    left = await alice.expect("leave")
    assert left["nick"] == "bob"
    await alice.send("/who lounge")
    assert (await alice.expect("who"))["nicks"] == ["alice"]


async def test_direct_messages_cross_nodes(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    await alice.send("/msg BOB psst")
    got = await bob.expect("dm")
    assert (got["from"], got["to"], got["text"]) == ("alice", "bob", "psst")
    echo = await alice.expect("dm")
    assert echo["id"] == got["id"]
    await bob.send("/msg nobody hello")
    assert (await bob.expect("error"))["code"] == "no_such_nick"


async def test_a_rename_is_seen_on_other_nodes_and_frees_the_old_name(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    await alice.send("/nick alicia")
    changed = await bob.expect("nick")
    assert (changed["old"], changed["new"]) == ("alice", "alicia")
    carol = await client(two.port)
    await carol.send("/nick alice")
    await carol.expect("current")
    await bob.send("/msg alicia hi")
    assert (await alice.expect("dm"))["text"] == "hi"


async def test_history_and_topics_from_any_node(nodes: Nodes) -> None:
    one, two = await nodes(2, history_on_join=5)
    (alice,) = await clients((one, "alice"))
    await alice.send("/create den", "/topic plans")
    await alice.expect(lambda e: e.get("type") == "topic" and e.get("changed"), "topic set")
    for i in range(8):
        await alice.send(f"line {i}")
    await alice.expect(said("line 7"))
    bob = await client(two.port, "bob")
    await bob.send("/join den")
    topic = await bob.expect("topic")
    assert topic["topic"] == "plans"
    shown = [e["text"] for e in await _history(bob)]
    assert shown == [f"line {i}" for i in range(3, 8)]
    await bob.send("/history 20")
    earlier = [e["text"] for e in await _history(bob)]
    assert earlier[-8:] == [f"line {i}" for i in range(8)]


async def _history(client: LineClient) -> list[dict[str, Any]]:
    """The history lines up to the next history summary."""
    lines: list[dict[str, Any]] = []
    while (event := await client.expect(lambda e: e.get("type") in ("message", "history")))[
        "type"
    ] == "message":
        if event.get("history"):
            lines.append(event)
    return lines


async def test_a_registered_nickname_in_use_on_this_node_is_taken(nodes: Nodes) -> None:
    """In use beats registered: a guest asking for the nickname of someone
    logged in on the same node is told it is taken, as on any node, and a
    rename to a registered nickname nobody uses says it is registered."""
    one, _ = await nodes(2)
    owner = await client(one.port, "erin")
    await owner.send("/register hunter22")
    await owner.expect(lambda e: e.get("type") == "registered" and e.get("account"))
    newcomer = await client(one.port)
    await newcomer.send("/nick erin")
    assert (await newcomer.expect("error"))["code"] == "nick_taken"
    guest = await client(one.port, "gus")
    await guest.send("/nick Erin")
    assert (await guest.expect("error"))["code"] == "nick_taken"
    await owner.send("/quit")
    await owner.wait_closed()
    await guest.send("/nick erin")
    assert (await guest.expect("error"))["code"] == "nick_registered"


async def test_login_on_another_node_shares_the_account(nodes: Nodes) -> None:
    one, two = await nodes(2)
    first = await client(one.port, "dana")
    await first.send("/register hunter22")
    await first.expect(lambda e: e.get("type") == "registered" and e.get("account"))
    second = await client(two.port)
    await second.send("/nick dana")
    assert (await second.expect("error"))["code"] in ("nick_taken", "nick_registered")
    await second.send("/login dana hunter22")
    await second.expect(lambda e: e.get("type") == "current", "logged in")
    events = await first.sync("still-here")
    assert not [e for e in events if e["type"] in ("bye", "leave")], events
    await second.send("/who")
    assert (await second.expect("who"))["nicks"].count("dana") == 1


async def test_leaving_and_rejoining_at_once_keeps_the_room_live(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    for who in (alice, bob):
        await who.send("/join x")
        await who.expect(lambda e: e.get("type") == "current" and e.get("room") == "x")
    for _ in range(3):
        await alice.send("/leave x", "/join x")
        await alice.expect(lambda e: e.get("type") == "current" and e.get("room") == "x")
    await bob.send("/join x", "still here")
    assert (await alice.expect(said("still here")))["from"] == "bob"


async def test_a_nickname_let_go_and_taken_again_stays_unique(nodes: Nodes) -> None:
    """The release and the new claim reach Redis in the order they were made."""
    one, two = await nodes(2)
    ghost = await client(one.port, "ghost")
    await ghost.send("/quit")
    again = await client(one.port)
    await again.send("/nick ghost")
    await again.expect("current")
    rival = await client(two.port)
    await rival.send("/nick ghost")
    assert (await rival.expect("error"))["code"] == "nick_taken"


async def test_a_private_message_to_oneself_arrives_once(nodes: Nodes) -> None:
    (one,) = await nodes(1)
    alice = await client(one.port, "alice")
    await alice.send("/msg alice note to self")
    events = await alice.sync()
    assert [e["text"] for e in events if e["type"] == "dm"] == ["note to self"]


async def test_an_error_reply_from_redis_is_cluster_unavailable(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    assert (await redis_server.command("CONFIG", "SET", "maxmemory", "1")).startswith(b"+OK")
    await alice.send("/msg bob hello", "a line")
    for _ in range(2):
        assert (await alice.expect("error"))["code"] == "cluster_unavailable"
    assert (await redis_server.command("CONFIG", "SET", "maxmemory", "0")).startswith(b"+OK")
    await alice.send("/msg bob again")
    assert (await bob.expect("dm"))["text"] == "again"


async def test_redis_restart_mid_chat(nodes: Nodes, redis_server: RedisServer) -> None:
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    await alice.send("before")
    await bob.expect(said("before"))
    ghost = await client(one.port, "ghost")
    await redis_server.stop()
    await until(lambda: bool(one.manager.bus.trouble), "node1 notices Redis is gone")
    await ghost.send("/quit")
    await ghost.wait_closed()
    await alice.send("while away")
    error = await alice.expect("error")
    assert error["code"] == "cluster_unavailable"
    restarted = await RedisServer.start(REDIS or "", port=redis_server.port)
    redis_server.proc = restarted.proc
    for server in (one, two):
        await until(lambda s=server: not s.manager.bus.trouble, "reconnected")  # type: ignore[misc]
    await alice.send("after")
    await bob.expect(said("after"))
    await bob.send("/who")
    assert (await bob.expect("who"))["nicks"] == ["alice", "bob"]
    newcomer = await client(two.port)
    await newcomer.send("/nick alice")
    assert (await newcomer.expect("error"))["code"] == "nick_taken"
    await newcomer.send("/nick ghost")  # left during the outage: nothing of it remains
    await newcomer.expect("current")


async def test_a_killed_node_loses_its_users_within_the_ttl(
    redis_server: RedisServer, start_server: StartServer
) -> None:
    survivor = await start_server(redis=redis_server.url, node_id="survivor", node_ttl=1.0)
    doomed = await Daemon.start(
        "--redis",
        redis_server.url,
        "--node-id",
        "doomed",
        "--node-ttl",
        "1",
        env=child_env(CHATD_LOG_LEVEL="info"),
    )
    try:
        watcher = await client(survivor.port, "watcher")
        await client(doomed.port, "victim")
        await watcher.expect(lambda e: e.get("type") == "join" and e.get("nick") == "victim")
        signal_child(doomed.proc, signal.SIGKILL)
        await doomed.proc.wait()
        left = await watcher.expect("leave", timeout=15)
        assert left["nick"] == "victim"
        taker = await client(survivor.port)
        await taker.send("/nick victim")
        await taker.expect("current")
    finally:
        await doomed.stop()


async def test_room_watchers_on_every_node_hear_of_rooms_created_and_removed(
    nodes: Nodes,
) -> None:
    """A room created on node1 reaches a watcher on node2 (and on node1), once."""
    one, two = await nodes(2)
    far, near, bystander = await clients((two, "far"), (one, "near"), (two, "olga"))
    for watcher in (far, near):
        await watcher.send("/rooms watch")
        await watcher.expect("rooms")
    nc = LineClient(*await asyncio.open_connection("127.0.0.1", one.port))
    _open.append(nc)
    await nc.line()  # the greeting
    await nc.send("ned", "/create Lab")
    await nc.expect_line(r"^\* now talking in #Lab$")
    created = {"type": "room", "room": "Lab", "event": "created", "members": 1}
    assert await far.expect("room") == created
    assert await near.expect("room") == created

    # A second member on the other node: the room stays in use.
    await bystander.send("/join lab")
    await bystander.expect("current")
    await nc.send("/leave lab")
    await nc.expect_line(r"^\* ned left #Lab$")
    await bystander.send("/leave lab")  # the last member, on node2
    await bystander.expect("current")
    removed = {"type": "room", "room": "Lab", "event": "removed", "members": 0}
    assert await far.expect("room") == removed
    assert await near.expect("room") == removed
    for watcher in (far, near):
        assert [e for e in await watcher.sync() if e["type"] == "room"] == []
    assert [e for e in await bystander.sync() if e["type"] == "room"] == []


async def test_a_login_on_another_node_rejoins_the_accounts_rooms(nodes: Nodes) -> None:
    """The account's rooms are kept in Redis: any node takes the account back to them."""
    one, two = await nodes(2)
    dave = await client(one.port, "dave")
    await dave.send("/register correct-horse", "/join a", "/join b", "in b", "/leave a", "/join b")
    await dave.expect(said("in b"))
    await dave.send("/join c", "/join b", "/quit")
    await dave.expect("bye")
    dave.close()

    again = await client(two.port)
    await again.send("/login dave correct-horse")
    events = await again.sync()
    joins = [e["room"] for e in events if e["type"] == "join" and e["nick"] == "dave"]
    assert joins == ["general", "b", "c"]
    assert [e for e in events if e["type"] == "current"][-1]["room"] == "b"
    assert [e["text"] for e in events if e["type"] == "message" and e["room"] == "b"] == ["in b"]
    for room in ("general", "b", "c"):
        await again.send(f"/who {room}")
        assert (await again.expect("who"))["nicks"] == ["dave"]
    # Left, and not rejoined; the room stays, registered to dave, who owns it.
    await again.send("/who a")
    assert await again.expect("who") == {"type": "who", "room": "a", "nicks": [], "members": []}
    await again.send("/mode a")
    assert (await again.expect("mode"))["owner"] == "dave"


async def test_own_message_comes_before_the_reply_to_the_next_command_in_a_cluster(
    nodes: Nodes,
) -> None:
    """A message comes back from Redis after the commands behind it ran:
    their replies wait for it, so they still come in command order."""
    one, two = await nodes(2)
    alice, bob = await clients((one, "alice"), (two, "bob"))
    await alice.expect(lambda e: e.get("type") == "join" and e.get("nick") == "bob", "bob joins")
    await alice.send("hello\n/who\n/topic here\n/me waves\n/rooms\n/ping done")
    events = await alice.sync("done")
    kinds = [e["type"] for e in events]
    assert kinds == ["message", "who", "topic", "message", "rooms"], events
    assert [e["text"] for e in events if e["type"] == "message"] == ["hello", "waves"]
    assert (await bob.expect(said("waves")))["from"] == "alice"


async def test_a_burst_through_redis_cuts_no_reader_that_keeps_up(nodes: Nodes) -> None:
    """Redis confirms a pipelined batch at once: the window keeps the
    talker's burst from landing in the readers' outboxes in one lump."""
    one, two = await nodes(2, max_queue_bytes=128 * 1024, max_line=1024)
    watcher, talker, far = await clients((one, "watcher"), (one, "talker"), (two, "far"))
    await talker.expect(lambda e: e.get("type") == "join" and e.get("nick") == "far", "far joins")
    script = [f"talker-{i:05d}-".ljust(900, "x") for i in range(2000)]

    async def read_all(reader: LineClient) -> list[str]:
        texts: list[str] = []
        async with asyncio.timeout(60):
            while len(texts) < len(script):
                event = await reader.event()
                assert event["type"] not in ("error", "bye"), event
                if event["type"] == "message":
                    texts.append(event["text"])
        return texts

    readers = [asyncio.create_task(read_all(c)) for c in (watcher, talker, far)]
    data = "".join(line + "\n" for line in script).encode()
    talker.writer.write(data)
    await talker.writer.drain()
    for received in await asyncio.gather(*readers):
        assert received == script


async def test_who_and_rooms_right_after_a_join_see_it(nodes: Nodes) -> None:
    """/who and /rooms ask Redis: they wait for this node's earlier writes
    there, so they answer for the commands before them."""
    (one,) = await nodes(1)
    raw = await LineClient.open("127.0.0.1", one.port)
    _open.append(raw)
    await raw.use_json()
    await raw.send("vee\n/join r9\n/who\n/rooms\n/ping done")
    events = await raw.sync("done")
    who = next(e for e in events if e["type"] == "who")
    assert who == {
        "type": "who",
        "room": "r9",
        "nicks": ["vee"],
        "members": [{"nick": "vee", "role": "op"}],  # the guest who made it is its op
    }, events
    rooms = next(e for e in events if e["type"] == "rooms")
    assert {"name": "r9", "members": 1} in rooms["rooms"], events
