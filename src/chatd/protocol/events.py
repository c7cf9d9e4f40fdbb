"""Events to bytes: what happened, named as facts; ``type`` is the JSON discriminator.

:func:`render` turns an :data:`Event` into bytes, in text or JSON. The room
manager renders a room event once per format and hands the same ``bytes``
object to every recipient, so :func:`render`, :func:`_message_json` and
:func:`_message_text` are on the hot path. :func:`event_from_json` is the inverse of
:func:`event_to_json`, for clients that receive JSON.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
import time
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from chatd.errors import ChatError
from chatd.protocol.commands import COMMAND_HELP, name_key
from chatd.protocol.framing import Format
from chatd.protocol.moderation import Modes, format_duration
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
    #: A notice (IRC's NOTICE): a line no program should answer.
    notice: bool = False
    #: It mentions its reader (set for that reader alone).
    mention: bool = False
    #: A result of /search, not live.
    search: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Direct:
    type: ClassVar[str] = "dm"
    id: int
    ts: float
    sender: str
    to: str
    text: str
    history: bool = False
    notice: bool = False
    #: A result of /search, not live.
    search: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    type: ClassVar[str] = "join"
    room: str
    nick: str


#: How the reason of a :class:`Left` that a kick or a ban caused starts
#: (``kicked by NICK[: reason]``, ``banned by NICK``): front-ends that show
#: kicks and bans as such (IRC's KICK) tell them from a leave by it.
KICKED_BY = "kicked by "
BANNED_BY = "banned by "


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
    #: For a logged-in reader, the rooms it is in: (room key, unread,
    #: mentions), as /unread counts them.
    unread: tuple[tuple[str, int, int], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Read:
    """An account read a conversation up to ``id``: to every connection of
    the account, so that the others clear their badges."""

    type: ClassVar[str] = "read"
    #: The room, or None for the private conversation with ``peer``.
    room: str | None
    peer: str | None
    id: int


@dataclasses.dataclass(frozen=True, slots=True)
class UnreadEntry:
    """One conversation of ``/unread``: a room, or a private one with ``peer``."""

    room: str | None
    peer: str | None
    unread: int
    mentions: int
    last_read: int


@dataclasses.dataclass(frozen=True, slots=True)
class UnreadList:
    type: ClassVar[str] = "unread"
    conversations: tuple[UnreadEntry, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEntry:
    """One connection of an account (``/sessions``)."""

    id: str
    transport: str
    address: str
    #: When it logged in (seconds since the epoch).
    since: float
    #: The connection that asked.
    current: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SessionList:
    type: ClassVar[str] = "sessions"
    sessions: tuple[SessionEntry, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SearchDone:
    """The end of the results of a ``/search`` (each marked ``search``)."""

    type: ClassVar[str] = "search"
    query: str
    count: int
    #: More matches exist: ask again with ``before``.
    more: bool
    before: int | None
    #: The search ran out of time before it looked at everything.
    cut: bool = False


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
    #: Each nick's role in the room (``owner``, ``op``, ``voice``, ``member``).
    roles: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Kicked:
    """``nick`` was removed from ``room`` by ``by``; to the room, the kicked included."""

    type: ClassVar[str] = "kick"
    room: str
    nick: str
    by: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ModeIs:
    """A room's modes: changed by ``by`` (``change`` says how), or shown (``by`` None)."""

    type: ClassVar[str] = "mode"
    room: str
    by: str | None
    change: str
    modes: Modes
    #: The account that owns the room (None: a guest's room, or general).
    owner: str | None = None
    registered: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RoleIs:
    """``nick``'s role in ``room`` is now ``role`` (given or taken by ``by``)."""

    type: ClassVar[str] = "role"
    room: str
    nick: str
    role: str
    by: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class BanSet:
    """A ban, to the room's ops and its author."""

    type: ClassVar[str] = "ban"
    room: str
    mask: str
    by: str
    reason: str = ""
    #: When it ends (seconds since the epoch), None: until lifted.
    until: float | None = None
    #: Its length in seconds, as given (None: until lifted).
    duration: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BanLifted:
    """A ban was lifted (``by`` None: it expired), to the room's ops and its author."""

    type: ClassVar[str] = "unban"
    room: str
    mask: str
    by: str | None
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class BanEntry:
    """One ban of a room, or one kline (``/bans``, ``/klines``)."""

    mask: str
    by: str | None
    reason: str
    until: float | None
    since: float


@dataclasses.dataclass(frozen=True, slots=True)
class BanList:
    type: ClassVar[str] = "bans"
    room: str
    bans: tuple[BanEntry, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class MuteSet:
    """``nick`` may not speak in ``room`` (until ``until``); to the room."""

    type: ClassVar[str] = "mute"
    room: str
    nick: str
    by: str
    until: float | None = None
    duration: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class MuteLifted:
    type: ClassVar[str] = "unmute"
    room: str
    nick: str
    by: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Invited:
    """An invitation to ``room`` from ``sender`` (JSON ``from``), to the invitee."""

    type: ClassVar[str] = "invite"
    room: str
    sender: str


@dataclasses.dataclass(frozen=True, slots=True)
class InviteSent:
    """The answer to ``/invite``: ``nick`` may now join ``room`` once."""

    type: ClassVar[str] = "invited"
    room: str
    nick: str


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """``/wall``: a server operator's notice to every connection (JSON ``from``)."""

    type: ClassVar[str] = "wall"
    sender: str
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One moderation action: when, who, what (``kick``, ``ban``, ``mode`` ...),
    on whom, and its details."""

    ts: float
    by: str | None
    action: str
    target: str
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ModLog:
    """The answer to ``/modlog``: a room's last actions, oldest first."""

    type: ClassVar[str] = "modlog"
    room: str
    entries: tuple[LogEntry, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class KlineSet:
    """A server ban (``/kline``), to the operator who set it."""

    type: ClassVar[str] = "kline"
    mask: str
    by: str
    reason: str = ""
    until: float | None = None
    duration: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class KlineLifted:
    type: ClassVar[str] = "unkline"
    mask: str
    by: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class KlineList:
    type: ClassVar[str] = "klines"
    klines: tuple[BanEntry, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class KillDone:
    """The answer to ``/kill``: ``nick`` was disconnected."""

    type: ClassVar[str] = "kill"
    nick: str
    by: str
    reason: str = ""


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


#: The events of room moderation and of server operators.
ModerationEvent = (
    Kicked
    | ModeIs
    | RoleIs
    | BanSet
    | BanLifted
    | BanList
    | MuteSet
    | MuteLifted
    | Invited
    | InviteSent
    | Notice
    | ModLog
    | KlineSet
    | KlineLifted
    | KlineList
    | KillDone
)

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
    | Read
    | UnreadList
    | SessionList
    | SearchDone
    | ModerationEvent
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
        case Message(id, ts, room, sender, text, action, history, notice, mention, search):
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
            if notice:
                obj["notice"] = True
            if mention:
                obj["mention"] = True
            if search:
                obj["search"] = True
            return obj
        case Direct(id, ts, sender, to, text, history, notice, search):
            obj = {"type": "dm", "id": id, "ts": ts, "from": sender, "to": to, "text": text}
            if history:
                obj["history"] = True
            if notice:
                obj["notice"] = True
            if search:
                obj["search"] = True
            return obj
        case RoomList(rooms, ()):
            return {"type": "rooms", "rooms": [{"name": n, "members": k} for n, k in rooms]}
        case RoomList(rooms, unread):
            return {"type": "rooms", "rooms": _rooms_json(rooms, unread)}
        case UnreadList(conversations):
            return {"type": "unread", "conversations": [_unread_json(c) for c in conversations]}
        case SessionList(sessions):
            return {"type": "sessions", "sessions": [_session_json(e) for e in sessions]}
        case WhoList(room, nicks, roles):
            members = [{"nick": n, "role": r} for n, r in zip(nicks, roles, strict=False)]
            return {"type": "who", "room": room, "nicks": list(nicks), "members": members}
        case ModeIs(room, by, change, modes, owner, registered):
            return {
                "type": "mode",
                "room": room,
                "by": by,
                "change": change,
                "modes": modes.to_json(),
                "owner": owner,
                "registered": registered,
            }
        case Invited(room, sender):
            return {"type": "invite", "room": room, "from": sender}
        case Notice(sender, text):
            return {"type": "wall", "from": sender, "text": text}
        case BanList(room, bans):
            return {"type": "bans", "room": room, "bans": [_entry_json(b) for b in bans]}
        case KlineList(klines):
            return {"type": "klines", "klines": [_entry_json(b) for b in klines]}
        case ModLog(room, entries):
            return {
                "type": "modlog",
                "room": room,
                "entries": [dataclasses.asdict(e) for e in entries],
            }
        case FormatIs(fmt):
            return {"type": "format", "format": fmt.name.lower()}
        case HelpText(commands):
            return {"type": "help", "commands": [{"usage": u, "help": h} for u, h in commands]}
        case _:
            obj = {"type": event.type}
            for name in _field_names(type(event)):
                obj[name] = getattr(event, name)
            return obj


def _entry_json(entry: BanEntry) -> dict[str, Any]:
    return dataclasses.asdict(entry)


def _rooms_json(
    rooms: tuple[tuple[str, int], ...], unread: tuple[tuple[str, int, int], ...]
) -> list[dict[str, Any]]:
    """The ``rooms`` of a ``rooms`` event, with ``unread`` and ``mentions``
    for the rooms the reader is in (matched by name key)."""
    counts = {key: (n, m) for key, n, m in unread}
    out: list[dict[str, Any]] = []
    for name, members in rooms:
        room: dict[str, Any] = {"name": name, "members": members}
        found = counts.get(name_key(name))
        if found is not None:
            room["unread"], room["mentions"] = found
        out.append(room)
    return out


def _unread_json(entry: UnreadEntry) -> dict[str, Any]:
    return {
        "room": entry.room,
        "peer": entry.peer,
        "unread": entry.unread,
        "mentions": entry.mentions,
        "last_read": entry.last_read,
    }


def _session_json(entry: SessionEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "transport": entry.transport,
        "address": entry.address,
        "since": entry.since,
        "current": entry.current,
    }


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


def _opt_num(value: object) -> float | None:
    return None if value is None else _num(value)


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _entry(obj: Mapping[str, Any]) -> BanEntry:
    return BanEntry(
        _str(obj["mask"]),
        _opt_str(obj.get("by")),
        _str(obj.get("reason", "")),
        _opt_num(obj.get("until")),
        _num(obj.get("since", 0)),
    )


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
        Kicked,
        InviteSent,
        KillDone,
    )
}


#: The JSON types of the moderation events read by _moderation_from_json.
_MODERATION_TYPES: Final = frozenset(
    [
        "mode",
        "role",
        "ban",
        "unban",
        "bans",
        "klines",
        "mute",
        "unmute",
        "invite",
        "wall",
        "modlog",
        "kline",
        "unkline",
    ]
)


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
                    obj.get("notice") is True,
                    obj.get("mention") is True,
                    obj.get("search") is True,
                )
            case "dm":
                return Direct(
                    _int(obj["id"]),
                    _num(obj["ts"]),
                    _str(obj["from"]),
                    _str(obj["to"]),
                    _str(obj["text"]),
                    obj.get("history") is True,
                    obj.get("notice") is True,
                    obj.get("search") is True,
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
                return RoomList(
                    tuple((_str(r["name"]), _int(r["members"])) for r in rooms),
                    tuple(
                        (name_key(_str(r["name"])), _int(r["unread"]), _int(r.get("mentions", 0)))
                        for r in rooms
                        if "unread" in r
                    ),
                )
            case "read":
                return Read(_opt_str(obj.get("room")), _opt_str(obj.get("peer")), _int(obj["id"]))
            case "unread":
                return UnreadList(
                    tuple(
                        UnreadEntry(
                            _opt_str(c.get("room")),
                            _opt_str(c.get("peer")),
                            _int(c["unread"]),
                            _int(c.get("mentions", 0)),
                            _int(c.get("last_read", 0)),
                        )
                        for c in _objects(obj["conversations"])
                    )
                )
            case "sessions":
                return SessionList(
                    tuple(
                        SessionEntry(
                            _str(e["id"]),
                            _str(e["transport"]),
                            _str(e["address"]),
                            _num(e["since"]),
                            e.get("current") is True,
                        )
                        for e in _objects(obj["sessions"])
                    )
                )
            case "search":
                return SearchDone(
                    _str(obj["query"]),
                    _int(obj["count"]),
                    obj.get("more") is True,
                    _opt_int(obj.get("before")),
                    obj.get("cut") is True,
                )
            case "room":
                return RoomChanged(_str(obj["room"]), _str(obj["event"]), _int(obj["members"]))
            case "who":
                nicks = obj["nicks"]
                if not isinstance(nicks, list):
                    raise TypeError("nicks must be a list")
                roles = tuple(_str(m["role"]) for m in _objects(obj.get("members", [])))
                return WhoList(_str(obj["room"]), tuple(_str(n) for n in nicks), roles)
            case "keepalive":
                return KeepAliveIs(_num(obj["interval"]))
            case "format":
                return FormatIs(Format[_str(obj["format"]).upper()])
            case "help":
                commands = _objects(obj["commands"])
                return HelpText(tuple((_str(c["usage"]), _str(c["help"])) for c in commands))
            case str() if kind in _MODERATION_TYPES:
                return _moderation_from_json(kind, obj)
            case str() if kind in _PLAIN_EVENTS:
                cls = _PLAIN_EVENTS[kind]
                event: Event = cls(**{f.name: _str(obj[f.name]) for f in dataclasses.fields(cls)})
                return event
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {kind!r} event: {exc}") from None
    raise ValueError(f"unknown event type {kind!r}")


def _moderation_from_json(kind: str, obj: Mapping[str, Any]) -> Event:
    """A moderation event from its JSON object (see event_from_json)."""
    match kind:
        case "mode":
            modes = obj["modes"]
            if not isinstance(modes, dict):
                raise TypeError("modes must be an object")
            return ModeIs(
                _str(obj["room"]),
                _opt_str(obj.get("by")),
                _str(obj.get("change", "")),
                Modes.from_json(modes),
                _opt_str(obj.get("owner")),
                obj.get("registered") is True,
            )
        case "role":
            return RoleIs(
                _str(obj["room"]), _str(obj["nick"]), _str(obj["role"]), _opt_str(obj["by"])
            )
        case "ban":
            return BanSet(
                _str(obj["room"]),
                _str(obj["mask"]),
                _str(obj["by"]),
                _str(obj.get("reason", "")),
                _opt_num(obj.get("until")),
                _opt_int(obj.get("duration")),
            )
        case "unban":
            return BanLifted(
                _str(obj["room"]),
                _str(obj["mask"]),
                _opt_str(obj.get("by")),
                _str(obj.get("reason", "")),
            )
        case "bans":
            bans = tuple(_entry(b) for b in _objects(obj["bans"]))
            return BanList(_str(obj["room"]), bans)
        case "klines":
            return KlineList(tuple(_entry(b) for b in _objects(obj["klines"])))
        case "mute":
            return MuteSet(
                _str(obj["room"]),
                _str(obj["nick"]),
                _str(obj["by"]),
                _opt_num(obj.get("until")),
                _opt_int(obj.get("duration")),
            )
        case "unmute":
            return MuteLifted(_str(obj["room"]), _str(obj["nick"]), _opt_str(obj.get("by")))
        case "invite":
            return Invited(_str(obj["room"]), _str(obj["from"]))
        case "wall":
            return Notice(_str(obj["from"]), _str(obj["text"]))
        case "modlog":
            entries = tuple(
                LogEntry(
                    _num(e["ts"]),
                    _opt_str(e.get("by")),
                    _str(e["action"]),
                    _str(e["target"]),
                    _str(e.get("detail", "")),
                )
                for e in _objects(obj["entries"])
            )
            return ModLog(_str(obj["room"]), entries)
        case "kline":
            return KlineSet(
                _str(obj["mask"]),
                _str(obj["by"]),
                _str(obj.get("reason", "")),
                _opt_num(obj.get("until")),
                _opt_int(obj.get("duration")),
            )
        case "unkline":
            return KlineLifted(_str(obj["mask"]), _opt_str(obj.get("by")))
    raise ValueError(f"unknown event type {kind!r}")


_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: The string encoder json uses with ensure_ascii=False (C-accelerated).
_json_str: Final = json.encoder.encode_basestring


def event_to_text(event: Event) -> str:
    """The human-readable form of an event; may span several lines (help)."""
    match event:
        case Message():
            return _message_text(event)
        case Direct():
            return _direct_text(event)
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
        case RoomList(rooms, ()):
            listing = ", ".join(f"#{name} ({count})" for name, count in rooms)
            return f"* rooms: {listing or 'none'}"
        case RoomList(rooms, unread):
            return _rooms_text(rooms, unread)
        case Read(room, peer, message_id):
            return f"* read {_conversation(room, peer)} up to {message_id}"
        case UnreadList(conversations):
            return _unread_text(conversations)
        case SessionList(sessions):
            return _sessions_text(sessions)
        case SearchDone(query, count, more, before, cut):
            line = f'* search "{query}": {count or "nothing"} found'
            line += " (cut short: the search took too long)" if cut else ""
            return line + (f"; more: repeat it with before={before}" if more else "")
        case RoomChanged(room, "created", members):
            return f"* room #{room} created ({members} member{'s' * (members != 1)})"
        case RoomChanged(room, what, _):
            return f"* room #{room} {what}"
        case WhoList(room, nicks, roles):
            shown = [_prefix(roles[i] if i < len(roles) else "") + n for i, n in enumerate(nicks)]
            return f"* in #{room}: {', '.join(shown) or 'nobody'}"
        case _ if isinstance(event, _MODERATION_CLASSES):
            return _moderation_text(event)
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


#: The mark before the ``[`` of a chat line that mentions its reader: no
#: sender can put it there (names hold no ``!``), and no other line starts
#: with it (errors start with ``! ``, with a space).
MENTION_MARK: Final = "!"
#: What starts a result of /search in text, before its time.
FOUND_MARK: Final = "found "


def _message_text(m: Message) -> str:
    """The text line of a room message.

    On the hot path (see :func:`render`), without a ``match``: a live
    message costs its line and a test of each flag; the marks (history,
    search, mention) cost more only when set.
    """
    if m.action:
        line = f"[{m.room}] * {m.sender} {m.text}"
    elif m.notice:
        line = f"[{m.room}] -{m.sender}- {m.text}"
    else:
        line = f"[{m.room}] {m.sender}: {m.text}"
    if m.history or m.search or m.mention:
        return _marked(line, m.ts, m.history, m.search, m.mention)
    return line


def _direct_text(d: Direct) -> str:
    line = f"[{d.sender} -> {d.to}] {d.text}"
    if d.history or d.search:
        return _marked(line, d.ts, d.history, d.search, False)
    return line


def _marked(line: str, ts: float, history: bool, search: bool, mention: bool) -> str:
    """A chat line with its marks: a mention's ``!`` before its ``[``; a
    stored message's UTC time first, so it reads as the past; a search
    result's ``found`` before that."""
    if mention:
        line = MENTION_MARK + line
    if history or search:
        line = f"{_when(ts)} {line}"
    if search:
        line = FOUND_MARK + line
    return line


def _conversation(room: str | None, peer: str | None) -> str:
    """``#room`` or ``@peer``, as /history, /read and /search name them."""
    return f"#{room}" if room is not None else f"@{peer}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def _rooms_text(
    rooms: tuple[tuple[str, int], ...], unread: tuple[tuple[str, int, int], ...]
) -> str:
    """``* rooms: #dev (1), #general (4, 3 unread, 1 mention)``."""
    counts = {key: (n, m) for key, n, m in unread}
    shown = []
    for name, members in rooms:
        unread_count, mentions = counts.get(name_key(name), (0, 0))
        extra = f", {unread_count} unread" if unread_count else ""
        extra += f", {_plural(mentions, 'mention')}" if mentions else ""
        shown.append(f"#{name} ({members}{extra})")
    return f"* rooms: {', '.join(shown) or 'none'}"


def _unread_text(conversations: tuple[UnreadEntry, ...]) -> str:
    """``* unread: #general 3 (1 mention), @bob 2``: the conversations with
    something unread."""
    shown = [
        f"{_conversation(c.room, c.peer)} {c.unread}"
        + (f" ({_plural(c.mentions, 'mention')})" if c.mentions else "")
        for c in conversations
        if c.unread
    ]
    return f"* unread: {', '.join(shown) or 'nothing'}"


def _sessions_text(sessions: tuple[SessionEntry, ...]) -> str:
    """A heading, then a line per connection, in columns."""
    cells = [(e.id, e.transport, e.address) for e in sessions]
    widths = [max((len(row[i]) for row in cells), default=0) for i in range(3)]
    rows = [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        + f"  since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.since))} UTC"
        + (" (this one)" if e.current else "")
        for row, e in zip(cells, sessions, strict=True)
    ]
    return "\n".join([f"* sessions of your account: {len(sessions) or 'none'}", *rows])


#: The classes of ModerationEvent, for isinstance.
_MODERATION_CLASSES: Final = typing.get_args(ModerationEvent)


def _moderation_text(event: Event) -> str:
    """The text of a moderation event (see event_to_text)."""
    match event:
        case Kicked(room, nick, by, reason):
            return f"* {by} kicked {nick} from #{room}" + (f" ({reason})" if reason else "")
        case ModeIs(room, None, _, modes, owner, _):
            line = f"* modes of #{room}: {_modes_text(modes) or 'none'}"
            return line + (f"; owner {owner}" if owner else "")
        case ModeIs(room, by, change, _, _, _):
            return f"* {by} set #{room} {change}"
        case RoleIs(room, nick, role, by):
            return f"* {nick} is now {role} in #{room}" + (f" (by {by})" if by else "")
        case BanSet(room, mask, by, reason, _, duration):
            line = f"* {by} banned {_mask_text(mask)} from #{room}"
            line += f" for {format_duration(duration)}" if duration else ""
            return line + (f" ({reason})" if reason else "")
        case BanLifted(room, mask, None, _):
            return f"* the ban on {_mask_text(mask)} in #{room} expired"
        case BanLifted(room, mask, by, _):
            return f"* {by} unbanned {_mask_text(mask)} from #{room}"
        case BanList(room, bans):
            return _entries_text(f"bans of #{room}", bans)
        case KlineList(klines):
            return _entries_text("server bans (klines)", klines)
        case MuteSet(room, nick, by, _, duration):
            line = f"* {by} muted {nick} in #{room}"
            return line + (f" for {format_duration(duration)}" if duration else "")
        case MuteLifted(room, nick, None):
            return f"* {nick} may speak in #{room} again"
        case MuteLifted(room, nick, by):
            return f"* {by} unmuted {nick} in #{room}"
        case Invited(room, sender):
            return f"* {sender} invites you to #{room}: /join {room}"
        case InviteSent(room, nick):
            return f"* invited {nick} to #{room}"
        case Notice(sender, text):
            return f"! notice from {sender}: {text}"
        case ModLog(room, entries):
            rows = [
                f"  {_when(e.ts)} {e.by or 'server'} {e.action} {e.target}"
                + (f" {e.detail}" if e.detail else "")
                for e in entries
            ]
            return "\n".join([f"* moderation log of #{room}: {len(entries)}", *rows])
        case KlineSet(mask, by, reason, _, duration):
            line = f"* {by} banned {_mask_text(mask)} from the server"
            line += f" for {format_duration(duration)}" if duration else ""
            return line + (f" ({reason})" if reason else "")
        case KlineLifted(mask, None):
            return f"* the server ban on {_mask_text(mask)} expired"
        case KlineLifted(mask, by):
            return f"* {by} lifted the server ban on {_mask_text(mask)}"
        case KillDone(nick, by, reason):
            return f"* {by} disconnected {nick}" + (f" ({reason})" if reason else "")
    raise TypeError(f"not a moderation event: {event!r}")  # pragma: no cover


def _prefix(role: str) -> str:
    return {"owner": "~", "op": "@", "voice": "+"}.get(role, "")


def _mask_text(mask: str) -> str:
    """A mask as text mode shows it: bare names, ``ip:`` kept."""
    kind, _, value = mask.partition(":")
    return value if kind in ("nick", "account") else mask


def _modes_text(modes: Modes) -> str:
    args = [a for a in (modes.key, None if modes.limit is None else str(modes.limit)) if a]
    return " ".join([modes.flags(), *args]).strip()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _entries_text(title: str, entries: tuple[BanEntry, ...]) -> str:
    rows = [
        f"  {_mask_text(b.mask)} by {b.by or 'server'}"
        + (f" until {_when(b.until)} UTC" if b.until is not None else "")
        + (f" ({b.reason})" if b.reason else "")
        for b in entries
    ]
    return "\n".join([f"* {title}: {len(entries) or 'none'}", *rows])


def _message_json(m: Message) -> bytes:
    """The JSON line of a room message, without building a dict.

    Room messages are most of the traffic; this is byte for byte what the
    generic encoder makes of event_to_json(m) (a test holds it to that).
    """
    action = ',"action":true' if m.action else ""
    if m.history:
        action += ',"history":true'
    if m.notice:
        action += ',"notice":true'
    if m.mention:
        action += ',"mention":true'
    if m.search:
        action += ',"search":true'
    return (
        f'{{"type":"message","id":{m.id},"ts":{m.ts!r},"room":{_json_str(m.room)},'
        f'"from":{_json_str(m.sender)},"text":{_json_str(m.text)}{action}}}\n'
    ).encode()


def render(event: Event, fmt: Format) -> bytes:
    """Render an event as LF-terminated bytes in the given format.

    In JSON mode this is always exactly one line; in text mode ``/help``,
    ``/sessions`` and the lists of moderation (``/bans``, ``/klines``,
    ``/modlog``) span several.
    """
    if type(event) is Message:
        if fmt is Format.JSON:
            return _message_json(event)
        return (_message_text(event) + "\n").encode()
    if fmt is Format.JSON:
        return _json_encode(event_to_json(event)).encode() + b"\n"
    return event_to_text(event).encode() + b"\n"
