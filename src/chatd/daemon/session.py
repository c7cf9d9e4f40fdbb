"""One session per connection: a reader loop, a writer task, one way out.

The reader loop frames input (:class:`~chatd.protocol.LineFramer`), parses
each line and hands the command to the :class:`~chatd.core.rooms.RoomManager`.
Output goes into a bounded outbox. Once per loop pass a flush callback
writes everything queued in one call; when the client reads slower than it
is written to, the writer task awaits ``drain()`` before the next flush, and
at the end it sends the last output and EOF. An idle connection has no
writer task and no waiting futures: they are made when needed, which keeps
an idle connection near 8 KiB.

Two kinds of output, two policies:

* fan-out from others (:meth:`Session.deliver`) never waits; a client whose
  outbox goes over ``max_queue_bytes`` or ``max_queue_events`` is dropped
  with a logged reason, so a slow reader never slows a room;
* answers to the client's own commands (:meth:`Session.reply`) are never
  dropped; instead the reader stops taking commands while the outbox is over
  a quarter of its bound, so a client that does not read is read more slowly.

Every way out (EOF, ``/quit``, a drop, flooding, a shutdown, a crash) leaves
through the ``finally`` in :meth:`Session.run`: membership removed, peers
told, socket closed.

The session does not know what carries its bytes: it talks to a
:class:`Connection` (TCP streams here, TLS in :mod:`chatd.transports.tls`, WebSocket in
:mod:`chatd.transports.web`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd import __version__
from chatd.core.accounts import Auth
from chatd.core.order import ReplyOrder
from chatd.core.rooms import Member, stored_event
from chatd.errors import (
    BadArgs,
    BadLogin,
    ChatError,
    LoginThrottled,
    NickRegistered,
    NickTaken,
    NotInRoom,
    NotLoggedIn,
    NotRegistered,
    PingTimeout,
    RateLimited,
    RegistrationLimit,
    RegistrationTimeout,
    StorageUnavailable,
)
from chatd.protocol import (
    Answer,
    Bye,
    Command,
    Create,
    Error,
    Event,
    Format,
    FormatIs,
    Help,
    HelpText,
    History,
    Join,
    KeepAlive,
    KeepAliveIs,
    Leave,
    LineFramer,
    ListRooms,
    Login,
    Logout,
    Me,
    Msg,
    Nick,
    Passwd,
    PasswordChanged,
    Ping,
    Pong,
    Quit,
    Register,
    Registered,
    Say,
    ServerPing,
    SetFormat,
    ShowHistory,
    Shutdown,
    Topic,
    Welcome,
    Who,
    check_nick,
    check_room,
    foreign_protocol,
    name_key,
    parse_line,
    render,
)
from chatd.store import Account, AccountRooms, StoreError, dm_key
from chatd.transports.base import Connection

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.core.rooms import RoomManager

logger = logging.getLogger(__name__)

#: Seconds a closing connection waits for the client to close its side.
LINGER_SECONDS = 2.0
#: A client behind on its output whose output has not moved for this long
#: (its blocked write did not shrink) no longer holds back those who talk
#: to it (see Session.stall).
STALL_SECONDS = 1.0


class _Flusher:
    """Flushes every session with output once per loop pass, in one callback.

    A room message reaches dozens of sessions; one loop callback for all of
    them costs less than a callback each.
    """

    # No reference to the loop: the registry below is keyed weakly by it.
    __slots__ = ("__weakref__", "_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[Session] = []
        self._scheduled = False

    def add(self, session: Session) -> None:
        self._dirty.append(session)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
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


class TokenBucket:
    """Flood control: ``rate`` tokens a second, at most ``burst`` saved up.

    Pure: the caller passes the clock reading.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, n: float = 1.0, *, uncapped: bool = False) -> float:
        """Take ``n`` tokens; return 0, or the seconds until they are really there.

        ``uncapped`` refills for the whole time since the last take, beyond
        the burst: for input that piled up while the reader was not reading.
        """
        refill = (now - self.stamp) * self.rate
        if uncapped:
            self.tokens = min(float(self.burst), self.tokens) + refill - n
        else:
            self.tokens = min(float(self.burst), self.tokens + refill) - n
        self.stamp = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def charge(self, n: float) -> None:
        """Take ``n`` more tokens for what was just done (a costly command)."""
        self.tokens -= n


@dataclass(slots=True)
class _InputLimits:
    """Flood control for one session: three buckets, all in loop time.

    * ``lines``: commands run at most ``msg_rate`` a second (burst
      ``msg_burst``); excess lines wait, nothing is dropped;
    * ``arrivals``: lines arriving faster than ``flood_factor`` x ``msg_rate``
      beyond a burst of ``flood_lines`` are a flood, and the client is cut;
    * ``volume``: input bytes, whatever they are (telnet negotiation, parts of
      over-long lines), at ``msg_rate`` x ``max_line`` a second; past it the
      session stops reading for a while, so no client costs much CPU.
    """

    lines: TokenBucket
    arrivals: TokenBucket
    volume: TokenBucket
    #: The session stopped reading for a while (pushback): what it reads next
    #: piled up in the kernel meanwhile and is judged by the time it took.
    pushed_back: bool = False

    @classmethod
    def of(cls, s: Settings, now: float) -> _InputLimits:
        return cls(
            TokenBucket(s.msg_rate, s.msg_burst, now),
            TokenBucket(s.msg_rate * s.flood_factor, s.flood_lines, now),
            TokenBucket(s.msg_rate * s.max_line, s.msg_burst * s.max_line, now),
        )

    def bytes_wait(self, now: float) -> float:
        """Seconds until the byte budget is positive again."""
        return self.volume.take(now, 0.0)


#: A command that waits; it may end the session (a reason) like any command.
_Pending = Coroutine[Any, Any, str | None]


class Session(Member):
    """One connected client."""

    __slots__ = (
        "_auth",
        "_behind",
        "_closing",
        "_conn",
        "_cost",
        "_dropped",
        "_eof",
        "_flush_scheduled",
        "_flusher",
        "_in_flight",
        "_keepalive",
        "_kick_timer",
        "_last_buffered",
        "_last_input",
        "_loop",
        "_manager",
        "_max_bytes",
        "_max_events",
        "_ops_idle",
        "_order",
        "_pending",
        "_pending_bytes",
        "_ping_sent",
        "_pings",
        "_prereg_bytes",
        "_prereg_lines",
        "_progress_at",
        "_reader_waiter",
        "_register_deadline",
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
        self,
        manager: RoomManager,
        settings: Settings,
        conn: Connection,
        *,
        fmt: Format = Format.TEXT,
        auth: Auth | None = None,
    ) -> None:
        super().__init__(fmt)
        self._manager = manager
        self._stats = manager.stats
        self._auth = auth
        #: Resets a kicked connection that has not closed in time.
        self._kick_timer: asyncio.TimerHandle | None = None
        self._settings = settings
        self._conn = conn
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        #: Replies in command order (see begin_op); made by the first
        #: operation, so an idle connection holds none.
        self._order: ReplyOrder | None = None
        #: Done when no operation is unfinished (see _ops_settled).
        self._ops_idle: asyncio.Future[None] | None = None
        self._max_bytes = settings.max_queue_bytes
        self._max_events = settings.max_queue_events
        self._soft_bytes = settings.soft_queue_bytes
        self._soft_events = settings.max_queue_events // 4
        #: Loop time at which fan-out found the outbox over the soft limit, or
        #: 0.0; reset when a sweep finds it under. Replies alone never set it:
        #: they are paced (see _wait_outbox).
        self._soft_since = 0.0
        #: Over the soft limit right now (the manager knows: backpressure);
        #: while a write is blocked, what the transport held at the last look
        #: and when it was last seen to shrink (see stall).
        self._behind = False
        self._last_buffered = 0
        self._progress_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._flusher = _flusher(self._loop)
        #: A flush is due (a loop callback, or the writer after its drain).
        self._flush_scheduled = False
        #: The reader waits on this future (outbox full, or a pause) until a
        #: flush takes the outbox or the session closes. Made on demand, like
        #: the writer task: an idle connection holds neither.
        self._reader_waiter: asyncio.Future[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False  # no more output is accepted
        self._dropped = False  # the connection was aborted
        self._in_flight = 0  # bytes of the batch whose drain() is waiting
        self._cost = 0  # extra flood-control tokens the last command costs
        self._eof = False
        self._register_deadline = 0.0
        #: Input taken before registration (register_lines, register_bytes).
        self._prereg_lines = 0
        self._prereg_bytes = 0
        #: Keepalive pings (/ping every): the interval (0.0: off), the loop
        #: time of the last input and of the unanswered ping (0.0: none), and
        #: how many pings were sent (the token).
        self._keepalive = 0.0
        self._last_input = self._loop.time()
        self._ping_sent = 0.0
        self._pings = 0
        self.close_reason = ""
        #: Loop time at which the current write started waiting for the
        #: client to read, or 0.0. The server's sweeper enforces write_timeout.
        self.write_blocked_since = 0.0

    @property
    def peer(self) -> str:
        return self._conn.peer

    @property
    def connection(self) -> Connection:
        return self._conn

    def __repr__(self) -> str:
        return f"<Session {self.nick or '-'} {self.peer}>"

    # -- output ----------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self._closing:
            return
        pending = self._pending
        pending.append(data)
        self._pending_bytes += len(data)
        # The batch still waiting in the transport counts too: that is the bound.
        queued = self._pending_bytes + self._in_flight
        if queued > self._max_bytes or len(pending) > self._max_events:
            self._stats.slow_consumers += 1
            self.drop(f"send queue overflow ({queued} bytes, {len(pending)} events queued)")
            return
        if queued > self._soft_bytes:
            if not self._soft_since:
                self._soft_since = self._loop.time()  # sweep() cuts it if this lasts
            if not self._behind:
                self._behind = True
                self._manager.falling_behind(self)
        if not self._flush_scheduled:
            # The hot path of fan-out: one flush per loop pass, however many
            # events arrive in it; after the first, a delivery costs one check.
            self._flush_scheduled = True
            self._flusher.add(self)

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
        self._pending.extend(out)
        self._pending_bytes += sum(map(len, out))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.add(self)

    def tell(self, event: Event) -> None:
        self.reply(render(event, self.fmt))

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

    def echo(self, data: bytes, room_key: str) -> None:
        order = self._order
        if order is None:
            self.deliver(data)
            return
        out, awaited = order.echo(room_key, data)
        self._queue_replies(out)
        if not awaited:
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

    async def _ops_settled(self, seconds: float) -> None:
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

    def sweep(self, now: float) -> None:
        """The once-a-second checks (the server calls them for every session):
        the write deadline, the outbox's soft limit, keepalive pings."""
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
                return
        interval = self._keepalive
        if not interval or self._closing:
            return
        if self._ping_sent and self._last_input < self._ping_sent:
            if now - self._ping_sent >= interval:
                why = f"no answer to a ping in {interval:g} s"
                self._close_with(Error.of(PingTimeout(why)), "ping timeout")
        elif now - self._last_input >= interval:
            self._pings += 1
            self._ping_sent = now
            self.tell(ServerPing(str(self._pings)))

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
        if not self._pending or self._dropped:
            self._check_caught_up()
            return
        batch = self._pending
        size = self._pending_bytes
        self._pending = []
        self._pending_bytes = 0
        self._stats.bytes_out += size
        self._wake_reader()
        try:
            self._conn.write(batch)
        except (ConnectionError, OSError) as exc:
            self._write_failed(exc)
            return
        if self._conn.congested():
            self._flush_scheduled = True  # the writer flushes after its drain
            self._in_flight = size  # counted against the bound while it waits
            self.write_blocked_since = self._progress_at = self._loop.time()
            self._last_buffered = self._conn.buffered()
            self._start_writer()
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self._behind and (
            self._dropped or self._pending_bytes + self._in_flight <= self._soft_bytes
        ):
            self._behind = False
            self._manager.caught_up(self)

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

    # -- input -----------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends, whichever way it ends."""
        loop = asyncio.get_running_loop()
        self._register_deadline = loop.time() + self._settings.register_timeout
        started = loop.time()
        logger.debug("connect %s", self.peer)
        reason = "connection closed"
        try:
            self.tell(Welcome("chatd", __version__))
            reason = await self._read_loop()
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc.__class__.__name__}"
        except Exception:
            logger.exception("session %s %s failed", self.nick or "-", self.peer)
            reason = "internal error"
        finally:
            self.close_reason = self.close_reason or reason
            self._manager.disconnect(self, self.close_reason)
            await self._finish()
            if self._kick_timer is not None:
                self._kick_timer.cancel()
            # One line per connection, at its end: what, who, why and how long.
            logger.info(
                "disconnect %s %s after %.1f s: %s",
                self.nick or "-",
                self.peer,
                loop.time() - started,
                self.close_reason,
            )

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

    async def _read(self, until: float | None = None) -> bytes | None:
        """Read some bytes; ``None`` if ``until`` (loop time) comes first.

        Until the client has a nickname, its registration deadline applies
        too, and passing it raises RegistrationTimeout.
        """
        registering = self.key is None
        deadline = until
        if registering:
            deadline = min(self._register_deadline, until or self._register_deadline)
        if deadline is None:
            return await self._conn.read()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._conn.read()
        except TimeoutError:
            if registering and deadline >= self._register_deadline:
                raise RegistrationTimeout("no nickname chosen in time") from None
            return None

    async def _read_loop(self) -> str:
        """Process input until the connection should end; return why."""
        try:
            return await self._process_input()
        except RegistrationTimeout as exc:
            self.tell(Error.of(exc))
            return "registration timeout"

    async def _process_input(self) -> str:
        settings = self._settings
        framer = LineFramer(settings.max_line)
        backlog: deque[bytes | ChatError] = deque()
        loop = asyncio.get_running_loop()
        limits = _InputLimits.of(settings, loop.time()) if settings.msg_rate > 0 else None
        # A WebSocket's first frame has passed an HTTP handshake already.
        sniff = self._conn.transport != "ws"
        while True:
            if self._closing:
                return self.close_reason or "closing"
            if self.key is None and (refused := self._registration_limit(bool(backlog))):
                return refused
            if not backlog:
                if self._eof:
                    # Half-closed (``printf ... | nc``): the replies and echoes
                    # of what it sent still go out before the end.
                    await self._ops_settled(settings.shutdown_grace)
                    return "connection closed"
                if limits is not None and (wait := limits.bytes_wait(loop.time())) > 0:
                    limits.pushed_back = True
                    await self._pause(wait)
                data = await self._read()
                if sniff and data:
                    sniff = False
                    if (wrong := foreign_protocol(data)) is not None:
                        self.tell(Error.of(wrong))
                        return "wrong protocol"
                if self._take_input(data, framer, backlog, limits):
                    return self._flooding()
                continue
            item = backlog.popleft()
            if limits is not None:
                delay = limits.lines.take(loop.time())
                if delay > 0:
                    self._stats.rate_delayed += 1
                if delay > 0 and await self._throttle(delay, framer, backlog, limits):
                    return self._flooding()
            if self._backed_up():
                if limits is not None:
                    limits.pushed_back = True
                await self._wait_outbox()
            if self._closing:
                continue  # dropped or shutting down while this line waited: it does not run
            if self.key is None:
                self._prereg_lines += 1
            reason = self._handle(item)
            if reason is not None and not isinstance(reason, str):
                reason = await self._complete(reason)
            if reason is not None:
                return reason
            if self._cost and limits is not None:
                limits.lines.charge(self._cost)
            self._cost = 0

    def _registration_limit(self, line_waiting: bool) -> str | None:
        """End a connection that sends too much before choosing a nickname.

        Lines count as they run, so a client that pipes its nickname and
        then its messages in one write is registered by the first line and
        loses none of the rest. Bytes are judged when no line is waiting:
        input that makes no line (telnet negotiation, the discarded rest of
        an over-long line) cannot go on for long.
        """
        s = self._settings
        if line_waiting:
            if self._prereg_lines < s.register_lines:
                return None
        elif self._prereg_bytes <= s.register_bytes:
            return None
        why = (
            f"more than {s.register_lines} lines or {s.register_bytes} bytes "
            "before choosing a nickname"
        )
        self.tell(Error.of(RegistrationLimit(why)))
        return "registration limit"

    def _flooding(self) -> str:
        self._stats.rate_disconnects += 1
        self.tell(Error.of(RateLimited("flooding: too many lines too fast")))
        return "flooding"

    async def _throttle(
        self,
        delay: float,
        framer: LineFramer,
        backlog: deque[bytes | ChatError],
        limits: _InputLimits,
    ) -> bool:
        """Wait ``delay`` seconds before the next line, reading ahead meanwhile.

        Reading ahead (at most ``flood_lines`` lines) is what lets a flood be
        seen: lines arriving far beyond the rate overdraw the arrival limit,
        and True is returned. Past the read-ahead the session stops reading,
        so TCP pushes back on a sender that is only somewhat too fast.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not self._closing:
            now = loop.time()
            if self._eof:
                await self._pause(deadline - now)
                return False
            if len(backlog) >= self._settings.flood_lines or limits.bytes_wait(now) > 0:
                limits.pushed_back = True
                await self._pause(deadline - now)
                return False
            data = await self._read(until=deadline)
            if data is None:
                return False
            if self._take_input(data, framer, backlog, limits):
                return True
        return False

    def _take_input(
        self,
        data: bytes | None,
        framer: LineFramer,
        backlog: deque[bytes | ChatError],
        limits: _InputLimits | None,
    ) -> bool:
        """Frame what was read (at end of input, keep a last unterminated
        line); return True when it shows a flood."""
        before = len(backlog)
        self._last_input = self._loop.time()
        if self.key is None:
            self._prereg_bytes += len(data or b"")
        if data:
            backlog.extend(framer.feed(data))
        else:
            self._eof = True
            backlog.extend(framer.finish())
        if limits is None or not data:
            return False
        now = asyncio.get_running_loop().time()
        limits.volume.take(now, len(data))
        arrived = len(backlog) - before
        flood = limits.arrivals.take(now, arrived, uncapped=limits.pushed_back) > 0
        limits.pushed_back = False
        return flood

    async def _pause(self, seconds: float) -> None:
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

    def _handle(self, item: bytes | ChatError) -> str | _Pending | None:
        try:
            if isinstance(item, ChatError):
                raise item
            command = parse_line(item)
            return None if command is None else self._dispatch(command)
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None

    async def _complete(self, pending: _Pending) -> str | None:
        """Finish a command that waits (for the store or a password hash)."""
        try:
            return await pending
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None

    def _send(self, command: Say | Me | Msg) -> _Pending | None:
        """A room message or a DM: stored, then delivered (RoomManager)."""
        manager = self._manager
        match command:
            case Say(text):
                manager.say(self, text)
            case Me(text):
                manager.say(self, text, action=True)
            case Msg(nick, text) if manager.cluster is not None:
                return manager.send_direct(self, nick, text)
            case Msg(nick, text):
                manager.direct(self, nick, text)
        return None

    async def _when_clear(self, command: Say | Me | Msg) -> str | None:
        """Run a message once the store window has room and no reader of it
        that is behind but still reading holds it back.

        The sender waits, and so TCP pushes back on it: a burst from one
        group commit never grows the readers' outboxes past the window, and
        a reader a little slower than the talkers is waited for, not cut.
        """
        manager = self._manager
        to = command.nick if isinstance(command, Msg) else None
        held = False
        try:
            while not self._closing:
                if manager.store_full:
                    wake, timeout = manager.store_space(), None
                elif (wait := manager.backpressure(self, to, self._loop.time())) > 0:
                    wake, timeout = manager.relief(), wait
                    if not held:
                        held = True
                        manager.hold(self._loop.time(), True)
                else:
                    break
                closing = self._loop.create_future()
                self._reader_waiter = closing  # woken by a flush or by closing
                await asyncio.wait(
                    (wake, closing), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            if held:
                manager.hold(self._loop.time(), False)
        if self._closing:
            return None
        pending = self._send(command)
        if pending is not None:
            await pending
        return None

    def _logout(self) -> None:
        self._manager.logout(self)
        # Choosing a nickname again has the usual deadline and limits.
        self._register_deadline = self._loop.time() + self._settings.register_timeout
        self._prereg_lines = self._prereg_bytes = 0

    async def _logout_after(self) -> None:
        """/logout after messages still on their way: they reach the rooms
        (and their echoes this connection) while it is still in them."""
        await self._ops_settled(self._settings.shutdown_grace)
        if self.account is not None and not self._closing:
            self._logout()

    async def _quit_after(self, reason: str) -> str:
        """/quit after messages still on their way to the store: they and their
        echoes go out first (within the shutdown grace), then the goodbye."""
        await self._ops_settled(self._settings.shutdown_grace)
        self.tell(Bye(reason))
        return f"quit: {reason}" if reason else "quit"

    def _dispatch(self, command: Command) -> str | _Pending | None:
        """Carry out one command; return a reason when the session should end.

        Commands that must wait return a coroutine instead, which the reader
        awaits before it takes the next line: a session's commands run in order.
        """
        manager = self._manager
        match command:
            case SetFormat(fmt):
                if fmt is Format.TEXT and self._conn.transport == "ws":
                    raise BadArgs("WebSocket connections speak JSON: one event per frame")
                self.fmt = fmt
                self.tell(FormatIs(fmt))
                if fmt is Format.TEXT:
                    self._keepalive = 0.0  # pings are for programs, which speak JSON
            case Ping(token):
                # After everything this session said is stored and delivered,
                # in its place among the replies.
                seq = self.begin_op()
                pong = render(Pong(token), self.fmt)
                manager.barrier(lambda: self.end_op(seq, pong))
            case KeepAlive(interval):
                self._set_keepalive(interval)
            case Answer():
                pass  # any input answers a ping; this one runs nothing
            case Help():
                self.tell(HelpText())
            case Quit(reason) if self.ops_pending():
                return self._quit_after(reason)  # the messages before it go out first
            case Quit(reason):
                self.tell(Bye(reason))
                return f"quit: {reason}" if reason else "quit"
            case Say(text) if self.key is None:
                # The classic greeting: a bare first line is the nickname.
                return self._dispatch(Nick(check_nick(text.strip())))
            case Nick(name) if len(name) > self._settings.max_nick_len:
                check_nick(name, self._settings.max_nick_len)
            case Create(room) | Join(room) if len(room) > self._settings.max_room_len and not (
                isinstance(command, Join) and manager.is_live(room)
            ):
                check_room(room, self._settings.max_room_len)  # a new room's name
            case Nick(name) if self.key is None and manager.cluster is not None:
                return self._cluster_nick(name)
            case Nick(name) if self.key is None:
                manager.register(self, name)
            case Login(nick, password):
                return self._login(nick, password)
            case _ if self.key is None:
                raise NotRegistered(
                    "choose a nickname first: type it, /nick NAME, or /login NICK PASSWORD"
                )
            case Nick(name) if manager.cluster is not None:
                return self._cluster_nick(name)
            case Nick(name):
                manager.rename(self, name)
            case Say() | Me() | Msg() if manager.store_full or manager.anyone_behind:
                return self._when_clear(command)
            case Say() | Me() | Msg():
                return self._send(command)
            case Create(room) if manager.is_live(room):
                manager.join(self, room, create=True)
            case Join(room) if manager.is_live(room):
                manager.join(self, room)
            case Create(room):
                return self._join_stored(room, create=True)
            case Join(room):
                return self._join_stored(room, create=False)
            case Leave(room):
                manager.leave(self, room)
            case ListRooms(watch) if manager.cluster is not None:
                if watch is not None:
                    manager.watch_rooms(self, watch)  # before the list: nothing falls between
                return self._cluster_rooms()
            case Who(room) if manager.cluster is not None:
                return self._cluster_who(room)
            case ListRooms(watch):
                if watch is not None:
                    manager.watch_rooms(self, watch)
                rooms = manager.room_list()
                self.tell(rooms)
                self._cost = len(rooms.rooms) // 100  # big answers cost more
            case Who(room):
                who = manager.who(self, room)
                self.tell(who)
                self._cost = len(who.nicks) // 100
            case Topic(text):
                if text is None:
                    self.tell(manager.topic_of(self))
                else:
                    manager.set_topic(self, text)
            case Register(password):
                return self._register_account(password)
            case Logout() if self.account is None:
                raise NotLoggedIn("you are not logged in")
            case Logout() if self.ops_pending():
                return self._logout_after()  # the messages before it are delivered first
            case Logout():
                self._logout()
            case Passwd(old, new):
                return self._passwd(old, new)
            case ShowHistory():
                return self._history(command)
        return None

    def _set_keepalive(self, interval: float) -> None:
        least = self._settings.ping_min_interval
        if interval and self.fmt is not Format.JSON:
            raise BadArgs("keepalive pings need JSON mode: /format json first")
        if 0 < interval < least:
            raise BadArgs(f"the shortest keepalive interval is {least:g} s")
        self._keepalive = interval
        self._ping_sent = 0.0
        self.tell(KeepAliveIs(interval))

    # -- commands that wait ------------------------------------------------

    @property
    def _ip(self) -> str:
        return self.peer.rpartition(":")[0]

    def _need_auth(self) -> Auth:
        if self._auth is None:
            raise StorageUnavailable("accounts are not available on this server")
        return self._auth

    async def _join_stored(self, room: str, *, create: bool) -> None:
        """Join a room that is not in memory, with its history from the store."""
        manager = self._manager
        if manager.cluster is not None:
            await manager.cluster.open(room, create=create)
            try:
                if self.key is not None and not self._closing:
                    manager.join(self, room)
            finally:
                # Nobody here joined it after all (too many rooms, or gone).
                manager.discard_room(room)
            return
        history = None
        if manager.history_on_join:
            try:
                history = await manager.store.recent(name_key(room), manager.history_on_join)
            except StoreError as exc:
                logger.error("no history for #%s: %s", room, exc)
        if self.key is not None and not self._closing:
            manager.join(self, room, create=create, history=history)

    async def _cluster_nick(self, nick: str) -> None:
        """Choose or change a nickname, taken cluster-wide first."""
        manager = self._manager
        assert manager.cluster is not None
        holder = manager.find(nick)
        if holder is not None and holder is not self:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        if self.key is not None and name_key(nick) != self.key:
            manager.check_guest_nick(nick)
        old = self.key
        keep_account = self.account is not None and name_key(nick) == self.key
        await manager.cluster.claim(self, nick, account=self.account if keep_account else None)
        if self._closing or self.key != old:
            if manager.find(nick) is None and name_key(nick) != self.key:
                manager.cluster.released(name_key(nick))
            return
        if old is None:
            manager.register(self, nick)
        else:
            manager.rename(self, nick)

    async def _cluster_rooms(self) -> None:
        assert self._manager.cluster is not None
        rooms = await self._manager.cluster.room_list()
        self.tell(rooms)
        self._cost = len(rooms.rooms) // 100

    async def _cluster_who(self, room: str | None) -> None:
        assert self._manager.cluster is not None
        if room is None:
            if self.current is None:
                raise NotInRoom("you are in no room; /join one")
            room = self.current.name
        who = await self._manager.cluster.who(room)
        self.tell(who)
        self._cost = len(who.nicks) // 100

    async def _register_account(self, password: str) -> None:
        auth, store = self._need_auth(), self._manager.store
        nick = self.nick or ""
        if self.account is not None:
            raise NickRegistered(f"you are already logged in to {nick}")
        if store.is_registered(nick):
            raise NickRegistered(f"{nick} is already registered; /login {nick} PASSWORD")
        password_hash = await auth.passwords.hash(password)
        try:
            account = await store.create_account(nick, password_hash)
        except StoreError as exc:
            raise StorageUnavailable(f"the account was not created: {exc}") from None
        if account is None:
            raise NickRegistered(f"{nick} is already registered; /login {nick} PASSWORD")
        logger.info("account registered: %s from %s", nick, self.peer)
        if self.nick == nick and not self._closing:
            self.account = account.id
            self.tell(Registered(nick, True))
            self._manager.save_rooms(self)  # the rooms it is in are the account's now

    async def _check_password(self, nick: str, password: str) -> Account:
        """The account if ``password`` is right; else a delay and BadLogin."""
        auth, store = self._need_auth(), self._manager.store
        ip, key = self._ip, name_key(nick)
        wait = auth.guard.attempt(ip, key)
        if wait > 0:
            raise LoginThrottled(f"too many failed logins; try again in {math.ceil(wait)} s")
        try:
            account = await store.account(nick)
        except StoreError as exc:
            raise StorageUnavailable(f"cannot check the password now: {exc}") from None
        if await auth.passwords.verify(account.password_hash if account else None, password):
            assert account is not None
            auth.guard.succeeded(ip, key)
            return account
        logger.info("failed login for %s from %s", nick, self.peer)
        await self._pause(auth.fail_delay)
        raise BadLogin("wrong nickname or password")

    async def _login(self, nick: str, password: str) -> None:
        if self.account is not None and self.key == name_key(nick):
            raise NickRegistered(f"you are already logged in to {self.nick}")
        account = await self._check_password(nick, password)
        if self._closing:
            return
        manager = self._manager
        try:
            saved = await manager.store.account_rooms(account.id)
        except StoreError as exc:
            raise StorageUnavailable(f"cannot log in now: {exc}") from None
        if self._closing:
            return
        cluster = manager.cluster
        if cluster is not None:
            await cluster.claim(self, account.nick, account=account.id, takeover=True, guest=False)
            if self._closing:
                return
        with manager.rejoining(self):
            manager.login(self, account.nick, account.id)
            logger.info("login %s from %s", self.nick, self.peer)
            await self._rejoin(saved)

    async def _rejoin(self, saved: AccountRooms) -> None:
        """Put a connection that just logged in back into its account's rooms.

        Each room is joined as by /join (created if gone, with its history);
        one that cannot be (a limit) is reported with its error and skipped.
        Then the account's current room is current again.
        """
        manager = self._manager
        for name in saved.rooms:
            if self.key is None or self._closing:
                return
            if name_key(name) in self.rooms:
                continue
            try:
                if manager.is_live(name):
                    manager.join(self, name)
                else:
                    check_room(name, self._settings.max_room_len)
                    await self._join_stored(name, create=False)
            except ChatError as exc:
                self.tell(Error.of(exc))
        current = saved.current
        if (
            current is not None
            and name_key(current) in self.rooms
            and (self.current is None or self.current.key != name_key(current))
            and self.key is not None
            and not self._closing
        ):
            manager.join(self, current)  # already in it: only makes it current

    async def _passwd(self, old: str, new: str) -> None:
        auth, store = self._need_auth(), self._manager.store
        nick = self.nick or ""
        if self.account is None:
            raise NotLoggedIn("log in first: /passwd changes your account's password")
        await self._check_password(nick, old)
        try:
            changed = await store.set_password(nick, await auth.passwords.hash(new))
        except StoreError as exc:
            raise StorageUnavailable(f"the password was not changed: {exc}") from None
        if not changed:
            raise NotLoggedIn(f"the account {nick} no longer exists")
        self.tell(PasswordChanged(nick))

    async def _history(self, command: ShowHistory) -> None:
        """Earlier messages of a room or of a private conversation, oldest first."""
        store, target = self._manager.store, command.target
        room_name: str | None = None
        peer: str | None = None
        account: int | None = None
        if target is None:
            if self.current is None:
                raise NotInRoom("you are in no room; /history ROOM or /join one")
            room_name = self.current.name
            conversation = self.current.key
        elif target.startswith("@"):
            if self.account is None:
                raise NotLoggedIn("log in to read private messages back: /login NICK PASSWORD")
            peer, account = target[1:], self.account
            conversation = dm_key(self.nick or "", peer)
        else:
            room = self.rooms.get(name_key(target))
            if room is None:
                raise NotInRoom(f"join #{target} to read its history")
            room_name, conversation = room.name, room.key
        try:
            messages, more = await store.recent(
                conversation, command.count, command.before, account
            )
        except StoreError as exc:
            raise StorageUnavailable(str(exc)) from None
        # The newest that fit the soft limit: a page never overflows the
        # outbox, and a reader must be very slow to be cut for asking for one.
        budget, lines = self._soft_bytes, []
        for m in reversed(messages):
            data = render(stored_event(m, history=True), self.fmt)
            budget -= len(data)
            if budget < 0:
                more = True
                break
            lines.append((m.id, data))
        lines.reverse()
        for _, data in lines:
            self.reply(data)
        before = lines[0][0] if more and lines else None
        self.tell(History(room_name, peer, len(lines), more, before))
        self._cost = len(lines) // 100
