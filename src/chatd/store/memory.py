"""The in-memory store (``--db :memory:``): nothing survives a restart.

:class:`MemoryStore` keeps everything in this process; each conversation
keeps its last ``MEMORY_HISTORY`` messages. Every write is complete at once,
so ``done`` callbacks run before the call returns.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from chatd.protocol import name_key
from chatd.protocol.mention import mentions
from chatd.store.base import (
    MODLOG_MAX,
    UNREAD_CAP,
    Account,
    AccountRooms,
    Done,
    RoomRecord,
    SearchQuery,
    SearchResult,
    Store,
    StoredMessage,
    Unread,
)
from chatd.store.search import SCAN_MAX, parse, searchable

#: Messages a conversation keeps in the in-memory store.
MEMORY_HISTORY: Final = 10_000
#: Messages a search matches between two turns of the event loop.
_SEARCH_SLICE: Final = 1_000


class MemoryStore(Store):
    """Everything in this process; nothing survives a restart."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._messages: dict[str, deque[StoredMessage]] = {}
        self._rooms: dict[str, RoomRecord] = {}
        self._accounts: dict[str, Account] = {}
        self._account_rooms: dict[int, AccountRooms] = {}
        self._next_account = 1
        self._rules: dict[str, tuple[str, str]] = {}
        self._modlog: dict[str, deque[str]] = {}
        self._klines: dict[str, str] = {}
        self._markers: dict[int, dict[str, int]] = {}
        #: The private conversations each account sent or received messages in.
        self._private: dict[int, set[str]] = {}

    def append(self, message: StoredMessage, done: Done) -> None:
        conversation = message.conversation
        kept = self._messages.get(conversation)
        if kept is None:
            kept = self._messages[conversation] = deque(maxlen=MEMORY_HISTORY)
        kept.append(message)
        if message.room is None:
            for account in (message.sender_account, message.to_account):
                if account is not None:
                    self._private.setdefault(account, set()).add(conversation)
        self.last_id = message.id
        done(None)

    def save_room(self, room: RoomRecord) -> None:
        if room.topic:
            self._rooms[name_key(room.name)] = room
        else:
            self._rooms.pop(name_key(room.name), None)

    async def rooms(self) -> list[RoomRecord]:
        return list(self._rooms.values())

    async def recent(
        self,
        conversation: str,
        limit: int,
        before: int | None = None,
        account: int | None = None,
    ) -> tuple[list[StoredMessage], bool]:
        found: list[StoredMessage] = []
        for m in reversed(self._messages.get(conversation, ())):
            if before is not None and m.id >= before:
                continue
            if account is not None and account not in (m.sender_account, m.to_account):
                continue
            if len(found) == limit:
                return found[::-1], True
            found.append(m)
        return found[::-1], False

    def is_registered(self, nick: str) -> bool:
        return name_key(nick) in self._accounts

    async def account(self, nick: str) -> Account | None:
        return self._accounts.get(name_key(nick))

    async def create_account(self, nick: str, password_hash: str) -> Account | None:
        if name_key(nick) in self._accounts:
            return None
        account = Account(self._next_account, nick, password_hash, self._clock())
        self._next_account += 1
        self._accounts[name_key(nick)] = account
        return account

    async def set_password(self, nick: str, password_hash: str) -> bool:
        account = self._accounts.get(name_key(nick))
        if account is None:
            return False
        self._accounts[name_key(nick)] = dataclasses.replace(account, password_hash=password_hash)
        return True

    async def delete_account(self, nick: str) -> bool:
        account = self._accounts.pop(name_key(nick), None)
        if account is not None:
            self._account_rooms.pop(account.id, None)
            self._markers.pop(account.id, None)
        return account is not None

    async def accounts(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: name_key(a.nick))

    def save_account_rooms(self, account: int, rooms: AccountRooms) -> None:
        self._account_rooms[account] = rooms

    async def account_rooms(self, account: int) -> AccountRooms:
        return self._account_rooms.get(account, AccountRooms())

    def save_rules(
        self, name: str, doc: str | None, *, registered: bool, secret: bool = False
    ) -> None:
        if doc is not None and registered:
            self._rules[name_key(name)] = (name, doc)
        else:
            self._rules.pop(name_key(name), None)

    async def all_rules(self) -> dict[str, str]:
        return dict(self._rules.values())

    def log_action(self, room_key: str, entry: str) -> None:
        log = self._modlog.get(room_key)
        if log is None:
            log = self._modlog[room_key] = deque(maxlen=MODLOG_MAX)
        log.append(entry)

    async def modlog(self, room_key: str, limit: int) -> list[str]:
        return list(self._modlog.get(room_key, ()))[-limit:]

    def save_kline(self, mask: str, doc: str | None) -> None:
        if doc is None:
            self._klines.pop(mask, None)
        else:
            self._klines[mask] = doc

    async def klines(self) -> list[str]:
        return list(self._klines.values())

    async def set_oper(self, nick: str, on: bool) -> bool:
        account = self._accounts.get(name_key(nick))
        if account is None:
            return False
        self._accounts[name_key(nick)] = dataclasses.replace(account, oper=on)
        return True

    # -- read markers, unread counts, search ------------------------------------

    def save_read(self, account: int, conversation: str, message_id: int) -> None:
        markers = self._markers.setdefault(account, {})
        if message_id > markers.get(conversation, 0):
            markers[conversation] = message_id

    async def read_markers(self, account: int) -> dict[str, int]:
        return dict(self._markers.get(account, {}))

    async def unread(self, account: int, nick: str, rooms: tuple[str, ...]) -> list[Unread]:
        """As Store.unread: up to UNREAD_CAP messages looked at per
        conversation, with a turn of the event loop between conversations."""
        markers = self._markers.get(account, {})
        found: list[Unread] = []
        for key in rooms:
            await asyncio.sleep(0)
            last = markers.get(key, 0)
            kept = self._messages.get(key, ())
            name = kept[-1].room if kept else None
            count = mentioned = 0
            for scanned, m in enumerate(reversed(kept)):
                if m.id <= last or scanned == UNREAD_CAP:
                    break
                if m.sender_account != account:
                    count += 1
                    mentioned += mentions(m.text, nick)
            found.append(Unread(key, name or key, None, count, mentioned, last))
        private: list[tuple[int, Unread]] = []
        for conversation in list(self._private.get(account, ())):
            await asyncio.sleep(0)
            last = markers.get(conversation, 0)
            count = mentioned = 0
            newest: StoredMessage | None = None
            for m in reversed(self._messages.get(conversation, ())):
                if m.id <= last or count == UNREAD_CAP:
                    break
                if m.to_account == account and m.sender_account != account:
                    newest = newest or m
                    count += 1
                    mentioned += mentions(m.text, nick)
            if newest is not None:
                entry = Unread(conversation, None, newest.sender, count, mentioned, last)
                private.append((newest.id, entry))
        private.sort(key=lambda p: p[0], reverse=True)
        return found + [u for _, u in private]

    async def search(self, query: SearchQuery) -> SearchResult:
        """A scan of the messages held, newest first, across the conversations
        ``query`` may read; it yields to the event loop as it goes and stops
        at the budget or at SCAN_MAX messages (``cut``)."""
        match = parse(query.text)
        account = query.account
        allowed = searchable(query, self._private.get(account, ()) if account is not None else ())
        streams: list[Iterable[StoredMessage]] = []
        for key in allowed:
            # A copy: appends while the search waits would break an iteration.
            held = list(self._messages.get(key, ()))
            if query.before is not None:
                held = held[: bisect.bisect_left(held, query.before, key=lambda m: m.id)]
            streams.append(reversed(held))
        deadline = time.monotonic() + query.budget
        found: list[StoredMessage] = []
        cut = False
        for scanned, m in enumerate(heapq.merge(*streams, key=lambda m: -m.id)):
            if scanned % _SEARCH_SLICE == 0 and scanned:
                if scanned >= SCAN_MAX or time.monotonic() > deadline:
                    cut = True
                    break
                await asyncio.sleep(0)
            if m.room is None and account not in (m.sender_account, m.to_account):
                continue
            if match.matches(m.text):
                found.append(m)
                if len(found) > query.limit:
                    break
        return SearchResult(found[: query.limit], len(found) > query.limit, cut)
