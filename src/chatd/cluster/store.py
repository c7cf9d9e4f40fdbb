"""The message store of a cluster: Redis streams and hashes (see :mod:`chatd.cluster`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from chatd.cluster.link import RedisLink, Unavailable, as_text, failure_of
from chatd.cluster.scripts import CREATE_ACCOUNT, SAVE_RULES, SAY, SET_OPER, SET_PASSWORD, P
from chatd.protocol import (
    name_key,
)
from chatd.store import (
    MODLOG_MAX,
    Account,
    AccountRooms,
    Done,
    RoomRecord,
    Store,
    StoredMessage,
    StoreError,
)

logger = logging.getLogger(__name__)


class RedisStore(Store):
    """Accounts, topics and history in Redis, shared by every node.

    Messages are kept in one stream per room or private conversation, each
    trimmed to about ``history`` entries; accounts and topics are kept until
    deleted. ``append`` also publishes the message to its room (see
    :data:`SAY`): in cluster mode storing and fanning out are one step.
    """

    shared = True

    def __init__(self, link: RedisLink, *, node: str, history: int) -> None:
        self.link = link
        self.node = node
        self.history = history
        self._registered: set[str] = set()
        for name, source in (
            ("say", SAY),
            ("create_account", CREATE_ACCOUNT),
            ("set_password", SET_PASSWORD),
            ("save_rules", SAVE_RULES),
            ("set_oper", SET_OPER),
        ):
            link.script(name, source)

    async def open(self) -> None:
        await self.link.open()
        keys = await self.link.redis.hkeys(P + "accounts")
        self._registered = {as_text(k) for k in keys}

    async def close(self) -> None:
        await self.link.close()

    @property
    def healthy(self) -> bool:
        return self.link.up and super().healthy

    @property
    def backlog(self) -> int:
        return self.link.backlog

    async def writable(self) -> bool:
        try:
            await self.link.command("PING")
        except (Unavailable, RedisError):
            return False
        return True

    def append(self, message: StoredMessage, done: Done) -> None:
        assert message.room is not None, "private messages go through Cluster.direct"

        def stored(result: Any) -> None:
            exc = failure_of(result)
            if exc is not None:
                self.last_failure = time.monotonic()
            else:
                self.last_failure = None
            done(exc)

        args = (
            self.node,
            name_key(message.room),
            self.history,
            repr(message.ts),
            message.room,
            message.sender,
            message.text,
            "2" if message.notice else "1" if message.action else "0",
            "" if message.sender_account is None else str(message.sender_account),
        )
        self.link.submit("say", args, stored)

    def barrier(self, done: Callable[[], None]) -> None:
        # A write that does nothing, queued behind everything before it.
        self.link.submit("PING", (), lambda _: done())

    def save_room(self, room: RoomRecord) -> None:
        key = name_key(room.name)

        def saved(result: Any) -> None:
            if isinstance(result, BaseException):
                logger.error("the topic of #%s was not saved: %s", room.name, result)

        if room.topic:
            value = json.dumps([room.name, room.topic, room.topic_by])
            self.link.submit("HSET", (P + "topics", key, value), saved)
        else:
            self.link.submit("HDEL", (P + "topics", key), saved)

    async def rooms(self) -> list[RoomRecord]:
        values = await self._read("HVALS", P + "topics")
        return [RoomRecord(*json.loads(v)) for v in values]

    async def topic(self, room_key: str) -> RoomRecord | None:
        value = await self._read("HGET", P + "topics", room_key)
        return None if value is None else RoomRecord(*json.loads(value))

    async def _read(self, *args: Any) -> Any:
        try:
            return await self.link.command(*args)
        except Unavailable as exc:
            raise StoreError(str(exc)) from None

    async def recent(
        self,
        conversation: str,
        limit: int,
        before: int | None = None,
        account: int | None = None,
    ) -> tuple[list[StoredMessage], bool]:
        stream = P + "conv:" + conversation
        end = "+" if before is None else f"({before}-0"
        found: list[StoredMessage] = []
        wanted = str(account) if account is not None else None
        # Private conversations filter by account: read pages until enough.
        for _ in range(20):
            entries = await self._read("XREVRANGE", stream, end, "-", "COUNT", limit + 1)
            for entry_id, fields in entries:
                m = stream_message(conversation, as_text(entry_id), fields)
                if wanted is not None and wanted.encode() not in (
                    fields.get(b"sa"),
                    fields.get(b"ta"),
                ):
                    continue
                if len(found) == limit:
                    return found[::-1], True
                found.append(m)
            if len(entries) < limit + 1:
                break
            end = f"({as_text(entries[-1][0])}"
        return found[::-1], False

    def is_registered(self, nick: str) -> bool:
        return name_key(nick) in self._registered

    def note_registered(self, key: str) -> None:
        self._registered.add(key)

    async def account(self, nick: str) -> Account | None:
        value = await self._read("HGET", P + "accounts", name_key(nick))
        return None if value is None else _account(value)

    async def create_account(self, nick: str, password_hash: str) -> Account | None:
        key, now = name_key(nick), time.time()
        value = json.dumps({"nick": nick, "hash": password_hash, "created": now})
        try:
            account_id = await self.link.call("create_account", key, value, self.node)
        except Unavailable as exc:
            raise StoreError(str(exc)) from None
        if not account_id:
            self._registered.add(key)
            return None
        self._registered.add(key)
        return Account(int(account_id), nick, password_hash, now)

    async def set_password(self, nick: str, password_hash: str) -> bool:
        try:
            return bool(await self.link.call("set_password", name_key(nick), password_hash))
        except Unavailable as exc:
            raise StoreError(str(exc)) from None

    async def delete_account(self, nick: str) -> bool:
        value = await self._read("HGET", P + "accounts", name_key(nick))
        deleted = await self._read("HDEL", P + "accounts", name_key(nick))
        if value is not None:
            await self._read("HDEL", P + "accountrooms", str(_account(value).id))
        self._registered.discard(name_key(nick))
        return bool(deleted)

    async def accounts(self) -> list[Account]:
        values = await self._read("HVALS", P + "accounts")
        return sorted((_account(v) for v in values), key=lambda a: name_key(a.nick))

    def save_account_rooms(self, account: int, rooms: AccountRooms) -> None:
        def saved(result: Any) -> None:
            if isinstance(result, BaseException):
                logger.error("the rooms of account %d were not saved: %s", account, result)

        value = json.dumps([list(rooms.rooms), rooms.current])
        self.link.submit("HSET", (P + "accountrooms", str(account), value), saved, essential=True)

    # -- rooms' rules, the moderation log, server bans --------------------------

    def _logged(self, what: str) -> Callable[[Any], None]:
        def saved(result: Any) -> None:
            if isinstance(result, BaseException):
                logger.error("%s was not saved: %s", what, result)

        return saved

    def save_rules(
        self, name: str, doc: str | None, *, registered: bool, secret: bool = False
    ) -> None:
        args = (name_key(name), name, doc or "", "1" if registered else "0", "1" if secret else "0")
        self.link.submit("save_rules", args, self._logged(f"the rules of #{name}"), essential=True)

    async def all_rules(self) -> dict[str, str]:
        values = await self._read("HVALS", P + "rules")
        return dict(json.loads(v) for v in values)

    async def rules_of(self, room_key: str) -> str | None:
        for table in ("rules", "grules"):
            value = await self._read("HGET", P + table, room_key)
            if value is not None:
                return str(json.loads(value)[1])
        return None

    async def secret_rooms(self) -> set[str]:
        return {as_text(k) for k in await self._read("SMEMBERS", P + "secret")}

    def log_action(self, room_key: str, entry: str) -> None:
        key, saved = P + "modlog:" + room_key, self._logged(f"the moderation log of #{room_key}")
        self.link.submit("RPUSH", (key, entry), saved)
        self.link.submit("LTRIM", (key, -MODLOG_MAX, -1), saved)

    async def modlog(self, room_key: str, limit: int) -> list[str]:
        try:
            # Through the write queue: after this node's entries.
            values = await self.link.call("LRANGE", P + "modlog:" + room_key, -limit, -1)
        except Unavailable as exc:
            raise StoreError(str(exc)) from None
        return [as_text(v) for v in values]

    def save_kline(self, mask: str, doc: str | None) -> None:
        saved = self._logged(f"the kline on {mask}")
        if doc is None:
            self.link.submit("HDEL", (P + "klines", mask), saved, essential=True)
        else:
            self.link.submit("HSET", (P + "klines", mask, doc), saved, essential=True)

    async def klines(self) -> list[str]:
        return [as_text(v) for v in await self._read("HVALS", P + "klines")]

    async def set_oper(self, nick: str, on: bool) -> bool:
        try:
            return bool(await self.link.call("set_oper", name_key(nick), "1" if on else "0"))
        except Unavailable as exc:
            raise StoreError(str(exc)) from None

    async def account_rooms(self, account: int) -> AccountRooms:
        try:
            # Through the write queue: after this node's saves made before it.
            value = await self.link.call("HGET", P + "accountrooms", str(account))
        except Unavailable as exc:
            raise StoreError(str(exc)) from None
        if value is None:
            return AccountRooms()
        rooms, current = json.loads(value)
        return AccountRooms(tuple(str(r) for r in rooms), None if current is None else str(current))


def _account(value: bytes) -> Account:
    a = json.loads(value)
    return Account(int(a["id"]), a["nick"], a["hash"], float(a["created"]), a.get("oper") is True)


def stream_message(conversation: str, entry_id: str, fields: dict[bytes, bytes]) -> StoredMessage:
    def get(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    def number(name: bytes) -> int | None:
        value = fields.get(name)
        return int(value) if value else None

    room = get(b"room")
    return StoredMessage(
        int(entry_id.partition("-")[0]),
        float(fields[b"ts"]),
        room,
        get(b"from") or "",
        None if room is not None else get(b"to"),
        get(b"text") or "",
        fields.get(b"action") == b"1",
        number(b"sa"),
        number(b"ta"),
        fields.get(b"action") == b"2" or fields.get(b"notice") == b"1",
    )
