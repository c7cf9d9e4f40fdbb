"""One connection to the server, and where its handshake stands."""

from __future__ import annotations

import asyncio
import contextlib

from chatd.client.reconnect import Snapshot


class Link:
    """One TCP connection to the server and where its handshake stands."""

    __slots__ = ("acked", "reader", "ready", "restore", "restore_token", "restored", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        #: The server acknowledged /format json: it speaks JSON, the connection is made.
        self.acked = False
        #: The user's lines may go out (any restore commands have been sent first).
        self.ready = False
        #: The state to bring back on this connection, or None.
        self.restore: Snapshot | None = None
        #: The ping token whose pong ends the restore.
        self.restore_token: str | None = None
        self.restored = False

    @property
    def restoring(self) -> bool:
        """A state is to be brought back and its restore has not finished."""
        return self.restore is not None and not self.restored

    def send(self, line: str) -> None:
        """Queue one line for the server (nothing once the connection is closing)."""
        if not self.writer.is_closing():
            self.writer.write(line.encode("utf-8", "replace") + b"\n")

    async def drain(self) -> None:
        """Wait while the socket buffer is full; a lost connection is noticed by the reader."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def close(self) -> None:
        """Close the connection, waiting a moment for the close to finish."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
