"""Cluster mode: several daemons, one chat, through one Redis server.

Each daemon (a *node*) keeps its own members in its own
:class:`~chatd.core.rooms.RoomManager`; Redis holds what the nodes share:

===========================  ===================================================
``chatd:nicks``              hash: nickname key -> ``node TAB nick TAB account``
``chatd:node:NODE``          set: the nickname keys a node holds
``chatd:in:NODE:NICK``       set: the rooms a nickname on a node is in
``chatd:members:ROOM``       hash: nickname key -> ``node TAB nick``
``chatd:roomnames``          hash: room key -> display name (rooms in use)
``chatd:topics``             hash: room key -> JSON ``[name, topic, by]``
``chatd:nodes``              sorted set: node -> heartbeat deadline (ms)
``chatd:msgid``              counter: the id of the last message
``chatd:conv:CONV``          stream per room or private conversation, capped
``chatd:accounts``           hash: nickname key -> JSON account
``chatd:accountid``          counter: the id of the last account
``chatd:accountrooms``       hash: account id -> JSON ``[[room, ...], current]``
===========================  ===================================================

Channels: ``chatd:r:ROOM`` carries a room's events, ``chatd:n:NODE`` what
is addressed to one node (private messages, kicks, barriers), and
``chatd:rooms`` rooms coming into use and going out of use (for the members
that ``/rooms watch``). A node subscribes to the rooms it has members in, to
its own channel and to ``chatd:rooms``.

Every change is one Lua script, so Redis applies it atomically: a message
takes its id from ``chatd:msgid``, is appended to its stream and published,
in one step. Redis runs scripts one at a time, so the order of ids is the
order of publication, and every subscriber sees a room's messages in that
order. A node delivers room messages when they come back from Redis, its
own included: that is what gives every node the same order.

The event loop never waits on Redis for a room message: writes go through
one bounded queue, sent in pipelined batches by one task, and the sender
learns of a failure from the message's completion. While Redis cannot be
reached, senders are told ``cluster_unavailable``, the node reconnects with
backoff, then writes its own state back (nicknames, memberships),
resubscribes, and fetches from the streams what its rooms missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from chatd.errors import (
    ClusterUnavailable,
    NickRegistered,
    NickTaken,
    NoSuchNick,
    NoSuchRoom,
    RoomExists,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Direct,
    Event,
    Joined,
    Left,
    Message,
    NickChanged,
    RoomChanged,
    RoomList,
    TopicIs,
    WhoList,
    name_key,
)
from chatd.store import (
    Account,
    AccountRooms,
    Done,
    RoomRecord,
    Store,
    StoredMessage,
    StoreError,
)

if TYPE_CHECKING:
    from chatd.core.rooms import Member, RoomManager

#: Messages from Redis handled before the reader lets other tasks run.
_READ_BATCH = 16

logger = logging.getLogger(__name__)

P: Final = "chatd:"
#: Writes queued for Redis before new ones are refused (cluster_unavailable).
MAX_QUEUED: Final = 20_000
#: Connections to Redis per node (the subscriber, the writer, reads).
MAX_CONNECTIONS: Final = 16
#: Most writes in one pipelined batch.
BATCH_MAX: Final = 500
#: Seconds a single Redis command may take before Redis counts as gone.
COMMAND_TIMEOUT: Final = 5.0
#: Reconnect backoff: first and longest wait, in seconds.
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 2.0
#: Most messages fetched per room from its stream after an outage.
CATCH_UP_MAX: Final = 1000

# -- scripts ------------------------------------------------------------------
# Shared helpers: a value "node TAB nick [TAB account]" and its parts.
_LUA_HEAD = """
local P = 'chatd:'
local function owner(v) return string.match(v, '^([^\\t]*)') end
-- A room whose last member went, unless it stays (general, a topic): removed.
local function vacated(node, room)
  if room ~= 'general' and redis.call('EXISTS', P..'members:'..room) == 0
      and redis.call('HEXISTS', P..'topics', room) == 0 then
    local name = redis.call('HGET', P..'roomnames', room) or room
    redis.call('PUBLISH', P..'rooms', cjson.encode({node, 'rr', name, 0}))
  end
end
"""

#: Take a nickname for a member of this node (or change one).
#: ARGV: node, key, nick, account, old key ('' if none), guest ('1'/'0'),
#: takeover ('1'/'0'), kick payload, old nick (for the rename event).
CLAIM = (
    _LUA_HEAD
    + """
local node, key, nick, account, old = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if ARGV[6] == '1' and key ~= old and redis.call('HEXISTS', P..'accounts', key) == 1 then
  return 'registered'
end
local held = redis.call('HGET', P..'nicks', key)
if held and owner(held) ~= node then
  if ARGV[7] ~= '1' then return 'taken' end
  redis.call('PUBLISH', P..'n:'..owner(held), ARGV[8])
end
redis.call('HSET', P..'nicks', key, node..'\\t'..nick..'\\t'..account)
redis.call('SADD', P..'node:'..node, key)
if old ~= '' then
  local rooms = redis.call('SMEMBERS', P..'in:'..node..':'..old)
  if old ~= key then
    local v = redis.call('HGET', P..'nicks', old)
    if v and owner(v) == node then redis.call('HDEL', P..'nicks', old) end
    redis.call('SREM', P..'node:'..node, old)
    if #rooms > 0 then
      redis.call('RENAME', P..'in:'..node..':'..old, P..'in:'..node..':'..key)
    end
  end
  for _, room in ipairs(rooms) do
    local m = redis.call('HGET', P..'members:'..room, old)
    if m and owner(m) == node then redis.call('HDEL', P..'members:'..room, old) end
    redis.call('HSET', P..'members:'..room, key, node..'\\t'..nick)
  end
  if #rooms > 0 then
    local event = cjson.encode({node, 'n', ARGV[9], nick, rooms,
      redis.call('INCR', P..'eventid')})
    for _, room in ipairs(rooms) do redis.call('PUBLISH', P..'r:'..room, event) end
  end
end
return 'ok'
"""
)

#: Let go of a nickname (if this node still holds it). ARGV: node, key.
RELEASE = (
    _LUA_HEAD
    + """
local node, key = ARGV[1], ARGV[2]
local v = redis.call('HGET', P..'nicks', key)
if v and owner(v) == node then redis.call('HDEL', P..'nicks', key) end
redis.call('SREM', P..'node:'..node, key)
redis.call('DEL', P..'in:'..node..':'..key)
return 1
"""
)

#: A member of this node is in a room. ARGV: node, key, nick, room key, room name.
#: The first member of a room not in use (no members, no topic) creates it:
#: that is published on ``chatd:rooms``.
JOIN = """
local P = 'chatd:'
local node, key, nick, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fresh = room ~= 'general' and redis.call('EXISTS', P..'members:'..room) == 0
  and redis.call('HEXISTS', P..'topics', room) == 0
redis.call('HSET', P..'members:'..room, key, node..'\\t'..nick)
redis.call('SADD', P..'in:'..node..':'..key, room)
redis.call('HSETNX', P..'roomnames', room, ARGV[5])
if fresh then
  redis.call('PUBLISH', P..'rooms',
    cjson.encode({node, 'rc', redis.call('HGET', P..'roomnames', room), 1}))
end
return 1
"""

#: A member of this node left a room. ARGV: node, key, room key.
LEAVE = (
    _LUA_HEAD
    + """
local node, key, room = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HGET', P..'members:'..room, key)
if m and owner(m) == node then
  redis.call('HDEL', P..'members:'..room, key)
  vacated(node, room)
end
redis.call('SREM', P..'in:'..node..':'..key, room)
return 1
"""
)

#: A room message: id, stream, publication, in one step.
#: ARGV: node, room key, cap, ts, room name, sender, text, action, account.
SAY = """
local P = 'chatd:'
local id = redis.call('INCR', P..'msgid')
redis.call('XADD', P..'conv:'..ARGV[2], 'MAXLEN', '~', ARGV[3], id..'-0',
  'ts', ARGV[4], 'room', ARGV[5], 'from', ARGV[6], 'text', ARGV[7], 'action', ARGV[8],
  'sa', ARGV[9])
redis.call('PUBLISH', P..'r:'..ARGV[2], cjson.encode({ARGV[1], 'm', id, tonumber(ARGV[4]),
  ARGV[5], ARGV[6], ARGV[7], ARGV[8] == '1'}))
return id
"""

#: A private message to whoever holds a nickname, on any node.
#: ARGV: node, target key, cap, ts, sender, text, sender account, sender key.
#: Returns {id, target nick} or {0} if nobody holds it.
DIRECT = (
    _LUA_HEAD
    + """
local held = redis.call('HGET', P..'nicks', ARGV[2])
if not held then return {0, ''} end
local target_node, to, account = string.match(held, '^([^\\t]*)\\t([^\\t]*)\\t?(.*)$')
local a, b = ARGV[8], ARGV[2]
if b < a then a, b = b, a end
local id = redis.call('INCR', P..'msgid')
redis.call('XADD', P..'conv:@'..a..':'..b, 'MAXLEN', '~', ARGV[3], id..'-0',
  'ts', ARGV[4], 'from', ARGV[5], 'to', to, 'text', ARGV[6], 'sa', ARGV[7], 'ta', account)
redis.call('PUBLISH', P..'n:'..target_node, cjson.encode({ARGV[1], 'd', id, tonumber(ARGV[4]),
  ARGV[5], to, ARGV[6]}))
return {id, to}
"""
)

#: Refresh this node's heartbeat. ARGV: node, ttl (ms). Returns 1 if the node
#: was missing (new, or dropped by the others meanwhile).
HEARTBEAT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZADD', 'chatd:nodes', now + ARGV[2], ARGV[1])
"""

#: Drop the nodes whose heartbeat deadline passed (or the node ARGV[1], if
#: given): their nicknames, memberships, and a leave event for each (reason
#: ARGV[2]; none if ARGV[3] is '1').
REAP = (
    _LUA_HEAD
    + """
local dead
if ARGV[1] and ARGV[1] ~= '' then
  dead = {ARGV[1]}
else
  local t = redis.call('TIME')
  dead = redis.call('ZRANGEBYSCORE', P..'nodes', '-inf', t[1] * 1000 + math.floor(t[2] / 1000))
end
for _, node in ipairs(dead) do
  for _, key in ipairs(redis.call('SMEMBERS', P..'node:'..node)) do
    local v = redis.call('HGET', P..'nicks', key)
    if v and owner(v) == node then redis.call('HDEL', P..'nicks', key) end
    local inkey = P..'in:'..node..':'..key
    for _, room in ipairs(redis.call('SMEMBERS', inkey)) do
      local m = redis.call('HGET', P..'members:'..room, key)
      if m and owner(m) == node then
        redis.call('HDEL', P..'members:'..room, key)
        local name = redis.call('HGET', P..'roomnames', room) or room
        if ARGV[3] ~= '1' then
          redis.call('PUBLISH', P..'r:'..room, cjson.encode({'', 'l', name,
            string.match(m, '\\t(.*)$'), ARGV[2]}))
          vacated('', room)
        end
      end
    end
    redis.call('DEL', inkey)
  end
  redis.call('DEL', P..'node:'..node)
  redis.call('ZREM', P..'nodes', node)
end
return dead
"""
)

#: The rooms in use (members anywhere, a topic, or general) and their member
#: counts; forgets the names of rooms no longer in use.
ROOMS = """
local P = 'chatd:'
local names = redis.call('HGETALL', P..'roomnames')
local out = {}
for i = 1, #names, 2 do
  local room = names[i]
  local n = redis.call('HLEN', P..'members:'..room)
  if n == 0 and room ~= 'general' and redis.call('HEXISTS', P..'topics', room) == 0 then
    redis.call('HDEL', P..'roomnames', room)
  else
    table.insert(out, names[i + 1])
    table.insert(out, n)
  end
end
return out
"""

#: Keep message ids growing after Redis lost its data: the counter goes up
#: to at least the last id this node saw. ARGV: that id.
BUMP_ID = """
local current = tonumber(redis.call('GET', 'chatd:msgid') or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', 'chatd:msgid', ARGV[1]) end
return 1
"""

#: Create an account unless the nickname has one. ARGV: key, JSON without id.
CREATE_ACCOUNT = """
local P = 'chatd:'
if redis.call('HEXISTS', P..'accounts', ARGV[1]) == 1 then return 0 end
local id = redis.call('INCR', P..'accountid')
local a = cjson.decode(ARGV[2])
a['id'] = id
redis.call('HSET', P..'accounts', ARGV[1], cjson.encode(a))
return id
"""

#: Change an account's password hash. ARGV: key, hash.
SET_PASSWORD = """
local P = 'chatd:'
local v = redis.call('HGET', P..'accounts', ARGV[1])
if not v then return 0 end
local a = cjson.decode(v)
a['hash'] = ARGV[2]
redis.call('HSET', P..'accounts', ARGV[1], cjson.encode(a))
return 1
"""


class Unavailable(Exception):
    """Redis cannot be used right now."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisLink:
    """One Redis server: a bounded, ordered write queue and the link's state.

    Writes (``submit``) are sent in order by one task, in pipelined batches.
    When a batch fails for want of Redis, the link goes *down*: the batch and
    everything queued fail with :class:`Unavailable`, new writes fail at
    once, and the task reconnects with backoff. Once Redis answers again,
    ``on_up`` runs (the cluster writes its state back) and the link is up.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._sources: dict[str, str] = {}
        self._scripts: dict[str, Any] = {}
        self.redis = self._client()
        self._queue: deque[tuple[str, tuple[Any, ...], Callable[[Any], None]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.up = False
        #: Why the link is down, for errors and logs.
        self.why = "not connected"
        self.went_down: float | None = None
        self._up_event = asyncio.Event()
        self.on_up: Callable[[], Awaitable[None]] | None = None
        self.on_down: Callable[[], None] | None = None

    def _client(self) -> aioredis.Redis:
        """A new client and pool (after an outage: commands cut off by a
        deadline may have left connections half-read in the old one)."""
        # A blocking pool: past MAX_CONNECTIONS a command waits for a free
        # connection (up to COMMAND_TIMEOUT) instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=COMMAND_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        client = aioredis.Redis.from_pool(pool)  # closes the pool with it
        self._scripts = {name: client.register_script(src) for name, src in self._sources.items()}
        return client

    def script(self, name: str, source: str) -> None:
        self._sources[name] = source
        self._scripts[name] = self.redis.register_script(source)

    async def run_script(self, name: str, *args: Any, client: Any = None) -> Any:
        """A script, with no bookkeeping (the caller handles errors)."""
        return await self._scripts[name](args=list(args), client=client)

    async def open(self) -> None:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"cannot reach Redis at {self.url}: {_reason(exc)}") from None
        self.up = True
        self._up_event.set()
        self._task = asyncio.create_task(self._run(), name="chatd-redis-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_queued("the daemon is shutting down")
        await self.redis.aclose()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def submit(
        self,
        name: str,
        args: tuple[Any, ...],
        done: Callable[[Any], None],
        *,
        essential: bool = False,
    ) -> None:
        """Queue a script (by name) or a command ("PUBLISH"); ``done`` gets the
        result, or an :class:`Unavailable` if it was not applied.

        Past MAX_QUEUED, writes are refused, except ``essential`` ones
        (presence changes: bounded by the members, and never to be dropped
        while Redis is up)."""
        if not self.up:
            done(Unavailable(self.why))
            return
        if len(self._queue) >= MAX_QUEUED and not essential:
            done(Unavailable("Redis is falling behind"))
            return
        self._queue.append((name, args, done))
        self._idle.clear()
        self._wake.set()

    async def call(self, name: str, *args: Any) -> Any:
        """Run a script through the write queue, in order with every write
        before it, and wait for its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any) -> None:
            if not future.done():
                future.set_result(result)

        self.submit(name, args, done, essential=True)
        result = await future
        if isinstance(result, Unavailable):
            raise result
        if isinstance(result, BaseException):
            raise Unavailable(f"Redis said: {result}")
        return result

    async def command(self, *args: Any) -> Any:
        """Run one Redis command now."""
        if not self.up:
            raise Unavailable(self.why)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                return await self.raw(*args)
        except ResponseError as exc:
            raise Unavailable(f"Redis said: {exc}") from None
        except (RedisError, OSError, TimeoutError) as exc:
            self.down(exc)
            raise Unavailable(self.why) from None

    async def raw(self, *args: Any) -> Any:
        """One Redis command, with no bookkeeping (the caller handles errors)."""
        return await cast(Any, self.redis).execute_command(*args)

    async def drained(self) -> None:
        """Wait until every queued write is applied (or failed)."""
        await self._idle.wait()

    async def wait_up(self) -> None:
        await self._up_event.wait()

    def down(self, exc: BaseException | str) -> None:
        """Mark Redis gone: fail what is queued; the writer task reconnects."""
        if not self.up:
            return
        self.up = False
        self.why = f"the cluster is unavailable (Redis: {_reason(exc)})"
        self.went_down = time.monotonic()
        self._up_event.clear()
        logger.error("lost Redis at %s: %s", self.url, _reason(exc))
        self._fail_queued(self.why)
        self._wake.set()
        if self.on_down is not None:
            self.on_down()

    def _fail_queued(self, why: str) -> None:
        queued, self._queue = self._queue, deque()
        self._idle.set()
        for _, _, done in queued:
            _complete(done, Unavailable(why))

    async def _run(self) -> None:
        while True:
            if not self.up:
                await self._reconnect()
                continue
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    results = await self._send(batch)
            except (RedisError, OSError, TimeoutError) as exc:
                for _, _, done in batch:
                    _complete(done, Unavailable(f"the cluster is unavailable: {_reason(exc)}"))
                self.down(exc)
                continue
            for (_, _, done), result in zip(batch, results, strict=True):
                _complete(done, result)

    async def _send(
        self, batch: list[tuple[str, tuple[Any, ...], Callable[[Any], None]]]
    ) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, args, _ in batch:
                if name.isupper():
                    pipe.execute_command(name, *args)
                else:
                    await self.run_script(name, *args, client=pipe)  # queues it
            return list(await pipe.execute(raise_on_error=False))

    async def _reconnect(self) -> None:
        old, self.redis = self.redis, self._client()
        with contextlib.suppress(Exception):
            await old.aclose()
        wait = BACKOFF_FIRST
        while not self.up:
            await asyncio.sleep(wait * (0.5 + random.random()))  # jitter
            wait = min(wait * 2, BACKOFF_MAX)
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self.redis.ping()
                    if self.on_up is not None:
                        await self.on_up()
            except (RedisError, OSError, TimeoutError) as exc:
                logger.debug("Redis still unreachable: %s", _reason(exc))
                continue
            except Exception:
                logger.exception("rejoining the cluster failed")
                continue
            self.up = True
            self._up_event.set()
            logger.warning(
                "Redis at %s is back after %.1f s",
                self.url,
                time.monotonic() - (self.went_down or time.monotonic()),
            )


def _complete(done: Callable[[Any], None], result: Any) -> None:
    try:
        done(result)
    except Exception:
        logger.exception("Redis write completion failed")


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).split("\n")[0]
    return text or exc.__class__.__name__


def _failure(result: Any) -> BaseException | None:
    """The exception a queued write ended with, if any, as the client sees it."""
    if isinstance(result, Unavailable):
        return ClusterUnavailable(f"your message was not sent: {result}")
    if isinstance(result, BaseException):
        return ClusterUnavailable(f"your message was not sent: Redis said {result}")
    return None


class RedisStore(Store):
    """Accounts, topics and history in Redis, shared by every node.

    Messages are kept in one stream per room or private conversation, each
    trimmed to about ``history`` entries; accounts and topics are kept until
    deleted. ``append`` also publishes the message to its room (see
    :data:`SAY`): in cluster mode storing and fanning out are one step.
    """

    def __init__(self, link: RedisLink, *, node: str, history: int) -> None:
        self.link = link
        self.node = node
        self.history = history
        self._registered: set[str] = set()
        for name, source in (
            ("say", SAY),
            ("create_account", CREATE_ACCOUNT),
            ("set_password", SET_PASSWORD),
        ):
            link.script(name, source)

    async def open(self) -> None:
        await self.link.open()
        keys = await self.link.redis.hkeys(P + "accounts")
        self._registered = {_text(k) for k in keys}

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
            exc = _failure(result)
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
            "1" if message.action else "0",
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
                m = _stream_message(conversation, _text(entry_id), fields)
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
            end = f"({_text(entries[-1][0])}"
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
            account_id = await self.link.call("create_account", key, value)
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
    return Account(int(a["id"]), a["nick"], a["hash"], float(a["created"]))


def _stream_message(conversation: str, entry_id: str, fields: dict[bytes, bytes]) -> StoredMessage:
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
    )


class Cluster:
    """This node's part in the cluster: presence, subscriptions, fan-in.

    The :class:`~chatd.core.rooms.RoomManager` calls the non-async methods as its
    members change (they queue writes and never wait); sessions await the
    async ones (claiming a nickname, opening a room, queries).
    """

    def __init__(self, store: RedisStore, manager: RoomManager, *, ttl: float) -> None:
        self.store = store
        self.link = link = store.link
        self.manager = manager
        self.node = store.node
        self.history = store.history
        self.ttl = ttl
        for name, source in (
            ("claim", CLAIM),
            ("release", RELEASE),
            ("join", JOIN),
            ("leave", LEAVE),
            ("direct", DIRECT),
            ("heartbeat", HEARTBEAT),
            ("reap", REAP),
            ("rooms", ROOMS),
            ("bump_id", BUMP_ID),
        ):
            link.script(name, source)
        link.on_up = self._rejoin
        link.on_down = self._lost
        self._pubsub: Any = None
        self._subscribed: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._opening: dict[str, asyncio.Future[bool]] = {}
        self._barriers: dict[int, Callable[[], None]] = {}
        self._barrier_seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._reader_up = asyncio.Event()
        #: Renames seen lately, (origin, event id): one copy per room arrives.
        self._renames: deque[tuple[str, int]] = deque(maxlen=256)
        #: Nicknames being claimed by members of this node right now.
        self._claiming: set[str] = set()
        #: Subscription changes go out one at a time, in order.
        self._subscribing = asyncio.Lock()
        manager.cluster = self

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Take this node's place: drop a stale self, subscribe, heartbeat."""
        await self.link.call("reap", self.node, "node restarted")
        await self.link.call("heartbeat", self.node, int(self.ttl * 1000))
        await self.link.command("HSETNX", P + "roomnames", DEFAULT_ROOM, DEFAULT_ROOM)
        await self._subscribe_all()
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="chatd-redis-reader"),
            asyncio.create_task(self._heartbeat_loop(), name="chatd-heartbeat"),
        ]
        logger.info("node %s joined the cluster at %s", self.node, self.link.url)

    async def stop(self) -> None:
        """Leave: let the queued writes finish, then remove this node's state."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self.link.drained()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("cluster task %s failed", task.get_name())
        self._tasks = []
        with contextlib.suppress(Unavailable, RedisError):
            await self.link.call("reap", self.node, "node stopped")
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None

    # -- called by the room manager (never wait) -----------------------------

    def joined(self, member: Member, room_key: str, room_name: str) -> None:
        assert member.key is not None
        args = (self.node, member.key, member.nick, room_key, room_name)
        self.link.submit("join", args, _log_failure, essential=True)

    def left(self, member: Member, room_key: str) -> None:
        assert member.key is not None
        self.link.submit("leave", (self.node, member.key, room_key), _log_failure, essential=True)

    def released(self, key: str) -> None:
        self.link.submit("release", (self.node, key), _log_failure, essential=True)

    def publish(self, room_key: str, event: Event) -> None:
        """Tell the other nodes' members of a room what happened here."""
        payload = _encode(self.node, event)
        if payload is not None:
            self.link.submit(
                "PUBLISH", (P + "r:" + room_key, payload), _log_failure, essential=True
            )

    def opening(self, room_key: str) -> bool:
        """Whether a session is making the room live here right now."""
        return room_key in self._opening

    def closed(self, room_key: str) -> None:
        """The room has no member here any more: stop listening to it."""
        if room_key in self._subscribed:
            self._subscribed.discard(room_key)
            if self._pubsub is not None and self.link.up:
                task = asyncio.create_task(self._unsubscribe(room_key))
                self._tasks.append(task)
                task.add_done_callback(self._forget_task)

    def barrier(self, done: Callable[[], None]) -> None:
        """``done`` once every write made before is applied and every message
        it published has come back to this node."""
        self._barrier_seq += 1
        seq = self._barrier_seq
        self._barriers[seq] = done

        def sent(result: Any) -> None:
            if isinstance(result, BaseException):
                self._barriers.pop(seq, None)
                done()

        payload = json.dumps([self.node, "b", seq])
        self.link.submit("PUBLISH", (P + "n:" + self.node, payload), sent)

    # -- awaited by sessions ---------------------------------------------

    async def claim(
        self,
        member: Member,
        nick: str,
        *,
        account: int | None = None,
        takeover: bool = False,
        guest: bool = True,
    ) -> None:
        """Take ``nick`` cluster-wide for ``member`` (its old one is let go)."""
        key = name_key(nick)
        if key in self._claiming:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        self._claiming.add(key)
        try:
            await self._claim(member, nick, key, account, takeover, guest)
        finally:
            self._claiming.discard(key)

    async def _claim(
        self, member: Member, nick: str, key: str, account: int | None, takeover: bool, guest: bool
    ) -> None:
        kick = json.dumps([self.node, "k", key, "logged in from elsewhere"])
        result = await self._call(
            "claim",
            self.node,
            key,
            nick,
            "" if account is None else str(account),
            member.key or "",
            "1" if guest else "0",
            "1" if takeover else "0",
            kick,
            member.nick or "",
        )
        answer = _text(result)
        if answer == "taken":
            raise NickTaken(f"nickname {nick} is taken; pick another")
        if answer == "registered":
            self.store.note_registered(key)
            raise NickRegistered(
                f"{nick} is a registered nickname; /login {nick} PASSWORD, or pick another"
            )

    async def open(self, room_name: str, *, create: bool) -> None:
        """Make a room live here: subscribed, with its topic and history."""
        key = name_key(room_name)
        if key in self._opening:
            await asyncio.shield(self._opening[key])
            return
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            await self._open(room_name, key, create=create)
            future.set_result(True)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters see it through shield
            raise
        finally:
            del self._opening[key]

    async def _open(self, room_name: str, key: str, *, create: bool) -> None:
        if create:
            members = await self._command("HLEN", P + "members:" + key)
            topic = await self._command("HEXISTS", P + "topics", key)
            if members or topic:
                name = await self._command("HGET", P + "roomnames", key)
                shown = _text(name) if name else room_name
                raise RoomExists(f"room #{shown} already exists; /join it")
        manager = self.manager
        room = manager.open_room(room_name)
        try:
            await self._subscribe(key)
            record = await self.store.topic(key)
            if record is not None:
                room.name, room.topic, room.topic_by = record.name, record.topic, record.topic_by
            else:
                name = await self._command("HGET", P + "roomnames", key)
                if name and not room.members:
                    room.name = _text(name)
            if manager.history_on_join:
                history = await self.store.recent(key, manager.history_on_join)
                manager.seed(room, *history)
        except (Unavailable, StoreError) as exc:
            manager.close_room(room)
            raise ClusterUnavailable(str(exc)) from None
        except BaseException:
            manager.close_room(room)
            raise

    async def direct(self, member: Member, to: str, text: str, ts: float) -> Direct:
        """Send a private message to ``to`` on whichever node holds it."""
        assert member.key is not None
        result = await self._call(
            "direct",
            self.node,
            name_key(to),
            self.history,
            repr(ts),
            member.nick or "",
            text,
            "" if member.account is None else str(member.account),
            member.key,
        )
        message_id, target = int(result[0]), _text(result[1])
        if not message_id:
            raise NoSuchNick(f"nobody is called {to}")
        return Direct(message_id, ts, member.nick or "", target, text)

    async def room_list(self) -> RoomList:
        flat = await self._call("rooms")  # through the write queue: after this node's writes
        pairs = [(_text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        pairs.sort(key=lambda pair: name_key(pair[0]))
        return RoomList(tuple(pairs))

    async def who(self, room_name: str) -> WhoList:
        key = name_key(room_name)
        # Through the write queue, so that it sees this node's earlier writes:
        # a /who right after a /join finds the member there.
        values = await self._call("HVALS", P + "members:" + key)
        if (
            not values
            and key != DEFAULT_ROOM
            and not await self._command("HEXISTS", P + "topics", key)
        ):
            raise NoSuchRoom(f"no room #{room_name}")
        name = await self._command("HGET", P + "roomnames", key)
        nicks = sorted((_text(v).partition("\t")[2] for v in values), key=str.lower)
        return WhoList(_text(name) if name else room_name, tuple(nicks))

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            return await self.link.call(name, *args)
        except Unavailable as exc:
            raise ClusterUnavailable(str(exc)) from None

    async def _command(self, *args: Any) -> Any:
        try:
            return await self.link.command(*args)
        except Unavailable as exc:
            raise ClusterUnavailable(str(exc)) from None

    # -- subscriptions -----------------------------------------------------

    async def _subscribe_all(self) -> None:
        """A fresh subscriber connection, listening to every live room."""
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        self._pubsub = self.link.redis.pubsub()
        self._subscribed = {room.key for room in self.manager.live_rooms()} | {DEFAULT_ROOM}
        channels = [P + "n:" + self.node, P + "rooms"]
        channels += [P + "r:" + key for key in self._subscribed]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._pubsub.subscribe(*channels)
        self._reader_up.set()

    async def _subscribe(self, key: str) -> None:
        if key in self._subscribed:
            return
        channel = P + "r:" + key
        confirmed = self._confirm.get(channel)
        if confirmed is None:
            confirmed = self._confirm[channel] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT), self._subscribing:
                # After any unsubscribe sent before: Redis applies them in order.
                await self._pubsub.subscribe(channel)
                await asyncio.shield(confirmed)
        except (RedisError, OSError, TimeoutError) as exc:
            self._confirm.pop(channel, None)
            self.link.down(exc)
            raise Unavailable(self.link.why) from None
        self._subscribed.add(key)

    async def _unsubscribe(self, key: str) -> None:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT), self._subscribing:
                if key in self._subscribed or key in self._opening:
                    return  # live again meanwhile
                await self._pubsub.unsubscribe(P + "r:" + key)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("unsubscribe #%s: %s", key, _reason(exc))

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    # -- faults ------------------------------------------------------------

    def _lost(self) -> None:
        self._reader_up.clear()
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(Unavailable(self.link.why))
                future.exception()
        self._confirm.clear()
        for done in list(self._barriers.values()):
            done()
        self._barriers.clear()

    async def _rejoin(self) -> None:
        """Redis is back: write this node's state again, resubscribe, catch up.

        What Redis holds for this node is dropped first (without leave
        events) and written again from the members this node has now, so
        users who left during the outage leave no trace. Two pipelines,
        however many members.
        """
        node, manager, link = self.node, self.manager, self.link
        members = manager.members()
        seen = max((room.seen for room in manager.live_rooms()), default=0)
        async with link.redis.pipeline(transaction=False) as pipe:
            await link.run_script("reap", node, "", "1", client=pipe)
            await link.run_script("heartbeat", node, int(self.ttl * 1000), client=pipe)
            await link.run_script("bump_id", seen, client=pipe)
            pipe.hsetnx(P + "roomnames", DEFAULT_ROOM, DEFAULT_ROOM)
            for member in members:
                account = "" if member.account is None else str(member.account)
                args = (node, member.key, member.nick, account, "", "0", "0", "", "")
                await link.run_script("claim", *args, client=pipe)
            answers = (await pipe.execute())[4:]
        conflicts = [m for m, a in zip(members, answers, strict=True) if _text(a) == "taken"]
        async with link.redis.pipeline(transaction=False) as pipe:
            for member in members:
                if member in conflicts:
                    continue
                for room in member.rooms.values():
                    joined = (node, member.key, member.nick, room.key, room.name)
                    await link.run_script("join", *joined, client=pipe)
            await pipe.execute()
        await self._subscribe_all()
        for member in conflicts:
            manager.disconnect(member, "nickname taken elsewhere while Redis was away")
            member.kick("nickname taken elsewhere while Redis was away")
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Deliver what each live room missed while this node was cut off."""
        for room in self.manager.live_rooms():
            if room.seen == 0:
                continue
            entries = await self.link.raw(
                "XRANGE", P + "conv:" + room.key, f"({room.seen}-0", "+", "COUNT", CATCH_UP_MAX
            )
            for entry_id, fields in entries:
                m = _stream_message(room.key, _text(entry_id), fields)
                if m.room is not None:
                    self.manager.remote_message(
                        Message(m.id, m.ts, m.room, m.sender, m.text, m.action)
                    )

    async def _heartbeat_loop(self) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self.link.up:
                continue
            try:
                missing = await self.link.call("heartbeat", self.node, int(self.ttl * 1000))
                if missing:
                    # The others dropped this node (it was cut off too long):
                    # write its state back.
                    logger.warning("node %s was dropped from the cluster; rejoining", self.node)
                    self.link.down("this node was dropped from the cluster")
                    continue
                dead = await self.link.call("reap", "", "node lost")
                for node in dead:
                    logger.warning("node %s stopped answering; its users were dropped", _text(node))
            except (Unavailable, RedisError) as exc:
                logger.debug("heartbeat: %s", exc)

    # -- fan-in ------------------------------------------------------------

    async def _read_loop(self) -> None:
        handled = 0
        while True:
            if not self.link.up or not self._reader_up.is_set():
                await self.link.wait_up()
                await self._reader_up.wait()
                continue
            pubsub = self._pubsub
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError, TimeoutError) as exc:
                if pubsub is self._pubsub:
                    self.link.down(exc)
                continue
            except Exception as exc:  # a subscriber in a state redis-py cannot read
                logger.exception("the Redis subscriber failed")
                if pubsub is self._pubsub:
                    self.link.down(exc)
                continue
            if message is None:
                continue
            try:
                self._dispatch(message)
            except Exception:
                logger.exception("bad cluster message on %r", message.get("channel"))
            handled += 1
            if handled % _READ_BATCH == 0:
                # get_message returns buffered messages without suspending:
                # let the rest of the daemon run between batches.
                await asyncio.sleep(0)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe":
            future = self._confirm.pop(_text(message["channel"]), None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind != "message":
            return
        data = json.loads(message["data"])
        origin, what = data[0], data[1]
        manager = self.manager
        if what == "m":
            _, _, id_, ts, room, sender, text, action = data
            manager.remote_message(Message(int(id_), ts, room, sender, text, bool(action)))
        elif what == "d":
            _, _, id_, ts, sender, to, text = data
            manager.remote_direct(Direct(int(id_), ts, sender, to, text))
        elif what == "b":
            done = self._barriers.pop(data[2], None)
            if done is not None:
                done()
        elif what == "k":
            manager.remote_kick(data[2], data[3])
        elif what in ("rc", "rr"):
            # This node's own too: in cluster mode only Redis knows a room is new.
            event = "created" if what == "rc" else "removed"
            manager.remote_room(RoomChanged(data[2], event, int(data[3])))
        elif origin == self.node:
            return  # this node's own event: its members have seen it
        elif what == "j":
            manager.remote_event(name_key(data[2]), Joined(data[2], data[3]))
        elif what == "l":
            manager.remote_event(name_key(data[2]), Left(data[2], data[3], data[4]))
        elif what == "t":
            _, _, room, topic, by = data
            manager.remote_event(name_key(room), TopicIs(room, topic, by, changed=True))
        elif what == "n":
            # Published to each of the member's rooms: act on the first copy.
            mark = (origin, data[5])
            if mark not in self._renames:
                self._renames.append(mark)
                manager.remote_rename(NickChanged(data[2], data[3]), data[4])


def _encode(node: str, event: Event) -> str | None:
    """The cluster form of an event a node publishes to a room."""
    match event:
        case Joined(room, nick):
            return json.dumps([node, "j", room, nick])
        case Left(room, nick, reason):
            return json.dumps([node, "l", room, nick, reason])
        case TopicIs(room, topic, by):
            return json.dumps([node, "t", room, topic, by])
    return None


def _log_failure(result: Any) -> None:
    if isinstance(result, BaseException) and not isinstance(result, Unavailable):
        logger.error("Redis refused a presence update: %s", result)
