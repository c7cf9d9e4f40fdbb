"""One session per connection: a reader loop, a writer task, one way out.

The reader loop frames input (:class:`~chatd.protocol.LineFramer`), parses
each line and hands the command to the :class:`~chatd.rooms.RoomManager`.
Output goes into a bounded outbox that one writer task drains: everything
queued is written in one call, then the writer awaits ``drain()``.

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
:class:`Connection` (TCP streams here; TLS and WebSocket plug in the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Protocol

from chatd import __version__
from chatd.errors import ChatError, NotRegistered, RateLimited, RegistrationTimeout
from chatd.protocol import (
    Bye,
    Command,
    Create,
    Error,
    Event,
    Format,
    FormatIs,
    Help,
    HelpText,
    Join,
    Leave,
    LineFramer,
    ListRooms,
    Me,
    Msg,
    Nick,
    Ping,
    Pong,
    Quit,
    Say,
    SetFormat,
    Shutdown,
    Topic,
    Welcome,
    Who,
    check_nick,
    parse_line,
    render,
)
from chatd.rooms import Member

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.rooms import RoomManager

logger = logging.getLogger(__name__)

_LINGER_ZERO = struct.pack("ii", 1, 0)
#: Seconds a closing connection waits for the client to close its side.
LINGER_SECONDS = 2.0


class Connection(Protocol):
    """What a session needs from a transport."""

    peer: str

    async def read(self) -> bytes:
        """Some bytes, or ``b""`` at end of input."""
        ...

    def write(self, chunks: list[bytes]) -> None:
        """Queue all chunks for sending, in order."""
        ...

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        ...

    def write_eof(self) -> None:
        """Signal the end of output after what was written, if the transport can."""
        ...

    async def close(self) -> None:
        """Discard input until the peer closes, then close. Callers bound the time."""
        ...

    def abort(self) -> None:
        """Close at once, discarding anything unsent."""
        ...

    def get_extra_info(self, name: str) -> object:
        """Transport details, as ``asyncio.BaseTransport.get_extra_info``."""
        ...


class StreamConnection:
    """A :class:`Connection` over asyncio streams (TCP, and later TLS)."""

    __slots__ = ("_reader", "_writer", "peer", "read_size")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_size: int = 65536
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.read_size = read_size
        peername = writer.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if peername else "?"

    async def read(self) -> bytes:
        return await self._reader.read(self.read_size)

    def write(self, chunks: list[bytes]) -> None:
        # uvloop raises RuntimeError on a closed transport where asyncio only
        # logs: both mean the peer is gone, which the writer handles as such.
        if self._writer.is_closing():
            raise ConnectionResetError("connection closed")
        self._writer.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def drain(self) -> None:
        await self._writer.drain()

    def get_extra_info(self, name: str) -> object:
        return self._writer.get_extra_info(name)

    def write_eof(self) -> None:
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    async def close(self) -> None:
        # A lingering close: closing a socket that still has unread input
        # makes the kernel send RST, which can destroy the last lines (an
        # error, a goodbye) before the client reads them. So read and discard
        # until the client closes its side, then close.
        with contextlib.suppress(ConnectionError, OSError):
            while await self._reader.read(self.read_size):
                pass
            self._writer.close()
            await self._writer.wait_closed()
        self._writer.close()

    def abort(self) -> None:
        # With SO_LINGER 0 the kernel sends RST and forgets the unsent data,
        # instead of trickling it to a client that will never read it.
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self._writer.transport.abort()


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

    def take(self, now: float) -> float:
        """Take a token; return 0, or the seconds until it is really there."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate) - 1.0
        self.stamp = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Session(Member):
    """One connected client."""

    __slots__ = (
        "_closing",
        "_conn",
        "_drained",
        "_dropped",
        "_eof",
        "_manager",
        "_max_bytes",
        "_max_events",
        "_pending",
        "_pending_bytes",
        "_register_deadline",
        "_settings",
        "_soft_bytes",
        "_soft_events",
        "_wakeup",
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
    ) -> None:
        super().__init__(fmt)
        self._manager = manager
        self._settings = settings
        self._conn = conn
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_bytes = settings.max_queue_bytes
        self._max_events = settings.max_queue_events
        self._soft_bytes = settings.max_queue_bytes // 4
        self._soft_events = settings.max_queue_events // 4
        self._wakeup = asyncio.Event()  # set: the writer has work (or must stop)
        self._drained = asyncio.Event()  # set: the writer took a batch
        self._closing = False  # no more output is accepted
        self._dropped = False  # the connection was aborted
        self._eof = False
        self._register_deadline = 0.0
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
        if self._pending_bytes > self._max_bytes or len(pending) > self._max_events:
            self.drop(
                f"send queue overflow ({self._pending_bytes} bytes, {len(pending)} events queued)"
            )
        else:
            self._wakeup.set()

    def reply(self, data: bytes) -> None:
        if self._closing:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._wakeup.set()

    def tell(self, event: Event) -> None:
        self.reply(render(event, self.fmt))

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

    def begin_shutdown(self, reason: str) -> None:
        """Say goodbye, flush, close. The server aborts whoever takes too long."""
        if self._closing:
            return
        self.tell(Shutdown(reason))
        self.close_reason = self.close_reason or "server shutting down"
        self._stop_output()

    def _stop_output(self) -> None:
        self._closing = True
        self._wakeup.set()
        self._drained.set()

    async def _write_loop(self) -> None:
        conn = self._conn
        clock = asyncio.get_running_loop().time
        try:
            while True:
                if self._pending:
                    batch = self._pending
                    self._pending = []
                    self._pending_bytes = 0
                    self._drained.set()
                    conn.write(batch)
                    self.write_blocked_since = clock()
                    await conn.drain()
                    self.write_blocked_since = 0.0
                elif self._closing:
                    break
                else:
                    self._wakeup.clear()
                    await self._wakeup.wait()
            if not self._dropped:
                conn.write_eof()
        except (ConnectionError, OSError) as exc:
            logger.debug("write to %s failed: %s", self.peer, exc)
            self.close_reason = self.close_reason or "connection lost"
            self._stop_output()

    # -- input -----------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends, whichever way it ends."""
        loop = asyncio.get_running_loop()
        self._register_deadline = loop.time() + self._settings.register_timeout
        writer = asyncio.create_task(self._write_loop())
        logger.info("connect %s", self.peer)
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
            await self._finish(writer)
            logger.info("disconnect %s %s: %s", self.nick or "-", self.peer, self.close_reason)

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        """Flush and close within ``shutdown_grace``; abort whatever is late."""
        self._stop_output()
        if self._dropped:
            writer.cancel()
        _, late = await asyncio.wait([writer], timeout=self._settings.shutdown_grace)
        if late:
            self.drop("output not flushed in time")
            writer.cancel()
            await asyncio.wait([writer])
        if not writer.cancelled() and (exc := writer.exception()) is not None:
            logger.error("writer for %s failed", self.peer, exc_info=exc)
            self.drop("internal error")
        if self._dropped:
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
        bucket = (
            TokenBucket(settings.msg_rate, settings.msg_burst, loop.time())
            if settings.msg_rate > 0
            else None
        )
        while True:
            if self._closing:
                return self.close_reason or "closing"
            if not backlog:
                if self._eof:
                    return "connection closed"
                self._take_input(await self._read(), framer, backlog)
                continue
            item = backlog.popleft()
            if bucket is not None:
                delay = bucket.take(loop.time())
                if delay > 0 and await self._throttle(delay, framer, backlog):
                    self.tell(Error.of(RateLimited("flooding: too many lines too fast")))
                    return "flooding"
            if self._pending_bytes > self._soft_bytes or len(self._pending) > self._soft_events:
                await self._wait_outbox()
                if self._closing:
                    continue
            reason = self._handle(item)
            if reason is not None:
                return reason

    async def _throttle(
        self, delay: float, framer: LineFramer, backlog: deque[bytes | ChatError]
    ) -> bool:
        """Wait ``delay`` seconds before the next line, reading meanwhile.

        Returns True when the client is flooding: more lines waiting than
        ``flood_lines``. Reading while waiting is what makes a flood visible;
        the backlog it builds is bounded by that same limit.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while len(backlog) < self._settings.flood_lines:
            if self._eof:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                return False
            data = await self._read(until=deadline)
            if data is None:
                return False
            self._take_input(data, framer, backlog)
        return True

    def _take_input(
        self, data: bytes | None, framer: LineFramer, backlog: deque[bytes | ChatError]
    ) -> None:
        """Frame what was read; at end of input, keep a last unterminated line."""
        if data:
            backlog.extend(framer.feed(data))
        else:
            self._eof = True
            backlog.extend(framer.finish())

    async def _wait_outbox(self) -> None:
        while not self._closing and (
            self._pending_bytes > self._soft_bytes or len(self._pending) > self._soft_events
        ):
            self._drained.clear()
            await self._drained.wait()

    def _handle(self, item: bytes | ChatError) -> str | None:
        try:
            if isinstance(item, ChatError):
                raise item
            command = parse_line(item)
            return None if command is None else self._dispatch(command)
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None

    def _dispatch(self, command: Command) -> str | None:
        """Carry out one command; return a reason when the session should end."""
        manager = self._manager
        match command:
            case SetFormat(fmt):
                self.fmt = fmt
                self.tell(FormatIs(fmt))
            case Ping(token):
                self.tell(Pong(token))
            case Help():
                self.tell(HelpText())
            case Quit(reason):
                self.tell(Bye(reason))
                return f"quit: {reason}" if reason else "quit"
            case Nick(name) if self.key is None:
                manager.register(self, name)
            case Say(text) if self.key is None:
                # The classic greeting: a bare first line is the nickname.
                manager.register(self, check_nick(text.strip()))
            case _ if self.key is None:
                raise NotRegistered("choose a nickname first: type it, or /nick NAME")
            case Nick(name):
                manager.rename(self, name)
            case Say(text):
                manager.say(self, text)
            case Me(text):
                manager.say(self, text, action=True)
            case Msg(nick, text):
                manager.direct(self, nick, text)
            case Create(room):
                manager.join(self, room, create=True)
            case Join(room):
                manager.join(self, room)
            case Leave(room):
                manager.leave(self, room)
            case ListRooms():
                self.tell(manager.room_list())
            case Who(room):
                self.tell(manager.who(self, room))
            case Topic(text):
                if text is None:
                    self.tell(manager.topic_of(self))
                else:
                    manager.set_topic(self, text)
        return None
