"""The one interface every transport implements for a session.

A session reads bytes from and writes bytes to a :class:`Connection`; it
does not know whether TCP (:mod:`chatd.transports.tcp`), TLS
(:mod:`chatd.transports.tls`) or a WebSocket (:mod:`chatd.transports.web`)
carries them.
"""

from __future__ import annotations

from typing import Protocol


class Connection(Protocol):
    """What a session needs from a transport."""

    #: "tcp", "tls" or "ws": for metrics and transport-specific rules.
    transport: str
    peer: str

    async def read(self) -> bytes:
        """Some bytes, or ``b""`` at end of input."""
        ...

    def write(self, chunks: list[bytes]) -> int:
        """Queue all chunks for sending, in order; return their total size
        (before any framing)."""
        ...

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        ...

    def congested(self) -> bool:
        """True when the transport's buffer is over its high-water mark."""
        ...

    def buffered(self) -> int:
        """Bytes the transport holds that the kernel has not taken yet."""
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

    async def wait_closed(self) -> None:
        """Wait until the transport is closed (after close() or abort())."""
        ...
