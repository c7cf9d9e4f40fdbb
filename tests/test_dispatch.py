"""The dispatcher and the room model without sockets, on one daemon and on
several nodes sharing an in-memory bus (tests/fakebus.py).

The same dispatcher runs every command whatever the bus; these tests drive
it through a connection stand-in that keeps replies in command order as a
session does, so the cluster paths of the core (claims across nodes,
messages that come back to their sender, events from other nodes) are
tested here as well as against a real Redis in test_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from chatd.config import Settings
from chatd.core.caller import Caller
from chatd.core.dispatch import Dispatcher
from chatd.core.model import Member
from chatd.core.order import ReplyOrder
from chatd.core.rooms import RoomManager
from chatd.errors import ChatError
from chatd.protocol import Error, Event, Format, parse_line, render
from chatd.protocol.codec import Codec
from tests.fakebus import Broker, FakeBus

pytestmark = pytest.mark.timeout(30)


class Client(Caller):
    """A connection without a socket: JSON events in a list, replies in
    command order (ReplyOrder, as a session keeps them)."""

    __slots__ = ("dispatcher", "events", "order")

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(Format.JSON)
        self.dispatcher = dispatcher
        self.events: list[dict[str, Any]] = []
        self.order = ReplyOrder()

    # -- Member
    def deliver(self, data: bytes) -> None:
        self.events.append(json.loads(data))

    def reply(self, data: bytes) -> None:
        if self.order.busy:
            self.order.hold(data)
        else:
            self.deliver(data)

    def kick(self, reason: str) -> None:
        self.events.append({"type": "kicked", "reason": reason})

    def ops_pending(self) -> bool:
        return self.order.busy

    def begin_op(self, echo_room: str | None = None) -> int:
        return self.order.begin(echo_room)

    def end_op(self, seq: int, data: bytes | None = None) -> None:
        for out in self.order.end(seq, data):
            self.deliver(out)

    def awaits_echo(self) -> bool:
        return self.order.awaits_echo

    def echo(self, data: bytes, room_key: str) -> None:
        out, awaited = self.order.echo(room_key, data)
        for line in out:
            self.deliver(line)
        if not awaited:
            self.deliver(data)

    # -- Caller
    @property
    def closing(self) -> bool:
        return False

    @property
    def peer(self) -> str:
        return "127.0.0.1:40000"

    @property
    def page_bytes(self) -> int:
        return 64 * 1024

    def set_format(self, fmt: Format) -> None:
        self.fmt = fmt

    def set_keepalive(self, interval: float) -> None:
        pass

    async def pause(self, seconds: float) -> None:
        pass

    async def ops_settled(self, seconds: float) -> None:
        raise NotImplementedError  # no test here quits with a message on its way

    async def wait_for(self, wake: asyncio.Future[None], seconds: float | None) -> None:
        await asyncio.wait([wake], timeout=seconds)

    # -- driving it
    async def send(self, *lines: str) -> None:
        """Run lines as a session does: in order, each one finished first."""
        for line in lines:
            try:
                command = parse_line(line.encode())
                assert command is not None
                outcome = self.dispatcher.dispatch(self, command)
                if outcome is not None and not isinstance(outcome, str):
                    await outcome
            except ChatError as exc:
                self.tell(Error.of(exc))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def node(broker: Broker | None = None) -> Dispatcher:
    manager = RoomManager(clock=lambda: 1000.0)
    if broker is not None:
        manager.attach(FakeBus(manager, broker))
    return Dispatcher(manager, Settings(), None)


@pytest.fixture
async def broker() -> Broker:
    return Broker()


async def test_one_daemon_runs_commands_without_a_socket() -> None:
    dispatcher = node()
    alice, bob = Client(dispatcher), Client(dispatcher)
    await alice.send("alice")
    await bob.send("/nick bob", "/join dev", "/join general")
    await alice.send("hello", "/msg bob psst", "/who")
    assert alice.of("registered")[0]["nick"] == "alice"
    assert [e["text"] for e in bob.of("message")] == ["hello"]
    assert [e["text"] for e in bob.of("dm")] == ["psst"]
    assert alice.events[-1] == {
        "type": "who",
        "room": "general",
        "nicks": ["alice", "bob"],
        "members": [{"nick": "alice", "role": "member"}, {"nick": "bob", "role": "member"}],
    }


async def test_a_nickname_is_taken_once_across_nodes(broker: Broker) -> None:
    one, two = node(broker), node(broker)
    alice, rival = Client(one), Client(two)
    await alice.send("alice")
    await rival.send("/nick Alice")
    assert rival.events[-1]["code"] == "nick_taken"
    assert rival.key is None
    await rival.send("/nick bob")
    assert rival.of("registered")[0]["nick"] == "bob"


async def test_a_room_message_reaches_every_node_once_in_order(broker: Broker) -> None:
    one, two = node(broker), node(broker)
    alice, bob = Client(one), Client(two)
    await alice.send("alice")
    await bob.send("bob")
    await alice.send("one", "two", "three")
    await broker.settled(lambda: len(bob.of("message")) == 3, "bob has the three messages")
    await broker.settled(lambda: len(alice.of("message")) == 3, "alice has her echoes")
    assert [e["text"] for e in bob.of("message")] == ["one", "two", "three"]
    assert [e["text"] for e in alice.of("message")] == ["one", "two", "three"]
    ids = [e["id"] for e in bob.of("message")]
    assert ids == sorted(ids) == [e["id"] for e in alice.of("message")]


async def test_a_reply_waits_for_the_echo_of_the_message_before_it(broker: Broker) -> None:
    """The topic is answered at once, but after "hi", which comes back a pass later."""
    one, two = node(broker), node(broker)
    alice = Client(one)
    Client(two)
    await alice.send("alice")
    alice.events.clear()
    await alice.send("hi", "/topic")
    assert alice.events == []  # the topic is held behind the message on its way
    await broker.settled(lambda: len(alice.events) == 2, "the echo and the reply")
    assert [e["type"] for e in alice.events] == ["message", "topic"]


async def test_joins_leaves_and_who_span_the_nodes(broker: Broker) -> None:
    one, two = node(broker), node(broker)
    alice, bob = Client(one), Client(two)
    await alice.send("alice")
    await bob.send("bob")
    await broker.settled(lambda: len(alice.of("join")) == 2, "alice sees bob arrive")
    assert alice.of("join")[-1] == {"type": "join", "room": "general", "nick": "bob"}
    await alice.send("/who")
    assert alice.events[-1]["nicks"] == ["alice", "bob"]
    await bob.send("/quit")
    one.manager.disconnect(alice, "gone")  # alice leaves: bob, on the other node, is told
    await broker.settled(lambda: bool(bob.of("leave")), "bob sees alice leave")
    assert bob.of("leave")[-1]["nick"] == "alice"


async def test_a_private_message_finds_its_reader_on_another_node(broker: Broker) -> None:
    one, two = node(broker), node(broker)
    alice, bob = Client(one), Client(two)
    await alice.send("alice")
    await bob.send("bob")
    await alice.send("/msg bob over here")
    await broker.settled(lambda: bool(bob.of("dm")), "bob has the message")
    assert bob.of("dm")[0]["text"] == "over here"
    assert alice.of("dm")[0]["to"] == "bob"  # the sender sees what it sent
    await alice.send("/msg nobody hello?")
    assert alice.events[-1]["code"] == "no_such_nick"


async def test_a_room_is_created_on_one_node_and_joined_from_another(broker: Broker) -> None:
    one, two = node(broker), node(broker)
    alice, bob = Client(one), Client(two)
    await alice.send("alice", "/create dev")
    await bob.send("bob", "/create dev")
    assert bob.events[-1]["code"] == "room_exists"
    await bob.send("/join dev", "/rooms")
    assert bob.events[-1]["rooms"] == [
        {"name": "dev", "members": 2},
        {"name": "general", "members": 2},
    ]
    await bob.send("in dev")
    await broker.settled(lambda: bool(alice.of("message")), "alice hears bob in dev")
    assert alice.of("message")[0]["room"] == "dev"


class Shouting(Codec):
    """A codec of another line protocol: text, upper case; counts its work."""

    __slots__ = ("encoded",)

    def __init__(self) -> None:
        super().__init__(Format.TEXT)
        self.encoded = 0

    def encode(self, event: Event) -> bytes:
        self.encoded += 1
        return render(event, Format.TEXT).upper()


class Raw(Member):
    __slots__ = ("lines",)

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self.codec = codec
        self.lines: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.lines.append(data)

    reply = deliver


async def test_a_new_codec_plugs_in_and_is_encoded_once_per_event() -> None:
    """The seam for another front-end: the room manager encodes through each
    member's codec, once per codec however many members use it."""
    dispatcher = node()
    manager = dispatcher.manager
    shouting = Shouting()
    one, two = Raw(shouting), Raw(shouting)
    manager.register(one, "one")
    manager.register(two, "two")
    alice = Client(dispatcher)
    await alice.send("alice")
    one.lines.clear()
    two.lines.clear()
    shouting.encoded = 0
    await alice.send("hello there")
    assert one.lines == two.lines
    assert one.lines == [b"[GENERAL] ALICE: HELLO THERE\n"]
    assert one.lines[0] is two.lines[0]  # the same bytes object
    assert shouting.encoded == 1
    assert alice.of("message")[-1]["text"] == "hello there"  # JSON for JSON
