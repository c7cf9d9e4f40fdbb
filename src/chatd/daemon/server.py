"""Listeners, the session registry and the two-phase shutdown.

:class:`Server` runs up to five listeners: the plain chat port, the TLS
chat port (:mod:`chatd.transports.tls`), the web port
(:mod:`chatd.transports.web`) and the IRC ports, plain and TLS
(:mod:`chatd.daemon.irc`). Every connection, whatever its transport, is
admitted by the same connection limits (``max_clients``, ``max_per_ip``)
and runs one :class:`~chatd.daemon.session.Session`. Shutdown is explicit
and bounded: stop accepting, tell everyone, let outboxes flush for
``shutdown_grace`` seconds, abort the stragglers and wait for every session
to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from chatd.config import Settings
from chatd.core.accounts import Auth
from chatd.core.dispatch import Dispatcher
from chatd.core.rooms import RoomManager
from chatd.core.stats import Stats
from chatd.daemon.build import build_manager
from chatd.daemon.flood import TokenBucket
from chatd.daemon.irc import IrcClient
from chatd.daemon.ircquery import tell_away
from chatd.daemon.ircsession import IrcCodecs
from chatd.daemon.outbox import LINGER_SECONDS
from chatd.daemon.session import Session
from chatd.errors import Banned, ChatError, ServerFull, TooManyConnections
from chatd.protocol import Error, Format, render
from chatd.protocol.ircreplies import error_line
from chatd.transports.base import Connection
from chatd.transports.tcp import (
    ACCEPT_BATCH,
    INHERITS_SOCKET_OPTIONS,
    StreamConnection,
    bound,
    listen_deep,
    socket_options,
)
from chatd.transports.tls import ServerTLS, TLSConnection
from chatd.transports.web import WebGateway, WebSocketConnection

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


logger = logging.getLogger(__name__)


class Server:
    """The chat daemon's front doors: plain, TLS and web."""

    def __init__(self, settings: Settings, manager: RoomManager | None = None) -> None:
        self.settings = settings
        self.manager = manager if manager is not None else build_manager(settings)
        self.stats: Stats = self.manager.stats
        self.auth = Auth(settings.password_cost, settings.login_fail_delay)
        self.dispatcher = Dispatcher(self.manager, settings, self.auth)
        #: Raises OSError or ssl.SSLError when the files do not load.
        self.tls = (
            ServerTLS(settings.tls_cert, settings.tls_key)
            if settings.tls_cert and settings.tls_key
            else None
        )
        self._sessions: dict[Session, asyncio.Task[None]] = {}
        # /wall and klines reach every connection, with a nickname or not.
        self.manager.connections = self._sessions.keys
        #: Connection slots, in all and per address: every session, and every
        #: web-port connection from accept (see chatd.transports.web).
        self._slots = 0
        self._per_ip: Counter[str] = Counter()
        #: New connections per address (conn_rate): a token bucket each.
        self._arrivals: dict[str, TokenBucket] = {}
        self._arrivals_cap = 10_000
        self._listener: asyncio.Server | None = None
        self._tls_listener: asyncio.Server | None = None
        #: The IRC gateway's listeners, plain and TLS, and its codecs.
        self._irc_listener: asyncio.Server | None = None
        self._ircs_listener: asyncio.Server | None = None
        self._irc_codecs = IrcCodecs(self.manager.store.is_registered)
        self.manager.away.listeners.append(partial(tell_away, self.manager))
        self._web: WebGateway | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._registry: CollectorRegistry | None = None
        #: The last store probe of /healthz: (time.monotonic(), answer).
        self._probe: tuple[float, tuple[bool, str]] | None = None
        self._closing = False
        self._refusals = _WindowedLog("refused a connection from %s: %s")
        self._tls_failures = _WindowedLog("TLS handshake with %s failed: %s", logging.INFO)
        self._socket_options = socket_options(settings)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions)

    async def wait_session_closed(self, session: Session) -> None:
        """Wait until a session is over and no longer counts against any limit."""
        task = self._sessions.get(session)
        if task is not None:
            await asyncio.wait([task])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the plain chat port is bound to (useful with port 0)."""
        return bound(self._listener)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def tls_port(self) -> int:
        return bound(self._tls_listener)[0][1]

    @property
    def irc_port(self) -> int:
        return bound(self._irc_listener)[0][1]

    @property
    def irc_tls_port(self) -> int:
        return bound(self._ircs_listener)[0][1]

    @property
    def http_port(self) -> int:
        assert self._web is not None
        return self._web.addresses[0][1]

    async def start(self) -> None:
        """Open the store, then listen. Raises StoreError if the store is
        unusable, OSError if a port cannot be bound."""
        store = self.manager.store
        await store.open()
        s = self.settings
        try:
            await self.manager.bus.start()
            await self.manager.restore()
            for name in s.opers:
                if not store.is_registered(name):
                    logger.warning(
                        "--oper %s: no account has that name yet; whoever registers it "
                        "will be a server operator (register it first)",
                        name,
                    )
            if not s.tls_only:
                self._listener = await self._listen(self._accept, s.port)
            if self.tls is not None:
                self._tls_listener = await self._listen(partial(self._accept, tls=True), s.tls_port)
            if s.irc_port is not None:
                self._irc_listener = await self._listen(partial(self._accept, irc=True), s.irc_port)
            if s.irc_tls_port is not None and self.tls is not None:
                self._ircs_listener = await self._listen(
                    partial(self._accept, tls=True, irc=True), s.irc_tls_port
                )
            if s.http_port is not None:
                self._web = WebGateway(
                    s,
                    self._on_websocket,
                    (self._take_web_slot, self._release),
                    self.health,
                    self.metrics,
                    self.tls.context if self.tls else None,
                )
                await self._web.start()
        except BaseException:
            await self._close_listeners()
            await self.manager.bus.stop()
            await store.close()
            self.auth.close()
            raise
        self._sweeper = asyncio.create_task(self._sweep_loop())
        for kind, listener in self._chat_listeners():
            for host, port in bound(listener):
                logger.info("listening on %s:%d (%s)", host, port, kind)

    async def _listen(self, callback: Any, port: int) -> asyncio.Server:
        listener = await asyncio.start_server(
            callback,
            self.settings.host,
            port,
            backlog=min(ACCEPT_BATCH, self.settings.backlog),
            limit=self.settings.max_line * 2,
        )
        for sock in listener.sockets:
            listen_deep(sock, self.settings.backlog)
            # Linux copies these options from the listening socket to every
            # accepted one, which saves five system calls per connection.
            self._configure_socket(sock)
        return listener

    def _chat_listeners(self) -> list[tuple[str, asyncio.Server | None]]:
        return [
            ("plain", self._listener),
            ("TLS", self._tls_listener),
            ("IRC", self._irc_listener),
            ("IRC over TLS", self._ircs_listener),
        ]

    def _stop_listening(self) -> None:
        for _, listener in self._chat_listeners():
            if listener is not None:
                listener.close()
        if self._web is not None:
            self._web.close()

    async def _close_listeners(self) -> None:
        self._stop_listening()
        for _, listener in self._chat_listeners():
            if listener is not None:
                await listener.wait_closed()
        if self._web is not None:
            await self._web.wait_closed()

    def reload_tls(self) -> bool:
        """Read the certificate and key again (SIGHUP); False if that failed."""
        return self.tls.reload() if self.tls is not None else False

    async def health(self) -> tuple[bool, str]:
        """(healthy, why): accepting connections, and the store commits."""
        if self._closing:
            return False, "shutting down"
        store = self.manager.store
        if trouble := self.manager.bus.trouble:
            return False, trouble
        if not store.healthy:
            return False, "a store write failed in the last 30 s"
        # The probe is a real commit: one a second at most, however often asked.
        now = time.monotonic()
        if self._probe is None or now - self._probe[0] > 1.0:
            try:
                async with asyncio.timeout(5.0):
                    writable = await store.writable()
                why = "ok" if writable else "the store is not writable"
            except TimeoutError:
                writable, why = False, "the store did not answer within 5 s"
            self._probe = (now, (writable, why))
        return self._probe[1]

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        from chatd.daemon import metrics

        if self._registry is None:
            self._registry = metrics.registry(
                self.stats,
                metrics.Gauges(
                    clients=lambda: Counter(s.kind for s in self._sessions),
                    rooms=lambda: self.manager.room_count,
                    store_backlog=lambda: self.manager.store.backlog,
                    nicknames=lambda: len(self.manager.members()),
                    tasks=lambda: len(asyncio.all_tasks()),
                ),
            )
        return metrics.exposition(self._registry), metrics.CONTENT_TYPE

    async def _sweep_loop(self) -> None:
        """Once a second, each session's timed checks (see Session.sweep).

        One O(n) pass a second keeps timers off the write and read paths.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for session in list(self._sessions):
                session.sweep(now)
            self.manager.moderator.expire()

    def _refusal(self, ip: str) -> ChatError | None:
        """Why a new connection from ``ip`` cannot be served, or None."""
        refusal: ChatError | None = None
        if self._closing:
            refusal = ServerFull("the server is shutting down")
        elif self._slots >= self.settings.max_clients:
            refusal = ServerFull(f"the server is full ({self.settings.max_clients} clients)")
        elif self._per_ip[ip] >= self.settings.max_per_ip:
            refusal = TooManyConnections(
                f"too many connections from {ip} (at most {self.settings.max_per_ip})"
            )
        elif self.settings.conn_rate and not self._arrival(ip):
            refusal = TooManyConnections(
                f"too many new connections from {ip} (at most {self.settings.conn_rate:g} a second)"
            )
        elif (kline := self.manager.moderator.operators.klined(None, None, ip)) is not None:
            refusal = Banned(
                "you are banned from this server" + (f" ({kline.reason})" if kline.reason else "")
            )
        if refusal is not None:
            self._refusals.note(ip, refusal.code)
            self.stats.refused[refusal.code] += 1
        return refusal

    def _arrival(self, ip: str) -> bool:
        """Take a new-connection token for ``ip``; False if it has none left.

        A refused attempt takes nothing, so a client that hammers is refused
        only as long as it goes on faster than the rate.
        """
        s = self.settings
        now = time.monotonic()
        bucket = self._arrivals.get(ip)
        if bucket is None:
            if len(self._arrivals) >= self._arrivals_cap:
                # Forget addresses whose bucket is full again; the cap grows
                # with what remains, so this pass stays rare.
                full = s.conn_burst / s.conn_rate
                self._arrivals = {k: b for k, b in self._arrivals.items() if now - b.stamp < full}
                self._arrivals_cap = max(10_000, 2 * len(self._arrivals))
            bucket = self._arrivals[ip] = TokenBucket(s.conn_rate, s.conn_burst, now)
        if bucket.take(now) > 0:
            bucket.tokens += 1.0
            return False
        return True

    async def _accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls: bool = False,
        irc: bool = False,
    ) -> None:
        """A connection accepted on a chat port (plain or TLS, chatd's or
        IRC's): refused as the admission limits say, or served."""
        tls_conn = TLSConnection(reader, writer, self.tls.context) if tls and self.tls else None
        conn: Connection = tls_conn or StreamConnection(reader, writer)
        if (refusal := self._refusal(_ip(conn))) is not None:
            if tls_conn is not None:
                # No plaintext on a TLS port: the client sees the connection end.
                tls_conn.abort()
                await tls_conn.wait_closed()
                return
            # The line is tiny: it fits the socket buffer, so close() cannot hang.
            writer.write(
                error_line(refusal.text) if irc else render(Error.of(refusal), Format.TEXT)
            )
            writer.close()
            return
        if not INHERITS_SOCKET_OPTIONS:
            self._configure_socket(writer.get_extra_info("socket"))
        # A TLS handshake holds a connection slot, so stalled handshakes count
        # against max_per_ip like any other connection.
        await self._serve(conn, handshake=tls_conn, irc=irc)

    def _take(self, ip: str) -> None:
        self._slots += 1
        self._per_ip[ip] += 1

    def _release(self, ip: str) -> None:
        self._slots -= 1
        self._per_ip[ip] -= 1
        if not self._per_ip[ip]:
            del self._per_ip[ip]

    def _take_web_slot(self, ip: str) -> bool:
        """A web-port connection was accepted: admit it, or refuse it (False)."""
        if self._refusal(ip) is not None:
            return False
        self._take(ip)
        return True

    async def _on_websocket(self, conn: WebSocketConnection) -> None:
        # Admitted when its connection was accepted; it keeps that slot.
        await self._serve(conn, slot_held=True)

    async def _serve(
        self,
        conn: Connection,
        handshake: TLSConnection | None = None,
        *,
        slot_held: bool = False,
        irc: bool = False,
    ) -> None:
        """Run one admitted connection's session to its end."""
        ip = _ip(conn)
        task = asyncio.current_task()
        assert task is not None
        session: Session
        if irc:
            session = IrcClient(
                self.manager,
                self.settings,
                conn,
                codecs=self._irc_codecs,
                dispatcher=self.dispatcher,
            )
        else:
            session = Session(
                self.manager,
                self.settings,
                conn,
                fmt=Format.JSON if conn.transport == "ws" else Format.TEXT,
                dispatcher=self.dispatcher,
            )
        self._sessions[session] = task
        if not slot_held:
            self._take(ip)
        try:
            if handshake is not None and not await self._handshake(handshake):
                return
            self.stats.connections[session.kind] += 1
            await session.run()
        except asyncio.CancelledError:
            # The last resort of shutdown. Python 3.11's start_server callback
            # logs a traceback for a cancelled connection task, so the task
            # ends normally instead; the session has already cleaned up.
            logger.debug("session %s cancelled", session.peer)
        finally:
            del self._sessions[session]
            if not slot_held:
                self._release(ip)

    async def _handshake(self, conn: TLSConnection) -> bool:
        """The TLS handshake, within its deadline; False (and closed) if it fails."""
        try:
            async with asyncio.timeout(self.settings.tls_handshake_timeout):
                await conn.handshake()
            return True
        except TimeoutError:
            why = f"no handshake within {self.settings.tls_handshake_timeout:g} s"
        except ssl.SSLError as exc:
            why = exc.reason or str(exc)  # e.g. WRONG_VERSION_NUMBER: plaintext
        except (ConnectionError, OSError) as exc:
            why = str(exc) or exc.__class__.__name__
        self.stats.tls_handshake_failures += 1
        self._tls_failures.note(_ip(conn), why)
        conn.close_now()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_SECONDS):
                await conn.wait_closed()
        conn.abort()  # no-op if closed; else the client never read its alert
        return False

    def _configure_socket(self, sock: Any) -> None:
        if sock is None:
            return
        for level, option, value in self._socket_options:
            with contextlib.suppress(OSError, ValueError):  # ValueError: uvloop, closed
                sock.setsockopt(level, option, value)

    def abort_all(self, reason: str) -> None:
        """Cut every connection now, without waiting for output to flush."""
        for session in list(self._sessions):
            session.drop(reason)

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Stop accepting, say goodbye, flush for a bounded time, close all."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        self._stop_listening()
        sessions = list(self._sessions.items())
        logger.info("shutting down: %d sessions", len(sessions))
        for session, _ in sessions:
            session.begin_shutdown(reason)
        tasks = [task for _, task in sessions]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
            for session, task in sessions:
                if task in late:
                    session.drop("shutdown grace expired")
            if late:
                _, late = await asyncio.wait(late, timeout=1.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self._close_listeners()
        # Every session is over: nothing more can be written.
        await self.manager.bus.stop()
        await self.manager.store.close()
        self.auth.close()
        logger.info("shutdown complete")


def _ip(conn: Connection) -> str:
    return conn.peer.rpartition(":")[0]


class _WindowedLog:
    """Log what an address did without letting a flood of it flood the log.

    The first note of an address in a 10-second window is logged; the rest
    are counted and reported when the next window opens.
    """

    WINDOW = 10.0

    def __init__(
        self,
        text: str,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._text = text
        self._level = level
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def note(self, ip: str, what: str) -> None:
        now = self._clock()
        start, suppressed = self._windows.get(ip, (-self.WINDOW, 0))
        if now - start < self.WINDOW:
            self._windows[ip] = (start, suppressed + 1)
            return
        if suppressed:
            logger.log(self._level, "... and %d more times from %s", suppressed, ip)
        logger.log(self._level, self._text, ip, what)
        self._windows[ip] = (now, 0)
        if len(self._windows) > 10_000:  # forget quiet addresses
            self._windows = {
                k: v for k, v in self._windows.items() if now - v[0] < self.WINDOW or v[1]
            }
