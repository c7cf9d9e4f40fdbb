"""One session per connection: a reader loop, a writer task, one way out.

The session is a pump. Its reader loop reads, frames input into lines
(:class:`~chatd.protocol.LineFramer`), applies the input limits (flood
control, registration limits, the outbox's pushback), has its codec parse
each line into a command and hands it to the
:class:`~chatd.core.dispatch.Dispatcher`. Its output is its
:class:`~chatd.daemon.outbox.Outbox`.

Every way out (EOF, ``/quit``, a drop, flooding, a shutdown, a crash) leaves
through the ``finally`` in :meth:`Session.run`: membership removed, peers
told, socket closed.

The session does not know what carries its bytes: it talks to a
:class:`~chatd.transports.base.Connection` (TCP, TLS or WebSocket, see
:mod:`chatd.transports`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from chatd import __version__
from chatd.core.accounts import Auth
from chatd.core.caller import Caller, Pending
from chatd.core.dispatch import Dispatcher
from chatd.daemon.flood import InputLimits
from chatd.daemon.outbox import Outbox
from chatd.errors import (
    BadArgs,
    ChatError,
    PingTimeout,
    RateLimited,
    RegistrationLimit,
    RegistrationTimeout,
)
from chatd.protocol import (
    Error,
    Format,
    FormatIs,
    KeepAliveIs,
    LineFramer,
    ServerPing,
    Welcome,
    foreign_protocol,
)

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.core.rooms import RoomManager
    from chatd.transports.base import Connection

logger = logging.getLogger(__name__)


class Session(Outbox, Caller):
    """One connected client."""

    __slots__ = (
        "_cost",
        "_dispatcher",
        "_eof",
        "_keepalive",
        "_last_input",
        "_ping_sent",
        "_pings",
        "_prereg_bytes",
        "_prereg_lines",
        "_register_deadline",
    )

    def __init__(
        self,
        manager: RoomManager,
        settings: Settings,
        conn: Connection,
        *,
        fmt: Format = Format.TEXT,
        auth: Auth | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        super().__init__(manager.pushback, manager.stats, settings, conn, fmt)
        self._dispatcher = dispatcher or Dispatcher(manager, settings, auth)
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

    # -- what the dispatcher asks of a connection (Caller) ----------------------

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def page_bytes(self) -> int:
        return self._soft_bytes

    def charge(self, tokens: int) -> None:
        self._cost = tokens

    def set_format(self, fmt: Format) -> None:
        if fmt is Format.TEXT and self._conn.transport == "ws":
            raise BadArgs("WebSocket connections speak JSON: one event per frame")
        self.fmt = fmt
        self.tell(FormatIs(fmt))
        if fmt is Format.TEXT:
            self._keepalive = 0.0  # pings are for programs, which speak JSON

    def set_keepalive(self, interval: float) -> None:
        least = self._settings.ping_min_interval
        if interval and self.fmt is not Format.JSON:
            raise BadArgs("keepalive pings need JSON mode: /format json first")
        if 0 < interval < least:
            raise BadArgs(f"the shortest keepalive interval is {least:g} s")
        self._keepalive = interval
        self._ping_sent = 0.0
        self.tell(KeepAliveIs(interval))

    def logged_out(self) -> None:
        # Choosing a nickname again has the usual deadline and limits.
        self._register_deadline = self._loop.time() + self._settings.register_timeout
        self._prereg_lines = self._prereg_bytes = 0

    async def wait_for(self, wake: asyncio.Future[None], seconds: float | None) -> None:
        closing = self._loop.create_future()
        self._reader_waiter = closing  # woken by a flush or by closing
        await asyncio.wait((wake, closing), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)

    # -- input -------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<Session {self.nick or '-'} {self.peer}>"

    @property
    def kind(self) -> str:
        """What the metrics count it as: its transport (``tcp``, ``tls``, ``ws``)."""
        return self._conn.transport

    def sweep(self, now: float) -> None:
        """The once-a-second checks: the outbox's (Outbox.sweep), then
        keepalive pings."""
        super().sweep(now)
        if self._dropped:
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
            self._dispatcher.manager.disconnect(self, self.close_reason)
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
        framer = self._framer()
        backlog: deque[bytes | ChatError] = deque()
        loop = asyncio.get_running_loop()
        limits = InputLimits.of(settings, loop.time()) if settings.msg_rate > 0 else None
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
                    await self.ops_settled(settings.shutdown_grace)
                    return "connection closed"
                if limits is not None and (wait := limits.bytes_wait(loop.time())) > 0:
                    limits.pushed_back = True
                    await self.pause(wait)
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

    def _framer(self) -> LineFramer:
        """What splits this connection's input into lines, with its limit."""
        return LineFramer(self._settings.max_line)

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
        limits: InputLimits,
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
                await self.pause(deadline - now)
                return False
            if len(backlog) >= self._settings.flood_lines or limits.bytes_wait(now) > 0:
                limits.pushed_back = True
                await self.pause(deadline - now)
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
        limits: InputLimits | None,
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

    def _handle(self, item: bytes | ChatError) -> str | Pending | None:
        if isinstance(item, ChatError):
            # Told, not raised: a raised error kept by the framer would hold
            # this frame, and the frame the error (a reference cycle).
            self.tell(Error.of(item))
            return None
        try:
            command = self.codec.decode(item)
            return None if command is None else self._dispatcher.dispatch(self, command)
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None

    async def _complete(self, pending: Pending) -> str | None:
        """Finish a command that waits (for the store or a password hash)."""
        try:
            return await pending
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None
