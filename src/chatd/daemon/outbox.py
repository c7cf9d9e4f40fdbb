"""The outbox: a connection's bounded output, its writer and its way out.

Output goes into a bounded outbox. Once per loop pass a flush callback
writes everything queued in one call; when the client reads slower than it
is written to, the writer task awaits ``drain()`` before the next flush, and
at the end it sends the last output and EOF. An idle connection has no
writer task and no waiting futures: they are made when needed, which keeps
an idle connection near 8 KiB.

Two kinds of output, two policies:

* fan-out from others (:meth:`Outbox.deliver`) never waits; a client whose
  outbox goes over ``max_queue_bytes`` or ``max_queue_events`` is dropped
  with a logged reason, so a slow reader never slows a room;
* answers to the client's own commands (:meth:`Outbox.reply`) are never
  dropped; instead the reader stops taking commands while the outbox is over
  a quarter of its bound, so a client that does not read is read more slowly.

The outbox is the :class:`~chatd.core.model.Member` the room manager
delivers to. The first delivery of a loop pass calls :meth:`Outbox.deliver`,
which schedules the flush and opens the pass's batch (``Member.batch``, the
outbox's own pending list); the rest of the pass, fan-out appends to it
with no call at all, and the flush checks the bounds for them. An outbox
that is behind (over its soft limit, or its transport congested) or
closing keeps no batch open: each delivery is checked as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from chatd.core.fanout import batches
from chatd.core.model import Member
from chatd.core.order import ReplyOrder
from chatd.protocol import Bye, Event, Format, Shutdown

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.core.pushback import Pushback
    from chatd.core.stats import Stats
    from chatd.transports.base import Connection

logger = logging.getLogger(__name__)

#: Seconds a closing connection waits for the client to close its side.
LINGER_SECONDS = 2.0
#: A client behind on its output whose output has not moved for this long
#: (its blocked write did not shrink) no longer holds back those who talk
#: to it (see Outbox.stall).
STALL_SECONDS = 1.0


class _Flusher:
    """Flushes every session with output once per loop pass, in one callback.

    A room message reaches dozens of sessions; one loop callback for all of
    them costs less than a callback each.
    """

    # No reference to the loop: the registry below is keyed weakly by it.
    __slots__ = ("__weakref__", "_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._scheduled = False

    def add(self, session: Outbox) -> None:
        self._dirty.append(session)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        batches().new_pass()  # every batch open so far is flushed below
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            try:
                session._flush()
            except Exception:
                # One session's bug must not stop everyone else's output.
                logger.exception("flushing %s failed", session.peer)
                session.drop("internal error")


_FLUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _FLUSHERS.get(loop)
    if flusher is None:
        flusher = _FLUSHERS[loop] = _Flusher()
    return flusher


class Outbox(Member):
    """A connection's output: what the room manager and its commands send it."""

    __slots__ = (
        "_batches",
        "_behind",
        "_closing",
        "_conn",
        "_dropped",
        "_flush_scheduled",
        "_flusher",
        "_in_flight",
        "_kick_timer",
        "_last_buffered",
        "_loop",
        "_max_bytes",
        "_max_events",
        "_ops_idle",
        "_order",
        "_pending",
        "_pending_bytes",
        "_progress_at",
        "_pushback",
        "_reader_waiter",
        "_settings",
        "_soft_bytes",
        "_soft_events",
        "_soft_since",
        "_stats",
        "_writer_task",
        "close_reason",
        "write_blocked_since",
    )

    def __init__(
        self, pushback: Pushback, stats: Stats, settings: Settings, conn: Connection, fmt: Format
    ) -> None:
        super().__init__(fmt)
        self._pushback = pushback
        self._stats = stats
        #: Resets a kicked connection that has not closed in time.
        self._kick_timer: asyncio.TimerHandle | None = None
        self._settings = settings
        self._conn = conn
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        #: Replies in command order (see begin_op); made by the first
        #: operation, so an idle connection holds none.
        self._order: ReplyOrder | None = None
        #: Done when no operation is unfinished (see ops_settled).
        self._ops_idle: asyncio.Future[None] | None = None
        self._max_bytes = settings.max_queue_bytes
        self._max_events = settings.max_queue_events
        self._soft_bytes = settings.soft_queue_bytes
        self._soft_events = settings.max_queue_events // 4
        #: Loop time at which fan-out found the outbox over the soft limit, or
        #: 0.0; reset when a sweep finds it under. Replies alone never set it:
        #: they are paced (see _wait_outbox).
        self._soft_since = 0.0
        #: Over the soft limit right now (pushback knows); while a write is
        #: blocked, what the transport held at the last look and when it was
        #: last seen to shrink (see stall).
        self._behind = False
        self._last_buffered = 0
        self._progress_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._flusher = _flusher(self._loop)
        self._batches = batches()
        #: A flush is due (a loop callback, or the writer after its drain).
        self._flush_scheduled = False
        #: The reader waits on this future (outbox full, or a pause) until a
        #: flush takes the outbox or the connection closes. Made on demand,
        #: like the writer task: an idle connection holds neither.
        self._reader_waiter: asyncio.Future[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False  # no more output is accepted
        self._dropped = False  # the connection was aborted
        self._in_flight = 0  # bytes of the batch whose drain() is waiting
        self.close_reason = ""
        #: Loop time at which the current write started waiting for the
        #: client to read, or 0.0. The sweep enforces write_timeout.
        self.write_blocked_since = 0.0

    @property
    def peer(self) -> str:
        return self._conn.peer

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def address(self) -> str:
        return self._conn.peer.rpartition(":")[0]

    def deliver(self, data: bytes) -> None:
        if self._closing:
            return
        if self.batch is not None and not self._close_batch_first():
            return
        pending = self._pending
        pending.append(data)
        self._pending_bytes += len(data)
        if not self._over_bounds(pending, self._pending_bytes):
            self._schedule_flush()

    def reply(self, data: bytes) -> None:
        if self._closing:
            return
        order = self._order
        if order is not None and order.busy:
            order.hold(data)  # an earlier command's outcome is still to come
            return
        self._queue((data,))

    def _queue(self, out: Sequence[bytes]) -> None:
        """Put replies in the outbox and see that it is flushed."""
        # Fan-out's part is checked as deliver() would have, before the
        # replies count: a reply is never what gets a client cut.
        if self.batch is not None and not self._close_batch_first():
            return
        self._pending.extend(out)
        self._pending_bytes += sum(map(len, out))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """One flush per loop pass, however many events arrive in it; until
        then fan-out appends to the batch opened here (see _flush)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.add(self)
            room = self._soft_bytes - self._pending_bytes - self._in_flight
            if not self._behind and self._batches.open(self, room):
                self.batch = self._pending

    def _close_batch_first(self) -> bool:
        """Close the open batch before queueing what does not come through
        fan-out, so that its contents are counted and checked first; False
        if that cut the client."""
        self.close_batch()
        return not self._closing

    def close_batch(self) -> None:
        if self.batch is not None:
            self.batch = None
            size = sum(map(len, self._pending))
            if size > self._pending_bytes and not self._over_bounds(self._pending, size):
                self._pending_bytes = size

    def stall(self, now: float) -> float:
        if self._closing:
            return 0.0
        if not self.write_blocked_since:
            return STALL_SECONDS  # its writes go through: it is reading
        # A blocked write shrinks only as the client reads: that is progress.
        buffered = self._conn.buffered()
        if buffered < self._last_buffered:
            self._last_buffered = buffered
            self._progress_at = now
        return max(0.0, STALL_SECONDS - (now - self._progress_at))

    def ops_pending(self) -> bool:
        return self._order is not None and self._order.busy

    def begin_op(self, echo_room: str | None = None) -> int:
        """A command whose outcome comes later (a message on its way to the
        store, a barrier): replies to later commands wait for it, so a
        connection gets its replies, its own messages included, in command
        order. The commands themselves do not wait: messages pipeline."""
        if self._order is None:
            self._order = ReplyOrder()
        return self._order.begin(echo_room)

    def end_op(self, seq: int, data: bytes | None = None) -> None:
        if self._order is not None:
            self._queue_replies(self._order.end(seq, data))

    def awaits_echo(self) -> bool:
        return self._order is not None and self._order.awaits_echo

    def echo(self, data: bytes, room_key: str) -> None:
        order = self._order
        if order is None:
            if data:
                self.deliver(data)
            return
        out, awaited = order.echo(room_key, data)
        self._queue_replies(out)
        if not awaited and data:
            self.deliver(data)

    def _queue_replies(self, out: Sequence[bytes]) -> None:
        """What ended operations release, in order; then wake /quit's wait."""
        if out and not self._closing:
            self._queue(out)
        if not self.ops_pending():
            self._ops_ended()

    def _release_held(self) -> None:
        """Closing: whatever waited goes out now, in order."""
        if self._order is not None:
            self._queue(self._order.release())
        self._ops_ended()

    def _ops_ended(self) -> None:
        """No operation is unfinished: wake whoever waits for that (_ops_settled)."""
        idle, self._ops_idle = self._ops_idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    async def ops_settled(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until this session's operations ended."""
        if not self.ops_pending() or self._closing:
            return
        if self._ops_idle is None:
            self._ops_idle = self._loop.create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._ops_idle)

    def drop(self, reason: str) -> None:
        """Cut the connection at once (RST), discarding queued output."""
        if self._dropped:
            return
        logger.warning("dropping %s %s: %s", self.nick or "-", self.peer, reason)
        self.close_reason = self.close_reason or reason
        self._dropped = True
        self.batch = None
        self._stop_output()
        self._pending.clear()
        self._pending_bytes = 0
        self._conn.abort()

    def kick(self, reason: str) -> None:
        """Say why and close; reset the connection if it is still open later."""
        self._close_with(Bye(reason), reason)

    def _close_with(self, event: Event, reason: str) -> None:
        """Send a last event and close, whatever the reader is doing; reset
        the connection if it is still open after the lingering time."""
        if self._closing:
            return
        self.tell(event)
        self.close_reason = self.close_reason or reason
        self._stop_output()
        self._kick_timer = self._loop.call_later(LINGER_SECONDS, self.drop, reason)

    def begin_shutdown(self, reason: str) -> None:
        """Say goodbye, flush, close. The server aborts whoever takes too long."""
        if self._closing:
            return
        self.tell(Shutdown(reason))
        self.close_reason = self.close_reason or "server shutting down"
        self._stop_output()

    def _start_writer(self) -> None:
        """Start the writer task for a congested write or the end of output.

        The task exits whenever nothing is congested, so an idle connection,
        even one that was slow once, holds no task.
        """
        if self._writer_task is None or self._writer_task.done():
            self._writer_task = self._loop.create_task(self._write_loop())

    def _wake_reader(self) -> None:
        waiter = self._reader_waiter
        if waiter is not None:
            self._reader_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _reader_wait(self) -> None:
        """Wait for the next flush or the start of closing."""
        self._reader_waiter = waiter = self._loop.create_future()
        await waiter

    def _stop_output(self) -> None:
        if self.ops_pending():
            self._release_held()
        self._closing = True
        self.batch = None
        self._wake_reader()
        self._start_writer()  # it does the last flush and the end of output (FIN)

    def _flush(self) -> None:
        """Hand everything queued to the transport in one write.

        Runs as a loop callback, once per loop pass with output, so a burst of
        events costs one system call per client. When the client reads slower
        than it is written to, the writer task takes over until drain()
        returns; meanwhile nothing else flushes.
        """
        self._flush_scheduled = False
        self.batch = None
        if not self._pending or self._dropped:
            self._check_caught_up()
            return
        batch, counted = self._pending, self._pending_bytes
        self._pending = []
        self._pending_bytes = 0
        # Once per connection per loop pass: the calls below are made only
        # when they have something to do.
        if self._reader_waiter is not None:
            self._wake_reader()
        conn = self._conn
        try:
            size = conn.write(batch)  # the size comes back with the write, at no cost
        except (ConnectionError, OSError) as exc:
            self._write_failed(exc)
            return
        self._stats.bytes_out += size
        if size > counted and self._over_bounds(batch, size):
            return  # what fan-out appended to the open batch broke a bound: dropped
        if conn.congested():
            self._flush_scheduled = True  # the writer flushes after its drain
            self._in_flight = size  # counted against the bound while it waits
            self.write_blocked_since = self._progress_at = self._loop.time()
            self._last_buffered = conn.buffered()
            self._start_writer()
        if self._behind:
            self._check_caught_up()

    def _over_bounds(self, batch: list[bytes], size: int) -> bool:
        """The bounds of fan-out, for an outbox of ``batch`` (``size``
        bytes); True if the client was dropped. Checked by :meth:`deliver`
        and, for what went straight into an open batch, when it closes."""
        # The batch still waiting in the transport counts too: that is the bound.
        queued = size + self._in_flight
        if queued > self._max_bytes or len(batch) > self._max_events:
            self._stats.slow_consumers += 1
            self.drop(f"send queue overflow ({queued} bytes, {len(batch)} events queued)")
            return True
        if queued > self._soft_bytes:
            if not self._soft_since:
                self._soft_since = self._loop.time()  # sweep() cuts it if this lasts
            if not self._behind:
                self._behind = True
                self._pushback.falling_behind(self)
        return False

    def _check_caught_up(self) -> None:
        if self._behind and (
            self._dropped or self._pending_bytes + self._in_flight <= self._soft_bytes
        ):
            self._behind = False
            self._pushback.caught_up(self)

    def _write_failed(self, exc: BaseException) -> None:
        """The peer is gone: no congestion left to wait out, no more output."""
        logger.debug("write to %s failed: %s", self.peer, exc)
        self.close_reason = self.close_reason or "connection lost"
        self._in_flight = 0
        self.write_blocked_since = 0.0
        self._stop_output()

    async def _write_loop(self) -> None:
        """Wait out a congested write; at the end, the last flush and EOF."""
        conn = self._conn
        try:
            while True:
                if self._in_flight:
                    await conn.drain()
                    self._in_flight = 0
                    self.write_blocked_since = 0.0
                    self._wake_reader()
                    self._flush()  # what queued meanwhile; may congest again
                elif not self._closing:
                    return  # nothing congested: the next congestion starts a new task
                elif self._pending:
                    self._flush()
                else:
                    break
            if not self._dropped:
                conn.write_eof()
        except (ConnectionError, OSError) as exc:
            self._write_failed(exc)
        except Exception:
            logger.exception("writer for %s failed", self.peer)
            self.drop("internal error")

    async def _finish(self) -> None:
        """Flush and close within ``shutdown_grace``; abort whatever is late."""
        self._stop_output()
        writer = self._writer_task
        assert writer is not None
        if self._dropped:
            writer.cancel()
        _, late = await asyncio.wait([writer], timeout=self._settings.shutdown_grace)
        if late:
            self.drop("output not flushed in time")
            writer.cancel()
            await asyncio.wait([writer])
        # A cancelled task holds its error, the error this session's frames:
        # let go of the task (no reference cycle).
        self._writer_task = None
        if self._dropped:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER_SECONDS):
                    await self._conn.wait_closed()
            return
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                await self._conn.close()
        except TimeoutError:
            logger.debug("%s did not close its side; resetting", self.peer)
            self._conn.abort()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the session starts closing."""
        if seconds <= 0 or self._closing:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._closing:
                    await self._reader_wait()

    def _backed_up(self) -> bool:
        """This client's unsent output, what its transport still holds
        included, is over the soft limit: its commands wait. A talker that
        reads its own echoes is so paced by its own reading."""
        held = self._order.held_bytes if self._order is not None else 0
        return (
            self._pending_bytes + self._in_flight + held > self._soft_bytes
            or len(self._pending) > self._soft_events
        )

    async def _wait_outbox(self) -> None:
        while not self._closing and self._backed_up():
            await self._reader_wait()

    def sweep(self, now: float) -> None:
        """The once-a-second checks (the server calls them for every
        connection): the write deadline and the outbox's soft limit."""
        s = self._settings
        if (since := self.write_blocked_since) and now - since > s.write_timeout:
            self._stats.slow_consumers += 1
            self.drop(f"write timeout ({s.write_timeout:g} s without reading)")
            return
        if self._soft_since:
            if self._pending_bytes + self._in_flight <= self._soft_bytes:
                self._soft_since = 0.0
            elif now - self._soft_since >= s.queue_soft_seconds:
                self._stats.slow_consumers += 1
                self.drop(
                    f"send queue over {self._soft_bytes} bytes for {s.queue_soft_seconds:g} s"
                )
