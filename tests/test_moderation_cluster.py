"""Room ownership and moderation in cluster mode, through a real redis-server.

A moderation step taken on one node reaches the members of every node: a
kick or a ban removes its target wherever it is connected, a room's modes,
bans and roles are one state (kept in Redis, read by any node that makes
the room live), and a registered room keeps them across a restart of every
node. Server operators reach every node with /wall, /kill and /kline.

Each test starts its own ``redis-server`` and two daemons joined through it
(as tests/test_cluster.py does). Without redis-server the tests skip, except
under CI (CI=true), where they fail: CI installs it. Clients that must look
like different machines connect from their own loopback address (127.0.0.x).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from chatd.daemon.server import Server
from tests.conftest import Nodes, StartServer
from tests.helpers import (
    REDIS,
    LineClient,
    RedisServer,
    enter,
    open_json,
    refused,
    until_async,
    who,
)

if REDIS is None and os.environ.get("CI") == "true":
    pytest.fail("redis-server is required under CI (.ci/run installs it)", pytrace=False)

pytestmark = [
    pytest.mark.skipif(
        REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
    ),
    pytest.mark.timeout(60),
]

PASSWORD = "correct-horse"
Event = dict[str, Any]


_open: list[LineClient] = []


@pytest.fixture(autouse=True)
async def _close_clients(
    redis_server: RedisServer, start_server: StartServer
) -> AsyncIterator[None]:
    """Clients close first, then the daemons stop, then Redis."""
    yield
    while _open:
        _open.pop().close()


async def client(server: Server, nick: str | None = None, *, ip: str = "127.0.0.1") -> LineClient:
    """A JSON client from ``ip``, named ``nick``, closed after the test."""
    opened = await open_json(server.port, nick, local_addr=(ip, 0))
    _open.append(opened)
    return opened


async def text_client(server: Server, nick: str) -> LineClient:
    """A client speaking text, as ``nc`` does."""
    opened = await LineClient.open("127.0.0.1", server.port)
    _open.append(opened)
    assert (await opened.line()).startswith("* welcome")
    await opened.register(nick, json_mode=False)
    return opened


async def account(server: Server, nick: str) -> LineClient:
    """A client logged in to a new account ``nick``."""
    c = await client(server, nick)
    await c.send(f"/register {PASSWORD}")
    await c.expect(lambda e: e["type"] == "registered" and e["account"], "the account")
    return c


async def login(server: Server, nick: str) -> LineClient:
    c = await client(server)
    await c.send(f"/login {nick} {PASSWORD}")
    await c.expect(lambda e: e["type"] == "registered" and e["account"], f"logged in as {nick}")
    return c


def joined(nick: str, room: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "join" and e["nick"] == nick and e["room"] == room


def said(text: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "message" and e["text"] == text


async def written(c: LineClient) -> None:
    """Wait until what ``c``'s node wrote to Redis so far is there (a room
    brought into use, its rules): ``/rooms`` reads Redis through that node's
    write queue, after its earlier writes."""
    await c.send("/rooms")
    await c.expect("rooms")


async def test_a_kick_on_one_node_removes_its_target_on_another(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice, dave = await client(one, "alice"), await client(one, "dave")
    bob, carol = await client(two, "bob"), await client(two, "carol")
    await enter(alice, "dev")  # a guest's new room: alice is its op
    await written(alice)
    for c in (bob, carol, dave):
        await enter(c, "dev")
    # Published after its join is in Redis: /who there lists dave.
    await carol.expect(joined("dave", "dev"), "everyone in #dev")
    assert await who(carol, "dev") == {
        "alice": "op",
        "bob": "member",
        "carol": "member",
        "dave": "member",
    }
    await alice.send("/kick bob spam")
    kick = {"type": "kick", "room": "dev", "nick": "bob", "by": "alice", "reason": "spam"}
    assert await bob.expect("kick") == kick
    leave = await bob.expect("leave")
    assert leave == {
        "type": "leave",
        "room": "dev",
        "nick": "bob",
        "reason": "kicked by alice: spam",
    }
    assert (await bob.expect("current"))["room"] == "general"
    for c in (carol, dave, alice):
        assert await c.expect("kick") == kick
        left = await c.expect("leave")
        assert (left["nick"], left["reason"]) == ("bob", "kicked by alice: spam")
    assert await who(carol, "dev") == {"alice": "op", "carol": "member", "dave": "member"}
    # A member of another node cannot kick; a kick is not a ban.
    await refused(carol, "/kick dave", "not_op")
    await enter(bob, "dev")
    await alice.expect(joined("bob", "dev"), "bob back")


async def test_a_ban_on_one_node_keeps_its_target_out_of_every_node(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice = await client(one, "alice")
    bob = await client(two, "bob", ip="127.0.0.66")
    neighbour = await client(two, "neighbour", ip="127.0.0.67")
    await enter(alice, "dev")
    await written(alice)
    for c in (bob, neighbour):
        await enter(c, "dev")
    await alice.expect(joined("neighbour", "dev"), "everyone in #dev")
    await alice.send("/ban ip:127.0.0.66 spam")
    ban = await alice.expect("ban")
    assert (ban["mask"], ban["by"], ban["reason"]) == ("ip:127.0.0.66", "alice", "spam")
    leave = await bob.expect("leave")
    assert leave == {"type": "leave", "room": "dev", "nick": "bob", "reason": "banned by alice"}
    left = await alice.expect("leave")
    assert (left["nick"], left["reason"]) == ("bob", "banned by alice")
    # The room hears of the leave; only ops are told of the ban itself.
    await neighbour.expect(lambda e: e["type"] == "leave" and e["nick"] == "bob")
    assert [e for e in await neighbour.sync() if e["type"] == "ban"] == []
    bob.close()
    # Under another nickname, from that address: refused on node2, where
    # #dev is live (neighbour is in it) ...
    again = await client(two, "hamspam", ip="127.0.0.66")
    error = await refused(again, "/join dev", "banned")
    assert "spam" in error["text"]
    # ... and on node1.
    elsewhere = await client(one, "spamham", ip="127.0.0.66")
    await refused(elsewhere, "/join dev", "banned")
    assert await who(alice, "dev") == {"alice": "op", "neighbour": "member"}


async def test_a_ban_is_read_from_redis_where_the_room_was_not_live(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice = await client(one, "alice")
    bob = await client(two, "bob", ip="127.0.0.66")
    await enter(alice, "dev")
    await written(alice)
    await enter(bob, "dev")
    await alice.expect(joined("bob", "dev"), "bob in #dev")
    await alice.send("/ban ip:127.0.0.66")
    await bob.expect(lambda e: e["type"] == "leave" and e["reason"] == "banned by alice")
    bob.close()
    # Nobody on node2 is in #dev now: its rules come from Redis with the room.
    await alice.expect(lambda e: e["type"] == "leave" and e["nick"] == "bob")
    again = await client(two, "hamspam", ip="127.0.0.66")
    await refused(again, "/join dev", "banned")
    other = await client(two, "other", ip="127.0.0.67")
    await enter(other, "dev")
    await alice.send("/unban ip:127.0.0.66")
    await alice.expect("unban")
    # A line said after it comes on the same channel: node2 has the new rules.
    await alice.send("welcome back")
    await other.expect(said("welcome back"))
    await enter(again, "dev")


async def test_modes_bans_and_roles_are_one_state_across_nodes(nodes: Nodes) -> None:
    one, two = await nodes(2)
    owner = await account(one, "owner")
    await enter(owner, "club")  # an account's new room: registered, its own
    await owner.send("/mode +ik door")
    mode = await owner.expect("mode")
    assert (mode["modes"]["i"], mode["modes"]["k"]) == (True, "door")
    await written(owner)

    # On node2, where #club is not live yet: its rules come from Redis.
    guest = await client(two, "guest")
    await refused(guest, "/join club", "invite_only")
    await refused(guest, "/join club door", "invite_only")
    await guest.send("/mode club")
    shown = await guest.expect("mode")
    assert (shown["owner"], shown["registered"]) == ("owner", True)
    expected = {"i": True, "k": None, "l": None, "m": False, "s": False, "t": True}
    assert shown["modes"] == expected  # the key is for members only

    # An account on node2 comes in by invitation, and is made an op.
    op = await account(two, "op")
    await owner.send("/invite op")
    assert await op.expect("invite") == {"type": "invite", "room": "club", "from": "owner"}
    await enter(op, "club")
    await owner.expect(joined("op", "club"), "op in #club")
    await owner.send("/op op")
    role = await op.expect("role")
    assert role == {"type": "role", "room": "club", "nick": "op", "role": "op", "by": "owner"}
    assert await who(guest, "club") == {"owner": "owner", "op": "op"}

    # Now #club is live on node2: the same modes there.
    await refused(guest, "/join club", "invite_only")
    await guest.send("/mode club")
    assert (await guest.expect("mode"))["modes"] == expected
    await op.send("/mode")
    assert (await op.expect("mode"))["modes"] == {**expected, "k": "door"}
    await owner.send("/mode -i")
    await op.expect(lambda e: e["type"] == "mode" and e["change"] == "-i")
    await refused(guest, "/join club", "bad_key")
    await refused(guest, "/join club wrong", "bad_key")

    # The op on node2 bans and kicks on node1.
    gus = await client(one, "gus")
    await enter(gus, "club", "door")
    await op.expect(joined("gus", "club"), "gus in #club")
    await op.send("/kick gus enough")
    kick = await gus.expect("kick")
    assert (kick["by"], kick["reason"]) == ("op", "enough")
    leave = await gus.expect("leave")
    assert leave["reason"] == "kicked by op: enough"
    await owner.expect(lambda e: e["type"] == "kick" and e["nick"] == "gus")
    await op.send("/ban guest")
    assert (await op.expect("ban"))["mask"] == "nick:guest"
    ban = await owner.expect("ban")  # node1's rules have it now
    assert (ban["mask"], ban["by"]) == ("nick:guest", "op")
    await owner.send("/bans")
    assert [b["mask"] for b in (await owner.expect("bans"))["bans"]] == ["nick:guest"]
    await refused(guest, "/join club door", "banned")
    await refused(op, "/kick owner", "not_op")
    # One moderation log, whichever node wrote to it.
    await owner.send("/modlog 3")
    entries = (await owner.expect("modlog"))["entries"]
    assert [(e["by"], e["action"], e["target"]) for e in entries] == [
        ("owner", "mode", "club"),
        ("op", "kick", "gus"),
        ("op", "ban", "nick:guest"),
    ]


async def test_a_registered_rooms_owner_modes_and_bans_survive_a_restart_of_every_node(
    nodes: Nodes,
) -> None:
    one, two = await nodes(2)
    owner = await account(one, "owner")
    carol = await account(two, "carol")
    await enter(owner, "club")
    await written(owner)
    await enter(carol, "club")
    await owner.expect(joined("carol", "club"), "carol in #club")
    await owner.send("/op carol", "/mode +kml door 10", "/ban ip:127.0.0.66 spam")
    await owner.expect("ban")
    await carol.expect(lambda e: e["type"] == "mode" and e["change"] == "+kml")
    for node in (one, two):
        await node.shutdown()
    for c in (owner, carol):
        await c.wait_closed()

    one, two = await nodes(2)
    owner = await login(two, "owner")
    await enter(owner, "club")
    await written(owner)
    await owner.send("/mode club")
    mode = await owner.expect("mode")
    assert (mode["owner"], mode["registered"]) == ("owner", True)
    assert mode["modes"] == {"i": False, "k": "door", "l": 10, "m": True, "s": False, "t": True}
    await owner.send("/bans")
    bans = (await owner.expect("bans"))["bans"]
    assert [(b["mask"], b["by"], b["reason"]) for b in bans] == [("ip:127.0.0.66", "owner", "spam")]
    # The rules hold on the other node too, and carol's role came back.
    guest = await client(one, "guest")
    await refused(guest, "/join club", "bad_key")
    spammer = await client(one, "spam2", ip="127.0.0.66")
    await refused(spammer, "/join club door", "banned")
    carol = await login(one, "carol")
    assert await who(carol, "club") == {"owner": "owner", "carol": "op"}
    await carol.send("/join club", "/modlog")
    actions = [e["action"] for e in (await carol.expect("modlog"))["entries"]]
    assert actions == ["register", "role", "mode", "ban"]


async def test_server_operators_reach_every_node(nodes: Nodes) -> None:
    one, two = await nodes(2, opers=("root",))
    root = await account(one, "root")
    listener = await client(two, "listener")
    texter = await text_client(two, "tex")
    await root.send("/wall maintenance at noon")
    wall = {"type": "wall", "from": "root", "text": "maintenance at noon"}
    assert await listener.expect("wall") == wall
    assert await root.expect("wall") == wall
    await texter.expect_line(r"^! notice from root: maintenance at noon$")

    # /kill of a user on node2.
    victim = await client(two, "victim")
    await root.expect(joined("victim", "general"), "victim in #general")
    await root.send("/kill victim go away")
    assert (await root.expect("kill"))["nick"] == "victim"
    bye = await victim.expect("bye")
    assert bye["reason"] == "killed by root: go away"
    await victim.wait_closed()
    left = await root.expect(lambda e: e["type"] == "leave" and e["nick"] == "victim")
    assert left["reason"] == "killed by root: go away"

    # A kline on an account, made on node1, cuts its connection on node2
    # and refuses its login there, and on a node started later.
    bob = await account(two, "bob")
    await root.send("/kline bob 1h abuse")
    kline = await root.expect("kline")
    assert (kline["mask"], kline["reason"]) == ("account:bob", "abuse")
    assert (await bob.expect("error"))["code"] == "banned"
    await bob.wait_closed()
    again = await client(two)
    await refused(again, f"/login bob {PASSWORD}", "banned")
    await again.wait_closed()
    (three,) = await nodes(1, opers=("root",))
    late = await client(three)
    await refused(late, f"/login bob {PASSWORD}", "banned")
    await root.send("/unkline bob")
    assert (await root.expect("unkline"))["mask"] == "account:bob"
    # A wall sent after it comes on the same channel: node2 has let go of it.
    await root.send("/wall bob is back")
    await listener.expect(lambda e: e["type"] == "wall" and e["text"] == "bob is back")
    back = await client(two)
    await back.send(f"/login bob {PASSWORD}")
    await back.expect(lambda e: e["type"] == "registered" and e["account"])


async def test_a_secret_room_is_hidden_from_outsiders_on_another_node(nodes: Nodes) -> None:
    one, two = await nodes(2)
    alice = await client(one, "alice")
    await enter(alice, "hideout")
    await alice.send("/mode +s")
    await alice.expect("mode")
    await enter(alice, "open")
    outsider = await client(two, "eve")
    await outsider.send("/rooms")
    names = [r["name"] for r in (await outsider.expect("rooms"))["rooms"]]
    assert "open" in names  # node1 made #open after #hideout secret: both are in Redis
    assert "hideout" not in names
    for command in ("/who {}", "/mode {}"):
        real = await refused(outsider, command.format("hideout"), "no_such_room")
        none = await refused(outsider, command.format("nosuch"), "no_such_room")
        assert real["text"] == none["text"].replace("nosuch", "hideout")
    # Its members see it, on any node.
    await alice.send("/invite eve hideout")
    await outsider.expect("invite")
    await enter(outsider, "hideout")
    await outsider.send("/rooms")
    assert "hideout" in [r["name"] for r in (await outsider.expect("rooms"))["rooms"]]
    assert await who(outsider, "hideout") == {"alice": "op", "eve": "member"}


async def test_a_room_made_on_two_nodes_at_once_has_one_owner(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """Two accounts bring one room into use on two nodes at the same moment,
    before either node's writes reach Redis: one of them creates and owns
    it, and every node agrees on which."""
    one, two = await nodes(2)
    ann, ben = await account(one, "ann"), await account(two, "ben")
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await redis.client_pause(5000, all=False)  # writes (and scripts) wait
        try:
            for c in (ann, ben):
                await c.send("/join club")

            async def both_waiting() -> bool:
                info = await redis.info("clients")
                return int(info["blocked_clients"]) >= 2

            await until_async(both_waiting, "both nodes' writes held by Redis")
        finally:
            await redis.client_unpause()
    finally:
        await redis.aclose()
    for c in (ann, ben):
        await c.expect(lambda e: e["type"] == "current" and e["room"] == "club", "in #club")
    # A line said now comes after whatever its node made of #club: on the
    # same channel, and after its writes to Redis.
    for talker, listener in ((ann, ben), (ben, ann)):
        await talker.send(f"hello from {talker.nick}")
        await listener.expect(said(f"hello from {talker.nick}"))
    owners = set()
    for c in (ann, ben):
        await c.send("/mode club")
        owners.add((await c.expect("mode"))["owner"])
        roles = await who(c, "club")
        assert sorted(roles.values()) == ["member", "owner"], roles
        owners.add(next(nick for nick, role in roles.items() if role == "owner"))
    assert len(owners) == 1, owners


async def test_a_room_an_account_makes_is_announced_on_every_node(nodes: Nodes) -> None:
    one, two = await nodes(2)
    far, near = await client(two, "far"), await client(one, "near")
    for watcher in (far, near):
        await watcher.send("/rooms watch")
        await watcher.expect("rooms")
    owner = await account(one, "owner")
    await enter(owner, "club")
    created = {"type": "room", "room": "club", "event": "created", "members": 1}
    assert await far.expect("room") == created
    assert await near.expect("room") == created
    for watcher in (far, near):
        assert [e for e in await watcher.sync() if e["type"] == "room"] == []


async def test_a_server_operator_on_another_node_outranks_a_rooms_ops(nodes: Nodes) -> None:
    """An operator named by the configuration (--oper) is one on every node:
    a room's op elsewhere can neither kick it nor ban it."""
    one, two = await nodes(2, opers=("root",))
    root = await account(one, "root")
    alice = await client(two, "alice")
    await enter(alice, "dev")
    await written(alice)
    await enter(root, "dev")
    await alice.expect(joined("root", "dev"), "root in #dev")
    await refused(alice, "/kick root", "not_op")
    await refused(alice, "/ban root", "not_op")
    await refused(alice, "/mute root", "not_op")
    assert await who(alice, "dev") == {"alice": "op", "root": "member"}
