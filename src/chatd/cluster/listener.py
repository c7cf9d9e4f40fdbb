"""Fan-in: this node's subscriptions to Redis and what arrives on them.

A node listens to its own channel (private messages, kicks, barriers), to
``chatd:rooms`` and to the channel of every room it has members in. The
:class:`Listener` keeps those subscriptions in step with the live rooms and
hands each message to the room manager (the :class:`~chatd.core.bus.Hub`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from chatd.cluster.link import COMMAND_TIMEOUT, RedisLink, Unavailable, as_text, reason_of
from chatd.cluster.scripts import P
from chatd.core.bus import Hub
from chatd.protocol import (
    DEFAULT_ROOM,
    Direct,
    Joined,
    Left,
    Message,
    NickChanged,
    RoomChanged,
    TopicIs,
    name_key,
)

#: Messages from Redis handled before the reader lets other tasks run.
_READ_BATCH = 16

logger = logging.getLogger(__name__)


class Listener:
    """The subscriber connection, its channels and the read loop."""

    def __init__(
        self,
        link: RedisLink,
        node: str,
        hub: Hub,
        *,
        opening: Callable[[str], bool],
        barrier_back: Callable[[int], None],
        account: Callable[[list[Any]], None],
    ) -> None:
        self.link = link
        self.node = node
        self.hub = hub
        #: Whether a room is being made live here (its channel must stay).
        self._opening = opening
        #: A barrier of this node's came back (its number).
        self._barrier_back = barrier_back
        #: News of an account connected through several nodes (ClusterBus).
        self._account = account
        self._pubsub: Any = None
        self._subscribed: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader_up = asyncio.Event()
        #: Renames seen lately, (origin, event id): one copy per room arrives.
        self._renames: deque[tuple[str, int]] = deque(maxlen=256)
        #: Subscription changes go out one at a time, in order.
        self._subscribing = asyncio.Lock()

    def lost(self) -> None:
        """Redis is gone: what waits for a subscription fails."""
        self._reader_up.clear()
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(Unavailable(self.link.why))
                future.exception()
        self._confirm.clear()

    async def cancel(self) -> None:
        """Stop changing subscriptions: pending unsubscriptions are cancelled."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Close the subscriber connection (after cancel)."""
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None

    def closed(self, room_key: str) -> None:
        """The room has no member here any more: stop listening to it."""
        if room_key in self._subscribed:
            self._subscribed.discard(room_key)
            if self._pubsub is not None and self.link.up:
                task = asyncio.create_task(self._unsubscribe(room_key))
                self._tasks.add(task)
                task.add_done_callback(self._forget_task)

    async def subscribe_all(self) -> None:
        """A fresh subscriber connection, listening to every live room."""
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        self._pubsub = self.link.redis.pubsub()
        self._subscribed = {room.key for room in self.hub.live_rooms()} | {DEFAULT_ROOM}
        channels = [P + "n:" + self.node, P + "rooms"]
        channels += [P + "r:" + key for key in self._subscribed]
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await self._pubsub.subscribe(*channels)
        self._reader_up.set()

    async def subscribe(self, key: str) -> None:
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
                if key in self._subscribed or self._opening(key):
                    return  # live again meanwhile
                await self._pubsub.unsubscribe(P + "r:" + key)
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("unsubscribe #%s: %s", key, reason_of(exc))

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)

    async def read_loop(self) -> None:
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
            future = self._confirm.pop(as_text(message["channel"]), None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind != "message":
            return
        data = json.loads(message["data"])
        origin, what = data[0], data[1]
        hub = self.hub
        if what == "m":
            _, _, id_, ts, room, sender, text, kind = data
            kind = int(kind)  # 0 a line, 1 an action, 2 a notice (true/false from before)
            said = Message(int(id_), ts, room, sender, text, kind == 1, notice=kind == 2)
            hub.arrived(said, here=origin == self.node)
        elif what in ("d", "ds"):
            _, _, id_, ts, sender, to, text, *notice = data
            direct = Direct(int(id_), ts, sender, to, text, notice=notice == [True])
            if what == "d":
                hub.direct_arrived(direct)
            else:  # a copy for the sender's account, connected here too
                hub.direct_copy(direct)
        elif what[0] == "a":
            self._account(data)
        elif what == "b":
            self._barrier_back(data[2])
        elif what == "k":
            hub.kick(data[2], data[3])
        elif what in ("rc", "rr"):
            # This node's own too: in cluster mode only Redis knows a room is new.
            event = "created" if what == "rc" else "removed"
            hub.room_changed(RoomChanged(data[2], event, int(data[3])))
        elif origin == self.node:
            return  # this node's own event: its members have seen it
        elif what == "M":
            hub.moderated(data[2])
        elif what == "j":
            hub.event_arrived(name_key(data[2]), Joined(data[2], data[3]))
        elif what == "l":
            hub.event_arrived(name_key(data[2]), Left(data[2], data[3], data[4]))
        elif what == "t":
            _, _, room, topic, by = data
            hub.event_arrived(name_key(room), TopicIs(room, topic, by, changed=True))
        elif what == "n":
            # Published to each of the member's rooms: act on the first copy.
            mark = (origin, data[5])
            if mark not in self._renames:
                self._renames.append(mark)
                hub.rename_arrived(NickChanged(data[2], data[3]), data[4])
