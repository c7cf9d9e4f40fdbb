"""What the room model is made of: members, rooms, stored messages as events.

A :class:`Member` is one participant as the room model sees it (a session on
any transport, a connection of another front-end, or a list in a test); a
:class:`Room` is its members, topic and last messages. Only the
:class:`~chatd.core.rooms.RoomManager` changes them; the members own their
codec and the calls that deliver to them.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

from chatd.core.rules import RoomRules
from chatd.protocol import Direct, Event, Format, History, Message, name_key
from chatd.protocol.codec import Codec, codec_for
from chatd.store import StoredMessage


class Member:
    """One participant as the room manager sees it.

    The manager owns ``nick``, ``key``, ``rooms``, ``current`` and
    ``account``; the member owns ``codec`` and the delivery calls. The
    manager talks to it through calls that never block:

    * ``deliver(data)`` for what others caused (room messages, joins, DMs):
      the member may drop itself if it cannot keep up, but must not change
      the manager's state from inside the call (the manager may be
      iterating a room);
    * ``reply(data)`` for the answer to the member's own command: never
      dropped; the member paces its own reading instead.

    ``batch`` is the member's side of the fast path of fan-out: a list the
    member has open for the current loop pass (see
    :class:`~chatd.core.fanout.Batches`), or None. While it is set, fan-out
    appends the bytes to it instead of calling ``deliver``; the member
    counts them when it takes the batch, or when :meth:`close_batch` is
    called.
    """

    __slots__ = (
        "account",
        "batch",
        "codec",
        "current",
        "devices",
        "echoes",
        "key",
        "nick",
        "oper",
        "rooms",
        "session_id",
        "since",
    )

    #: The client chooses its rooms itself (an IRC client): registering puts
    #: it in no room, logging in rejoins none of its account's rooms, and its
    #: joins and leaves do not change the rooms its account keeps.
    chooses_rooms: ClassVar[bool] = False

    def __init__(self, fmt: Format = Format.TEXT) -> None:
        self.codec: Codec = codec_for(fmt)
        self.nick: str | None = None
        self.key: str | None = None
        self.rooms: dict[str, Room] = {}
        self.current: Room | None = None
        #: The id of the account this member is logged in to (None: a guest).
        self.account: int | None = None
        #: Logged in to a server operator's account (see chatd.core.moderation).
        self.oper = False
        self.batch: list[bytes] | None = None
        #: This member is sent its own messages (room lines and DMs) as
        #: everyone else is; False for a client that shows what it sent
        #: itself (an IRC client without ``echo-message``).
        self.echoes = True
        #: The connections of this member's account on this daemon, this
        #: one included, when there are two or more (one list, shared by
        #: them all); None: this connection alone. They share the
        #: nickname, the account and the rooms (see RoomManager).
        self.devices: list[Member] | None = None
        #: The id /sessions shows ("" until logged in), and when it logged in.
        self.session_id = ""
        self.since = 0.0

    @property
    def address(self) -> str:
        """The client's IP address, which bans can match ("" if it has none)."""
        return ""

    @property
    def kind(self) -> str:
        """The transport it came by (``tcp``, ``tls``, ``ws``, ``irc``, ``ircs``)."""
        return ""

    @property
    def fmt(self) -> Format:
        """The form of this member's output (``/format``)."""
        return self.codec.fmt

    @fmt.setter
    def fmt(self, fmt: Format) -> None:
        self.codec = codec_for(fmt)

    def deliver(self, data: bytes) -> None:
        """Queue what others caused. Never blocks; may drop the member."""
        raise NotImplementedError

    def close_batch(self) -> None:
        """Fan-out ran out of credit: count what went into the batch, and
        take the rest of the pass through ``deliver``."""
        self.batch = None

    def reply(self, data: bytes) -> None:
        """Queue an answer to this member's own command. Never blocks or drops."""
        raise NotImplementedError

    def encode(self, event: Event) -> bytes:
        """An event for this member alone, as its codec writes it (b"": none).

        Fan-out shares one encoding per codec among many members; what goes
        to one member only (replies, a DM, an invitation) comes through here,
        so a front-end may word it for its reader (IRC's numerics name the
        client)."""
        return self.codec.encode(event)

    def tell(self, event: Event) -> None:
        """Reply with an event, in this member's codec."""
        data = self.encode(event)
        if data:
            self.reply(data)

    def show_history(self, room: Room, shown: tuple[Sequence[Message], bool] | None = None) -> None:
        """A room just joined: its last messages (or ``shown``, with
        whether older ones exist), then the History marker."""
        recent, older = shown if shown is not None else (room.recent, room.older)
        for event in recent:
            self.reply(self.encode(dataclasses.replace(event, history=True)))
        before = recent[0].id if older and recent else None
        self.tell(History(room.name, None, len(recent), older, before))

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

    def awaits_echo(self) -> bool:
        """Some message of this member's ends with its echo (begin_op with
        ``echo_room``): its own room messages go to :meth:`echo`, not to
        :meth:`deliver`."""
        return False

    def echo(self, data: bytes, room_key: str) -> None:
        """This member's own room message, come back through the bus."""
        self.deliver(data)

    def end_op(self, seq: int, data: bytes | None = None) -> None:
        """Operation ``seq`` is over: its own events were delivered; ``data``
        is its reply, if it has one (an error, a pong), to go in its place."""
        if data is not None:
            self.reply(data)


class Room:
    __slots__ = (
        "key",
        "members",
        "name",
        "older",
        "people",
        "recent",
        "rules",
        "seen",
        "topic",
        "topic_by",
    )

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.key = name_key(name)
        #: Members in join order (a dict used as an ordered set).
        self.members: dict[Member, None] = {}
        #: How many accounts and guests those members are (an account's
        #: connections count once).
        self.people = 0
        self.topic = ""
        self.topic_by: str | None = None
        #: The last messages, shown on join; ``older``: the store has more.
        self.recent: deque[Message] = deque(maxlen=history)
        self.older = False
        #: The id of the last message delivered or seeded from the store (ids
        #: only grow): a message at or below it is not delivered again.
        self.seen = 0
        #: Who may do what here (owner, roles, modes, bans): see chatd.core.rules.
        self.rules = RoomRules()

    def remember(self, event: Message) -> None:
        recent = self.recent
        if recent.maxlen:
            if len(recent) == recent.maxlen:
                self.older = True
            recent.append(event)

    def seed(self, messages: Sequence[StoredMessage], more: bool) -> None:
        """Merge stored messages with what the room already shows, in id order."""
        merged = {event.id: event for event in self.recent}
        for m in messages:
            if m.id not in merged and isinstance(event := stored_event(m), Message):
                merged[m.id] = event
        self.recent.clear()
        self.older = False
        for message_id in sorted(merged):
            self.remember(merged[message_id])
        self.older = self.older or more
        if self.recent:
            self.seen = max(self.seen, self.recent[-1].id)


def stored_event(m: StoredMessage, *, history: bool = False) -> Message | Direct:
    """The event of a stored message."""
    if m.room is not None:
        return Message(m.id, m.ts, m.room, m.sender, m.text, m.action, history, m.notice)
    return Direct(m.id, m.ts, m.sender, m.to or "", m.text, history, m.notice)
