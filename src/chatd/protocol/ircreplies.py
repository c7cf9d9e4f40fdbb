"""The replies an IRC server sends one client: numerics, as pure functions.

Each function returns the bytes of whole lines, for one reader (numerics
name their reader first). Which numeric answers which chatd error is
:data:`ERROR_NUMERICS`; the text is always chatd's own, which says what to
do. The numbers and their parameters are those of the modern IRC
documentation (https://modern.ircdocs.horse).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from chatd.protocol.irc import MAX_LINE, IrcMessage
from chatd.protocol.ircmap import SERVER, channel, fit, wire
from chatd.protocol.moderation import Role

#: chatd's error codes as IRC numerics. The parameter between the reader and
#: the text: "target" (the channel or nickname of the command), "verb" (the
#: command), or nothing.
ERROR_NUMERICS: Final[dict[str, tuple[str, str]]] = {
    "no_such_nick": ("401", "target"),
    "no_such_room": ("403", "target"),
    "bad_room": ("403", "target"),
    "room_exists": ("403", "target"),
    "too_many_rooms": ("405", "target"),
    "unknown_command": ("421", "verb"),
    "bad_nick": ("432", "target"),
    "nick_taken": ("433", "target"),
    "nick_registered": ("433", "target"),
    "not_in_room": ("442", "target"),
    "not_registered": ("451", ""),
    "bad_args": ("461", "verb"),
    "bad_login": ("464", ""),
    "login_throttled": ("464", ""),
    # The account has as many connections as it may: the login is refused.
    "too_many_sessions": ("464", ""),
    "room_full": ("471", "target"),
    "bad_mode": ("472", "mode"),
    "invite_only": ("473", "target"),
    "banned": ("474", "target"),
    "bad_key": ("475", "target"),
    "list_full": ("478", "target"),
    "not_oper": ("481", ""),
    "not_op": ("482", "target"),
    "muted": ("404", "target"),
    "line_too_long": ("417", ""),
}
#: Errors after which the connection ends: IRC's ``ERROR`` line.
FATAL: Final = frozenset(
    {
        "registration_timeout",
        "registration_limit",
        "ping_timeout",
        "server_full",
        "too_many_connections",
        "wrong_protocol",
        "rate_limited",
    }
)
#: Errors IRC has no numeric for: IRCv3 standard replies (``FAIL``).
FAIL_CODES: Final = {
    "bad_encoding": "INVALID_UTF8",
    "storage_unavailable": "TEMPORARILY_UNAVAILABLE",
    "cluster_unavailable": "TEMPORARILY_UNAVAILABLE",
    "not_logged_in": "ACCOUNT_REQUIRED",
    "bad_query": "INVALID_PARAMS",
}


def numeric(number: str, reader: str, *params: str) -> bytes:
    """One numeric line to ``reader`` (``*`` before it has a nickname)."""
    return wire(IrcMessage(number, (reader, *params), SERVER))


def error_reply(code: str, text: str, reader: str, verb: str, target: str, mode: str) -> bytes:
    """A chatd error as IRC writes it, for a command ``verb`` on ``target``."""
    if code in FATAL:
        return error_line(text)
    fail = FAIL_CODES.get(code)
    if fail is not None:
        return wire(IrcMessage("FAIL", (verb or "*", fail, text), SERVER))
    found = ERROR_NUMERICS.get(code)
    if found is None:
        return wire(IrcMessage("NOTICE", (reader, text), SERVER))
    number, param = found
    if param == "target":
        return numeric(number, reader, target or "*", text)
    if param == "verb":
        return numeric(number, reader, verb or "*", text)
    if param == "mode":
        return numeric(number, reader, mode or "*", text)
    return numeric(number, reader, text)


def error_line(reason: str) -> bytes:
    """The line before the server closes a connection."""
    return wire(IrcMessage("ERROR", (f"Closing link: {reason}",)))


def isupport(tokens: Sequence[str], reader: str) -> bytes:
    """``005``: at most 13 tokens a line."""
    out = []
    for start in range(0, len(tokens), 13):
        chunk = tokens[start : start + 13]
        out.append(numeric("005", reader, *chunk, "are supported by this server"))
    return b"".join(out)


def motd(reader: str, lines: Iterable[str]) -> bytes:
    out = [numeric("375", reader, f"- {SERVER} Message of the day -")]
    out.extend(numeric("372", reader, f"- {line}") for line in lines)
    out.append(numeric("376", reader, "End of /MOTD command."))
    return b"".join(out)


def listed(number: str, reader: str, *params: str, items: Sequence[str]) -> bytes:
    """A numeric whose last parameter lists ``items`` (319, 303): as many
    lines as they need, each within IRC's 512 bytes (one line when empty)."""
    head = len(wire(IrcMessage(number, (reader, *params, "x"), SERVER))) - 1
    out, line = [], ""
    for item in items:
        if line and head + len(line.encode()) + 1 + len(item.encode()) > MAX_LINE:
            out.append(numeric(number, reader, *params, line))
            line = ""
        line = f"{line} {item}" if line else item
    if line or not out:
        out.append(numeric(number, reader, *params, line))
    return b"".join(out)


def prefixed(nick: str, role: str) -> str:
    """A nickname with its role's prefix (``@bob``). A chatd member has one
    role, so ``multi-prefix`` shows the same one prefix."""
    return (Role.of(role) if role else Role.MEMBER).prefix + nick


def names(
    reader: str, room: str, nicks: Sequence[str], roles: Sequence[str], *, secret: bool
) -> bytes:
    """``353`` lines (as many as the names need) and ``366``."""
    chan = channel(room)
    entries = [prefixed(n, r) for n, r in zip(nicks, roles or [""] * len(nicks), strict=True)]
    symbol = "@" if secret else "="
    names = listed("353", reader, symbol, chan, items=entries) if entries else b""
    return names + numeric("366", reader, chan, "End of /NAMES list.")


def topic(reader: str, room: str, text: str) -> bytes:
    """``332``, or ``331`` when there is none. (chatd keeps who set a topic
    but not when, so there is no ``333``.)"""
    chan = channel(room)
    if not text:
        return numeric("331", reader, chan, "No topic is set")
    return numeric("332", reader, chan, fit(text, 390))
