"""Reading: read markers, unread and mention counts, search, and what a
login shows of a room.

:class:`Reading` carries out ``/read``, ``/unread`` and ``/search`` for the
:class:`~chatd.core.dispatch.Dispatcher`, gives ``/rooms`` its counts, and
decides what a connection that logs in is shown of each room: what its
account has not read. The store keeps the markers and answers the counts
and searches (see :class:`~chatd.store.Store`); the room manager tells the
account's connections.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from chatd.core.caller import Caller
from chatd.core.model import stored_event
from chatd.core.rooms import RoomManager
from chatd.errors import NotInRoom, NotLoggedIn, StorageUnavailable
from chatd.protocol import (
    Message,
    Read,
    Search,
    SearchDone,
    UnreadEntry,
    UnreadList,
    name_key,
)
from chatd.store import SearchQuery, StoreError, Unread, dm_key

logger = logging.getLogger(__name__)


class Reading:
    """The commands about what an account has read, and search."""

    #: The most unread messages a login shows of a room.
    UNREAD_ON_LOGIN = 100
    #: Seconds one /search may take.
    SEARCH_BUDGET = 2.0

    def __init__(self, manager: RoomManager) -> None:
        self.manager = manager

    async def unread_histories(
        self, room_keys: list[str], markers: dict[str, int], skip: bool
    ) -> dict[str, tuple[Sequence[Message], bool]]:
        """What a login shows of each of these rooms that the account has a
        read marker in (see unread_history); none for an IRC client."""
        shown: dict[str, tuple[Sequence[Message], bool]] = {}
        if skip:
            return shown
        for key in room_keys:
            if key in markers:
                history = await self.unread_history(key, markers[key])
                if history is not None:
                    shown[key] = history
        return shown

    async def unread_history(
        self, room_key: str, marker: int
    ) -> tuple[Sequence[Message], bool] | None:
        """What a login shows of a room the account read up to ``marker``:
        the messages after it (at most UNREAD_ON_LOGIN), or the room's last
        ``history_on_join`` if fewer are unread; None: as for any join."""
        try:
            messages, more = await self.manager.store.recent(room_key, self.UNREAD_ON_LOGIN)
        except StoreError as exc:
            logger.error("no unread history for #%s: %s", room_key, exc)
            return None
        unread = sum(1 for m in messages if m.id > marker)
        keep = max(unread, self.manager.history_on_join)
        shown = messages[-keep:] if keep else []
        events = [e for m in shown if isinstance(e := stored_event(m), Message)]
        return events, more or len(shown) < len(messages)

    def conversation(
        self, caller: Caller, target: str | None
    ) -> tuple[str, str | None, str | None]:
        """The conversation a command names: (key, room name, peer)."""
        if target is None:
            if caller.current is None:
                raise NotInRoom("you are in no room; name one, or /join one")
            return caller.current.key, caller.current.name, None
        if target.startswith("@"):
            if caller.account is None:
                raise NotLoggedIn("log in to keep private conversations: /login NICK PASSWORD")
            peer = target[1:]
            return dm_key(caller.nick or "", peer), None, peer
        room = caller.rooms.get(name_key(target))
        if room is None:
            raise NotInRoom(f"you are not in #{target}")
        return room.key, room.name, None

    async def mark_read(self, caller: Caller, target: str | None, message_id: int | None) -> None:
        """``/read``: move the account's marker forward; every connection of
        the account is told."""
        if caller.account is None:
            raise NotLoggedIn("log in to keep read markers: /login NICK PASSWORD")
        conversation, room, peer = self.conversation(caller, target)
        store, account = self.manager.store, caller.account
        try:
            # Never past the newest message: a marker only moves forward, so
            # one set ahead would hide every message until then.
            latest, _ = await store.recent(conversation, 1, None, account)
            newest = latest[-1].id if latest else 0
            live = caller.rooms.get(conversation)
            if live is not None:
                newest = max(newest, live.seen)
            message_id = newest if message_id is None else min(message_id, newest)
            marker = (await store.read_markers(account)).get(conversation, 0)
        except StoreError as exc:
            raise StorageUnavailable(str(exc)) from None
        if message_id > marker:
            store.save_read(account, conversation, message_id)
            marker = message_id
        if caller.key is None or caller.account != account:
            return
        event = Read(room, peer, marker)
        caller.tell(event)
        self.manager.tell_account(caller, event, skip=caller)

    async def counts(self, caller: Caller) -> list[Unread]:
        assert caller.account is not None
        try:
            return await self.manager.store.unread(
                caller.account, caller.nick or "", tuple(caller.rooms)
            )
        except StoreError as exc:
            raise StorageUnavailable(str(exc)) from None

    async def unread(self, caller: Caller) -> None:
        if caller.account is None:
            raise NotLoggedIn("log in to keep read markers: /login NICK PASSWORD")
        counts = await self.counts(caller)
        entries = []
        for u in counts:
            room = caller.rooms.get(u.conversation)
            name = room.name if room is not None else u.room
            entries.append(UnreadEntry(name, u.peer, u.unread, u.mentions, u.last_read))
        caller.tell(UnreadList(tuple(entries)))

    async def search(self, caller: Caller, command: Search) -> None:
        """``/search``: stored messages the caller may read, newest first,
        then the summary."""
        conversation: str | None = None
        if command.target is not None:
            conversation, _, _ = self.conversation(caller, command.target)
        query = SearchQuery(
            command.text,
            tuple(caller.rooms),
            caller.account,
            conversation,
            command.before,
            command.count,
            self.SEARCH_BUDGET,
        )
        try:
            result = await self.manager.store.search(query)
        except StoreError as exc:
            raise StorageUnavailable(str(exc)) from None
        budget, count, more, last = caller.page_bytes, 0, result.more, None
        for m in result.messages:
            data = caller.encode(dataclasses.replace(stored_event(m), search=True))
            budget -= len(data)
            if budget < 0:
                more = True
                break
            caller.reply(data)
            count += 1
            last = m.id
        before = last if more or result.cut else None  # where to go on from
        caller.tell(SearchDone(command.text, count, more, before, result.cut))
        caller.charge(count // 20)
