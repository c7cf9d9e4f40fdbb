"""The bus of one daemon on its own store: everything is here.

Messages are numbered here and delivered as soon as the store has them;
nicknames, rooms and queries are the room manager's alone. A room lives
while someone is in it, or it has a topic or an owner (general always does).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from chatd.core.bus import Bus, Hub, Opening, Person
from chatd.core.model import Member, Room
from chatd.protocol import Event, Message, RoomChanged, RoomList, WhoList, name_key
from chatd.store import RoomRecord, StoredMessage, StoreError

logger = logging.getLogger(__name__)


class LocalBus(Bus):
    """No other node: presence is the manager's, the store is the only way out."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        #: The id the next message takes (see restored).
        self.next_id = 1

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def restored(self, last_id: int) -> None:
        self.next_id = last_id + 1

    def keeps(self, record: RoomRecord) -> bool:
        return True

    def number(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def echo_room(self, room_key: str) -> str | None:
        return None

    def stored(self, member: Member, seq: int, record: StoredMessage) -> bool:
        event = Message(
            record.id,
            record.ts,
            record.room or "",
            record.sender,
            record.text,
            record.action,
            notice=record.notice,
        )
        delivered = self.hub.arrived(event)
        member.end_op(seq)
        return delivered

    def joined(self, member: Member, room: Room, created: bool) -> None:
        if created:
            self.hub.room_changed(RoomChanged(room.name, "created", room.people))

    def left(self, member: Member, room: Room) -> None:
        if (
            not room.members
            and not room.topic
            and not room.rules.registered
            and self.hub.close_room(room)
            and not room.rules.modes.secret  # its name is for its members only
        ):
            self.hub.room_changed(RoomChanged(room.name, "removed", 0))

    def released(self, key: str, reason: str = "") -> None:
        pass

    def publish(self, room: Room, event: Event) -> None:
        pass

    def broadcast(self, room_key: str | None, data: list[Any]) -> None:
        pass  # no other node

    def barrier(self, done: Callable[[], None]) -> None:
        self.hub.store.barrier(done)

    async def claim(
        self,
        member: Member,
        nick: str,
        *,
        account: int | None = None,
        takeover: bool = False,
        guest: bool = True,
    ) -> None:
        pass  # the room manager holds every nickname there is

    @contextlib.asynccontextmanager
    async def open(self, name: str, *, create: bool) -> AsyncIterator[Opening]:
        hub, history = self.hub, None
        if hub.history_on_join:
            try:
                history = await hub.store.recent(name_key(name), hub.history_on_join)
            except StoreError as exc:
                logger.error("no history for #%s: %s", name, exc)
        yield Opening(history, create)

    async def direct(self, member: Member, to: str, text: str, *, notice: bool = False) -> None:
        self.hub.direct(member, to, text, notice=notice)

    async def person(self, nick: str) -> Person | None:
        member = self.hub.find(nick)
        if member is None or member.key is None:
            return None
        rooms = frozenset(member.rooms)
        return Person(member.nick or "", member.key, member.account, member.oper, rooms)

    async def room_list(self) -> RoomList:
        return self.hub.room_list()

    async def who(self, member: Member, room_name: str | None) -> WhoList:
        return self.hub.who(member, room_name)
