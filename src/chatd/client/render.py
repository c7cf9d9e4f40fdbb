"""Server events as the lines a person reads: pure functions, no I/O.

Everything the server sends is untrusted: every field is passed through
:func:`~chatd.protocol.clean_text` before it is printed, and malformed
events are shown as well as possible, never trusted to have the right types.

An event is one line, but for the lists (``bans``, ``klines``, ``modlog``,
``sessions``): a heading, then one indented line per entry, each cleaned on
its own, so no field can start a line of its own.

A room message that mentions the reader (``"mention": true``) is marked
with ``!`` before its ``[``, as in the server's text mode, and highlighted
in colour; a result of ``/search`` starts with ``found`` and its date.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any, Final

from chatd.client.commands import REFUSED_COMMANDS, command_name
from chatd.protocol import Role, clean_text, event_from_json, event_to_text, name_key

_RESET: Final = "\x1b[0m"
DIM: Final = "\x1b[2m"
RED: Final = "\x1b[31m"
#: A server operator's notice (``/wall``): not an error, not to be missed either.
BOLD: Final = "\x1b[1m"
#: A line that mentions the reader: its room in bold reverse video.
HIGHLIGHT: Final = "\x1b[1;7m"
#: The mark before the ``[`` of a room message that mentions the reader.
MENTION_MARK: Final = "!"
#: Nick colours: no red (errors) and no dim (system lines), so a nick never looks like either.
_NICK_COLOURS: Final = tuple(f"\x1b[{n}m" for n in (32, 33, 34, 35, 36, 92, 93, 94, 95, 96))


def nick_colour(nick: str) -> str:
    """The ANSI colour of a nick: a stable hash, the same in every client and run."""
    return _NICK_COLOURS[zlib.crc32(name_key(nick).encode()) % len(_NICK_COLOURS)]


def paint(text: str, code: str, colour: bool) -> str:
    """``text`` in the ANSI ``code`` when ``colour`` is on (an empty text stays empty)."""
    return f"{code}{text}{_RESET}" if colour and text else text


def field(event: Mapping[str, Any], key: str) -> str:
    """A field of an untrusted event as printable text ("" when missing)."""
    value = event.get(key)
    if value is None:
        return ""
    return clean_text(value if isinstance(value, str) else str(value))


def _entries(value: object) -> list[Mapping[str, Any]]:
    """The objects of a JSON array, skipping anything that is not an object."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _help_rows(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``help`` event's (usage, help) pairs, less the commands refused here.

    The server's list is the one description of the commands; each client
    shows the part of it that works in that client.
    """
    rows = [(field(c, "usage"), field(c, "help")) for c in _entries(event.get("commands"))]
    return [(usage, text) for usage, text in rows if command_name(usage) not in REFUSED_COMMANDS]


def _stamp(ts: object, tz: tzinfo | None, fmt: str = "%H:%M", blank: str = "--:--") -> str:
    """A message's time in ``fmt``; ``blank`` when the server sent no usable time."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return blank
    try:
        return datetime.fromtimestamp(ts, tz).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return blank


def _prefixed(nick: object, roles: Mapping[str, str]) -> str:
    """A member of a ``who`` list with the prefix of its role (``~`` ``@`` ``+``)."""
    name = clean_text(nick if isinstance(nick, str) else str(nick))
    try:
        prefix = Role.of(roles.get(name_key(name), "member")).prefix
    except ValueError:  # a role this client does not know: shown bare
        prefix = ""
    return prefix + name


def _who_text(event: Mapping[str, Any]) -> str | None:
    """``* in #room: ~ann, @bob, +cat, dan``; None when the list is unusable.

    The roles come from ``members`` by nickname, so a server that sends none
    (or a malformed one) still gets its nicknames shown, bare.
    """
    nicks = event.get("nicks")
    if not isinstance(nicks, list) or not isinstance(event.get("room"), str):
        return None
    roles = {
        name_key(nick): role
        for member in _entries(event.get("members"))
        if isinstance(nick := member.get("nick"), str)
        and isinstance(role := member.get("role"), str)
    }
    shown = ", ".join(_prefixed(nick, roles) for nick in nicks)
    return f"* in #{field(event, 'room')}: {shown or 'nobody'}"


def _mask(entry: Mapping[str, Any]) -> str:
    """A ban mask as the server's text names it: bare for a nick or an account."""
    mask = field(entry, "mask") or "?"
    kind, sep, value = mask.partition(":")
    return value if sep and kind in ("nick", "account") else mask


_LIST_TITLES: Final = {"bans": "bans of #{room}", "klines": "server bans (klines)"}
_LIST_KEYS: Final = {
    "bans": "bans",
    "klines": "klines",
    "modlog": "entries",
    "sessions": "sessions",
}


def _sessions_lines(entries: list[Mapping[str, Any]], tz: tzinfo | None) -> list[str]:
    """``* sessions of your account: 2``, then one line per connection, in columns."""
    cells = [(field(e, "id") or "?", field(e, "transport"), field(e, "address")) for e in entries]
    widths = [max((len(row[i]) for row in cells), default=0) for i in range(3)]
    rows = [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        + f"  since {_stamp(e.get('since'), tz, '%Y-%m-%d %H:%M:%S', '?')}"
        + (" (this one)" if e.get("current") is True else "")
        for row, e in zip(cells, entries, strict=True)
    ]
    return [f"* sessions of your account: {len(entries) or 'none'}", *rows]


def list_lines(event: Mapping[str, Any], tz: tzinfo | None = None) -> list[str] | None:
    """The lines of a ``bans``, ``klines``, ``modlog`` or ``sessions`` event;
    None if it is not one.

    The server's wording, with times in ``tz`` (None: local time) like the
    stamps of messages. Entries that are not objects are skipped; missing or
    odd fields show as blanks (or ``?``), never as an exception.
    """
    kind = event.get("type")
    key = _LIST_KEYS.get(str(kind))
    if key is None or not isinstance(event.get(key), list):
        return None
    entries = _entries(event.get(key))
    if kind == "sessions":
        return _sessions_lines(entries, tz)
    room = field(event, "room")
    if kind == "modlog":
        rows = [
            " ".join(
                part
                for part in (
                    _stamp(e.get("ts"), tz, "%Y-%m-%d %H:%M", "----------"),
                    field(e, "by") or "server",
                    field(e, "action") or "?",
                    field(e, "target"),
                    field(e, "detail"),
                )
                if part
            )
            for e in entries
        ]
        return [f"* moderation log of #{room}: {len(entries)}", *(f"  {row}" for row in rows)]
    rows = []
    for entry in entries:
        row = f"{_mask(entry)} by {field(entry, 'by') or 'server'}"
        if entry.get("until") is not None:
            row += f" until {_stamp(entry.get('until'), tz, '%Y-%m-%d %H:%M', '?')}"
        if reason := field(entry, "reason"):
            row += f" ({reason})"
        rows.append(f"  {row}")
    title = _LIST_TITLES[str(kind)].format(room=room)
    return [f"* {title}: {len(entries) or 'none'}", *rows]


def _system_text(event: Mapping[str, Any]) -> str:
    """The wording of every event that is not a message, a DM or an error.

    The server's own text rendering, so both speak alike; the welcome (with
    the client's own hint beside it) and the help (one line, for pipes) are
    worded here. Anything malformed is shown as it came, cleaned.
    """
    kind = field(event, "type")
    match kind:
        case "welcome":
            name = " ".join(p for p in (field(event, "server"), field(event, "version")) if p)
            return f"* welcome to {name or 'the server'}; /help lists the commands"
        case "help":
            rows = [f"{usage} - {text}" for usage, text in _help_rows(event)]
            return "* commands: " + "; ".join(rows)
        case "text":
            return field(event, "text")
        case "who":
            if (who := _who_text(event)) is not None:
                return who
    try:
        return clean_text(event_to_text(event_from_json(event)))
    except (ValueError, ArithmeticError, OSError):  # malformed; or a time out of range
        rest = {k: v for k, v in event.items() if k != "type"}
        return clean_text(
            f"* {kind or 'event'}: {json.dumps(rest, ensure_ascii=False, default=str)}"
        )


def render_event(
    event: Mapping[str, Any], *, colour: bool = False, tz: tzinfo | None = None
) -> str:
    """Render one server event (a decoded JSON object) as one display line.

    The lists (``bans``, ``klines``, ``modlog``, ``sessions``) are several
    lines, joined by ``\n``: see :func:`list_lines`. ``colour`` adds ANSI
    colours; ``tz`` is the zone of the HH:MM stamps of messages and DMs, and
    of the times in those lists (None: local time). Every field is cleaned of
    control characters, and a malformed event still renders: the server is
    untrusted.
    """
    kind = event.get("type")
    if kind in ("message", "dm") and (event.get("history") is True or event.get("search") is True):
        # The past: its date too, and the whole line dim, so it reads apart;
        # a search result says so first.
        line = render_event({**event, "history": False, "search": False}, colour=False, tz=tz)
        line = f"{_stamp(event.get('ts'), tz, '%Y-%m-%d', '----------')} {line}"
        return paint(f"found {line}" if event.get("search") is True else line, DIM, colour)
    if kind in ("message", "dm"):
        when = paint(_stamp(event.get("ts"), tz), DIM, colour)
        sender = field(event, "from")
        who = paint(sender, nick_colour(sender), colour)
        text = field(event, "text")
        if kind == "dm":
            to = field(event, "to")
            return f"{when} [{who} -> {paint(to, nick_colour(to), colour)}] {text}"
        where = f"[{field(event, 'room')}]"
        if event.get("mention") is True:
            where = paint(MENTION_MARK + where, HIGHLIGHT, colour)
            text = paint(text, BOLD, colour)
        if event.get("action") is True:
            return f"{when} {where} * {who} {text}"
        return f"{when} {where} {who}: {text}"
    if kind == "history":
        return paint(f"-- {_system_text(event)[2:]} --", DIM, colour)
    if kind == "error":
        return paint(f"! {field(event, 'code')}: {field(event, 'text')}", RED, colour)
    if kind == "shutdown":
        return paint(f"! shutdown: {field(event, 'reason')}", RED, colour)
    if kind == "wall":
        return paint(_system_text(event), BOLD, colour)
    if (lines := list_lines(event, tz)) is not None:
        return "\n".join(paint(line, DIM, colour) for line in lines)
    return paint(_system_text(event), DIM, colour)


def help_lines(event: Mapping[str, Any], *, colour: bool = False) -> list[str]:
    """The ``help`` event as an aligned table, for the interactive mode."""
    rows = _help_rows(event)
    width = max((len(usage) for usage, _ in rows), default=0)
    lines = [
        "* commands:",
        *(f"  {usage:<{width}}  {text}" for usage, text in rows),
        "* anything else is said in your current room",
    ]
    return [paint(line, DIM, colour) for line in lines]


def json_line(event: Mapping[str, Any], raw: str | None = None) -> str:
    """The ``--json`` output line: the server's own text when it sent JSON.

    Control characters are removed: JSON never has raw C0 characters in
    strings, but may carry DEL and C1 characters, which terminals obey.
    """
    if raw is None:
        raw = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    return clean_text(raw)


_TEXT_ERROR_RE: Final = re.compile(r"! ([a-z_]+): (.*)\Z", re.DOTALL)
_TEXT_WELCOME_RE: Final = re.compile(r"\* welcome to (\S+) (\S+)")


def parse_server_line(text: str) -> tuple[dict[str, Any], bool]:
    """Turn one line from the server into an event dict.

    Returns ``(event, True)`` for a JSON object with a string ``type``.
    Lines that are not JSON come before the server switched to JSON (the
    welcome, and a refusal such as ``server_full``, which is written in text
    and followed by the close): they are turned into the matching event, or
    into a ``{"type": "text"}`` event, and returned with False.
    """
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            return obj, True
    if m := _TEXT_ERROR_RE.match(text):
        return {"type": "error", "code": m.group(1), "text": m.group(2)}, False
    if m := _TEXT_WELCOME_RE.match(text):
        return {"type": "welcome", "server": m.group(1), "version": m.group(2).rstrip(".")}, False
    return {"type": "text", "text": text}, False
