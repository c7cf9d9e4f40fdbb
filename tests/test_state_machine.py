"""RoomManager under random sequences of commands from several sessions at once.

A hypothesis state machine drives one :class:`RoomManager` (small limits, an
in-memory store with two accounts) from a few in-memory members, calling it
the way a session does: register, rename, create, join, leave, say, direct
messages, topics, queries, login, logout and disconnect. Nicknames and room
names come from small pools with case variants, so collisions and limits
come up often. Every command either succeeds or raises a
:class:`~chatd.errors.ChatError`, and a command that fails changes nothing
and sends nothing.

Alongside, the machine keeps a plain model (who holds which nickname, who is
in which room in join order, topics, what was said where) and predicts each
command's outcome and every event each member receives, on which channel
(``deliver`` or ``reply``) and in which order. So a room message reaches each
member of its room once, sender included, and nobody else; a direct message
reaches its two parties only; a member that left hears nothing more.

An account may be connected on several sessions at once: a login to an
account connected here already adds the session to it, as one more of its
connections, in all the account's rooms at once (each told to it alone,
with what the account has not read of it). They share the nickname and the
rooms: a join or a leave on one is made for all of them and announced once,
a room message reaches each of them (a text naming a reader is marked as a
mention for it), a direct message reaches every connection of both
accounts, a message sent tells the sender's other connections that the
account has read up to it, and one of them that goes leaves quietly while
the others stay. A room counts an account once. As with the dispatcher, a
login may wait for the store between reading the unread messages it shows
and logging in, and the account's first connection then joins its saved
rooms one by one, waiting for the store before a room whose unread messages
it shows or that is not in memory; the rest of the machine goes on
meanwhile. One slot's sessions do not echo (an IRC client without
echo-message): they are not sent their own room messages, though the
account's other connections are.

After every step it checks that the manager agrees with the model and that
its own indexes agree with each other: the nickname index holds exactly the
registered members (an account's first connection), case-insensitively
unique; a member's rooms are exactly the rooms that list it; its current room
is one of them (None when it has none); an account's connections share one
list of them; a room counts the accounts and guests in it; every live room
but the default one has a member or a topic; and members that left appear
nowhere.

A second machine runs the same commands against a store that writes and
calls back only when a rule says so (as the SQLite store does, from its
writer thread), so messages are delivered after later joins, leaves and
disconnects. Rooms then remember each message once, in id order, and a
member is shown a message at most once per stay in a room.

``CHATD_STATEFUL_EXAMPLES`` raises the number of examples for a longer hunt.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chatd.core.model import Member
from chatd.core.reading import Reading
from chatd.core.rooms import RoomManager
from chatd.errors import (
    BadArgs,
    ChatError,
    NickRegistered,
    NickTaken,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    NotOp,
    RoomExists,
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
    Read,
    Registered,
    RoomList,
    TopicIs,
    WhoList,
    name_key,
    render,
)
from chatd.store import AccountRooms, Done, MemoryStore, StoredMessage, StoreError

T = TypeVar("T")

SESSIONS = 4
#: The slot whose sessions do not echo their own messages.
QUIET_SLOT = SESSIONS - 1
NOW = 1000.0

NICKS = (
    "alice",
    "Alice",
    "ALICE",
    "bob",
    "BOB",
    "carol",
    "Carol",
    "dan",
    "eve",
    "Eve",
    "fay",
    "gus",
)
#: Registered accounts: guests may not take these nicknames.
ACCOUNTS = ("Carol", "Dan")
ROOMS = ("general", "General", "GENERAL", "dev", "Dev", "ops", "random", "Random", "lobby", "help")
#: The texts said, with the nicknames (keys) each mentions.
MENTIONS: dict[str, frozenset[str]] = {
    "hi": frozenset(),
    "hello there": frozenset(),
    "hi carol": frozenset({"carol"}),
    "@Dan look": frozenset({"dan"}),
    "bob. thanks bob": frozenset({"bob"}),
}

slots = st.integers(0, SESSIONS - 1)
nicks = st.sampled_from(NICKS)
rooms = st.sampled_from(ROOMS)
texts = st.sampled_from(tuple(MENTIONS))
topics = st.sampled_from(("", "news", "ship it"))
reasons = st.sampled_from(("quit", "connection lost"))

KICKED = "logged in from elsewhere"
WRITE_FAILED = "the database cannot be written: disk I/O error"


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (the memory store's)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise AssertionError("the coroutine suspended")


class Inbox(Member):
    """A member that keeps what it is sent, with the call that sent it."""

    __slots__ = ("chunks", "kicks")

    def __init__(self, *, echoes: bool = True) -> None:
        super().__init__(Format.JSON)
        self.echoes = echoes
        self.chunks: list[tuple[str, bytes]] = []
        self.kicks: list[str] = []

    def deliver(self, data: bytes) -> None:
        self.chunks.append(("deliver", data))

    def reply(self, data: bytes) -> None:
        self.chunks.append(("reply", data))

    def kick(self, reason: str) -> None:
        self.kicks.append(reason)

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        events = [(how, json.loads(data)) for how, data in self.chunks]
        self.chunks.clear()
        return events


class QueuedStore(MemoryStore):
    """A memory store that writes and answers only when told to, in order.

    As with the SQLite store, a message becomes visible to readers when it is
    written, and its ``done`` runs later, on the loop.
    """

    def __init__(self) -> None:
        super().__init__(clock=lambda: NOW)
        #: Appended, not yet written.
        self.queued: list[tuple[StoredMessage, Done]] = []
        #: Written (or failed), ``done`` not yet called.
        self.written: list[tuple[Done, BaseException | None]] = []

    def append(self, message: StoredMessage, done: Done) -> None:
        self.queued.append((message, done))

    @property
    def backlog(self) -> int:
        return len(self.queued) + len(self.written)

    def write(self, fail: bool) -> StoredMessage:
        message, done = self.queued.pop(0)
        if fail:
            self.written.append((done, StoreError(WRITE_FAILED)))
        else:
            super().append(message, lambda exc: None)
            self.written.append((done, None))
        return message

    def complete(self) -> None:
        done, exc = self.written.pop(0)
        done(exc)


@dataclasses.dataclass
class ModelMember:
    nick: str | None = None
    key: str | None = None
    #: Room keys in join order.
    rooms: list[str] = dataclasses.field(default_factory=list)
    current: str | None = None
    account: int | None = None


@dataclasses.dataclass
class ModelRoom:
    name: str
    #: Connections in join order (an account's several, each).
    members: list[Inbox] = dataclasses.field(default_factory=list)
    topic: str = ""
    topic_by: str | None = None
    #: The account that brought it into use, which owns it (+t: only it sets
    #: the topic, and the room stays when it empties).
    owner: int | None = None
    #: The last messages delivered (shown on join); ``older``: the store has more.
    recent: list[Message] = dataclasses.field(default_factory=list)
    older: bool = False


@dataclasses.dataclass
class Pending:
    """A message the store has not confirmed yet."""

    event: Message | Direct
    sender: Inbox
    #: The room's key, or the recipient of a direct message.
    room: str | None = None
    to: Inbox | None = None
    #: Its sender was one of several connections of its account.
    device: bool = False


@dataclasses.dataclass
class Login:
    """A session logging in, between reading what its account has not read
    of the rooms it lands in and logging in (the dispatcher's ``enter``)."""

    nick: str
    account: int
    #: The account's saved rooms and read markers, read first.
    saved: AccountRooms
    markers: dict[str, int]
    #: What it is shown of each room it lands in at once, by key.
    shown: dict[str, tuple[Sequence[Message], bool]]


@dataclasses.dataclass
class Rejoin:
    """An account's first connection, on its way into the account's saved
    rooms (the dispatcher's ``_rejoin``): it runs no other command meanwhile."""

    rooms: list[str]
    #: The room to make current at the end.
    current: str | None
    #: The account's read markers when it logged in, by room key.
    markers: dict[str, int]
    #: The next of ``rooms`` to join.
    index: int = 0
    #: The last room joined so far (made current at the end, if the saved
    #: current room is not rejoined).
    last: str | None = None


class RoomMachine(RuleBasedStateMachine):
    """Sessions in fixed slots (a session that ends is replaced by a new one)."""

    #: Messages wait in the store until rules write them and call back.
    queued_store: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.store = QueuedStore() if self.queued_store else MemoryStore(clock=lambda: NOW)
        self.per_session, self.max_rooms, self.announce_limit, self.history = 2, 3, 2, 2
        self.manager = self.new_manager()
        self.accounts: dict[str, tuple[str, int]] = {}
        for nick in ACCOUNTS:
            account = run_now(self.store.create_account(nick, "not a real hash"))
            assert account is not None
            self.accounts[name_key(nick)] = (account.nick, account.id)
        self.sessions = [Inbox(echoes=i != QUIET_SLOT) for i in range(SESSIONS)]
        self.gone: list[Inbox] = []
        self.model: dict[Inbox, ModelMember] = {m: ModelMember() for m in self.sessions}
        #: Each nickname's connections, first connected first (the first is
        #: the one the manager's nickname index holds).
        self.conns: dict[str, list[Inbox]] = {}
        self.rooms: dict[str, ModelRoom] = {DEFAULT_ROOM: ModelRoom(DEFAULT_ROOM)}
        #: Every room message written, by room key (what the store holds).
        self.said: dict[str, list[Message]] = {}
        self.queued: list[Pending] = []
        self.written: list[tuple[Pending, bool]] = []
        self.next_id = 1
        self.expected: dict[Inbox, list[tuple[str, dict[str, Any]]]] = {}
        #: The message ids each member has been shown during its current stay in a room.
        self.shown: dict[tuple[Inbox, str], set[int]] = {}
        #: Sessions still joining their account's rooms after a login.
        self.rejoins: dict[Inbox, Rejoin] = {}
        #: Sessions logging in, waiting for the store.
        self.logins: dict[Inbox, Login] = {}
        #: Room messages a member may be sent or not (see completed).
        self.unsure: dict[Inbox, set[int]] = {}

    def new_manager(self) -> RoomManager:
        return RoomManager(
            max_rooms_per_session=self.per_session,
            max_rooms_on_server=self.max_rooms,
            announce_limit=self.announce_limit,
            history_on_join=self.history,
            store=self.store,
            clock=lambda: NOW,
        )

    @property
    def holders(self) -> dict[str, Inbox]:
        """Each nickname's holder, as the manager's index has it."""
        return {key: conns[0] for key, conns in self.conns.items()}

    def devices(self, member: Inbox) -> list[Inbox]:
        """The connections of ``member``'s account (itself alone if it has no others)."""
        key = self.model[member].key
        conns = self.conns.get(key) if key is not None else None
        if conns is None or len(conns) < 2:
            return [member]
        assert member in conns
        return conns

    def people(self, room: ModelRoom) -> int:
        """Accounts and guests in the room: an account's connections count once."""
        return len({self.model[m].key for m in room.members})

    # -- predictions -------------------------------------------------------

    def tell(self, member: Inbox, event: Event) -> None:
        """Predict a ``reply`` to ``member``."""
        self.shows(member, event)
        self.expected.setdefault(member, []).append(("reply", _json(event)))

    def send(self, members: Sequence[Inbox], event: Event) -> None:
        """Predict a ``deliver`` to each of ``members``."""
        for member in members:
            self.shows(member, event)
            self.expected.setdefault(member, []).append(("deliver", _json(event)))

    def shows(self, member: Inbox, event: Event) -> None:
        """A member sees a room message once per stay in the room, live or as history."""
        if isinstance(event, Message):
            shown = self.shown[member, name_key(event.room)]
            nick = self.model[member].nick
            assert event.id not in shown, f"{nick} is shown message {event.id} twice"
            shown.add(event.id)

    def announce(self, room: ModelRoom, member: Inbox, event: Joined | Left) -> None:
        """To the room; in a crowd only to the account's connections, as a reply."""
        if self.people(room) > self.announce_limit:
            for device in self.devices(member):
                self.tell(device, event)
        else:
            self.send(room.members, event)

    def call(self, error: type[ChatError] | None, command: Callable[[], object]) -> bool:
        """Run a command that should raise ``error`` (or succeed); True if it did."""
        raised: ChatError | None = None
        try:
            command()
        except ChatError as exc:
            raised = exc
        wanted = "success" if error is None else error.__name__
        assert (None if raised is None else type(raised)) is error, f"{wanted}, got {raised!r}"
        return raised is None

    def follows(self, member: Inbox, key: str) -> bool:
        """Whether a join of room ``key`` only takes ``member`` where its
        account is already (through its other connections)."""
        return (
            key in self.rooms
            and key not in self.model[member].rooms
            and any(key in self.model[d].rooms for d in self.devices(member))
        )

    def join_error(self, member: Inbox, name: str, create: bool) -> type[ChatError] | None:
        state, key = self.model[member], name_key(name)
        room = self.rooms.get(key)
        if create and room is not None:
            return RoomExists
        if self.follows(member, key):
            return None
        if room is None or key not in state.rooms:
            if len(state.rooms) >= self.per_session:
                return TooManyRooms
            if room is None and len(self.rooms) >= self.max_rooms:
                return TooManyRooms
        return None

    def joined(
        self,
        member: Inbox,
        name: str,
        shown: tuple[Sequence[Message], bool] | None = None,
        *,
        make_current: bool = True,
    ) -> None:
        """A join: of the account (each of its connections, announced once),
        or of one connection where its account is already (told to it alone).
        ``make_current=False``: a login's rejoin, which leaves the current
        room as it is (the login makes one current at its end)."""
        state, key = self.model[member], name_key(name)
        assert state.nick is not None
        room = self.rooms.get(key)
        if self.follows(member, key):
            # It follows its account there, told alone.
            assert room is not None
            room.members.append(member)
            state.rooms.append(key)
            self.shown[member, key] = set()
            self.tell(member, Joined(room.name, state.nick))
            self.show(member, room, shown)
        elif room is None or key not in state.rooms:
            if room is None:
                # A session fetches the history of a room that is not in memory.
                room = self.rooms[key] = ModelRoom(name, owner=state.account)
                if self.history:
                    said = self.said.get(key, [])
                    room.recent, room.older = said[-self.history :], len(said) > self.history
            followers = [d for d in self.devices(member) if d is not member]
            for joining in (member, *followers):
                room.members.append(joining)
                self.model[joining].rooms.append(key)
                self.shown[joining, key] = set()
            self.announce(room, member, Joined(room.name, state.nick))
            self.show(member, room, shown)
            for follower in followers:
                self.show(follower, room)
                other = self.model[follower]
                if other.current is None:
                    # In no room until now, it has one: current (as a join
                    # makes it), while a connection in a room keeps its own.
                    other.current = key
                    self.tell(follower, Current(room.name))
        assert room is not None
        if make_current:
            state.current = key
            self.tell(member, Current(room.name))

    def show(
        self, member: Inbox, room: ModelRoom, shown: tuple[Sequence[Message], bool] | None = None
    ) -> None:
        """What a member that just joined a room is told of it: topic, history."""
        if room.topic:
            self.tell(member, TopicIs(room.name, room.topic, room.topic_by))
        recent, older = shown if shown is not None else (room.recent, room.older)
        if shown is not None:
            # Read from the store: what is stored but not delivered yet
            # comes live instead.
            waiting = {p.event.id for p in self.queued} | {p.event.id for p, _ in self.written}
            recent = [e for e in recent if e.id not in waiting]
        if shown is not None or recent:
            for event in recent:
                self.tell(member, dataclasses.replace(event, history=True))
            before = recent[0].id if older and recent else None
            self.tell(member, History(room.name, None, len(recent), older, before))

    def submit(self, pending: Pending) -> None:
        if self.queued_store:
            self.queued.append(pending)
        else:
            self.wrote(pending, failed=False)
            self.completed(pending, failed=False)

    def wrote(self, pending: Pending, *, failed: bool) -> None:
        if pending.room is not None and not failed:
            assert isinstance(pending.event, Message)
            self.said.setdefault(pending.room, []).append(pending.event)

    def completed(self, pending: Pending, *, failed: bool) -> None:
        """The store's answer: deliver the message (or tell its sender it failed)."""
        event = pending.event
        if failed:
            text = f"your message was not sent: {WRITE_FAILED}"
            self.tell(pending.sender, Error.of(StorageUnavailable(text)))
        elif isinstance(event, Message):
            assert pending.room is not None
            room = self.rooms.get(pending.room)
            if room is None:
                return  # the room was forgotten meanwhile
            if room.recent and event.id <= room.recent[-1].id:
                # Written before the room came back, it is in the history its
                # members were shown: not again.
                return
            if self.history:
                room.older = room.older or len(room.recent) == self.history
                room.recent = [*room.recent, event][-self.history :]
            sender_key = name_key(event.sender)
            unsure: tuple[Inbox | None, ...] = ()
            if not pending.device and self.model[pending.sender].key != sender_key:
                # Its sender has left the nickname. The manager knows a
                # sender alone by nickname (as in a cluster): one that does
                # not echo may be sent its message after all, and another
                # such that holds the nickname now (alone) may be taken for it.
                holder = self.holders.get(sender_key)
                if holder is not None and len(self.devices(holder)) > 1:
                    holder = None
                unsure = (pending.sender, holder)
            mentioned = MENTIONS[event.text] - {sender_key}
            marked = dataclasses.replace(event, mention=True)
            for reader in room.members:
                if reader in unsure and not reader.echoes:
                    self.unsure.setdefault(reader, set()).add(event.id)
                elif reader is not pending.sender or reader.echoes:  # else it shows it itself
                    self.send([reader], marked if self.model[reader].key in mentioned else event)
            self.read_by(pending.sender, Read(event.room, None, event.id))
        else:
            assert pending.to is not None
            # Every connection of the sender's account, and of the account
            # that holds the recipient's nickname now if it is the
            # recipient's; else the recipient alone, if it is still here.
            sender, to = pending.sender, self.model[pending.to]
            audience = [d for d in self.devices(sender) if d is not sender or sender.echoes]
            holder = self.holders.get(name_key(event.to))
            readers = self.devices(holder) if holder is not None else []
            if pending.to in readers or (
                to.account is not None and readers and self.model[readers[0]].account == to.account
            ):
                audience.extend(readers)
            elif to.key is not None:
                audience.append(pending.to)
            self.send(list(dict.fromkeys(audience)), event)
            self.read_by(sender, Read(None, event.to, event.id))

    def read_by(self, sender: Inbox, event: Read) -> None:
        """A logged-in sender's message is delivered: its account has read
        the conversation up to it, which its other connections are told."""
        if self.model[sender].account is not None:
            self.send([d for d in self.devices(sender) if d is not sender], event)

    def account_left(self, member: Inbox, key: str) -> None:
        """``member``'s account leaves a room: each of its connections there."""
        room = self.rooms[key]
        for device in self.devices(member):
            state = self.model[device]
            if key in state.rooms:
                room.members.remove(device)
                state.rooms.remove(key)
                if state.current == key:
                    state.current = None
        if not room.members and key != DEFAULT_ROOM and not room.topic and room.owner is None:
            del self.rooms[key]

    def registered(
        self,
        member: Inbox,
        nick: str,
        shown: tuple[Sequence[Message], bool] | None = None,
        *,
        make_current: bool = True,
    ) -> None:
        state = self.model[member]
        state.nick, state.key = nick, name_key(nick)
        self.conns[state.key] = [member]
        self.tell(member, Registered(nick, state.account is not None))
        self.joined(member, DEFAULT_ROOM, shown, make_current=make_current)

    def renamed(self, member: Inbox, nick: str) -> None:
        state = self.model[member]
        assert state.nick is not None
        assert state.key is not None
        old = state.nick
        if len(self.devices(member)) == 1:
            del self.conns[state.key]
            state.nick, state.key = nick, name_key(nick)
            self.conns[state.key] = [member]
        audience = {member: None}
        for key in state.rooms:
            audience.update(dict.fromkeys(self.rooms[key].members))
        self.send(list(audience), NickChanged(old, nick))

    def disconnected(self, member: Inbox, reason: str) -> None:
        """The member goes. An account's connection that leaves others goes
        quietly from the rooms they are in; from a room none of them is in
        (they are still joining it), the account goes as its last one would."""
        state = self.model[member]
        self.rejoins.pop(member, None)
        self.logins.pop(member, None)
        if state.key is None:
            return
        assert state.nick is not None
        group = self.conns[state.key]
        for key in list(state.rooms):
            room = self.rooms[key]
            if any(key in self.model[d].rooms for d in group if d is not member):
                room.members.remove(member)
                state.rooms.remove(key)
                continue
            crowded = self.people(room) > self.announce_limit
            room.members.remove(member)
            state.rooms.remove(key)
            if not room.members and key != DEFAULT_ROOM and not room.topic and room.owner is None:
                del self.rooms[key]
            if not crowded:
                self.send(room.members, Left(room.name, state.nick, reason))
        state.current = None
        group.remove(member)
        if not group:
            del self.conns[state.key]
        state.key = None

    def retire(self, member: Inbox) -> None:
        """The session has ended: a new connection takes its place."""
        index = self.sessions.index(member)
        self.gone.append(member)
        fresh = self.sessions[index] = Inbox(echoes=index != QUIET_SLOT)
        self.model[fresh] = ModelMember()

    def newcomer(self) -> Inbox | None:
        return next(
            (m for m in self.sessions if self.model[m].key is None and not self.busy(m)), None
        )

    def busy(self, member: Inbox) -> bool:
        """Whether the session is logging in (its next command waits)."""
        return member in self.logins or member in self.rejoins

    def anyone(self) -> bool:
        return bool(self.conns)

    def registered_session(self, slot: int) -> Inbox | None:
        """The member in ``slot`` or, if it has no nickname (or is busy
        logging in), the next one that has and is not."""
        for i in range(SESSIONS):
            member = self.sessions[(slot + i) % SESSIONS]
            if self.model[member].key is not None and not self.busy(member):
                return member
        return None

    # -- a login's way into its account's rooms (the dispatcher's) ---------

    def rejoin(self, member: Inbox, *, resume: bool = False) -> None:
        """Join the next rooms of ``member``'s login, up to one that waits
        for the store (unread history to fetch, or a room not in memory),
        then make the account's current room current. ``resume``: the
        store has answered for the room it waits on."""
        plan, state = self.rejoins[member], self.model[member]
        if resume:
            name = plan.rooms[plan.index]
            plan.index += 1
            shown = None
            if name_key(name) in plan.markers:
                shown = self.unread(name_key(name), plan.markers[name_key(name)])
            # With its unread history fetched, a room its account joined
            # meanwhile is skipped; one fetched from the store is joined
            # (made current, if it is in it already).
            if shown is None or name_key(name) not in state.rooms:
                self.rejoin_room(member, name, shown)
        while plan.index < len(plan.rooms):
            name = plan.rooms[plan.index]
            key = name_key(name)
            if key not in state.rooms:
                if key in plan.markers or not self.manager.is_live(name):
                    return  # the store answers later
                self.rejoin_room(member, name, None)
            plan.index += 1
        del self.rejoins[member]
        # One room is made current at the end: the saved current one, or
        # else the last one rejoined, or else any (it was in no room).
        current = plan.current
        if current is None or name_key(current) not in state.rooms:
            current = plan.last
        if current is None and state.current is None and state.rooms:
            current = self.rooms[state.rooms[-1]].name
        wanted = name_key(current) if current is not None else None
        if current is not None and wanted in state.rooms and state.current != wanted:
            self.manager.join(member, current)  # only makes it current
            self.joined(member, current)

    def unread(self, key: str, marker: int) -> tuple[Sequence[Message], bool]:
        """What a login shows of a room the account read up to ``marker``:
        the messages after it, or the last ``history`` if fewer."""
        said = self.said.get(key, [])
        unread = sum(1 for m in said if m.id > marker)
        keep = max(unread, self.history)
        shown = said[-keep:] if keep else []
        # As the dispatcher reads it from the store.
        read = run_now(Reading(self.manager).unread_history(key, marker))
        assert read is not None
        assert (list(read[0]), read[1]) == (shown, len(shown) < len(said))
        return read

    def rejoin_room(
        self, member: Inbox, name: str, shown: tuple[Sequence[Message], bool] | None
    ) -> None:
        manager, key = self.manager, name_key(name)
        error = self.join_error(member, name, create=False)
        raised: ChatError | None = None
        try:
            if manager.is_live(name):
                manager.join(member, name, shown=shown, make_current=False)
            else:
                history = None
                if manager.history_on_join:
                    history = run_now(self.store.recent(key, manager.history_on_join))
                manager.join(member, name, history=history, shown=shown, make_current=False)
        except ChatError as exc:
            raised = exc
            member.tell(Error.of(exc))  # the login goes on with the next room
        assert (None if raised is None else type(raised)) is error, f"{error}, got {raised!r}"
        if raised is None:
            self.joined(member, name, shown, make_current=False)
            self.rejoins[member].last = name
        else:
            self.tell(member, Error.of(raised))

    # -- commands ----------------------------------------------------------

    @initialize(
        per_session=st.sampled_from((2, 3)),
        max_rooms=st.sampled_from((3, 4)),
        announce_limit=st.sampled_from((1, 2, 3)),
        history=st.sampled_from((2, 0)),
    )
    def limits(self, per_session: int, max_rooms: int, announce_limit: int, history: int) -> None:
        """Small limits, so that the paths past them come up."""
        self.per_session, self.max_rooms = per_session, max_rooms
        self.announce_limit, self.history = announce_limit, history
        self.manager = self.new_manager()
        assert self.manager.members() == []
        assert [r.name for r in self.manager.live_rooms()] == [DEFAULT_ROOM]

    @precondition(lambda self: self.newcomer() is not None)
    @rule(nick=nicks)
    def register(self, nick: str) -> None:
        """The first session without a nickname picks one."""
        member = self.newcomer()
        assert member is not None
        key = name_key(nick)
        error: type[ChatError] | None = None
        if key in self.accounts:
            error = NickRegistered
        elif key in self.conns:
            error = NickTaken
        if self.call(error, lambda: self.manager.register(member, nick)):
            self.registered(member, nick)

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, nick=nicks)
    def rename(self, slot: int, nick: str) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        state, key = self.model[member], name_key(nick)
        devices = self.devices(member)
        error: type[ChatError] | None = None
        leaves_account = False
        if len(devices) > 1 and nick != state.nick:
            error = BadArgs  # its account's other connections keep the nickname
        elif key != state.key:
            if key in self.accounts:
                error = NickRegistered
            leaves_account = state.account is not None
        holder = self.holders.get(key)
        if error is None and holder is not None and holder not in devices:
            error = NickTaken
        if self.call(error, lambda: self.manager.rename(member, nick)):
            self.renamed(member, nick)
            if leaves_account:
                state.account = None
                self.tell(member, Registered(nick, False))

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, room=rooms, create=st.booleans())
    def join(self, slot: int, room: str, create: bool) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        manager = self.manager

        def command() -> None:
            # As a session does: a room not in memory starts with the store's history.
            history = None
            if not manager.is_live(room) and manager.history_on_join:
                history = run_now(self.store.recent(name_key(room), manager.history_on_join))
            manager.join(member, room, create=create, history=history)

        if self.call(self.join_error(member, room, create), command):
            self.joined(member, room)

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, room=st.none() | rooms)
    def leave(self, slot: int, room: str | None) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        state = self.model[member]
        error: type[ChatError] | None = None
        key = state.current if room is None else name_key(room)
        if room is None and key is None:
            error = NotInRoom
        elif key not in state.rooms:
            error = NotInRoom if key in self.rooms else NoSuchRoom
        if not self.call(error, lambda: self.manager.leave(member, room)):
            return
        assert key is not None
        assert state.nick is not None
        left = self.rooms[key]
        was_current = [d for d in self.devices(member) if self.model[d].current == key]
        self.announce(left, member, Left(left.name, state.nick))
        self.account_left(member, key)
        for device in was_current:
            # Each falls back to the room it joined last, if any.
            other = self.model[device]
            other.current = other.rooms[-1] if other.rooms else None
            self.tell(device, Current(self.rooms[other.current].name if other.current else None))

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, text=texts, action=st.booleans())
    def say(self, slot: int, text: str, action: bool) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        state = self.model[member]
        error = NotInRoom if state.current is None else None
        if not self.call(error, lambda: self.manager.say(member, text, action=action)):
            return
        assert state.current is not None
        assert state.nick is not None
        room = self.rooms[state.current]
        event = Message(self.next_id, NOW, room.name, state.nick, text, action)
        self.next_id += 1
        device = len(self.devices(member)) > 1
        self.submit(Pending(event, member, room=state.current, device=device))

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, to=nicks, text=texts)
    def direct(self, slot: int, to: str, text: str) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        target = self.holders.get(name_key(to))
        error = NoSuchNick if target is None else None
        if not self.call(error, lambda: self.manager.direct(member, to, text)):
            return
        assert target is not None
        sender, recipient = self.model[member].nick, self.model[target].nick
        assert sender is not None
        assert recipient is not None
        event = Direct(self.next_id, NOW, sender, recipient, text)
        self.next_id += 1
        self.submit(Pending(event, member, to=target))

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, text=topics)
    def set_topic(self, slot: int, text: str) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        state = self.model[member]
        error: type[ChatError] | None = None
        if state.current is None:
            error = NotInRoom
        elif self.rooms[state.current].owner not in (None, state.account):
            error = NotOp  # +t in a registered room: only its owner here
        if not self.call(error, lambda: self.manager.set_topic(member, text)):
            return
        assert state.current is not None
        room = self.rooms[state.current]
        room.topic, room.topic_by = text, state.nick
        self.send(room.members, TopicIs(room.name, text, state.nick, changed=True))

    @rule(slot=slots, room=st.none() | rooms)
    def look(self, slot: int, room: str | None) -> None:
        """The queries: room list, who, topic. They answer; they send nothing."""
        listed = sorted(self.rooms.items())
        expected_list = RoomList(tuple((r.name, self.people(r)) for _, r in listed))
        assert self.manager.room_list() == expected_list
        member = self.registered_session(slot)
        if member is None:
            return
        state = self.model[member]
        key = state.current if room is None else name_key(room)
        found = None if key is None else self.rooms.get(key)
        error: type[ChatError] | None = None
        if found is None:
            error = NotInRoom if room is None else NoSuchRoom
        answer: list[WhoList] = []
        if self.call(error, lambda: answer.append(self.manager.who(member, room))):
            assert found is not None
            names = {self.model[m].nick or "" for m in found.members}  # an account once
            assert [(w.room, w.nicks) for w in answer] == [
                (found.name, tuple(sorted(names, key=str.lower)))
            ]
        current = None if state.current is None else self.rooms[state.current]
        topic: list[TopicIs] = []
        if self.call(
            NotInRoom if current is None else None,
            lambda: topic.append(self.manager.topic_of(member)),
        ):
            assert current is not None
            assert topic == [TopicIs(current.name, current.topic, current.topic_by)]

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, reason=reasons)
    def disconnect(self, slot: int, reason: str) -> None:
        member = self.sessions[slot]
        self.manager.disconnect(member, reason)
        self.disconnected(member, reason)
        self.retire(member)

    @rule(slot=slots, account=st.sampled_from(ACCOUNTS), wait=st.booleans())
    def login(self, slot: int, account: str, wait: bool) -> None:
        """A correct password: the session reads what the account has not
        read of the rooms it lands in, then (``wait``: after the store has
        answered, later) logs in (see :meth:`logged_in`)."""
        member = self.sessions[slot]
        state = self.model[member]
        if self.busy(member):
            return  # still logging in: its next command waits
        nick, account_id = self.accounts[name_key(account)]
        key = name_key(nick)
        if state.account is not None and state.key == key:
            return  # a session answers: already logged in
        # What the dispatcher reads first: the account's saved rooms, read markers.
        saved = run_now(self.store.account_rooms(account_id))
        markers = run_now(self.store.read_markers(account_id))
        holder = self.connected(member, account_id, key)
        landing = list(self.model[holder].rooms) if holder is not None else []
        if state.key is None:
            landing.append(DEFAULT_ROOM)
        shown = {k: self.unread(k, markers[k]) for k in landing if k in markers}
        login = Login(nick, account_id, saved, markers, shown)
        if wait and shown:
            self.logins[member] = login
        else:
            self.logged_in(member, login)

    @precondition(lambda self: bool(self.logins))
    @rule(pick=slots)
    def login_resumes(self, pick: int) -> None:
        """The store has answered a session that is logging in: it does."""
        waiting = list(self.logins)
        member = waiting[pick % len(waiting)]
        self.logged_in(member, self.logins.pop(member))

    def connected(self, member: Inbox, account: int, key: str) -> Inbox | None:
        """The connection of ``account`` that a login of ``member`` adds it to, if any."""
        holder = self.holders.get(key)
        if holder is None or holder is member or self.model[holder].account != account:
            return None
        return None if member in self.devices(holder) else holder

    def logged_in(self, member: Inbox, login: Login) -> None:
        """The manager logs the session in: as one more connection of the
        account, in all its rooms at once, or as its first (when the session
        then joins the account's saved rooms, see :meth:`rejoin`)."""
        state, key = self.model[member], name_key(login.nick)
        holder = self.holders.get(key)
        self.manager.login(member, login.nick, login.account, login.shown, login.saved.current)
        if holder is not None and holder is not member:
            if self.model[holder].account == login.account and state.key != key:
                self.added(member, holder, login)
                return
            for device in list(self.devices(holder)):
                self.disconnected(device, KICKED)
                assert device.kicks == [KICKED]
                # The kicked session ends: its own disconnect finds nothing to do.
                self.manager.disconnect(device, KICKED)
                self.retire(device)
        if state.key is not None and state.key != key and len(self.devices(member)) > 1:
            # It leaves an account connected elsewhere too: as a new session.
            self.disconnected(member, f"logged in as {login.nick}")
        state.account = login.account
        if state.key is None:
            # General is made current at once only if it is the one to be.
            current = login.saved.current
            lands = current is None or name_key(current) == DEFAULT_ROOM
            self.registered(member, login.nick, login.shown.get(DEFAULT_ROOM), make_current=lands)
        else:
            if state.nick != login.nick:
                self.renamed(member, login.nick)
            self.tell(member, Registered(login.nick, True))
        self.rejoins[member] = Rejoin(list(login.saved.rooms), login.saved.current, login.markers)
        self.rejoin(member)

    def added(self, member: Inbox, holder: Inbox, login: Login) -> None:
        """``member`` is one more connection of the account ``holder`` is
        connected to: it leaves what it was, and is in the account's rooms,
        each told to it alone, with the account's saved current room (if
        the account is in it) or ``holder``'s current."""
        state, held = self.model[member], self.model[holder]
        if state.key is not None:
            self.disconnected(member, f"logged in as {login.nick}")
        assert held.nick is not None
        assert held.key is not None
        state.nick, state.key, state.account = held.nick, held.key, held.account
        self.conns[held.key].append(member)
        self.tell(member, Registered(held.nick, True))
        for key in held.rooms:
            room = self.rooms[key]
            room.members.append(member)
            state.rooms.append(key)
            self.shown[member, key] = set()
            self.tell(member, Joined(room.name, held.nick))
            self.show(member, room, login.shown.get(key))
        current = login.saved.current
        landing = name_key(current) if current is not None else None
        state.current = landing if landing in held.rooms else held.current
        if state.current is None and held.rooms:
            state.current = held.rooms[-1]  # its holder is still on its way in
        self.tell(member, Current(self.rooms[state.current].name if state.current else None))

    @precondition(lambda self: bool(self.rejoins))
    @rule(pick=slots)
    def rejoin_step(self, pick: int) -> None:
        """The store answers a session that is joining its account's rooms."""
        waiting = list(self.rejoins)
        self.rejoin(waiting[pick % len(waiting)], resume=True)

    @precondition(lambda self: bool(self.said))
    @rule(slot=slots, back=st.integers(0, 2))
    def mark_read(self, slot: int, back: int) -> None:
        """/read in the current room, as far as the store is concerned (a
        login then shows the account what it has not read)."""
        member = self.registered_session(slot)
        if member is None:
            return
        state = self.model[member]
        said = self.said.get(state.current or "", [])
        if state.account is None or state.current is None or len(said) <= back:
            return
        self.store.save_read(state.account, state.current, said[-1 - back].id)

    @precondition(lambda self: any(len(conns) > 1 for conns in self.conns.values()))
    @rule(slot=slots, pick=slots)
    def kick_session(self, slot: int, pick: int) -> None:
        """/kick-session: a connection ends another of its account's."""
        member = self.registered_session(slot)
        if member is None or len(self.devices(member)) < 2:
            return
        others = [d for d in self.devices(member) if d is not member]
        target = others[pick % len(others)]
        state = self.model[member]
        assert state.key is not None
        reason = f"ended by another session of {state.nick}"
        assert self.manager.end_session(state.key, target.session_id, reason)
        self.disconnected(target, reason)
        assert target.kicks == [reason]
        self.retire(target)

    @precondition(lambda self: any(self.model[m].account for m in self.sessions))
    @rule(slot=slots)
    def logout(self, slot: int) -> None:
        member = self.sessions[slot]
        state = self.model[member]
        if state.account is None or self.busy(member):
            return  # a session answers: not logged in (or waits: still logging in)
        nick = state.nick or ""
        self.manager.logout(member)
        self.disconnected(member, "logged out")
        state.account = None
        self.tell(member, LoggedOut(nick))

    @precondition(lambda self: bool(self.queued))
    @rule(fail=st.booleans())
    def store_writes(self, fail: bool) -> None:
        """The store writes the oldest queued message (visible to readers from now)."""
        assert isinstance(self.store, QueuedStore)
        pending = self.queued.pop(0)
        assert self.store.write(fail).id == pending.event.id
        self.wrote(pending, failed=fail)
        self.written.append((pending, fail))

    @precondition(lambda self: bool(self.written))
    @rule()
    def store_calls_back(self) -> None:
        """The oldest write's ``done`` runs: the message is delivered now."""
        assert isinstance(self.store, QueuedStore)
        self.store.complete()
        pending, failed = self.written.pop(0)
        self.completed(pending, failed=failed)

    # -- checks ------------------------------------------------------------

    @invariant()
    def everyone_got_what_was_predicted(self) -> None:
        for member in [*self.sessions, *self.gone]:
            sent = self.expected.pop(member, [])
            unsure = self.unsure.pop(member, set())
            got = [
                (how, event)
                for how, event in member.take()
                if not (event["type"] == "message" and event["id"] in unsure)
            ]
            assert got == sent, f"what was sent to {self.model.get(member)}"
        assert not self.expected
        assert not self.unsure
        for member in self.sessions:
            assert member.kicks == []

    @invariant()
    def manager_agrees_with_the_model(self) -> None:
        manager = self.manager
        assert manager._nicks == self.holders
        assert manager.members() == list(manager._nicks.values())
        for member in self.sessions:
            state = self.model[member]
            assert member.key == state.key
            if state.key is not None:
                assert member.nick == state.nick
            assert list(member.rooms) == state.rooms
            assert (member.current.key if member.current else None) == state.current
            assert member.account == state.account
            devices = self.devices(member)
            assert member.devices == (devices if len(devices) > 1 else None)
        assert list(manager._rooms) == list(self.rooms)
        for key, room in manager._rooms.items():
            expected = self.rooms[key]
            assert room.name == expected.name
            assert list(room.members) == expected.members
            assert room.people == self.people(expected)
            assert (room.topic, room.topic_by) == (expected.topic, expected.topic_by)
            assert (list(room.recent), room.older) == (expected.recent, expected.older)
        for nick in NICKS:
            assert manager.find(nick) is self.holders.get(name_key(nick))
        for name in ROOMS:
            assert manager.is_live(name) == (name_key(name) in self.rooms)

    @invariant()
    def manager_is_consistent(self) -> None:
        manager = self.manager
        nicks, live = manager._nicks, manager._rooms
        for key, holder in nicks.items():
            devices = manager.devices(holder)
            assert devices[0] is holder
            assert len({d.session_id for d in devices}) == len(devices)
            for member in devices:
                assert member.devices is holder.devices
                assert member.nick is not None
                assert member.nick == holder.nick
                assert key == member.key == name_key(member.nick)
                assert member.account == holder.account
                assert len(member.rooms) <= manager.max_rooms_per_session
                for room_key, room in member.rooms.items():
                    assert live.get(room_key) is room
                    assert member in room.members
                if member.rooms and member not in self.rejoins:
                    assert member.current is not None
                    assert member.rooms.get(member.current.key) is member.current
                elif member.current is not None:
                    # A login on its way into its rooms makes one current
                    # at its end; in none meanwhile, or in one it is in.
                    assert member.rooms.get(member.current.key) is member.current
        assert len(set(map(id, nicks.values()))) == len(nicks)
        assert DEFAULT_ROOM in live
        assert manager.room_count == len(live) <= manager.max_rooms_on_server
        assert manager.live_rooms() == list(live.values())
        for key, room in live.items():
            assert key == room.key == name_key(room.name)
            assert room.members or room.topic or room.rules.registered or key == DEFAULT_ROOM
            assert room.people == len({m.key for m in room.members})
            for member in room.members:
                assert member.key is not None
                assert member in manager.sessions(member.key)
                assert member.rooms.get(key) is room
            assert len(room.recent) <= manager.history_on_join
            ids = [event.id for event in room.recent]
            assert ids == sorted(set(ids)), f"#{room.name} remembers messages {ids}"
        for member in [*self.gone, *(m for m in self.sessions if m.key is None)]:
            assert member.key is None
            assert member.rooms == {}
            assert member.current is None
            assert member.devices is None
            assert all(member not in manager.devices(m) for m in nicks.values())
            assert all(member not in room.members for room in live.values())


def _json(event: Event) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(render(event, Format.JSON))
    return result


class QueuedStoreMachine(RoomMachine):
    """The same, with messages stored and delivered later, interleaved with the rest."""

    queued_store = True


def test_a_message_written_before_its_room_returns_is_shown_once() -> None:
    store = QueuedStore()
    manager = RoomManager(store=store, clock=lambda: NOW)
    alice, bob = Inbox(), Inbox()
    manager.register(alice, "alice")
    manager.register(bob, "bob")
    manager.join(alice, "dev")
    manager.say(alice, "hi")
    store.write(fail=False)  # readers see it from now on; its callback is still to come
    manager.leave(alice, "dev")  # nobody left and no topic: #dev is forgotten
    # bob's session joins a room that is not in memory, with its history.
    history = run_now(store.recent("dev", manager.history_on_join))
    bob.take()
    manager.join(bob, "dev", history=history)
    store.complete()
    shown = [event["id"] for _, event in bob.take() if event["type"] == "message"]
    assert shown == [1]
    (dev,) = (room for room in manager.live_rooms() if room.key == "dev")
    assert [message.id for message in dev.recent] == [1]


SETTINGS = settings(
    max_examples=int(os.environ.get("CHATD_STATEFUL_EXAMPLES", "200")),
    stateful_step_count=40,
    deadline=None,
    # A failure is shrunk alone, and without the explain phase (which traces
    # every line): else shrinking here takes minutes, past the test's timeout.
    phases=tuple(phase for phase in Phase if phase is not Phase.explain),
    report_multiple_bugs=False,
)
RoomMachine.TestCase.settings = SETTINGS
test_room_manager = RoomMachine.TestCase

QueuedStoreMachine.TestCase.settings = SETTINGS
test_room_manager_with_a_queued_store = QueuedStoreMachine.TestCase
