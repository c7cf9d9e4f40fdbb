"""An in-memory stand-in for the cluster: several room managers, one broker.

:class:`FakeBus` implements :class:`~chatd.core.bus.Bus` the way the Redis
cluster does (a nickname is taken once across nodes; a room message is
numbered centrally and comes back to every node, its sender's included,
one loop pass later; joins and leaves reach the other nodes' members), but
with dicts and ``call_soon`` instead of Redis. It lets the core's cluster
paths (echoes ending operations, claims, remote events) be tested without
a server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from chatd.core.bus import Bus, Hub, Opening, Person
from chatd.core.model import Member, Room
from chatd.errors import NickTaken, NoSuchNick, NoSuchRoom, NotInRoom, RoomExists
from chatd.protocol import (
    DEFAULT_ROOM,
    Direct,
    Event,
    Message,
    RoomChanged,
    RoomList,
    WhoList,
    name_key,
)
from chatd.store import RoomRecord, StoredMessage


class Broker:
    """What the nodes share (Redis, in a real cluster)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        #: Set after each delivery: what tests wait on (see settled).
        self.changed = asyncio.Event()
        self.buses: list[FakeBus] = []
        self.nicks: dict[str, tuple[FakeBus, str]] = {}
        #: room key -> {nick key: nick}, across nodes
        self.members: dict[str, dict[str, str]] = {}
        self.names: dict[str, str] = {DEFAULT_ROOM: DEFAULT_ROOM}
        self.last_id = 0

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Deliver on a later loop pass, in order (as Redis's replies come)."""

        def run() -> None:
            callback(*args)
            self.changed.set()

        self._loop.call_soon(run)

    async def settled(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (at most 5 s) for the deliveries that make ``predicate`` true."""
        async with asyncio.timeout(5):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        assert predicate(), what

    def take_id(self) -> int:
        self.last_id += 1
        return self.last_id


class FakeBus(Bus):
    def __init__(self, hub: Hub, broker: Broker) -> None:
        self.hub = hub
        self.broker = broker
        broker.buses.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def restored(self, last_id: int) -> None:
        pass

    def keeps(self, record: RoomRecord) -> bool:
        return name_key(record.name) == DEFAULT_ROOM

    def number(self) -> int:
        return self.broker.take_id()

    def echo_room(self, room_key: str) -> str | None:
        return room_key

    def stored(self, member: Member, seq: int, record: StoredMessage) -> bool:
        event = Message(
            record.id, record.ts, record.room or "", record.sender, record.text, record.action
        )
        for bus in self.broker.buses:  # every node, this one too, a pass later
            self.broker.call_soon(bus.hub.arrived, event)
        self.barrier(lambda: member.end_op(seq))
        return True

    def joined(self, member: Member, room: Room, created: bool) -> None:
        assert member.key is not None
        assert member.nick is not None
        members = self.broker.members.setdefault(room.key, {})
        new = not members and room.key != DEFAULT_ROOM
        members[member.key] = member.nick
        self.broker.names.setdefault(room.key, room.name)
        if new:
            for bus in self.broker.buses:
                event = RoomChanged(room.name, "created", 1)
                self.broker.call_soon(bus.hub.room_changed, event)

    def left(self, member: Member, room: Room) -> None:
        assert member.key is not None
        self.broker.members.get(room.key, {}).pop(member.key, None)
        if not room.members:
            self.hub.close_room(room)

    def released(self, key: str, reason: str = "") -> None:
        holder = self.broker.nicks.get(key)
        if holder is not None and holder[0] is self:
            del self.broker.nicks[key]

    def publish(self, room: Room, event: Event) -> None:
        for bus in self.broker.buses:
            if bus is not self:
                self.broker.call_soon(bus.hub.event_arrived, room.key, event)

    def broadcast(self, room_key: str | None, data: list[Any]) -> None:
        for bus in self.broker.buses:
            if bus is not self:
                self.broker.call_soon(bus.hub.moderated, data)

    def barrier(self, done: Callable[[], None]) -> None:
        self.broker.call_soon(done)  # after everything published before it

    async def person(self, nick: str) -> Person | None:
        for bus in self.broker.buses:
            member = bus.hub.find(nick)
            if member is not None and member.key is not None:
                rooms = frozenset(member.rooms)
                return Person(member.nick or "", member.key, member.account, member.oper, rooms)
        return None

    async def claim(
        self,
        member: Member,
        nick: str,
        *,
        account: int | None = None,
        takeover: bool = False,
        guest: bool = True,
    ) -> None:
        key = name_key(nick)
        holder = self.broker.nicks.get(key)
        if holder is not None and holder[0] is not self and not takeover:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        if member.key is not None and member.key != key:
            self.released(member.key)
        self.broker.nicks[key] = (self, nick)

    @contextlib.asynccontextmanager
    async def open(self, name: str, *, create: bool) -> AsyncIterator[Opening]:
        key = name_key(name)
        if create and self.broker.members.get(key):
            raise RoomExists(f"room #{name} already exists; /join it")
        room = self.hub.open_room(name)
        try:
            yield Opening(None, False)
        finally:
            self.hub.close_room(room)

    async def direct(self, member: Member, to: str, text: str, *, notice: bool = False) -> None:
        holder = self.broker.nicks.get(name_key(to))
        if holder is None:
            raise NoSuchNick(f"nobody is called {to}")
        bus, nick = holder
        sender = member.nick or ""
        event = Direct(self.broker.take_id(), self.hub.now(), sender, nick, text, notice=notice)
        self.broker.call_soon(bus.hub.direct_arrived, event)
        self.hub.direct_sent(member, event)

    async def room_list(self) -> RoomList:
        rooms = [(self.broker.names[k], len(m)) for k, m in self.broker.members.items() if m]
        return RoomList(tuple(sorted(rooms, key=lambda r: name_key(r[0]))))

    async def who(self, member: Member, room_name: str | None) -> WhoList:
        if room_name is None:
            if member.current is None:
                raise NotInRoom("you are in no room; /join one")
            room_name = member.current.name
        members = self.broker.members.get(name_key(room_name))
        if not members:
            raise NoSuchRoom(f"no room #{room_name}")
        return WhoList(room_name, tuple(sorted(members.values(), key=str.lower)))
