"""The store interface and the records it keeps, shared by every store.

:class:`Store` is the small interface the rest of the daemon uses; the
records (:class:`StoredMessage`, :class:`Account`, :class:`RoomRecord`,
:class:`AccountRooms`) are what goes in and comes out of it.

Writes that must be durable before anyone sees them (messages) take a
``done`` callback: it runs on the event loop after the commit, in the order
the writes were made, so the caller can fan out in store order.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable

from chatd.protocol import name_key
from chatd.protocol.record import record

Done = Callable[[BaseException | None], None]

#: Entries a room's moderation log keeps.
MODLOG_MAX = 1000


class StoreError(Exception):
    """The store cannot be used (opened, migrated, written); the text says why."""


@record  # frozen to mypy; cheap to build: one per message (see protocol.record)
class StoredMessage:
    id: int
    ts: float
    #: The room's name, or None for a private message.
    room: str | None
    sender: str
    #: The recipient of a private message.
    to: str | None
    text: str
    action: bool = False
    #: The accounts sender and recipient were logged in to, if any: only they
    #: may read a private conversation back.
    sender_account: int | None = None
    to_account: int | None = None
    #: A notice (IRC's NOTICE). Kept with the message where the store has
    #: room for it (SQLite: action 2); history shows it as a plain line
    #: where it has not.
    notice: bool = False

    @property
    def conversation(self) -> str:
        if self.room is not None:
            return name_key(self.room)
        assert self.to is not None
        return dm_key(self.sender, self.to)


def dm_key(a: str, b: str) -> str:
    """The conversation key of the private messages between two nicknames."""
    first, second = sorted((name_key(a), name_key(b)))
    return f"@{first}:{second}"


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    id: int
    nick: str
    password_hash: str = dataclasses.field(repr=False)
    created: float
    #: A server operator (``chatd accounts oper NICK on``).
    oper: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RoomRecord:
    name: str
    topic: str
    topic_by: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class AccountRooms:
    """The rooms an account was in, kept so that its next login rejoins them."""

    #: Room names in join order (the order decides the fallback current room).
    rooms: tuple[str, ...] = ()
    #: The room that was current, or None.
    current: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Unread:
    """What an account has not read of one conversation (see Store.unread)."""

    #: The conversation's key: a room's key, or a private one's (dm_key).
    conversation: str
    #: The room's name, or None for a private conversation.
    room: str | None
    #: The other nickname of a private conversation, or None for a room.
    peer: str | None
    #: Messages after the read marker that others sent (at most UNREAD_CAP).
    unread: int
    #: Of those, the ones that mention the account's nickname.
    mentions: int
    #: The read marker: the id of the last message read (0: none yet).
    last_read: int


#: Unread messages counted per conversation at most (a count at the cap
#: means "this many or more").
UNREAD_CAP = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class SearchQuery:
    """A /search, as the store runs it."""

    #: The words to find, in the search syntax (words, ``prefix*``,
    #: ``"a phrase"``; see docs/PROTOCOL.md).
    text: str
    #: Room keys the asker may read (the rooms it is in).
    rooms: tuple[str, ...]
    #: The asker's account: its private conversations are searched too
    #: (None: a guest, who has none to search).
    account: int | None
    #: Only this conversation (a room key, or a dm_key), or None for all of
    #: the above.
    conversation: str | None = None
    #: Only messages with a smaller id (the next page).
    before: int | None = None
    #: The most results.
    limit: int = 20
    #: Seconds the search may take before it is cut.
    budget: float = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class SearchResult:
    #: The messages found, newest first.
    messages: list[StoredMessage]
    #: More matches exist before the last one (ask again with before=).
    more: bool
    #: The search ran out of time (or of messages it may scan) before it
    #: had looked at everything: more may exist that it did not see.
    cut: bool = False


class Store(abc.ABC):
    """Accounts, persistent rooms and message history."""

    #: The highest message id ever stored; new ids continue after it.
    last_id: int = 0
    #: time.monotonic() of the last failed write; None once a message is stored.
    last_failure: float | None = None
    #: Seconds a failed write keeps the store unhealthy if no message is stored.
    FAILURE_MEMORY = 30.0
    #: Shared by several daemons (a cluster's): it keeps every room's rules
    #: while the room is in use, not only registered rooms'.
    shared = False

    @property
    def healthy(self) -> bool:
        """False for a while after a failed write, until a message is stored."""
        failed = self.last_failure
        return failed is None or time.monotonic() - failed > self.FAILURE_MEMORY

    async def open(self) -> None:  # noqa: B027 (optional hook)
        """Make the store ready; raise StoreError with a clear text if it cannot be."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Finish every queued write and release the store."""

    @property
    def backlog(self) -> int:
        """Writes queued and not yet committed."""
        return 0

    @abc.abstractmethod
    def append(self, message: StoredMessage, done: Done) -> None:
        """Store a message; ``done`` runs on the loop once it is durable."""

    def barrier(self, done: Callable[[], None]) -> None:
        """Call ``done`` on the loop once every write made before is complete."""
        done()

    @abc.abstractmethod
    def save_room(self, room: RoomRecord) -> None:
        """Remember a room and its topic across restarts (an empty topic forgets it)."""

    @abc.abstractmethod
    async def rooms(self) -> list[RoomRecord]:
        """The rooms to restore at start."""

    @abc.abstractmethod
    async def recent(
        self,
        conversation: str,
        limit: int,
        before: int | None = None,
        account: int | None = None,
    ) -> tuple[list[StoredMessage], bool]:
        """The last ``limit`` messages before id ``before``, oldest first, and
        whether older ones exist. For a private conversation only messages
        sent or received by ``account`` count."""

    @abc.abstractmethod
    def is_registered(self, nick: str) -> bool:
        """Whether a nickname belongs to an account (answered from memory)."""

    @abc.abstractmethod
    async def account(self, nick: str) -> Account | None: ...

    @abc.abstractmethod
    async def create_account(self, nick: str, password_hash: str) -> Account | None:
        """Create an account; None if the nickname already has one."""

    @abc.abstractmethod
    async def set_password(self, nick: str, password_hash: str) -> bool: ...

    @abc.abstractmethod
    async def delete_account(self, nick: str) -> bool: ...

    @abc.abstractmethod
    async def accounts(self) -> list[Account]: ...

    @abc.abstractmethod
    def save_account_rooms(self, account: int, rooms: AccountRooms) -> None:
        """Remember the rooms of an account (in order, after earlier writes)."""

    @abc.abstractmethod
    async def account_rooms(self, account: int) -> AccountRooms:
        """The rooms an account was last in (none if never saved)."""

    # -- rooms' rules, the moderation log, server bans ---------------------------

    @abc.abstractmethod
    def save_rules(
        self, name: str, doc: str | None, *, registered: bool, secret: bool = False
    ) -> None:
        """Remember a room's rules (a JSON document the store does not read),
        in order after earlier writes; None forgets them. A store that
        outlives the daemon keeps only ``registered`` rooms' rules; a shared
        one (Redis) keeps every room's while it is in use, and ``secret``
        hides the room from other nodes' ``/rooms``."""

    @abc.abstractmethod
    async def all_rules(self) -> dict[str, str]:
        """Every registered room's rules, by room name, to restore at start."""

    async def rules_of(self, room_key: str) -> str | None:
        """One room's rules (a cluster node making the room live)."""
        for name, doc in (await self.all_rules()).items():
            if name_key(name) == room_key:
                return doc
        return None

    async def secret_rooms(self) -> set[str]:
        """The keys of secret rooms that may not be live here (a cluster's)."""
        return set()

    @abc.abstractmethod
    def log_action(self, room_key: str, entry: str) -> None:
        """Append to a room's moderation log (a JSON entry), keeping the last
        ``MODLOG_MAX``."""

    @abc.abstractmethod
    async def modlog(self, room_key: str, limit: int) -> list[str]:
        """The last ``limit`` entries of a room's moderation log, oldest first."""

    @abc.abstractmethod
    def save_kline(self, mask: str, doc: str | None) -> None:
        """Remember a server ban (None: lift it)."""

    @abc.abstractmethod
    async def klines(self) -> list[str]:
        """Every server ban kept."""

    @abc.abstractmethod
    async def set_oper(self, nick: str, on: bool) -> bool:
        """Make an account a server operator or not; False if it has no account."""

    async def writable(self) -> bool:
        """Whether a write can be committed now."""
        return True

    # -- read markers, unread counts, search ------------------------------------

    @abc.abstractmethod
    def save_read(self, account: int, conversation: str, message_id: int) -> None:
        """Move an account's read marker in a conversation forward to
        ``message_id`` (a smaller id than the one kept changes nothing), in
        order after earlier writes."""

    @abc.abstractmethod
    async def read_markers(self, account: int) -> dict[str, int]:
        """Every read marker of an account, by conversation key (after the
        writes queued before)."""

    @abc.abstractmethod
    async def unread(self, account: int, nick: str, rooms: tuple[str, ...]) -> list[Unread]:
        """What ``account`` (nickname ``nick``) has not read: one entry per
        room key of ``rooms`` (in that order, a room with no messages
        included), then one per private conversation of the account that
        has messages after its marker. Counts only messages others sent,
        after the marker (all of them with no marker), at most UNREAD_CAP;
        a mention is as chatd.protocol.mention says."""

    @abc.abstractmethod
    async def search(self, query: SearchQuery) -> SearchResult:
        """Stored messages that match ``query.text`` in the conversations it
        may read, newest first; raises BadQuery for a query the syntax
        cannot read."""
