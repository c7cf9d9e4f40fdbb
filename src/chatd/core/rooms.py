"""The room model: nicknames, memberships and fan-out.

:class:`RoomManager` is the only shared mutable state in the daemon, and the
only code that changes rooms and members. Its methods are synchronous and
never wait: a membership change or a message and its fan-out to every
recipient happen in one step of the event loop, so every member of a room
sees the same order, with no locks.

Members are anything that implements :class:`~chatd.core.model.Member` (a
session on any transport, or a list in a test). Every event bound for a
room goes through :meth:`RoomManager._send_all`, which encodes it once per
codec and hands the same ``bytes`` object to every recipient.

Messages (room lines and DMs) go to the :class:`~chatd.store.Store` first
and are fanned out when the store says they are durable, in store order: a
message anyone saw is a message the store has. A room message reaches its
readers by one path, :meth:`RoomManager.arrived`, whether the
:class:`~chatd.core.bus.Bus` hands it over as soon as the store has it (one
daemon) or when it comes back from the other nodes (a cluster). Each room
keeps its last ``history_on_join`` messages in memory, so a join shows
them without waiting for the store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from chatd.core.away import AwayBook
from chatd.core.bus import Bus
from chatd.core.fanout import Watchers, send_all
from chatd.core.local import LocalBus
from chatd.core.messages import Messages
from chatd.core.model import Member, Room
from chatd.core.moderation import Moderator
from chatd.core.pushback import Pushback
from chatd.core.rules import RoomRules, principal
from chatd.core.saved import SavedRooms
from chatd.core.stats import Stats
from chatd.core.window import StoreWindow
from chatd.errors import (
    BadArgs,
    ChatError,
    NickRegistered,
    NickTaken,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    RoomExists,
    RoomFull,
    TooManyRooms,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Current,
    Direct,
    Error,
    Event,
    Joined,
    Left,
    LoggedOut,
    Message,
    NickChanged,
    Read,
    Registered,
    RoomChanged,
    RoomList,
    TopicIs,
    WhoList,
    name_key,
)
from chatd.protocol.codec import Codec
from chatd.protocol.mention import named
from chatd.store import MemoryStore, RoomRecord, Store, StoredMessage

logger = logging.getLogger(__name__)


class RoomManager:
    """Nicknames, rooms and memberships; every change and its fan-out."""

    def __init__(
        self,
        *,
        max_rooms_per_session: int = 100,
        max_rooms_on_server: int = 10_000,
        max_members: int = 1000,
        announce_limit: int = 100,
        history_on_join: int = 20,
        store_window_bytes: int = 128 * 1024,
        store_window_messages: int = 1000,
        store: Store | None = None,
        stats: Stats | None = None,
        opers: Iterable[str] = (),
        max_owned_rooms: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_rooms_per_session = max_rooms_per_session
        #: Rooms live on this daemon at once (general included).
        self.max_rooms_on_server = max_rooms_on_server
        #: Members of one room (on this daemon); general is exempt.
        self.max_members = max_members
        #: Rooms with more members than this do not announce joins and leaves
        #: to everyone: in a crowd they are noise, and N arrivals would cost
        #: N*N/2 deliveries. The member who joins or leaves is still told.
        self.announce_limit = announce_limit
        self.history_on_join = history_on_join
        #: Messages on their way to the store (see chatd.core.window).
        self.window = StoreWindow(store_window_bytes, store_window_messages)
        self.store: Store = store if store is not None else MemoryStore()
        self.stats = stats if stats is not None else Stats()
        self._clock = clock
        #: Each nickname's member: for an account with several connections
        #: here, the first of them (``Member.devices`` has them all).
        self._nicks: dict[str, Member] = {}
        #: Room messages of logged-in members on their way to the store
        #: (an account may have, or gain, several connections here): which
        #: connection sent each, in order, by (nickname key, room key). See
        #: arrived.
        self._authors: dict[tuple[str, str], deque[Member]] = {}
        #: The number the next logged-in connection's session id takes.
        self._next_session = 1
        self._rooms: dict[str, Room] = {}
        #: Senders wait for readers a moment behind (see chatd.core.pushback).
        self.pushback = Pushback(self._nicks.get)
        #: One daemon until a cluster attaches its bus (see attach).
        self.bus: Bus = LocalBus(self)
        self.messages = Messages(
            self.store, self.stats, self.window, self.bus, self._nicks, self.now, self.devices
        )
        self.messages.sent = self._sent
        #: Each account's rooms, which its next login rejoins.
        self.saved = SavedRooms(self.store)
        #: Members that asked for ``room`` events (``/rooms watch``).
        self.watchers = Watchers()
        #: Who is away (IRC's AWAY), cluster-wide (see chatd.core.away).
        self.away = AwayBook(lambda: self.bus)
        #: Owners, modes, bans and server operators (see chatd.core.moderation).
        self.moderator = Moderator(self, opers=opers, max_owned=max_owned_rooms, clock=clock)
        #: Every connection, with a nickname or not (the server's sessions
        #: once it sets this): /wall and klines reach them all.
        self.connections: Callable[[], Iterable[Member]] = self.members
        # general belongs to the server operators.
        self._add_room(DEFAULT_ROOM).rules = RoomRules(registered=True)

    def attach(self, bus: Bus) -> None:
        """Reach the rest of the chat through ``bus`` (before restore)."""
        self.bus = self.messages.bus = bus

    async def restore(self) -> None:
        """Take up where the store left off: message ids, rooms with topics
        or owners, server bans."""
        self.bus.restored(self.store.last_id)
        for record in await self.store.rooms():
            if self.bus.keeps(record):
                room = self._rooms.get(name_key(record.name)) or self._add_room(record.name)
                room.topic, room.topic_by = record.topic, record.topic_by
        await self.moderator.restore()
        if self.history_on_join:
            for room in self._rooms.values():
                room.seed(*await self.store.recent(room.key, self.history_on_join))

    def is_live(self, room_name: str) -> bool:
        """Whether a room is in memory (else a join should fetch its history first)."""
        return name_key(room_name) in self._rooms

    def live(self, name: str) -> Room | None:
        """The room in memory of that name, if it is."""
        return self._rooms.get(name_key(name))

    def members(self) -> list[Member]:
        """Every member with a nickname."""
        return list(self._nicks.values())

    def live_rooms(self) -> list[Room]:
        """The rooms in memory."""
        return list(self._rooms.values())

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    # -- queries ---------------------------------------------------------

    def find(self, nick: str) -> Member | None:
        return self._nicks.get(name_key(nick))

    @staticmethod
    def devices(member: Member) -> list[Member]:
        """The connections of ``member``'s account here (``member`` alone
        for a guest, or an account connected once)."""
        devices = member.devices
        return devices if devices is not None else [member]

    def sessions(self, nick: str) -> list[Member]:
        """Every connection here that holds ``nick``."""
        holder = self._nicks.get(name_key(nick))
        return [] if holder is None else list(self.devices(holder))

    def tell_nick(self, key: str, event: Event) -> bool:
        """An event for whoever holds a nickname here, on each of its
        connections; False if nobody here does."""
        holder = self._nicks.get(key)
        if holder is None:
            return False
        for member in self.devices(holder):
            member.deliver(member.encode(event))
        return True

    def room_list(self) -> RoomList:
        rooms = sorted(self._rooms.values(), key=lambda r: r.key)
        return RoomList(tuple((r.name, r.people) for r in rooms))

    def who(self, member: Member, room_name: str | None) -> WhoList:
        if room_name is None:
            room = self._current(member)
        else:
            found = self._rooms.get(name_key(room_name))
            if found is None or self.moderator.hidden(found, member):
                raise NoSuchRoom(f"no room #{room_name}")
            room = found
        nicks = sorted({m.nick for m in room.members if m.nick}, key=str.lower)
        return WhoList(room.name, tuple(nicks), self.moderator.roles(room, nicks))

    def topic_of(self, member: Member) -> TopicIs:
        room = self._current(member)
        return TopicIs(room.name, room.topic, room.topic_by)

    # -- changes ---------------------------------------------------------

    def register(self, member: Member, nick: str) -> None:
        """Give a new member its nickname and put it in the default room."""
        self.check_guest_nick(nick)
        self._register(member, nick)

    def _register(
        self,
        member: Member,
        nick: str,
        shown: tuple[Sequence[Message], bool] | None = None,
        make_current: bool = True,
    ) -> None:
        key = name_key(nick)
        if key in self._nicks:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        member.nick, member.key = nick, key
        self._nicks[key] = member
        self.away.forget(key)  # a nickname taken afresh is here
        member.tell(Registered(nick, member.account is not None))
        if member.chooses_rooms:
            return
        try:
            self.join(member, DEFAULT_ROOM, shown=shown, make_current=make_current)
        except ChatError as exc:  # banned from general: in no room, but connected
            member.tell(Error.of(exc))

    def check_guest_nick(self, nick: str) -> None:
        if self.store.is_registered(nick):
            raise NickRegistered(
                f"{nick} is a registered nickname; /login {nick} PASSWORD, or pick another"
            )

    def check_rename(self, member: Member, nick: str) -> None:
        """Refuse a new nickname for a connection that shares its account
        with others: they keep the account's nickname."""
        shared = member.devices is not None or (
            member.key is not None and self.bus.elsewhere(member.key)
        )
        if shared and nick != member.nick:
            raise BadArgs(
                f"your account {member.nick} is connected elsewhere too; /logout first "
                "to use another nickname here"
            )

    def rename(self, member: Member, nick: str) -> None:
        """Change a nickname. Leaving an account's nickname leaves the account."""
        assert member.key is not None
        self.check_rename(member, nick)
        leaves_account = False
        if name_key(nick) != member.key:
            self.check_guest_nick(nick)
            leaves_account = member.account is not None
        was = principal(member)
        if leaves_account:
            self._unstamp(member)
        self._rename(member, nick)
        if leaves_account:
            member.account = None
            member.oper = False
            member.tell(Registered(nick, False))
        self.moderator.identity_changed(member, was)

    def _rename(self, member: Member, nick: str) -> None:
        assert member.nick is not None
        assert member.key is not None
        key = name_key(nick)
        holder = self._nicks.get(key)
        shared = member.devices is not None and holder is not None and holder in member.devices
        if holder is not None and holder is not member and not shared:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        old, old_key = member.nick, member.key
        if holder is None or holder is member:
            del self._nicks[member.key]
            self._nicks[key] = member
        # else the account's nickname, unchanged (check_rename): its first
        # connection stays the one the table holds.
        member.nick, member.key = nick, key
        self.moderator.renamed(member, old_key)
        self.away.renamed(old_key, key, nick, member.rooms)
        audience: dict[Member, None] = {member: None}
        for room in member.rooms.values():
            audience.update(room.members)
        send_all(audience, NickChanged(old, nick), member)

    def login(
        self,
        member: Member,
        nick: str,
        account: int,
        shown: dict[str, tuple[Sequence[Message], bool]] | None = None,
        current: str | None = None,
    ) -> None:
        """Log a member in to an account whose password it proved.

        If the account is connected here already, ``member`` becomes one
        more of its connections (see :meth:`add_device`), with ``current``
        current if the account is in it. Anyone else who holds the nickname
        is disconnected first. ``shown``: what the member is shown of the
        rooms it lands in now, by room key (what the account has not read).
        """
        shown = shown or {}
        key = name_key(nick)
        holder = self._nicks.get(key)
        if holder is not None and holder is not member:
            if holder.account == account and member.key != key:
                self.add_device(holder, member, nick, shown, current)
                return
            self.end(key, "logged in from elsewhere", release=False)
        if (
            member.key is not None
            and member.key != key
            and (member.devices is not None or self.bus.elsewhere(key))
        ):
            # It leaves an account connected elsewhere too, or joins one
            # connected through another node: as a new member.
            self.disconnect(member, f"logged in as {nick}")
        member.account = account
        if member.key is None:
            # Another saved current room is made current once the login has
            # rejoined it (Dispatcher._rejoin): general is not, meanwhile.
            lands = current is None or name_key(current) == DEFAULT_ROOM
            self._register(member, nick, shown.get(DEFAULT_ROOM), lands)
        else:
            self._unstamp(member)  # a session of another account before
            if member.nick != nick:
                self._rename(member, nick)
            member.tell(Registered(nick, True))
        self._stamp(member)

    def add_device(
        self,
        holder: Member,
        member: Member,
        nick: str,
        shown: dict[str, tuple[Sequence[Message], bool]],
        current: str | None,
    ) -> None:
        """``member`` logs in to the account ``holder`` is connected to
        here: one more connection of it, with its nickname, in its rooms
        (each shown as ``shown`` says, told to it alone), ``current``
        current if the account is in it, else ``holder``'s current room."""
        if member.key is not None:
            self.disconnect(member, f"logged in as {nick}")  # a guest, or another account
        devices = holder.devices
        if devices is None:
            devices = holder.devices = [holder]
        devices.append(member)
        member.devices = devices
        member.nick, member.key, member.account = holder.nick, holder.key, holder.account
        self._stamp(member)
        member.tell(Registered(holder.nick or nick, True))
        for room in list(holder.rooms.values()):
            room.members[member] = None
            member.rooms[room.key] = room
            member.tell(Joined(room.name, member.nick or ""))
            self._show(member, room, shown.get(room.key))
        landing = holder.rooms.get(name_key(current)) if current is not None else None
        # (``holder`` may itself be on its way into its rooms, with none current yet.)
        member.current = landing or holder.current or next(reversed(holder.rooms.values()), None)
        member.tell(Current(member.current.name if member.current is not None else None))

    def _stamp(self, member: Member) -> None:
        """A connection logs in: its session id, and since when."""
        member.session_id = self.bus.session_id(self._next_session)
        self._next_session += 1
        member.since = self.now()
        self.bus.session_opened(member)

    def _unstamp(self, member: Member) -> None:
        """A logged-in connection logs out or goes."""
        if member.session_id:
            self.bus.session_closed(member)
            member.session_id = ""

    def end(self, key: str, reason: str, *, release: bool = True) -> None:
        """End every connection that holds a nickname here (a kill, a login
        elsewhere)."""
        for member in self.sessions(key):
            self.disconnect(member, reason, release=release)
            member.kick(reason)

    def end_session(self, key: str, session_id: str, reason: str) -> bool:
        """End one connection of an account here (``/kick-session``,
        ``/logout --all``); False if it is not here."""
        for member in self.sessions(key):
            if member.session_id == session_id:
                self.disconnect(member, reason)
                member.kick(reason)
                return True
        return False

    def logout(self, member: Member) -> None:
        """Leave the account and every room; the member chooses a nickname again."""
        nick = member.nick or ""
        self.disconnect(member, "logged out")
        member.account = None
        member.oper = False
        member.tell(LoggedOut(nick))

    def join(
        self,
        member: Member,
        room_name: str,
        *,
        create: bool = False,
        history: tuple[Sequence[StoredMessage], bool] | None = None,
        password: str | None = None,
        fresh: bool = False,
        shown: tuple[Sequence[Message], bool] | None = None,
        make_current: bool = True,
    ) -> None:
        """Join a room (creating it if needed) and make it current.

        With ``create`` the room must not exist yet. Joining a room the member
        is already in only makes it current. A room that is not in memory
        starts with ``history`` (fetched from the store by the caller).
        ``fresh``: the room is live here only for this join and in use
        nowhere (a cluster's), so the join brings it into use as a new one.
        A room in use admits the member only as its rules say
        (:meth:`Moderator.admit`, with its key ``password``); the member
        who brings a room into use owns it, or is its op (a guest).
        ``shown``: the messages to show instead of the room's last ones (a
        login shows what the account has not read). ``make_current=False``:
        the member's current room stays (a login rejoining rooms, whose
        client would take each for the room on screen; the login makes one
        current at the end).

        An account's connections are in the same rooms: joining on one
        joins them all (each is told, and keeps its current room), and a
        connection whose account is in the room already follows it there,
        unannounced.
        """
        key = name_key(room_name)
        room = self._rooms.get(key)
        if create and room is not None:
            if self.moderator.hidden(room, member):
                # A secret room: the answer /join would give, not its existence.
                self.moderator.admit(room, member, password)
            raise RoomExists(f"room #{room.name} already exists; /join it")
        devices = member.devices
        here = devices is not None and any(key in d.rooms for d in devices)
        if (
            room is not None
            and key not in member.rooms
            and (here or (member.key is not None and self.bus.present(member.key, key)))
        ):
            # The account is in the room already (through another connection
            # here, or another node): this connection follows it, told alone
            # (its client learns its rooms from its joins).
            room.members[member] = None
            member.rooms[key] = room
            if not here:
                room.people += 1
                self.bus.joined(member, room, False)
            member.tell(Joined(room.name, member.nick or ""))
            self._show(member, room, shown)
        elif room is None or key not in member.rooms:
            if len(member.rooms) >= self.max_rooms_per_session:
                raise TooManyRooms(
                    f"you are in {len(member.rooms)} rooms, the most allowed; /leave one first"
                )
            if room is not None and room.people >= self.max_members and key != DEFAULT_ROOM:
                raise RoomFull(f"#{room.name} has {room.people} members, the most allowed")
            if room is not None and not fresh:
                self.moderator.admit(room, member, password)
            created = room is None
            if created or fresh:
                self.moderator.check_owned(member)
            if room is None:
                if len(self._rooms) >= self.max_rooms_on_server:
                    raise TooManyRooms(
                        f"the server has {len(self._rooms)} rooms, the most allowed; "
                        "/join an existing one"
                    )
                room = self._add_room(room_name)
                if history is not None:
                    room.seed(*history)
            followers = [d for d in devices if d is not member] if devices is not None else []
            for joining in (member, *followers):
                room.members[joining] = None
                joining.rooms[key] = room
            room.people += 1
            if created or fresh:
                self.moderator.created(room, member)
            self.bus.joined(member, room, created)
            self._announce(room, member, Joined(room.name, member.nick or ""))
            self._show(member, room, shown)
            for follower in followers:
                self._show(follower, room)
                if follower.current is None:  # in no room before: now in this one
                    follower.current = room
                    follower.tell(Current(room.name))
        if make_current:
            member.current = room
            member.tell(Current(room.name))
        self._save(member)

    def _show(
        self, member: Member, room: Room, shown: tuple[Sequence[Message], bool] | None = None
    ) -> None:
        """What a member that just joined a room sees of it: topic, history."""
        if room.topic:
            member.tell(TopicIs(room.name, room.topic, room.topic_by))
        if shown is not None:
            # Read from the store: what is stored but not delivered yet
            # arrives live, so it is not shown now as well.
            messages, older = shown
            if messages and messages[-1].id > room.seen:
                shown = [m for m in messages if m.id <= room.seen], older
        if shown is not None or room.recent:
            member.show_history(room, shown)

    def _save(self, member: Member) -> None:
        """Remember the rooms of ``member``'s account, through one of its
        connections that keeps them (not an IRC client's)."""
        for device in self.devices(member):
            if not device.chooses_rooms:
                self.saved.save(device)
                return

    def leave(self, member: Member, room_name: str | None = None) -> None:
        if room_name is None:
            room = self._current(member)
        else:
            key = name_key(room_name)
            found = member.rooms.get(key)
            if found is None:
                live = self._rooms.get(key)
                if live is not None and not self.moderator.hidden(live, member):
                    raise NotInRoom(f"you are not in #{live.name}")
                raise NoSuchRoom(f"no room #{room_name}")
            room = found
        self._leave(member, room, "")

    def _leave(self, member: Member, room: Room, reason: str) -> None:
        """Take ``member`` (each connection of its account) out of ``room``:
        the room, the member included, is told why (a leave, a kick, a ban)."""
        was_current = [d for d in self.devices(member) if d.current is room]
        self._announce(room, member, Left(room.name, member.nick or "", reason))
        self._remove(member, room)
        for device in was_current:
            # Fall back to the most recently joined room, if any.
            device.current = next(reversed(device.rooms.values()), None)
            device.tell(Current(device.current.name if device.current else None))
        self._save(member)

    def say(self, member: Member, text: str, *, action: bool = False, notice: bool = False) -> None:
        """Store a room message; everyone in the room sees it once it is stored."""
        room = self._current(member)
        rules = room.rules
        if rules.mutes or rules.modes.moderated:
            self.moderator.check_speak(room, member)
        if member.account is None:
            self.messages.say(member, room, text, action, notice)
            return
        # Which of the account's connections sent it, for its arrival (an
        # account may gain connections while it is on its way).
        assert member.key is not None
        where = (member.key, room.key)
        self._authors.setdefault(where, deque()).append(member)
        try:
            self.messages.say(
                member, room, text, action, notice, failed=lambda: self._unsent(member, *where)
            )
        except ChatError:
            self._unsent(member, *where)  # refused before it went to the store
            raise

    def direct(self, member: Member, to: str, text: str, *, notice: bool = False) -> None:
        """Store a private message; its reader (and its sender) see it once it is."""
        target = self._nicks.get(name_key(to))
        if target is None:
            raise NoSuchNick(f"nobody is called {to}")
        self.messages.direct(member, target, text, notice)

    def check_store(self) -> None:
        """Refuse a message while the store is far behind."""
        self.messages.check_store()

    def set_topic(self, member: Member, text: str) -> None:
        room = self._current(member)
        self.moderator.check_topic(room, member)
        room.topic, room.topic_by = text, member.nick
        self.store.save_room(RoomRecord(room.name, text, member.nick))
        self._fanout(room, TopicIs(room.name, text, member.nick, changed=True), member)

    def disconnect(self, member: Member, reason: str, *, release: bool = True) -> None:
        """Remove a member everywhere; tell each of its rooms why it left.

        ``release=False`` keeps the nickname taken in the cluster (it passes
        to another member of this node).

        A connection of an account connected here more than once goes
        quietly: the account stays in its rooms through the others.
        """
        self.watchers.watch(member, False)
        self.pushback.caught_up(member)
        if member.key is None:
            return
        self._unstamp(member)
        devices = member.devices
        if devices is not None:
            self._detach(member, devices)
            return
        if release and self.bus.elsewhere(member.key):
            self._went(member, reason)
            return
        told: set[Member] = set()  # readers whose codec says it once (Codec.one_quit)
        for room in list(member.rooms.values()):
            crowded = room.people > self.announce_limit
            self._remove(member, room)
            if not crowded:
                event = Left(room.name, member.nick or "", reason)
                send_all([m for m in room.members if m not in told], event)
                self.bus.publish(room, event)
                told.update(m for m in room.members if m.codec.one_quit)
        member.current = None
        del self._nicks[member.key]
        self.away.forget(member.key)
        if release:
            self.bus.released(member.key)
        member.key = None

    def _detach(self, member: Member, devices: list[Member]) -> None:
        """One connection of an account that has others here goes: out of
        the rooms they stay in, unannounced."""
        for room in list(member.rooms.values()):
            del room.members[member]
            del member.rooms[room.key]
        member.current = None
        devices.remove(member)
        member.devices = None
        assert member.key is not None
        if self._nicks.get(member.key) is member:
            self._nicks[member.key] = devices[0]
        if len(devices) == 1:
            devices[0].devices = None
        member.key = None

    def _went(self, member: Member, reason: str) -> None:
        """The account's last connection here goes, the account staying
        connected through other nodes: out of its rooms here, unannounced."""
        assert member.key is not None
        for room in list(member.rooms.values()):
            del room.members[member]
            del member.rooms[room.key]
            room.people -= 1
            self.bus.went(member, room)
        member.current = None
        del self._nicks[member.key]
        self.bus.released(member.key, reason)
        member.key = None

    # -- an account through other nodes (see Bus.elsewhere) ------------------------

    def follow(self, key: str, room_name: str) -> bool:
        """The account holding ``key`` joined a room through another node:
        its connections here follow it, unannounced, as a join on one of
        them would. False if there is nobody here to follow it."""
        holder = self._nicks.get(key)
        room = self._rooms.get(name_key(room_name))
        if holder is None or room is None or room.key in holder.rooms:
            return False
        devices = self.devices(holder)
        if len(holder.rooms) >= self.max_rooms_per_session:
            for device in devices:
                device.tell(
                    Error.of(TooManyRooms(f"not following into #{room.name}: too many rooms"))
                )
            return False
        for device in devices:
            room.members[device] = None
            device.rooms[room.key] = room
            device.tell(Joined(room.name, device.nick or ""))
            self._show(device, room)
            if device.current is None:
                device.current = room
                device.tell(Current(room.name))
        room.people += 1
        return True

    def unfollow(self, key: str, room_key: str) -> bool:
        """The account holding ``key`` left a room through another node (the
        room was told there): its connections here leave it too."""
        holder = self._nicks.get(key)
        room = holder.rooms.get(room_key) if holder is not None else None
        if holder is None or room is None:
            return False
        devices = self.devices(holder)
        was_current = [d for d in devices if d.current is room]
        for device in devices:
            del room.members[device]
            del device.rooms[room.key]
            if device.current is room:
                device.current = None
        room.people -= 1
        for device in was_current:
            device.current = next(reversed(device.rooms.values()), None)
            device.tell(Current(device.current.name if device.current else None))
        return True

    def tell_account(self, member: Member, event: Event, *, skip: Member | None = None) -> None:
        """An event for every connection of ``member``'s account, here and
        through other nodes (``skip``: one that knows already)."""
        for device in self.devices(member):
            if device is not skip:
                device.deliver(device.encode(event))
        if member.key is not None:
            self.bus.account_event(member.key, event)

    def watch_rooms(self, member: Member, on: bool) -> None:
        """Start or stop sending ``member`` the ``room`` events (``/rooms watch``)."""
        self.watchers.watch(member, on)

    def account_created(self, member: Member, account: int) -> None:
        """``member`` registered: it is in the new account, and so are its rooms."""
        member.account = account
        self._stamp(member)
        member.tell(Registered(member.nick or "", True))
        self.saved.save(member)

    def barrier(self, done: Callable[[], None]) -> None:
        """``done`` once everything said before is stored and delivered."""
        self.bus.barrier(done)

    # -- what arrives through the bus ------------------------------------------

    def arrived(self, event: Message, *, here: bool = True) -> bool:
        """A stored room message, to every member of its room here: the one
        way a room message reaches its readers. False if it did not (no such
        room here, or it was shown: a room joined again was seeded with it).
        ``here``: it was sent by a connection of this node (else its
        sender's connections here, if any, read it as anyone does)."""
        room_key, sender_key = name_key(event.room), name_key(event.sender)
        # Taken first, whatever happens to the message: the next one is the next's.
        author = self._author(sender_key, room_key) if here and self._authors else None
        room = self._rooms.get(room_key)
        if room is None or event.id <= room.seen:
            return False
        room.seen = event.id
        room.remember(event)
        members = room.members
        self.stats.messages_out += len(members)
        sender = self._nicks.get(sender_key) if here else None
        mentions = self._mentions(event, members, sender_key)
        if author is not None or mentions or (sender is not None and sender.devices is not None):
            self._arrived_apart(room, event, author, mentions, here)
        elif sender is None or sender not in members:
            send_all(members, event)
        elif sender.awaits_echo():
            # In its place among the replies to the sender's commands.
            others = [m for m in members if m is not sender]
            if sender.echoes:
                data = sender.codec.encode(event)
                sender.echo(data, room.key)
                send_all(others, event, encoded={sender.codec: data})
            else:
                sender.echo(b"", room.key)  # its place, with nothing in it
                send_all(others, event)
        elif sender.echoes:
            send_all(members, event)
        else:
            send_all([m for m in members if m is not sender], event)
        return True

    def _mentions(
        self, event: Message, members: dict[Member, None], sender_key: str
    ) -> list[Member]:
        """The members of the room whose nickname ``event`` mentions (the
        sender's connections never)."""
        found: list[Member] = []
        for holder in named(event.text, self._nicks):
            if holder.key != sender_key and (not found or holder not in found):
                found.extend(m for m in self.devices(holder) if m in members)
        return found

    def _arrived_apart(
        self, room: Room, event: Message, author: Member | None, mentions: list[Member], here: bool
    ) -> None:
        """A room message whose readers do not all get the same bytes:
        those it mentions get it marked so, and an account with several
        connections here gets it on each, its sending connection as its
        own message (``author``; None: unknown, so on all of them)."""
        readers = dict.fromkeys(room.members)
        encoded: dict[Codec, bytes] = {}
        if author is None and here:
            sender = self._nicks.get(name_key(event.sender))
            if sender is not None and sender.devices is None:
                author = sender
        if author is not None and author in readers:
            if author.awaits_echo():
                del readers[author]
                if author.echoes:
                    data = encoded[author.codec] = author.codec.encode(event)
                    author.echo(data, room.key)
                else:
                    author.echo(b"", room.key)
            elif not author.echoes:
                del readers[author]
        for member in mentions:
            readers.pop(member, None)
        send_all(readers, event, encoded=encoded)
        if mentions:
            send_all(mentions, dataclasses.replace(event, mention=True))

    def _author(self, sender_key: str, room_key: str) -> Member | None:
        """The connection that sent the next message of ``sender_key`` in a
        room, if its account has several here (see :meth:`say`)."""
        queue = self._authors.get((sender_key, room_key))
        if not queue:
            return None
        author = queue.popleft()
        if not queue:
            del self._authors[(sender_key, room_key)]
        return author

    def _unsent(self, member: Member, sender_key: str, room_key: str) -> None:
        """A message of ``member``'s failed to be stored: it will not arrive."""
        queue = self._authors.get((sender_key, room_key))
        if queue is not None and member in queue:
            queue.remove(member)
            if not queue:
                del self._authors[(sender_key, room_key)]

    def _sent(self, member: Member, record: StoredMessage) -> None:
        """A logged-in member's message is stored: its account has read its
        conversation up to it, and the account's other connections are told."""
        account = member.account
        if account is None:
            return
        self.store.save_read(account, record.conversation, record.id)
        if member.devices is not None or (member.key and self.bus.elsewhere(member.key)):
            if record.room is not None:
                event = Read(record.room, None, record.id)
            else:
                event = Read(None, record.to, record.id)
            self.tell_account(member, event, skip=member)

    def direct_arrived(self, event: Direct) -> None:
        """A private message for a member here, from anywhere: to each
        connection of its account."""
        target = self._nicks.get(name_key(event.to))
        if target is not None:
            for member in self.devices(target):
                member.deliver(member.encode(event))
                self.stats.messages_out += 1

    def direct_copy(self, event: Direct) -> None:
        """A private message sent through another node by an account that
        is connected here too: its connections here see it sent."""
        sender = self._nicks.get(name_key(event.sender))
        if sender is not None:
            for member in self.devices(sender):
                member.deliver(member.encode(event))
                self.stats.messages_out += 1

    def direct_sent(self, member: Member, event: Direct) -> None:
        """``member``'s private message is stored and on its way to its
        reader: to the sender, and to its account's other connections."""
        self.stats.messages_in += 1
        if name_key(event.to) == member.key:
            return  # to oneself it arrives as any other
        for device in self.devices(member):
            if device is not member:
                device.deliver(device.encode(event))
                self.stats.messages_out += 1
            elif member.echoes:
                member.tell(event)
                self.stats.messages_out += 1

    def event_arrived(self, room_key: str, event: Event) -> None:
        """A join, leave or topic from elsewhere, for the room's members here."""
        room = self._rooms.get(room_key)
        if room is None:
            return
        if isinstance(event, TopicIs):
            room.topic, room.topic_by = event.topic, event.by
        send_all(room.members, event)

    def rename_arrived(self, event: NickChanged, room_keys: Iterable[str]) -> None:
        """Someone elsewhere changed nickname: tell its rooms' members here."""
        audience: dict[Member, None] = {}
        for key in room_keys:
            room = self._rooms.get(key)
            if room is not None:
                audience.update(room.members)
        send_all(audience, event)

    def kick(self, key: str, reason: str) -> None:
        """Its account logged in elsewhere: end ``key``'s connections, nick kept."""
        self.end(key, reason, release=False)

    def room_changed(self, event: RoomChanged) -> None:
        """A room came into use or went out of use: tell the watchers (of a
        secret room, nobody)."""
        room = self._rooms.get(name_key(event.room))
        if room is None or not room.rules.modes.secret:
            self.watchers.tell(event)

    def moderated(self, data: list[Any]) -> None:
        """A moderation step from another node (see Moderator.arrived), or
        an away message (see AwayBook)."""
        if data[0] == "away":
            self.away.arrived(data)
        else:
            self.moderator.arrived(data)

    @staticmethod
    def ruled(room: Room, doc: str) -> None:
        """The rules the store keeps for a room being made live."""
        room.rules = RoomRules.load(doc)

    def expel(self, member: Member, room: Room, reason: str) -> None:
        """Take ``member`` out of ``room`` (a kick, a ban): the room, the
        member included, is told why, as for a leave."""
        if room.key not in member.rooms:
            return
        self._leave(member, room, reason)

    # -- rooms the bus makes live and forgets ------------------------------------

    def open_room(self, name: str) -> Room:
        """The room in memory, made live before anyone here joins it."""
        room = self._rooms.get(name_key(name))
        if room is None:
            if len(self._rooms) >= self.max_rooms_on_server:
                raise TooManyRooms(
                    f"this server has {len(self._rooms)} rooms live, the most allowed"
                )
            room = self._add_room(name)
        return room

    def describe(self, room: Room, name: str, topic: str, by: str | None) -> None:
        """What the store knows of a room being made live: its name and topic."""
        room.name, room.topic, room.topic_by = name, topic, by

    @staticmethod
    def seed(room: Room, messages: Sequence[StoredMessage], more: bool) -> None:
        """Merge stored messages with what the room already shows, in id order."""
        room.seed(messages, more)

    def close_room(self, room: Room) -> bool:
        """Forget a live room nobody here is in; False if it stays."""
        if room.members or room.key == DEFAULT_ROOM or self._rooms.get(room.key) is not room:
            return False
        del self._rooms[room.key]
        return True

    # -- internals -------------------------------------------------------

    def _current(self, member: Member) -> Room:
        if member.current is None:
            raise NotInRoom("you are in no room; /join one")
        return member.current

    def _add_room(self, name: str) -> Room:
        room = Room(name, self.history_on_join)
        self._rooms[room.key] = room
        return room

    def _remove(self, member: Member, room: Room) -> None:
        """``member``'s account leaves ``room``: each of its connections."""
        for device in self.devices(member):
            if room.key in device.rooms:
                del room.members[device]
                del device.rooms[room.key]
                if device.current is room:
                    device.current = None
        room.people -= 1
        rules = room.rules
        if rules.roles and member.account is None:
            self.moderator.left(member, room)
        self.bus.left(member, room)
        if not room.members and not rules.registered and not rules.plain:
            # A guest's room that empties keeps nothing of its rules here: it
            # stays (a topic) without modes that nobody may change any more.
            room.rules = RoomRules()

    def now(self) -> float:
        """The time stamp of a new message (seconds, to the millisecond)."""
        return round(self._clock() * 1000) / 1000  # round(t, 3), at half the cost

    def _announce(self, room: Room, member: Member, event: Joined | Left) -> None:
        """A join or leave: to the room, or only to the member (each of its
        connections) in a crowded room."""
        if room.people > self.announce_limit:
            for device in self.devices(member):
                device.tell(event)
        else:
            self._fanout(room, event, member)

    def _fanout(self, room: Room, event: Event, actor: Member | None = None) -> None:
        """Deliver an event to every member of a room here and publish it to
        its members elsewhere.

        ``actor``, the member whose command caused it, gets it as a reply
        while earlier commands of its are still pending, so that it comes in
        its place among the replies to its commands.
        """
        send_all(room.members, event, actor)
        self.bus.publish(room, event)
