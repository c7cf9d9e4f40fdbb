"""The bus: where this node's room model meets the rest of the chat.

A :class:`~chatd.core.rooms.RoomManager` holds the members connected to this
daemon. Everything that would reach beyond them goes through its
:class:`Bus`: a nickname taken, a room joined or left, an event published
to a room, a message's way from the store to its readers, a private message
to someone who may be elsewhere, the ``/rooms`` and ``/who`` answers, and
the barrier that says everything said before has been delivered.

Two implementations: :class:`~chatd.core.local.LocalBus` for one daemon on
its own store (everything is here: most calls do nothing or answer from the
manager), and :class:`~chatd.cluster.bus.ClusterBus`, which spans daemons
through Redis. The room manager and the dispatcher never ask which one they
have.

The bus calls the manager back through :class:`Hub` (a message or an event
that arrived, a room to make live or to forget). The calls of both sides
that do not wait are plain methods; only the bus's answers to commands are
``async``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, Protocol

from chatd.core.model import Member, Room
from chatd.protocol import (
    Direct,
    Event,
    Message,
    NickChanged,
    RoomChanged,
    RoomList,
    SessionEntry,
    WhoList,
)
from chatd.store import RoomRecord, Store, StoredMessage


class Opening(NamedTuple):
    """A room being made live for a join: its history, if the store gave it,
    and whether the join must still create it (else it exists already);
    ``fresh``: it exists here only (made live for this join) and is in use
    nowhere, so the join brings it into use (its creator owns it)."""

    history: tuple[Sequence[StoredMessage], bool] | None
    create: bool
    fresh: bool = False


class Person(NamedTuple):
    """Someone connected anywhere, as moderation needs to know them."""

    nick: str
    key: str
    #: The account it is logged in to (None: a guest).
    account: int | None
    #: A server operator.
    oper: bool
    #: The keys of the rooms it is in.
    rooms: frozenset[str]


class Hub(Protocol):
    """What a bus may do to the room manager (see RoomManager for each)."""

    store: Store
    history_on_join: int

    def arrived(self, event: Message, *, here: bool = True) -> bool: ...
    def direct_arrived(self, event: Direct) -> None: ...
    def direct_copy(self, event: Direct) -> None: ...
    def follow(self, key: str, room_name: str) -> bool: ...
    def unfollow(self, key: str, room_key: str) -> bool: ...
    def tell_nick(self, key: str, event: Event) -> bool: ...
    def end_session(self, key: str, session_id: str, reason: str) -> bool: ...
    def direct_sent(self, member: Member, event: Direct) -> None: ...
    def direct(self, member: Member, to: str, text: str, *, notice: bool = False) -> None: ...
    def event_arrived(self, room_key: str, event: Event) -> None: ...
    def rename_arrived(self, event: NickChanged, room_keys: Iterable[str]) -> None: ...
    def room_changed(self, event: RoomChanged) -> None: ...
    def kick(self, key: str, reason: str) -> None: ...
    def moderated(self, data: list[Any]) -> None: ...
    def find(self, nick: str) -> Member | None: ...
    def check_guest_nick(self, nick: str) -> None: ...
    def live(self, name: str) -> Room | None: ...
    def open_room(self, name: str) -> Room: ...
    def describe(self, room: Room, name: str, topic: str, by: str | None) -> None: ...
    def seed(self, room: Room, messages: Sequence[StoredMessage], more: bool) -> None: ...
    def ruled(self, room: Room, doc: str) -> None: ...
    def close_room(self, room: Room) -> bool: ...
    def disconnect(self, member: Member, reason: str, *, release: bool = True) -> None: ...
    def members(self) -> list[Member]: ...
    def devices(self, member: Member) -> list[Member]: ...
    def live_rooms(self) -> list[Room]: ...
    def room_list(self) -> RoomList: ...
    def who(self, member: Member, room_name: str | None) -> WhoList: ...
    def check_store(self) -> None: ...
    def now(self) -> float: ...


class Bus(abc.ABC):
    """This node's link to the others (none, for one daemon)."""

    @property
    def trouble(self) -> str:
        """Why the bus cannot be used now ("" when it can): for /healthz."""
        return ""

    @abc.abstractmethod
    async def start(self) -> None:
        """Take this node's place (before the listeners open)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave (after every session has ended)."""

    # -- from the room manager: never wait ----------------------------------

    @abc.abstractmethod
    def restored(self, last_id: int) -> None:
        """The store's last message id, when the manager takes up from it."""

    @abc.abstractmethod
    def keeps(self, record: RoomRecord) -> bool:
        """Whether a stored room is live here from the start, member or not."""

    @abc.abstractmethod
    def number(self) -> int:
        """The id of a new message (0: the store numbers it)."""

    @abc.abstractmethod
    def echo_room(self, room_key: str) -> str | None:
        """The room whose echo ends a message's operation, if it has one
        (see Member.begin_op): the sender's own copy comes back through the bus."""

    @abc.abstractmethod
    def stored(self, member: Member, seq: int, record: StoredMessage) -> bool:
        """The store has a room message: see that it reaches its readers and
        that the sender's operation ``seq`` ends. False: it was not
        delivered (it was shown already), and is not counted."""

    @abc.abstractmethod
    def joined(self, member: Member, room: Room, created: bool) -> None:
        """``member`` joined ``room`` (``created``: it came into use here)."""

    @abc.abstractmethod
    def left(self, member: Member, room: Room) -> None:
        """``member`` left ``room``; the bus decides whether the room goes."""

    @abc.abstractmethod
    def released(self, key: str, reason: str = "") -> None:
        """A nickname (its key) is free again; ``reason``: why its holder
        went, for any room that still has it (see Bus.went)."""

    # -- an account connected through several nodes (a cluster's) ---------------

    def elsewhere(self, key: str) -> bool:
        """Whether the account holding ``key`` here is connected through
        other nodes too (then its last connection here goes quietly)."""
        return False

    def present(self, key: str, room_key: str) -> bool:
        """Whether the account holding ``key`` is in a room through another
        node (then its first connection here joins it quietly)."""
        return False

    def went(self, member: Member, room: Room) -> None:  # noqa: B027 (optional hook)
        """``member``, the account's last connection here, left ``room``
        quietly: the account stays in it through other nodes."""

    def account_event(self, key: str, event: Event) -> None:  # noqa: B027 (optional hook)
        """An event for every connection of an account (a ``read``): this
        node's are told already; the other nodes of the account tell theirs."""

    def session_id(self, number: int) -> str:
        """The id of this node's ``number``-th logged-in connection (``/sessions``)."""
        return f"s{number}"

    def session_opened(self, member: Member) -> None:  # noqa: B027 (optional hook)
        """``member`` logged in (its session id and time are set)."""

    def session_closed(self, member: Member) -> None:  # noqa: B027 (optional hook)
        """``member``, logged in, logs out or goes."""

    async def sessions(self, key: str) -> list[SessionEntry] | None:
        """Every session of the account holding ``key``, through every node
        (None: only this node has any, the room manager knows them)."""
        return None

    async def end_session(self, key: str, session_id: str, reason: str) -> bool:
        """End a session of the account on another node; False if there is none."""
        return False

    @abc.abstractmethod
    def publish(self, room: Room, event: Event) -> None:
        """A join, leave or topic in ``room``, for its members elsewhere."""

    @abc.abstractmethod
    def broadcast(self, room_key: str | None, data: list[Any]) -> None:
        """A moderation step (see chatd.core.moderation) for the other nodes:
        those with ``room_key`` live, or all of them (None)."""

    @abc.abstractmethod
    def barrier(self, done: Callable[[], None]) -> None:
        """``done()`` once everything said before is stored and delivered."""

    # -- from the dispatcher: answers that may wait --------------------------

    @abc.abstractmethod
    async def claim(
        self,
        member: Member,
        nick: str,
        *,
        account: int | None = None,
        takeover: bool = False,
        guest: bool = True,
    ) -> None:
        """Take ``nick`` for ``member`` wherever nicknames are shared; raises
        NickTaken or NickRegistered. ``takeover``: a login, which ends the
        account's other connection."""

    @abc.abstractmethod
    def open(self, name: str, *, create: bool) -> AbstractAsyncContextManager[Opening]:
        """Make a room that is not live here ready for a join, for the
        length of the block, in which the caller joins it."""

    @abc.abstractmethod
    async def direct(self, member: Member, to: str, text: str, *, notice: bool = False) -> None:
        """A private message to ``to``, wherever it is connected."""

    @abc.abstractmethod
    async def person(self, nick: str) -> Person | None:
        """Whoever holds ``nick``, wherever it is connected (None: nobody)."""

    @abc.abstractmethod
    async def room_list(self) -> RoomList:
        """The rooms in use and how many are in each."""

    @abc.abstractmethod
    async def who(self, member: Member, room_name: str | None) -> WhoList:
        """Who is in a room (``None``: ``member``'s current room)."""
