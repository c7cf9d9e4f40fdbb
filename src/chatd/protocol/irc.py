"""IRC messages: one line to its parts and back, with no I/O.

The wire format of IRC as the modern IRC documentation describes it
(https://modern.ircdocs.horse, RFC 1459/2812 with IRCv3 message tags)::

    [@tag=value;tag2 ][:source ]VERB [param ...][ :trailing]

:func:`parse_message` splits a line into an :class:`IrcMessage`;
:func:`render_message` joins one back. Both follow the ``irc-parser-tests``
vectors, which the test suite runs: atoms are separated by one or more
spaces (as RFC 1459 has it), a tag without a value is the empty string, tag
values are escaped (``\\:`` ``\\s`` ``\\\\`` ``\\r`` ``\\n``), and the last
parameter is written as trailing (``:...``) only when it must be: it is
empty, starts with ``:`` or holds a space.

This module knows nothing of chatd's rooms or sessions: it is the IRC
codec's lowest layer, as :mod:`chatd.protocol.framing` is the line
protocol's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

#: The most bytes of an IRC line without its tags, CR LF included (RFC 1459).
MAX_LINE: Final = 512
#: The most bytes of the tags of a line a client sends, ``@`` and the space
#: after them included (IRCv3 message-tags: 4094 for a client's own tags).
MAX_CLIENT_TAGS: Final = 4096

_ESCAPES: Final = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_UNESCAPES: Final = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})


class BadMessage(ValueError):
    """A line that is not an IRC message (no verb, a tag without a name).

    Not a :class:`~chatd.errors.ChatError`: an IRC server ignores such a
    line rather than answering it with a numeric."""


@dataclasses.dataclass(frozen=True, slots=True)
class IrcMessage:
    """One IRC message: its tags, source (without the ``:``), verb and params."""

    verb: str
    params: tuple[str, ...] = ()
    source: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def command(self) -> str:
        """The verb in upper case, as commands are matched."""
        return self.verb.upper()


def parse_message(line: str) -> IrcMessage:
    """Split one line (without CR LF) into its parts; BadMessage if it has no verb."""
    rest = line
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        raw, _, rest = rest[1:].partition(" ")
        tags = _parse_tags(raw)
        rest = rest.lstrip(" ")
    source: str | None = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing: str | None = None
    middle, sep, after = rest.partition(" :")
    if rest.startswith(":"):
        middle, trailing = "", rest[1:]
    elif sep:
        trailing = after
    words = [word for word in middle.split(" ") if word]  # spaces only: a tab is data
    if not words:
        raise BadMessage("no command in the line")
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return IrcMessage(words[0], tuple(params), source, tags)


def _parse_tags(raw: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        if not key:
            raise BadMessage("a message tag without a name")
        tags[key] = _unescape(value)
    return tags


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, None)
        if following is None:
            break  # a lone backslash at the end is dropped
        out.append(_ESCAPES.get(following, following))
    return "".join(out)


def escape_tag(value: str) -> str:
    """A tag value as it goes on the wire."""
    return value.translate(_UNESCAPES)


def render_message(message: IrcMessage) -> str:
    """The line of a message (without CR LF); ValueError if a parameter
    cannot be written (a space in one that is not the last, say)."""
    parts: list[str] = []
    if message.tags:
        parts.append(
            "@"
            + ";".join(
                f"{key}={escape_tag(value)}" if value else key
                for key, value in message.tags.items()
            )
        )
    if message.source is not None:
        parts.append(":" + message.source)
    parts.append(message.verb)
    params = message.params
    for param in params[:-1]:
        if not param or " " in param or param.startswith(":"):
            raise ValueError(f"only the last IRC parameter may be {param!r}")
        parts.append(param)
    if params:
        last = params[-1]
        parts.append(":" + last if not last or " " in last or last.startswith(":") else last)
    line = " ".join(parts)
    if "\r" in line or "\n" in line or "\0" in line:
        raise ValueError("an IRC line cannot hold CR, LF or NUL")
    return line


def split_userhost(source: str) -> tuple[str | None, str | None, str | None]:
    """``nick!user@host`` into its parts (None for a part that is missing or empty)."""
    nick, _, host = source.partition("@")
    nick, _, user = nick.partition("!")
    return nick or None, user or None, host or None
