"""One account connected through two daemons of a cluster (a real Redis):
its connections share rooms, messages, DMs and read markers across nodes,
and others see the account once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.accountclients import PASSWORD, client, close_all, device
from tests.conftest import Nodes, StartServer
from tests.helpers import REDIS, RedisServer, until, who

if REDIS is None and os.environ.get("CI") == "true":
    pytest.fail("redis-server is required under CI (.ci/run installs it)", pytrace=False)
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        REDIS is None, reason="redis-server is not installed (apt-get install redis-server)"
    ),
]


@pytest.fixture(autouse=True)
async def _close_clients(
    redis_server: RedisServer, start_server: StartServer
) -> AsyncIterator[None]:
    """Clients close first, then the daemons stop, then Redis."""
    yield
    close_all()


async def test_one_account_through_two_nodes(nodes: Nodes) -> None:
    one, two = await nodes(2)
    laptop = await client(one.port, "alice")
    await laptop.send(f"/register {PASSWORD}", "/join dev")
    await laptop.expect(lambda e: e["type"] == "current" and e["room"] == "dev", "in dev")
    bob = await client(one.port, "bob")
    await bob.send("/join dev")
    await bob.expect("current")
    carol = await client(two.port, "carol")
    await bob.expect(lambda e: e["type"] == "join" and e["nick"] == "carol", "carol")
    await laptop.expect(lambda e: e["type"] == "join" and e["nick"] == "carol", "carol")

    phone = await client(two.port)
    await phone.send(f"/login alice {PASSWORD}")
    events = await phone.sync("in")
    assert {e["room"] for e in events if e["type"] == "join" and e["nick"] == "alice"} == {
        "general",
        "dev",
    }
    # Nobody was told alice joined: she was there all along.
    for other in (bob, carol, laptop):
        seen = await other.sync("quiet")
        assert not [e for e in seen if e["type"] in ("join", "leave", "bye", "error")], seen
    assert list(await who(carol, "dev")) == ["alice", "bob"]

    # A room message reaches both; one from the phone reaches the laptop as alice's.
    await bob.send("hi dev")
    assert (await phone.expect("message"))["text"] == "hi dev"
    assert (await laptop.expect("message"))["text"] == "hi dev"
    await phone.send("from the phone")
    mine = await laptop.expect("message")
    assert (mine["from"], mine["text"]) == ("alice", "from the phone")
    assert (await bob.expect(lambda e: e.get("text") == "from the phone"))["from"] == "alice"

    # DMs: to the account on both nodes; one sent on node 2 shows on node 1.
    await bob.send("/msg alice psst")
    assert (await laptop.expect("dm"))["text"] == "psst"
    assert (await phone.expect("dm"))["text"] == "psst"
    await phone.send("/msg bob back")
    sent = await laptop.expect("dm")
    assert (sent["from"], sent["to"], sent["text"]) == ("alice", "bob", "back")

    # A join on node 2 is a join on node 1; a leave on node 1 one on node 2.
    await phone.send("/join ops")
    await phone.expect("current")
    joined = await laptop.expect(lambda e: e["type"] == "join" and e["room"] == "ops", "ops")
    assert joined["nick"] == "alice"
    await laptop.send("/leave dev")
    left = await phone.expect(lambda e: e["type"] == "leave" and e["room"] == "dev", "leave")
    assert left["nick"] == "alice"
    assert list(await who(carol, "dev")) == ["bob"]

    # A read marker set on node 1 reaches the connection on node 2.
    await laptop.send("/read general")
    read = await phone.expect("read")
    assert read["room"] == "general"


async def test_the_account_stays_until_its_last_node_lets_go(nodes: Nodes) -> None:
    one, two = await nodes(2)
    first = await client(one.port, "alice")
    await first.send(f"/register {PASSWORD}")
    await first.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    second = await device(two.port, "alice")
    bob = await client(two.port, "bob")

    first.close()  # the first node's connection, the nickname's first holder, goes
    events = await bob.sync("quiet")
    assert not [e for e in events if e["type"] == "leave"], events
    assert list(await who(bob, "general")) == ["alice", "bob"]
    await bob.send("/msg alice still there?")
    assert (await second.expect("dm"))["text"] == "still there?"
    # The nickname is still the account's: a guest cannot take it.
    guest = await client(one.port)
    await guest.send("/nick alice")
    assert (await guest.expect("error"))["code"] in ("nick_taken", "nick_registered")

    await second.send("/quit")
    leave = await bob.expect("leave")
    assert leave["nick"] == "alice"
    assert list(await who(bob, "general")) == ["bob"]


async def test_sessions_are_listed_and_ended_across_nodes(nodes: Nodes) -> None:
    one, two = await nodes(2)
    first = await client(one.port, "alice")
    await first.send(f"/register {PASSWORD}")
    await first.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    second = await device(two.port, "alice")
    third = await device(two.port, "alice")
    await second.send("/sessions")
    sessions = (await second.expect("sessions"))["sessions"]
    assert len(sessions) == 3
    assert [s["current"] for s in sessions].count(True) == 1
    assert len({s["id"] for s in sessions}) == 3  # one id space for the cluster
    on_one = sessions[0]  # the oldest: the first login, on node 1
    assert on_one["id"].startswith("node1.")

    # From node 2, end the session on node 1.
    await second.send(f"/kick-session {on_one['id']}")
    bye = await first.expect("bye")
    assert bye["reason"] == "ended by another session of alice"
    await first.wait_closed()
    after = (await second.expect("sessions"))["sessions"]
    assert on_one["id"] not in {s["id"] for s in after}

    # /logout --all from node 2 ends the others, wherever they are.
    fourth = await device(one.port, "alice")
    await third.send("/logout --all")
    assert (await third.expect("logout"))["nick"] == "alice"
    for other in (second, fourth):
        assert "alice" in (await other.expect("bye"))["reason"]
        await other.wait_closed()
    bob = await client(one.port, "bob")
    assert "alice" not in await who(bob, "general")


async def test_an_account_on_two_nodes_outlives_a_redis_restart(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """Each node writes its state back when Redis returns: the account stays
    shared by both (no "taken elsewhere"), its sessions listed again."""
    one, two = await nodes(2)
    first = await client(one.port, "alice")
    await first.send(f"/register {PASSWORD}")
    await first.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    second = await device(two.port, "alice")
    bob = await client(two.port, "bob")
    await redis_server.stop()
    for server in (one, two):
        await until(lambda s=server: bool(s.manager.bus.trouble), "Redis is gone")  # type: ignore[misc]
    restarted = await RedisServer.start(REDIS or "", port=redis_server.port)
    redis_server.proc = restarted.proc
    for server in (one, two):
        await until(lambda s=server: not s.manager.bus.trouble, "reconnected")  # type: ignore[misc]
    events = await first.sync("after")
    assert not [e for e in events if e["type"] in ("bye", "error")], events
    await second.send("/sessions")
    assert len((await second.expect("sessions"))["sessions"]) == 2
    await bob.send("/msg alice still both?")
    assert (await first.expect("dm"))["text"] == "still both?"
    assert (await second.expect("dm"))["text"] == "still both?"


async def test_the_first_node_letting_go_during_a_login_is_unseen(nodes: Nodes) -> None:
    """The account's places pass to the node still logging in: the rooms it
    has yet to join there are joined quietly, not announced again."""
    one, two = await nodes(2)
    first = await client(one.port, "alice")
    await first.send(f"/register {PASSWORD}")
    await first.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    bob = await client(one.port, "bob")
    rooms = [f"z{i}" for i in range(30)]
    for room in rooms:
        await bob.send(f"/join {room}")
    await bob.sync()
    for room in rooms:
        await first.send(f"/join {room}")
    await first.sync()
    await bob.sync()
    second = await client(two.port)
    await second.send(f"/login alice {PASSWORD}")
    await second.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    first.writer.transport.abort()
    events = await second.sync("landed")
    assert {e["room"] for e in events if e["type"] == "join"} == {"general", *rooms}
    seen = await bob.sync("seen")
    assert not [e for e in seen if e.get("nick") == "alice"], seen
    assert "alice" in await who(bob, "z29")
