"""Listeners, the session registry and the two-phase shutdown.

:class:`Server` accepts connections, applies the connection limits
(``max_clients``, ``max_per_ip``), sets socket options (TCP keepalive,
``TCP_NODELAY``) and runs one :class:`~chatd.session.Session` per
connection. Shutdown is explicit and bounded: stop accepting, tell everyone,
let outboxes flush for ``shutdown_grace`` seconds, abort the stragglers and
wait for every session to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from chatd.accounts import Auth
from chatd.config import Settings
from chatd.errors import ChatError, ServerFull, TooManyConnections
from chatd.protocol import Error, Format, render
from chatd.rooms import RoomManager
from chatd.session import Session, StreamConnection
from chatd.store import open_store

logger = logging.getLogger(__name__)


class Server:
    """The chat daemon's TCP front door."""

    def __init__(self, settings: Settings, manager: RoomManager | None = None) -> None:
        self.settings = settings
        self.manager = manager or RoomManager(
            max_rooms_per_session=settings.max_rooms_per_session,
            max_rooms=settings.max_total_rooms,
            announce_limit=settings.announce_limit,
            history_on_join=settings.history_on_join,
            store=open_store(settings.db, sync=settings.db_sync),
        )
        self.auth = Auth(settings.password_cost, settings.login_fail_delay)
        self._sessions: dict[Session, asyncio.Task[None]] = {}
        self._per_ip: Counter[str] = Counter()
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._refusals = _RefusalLog()
        self._socket_options = _socket_options(settings)

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
        """The (host, port) pairs actually bound (useful with port 0)."""
        if self._listener is None:
            return []
        return [s.getsockname()[:2] for s in self._listener.sockets]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def start(self) -> None:
        """Open the store, then listen. Raises StoreError if the store is unusable."""
        store = self.manager.store
        await store.open()
        try:
            await self.manager.restore()
            self._listener = await asyncio.start_server(
                self._on_connect,
                self.settings.host,
                self.settings.port,
                backlog=self.settings.backlog,
                limit=self.settings.max_line * 2,
            )
        except BaseException:
            await store.close()
            self.auth.close()
            raise
        # Linux copies these options from the listening socket to every
        # accepted one, which saves five system calls per connection.
        for sock in self._listener.sockets:
            self._configure_socket(sock)
        self._sweeper = asyncio.create_task(self._sweep_loop())
        for host, port in self.addresses:
            logger.info("listening on %s:%d", host, port)

    async def _sweep_loop(self) -> None:
        """Once a second, drop clients whose writes have been blocked too long.

        One O(n) pass a second keeps timers off the write path.
        """
        loop = asyncio.get_running_loop()
        limit = self.settings.write_timeout
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for session in list(self._sessions):
                since = session.write_blocked_since
                if since and now - since > limit:
                    session.drop(f"write timeout ({limit:g} s without reading)")

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = StreamConnection(reader, writer)
        ip = conn.peer.rpartition(":")[0]
        refusal: ChatError | None = None
        if self._closing:
            refusal = ServerFull("the server is shutting down")
        elif len(self._sessions) >= self.settings.max_clients:
            refusal = ServerFull(f"the server is full ({self.settings.max_clients} clients)")
        elif self._per_ip[ip] >= self.settings.max_per_ip:
            refusal = TooManyConnections(
                f"too many connections from {ip} (at most {self.settings.max_per_ip})"
            )
        if refusal is not None:
            self._refusals.note(ip, refusal.code)
            # The line is tiny: it fits the socket buffer, so close() cannot hang.
            writer.write(render(Error.of(refusal), Format.TEXT))
            writer.close()
            return
        if not _INHERITS_SOCKET_OPTIONS:
            self._configure_socket(writer.get_extra_info("socket"))
        session = Session(self.manager, self.settings, conn, auth=self.auth)
        task = asyncio.current_task()
        assert task is not None
        self._sessions[session] = task
        self._per_ip[ip] += 1
        try:
            await session.run()
        except asyncio.CancelledError:
            # The last resort of shutdown. Python 3.11's start_server callback
            # logs a traceback for a cancelled connection task, so the task
            # ends normally instead; the session has already cleaned up.
            logger.debug("session %s cancelled", session.peer)
        finally:
            del self._sessions[session]
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]

    def _configure_socket(self, sock: Any) -> None:
        if sock is None:
            return
        for level, option, value in self._socket_options:
            with contextlib.suppress(OSError):
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
        if self._listener is not None:
            self._listener.close()
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
        if self._listener is not None:
            await self._listener.wait_closed()
        # Every session is over: nothing more can be written.
        await self.manager.store.close()
        self.auth.close()
        logger.info("shutdown complete")


_INHERITS_SOCKET_OPTIONS = sys.platform.startswith("linux")


def _socket_options(s: Settings) -> list[tuple[int, int, int]]:
    """(level, option, value) for every client socket, from the settings."""
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    # Linux names; other systems keep their keepalive defaults.
    for name, value in (
        ("TCP_KEEPIDLE", s.keepalive_idle),
        ("TCP_KEEPINTVL", s.keepalive_interval),
        ("TCP_KEEPCNT", s.keepalive_count),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    if s.sndbuf:
        options.append((socket.SOL_SOCKET, socket.SO_SNDBUF, s.sndbuf))
    return options


class _RefusalLog:
    """Log refused connections without letting a flood of them flood the log.

    The first refusal of an address in a 10-second window is logged; the rest
    are counted and reported when the next window opens.
    """

    WINDOW = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def note(self, ip: str, code: str) -> None:
        now = self._clock()
        start, suppressed = self._windows.get(ip, (-self.WINDOW, 0))
        if now - start < self.WINDOW:
            self._windows[ip] = (start, suppressed + 1)
            return
        if suppressed:
            logger.warning("refused %d more connections from %s", suppressed, ip)
        logger.warning("refused a connection from %s: %s", ip, code)
        self._windows[ip] = (now, 0)
        if len(self._windows) > 10_000:  # forget quiet addresses
            self._windows = {
                k: v for k, v in self._windows.items() if now - v[0] < self.WINDOW or v[1]
            }
