"""The room on screen is read: the automatic ``/read`` of ``chatd connect``.

A client logged in to an account tells the server how far the user has read
the room on screen, its current room, so that ``/unread``, ``/rooms`` and the
account's other connections know: when messages arrive in that room, and when
another room becomes current. The mark names the newest message the client
received in the room (``/read #ROOM ID``), never more, and only when that
moved forward of what the account is known to have read (the ``read`` events
of the server, its own or another connection's). Marks go out at most once
per :data:`READ_INTERVAL` seconds: the first at once, the rest gathered until
the interval has passed, one ``/read`` per room that was on screen meanwhile.

How the client sends them, and keeps the server's answers off the screen,
is :mod:`chatd.client.chat`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from chatd.protocol import name_key

#: Seconds between two rounds of marks.
READ_INTERVAL: Final = 2.0


class ReadMarks:
    """What the account has read of each room, and the marks still to send.

    ``send(room, id)`` sends ``/read #room id`` if it may now (logged in,
    connected, in the room) and says whether it did; a mark it could not send
    is dropped, and comes again with the next message or room change.
    """

    __slots__ = ("_due", "_interval", "_last", "_marked", "_newest", "_send", "_timer")

    def __init__(self, send: Callable[[str, int], bool], interval: float = READ_INTERVAL) -> None:
        self._send = send
        self._interval = interval
        #: Per room (name_key): its name and the id of the newest message received in it.
        self._newest: dict[str, tuple[str, int]] = {}
        #: Per room (name_key): how far the account has read it, as far as we know.
        self._marked: dict[str, int] = {}
        #: The rooms to mark at the next round, in the order they were on screen.
        self._due: dict[str, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        #: The loop time of the last round that sent something.
        self._last: float | None = None

    def reset(self) -> None:
        """Forget everything: a new connection, or another account."""
        self._newest.clear()
        self._marked.clear()
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last = None

    def forget_reads(self) -> None:
        """Another account (or none): what was read is not known any more."""
        self._marked.clear()
        self._due.clear()

    def received(self, room: str, message_id: int) -> None:
        """A message of ``room`` arrived (live or history)."""
        key = name_key(room)
        newest = self._newest.get(key)
        if newest is None or message_id > newest[1]:
            self._newest[key] = (room, message_id)

    def read(self, room: str, message_id: int) -> None:
        """The server says the account read ``room`` up to ``message_id``."""
        key = name_key(room)
        if message_id > self._marked.get(key, 0):
            self._marked[key] = message_id

    def on_screen(self, room: str) -> None:
        """``room`` is the one on screen: mark what it has, now or at the next round."""
        key = name_key(room)
        if not self._unmarked(key):
            return
        self._due[key] = None
        if self._timer is not None:
            return  # a round is coming
        loop = asyncio.get_running_loop()
        wait = 0.0 if self._last is None else self._last + self._interval - loop.time()
        if wait <= 0:
            self._round()
        else:
            self._timer = loop.call_later(wait, self._round)

    def _unmarked(self, key: str) -> bool:
        newest = self._newest.get(key)
        return newest is not None and newest[1] > self._marked.get(key, 0)

    def _round(self) -> None:
        self._timer = None
        due, self._due = self._due, {}
        sent = False
        for key in due:
            if not self._unmarked(key):
                continue
            room, message_id = self._newest[key]
            if self._send(room, message_id):
                self._marked[key] = message_id
                sent = True
        if sent:
            self._last = asyncio.get_running_loop().time()
