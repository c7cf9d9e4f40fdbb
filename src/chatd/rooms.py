"""The room model: nicknames, memberships and fan-out.

:class:`RoomManager` is the only shared mutable state in the daemon. Its
methods are synchronous and never wait: a membership change or a message and
its fan-out to every recipient happen in one step of the event loop, so every
member of a room sees the same order, with no locks.

Members are anything that implements :class:`Member` (a TCP session, later a
WebSocket session, or a list in a test). The manager talks to them through
two calls that never block:

* ``deliver(data)`` for what others caused (room messages, joins, DMs): the
  member may drop itself if it cannot keep up, but must not change the
  manager's state from inside the call (the manager may be iterating a room);
* ``reply(data)`` for the answer to the member's own command: never dropped;
  the member paces its own reading instead.

Every event bound for a room goes through :meth:`RoomManager._fanout`, which
renders it once per format and hands the same ``bytes`` object to every
recipient. That method is the seam where a message bus spanning several
daemons plugs in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from chatd.errors import NickTaken, NoSuchNick, NoSuchRoom, NotInRoom, RoomExists, TooManyRooms
from chatd.protocol import (
    DEFAULT_ROOM,
    Current,
    Direct,
    Event,
    Format,
    Joined,
    Left,
    Message,
    NickChanged,
    Registered,
    RoomList,
    TopicIs,
    WhoList,
    name_key,
    render,
)


class Member:
    """One participant as the room manager sees it.

    The manager owns ``nick``, ``key``, ``rooms`` and ``current``; the member
    owns ``fmt`` and the two delivery calls.
    """

    __slots__ = ("current", "fmt", "key", "nick", "rooms")

    def __init__(self, fmt: Format = Format.TEXT) -> None:
        self.fmt = fmt
        self.nick: str | None = None
        self.key: str | None = None
        self.rooms: dict[str, Room] = {}
        self.current: Room | None = None

    def deliver(self, data: bytes) -> None:
        """Queue what others caused. Never blocks; may drop the member."""
        raise NotImplementedError

    def reply(self, data: bytes) -> None:
        """Queue an answer to this member's own command. Never blocks or drops."""
        raise NotImplementedError


class Room:
    __slots__ = ("key", "members", "name", "topic", "topic_by")

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = name_key(name)
        #: Members in join order (a dict used as an ordered set).
        self.members: dict[Member, None] = {}
        self.topic = ""
        self.topic_by: str | None = None


class RoomManager:
    """Nicknames, rooms and memberships; every change and its fan-out."""

    def __init__(
        self,
        *,
        max_rooms_per_session: int = 100,
        max_rooms: int = 10_000,
        announce_limit: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_rooms_per_session = max_rooms_per_session
        self.max_rooms = max_rooms
        #: Rooms with more members than this do not announce joins and leaves
        #: to everyone: in a crowd they are noise, and N arrivals would cost
        #: N*N/2 deliveries. The member who joins or leaves is still told.
        self.announce_limit = announce_limit
        self._clock = clock
        self._nicks: dict[str, Member] = {}
        self._rooms: dict[str, Room] = {}
        self._next_id = 1
        self._add_room(DEFAULT_ROOM)

    # -- queries ---------------------------------------------------------

    def find(self, nick: str) -> Member | None:
        return self._nicks.get(name_key(nick))

    def room_list(self) -> RoomList:
        rooms = sorted(self._rooms.values(), key=lambda r: r.key)
        return RoomList(tuple((r.name, len(r.members)) for r in rooms))

    def who(self, member: Member, room_name: str | None) -> WhoList:
        if room_name is None:
            room = self._current(member)
        else:
            found = self._rooms.get(name_key(room_name))
            if found is None:
                raise NoSuchRoom(f"no room #{room_name}")
            room = found
        nicks = sorted((m.nick for m in room.members if m.nick), key=str.lower)
        return WhoList(room.name, tuple(nicks))

    def topic_of(self, member: Member) -> TopicIs:
        room = self._current(member)
        return TopicIs(room.name, room.topic, room.topic_by)

    # -- changes ---------------------------------------------------------

    def register(self, member: Member, nick: str) -> None:
        """Give a new member its nickname and put it in the default room."""
        key = name_key(nick)
        if key in self._nicks:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        member.nick, member.key = nick, key
        self._nicks[key] = member
        self._tell(member, Registered(nick))
        self.join(member, DEFAULT_ROOM)

    def rename(self, member: Member, nick: str) -> None:
        assert member.nick is not None
        assert member.key is not None
        key = name_key(nick)
        holder = self._nicks.get(key)
        if holder is not None and holder is not member:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        old = member.nick
        del self._nicks[member.key]
        self._nicks[key] = member
        member.nick, member.key = nick, key
        audience: dict[Member, None] = {member: None}
        for room in member.rooms.values():
            audience.update(room.members)
        self._send_all(audience, NickChanged(old, nick))

    def join(self, member: Member, room_name: str, *, create: bool = False) -> None:
        """Join a room (creating it if needed) and make it current.

        With ``create`` the room must not exist yet. Joining a room the member
        is already in only makes it current.
        """
        key = name_key(room_name)
        room = self._rooms.get(key)
        if create and room is not None:
            raise RoomExists(f"room #{room.name} already exists; /join it")
        if room is None or key not in member.rooms:
            if len(member.rooms) >= self.max_rooms_per_session:
                raise TooManyRooms(
                    f"you are in {len(member.rooms)} rooms, the most allowed; /leave one first"
                )
            if room is None:
                if len(self._rooms) >= self.max_rooms:
                    raise TooManyRooms(
                        f"the server has {len(self._rooms)} rooms, the most allowed; "
                        "/join an existing one"
                    )
                room = self._add_room(room_name)
            room.members[member] = None
            member.rooms[key] = room
            self._announce(room, member, Joined(room.name, member.nick or ""))
            if room.topic:
                self._tell(member, TopicIs(room.name, room.topic, room.topic_by))
        member.current = room
        self._tell(member, Current(room.name))

    def leave(self, member: Member, room_name: str | None = None) -> None:
        if room_name is None:
            room = self._current(member)
        else:
            key = name_key(room_name)
            found = member.rooms.get(key)
            if found is None:
                if key in self._rooms:
                    raise NotInRoom(f"you are not in #{self._rooms[key].name}")
                raise NoSuchRoom(f"no room #{room_name}")
            room = found
        was_current = member.current is room
        self._announce(room, member, Left(room.name, member.nick or ""))
        self._remove(member, room)
        if was_current:
            # Fall back to the most recently joined room, if any.
            member.current = next(reversed(member.rooms.values()), None)
            self._tell(member, Current(member.current.name if member.current else None))

    def say(self, member: Member, text: str, *, action: bool = False) -> None:
        room = self._current(member)
        self._fanout(
            room,
            Message(self._take_id(), self._now(), room.name, member.nick or "", text, action),
        )

    def direct(self, member: Member, to: str, text: str) -> None:
        target = self._nicks.get(name_key(to))
        if target is None:
            raise NoSuchNick(f"nobody is called {to}")
        event = Direct(self._take_id(), self._now(), member.nick or "", target.nick or "", text)
        self._send_all({target: None, member: None}, event)

    def set_topic(self, member: Member, text: str) -> None:
        room = self._current(member)
        room.topic, room.topic_by = text, member.nick
        self._fanout(room, TopicIs(room.name, text, member.nick, changed=True))

    def disconnect(self, member: Member, reason: str) -> None:
        """Remove a member everywhere; tell each of its rooms why it left."""
        if member.key is None:
            return
        for room in list(member.rooms.values()):
            crowded = len(room.members) > self.announce_limit
            self._remove(member, room)
            if not crowded:
                self._fanout(room, Left(room.name, member.nick or "", reason))
        member.current = None
        del self._nicks[member.key]
        member.key = None

    # -- internals -------------------------------------------------------

    def _current(self, member: Member) -> Room:
        if member.current is None:
            raise NotInRoom("you are in no room; /join one")
        return member.current

    def _add_room(self, name: str) -> Room:
        room = Room(name)
        self._rooms[room.key] = room
        return room

    def _remove(self, member: Member, room: Room) -> None:
        del room.members[member]
        del member.rooms[room.key]
        if member.current is room:
            member.current = None
        if not room.members and room.key != DEFAULT_ROOM:
            del self._rooms[room.key]

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _now(self) -> float:
        return round(self._clock(), 3)

    def _tell(self, member: Member, event: Event) -> None:
        member.reply(render(event, member.fmt))

    def _announce(self, room: Room, member: Member, event: Joined | Left) -> None:
        """A join or leave: to the room, or only to the member in a crowded room."""
        if len(room.members) > self.announce_limit:
            self._tell(member, event)
        else:
            self._fanout(room, event)

    def _fanout(self, room: Room, event: Event) -> None:
        """Deliver an event to every member of a room, rendering once per format."""
        self._send_all(room.members, event)

    @staticmethod
    def _send_all(members: Iterable[Member], event: Event) -> None:
        as_json: bytes | None = None
        as_text: bytes | None = None
        for member in members:
            if member.fmt:
                if as_json is None:
                    as_json = render(event, Format.JSON)
                member.deliver(as_json)
            else:
                if as_text is None:
                    as_text = render(event, Format.TEXT)
                member.deliver(as_text)
