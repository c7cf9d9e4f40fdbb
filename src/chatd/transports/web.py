"""The web port: the chat page, a WebSocket gateway, health and metrics.

One ``websockets`` server on the daemon's event loop answers:

* ``GET /`` (and its assets): the web chat page shipped in ``chatd/webpage``;
* ``GET /ws``: a WebSocket that is one more session of the same daemon:
  each text frame in is one command line, each event out is one JSON text
  frame (JSON mode is fixed);
* ``GET /healthz``: 200 when the daemon accepts connections and its store
  commits, 503 with the reason otherwise;
* ``GET /metrics``: Prometheus text format (:mod:`chatd.daemon.metrics`).

websockets parses HTTP and frames; nothing here does. Every connection to
the web port holds a connection slot from accept to close, counted with the
chat ports' (``max_clients``, ``max_per_ip``), so idle HTTP connections
cannot exhaust the daemon's file descriptors; a WebSocket keeps its slot
for its session, which is the same :class:`~chatd.daemon.session.Session` as on
TCP, with the same limits, flood control and slow consumer handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import importlib.resources
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from chatd.transports.tcp import ACCEPT_BATCH, listen_deep

if TYPE_CHECKING:
    from chatd.config import Settings

logger = logging.getLogger(__name__)

#: Files of the web page: URL path -> (file in chatd/webpage, content type).
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}

_SECURITY_HEADERS = {
    # The page loads only its own files and talks only to its own server.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _response(
    status: http.HTTPStatus, body: bytes, content_type: str, *, head: bool = False
) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    for name, value in _SECURITY_HEADERS.items():
        headers[name] = value
    return Response(status.value, status.phrase, headers, b"" if head else body)


def _text(status: http.HTTPStatus, text: str, *, head: bool = False) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8", head=head)


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """May a WebSocket from ``origin`` connect (``host`` is the request's Host)?

    No Origin header: not a browser, allowed. Otherwise the page must come
    from this server (same host and port), or from an origin in ``allowed``
    (``*`` allows every origin).
    """
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class _FrameCache:
    """Each event's text frame, made once for all its WebSocket recipients.

    Fan-out hands every recipient the same ``bytes`` object; server frames
    are unmasked and no extension is negotiated (compression is off), so
    the frame is the same for all of them too. Bounded by total size.
    """

    LIMIT = 1 << 20

    def __init__(self) -> None:
        self._frames: dict[bytes, bytes] = {}
        self._size = 0

    def frame(self, chunk: bytes) -> bytes:
        frame = self._frames.get(chunk)
        if frame is None:
            if self._size > self.LIMIT:
                self._frames.clear()
                self._size = 0
            payload = chunk[:-1] if chunk.endswith(b"\n") else chunk
            frame = Frame(Opcode.TEXT, payload).serialize(mask=False)
            self._frames[chunk] = frame
            self._size += len(chunk) + len(frame)
        return frame


_FRAMES = _FrameCache()


class WebSocketConnection:
    """A :class:`~chatd.transports.base.Connection` over one WebSocket.

    Input: one frame is one line. Output: each rendered event (one JSON line)
    becomes one text frame, serialized by websockets (once per event, see
    :class:`_FrameCache`); a flush writes all of its frames in one call.
    """

    __slots__ = ("_high_water", "_ws", "peer")

    transport = "ws"

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._high_water = ws.transport.get_write_buffer_limits()[1]
        address = ws.remote_address
        self.peer = f"{address[0]}:{address[1]}" if address else "?"

    async def read(self) -> bytes:
        try:
            # Bytes, not str: the line framer checks the UTF-8 and says so.
            frame = await self._ws.recv(decode=False)
        except ConnectionClosed:
            return b""
        return frame if frame.endswith(b"\n") else frame + b"\n"

    def write(self, chunks: list[bytes]) -> int:
        ws = self._ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            raise ConnectionResetError("connection closed")
        ws.transport.write(b"".join(map(_FRAMES.frame, chunks)))
        return sum(map(len, chunks))

    async def drain(self) -> None:
        await self._ws.drain()

    def congested(self) -> bool:
        return self._ws.transport.get_write_buffer_size() > self._high_water

    def buffered(self) -> int:
        return self._ws.transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Start the closing handshake: the client answers and the reader sees the end."""
        ws = self._ws
        if ws.protocol.state is State.OPEN and not ws.transport.is_closing():
            ws.protocol.send_close(1000)
            ws.transport.write(b"".join(ws.protocol.data_to_send()))

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        self._ws.transport.abort()

    def get_extra_info(self, name: str) -> object:
        return self._ws.transport.get_extra_info(name)

    async def wait_closed(self) -> None:
        await self._ws.wait_closed()


#: Runs a WebSocket session to its end, in the slot its connection holds.
SessionRunner = Callable[[WebSocketConnection], Awaitable[None]]
#: Takes a connection slot for an address (False: refused), and gives it back.
TakeSlot = Callable[[str], bool]
ReleaseSlot = Callable[[str], None]


def _slot_holding(take: TakeSlot, release: ReleaseSlot) -> type[ServerConnection]:
    """A ServerConnection that holds a connection slot from accept to close."""

    class SlotConnection(ServerConnection):
        slot: str | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            if take(ip):
                self.slot = ip
            else:
                # Refused before any HTTP, so refusals cost no more than a TCP one.
                cast(asyncio.Transport, transport).abort()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            # websockets keeps the error that ended the parser, whose frames
            # hold the protocol (a reference cycle): let go of the frames.
            if (parser_exc := self.protocol.parser_exc) is not None:
                parser_exc.__traceback__ = None
            if self.slot is not None:
                release(self.slot)
                self.slot = None

    return SlotConnection


#: (healthy, reason) for /healthz.
HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]


class WebGateway:
    """The HTTP listener: page, WebSocket, health, metrics."""

    def __init__(
        self,
        settings: Settings,
        run_session: SessionRunner,
        slots: tuple[TakeSlot, ReleaseSlot],
        health: HealthCheck,
        metrics: Callable[[], tuple[bytes, str]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._settings = settings
        self._run_session = run_session
        self._slots = slots
        self._health = health
        self._metrics = metrics
        self._tls = tls
        self._server: WsServer | None = None
        self._files: dict[str, bytes] = {}

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self) -> None:
        s = self._settings
        assert s.http_port is not None
        package = importlib.resources.files("chatd") / "webpage"
        self._files = {name: (package / name).read_bytes() for name, _ in PAGE_FILES.values()}

        self._server = await serve(
            self._on_websocket,
            s.host,
            s.http_port,
            process_request=self._process_request,
            ssl=self._tls,
            # A frame a few times max_line still gets a line_too_long answer;
            # a bigger one closes the WebSocket (1009, message too big).
            max_size=4 * s.max_line,
            max_queue=16,
            compression=None,  # per-connection zlib state costs more than chat saves
            ping_interval=s.ws_ping_interval,
            ping_timeout=s.ws_ping_timeout,
            open_timeout=s.tls_handshake_timeout,
            close_timeout=2.0,
            server_header=None,
            create_connection=_slot_holding(*self._slots),
            backlog=min(ACCEPT_BATCH, s.backlog),
            ssl_handshake_timeout=s.tls_handshake_timeout if self._tls else None,
        )
        for sock in self._server.sockets:
            listen_deep(sock, s.backlog)
        scheme = "https" if self._tls else "http"
        for host, port in self.addresses:
            logger.info("web page and WebSocket on %s://%s:%d/", scheme, host, port)

    def close(self) -> None:
        """Stop accepting; open WebSockets end with their sessions."""
        if self._server is not None:
            self._server.close(close_connections=False)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return _text(http.HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD\n")
        if path == "/ws":
            origin = request.headers.get("Origin")
            if not origin_allowed(origin, request.headers.get("Host"), self._settings.origins):
                logger.warning("refused a WebSocket from origin %s", origin)
                return _text(http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
            return None  # websockets performs the upgrade
        if path in PAGE_FILES:
            name, content_type = PAGE_FILES[path]
            return _response(http.HTTPStatus.OK, self._files[name], content_type, head=head)
        if path == "/healthz":
            healthy, reason = await self._health()
            status = http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _text(status, f"{reason}\n", head=head)
        if path == "/metrics":
            body, content_type = self._metrics()
            return _response(http.HTTPStatus.OK, body, content_type, head=head)
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n", head=head)

    async def _on_websocket(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._run_session(WebSocketConnection(ws))
