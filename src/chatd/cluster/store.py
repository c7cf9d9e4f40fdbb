"""The message store of a cluster: Redis streams and hashes (see :mod:`chatd.cluster`)."""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import RedisError

from chatd.cluster.link import RedisLink, Unavailable, as_text, failure_of
from chatd.cluster.scripts import (
    CREATE_ACCOUNT,
    SAVE_READ,
    SAVE_RULES,
    SAY,
    SEARCH_PAGE,
    SET_OPER,
    SET_PASSWORD,
    UNREAD,
    P,
)
from chatd.protocol import (
    name_key,
)
from chatd.protocol.mention import mentions
from chatd.store import (
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
    StoreError,
    Unread,
)
from chatd.store.search import SCAN_MAX, parse, searchable

logger = logging.getLogger(__name__)

#: Stream entries a search reads at a time (per stream).
SEARCH_CHUNK: Final = 500
#: Keys one SCAN call looks at, and the most calls a lookup for an account's
#: private streams makes (so it looks at up to 200,000 keys).
SCAN_COUNT: Final = 1_000
SCAN_ROUNDS: Final = 200


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
        #: Account id -> nickname key, as learnt (an account keeps its nickname).
        self._nick_keys: dict[int, str] = {}
        for name, source in (
            ("say", SAY),
            ("create_account", CREATE_ACCOUNT),
            ("set_password", SET_PASSWORD),
            ("save_rules", SAVE_RULES),
            ("set_oper", SET_OPER),
            ("save_read", SAVE_READ),
            ("unread", UNREAD),
            ("search_page", SEARCH_PAGE),
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
        return None if value is None else self._learnt(_account(value))

    def _learnt(self, account: Account) -> Account:
        self._nick_keys[account.id] = name_key(account.nick)
        return account

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
        return self._learnt(Account(int(account_id), nick, password_hash, now))

    async def set_password(self, nick: str, password_hash: str) -> bool:
        try:
            return bool(await self.link.call("set_password", name_key(nick), password_hash))
        except Unavailable as exc:
            raise StoreError(str(exc)) from None

    async def delete_account(self, nick: str) -> bool:
        value = await self._read("HGET", P + "accounts", name_key(nick))
        deleted = await self._read("HDEL", P + "accounts", name_key(nick))
        if value is not None:
            account_id = str(_account(value).id)
            await self._read("HDEL", P + "accountrooms", account_id)
            await self._read("DEL", P + "read:" + account_id)
        self._registered.discard(name_key(nick))
        return bool(deleted)

    async def accounts(self) -> list[Account]:
        values = await self._read("HVALS", P + "accounts")
        return sorted((self._learnt(_account(v)) for v in values), key=lambda a: name_key(a.nick))

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

    # -- read markers, unread counts, search --------------------------------------

    def save_read(self, account: int, conversation: str, message_id: int) -> None:
        what = f"the read marker of account {account} in {conversation}"
        args = (str(account), conversation, str(message_id))
        self.link.submit("save_read", args, self._logged(what))

    async def read_markers(self, account: int) -> dict[str, int]:
        try:
            # Through the write queue: after this node's markers saved before it.
            value = await self.link.call("HGETALL", P + "read:" + str(account))
        except Unavailable as exc:
            raise StoreError(str(exc)) from None
        pairs = (
            value.items() if isinstance(value, dict) else zip(value[::2], value[1::2], strict=True)
        )
        return {as_text(conv): int(id_) for conv, id_ in pairs}

    async def unread(self, account: int, nick: str, rooms: tuple[str, ...]) -> list[Unread]:
        """As Store.unread; the private conversations are the streams named
        after the account's nickname (see :meth:`_private_streams`). Each
        conversation is read by one script (:data:`UNREAD`) that sends back
        only the texts it counts."""
        self._nick_keys[account] = name_key(nick)
        markers = await self.read_markers(account)
        found: list[Unread] = []
        for key in rooms:
            last = markers.get(key, 0)
            name, _, texts = await self._unread_in(key, last, account, private=False)
            count = sum(mentions(t, nick) for t in texts)
            found.append(Unread(key, name or key, None, len(texts), count, last))
        private: list[tuple[int, Unread]] = []
        for conversation in await self._private_streams(name_key(nick)):
            last = markers.get(conversation, 0)
            peer, newest, texts = await self._unread_in(conversation, last, account, private=True)
            if texts:
                count = sum(mentions(t, nick) for t in texts)
                entry = Unread(conversation, None, peer, len(texts), count, last)
                private.append((newest, entry))
        private.sort(key=lambda p: p[0], reverse=True)
        return found + [u for _, u in private]

    async def _unread_in(
        self, conversation: str, last: int, account: int, *, private: bool
    ) -> tuple[str, int, list[str]]:
        """(name or peer, id of the newest counted entry, counted texts)."""
        args = (conversation, last, account, UNREAD_CAP, "1" if private else "0")
        try:
            name, newest, *texts = await self.link.call("unread", *args)
        except Unavailable as exc:
            raise StoreError(str(exc)) from None
        return as_text(name), int(newest), [as_text(t) for t in texts]

    async def _private_streams(self, nick_key: str) -> list[str]:
        """The private conversations of a nickname (``@nick:other`` and
        ``@other:nick``), found with SCAN: at most SCAN_ROUNDS calls, so in a
        very large keyspace some may not be found. A logged-in member always
        has its account's nickname, so these are its account's conversations
        (each message in them still says whose it is: ``sa``, ``ta``)."""
        prefix = P + "conv:"
        pattern = prefix + "@*" + _glob_escape(nick_key) + "*"
        found: set[str] = set()
        cursor: int | bytes = 0
        for _ in range(SCAN_ROUNDS):
            cursor, keys = await self._read("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
            for key in keys:
                conversation = as_text(key)[len(prefix) :]
                first, _, second = conversation[1:].partition(":")
                if nick_key in (first, second):
                    found.add(conversation)
            if int(cursor) == 0:
                break
        return sorted(found)

    async def _nick_key(self, account: int) -> str | None:
        """An account's nickname key (learnt at its login; else looked up once)."""
        if account not in self._nick_keys:
            await self.accounts()  # learns every account's nickname
        return self._nick_keys.get(account)

    async def search(self, query: SearchQuery) -> SearchResult:
        """A scan of the streams ``query`` may read, newest first, matched by
        :mod:`chatd.store.search`.

        It covers only what the streams still hold: each is capped at about
        the history length (``--redis-history``), so older messages are not
        found. Private conversations are those :meth:`_private_streams`
        finds. Each stream is read SEARCH_CHUNK entries at a time by a
        script (:data:`SEARCH_PAGE`) that sends back only ids and texts (and,
        in a private conversation, only the account's); the streams are
        merged by id and the matches read whole. The scan stops at
        ``limit + 1`` matches, or, with ``cut``, after ``budget`` seconds or
        SCAN_MAX entries.
        """
        match = parse(query.text)
        account = query.account
        private: list[str] = []
        if account is not None and query.conversation is None:
            nick_key = await self._nick_key(account)
            if nick_key is not None:
                private = await self._private_streams(nick_key)
        deadline = time.monotonic() + query.budget
        start = "+" if query.before is None else f"({query.before}-0"
        mine = "" if account is None else str(account)
        scans = [_Scan(c, start, mine) for c in searchable(query, private)]
        scanned = 0
        for scan in scans:  # one at a time: each answer is read in one go on the loop
            scanned += await self._fill(scan)
        heap = [(-scan.entries[0][0], i) for i, scan in enumerate(scans) if scan.entries]
        heapq.heapify(heap)
        hits: list[tuple[str, int]] = []
        matched, cut = 0, False
        while heap and len(hits) <= query.limit:
            if scanned >= SCAN_MAX or time.monotonic() > deadline:
                cut = True
                break
            _, i = heapq.heappop(heap)
            scan = scans[i]
            id_, text = scan.entries.popleft()
            if match.matches(text):
                hits.append((scan.conversation, id_))
            matched += 1
            if matched % SEARCH_CHUNK == 0:
                await asyncio.sleep(0)  # matching is work on the loop: let others in
            scanned += await self._fill(scan)
            if scan.entries:
                heapq.heappush(heap, (-scan.entries[0][0], i))
        wanted = hits[: query.limit]
        messages = await asyncio.gather(*(self._message(c, id_) for c, id_ in wanted))
        found = [m for m in messages if m is not None]  # None: trimmed meanwhile
        return SearchResult(found[: query.limit], len(hits) > query.limit, cut)

    async def _fill(self, scan: _Scan) -> int:
        """Read pages of a scanned stream until it has an entry to match or
        has no more (a page of a private conversation may hold none of the
        account's); return the entries read."""
        read = 0
        while not scan.entries and not scan.done:
            read += await self._page(scan)
        return read

    async def _page(self, scan: _Scan) -> int:
        """Read the next page of a scanned stream; return the entries read."""
        try:
            count, last, *pairs = await self.link.call(
                "search_page", scan.conversation, scan.end, SEARCH_CHUNK, scan.account
            )
        except Unavailable as exc:
            raise StoreError(str(exc)) from None
        for entry_id, text in zip(pairs[::2], pairs[1::2], strict=True):
            scan.entries.append((_entry_number(entry_id), as_text(text)))
        scan.done = int(count) < SEARCH_CHUNK
        if last:
            scan.end = "(" + as_text(last)
        return int(count)

    async def _message(self, conversation: str, id_: int) -> StoredMessage | None:
        entries = await self._read("XRANGE", P + "conv:" + conversation, f"{id_}-0", f"{id_}-0")
        if not entries:
            return None
        entry_id, fields = entries[0]
        return stream_message(conversation, as_text(entry_id), fields)


class _Scan:
    """One stream of a search: the entries read and not yet matched."""

    __slots__ = ("account", "conversation", "done", "end", "entries")

    def __init__(self, conversation: str, end: str, account: str) -> None:
        self.conversation = conversation
        #: Only this account's entries (private conversations), or "".
        self.account = account if conversation.startswith("@") else ""
        #: Where the next page starts.
        self.end = end
        #: (id, text), newest first.
        self.entries: deque[tuple[int, str]] = deque()
        self.done = False


def _entry_number(entry_id: bytes | str) -> int:
    """A message id from its stream entry id (``42-0``)."""
    return int(as_text(entry_id).partition("-")[0])


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


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
