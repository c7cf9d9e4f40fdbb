"""Who is away (IRC's ``AWAY``), here and on the other nodes of a cluster.

A front-end that has the notion (the IRC gateway) sets a member's away
message here and reads anyone's back, wherever they are connected: every
change goes to the other nodes as a broadcast step, with the keys of the
rooms the member is in, and each node hands it to its listeners, which tell
their own clients in those rooms (IRC's ``away-notify``).

The room model keeps the book true to the nicknames: a member's entry goes
when its connection ends, moves when it is renamed, and a nickname that is
registered afresh starts with none, on every node (which also clears what a
node that died left behind).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from chatd.core.model import Member
from chatd.protocol import name_key

if TYPE_CHECKING:
    from chatd.core.bus import Bus

#: A listener: (nickname, away message or None, keys of the member's rooms).
AwayListener = Callable[[str, str | None, list[str]], None]


class AwayBook:
    """Away messages by nickname key, cluster-wide."""

    __slots__ = ("_bus", "_entries", "listeners")

    def __init__(self, bus: Callable[[], Bus]) -> None:
        self._bus = bus
        self._entries: dict[str, str] = {}
        #: Told of every change, this node's and the others'.
        self.listeners: list[AwayListener] = []

    def get(self, nick: str) -> str | None:
        """``nick``'s away message (None: here)."""
        return self._entries.get(name_key(nick))

    def set(self, member: Member, text: str | None) -> None:
        """``member`` is away with ``text``, or back (None)."""
        if member.key is None:
            return
        self._put(member.key, text)
        rooms = list(member.rooms)
        self._bus().broadcast(None, ["away", member.key, member.nick or "", text or "", rooms])
        self._tell(member.nick or "", text, rooms)

    def announce(self, member: Member, rooms: list[str]) -> None:
        """Tell ``rooms`` (ones ``member`` just joined), here and on the
        other nodes, that ``member`` is away, if it is."""
        text = self.get(member.nick or "")
        if text is None or member.key is None:
            return
        self._bus().broadcast(None, ["away", member.key, member.nick or "", text, rooms])
        self._tell(member.nick or "", text, rooms)

    def arrived(self, data: list[Any]) -> None:
        """Another node's change (see set)."""
        _, key, nick, text, rooms = data
        self._put(key, text or None)
        self._tell(nick, text or None, list(rooms))

    def forget(self, key: str) -> None:
        """The nickname ``key`` went, or was taken afresh: no away message,
        here or on the other nodes."""
        if self._entries.pop(key, None) is not None:
            self._bus().broadcast(None, ["away", key, "", "", []])

    def renamed(self, old: str, new: str, nick: str, rooms: Iterable[str]) -> None:
        """A member's nickname changed: its away message goes with it."""
        text = self._entries.pop(old, None)
        if text is not None and old != new:
            self._bus().broadcast(None, ["away", old, "", "", []])
        if text is not None:
            self._entries[new] = text
            self._bus().broadcast(None, ["away", new, nick, text, list(rooms)])

    def _put(self, key: str, text: str | None) -> None:
        if text is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = text

    def _tell(self, nick: str, text: str | None, rooms: list[str]) -> None:
        if nick:
            for listener in self.listeners:
                listener(nick, text, rooms)
