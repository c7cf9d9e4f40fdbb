"""The link to one Redis server: an ordered, bounded, pipelined write queue,
reconnection with backoff, and the link's state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from chatd.errors import (
    ClusterUnavailable,
)
from chatd.store import (
    StoreError,
)

logger = logging.getLogger(__name__)

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


class Unavailable(Exception):
    """Redis cannot be used right now."""


def as_text(value: bytes | str) -> str:
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
            raise StoreError(f"cannot reach Redis at {self.url}: {reason_of(exc)}") from None
        self.up = True
        self._up_event.set()
        self._task = asyncio.create_task(self._run(), name="chatd-redis-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # No writer is left: a write from now on fails at once, not never.
        self.up = False
        self.why = "the daemon is shutting down"
        self._up_event.clear()
        self._fail_queued(self.why)
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
        self.why = f"the cluster is unavailable (Redis: {reason_of(exc)})"
        self.went_down = time.monotonic()
        self._up_event.clear()
        logger.error("lost Redis at %s: %s", self.url, reason_of(exc))
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
                    _complete(done, Unavailable(f"the cluster is unavailable: {reason_of(exc)}"))
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
                logger.debug("Redis still unreachable: %s", reason_of(exc))
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


def reason_of(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).split("\n")[0]
    return text or exc.__class__.__name__


def failure_of(result: Any) -> BaseException | None:
    """The exception a queued write ended with, if any, as the client sees it."""
    if isinstance(result, Unavailable):
        return ClusterUnavailable(f"your message was not sent: {result}")
    if isinstance(result, BaseException):
        return ClusterUnavailable(f"your message was not sent: Redis said {result}")
    return None
