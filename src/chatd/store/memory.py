"""The in-memory store (``--db :memory:``): nothing survives a restart.

:class:`MemoryStore` keeps everything in this process; each conversation
keeps its last ``MEMORY_HISTORY`` messages. Every write is complete at once,
so ``done`` callbacks run before the call returns.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from chatd.protocol import name_key
from chatd.store.base import (
    MODLOG_MAX,
    Account,
    AccountRooms,
    Done,
    RoomRecord,
    Store,
    StoredMessage,
)

#: Messages a conversation keeps in the in-memory store.
MEMORY_HISTORY: Final = 10_000


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

    def append(self, message: StoredMessage, done: Done) -> None:
        kept = self._messages.get(message.conversation)
        if kept is None:
            kept = self._messages[message.conversation] = deque(maxlen=MEMORY_HISTORY)
        kept.append(message)
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
