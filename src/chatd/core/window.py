"""The store window: messages accepted but not yet confirmed by the store.

A store that confirms in groups (SQLite's group commit, Redis's pipelines)
delivers a whole group in one loop pass; the window bounds what one pass
can put into any member's outbox, so a reader that keeps up is never cut by
a burst. Senders past the window wait (:meth:`StoreWindow.space`): the
pushback is on them, never on the readers.
"""

from __future__ import annotations

import asyncio

#: Bytes a message is counted for in the store window beyond its text
#: (its rendered event's framing: id, time, room, sender).
MESSAGE_OVERHEAD = 96


class StoreWindow:
    """Counts what is on its way to the store; says when it is full."""

    __slots__ = ("_bytes", "_count", "_space", "max_bytes", "max_messages")

    def __init__(self, max_bytes: int, max_messages: int) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._bytes = 0
        self._count = 0
        self._space: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        """A new message should wait (see space)."""
        return self._bytes >= self.max_bytes or self._count >= self.max_messages

    def take(self, size: int) -> None:
        """A message of ``size`` bytes went to the store."""
        self._count += 1
        self._bytes += size

    def give(self, size: int) -> None:
        """The store answered for a message of ``size`` bytes."""
        self._count -= 1
        self._bytes -= size
        if self._space is not None and self._bytes <= self.max_bytes // 2:
            self._space.set_result(None)
            self._space = None

    def space(self) -> asyncio.Future[None]:
        """A future done once the window is half empty again."""
        if self._space is None:
            self._space = asyncio.get_running_loop().create_future()
        return self._space
