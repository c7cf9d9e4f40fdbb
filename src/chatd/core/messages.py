"""The way of a message: numbered, into the store window, stored, delivered.

Messages (room lines and DMs) go to the :class:`~chatd.store.Store` first
and are fanned out when the store says they are durable, in store order: a
message anyone saw is a message the store has. A room message then goes to
its readers through the :class:`~chatd.core.bus.Bus` (at once on one
daemon, as it comes back from Redis in a cluster), which hands it to
:meth:`~chatd.core.rooms.RoomManager.arrived`: one path whatever the bus.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chatd.core.bus import Bus
from chatd.core.fanout import send_all
from chatd.core.model import Member, Room
from chatd.core.stats import Stats
from chatd.core.window import MESSAGE_OVERHEAD, StoreWindow
from chatd.errors import ChatError, StorageUnavailable
from chatd.protocol import Direct, Error, name_key
from chatd.store import Store, StoredMessage

#: Writes the store may have queued before new messages are refused.
MAX_STORE_BACKLOG = 50_000


class Messages:
    """Sends members' messages through the store and the bus."""

    def __init__(
        self,
        store: Store,
        stats: Stats,
        window: StoreWindow,
        bus: Bus,
        nicks: dict[str, Member],
        now: Callable[[], float],
        devices: Callable[[Member], list[Member]],
    ) -> None:
        self.store = store
        self.stats = stats
        self.window = window
        self.bus = bus
        #: The room manager's nicknames (a DM's reader must still hold its own).
        self._nicks = nicks
        self._now = now
        #: The connections of a member's account (RoomManager.devices).
        self._devices = devices
        #: Called with each message stored (sender, record), after its delivery.
        self.sent: Callable[[Member, StoredMessage], None] | None = None

    def say(
        self,
        member: Member,
        room: Room,
        text: str,
        action: bool,
        notice: bool = False,
        failed: Callable[[], None] | None = None,
    ) -> None:
        """A room message; everyone in the room sees it once it is stored
        (see Bus.stored). ``failed`` runs if the store refuses it."""
        self.check_store()
        nick, bus = member.nick or "", self.bus
        record = StoredMessage(
            bus.number(),
            self._now(),
            room.name,
            nick,
            None,
            text,
            action,
            member.account,
            notice=notice,
        )
        seq = member.begin_op(bus.echo_room(room.key))
        self._store_then(member, seq, record, lambda: bus.stored(member, seq, record), failed)

    def direct(self, member: Member, target: Member, text: str, notice: bool = False) -> None:
        """A private message to a member here; both see it once it is stored."""
        self.check_store()
        nick, target_nick = member.nick or "", target.nick or ""
        target_key = name_key(target_nick)
        event = Direct(self.bus.number(), self._now(), nick, target_nick, text, notice=notice)
        record = StoredMessage(
            event.id,
            event.ts,
            None,
            nick,
            target_nick,
            text,
            False,
            member.account,
            target.account,
            notice,
        )
        seq = member.begin_op()

        def deliver() -> bool:
            # Every connection of both accounts (the sender's own only if
            # it echoes), as long as the reader still holds its nickname.
            audience = dict.fromkeys(self._devices(member))
            if not member.echoes:
                del audience[member]
            holder = self._nicks.get(target_key)
            readers = self._devices(holder) if holder is not None else []
            if holder is not None and (
                target in readers
                or (target.account is not None and holder.account == target.account)
            ):
                audience.update(dict.fromkeys(readers))
            elif target.key is not None:
                audience[target] = None  # it took another nickname meanwhile
            send_all(audience, event)
            self.stats.messages_out += len(audience)
            member.end_op(seq)
            return True

        self._store_then(member, seq, record, deliver)

    def check_store(self) -> None:
        """Refuse a message while the store is far behind."""
        if self.store.backlog > MAX_STORE_BACKLOG:
            raise StorageUnavailable("the message store is falling behind; try again shortly")

    def _store_then(
        self,
        member: Member,
        seq: int,
        record: StoredMessage,
        deliver: Callable[[], bool],
        failed: Callable[[], None] | None = None,
    ) -> None:
        """Store a message, then deliver it and count it (unless deliver says no).

        If the store fails, the sender is told and nobody sees the message.
        The message is the sender's operation ``seq`` (Member.begin_op):
        deliver ends it, or the error does, before the replies to the
        sender's later commands go out.
        """
        arrived = time.perf_counter()
        size = len(record.text) + MESSAGE_OVERHEAD
        window = self.window
        window.take(size)

        def stored(exc: BaseException | None) -> None:
            window.give(size)
            if exc is not None:
                if failed is not None:
                    failed()
                member.end_op(seq, member.encode(Error.of(_store_error(exc))))
                return
            committed = time.perf_counter()
            if not deliver():
                return
            if self.sent is not None and member.account is not None:
                self.sent(member, record)
            stats = self.stats
            stats.messages_in += 1
            stats.store_latency.observe(committed - arrived)
            stats.fanout_latency.observe(time.perf_counter() - arrived)

        self.store.append(record, stored)


def _store_error(exc: BaseException) -> ChatError:
    if isinstance(exc, ChatError):
        return exc
    return StorageUnavailable(f"your message was not sent: {exc}")
