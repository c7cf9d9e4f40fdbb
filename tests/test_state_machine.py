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

After every step it checks that the manager agrees with the model and that
its own indexes agree with each other: the nickname index holds exactly the
registered members, case-insensitively unique; a member's rooms are exactly
the rooms that list it; its current room is one of them (None when it has
none); every live room but the default one has a member or a topic; and
members that left appear nowhere.

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
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chatd.core.rooms import Member, RoomManager
from chatd.errors import (
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
    Registered,
    RoomList,
    TopicIs,
    WhoList,
    name_key,
    render,
)
from chatd.store import Done, MemoryStore, StoredMessage, StoreError

T = TypeVar("T")

SESSIONS = 4
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

slots = st.integers(0, SESSIONS - 1)
nicks = st.sampled_from(NICKS)
rooms = st.sampled_from(ROOMS)
texts = st.sampled_from(("hi", "hello there"))
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

    def __init__(self) -> None:
        super().__init__(Format.JSON)
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
        self.sessions = [Inbox() for _ in range(SESSIONS)]
        self.gone: list[Inbox] = []
        self.model: dict[Inbox, ModelMember] = {m: ModelMember() for m in self.sessions}
        self.nicks: dict[str, Inbox] = {}
        self.rooms: dict[str, ModelRoom] = {DEFAULT_ROOM: ModelRoom(DEFAULT_ROOM)}
        #: Every room message written, by room key (what the store holds).
        self.said: dict[str, list[Message]] = {}
        self.queued: list[Pending] = []
        self.written: list[tuple[Pending, bool]] = []
        self.next_id = 1
        self.expected: dict[Inbox, list[tuple[str, dict[str, Any]]]] = {}
        #: The message ids each member has been shown during its current stay in a room.
        self.shown: dict[tuple[Inbox, str], set[int]] = {}

    def new_manager(self) -> RoomManager:
        return RoomManager(
            max_rooms_per_session=self.per_session,
            max_rooms_on_server=self.max_rooms,
            announce_limit=self.announce_limit,
            history_on_join=self.history,
            store=self.store,
            clock=lambda: NOW,
        )

    # -- predictions -------------------------------------------------------

    def tell(self, member: Inbox, event: Event) -> None:
        """Predict a ``reply`` to ``member``."""
        self.shows(member, event)
        self.expected.setdefault(member, []).append(("reply", _json(event)))

    def send(self, members: list[Inbox], event: Event) -> None:
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
        if len(room.members) > self.announce_limit:
            self.tell(member, event)
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

    def join_error(self, member: Inbox, name: str, create: bool) -> type[ChatError] | None:
        state, key = self.model[member], name_key(name)
        room = self.rooms.get(key)
        if create and room is not None:
            return RoomExists
        if room is None or key not in state.rooms:
            if len(state.rooms) >= self.per_session:
                return TooManyRooms
            if room is None and len(self.rooms) >= self.max_rooms:
                return TooManyRooms
        return None

    def joined(self, member: Inbox, name: str) -> None:
        state, key = self.model[member], name_key(name)
        assert state.nick is not None
        room = self.rooms.get(key)
        if room is None or key not in state.rooms:
            if room is None:
                # A session fetches the history of a room that is not in memory.
                room = self.rooms[key] = ModelRoom(name, owner=state.account)
                if self.history:
                    said = self.said.get(key, [])
                    room.recent, room.older = said[-self.history :], len(said) > self.history
            room.members.append(member)
            state.rooms.append(key)
            self.shown[member, key] = set()
            self.announce(room, member, Joined(room.name, state.nick))
            if room.topic:
                self.tell(member, TopicIs(room.name, room.topic, room.topic_by))
            if room.recent:
                for event in room.recent:
                    self.tell(member, dataclasses.replace(event, history=True))
                older, count = room.older, len(room.recent)
                before = room.recent[0].id if older else None
                self.tell(member, History(room.name, None, count, older, before))
        state.current = key
        self.tell(member, Current(room.name))

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
            self.send(room.members, event)
        else:
            assert pending.to is not None
            audience = [pending.sender]
            to = self.model[pending.to]
            if to.key is not None and self.nicks.get(to.key) is pending.to:
                audience.append(pending.to)
            self.send(list(dict.fromkeys(audience)), event)

    def removed(self, member: Inbox, key: str) -> None:
        state, room = self.model[member], self.rooms[key]
        room.members.remove(member)
        state.rooms.remove(key)
        if state.current == key:
            state.current = None
        if not room.members and key != DEFAULT_ROOM and not room.topic and room.owner is None:
            del self.rooms[key]

    def registered(self, member: Inbox, nick: str) -> None:
        state = self.model[member]
        state.nick, state.key = nick, name_key(nick)
        self.nicks[state.key] = member
        self.tell(member, Registered(nick, state.account is not None))
        self.joined(member, DEFAULT_ROOM)

    def renamed(self, member: Inbox, nick: str) -> None:
        state = self.model[member]
        assert state.nick is not None
        assert state.key is not None
        old = state.nick
        del self.nicks[state.key]
        state.nick, state.key = nick, name_key(nick)
        self.nicks[state.key] = member
        audience = {member: None}
        for key in state.rooms:
            audience.update(dict.fromkeys(self.rooms[key].members))
        self.send(list(audience), NickChanged(old, nick))

    def disconnected(self, member: Inbox, reason: str) -> None:
        state = self.model[member]
        if state.key is None:
            return
        assert state.nick is not None
        for key in list(state.rooms):
            room = self.rooms[key]
            crowded = len(room.members) > self.announce_limit
            self.removed(member, key)
            if not crowded:
                self.send(room.members, Left(room.name, state.nick, reason))
        state.current = None
        del self.nicks[state.key]
        state.key = None

    def retire(self, member: Inbox) -> None:
        """The session has ended: a new connection takes its place."""
        index = self.sessions.index(member)
        self.gone.append(member)
        fresh = self.sessions[index] = Inbox()
        self.model[fresh] = ModelMember()

    def newcomer(self) -> Inbox | None:
        return next((m for m in self.sessions if self.model[m].key is None), None)

    def anyone(self) -> bool:
        return bool(self.nicks)

    def registered_session(self, slot: int) -> Inbox | None:
        """The member in ``slot`` or, if it has no nickname, the next one that has."""
        for i in range(SESSIONS):
            member = self.sessions[(slot + i) % SESSIONS]
            if self.model[member].key is not None:
                return member
        return None

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
        elif key in self.nicks:
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
        error: type[ChatError] | None = None
        leaves_account = False
        if key != state.key:
            if key in self.accounts:
                error = NickRegistered
            leaves_account = state.account is not None
        holder = self.nicks.get(key)
        if error is None and holder is not None and holder is not member:
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
        was_current = state.current == key
        self.announce(left, member, Left(left.name, state.nick))
        self.removed(member, key)
        if was_current:
            state.current = state.rooms[-1] if state.rooms else None
            current = self.rooms[state.current].name if state.current else None
            self.tell(member, Current(current))

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
        self.submit(Pending(event, member, room=state.current))

    @precondition(lambda self: self.anyone())
    @rule(slot=slots, to=nicks, text=texts)
    def direct(self, slot: int, to: str, text: str) -> None:
        member = self.registered_session(slot)
        if member is None:
            return
        target = self.nicks.get(name_key(to))
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
        expected_list = RoomList(tuple((r.name, len(r.members)) for _, r in listed))
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
            names = sorted((self.model[m].nick or "" for m in found.members), key=str.lower)
            assert [(w.room, w.nicks) for w in answer] == [(found.name, tuple(names))]
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

    @rule(slot=slots, account=st.sampled_from(ACCOUNTS))
    def login(self, slot: int, account: str) -> None:
        """A correct password: the manager logs the session in to the account."""
        member = self.sessions[slot]
        state = self.model[member]
        nick, account_id = self.accounts[name_key(account)]
        if state.account is not None and state.key == name_key(nick):
            return  # a session answers: already logged in
        holder = self.nicks.get(name_key(nick))
        self.manager.login(member, nick, account_id)
        if holder is not None and holder is not member:
            self.disconnected(holder, KICKED)
            assert holder.kicks == [KICKED]
            # The kicked session ends: its own disconnect finds nothing to do.
            self.manager.disconnect(holder, KICKED)
            self.retire(holder)
        state.account = account_id
        if state.key is None:
            self.registered(member, nick)
        else:
            if state.nick != nick:
                self.renamed(member, nick)
            self.tell(member, Registered(nick, True))

    @precondition(lambda self: any(self.model[m].account for m in self.sessions))
    @rule(slot=slots)
    def logout(self, slot: int) -> None:
        member = self.sessions[slot]
        state = self.model[member]
        if state.account is None:
            return  # a session answers: not logged in
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
            assert member.take() == sent, f"what was sent to {self.model.get(member)}"
        assert not self.expected
        for member in self.sessions:
            assert member.kicks == []

    @invariant()
    def manager_agrees_with_the_model(self) -> None:
        manager = self.manager
        assert manager._nicks == self.nicks
        assert manager.members() == list(manager._nicks.values())
        for member in self.sessions:
            state = self.model[member]
            assert member.key == state.key
            if state.key is not None:
                assert member.nick == state.nick
            assert list(member.rooms) == state.rooms
            assert (member.current.key if member.current else None) == state.current
            assert member.account == state.account
        assert list(manager._rooms) == list(self.rooms)
        for key, room in manager._rooms.items():
            expected = self.rooms[key]
            assert room.name == expected.name
            assert list(room.members) == expected.members
            assert (room.topic, room.topic_by) == (expected.topic, expected.topic_by)
            assert (list(room.recent), room.older) == (expected.recent, expected.older)
        for nick in NICKS:
            assert manager.find(nick) is self.nicks.get(name_key(nick))
        for name in ROOMS:
            assert manager.is_live(name) == (name_key(name) in self.rooms)

    @invariant()
    def manager_is_consistent(self) -> None:
        manager = self.manager
        nicks, live = manager._nicks, manager._rooms
        for key, member in nicks.items():
            assert member.nick is not None
            assert key == member.key == name_key(member.nick)
            assert len(member.rooms) <= manager.max_rooms_per_session
            for room_key, room in member.rooms.items():
                assert live.get(room_key) is room
                assert member in room.members
            if member.rooms:
                assert member.current is not None
                assert member.rooms.get(member.current.key) is member.current
            else:
                assert member.current is None
        assert len(set(map(id, nicks.values()))) == len(nicks)
        assert DEFAULT_ROOM in live
        assert manager.room_count == len(live) <= manager.max_rooms_on_server
        assert manager.live_rooms() == list(live.values())
        for key, room in live.items():
            assert key == room.key == name_key(room.name)
            assert room.members or room.topic or room.rules.registered or key == DEFAULT_ROOM
            for member in room.members:
                assert member.key is not None
                assert nicks.get(member.key) is member
                assert member.rooms.get(key) is room
            assert len(room.recent) <= manager.history_on_join
            ids = [event.id for event in room.recent]
            assert ids == sorted(set(ids)), f"#{room.name} remembers messages {ids}"
        for member in [*self.gone, *(m for m in self.sessions if m.key is None)]:
            assert member.key is None
            assert member.rooms == {}
            assert member.current is None
            assert all(m is not member for m in nicks.values())
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
)
RoomMachine.TestCase.settings = SETTINGS
test_room_manager = RoomMachine.TestCase

QueuedStoreMachine.TestCase.settings = SETTINGS
test_room_manager_with_a_queued_store = QueuedStoreMachine.TestCase
