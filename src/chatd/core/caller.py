"""What the dispatcher asks of a connection: :class:`Caller`, and
:data:`Pending`, the coroutine a command that must wait comes back as."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from chatd.core.model import Member
from chatd.protocol import Format

#: A command that waits; it may end the connection (a reason) like any command.
Pending = Coroutine[Any, Any, str | None]


class Caller(Member):
    """A member whose commands the dispatcher runs: a connection."""

    __slots__ = ()

    @property
    def closing(self) -> bool:
        """The connection is ending: a command that waited does nothing more."""
        raise NotImplementedError

    @property
    def peer(self) -> str:
        """The client's address, ``host:port``."""
        raise NotImplementedError

    @property
    def page_bytes(self) -> int:
        """The most bytes one page of history may take in the outbox."""
        raise NotImplementedError

    def set_format(self, fmt: Format) -> None:
        """``/format``: raises BadArgs where the transport cannot."""
        raise NotImplementedError

    def set_keepalive(self, interval: float) -> None:
        """``/ping every``: raises BadArgs for a bad interval."""
        raise NotImplementedError

    def charge(self, tokens: int) -> None:
        """The last command costs ``tokens`` more of flood control (a big answer)."""

    def logged_out(self) -> None:
        """The connection chooses a nickname again, with its usual limits."""

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the connection starts closing."""
        raise NotImplementedError

    async def ops_settled(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until this connection's operations ended."""
        raise NotImplementedError

    async def wait_for(self, wake: asyncio.Future[None], seconds: float | None) -> None:
        """Wait for ``wake``, at most ``seconds``; return early when
        the connection's output moves or it starts closing."""
        raise NotImplementedError
