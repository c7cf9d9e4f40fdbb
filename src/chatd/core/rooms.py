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
recipient.

In cluster mode (:mod:`chatd.cluster`) the manager holds this node's members
only. It tells the :class:`~chatd.cluster.Cluster` of every membership
change and publishes room events through it; room messages are stored and
published by the store in one step and delivered when they come back from
Redis (:meth:`RoomManager.remote_message`), so every node sees one order.

Messages (room lines and DMs) go to the :class:`~chatd.store.Store` first
and are fanned out when the store says they are durable, in store order: a
message anyone saw is a message the store has. Each room keeps its last
``history_on_join`` messages in memory, so a join shows them without
waiting for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from chatd.core.stats import Stats
from chatd.errors import (
    ChatError,
    NickRegistered,
    NickTaken,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    RoomExists,
    RoomFull,
    StorageUnavailable,
    TooManyRooms,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Current,
    Direct,
    Error,
    Event,
    Format,
    History,
    Joined,
    Left,
    LoggedOut,
    Message,
    NickChanged,
    Registered,
    RoomChanged,
    RoomList,
    TopicIs,
    WhoList,
    name_key,
    render,
)
from chatd.store import AccountRooms, MemoryStore, RoomRecord, Store, StoredMessage

if TYPE_CHECKING:
    from chatd.cluster import Cluster

#: Writes the store may have queued before new messages are refused.
MAX_STORE_BACKLOG = 50_000
#: Bytes a message is counted for in the store window beyond its text
#: (its rendered event's framing: id, time, room, sender).
MESSAGE_OVERHEAD = 96
#: Backpressure's budget: seconds that senders may be held back for readers
#: that are behind, at most HOLD_BURST in one stretch and HOLD_SHARE of the
#: time after that. A reader a moment behind the talkers uses a little of
#: it; readers that stop reading, one after another, cannot slow the server
#: by more than that share.
HOLD_BURST = 3.0
HOLD_SHARE = 0.1


class Member:
    """One participant as the room manager sees it.

    The manager owns ``nick``, ``key``, ``rooms`` and ``current``; the member
    owns ``fmt`` and the two delivery calls.
    """

    __slots__ = ("account", "current", "fmt", "key", "nick", "rooms")

    def __init__(self, fmt: Format = Format.TEXT) -> None:
        self.fmt = fmt
        self.nick: str | None = None
        self.key: str | None = None
        self.rooms: dict[str, Room] = {}
        self.current: Room | None = None
        #: The id of the account this member is logged in to (None: a guest).
        self.account: int | None = None

    def deliver(self, data: bytes) -> None:
        """Queue what others caused. Never blocks; may drop the member."""
        raise NotImplementedError

    def reply(self, data: bytes) -> None:
        """Queue an answer to this member's own command. Never blocks or drops."""
        raise NotImplementedError

    def kick(self, reason: str) -> None:
        """End this member's connection (after the manager has let it go)."""
        raise NotImplementedError

    def stall(self, now: float) -> float:
        """Seconds more that this member, behind on its output (see
        RoomManager.falling_behind), holds back those who talk to it: while
        it still reads, senders wait for it; one that stopped reading holds
        nobody back (it is cut by its own limits instead)."""
        return 0.0

    def ops_pending(self) -> bool:
        """Some operation of this member's (begin_op) has not ended yet."""
        return False

    def begin_op(self, echo_room: str | None = None) -> int:
        """A command of this member's whose outcome comes later (a message on
        its way to the store, a barrier) has started; returns its number.

        A member that keeps its replies in command order holds back the
        replies to its later commands until :meth:`end_op` of this one (or,
        with ``echo_room``, until its echo from that room, see :meth:`echo`).
        """
        return 0

    def echo(self, data: bytes, room_key: str) -> None:
        """This member's own room message, come back through the cluster."""
        self.deliver(data)

    def end_op(self, seq: int, data: bytes | None = None) -> None:
        """Operation ``seq`` is over: its own events were delivered; ``data``
        is its reply, if it has one (an error, a pong), to go in its place."""
        if data is not None:
            self.reply(data)


class Room:
    __slots__ = ("key", "members", "name", "older", "recent", "seen", "topic", "topic_by")

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.key = name_key(name)
        #: Members in join order (a dict used as an ordered set).
        self.members: dict[Member, None] = {}
        self.topic = ""
        self.topic_by: str | None = None
        #: The last messages, shown on join; ``older``: the store has more.
        self.recent: deque[Message] = deque(maxlen=history)
        self.older = False
        #: The id of the last message delivered or seeded from the store (ids
        #: only grow): a message at or below it is not delivered again.
        self.seen = 0

    def remember(self, event: Message) -> None:
        recent = self.recent
        if recent.maxlen:
            if len(recent) == recent.maxlen:
                self.older = True
            recent.append(event)


def stored_event(m: StoredMessage, *, history: bool = False) -> Message | Direct:
    """The event of a stored message."""
    if m.room is not None:
        return Message(m.id, m.ts, m.room, m.sender, m.text, m.action, history)
    return Direct(m.id, m.ts, m.sender, m.to or "", m.text, history)


class RoomManager:
    """Nicknames, rooms and memberships; every change and its fan-out."""

    def __init__(
        self,
        *,
        max_rooms_per_session: int = 100,
        max_rooms: int = 10_000,
        max_members: int = 1000,
        announce_limit: int = 100,
        history_on_join: int = 20,
        store_window_bytes: int = 128 * 1024,
        store_window_messages: int = 1000,
        store: Store | None = None,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_rooms_per_session = max_rooms_per_session
        self.max_rooms = max_rooms
        #: Members of one room (on this daemon); general is exempt.
        self.max_members = max_members
        #: Rooms with more members than this do not announce joins and leaves
        #: to everyone: in a crowd they are noise, and N arrivals would cost
        #: N*N/2 deliveries. The member who joins or leaves is still told.
        self.announce_limit = announce_limit
        self.history_on_join = history_on_join
        #: The store window: messages (and their bytes) accepted but not yet
        #: confirmed by the store. A store that confirms in groups (SQLite's
        #: group commit, Redis's pipelines) delivers a whole group in one
        #: loop pass; the window bounds what one pass can put into any
        #: member's outbox, so a reader that keeps up is never cut by a
        #: burst. Senders past the window wait (see store_full): the
        #: pushback is on them, never on the readers.
        self.store_window_bytes = store_window_bytes
        self.store_window_messages = store_window_messages
        self._unstored_bytes = 0
        self._unstored = 0
        self._store_space: asyncio.Future[None] | None = None
        #: Members whose messages were stored in cluster mode and whose
        #: echoes are on their way back from Redis: (member, op number).
        self._echoes: list[tuple[Member, int]] = []
        self._echo_barrier = False
        #: Members whose outbox is over the soft limit; senders to them wait
        #: while they are still reading (backpressure), and ``_relief`` is
        #: done when one of them catches up or goes.
        self._behind: dict[Member, None] = {}
        self._relief: asyncio.Future[None] | None = None
        #: The holding budget (see HOLD_BURST): seconds left, when it was
        #: last brought up to date (loop time), and how many senders wait.
        self._hold_left = HOLD_BURST
        self._hold_stamp = 0.0
        self._holders = 0
        self.store: Store = store if store is not None else MemoryStore()
        self.stats = stats if stats is not None else Stats()
        self._clock = clock
        #: Set by :class:`~chatd.cluster.Cluster` in cluster mode.
        self.cluster: Cluster | None = None
        self._nicks: dict[str, Member] = {}
        self._rooms: dict[str, Room] = {}
        #: Members whose account's rooms are being rejoined: saved once, at the end.
        self._rejoining: set[Member] = set()
        #: Members that asked for ``room`` events (``/rooms watch``).
        self._watchers: dict[Member, None] = {}
        self._next_id = 1
        self._add_room(DEFAULT_ROOM)

    async def restore(self) -> None:
        """Take up where the store left off: message ids, rooms with topics."""
        self._next_id = self.store.last_id + 1
        records = await self.store.rooms()
        if self.cluster is not None:
            # Other rooms become live here when someone here joins them.
            records = [r for r in records if name_key(r.name) == DEFAULT_ROOM]
        for record in records:
            room = self._rooms.get(name_key(record.name)) or self._add_room(record.name)
            room.topic, room.topic_by = record.topic, record.topic_by
        if self.history_on_join:
            for room in self._rooms.values():
                self.seed(room, *await self.store.recent(room.key, self.history_on_join))

    def is_live(self, room_name: str) -> bool:
        """Whether a room is in memory (else a join should fetch its history first)."""
        return name_key(room_name) in self._rooms

    def members(self) -> list[Member]:
        """Every member with a nickname."""
        return list(self._nicks.values())

    def live_rooms(self) -> list[Room]:
        """The rooms in memory."""
        return list(self._rooms.values())

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
        self.check_guest_nick(nick)
        self._register(member, nick)

    def _register(self, member: Member, nick: str) -> None:
        key = name_key(nick)
        if key in self._nicks:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        member.nick, member.key = nick, key
        self._nicks[key] = member
        self._tell(member, Registered(nick, member.account is not None))
        self.join(member, DEFAULT_ROOM)

    def check_guest_nick(self, nick: str) -> None:
        if self.store.is_registered(nick):
            raise NickRegistered(
                f"{nick} is a registered nickname; /login {nick} PASSWORD, or pick another"
            )

    def rename(self, member: Member, nick: str) -> None:
        """Change a nickname. Leaving an account's nickname leaves the account."""
        assert member.key is not None
        leaves_account = False
        if name_key(nick) != member.key:
            self.check_guest_nick(nick)
            leaves_account = member.account is not None
        self._rename(member, nick)
        if leaves_account:
            member.account = None
            self._tell(member, Registered(nick, False))

    def _rename(self, member: Member, nick: str) -> None:
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
        self._send_all(audience, NickChanged(old, nick), member)

    def login(self, member: Member, nick: str, account: int) -> None:
        """Log a member in to an account whose password it proved.

        Whoever holds the nickname (the same account, on a connection that
        may be dead) is disconnected first.
        """
        holder = self._nicks.get(name_key(nick))
        if holder is not None and holder is not member:
            self.disconnect(holder, "logged in from elsewhere", release=False)
            holder.kick("logged in from elsewhere")
        member.account = account
        if member.key is None:
            self._register(member, nick)
        else:
            if member.nick != nick:
                self._rename(member, nick)
            self._tell(member, Registered(nick, True))

    def logout(self, member: Member) -> None:
        """Leave the account and every room; the member chooses a nickname again."""
        nick = member.nick or ""
        self.disconnect(member, "logged out")
        member.account = None
        self._tell(member, LoggedOut(nick))

    def join(
        self,
        member: Member,
        room_name: str,
        *,
        create: bool = False,
        history: tuple[Sequence[StoredMessage], bool] | None = None,
    ) -> None:
        """Join a room (creating it if needed) and make it current.

        With ``create`` the room must not exist yet. Joining a room the member
        is already in only makes it current. A room that is not in memory
        starts with ``history`` (fetched from the store by the caller).
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
            if room is not None and len(room.members) >= self.max_members and key != DEFAULT_ROOM:
                raise RoomFull(f"#{room.name} has {len(room.members)} members, the most allowed")
            created = room is None
            if room is None:
                if len(self._rooms) >= self.max_rooms:
                    raise TooManyRooms(
                        f"the server has {len(self._rooms)} rooms, the most allowed; "
                        "/join an existing one"
                    )
                room = self._add_room(room_name)
                if history is not None:
                    self.seed(room, *history)
            room.members[member] = None
            member.rooms[key] = room
            if self.cluster is not None:
                self.cluster.joined(member, room.key, room.name)
            elif created:  # in cluster mode Redis tells (remote_room)
                self._room_changed(RoomChanged(room.name, "created", len(room.members)))
            self._announce(room, member, Joined(room.name, member.nick or ""))
            if room.topic:
                self._tell(member, TopicIs(room.name, room.topic, room.topic_by))
            if room.recent:
                self._show_history(member, room)
        member.current = room
        self._tell(member, Current(room.name))
        self.save_rooms(member)

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
        self.save_rooms(member)

    def save_rooms(self, member: Member) -> None:
        """Remember a logged-in member's rooms, which its next login rejoins.

        Called on /join and /leave, not when a connection ends: quitting keeps
        an account's rooms, an explicit /leave forgets the room.
        """
        if member.account is None or member.key is None or member in self._rejoining:
            return
        current = member.current.name if member.current is not None else None
        rooms = tuple(room.name for room in member.rooms.values())
        self.store.save_account_rooms(member.account, AccountRooms(rooms, current))

    @contextlib.contextmanager
    def rejoining(self, member: Member) -> Iterator[None]:
        """Save ``member``'s rooms once when the block ends, not at each join.

        A login lands in general and then rejoins the account's rooms one by
        one, possibly waiting for the store between them: saving halfway
        would make the account forget rooms if the connection ended there.
        """
        self._rejoining.add(member)
        try:
            yield
        finally:
            self._rejoining.discard(member)
        self.save_rooms(member)

    def say(self, member: Member, text: str, *, action: bool = False) -> None:
        """Store a room message; everyone in the room sees it once it is stored."""
        room = self._current(member)
        self._check_store()
        nick = member.nick or ""
        if self.cluster is not None:
            # The store publishes it; every node delivers it as it comes back.
            record = StoredMessage(
                0, self._now(), room.name, nick, None, text, action, member.account
            )
            self._store_then(member, record, lambda: 0)
            return
        event = Message(self._take_id(), self._now(), room.name, nick, text, action)
        record = StoredMessage(
            event.id, event.ts, room.name, nick, None, text, action, member.account
        )
        key = room.key

        def deliver() -> int | None:
            live = self._rooms.get(key)
            # A room forgotten and joined again meanwhile was seeded from the
            # store, which may already hold this message: it was shown then.
            if live is None or event.id <= live.seen:
                return None
            live.seen = event.id
            live.remember(event)
            self._fanout(live, event)
            return len(live.members)

        self._store_then(member, record, deliver)

    def direct(self, member: Member, to: str, text: str) -> None:
        target = self._nicks.get(name_key(to))
        if target is None:
            raise NoSuchNick(f"nobody is called {to}")
        self._check_store()
        nick, target_nick = member.nick or "", target.nick or ""
        event = Direct(self._take_id(), self._now(), nick, target_nick, text)
        record = StoredMessage(
            event.id, event.ts, None, nick, target_nick, text, False, member.account, target.account
        )

        def deliver() -> int:
            audience: dict[Member, None] = {member: None}
            if target.key is not None and self._nicks.get(target.key) is target:
                audience[target] = None
            self._send_all(audience, event)
            return len(audience)

        self._store_then(member, record, deliver)

    def set_topic(self, member: Member, text: str) -> None:
        room = self._current(member)
        room.topic, room.topic_by = text, member.nick
        self.store.save_room(RoomRecord(room.name, text, member.nick))
        self._fanout(room, TopicIs(room.name, text, member.nick, changed=True), member)

    def disconnect(self, member: Member, reason: str, *, release: bool = True) -> None:
        """Remove a member everywhere; tell each of its rooms why it left.

        ``release=False`` keeps the nickname taken in the cluster (it passes
        to another member of this node).
        """
        self._watchers.pop(member, None)
        self.caught_up(member)
        if member.key is None:
            return
        for room in list(member.rooms.values()):
            crowded = len(room.members) > self.announce_limit
            self._remove(member, room)
            if not crowded:
                self._fanout(room, Left(room.name, member.nick or "", reason))
        member.current = None
        del self._nicks[member.key]
        if self.cluster is not None and release:
            self.cluster.released(member.key)
        member.key = None

    def watch_rooms(self, member: Member, on: bool) -> None:
        """Start or stop sending ``member`` the ``room`` events (``/rooms watch``).

        Opt-in: a room created among thousands of connections costs one
        delivery per watcher, not one per connection. Logging out or
        disconnecting stops it.
        """
        if on:
            self._watchers[member] = None
        else:
            self._watchers.pop(member, None)

    def _room_changed(self, event: RoomChanged) -> None:
        """Tell the watchers that a room came into use or went out of use.

        The one place that decides who learns of a room: every room is
        visible to everyone today; a room some may not see is filtered here.
        """
        if self._watchers:
            self._send_all(self._watchers, event)

    # -- cluster mode ------------------------------------------------------

    def remote_room(self, event: RoomChanged) -> None:
        """A room created or removed anywhere in the cluster (this node included)."""
        self._room_changed(event)

    def barrier(self, done: Callable[[], None]) -> None:
        """``done`` once everything said before is stored and delivered."""
        if self.cluster is not None:
            self.cluster.barrier(done)
        else:
            self.store.barrier(done)

    def open_room(self, name: str) -> Room:
        """The room in memory, made live (cluster mode) before anyone joins it."""
        room = self._rooms.get(name_key(name))
        if room is None:
            if len(self._rooms) >= self.max_rooms:
                raise TooManyRooms(
                    f"this server has {len(self._rooms)} rooms live, the most allowed"
                )
            room = self._add_room(name)
        return room

    def close_room(self, room: Room) -> None:
        """Forget a live room nobody here is in (cluster mode)."""
        if room.members or room.key == DEFAULT_ROOM or self._rooms.get(room.key) is not room:
            return
        del self._rooms[room.key]
        if self.cluster is not None:
            self.cluster.closed(room.key)

    def discard_room(self, name: str) -> None:
        """Forget a live room if nobody here is in it (cluster mode)."""
        room = self._rooms.get(name_key(name))
        if room is not None:
            self.close_room(room)

    def remote_message(self, event: Message) -> None:
        """A room message from the cluster (this node's own included)."""
        room = self._rooms.get(name_key(event.room))
        if room is None or event.id <= room.seen:
            return
        room.seen = event.id
        room.remember(event)
        members = room.members
        self.stats.messages_out += len(members)
        sender = self._nicks.get(name_key(event.sender))
        if sender is not None and sender.ops_pending() and sender in members:
            # In its place among the replies to the sender's commands.
            sender.echo(render(event, sender.fmt), room.key)
            self._send_all([m for m in members if m is not sender], event)
        else:
            self._send_all(members, event)

    def remote_direct(self, event: Direct) -> None:
        target = self._nicks.get(name_key(event.to))
        if target is not None:
            target.deliver(render(event, target.fmt))
            self.stats.messages_out += 1

    def remote_event(self, room_key: str, event: Event) -> None:
        """A join, leave or topic from another node."""
        room = self._rooms.get(room_key)
        if room is None:
            return
        if isinstance(event, TopicIs):
            room.topic, room.topic_by = event.topic, event.by
        self._send_all(room.members, event)

    def remote_rename(self, event: NickChanged, room_keys: Iterable[str]) -> None:
        audience: dict[Member, None] = {}
        for key in room_keys:
            room = self._rooms.get(key)
            if room is not None:
                audience.update(room.members)
        self._send_all(audience, event)

    def remote_kick(self, key: str, reason: str) -> None:
        """Someone logged in to this member's account on another node."""
        member = self._nicks.get(key)
        if member is not None:
            self.disconnect(member, reason, release=False)
            member.kick(reason)

    async def send_direct(self, member: Member, to: str, text: str) -> None:
        """A private message through the cluster, to whichever node holds ``to``."""
        assert self.cluster is not None
        self._check_store()
        event = await self.cluster.direct(member, to, text, self._now())
        self.stats.messages_in += 1
        if name_key(to) != member.key:  # to oneself it comes back through Redis
            self._tell(member, event)
            self.stats.messages_out += 1

    # -- internals -------------------------------------------------------

    def _current(self, member: Member) -> Room:
        if member.current is None:
            raise NotInRoom("you are in no room; /join one")
        return member.current

    def _add_room(self, name: str) -> Room:
        room = Room(name, self.history_on_join)
        self._rooms[room.key] = room
        return room

    @staticmethod
    def seed(room: Room, messages: Sequence[StoredMessage], more: bool) -> None:
        """Merge stored messages with what the room already shows, in id order."""
        merged = {event.id: event for event in room.recent}
        for m in messages:
            if m.id not in merged and isinstance(event := stored_event(m), Message):
                merged[m.id] = event
        room.recent.clear()
        room.older = False
        for message_id in sorted(merged):
            room.remember(merged[message_id])
        room.older = room.older or more
        if room.recent:
            room.seen = max(room.seen, room.recent[-1].id)

    def _show_history(self, member: Member, room: Room) -> None:
        fmt = member.fmt
        for event in room.recent:
            member.reply(render(dataclasses.replace(event, history=True), fmt))
        before = room.recent[0].id if room.older else None
        self._tell(member, History(room.name, None, len(room.recent), room.older, before))

    def _store_then(
        self, member: Member, record: StoredMessage, deliver: Callable[[], int | None]
    ) -> None:
        """Store a message, then deliver it and count it (unless deliver returns None).

        If the store fails, the sender is told and nobody sees the message.
        The message is one of the sender's operations (:meth:`Member.begin_op`):
        its echo, or the error, comes before the replies to its later commands.
        """
        arrived = time.perf_counter()
        # In cluster mode a room message's echo comes back through Redis.
        echo_room = record.room if self.cluster is not None else None
        seq = member.begin_op(name_key(echo_room) if echo_room is not None else None)
        size = len(record.text) + MESSAGE_OVERHEAD
        self._unstored += 1
        self._unstored_bytes += size

        def stored(exc: BaseException | None) -> None:
            self._unstored -= 1
            self._unstored_bytes -= size
            if self._store_space is not None and self._unstored_bytes <= (
                self.store_window_bytes // 2
            ):
                self._store_space.set_result(None)
                self._store_space = None
            if exc is not None:
                member.end_op(seq, render(Error.of(self._store_error(exc)), member.fmt))
                return
            committed = time.perf_counter()
            recipients = deliver()
            if self.cluster is not None:
                self._after_echo(member, seq)
            else:
                member.end_op(seq)
            if recipients is None:
                return
            stats = self.stats
            stats.messages_in += 1
            stats.messages_out += recipients
            stats.store_latency.observe(committed - arrived)
            stats.fanout_latency.observe(time.perf_counter() - arrived)

        self.store.append(record, stored)

    @property
    def store_full(self) -> bool:
        """The store window is full: a new message should wait (store_space)."""
        return (
            self._unstored_bytes >= self.store_window_bytes
            or self._unstored >= self.store_window_messages
        )

    def store_space(self) -> asyncio.Future[None]:
        """A future done once the store window is half empty again."""
        if self._store_space is None:
            self._store_space = asyncio.get_running_loop().create_future()
        return self._store_space

    # -- pushback ------------------------------------------------------------

    def falling_behind(self, member: Member) -> None:
        """``member``'s outbox went over its soft limit."""
        self._behind[member] = None

    def caught_up(self, member: Member) -> None:
        """``member``'s outbox is under its soft limit again, or it is gone."""
        if member in self._behind:
            del self._behind[member]
            if self._relief is not None:
                self._relief.set_result(None)
                self._relief = None

    def backpressure(self, member: Member, to: str | None, now: float) -> float:
        """Seconds ``member`` should wait before its next message to the
        current room (or to nick ``to``), at most; 0.0: send now.

        A reader that is behind but still reading holds the message back
        until it catches up: the sender waits (and TCP pushes back on it),
        not the reader, which is not cut for lagging a moment behind the
        talkers. One that has stopped reading holds nobody back for longer
        than its stall allows (see Member.stall), and all of them together
        no longer than the holding budget (HOLD_BURST, HOLD_SHARE): past it,
        a reader much slower than its room meets the outbox limits as before.
        """
        if not self._behind or self._hold_budget(now) <= 0.0:
            return 0.0
        wait = 0.0
        if to is None:
            room = member.current
            if room is None:
                return 0.0
            for other in self._behind:
                if other is not member and other in room.members:
                    wait = max(wait, other.stall(now))
        else:
            target = self._nicks.get(name_key(to))
            if target is not None and target is not member and target in self._behind:
                wait = target.stall(now)
        return min(wait, self._hold_left)

    def hold(self, now: float, holding: bool) -> None:
        """A sender starts (``holding``) or stops waiting for backpressure."""
        self._hold_budget(now)
        self._holders += 1 if holding else -1

    def _hold_budget(self, now: float) -> float:
        """The seconds of holding left: spent while any sender waits, earned
        back at HOLD_SHARE a second while none does."""
        elapsed = max(0.0, now - self._hold_stamp)
        self._hold_stamp = now
        if self._holders:
            self._hold_left = max(0.0, self._hold_left - elapsed)
        else:
            self._hold_left = min(HOLD_BURST, self._hold_left + elapsed * HOLD_SHARE)
        return self._hold_left

    @property
    def anyone_behind(self) -> bool:
        """Some member is behind on its output (backpressure may apply)."""
        return bool(self._behind)

    def relief(self) -> asyncio.Future[None]:
        """A future done when a member that was behind catches up or goes."""
        if self._relief is None:
            self._relief = asyncio.get_running_loop().create_future()
        return self._relief

    def _after_echo(self, member: Member, seq: int) -> None:
        """Cluster mode: a stored message comes back through Redis later; its
        operation ends with its echo (Member.echo), or else after a barrier
        that passes once it came back (the sender left the room meanwhile).
        One barrier at a time serves every message stored before it was
        sent; those stored while it is on its way wait for the next one."""
        self._echoes.append((member, seq))
        if not self._echo_barrier:
            self._send_echo_barrier()

    def _send_echo_barrier(self) -> None:
        batch, self._echoes = self._echoes, []
        self._echo_barrier = True

        def back() -> None:
            self._echo_barrier = False
            for member, seq in batch:
                member.end_op(seq)
            if self._echoes:
                self._send_echo_barrier()

        self.barrier(back)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def _check_store(self) -> None:
        if self.store.backlog > MAX_STORE_BACKLOG:
            raise StorageUnavailable("the message store is falling behind; try again shortly")

    @staticmethod
    def _store_error(exc: BaseException) -> ChatError:
        if isinstance(exc, ChatError):
            return exc
        return StorageUnavailable(f"your message was not sent: {exc}")

    def _remove(self, member: Member, room: Room) -> None:
        del room.members[member]
        del member.rooms[room.key]
        if member.current is room:
            member.current = None
        cluster = self.cluster
        if cluster is not None:
            cluster.left(member, room.key)
            if not room.members and not cluster.opening(room.key):
                self.close_room(room)
        elif not room.members and room.key != DEFAULT_ROOM and not room.topic:
            del self._rooms[room.key]
            self._room_changed(RoomChanged(room.name, "removed", 0))

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
            self._fanout(room, event, member)

    def _fanout(self, room: Room, event: Event, actor: Member | None = None) -> None:
        """Deliver an event to every member of a room, rendering once per format
        (and, in cluster mode, to its members on the other nodes).

        ``actor``, the member whose command caused it, gets it as a reply
        while earlier commands of its are still pending, so that it comes in
        its place among the replies to its commands.
        """
        self._send_all(room.members, event, actor)
        if self.cluster is not None:
            self.cluster.publish(room.key, event)

    @staticmethod
    def _send_all(members: Iterable[Member], event: Event, actor: Member | None = None) -> None:
        as_json: bytes | None = None
        as_text: bytes | None = None
        if actor is not None and actor.ops_pending() and actor in members:
            # Behind the actor's replies still held for its earlier commands.
            actor.reply(render(event, actor.fmt))
            members = [m for m in members if m is not actor]
        for member in members:
            if member.fmt:
                if as_json is None:
                    as_json = render(event, Format.JSON)
                member.deliver(as_json)
            else:
                if as_text is None:
                    as_text = render(event, Format.TEXT)
                member.deliver(as_text)
