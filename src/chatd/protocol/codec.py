"""Codecs: what turns one connection's lines into commands and events into bytes.

A session frames its input into lines (:class:`~chatd.protocol.LineFramer`)
and hands each line to its codec; the room model hands every event to each
recipient's codec. Neither knows which codec that is, so a front-end that
speaks another line protocol (IRC, say) is one more :class:`Codec` beside
these two, with no change to the dispatcher or the room manager.

Fan-out renders an event once per codec and shares the bytes among every
recipient that uses it: codecs are shared objects, compared by identity.
"""

from __future__ import annotations

from typing import ClassVar

from chatd.protocol.commands import Command, parse_line
from chatd.protocol.events import Event, render
from chatd.protocol.framing import Format


class Codec:
    """The plain-text or JSON-lines form of chatd's protocol.

    Both accept the same input (a text command or a JSON object per line);
    they differ in what they send. A subclass may change either side.
    """

    __slots__ = ("fmt",)

    #: A connection's end is one line to each reader, whatever rooms they
    #: share (IRC's QUIT), not a leave per room.
    one_quit: ClassVar[bool] = False

    def __init__(self, fmt: Format) -> None:
        #: The form of the output, as ``/format`` names it.
        self.fmt = fmt

    def __repr__(self) -> str:
        return f"<Codec {self.fmt.name.lower()}>"

    def decode(self, line: bytes) -> Command | None:
        """The command on one line (None: a blank line); raises ProtocolError."""
        return parse_line(line)

    def encode(self, event: Event) -> bytes:
        """One event as the bytes this codec sends (a whole line)."""
        return render(event, self.fmt)


TEXT = Codec(Format.TEXT)
JSON = Codec(Format.JSON)


def codec_for(fmt: Format) -> Codec:
    """The shared codec of a ``/format``."""
    return JSON if fmt is Format.JSON else TEXT
