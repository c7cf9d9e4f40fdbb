"""Cluster mode: several daemons, one chat, through a real redis-server.

Each test starts its own ``redis-server`` on a free loopback port and two or
three daemons joined through it, and talks to each daemon over TCP.
Without redis-server the tests skip, except under CI (CI=true), where they
fail: CI installs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chatd.server import Server
from tests.conftest import StartServer
from tests.helpers import Daemon, LineClient, RedisServer, child_env, open_json, signal_child, until

REDIS = shutil.which("redis-server")

if REDIS is None and os.environ.get("CI") == "true":
    pytest.fail("redis-server is required under CI (.ci/run installs it)", pytrace=False)

pytestmark = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
)

Nodes = Callable[..., Awaitable[list[Server]]]


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    assert REDIS is not None
    server = await RedisServer.start(REDIS)
    yield server
    await server.stop()


@pytest.fixture
async def nodes(redis_server: RedisServer, start_server: StartServer) -> Nodes:
    """``await nodes(2)``: daemons node1, node2... joined through one Redis."""

    async def start(count: int, **overrides: Any) -> list[Server]:
        return [
            await start_server(redis=redis_server.url, node_id=f"node{i + 1}", **overrides)
            for i in range(count)
        ]

    return start


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


async def test_login_on_another_node_takes_the_nickname_over(nodes: Nodes) -> None:
    one, two = await nodes(2)
    first = await client(one.port, "dana")
    await first.send("/register hunter22")
    await first.expect(lambda e: e.get("type") == "registered" and e.get("account"))
    second = await client(two.port)
    await second.send("/nick dana")
    assert (await second.expect("error"))["code"] in ("nick_taken", "nick_registered")
    await second.send("/login dana hunter22")
    await second.expect(lambda e: e.get("type") == "current", "logged in")
    bye = await first.expect("bye")
    assert bye["reason"] == "logged in from elsewhere"
    await first.wait_closed()
    await second.send("/who")
    assert "dana" in (await second.expect("who"))["nicks"]


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
    await until(lambda: not one.cluster.link.up, "node1 notices Redis is gone")  # type: ignore[union-attr]
    await ghost.send("/quit")
    await ghost.wait_closed()
    await alice.send("while away")
    error = await alice.expect("error")
    assert error["code"] == "cluster_unavailable"
    restarted = await RedisServer.start(REDIS or "", port=redis_server.port)
    redis_server.proc = restarted.proc
    for server in (one, two):
        await until(lambda s=server: s.cluster.link.up, "reconnected")  # type: ignore[misc]
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
