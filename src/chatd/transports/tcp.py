"""Plain TCP: a :class:`~chatd.transports.base.Connection` over asyncio
streams, and what every listener shares (a deep accept queue, the options
each client socket gets)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatd.config import Settings

_LINGER_ZERO = struct.pack("ii", 1, 0)

INHERITS_SOCKET_OPTIONS = sys.platform.startswith("linux")

#: Connections accepted in one pass of the event loop. asyncio accepts up to
#: the listen backlog at once, and a storm of thousands would then hold the
#: loop for tens of milliseconds; the kernel queue stays as deep as the
#: backlog setting (see listen_deep).
ACCEPT_BATCH = 64


def listen_deep(sock: Any, backlog: int) -> None:
    """Give a listening socket the kernel queue ``backlog``, whatever the
    event loop was told (it takes that number as its accept batch too)."""
    with socket.socket(fileno=os.dup(sock.fileno())) as dup:
        dup.listen(backlog)


def bound(listener: asyncio.Server | None) -> list[tuple[str, int]]:
    if listener is None:
        return []
    return [s.getsockname()[:2] for s in listener.sockets]


def socket_options(s: Settings) -> list[tuple[int, int, int]]:
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


class StreamConnection:
    """A :class:`Connection` over asyncio streams: plain TCP."""

    __slots__ = ("_high_water", "_reader", "_transport", "_writer", "peer", "read_size")

    transport = "tcp"

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_size: int = 65536
    ) -> None:
        self._reader = reader
        self._writer = writer
        #: Written to directly: the flush of every connection in every loop
        #: pass goes through write(), and StreamWriter adds nothing to it.
        self._transport = writer.transport
        self.read_size = read_size
        self._high_water = writer.transport.get_write_buffer_limits()[1]
        peername = writer.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if peername else "?"

    async def read(self) -> bytes:
        return await self._reader.read(self.read_size)

    def write(self, chunks: list[bytes]) -> int:
        # uvloop raises RuntimeError on a closed transport where asyncio only
        # logs: both mean the peer is gone, which the writer handles as such.
        transport = self._transport
        if transport.is_closing():
            raise ConnectionResetError("connection closed")
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        transport.write(data)
        return len(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def congested(self) -> bool:
        return self._transport.get_write_buffer_size() > self._high_water

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

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
        await self.wait_closed()

    async def wait_closed(self) -> None:
        # Always awaited: a reset leaves its error in the stream's close
        # future, which asyncio reports as never retrieved otherwise. The
        # stream keeps that error, and every await that raised it added
        # frames to it that lead back to the stream: cut them (no cycle).
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError) as exc:
            exc.__traceback__ = exc.__context__ = None

    def abort(self) -> None:
        # With SO_LINGER 0 the kernel sends RST and forgets the unsent data,
        # instead of trickling it to a client that will never read it.
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # uvloop raises ValueError (negative file descriptor) once the
            # transport has closed the socket: nothing is left to reset then.
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self._writer.transport.abort()
