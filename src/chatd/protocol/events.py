"""Events to bytes: what happened, named as facts; ``type`` is the JSON discriminator.

:func:`render` turns an :data:`Event` into bytes, in text or JSON. The room
manager renders a room event once per format and hands the same ``bytes``
object to every recipient, so :func:`render` and :func:`_message_json` are
on the hot path. :func:`event_from_json` is the inverse of
:func:`event_to_json`, for clients that receive JSON.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from chatd.errors import ChatError
from chatd.protocol.commands import COMMAND_HELP
from chatd.protocol.framing import Format
from chatd.protocol.record import record


@dataclasses.dataclass(frozen=True, slots=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    server: str
    version: str


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    type: ClassVar[str] = "registered"
    nick: str
    #: Logged in to a registered account, not a guest.
    account: bool = False


@record  # frozen to mypy; cheap to build: one per message (see protocol.record)
class Message:
    type: ClassVar[str] = "message"
    id: int
    ts: float
    room: str
    sender: str
    text: str
    action: bool = False
    #: Sent again from the store (on join or /history), not live.
    history: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Direct:
    type: ClassVar[str] = "dm"
    id: int
    ts: float
    sender: str
    to: str
    text: str
    history: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    type: ClassVar[str] = "join"
    room: str
    nick: str


@dataclasses.dataclass(frozen=True, slots=True)
class Left:
    type: ClassVar[str] = "leave"
    room: str
    nick: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Current:
    type: ClassVar[str] = "current"
    room: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class NickChanged:
    type: ClassVar[str] = "nick"
    old: str
    new: str


@dataclasses.dataclass(frozen=True, slots=True)
class TopicIs:
    type: ClassVar[str] = "topic"
    room: str
    topic: str
    by: str | None
    changed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RoomList:
    type: ClassVar[str] = "rooms"
    rooms: tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RoomChanged:
    """A room came into use (``created``) or went out of use (``removed``).

    Sent only to connections that asked with ``/rooms watch``, so a client
    can keep its room list current without polling ``/rooms``, and a server
    with thousands of connections pays a delivery only for those that care.
    """

    type: ClassVar[str] = "room"
    room: str
    #: ``created`` or ``removed``.
    event: str
    #: Members when it happened (1 for a room created by a join, 0 when removed).
    members: int


@dataclasses.dataclass(frozen=True, slots=True)
class WhoList:
    type: ClassVar[str] = "who"
    room: str
    nicks: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Pong:
    type: ClassVar[str] = "pong"
    token: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAliveIs:
    """The answer to ``/ping every``: the server pings after ``interval``
    seconds without input, and closes if the ping is not answered within
    ``interval`` seconds more. 0: no pings."""

    type: ClassVar[str] = "keepalive"
    interval: float


@dataclasses.dataclass(frozen=True, slots=True)
class ServerPing:
    """Sent after ``interval`` seconds of silence; answer ``/pong TOKEN``."""

    type: ClassVar[str] = "ping"
    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class FormatIs:
    type: ClassVar[str] = "format"
    format: Format


@dataclasses.dataclass(frozen=True, slots=True)
class HelpText:
    type: ClassVar[str] = "help"
    commands: tuple[tuple[str, str], ...] = COMMAND_HELP


@dataclasses.dataclass(frozen=True, slots=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    text: str

    @classmethod
    def of(cls, exc: ChatError) -> Error:
        return cls(exc.code, exc.text)


@dataclasses.dataclass(frozen=True, slots=True)
class Bye:
    type: ClassVar[str] = "bye"
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class History:
    """The end of a run of stored messages (each marked ``history``)."""

    type: ClassVar[str] = "history"
    #: The room, or None for a private conversation with ``peer``.
    room: str | None
    peer: str | None
    count: int
    #: Older messages exist; ask with ``before`` for the next page.
    more: bool
    before: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedOut:
    type: ClassVar[str] = "logout"
    nick: str


@dataclasses.dataclass(frozen=True, slots=True)
class PasswordChanged:
    type: ClassVar[str] = "passwd"
    nick: str


@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown:
    type: ClassVar[str] = "shutdown"
    reason: str = "server shutting down"


Event = (
    Welcome
    | Registered
    | Message
    | Direct
    | Joined
    | Left
    | Current
    | NickChanged
    | TopicIs
    | RoomList
    | RoomChanged
    | WhoList
    | Pong
    | KeepAliveIs
    | ServerPing
    | FormatIs
    | HelpText
    | Error
    | Bye
    | Shutdown
    | History
    | LoggedOut
    | PasswordChanged
)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """An event class's fields, computed once (dataclasses.fields() is slow)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON object of an event (the documented contract)."""
    match event:
        case Message(id, ts, room, sender, text, action, history):
            obj: dict[str, Any] = {
                "type": "message",
                "id": id,
                "ts": ts,
                "room": room,
                "from": sender,
                "text": text,
            }
            if action:
                obj["action"] = True
            if history:
                obj["history"] = True
            return obj
        case Direct(id, ts, sender, to, text, history):
            obj = {"type": "dm", "id": id, "ts": ts, "from": sender, "to": to, "text": text}
            if history:
                obj["history"] = True
            return obj
        case RoomList(rooms):
            return {"type": "rooms", "rooms": [{"name": n, "members": k} for n, k in rooms]}
        case WhoList(room, nicks):
            return {"type": "who", "room": room, "nicks": list(nicks)}
        case FormatIs(fmt):
            return {"type": "format", "format": fmt.name.lower()}
        case HelpText(commands):
            return {"type": "help", "commands": [{"usage": u, "help": h} for u, h in commands]}
        case _:
            obj = {"type": event.type}
            for name in _field_names(type(event)):
                obj[name] = getattr(event, name)
            return obj


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _objects(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise TypeError("expected a list of objects")
    return value


#: Events whose JSON fields are all strings, named as their dataclass fields.
_PLAIN_EVENTS: Final[dict[str, Any]] = {
    cls.type: cls
    for cls in (
        Welcome,
        Joined,
        Left,
        NickChanged,
        Pong,
        ServerPing,
        Error,
        Bye,
        Shutdown,
        LoggedOut,
        PasswordChanged,
    )
}


def event_from_json(obj: Mapping[str, Any]) -> Event:
    """Rebuild an event from its JSON object: the inverse of event_to_json.

    For clients, which receive JSON and may want the text rendering. Raises
    ValueError when ``obj`` is not a well-formed event.
    """
    kind = obj.get("type")
    try:
        match kind:
            case "message":
                return Message(
                    _int(obj["id"]),
                    _num(obj["ts"]),
                    _str(obj["room"]),
                    _str(obj["from"]),
                    _str(obj["text"]),
                    obj.get("action") is True,
                    obj.get("history") is True,
                )
            case "dm":
                return Direct(
                    _int(obj["id"]),
                    _num(obj["ts"]),
                    _str(obj["from"]),
                    _str(obj["to"]),
                    _str(obj["text"]),
                    obj.get("history") is True,
                )
            case "registered":
                return Registered(_str(obj["nick"]), obj.get("account") is True)
            case "history":
                before = obj.get("before")
                return History(
                    _opt_str(obj.get("room")),
                    _opt_str(obj.get("peer")),
                    _int(obj["count"]),
                    obj.get("more") is True,
                    None if before is None else _int(before),
                )
            case "current":
                return Current(_opt_str(obj["room"]))
            case "topic":
                return TopicIs(
                    _str(obj["room"]),
                    _str(obj["topic"]),
                    _opt_str(obj["by"]),
                    obj.get("changed") is True,
                )
            case "rooms":
                rooms = _objects(obj["rooms"])
                return RoomList(tuple((_str(r["name"]), _int(r["members"])) for r in rooms))
            case "room":
                return RoomChanged(_str(obj["room"]), _str(obj["event"]), _int(obj["members"]))
            case "who":
                nicks = obj["nicks"]
                if not isinstance(nicks, list):
                    raise TypeError("nicks must be a list")
                return WhoList(_str(obj["room"]), tuple(_str(n) for n in nicks))
            case "keepalive":
                return KeepAliveIs(_num(obj["interval"]))
            case "format":
                return FormatIs(Format[_str(obj["format"]).upper()])
            case "help":
                commands = _objects(obj["commands"])
                return HelpText(tuple((_str(c["usage"]), _str(c["help"])) for c in commands))
            case str() if kind in _PLAIN_EVENTS:
                cls = _PLAIN_EVENTS[kind]
                event: Event = cls(**{f.name: _str(obj[f.name]) for f in dataclasses.fields(cls)})
                return event
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {kind!r} event: {exc}") from None
    raise ValueError(f"unknown event type {kind!r}")


_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: The string encoder json uses with ensure_ascii=False (C-accelerated).
_json_str: Final = json.encoder.encode_basestring


def event_to_text(event: Event) -> str:
    """The human-readable form of an event; may span several lines (help)."""
    match event:
        case Message(history=True) | Direct(history=True):
            # A stored message: its time first, so it reads as the past.
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event.ts))
            return f"{when} " + event_to_text(dataclasses.replace(event, history=False))
        case Message(room=room, sender=sender, text=text, action=False):
            return f"[{room}] {sender}: {text}"
        case Message(room=room, sender=sender, text=text):
            return f"[{room}] * {sender} {text}"
        case Direct(sender=sender, to=to, text=text):
            return f"[{sender} -> {to}] {text}"
        case History(room, peer, count, more, before):
            where = f"#{room}" if room is not None else f"you and {peer}"
            line = f"* {count} earlier message{'s' * (count != 1)} of {where}"
            if more:
                target = f"#{room}" if room is not None else f"@{peer}"
                line += f"; more: /history {target} 20 before={before}"
            return line
        case LoggedOut(nick):
            return f"* logged out of {nick}; choose a nickname (/nick NAME or /login NICK PASSWORD)"
        case PasswordChanged(nick):
            return f"* password of {nick} changed"
        case Joined(room, nick):
            return f"* {nick} joined #{room}"
        case Left(room, nick, reason):
            return f"* {nick} left #{room}" + (f" ({reason})" if reason else "")
        case Current(None):
            return "* you are in no room; /join one"
        case Current(room):
            return f"* now talking in #{room}"
        case NickChanged(old, new):
            return f"* {old} is now known as {new}"
        case TopicIs(room, "", _, _):
            return f"* #{room} has no topic"
        case TopicIs(room, topic, by, True):
            return f"* {by} set the topic of #{room}: {topic}"
        case TopicIs(room, topic, by, False):
            return f"* topic of #{room}: {topic}" + (f" (set by {by})" if by else "")
        case RoomList(rooms):
            listing = ", ".join(f"#{name} ({count})" for name, count in rooms)
            return f"* rooms: {listing or 'none'}"
        case RoomChanged(room, "created", members):
            return f"* room #{room} created ({members} member{'s' * (members != 1)})"
        case RoomChanged(room, what, _):
            return f"* room #{room} {what}"
        case WhoList(room, nicks):
            return f"* in #{room}: {', '.join(nicks) or 'nobody'}"
        case Pong(token):
            return f"* pong {token}" if token else "* pong"
        case KeepAliveIs(0):
            return "* keepalive pings off"
        case KeepAliveIs(interval):
            return f"* you will be pinged after {interval:g} s of silence; answer /pong TOKEN"
        case ServerPing(token):
            return f"* ping {token}: answer /pong {token}"
        case FormatIs(fmt):
            return f"* format: {fmt.name.lower()}"
        case HelpText(commands):
            width = max(len(usage) for usage, _ in commands)
            rows = [f"  {usage:<{width}}  {text}" for usage, text in commands]
            return "\n".join(["* commands:", *rows, "* anything else is said in your room"])
        case Error(code, text):
            return f"! {code}: {text}"
        case Registered(nick, True):
            return f"* you are {nick} (logged in)"
        case Registered(nick):
            return f"* you are {nick}"
        case Welcome(server, version):
            return (
                f"* welcome to {server} {version}. Pick a nickname: type it, or /nick NAME."
                " /help lists the commands."
            )
        case Bye(reason):
            return "* bye" + (f" ({reason})" if reason else "")
        case Shutdown(reason):
            return f"! shutdown: {reason}"
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover


def _message_json(m: Message) -> bytes:
    """The JSON line of a room message, without building a dict.

    Room messages are most of the traffic; this is byte for byte what the
    generic encoder makes of event_to_json(m) (a test holds it to that).
    """
    action = ',"action":true' if m.action else ""
    if m.history:
        action += ',"history":true'
    return (
        f'{{"type":"message","id":{m.id},"ts":{m.ts!r},"room":{_json_str(m.room)},'
        f'"from":{_json_str(m.sender)},"text":{_json_str(m.text)}{action}}}\n'
    ).encode()


def render(event: Event, fmt: Format) -> bytes:
    """Render an event as LF-terminated bytes in the given format.

    In JSON mode this is always exactly one line; in text mode ``/help`` is
    the one event that spans several.
    """
    if fmt is Format.JSON:
        if type(event) is Message:
            return _message_json(event)
        return _json_encode(event_to_json(event)).encode() + b"\n"
    return event_to_text(event).encode() + b"\n"
