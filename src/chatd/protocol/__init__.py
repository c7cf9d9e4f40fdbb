"""The chatd wire protocol, with no I/O at all.

Three pure pieces, each a plain function or object that tests call directly:

* :class:`LineFramer` turns a byte stream into lines. It strips telnet
  negotiation, accepts ``\\n`` and ``\\r\\n``, and never buffers more than
  ``max_line`` bytes: an over-long line is reported once, as soon as it goes
  over, and the rest of it is discarded up to the next newline, so its tail is
  never taken for a command. (``asyncio.StreamReader.readline`` does the
  opposite: over its limit it hands back the tail as a fresh line.)
* :func:`parse_line` turns one line into a :data:`Command` or raises a
  :class:`~chatd.errors.ProtocolError` carrying the wire code.
* :func:`render` turns an :data:`Event` into bytes, in text or JSON. The
  room manager renders a room event once per format and hands the same
  ``bytes`` object to every recipient.

Text a client sends to others is cleaned here once: control characters (C0,
DEL, C1, which includes ``\\r``, ``\\0`` and the ESC of terminal escapes) are
removed and tabs become spaces, so no relayed line can spoof another line or
drive someone's terminal.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import json.encoder
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from chatd.config import NAME_CEILING
from chatd.errors import (
    BadArgs,
    BadEncoding,
    BadNick,
    BadRoom,
    ChatError,
    LineTooLong,
    UnknownCommand,
    WrongProtocol,
)

DEFAULT_ROOM: Final = "general"
_NAME_RE: Final = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_CEILING}}}\Z")
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class Format(enum.IntEnum):
    """How a session wants its events: the value indexes per-format caches."""

    TEXT = 0
    JSON = 1


# ---------------------------------------------------------------------------
# Framing


_IAC: Final = 0xFF
_SB: Final = 250
_SE: Final = 240
_WILL_WONT_DO_DONT: Final = frozenset({251, 252, 253, 254})

# Telnet parser states.
_T_DATA, _T_IAC, _T_OPTION, _T_SUB, _T_SUB_IAC = range(5)


class LineFramer:
    """Split a byte stream into lines of at most ``max_line`` bytes.

    :meth:`feed` returns, in order, the complete lines found so far (without
    their terminator) and a :class:`~chatd.errors.LineTooLong` for each line
    that went over the limit. Memory held between calls is at most
    ``max_line + 1`` bytes, whatever the peer sends.
    """

    __slots__ = ("_buf", "_discarding", "_telnet", "max_line")

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        self._telnet = _T_DATA

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held until its newline arrives."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        if self._telnet != _T_DATA or b"\xff" in data:
            data = self._strip_telnet(data)
        out: list[bytes | LineTooLong] = []
        buf = self._buf
        limit = self.max_line
        start = 0
        find = data.find
        while (nl := find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            else:
                if buf:
                    buf += data[start:nl]
                    line = bytes(buf)
                    buf.clear()
                else:
                    line = data[start:nl]
                if line.endswith(b"\r"):
                    line = line[:-1]
                out.append(line if len(line) <= limit else _too_long(limit))
            start = nl + 1
        if start < len(data) and not self._discarding:
            # Keep one byte more than the limit: it may be the \r of \r\n.
            if len(buf) + len(data) - start > limit + 1:
                buf.clear()
                self._discarding = True
                out.append(_too_long(limit))
            else:
                buf += data[start:]
        return out

    def finish(self) -> list[bytes | LineTooLong]:
        """End of input: a last line without its newline still counts."""
        line = bytes(self._buf)
        self._buf.clear()
        if self._discarding or not line:
            self._discarding = False
            return []
        return [line[:-1] if line.endswith(b"\r") else line]

    def _strip_telnet(self, data: bytes) -> bytes:
        """Remove telnet commands (IAC sequences), keeping state across calls.

        0xFF never occurs in UTF-8, so a client that is not telnet loses
        nothing by this.
        """
        out = bytearray()
        state = self._telnet
        for byte in data:
            if state == _T_DATA:
                if byte == _IAC:
                    state = _T_IAC
                else:
                    out.append(byte)
            elif state == _T_IAC:
                if byte in _WILL_WONT_DO_DONT:
                    state = _T_OPTION
                elif byte == _SB:
                    state = _T_SUB
                else:  # a two-byte command, or IAC IAC (a literal 0xFF): dropped
                    state = _T_DATA
            elif state == _T_OPTION:
                state = _T_DATA
            elif state == _T_SUB:
                if byte == _IAC:
                    state = _T_SUB_IAC
            else:  # _T_SUB_IAC
                state = _T_DATA if byte == _SE else _T_SUB
        self._telnet = state
        return bytes(out)


def _too_long(limit: int) -> LineTooLong:
    return LineTooLong(f"line longer than {limit} bytes; discarded")


_HTTP_REQUEST = re.compile(rb"[A-Z]{3,7} \S+ HTTP/\d")


def foreign_protocol(first: bytes) -> WrongProtocol | None:
    """The error for a connection whose first bytes are TLS or HTTP, else None.

    Both would otherwise sit in the line framer until the registration
    timeout: a TLS ClientHello has no newline, and an HTTP client waits for
    an answer that is not coming.
    """
    if first[:1] == b"\x16" and first[1:2] == b"\x03":  # a TLS handshake record
        return WrongProtocol("this port speaks plain text, not TLS: use the TLS port")
    if _HTTP_REQUEST.match(first):
        return WrongProtocol("this port speaks chat lines, not HTTP: use the web port")
    return None


# ---------------------------------------------------------------------------
# Commands: what a client asks for. Named as imperatives.


@dataclasses.dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Nick:
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Create:
    room: str


@dataclasses.dataclass(frozen=True, slots=True)
class Join:
    room: str


@dataclasses.dataclass(frozen=True, slots=True)
class Leave:
    room: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ListRooms:
    #: True: also send ``room`` events from now on; False: stop; None: list only.
    watch: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Who:
    room: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Msg:
    nick: str
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Me:
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Topic:
    text: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SetFormat:
    format: Format


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    token: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAlive:
    """Ask the server to ping after ``interval`` seconds of silence (0: never)."""

    interval: float


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a server's ping: it runs nothing and gets no reply."""

    token: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Quit:
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Register:
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Login:
    nick: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Logout:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Passwd:
    old: str = dataclasses.field(repr=False)
    new: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class ShowHistory:
    #: A room name, or ``@nick`` for the private conversation with nick;
    #: None for the current room.
    target: str | None = None
    count: int = 20
    before: int | None = None


Command = (
    Say
    | Nick
    | Create
    | Join
    | Leave
    | ListRooms
    | Who
    | Msg
    | Me
    | Topic
    | SetFormat
    | Ping
    | KeepAlive
    | Answer
    | Help
    | Quit
    | Register
    | Login
    | Logout
    | Passwd
    | ShowHistory
)

#: (usage, what it does), in the order ``/help`` lists them.
COMMAND_HELP: Final[tuple[tuple[str, str], ...]] = (
    ("/nick NAME", "choose or change your nickname"),
    ("/create ROOM", "create a new room, join it and make it current"),
    ("/join ROOM", "join a room (created if needed) and make it current"),
    ("/leave [ROOM]", "leave a room (default: the current one)"),
    ("/rooms [watch|unwatch]", "list rooms with their member counts; watch: follow changes"),
    ("/who [ROOM]", "list who is in a room (default: the current one)"),
    ("/msg NICK TEXT", "send a private message"),
    ("/me ACTION", "send an action to the current room"),
    ("/topic [TEXT]", "show or set the current room's topic"),
    ("/register PASSWORD", "protect your nickname with a password"),
    ("/login NICK PASSWORD", "log in to your registered nickname"),
    ("/logout", "log out (choose a nickname again)"),
    ("/passwd OLD NEW", "change your password"),
    ("/history [ROOM|@NICK] [N] [before=ID]", "show earlier messages"),
    ("/format text|json", "switch how the server talks to you"),
    ("/ping [TOKEN]", "ask for a pong (echoes TOKEN)"),
    ("/ping every SECONDS", "JSON mode: be pinged after SECONDS of silence (0: never)"),
    ("/pong TOKEN", "answer the server's ping"),
    ("/help", "show this list"),
    ("/quit [REASON]", "leave the chat"),
    ("//TEXT", "say a line that starts with /"),
)


def clean_text(text: str) -> str:
    """Remove control characters and turn tabs into spaces."""
    if _CONTROL_RE.search(text) is None:
        return text.replace("\t", " ") if "\t" in text else text
    return _CONTROL_RE.sub("", text.replace("\t", " "))


def check_nick(name: str, limit: int = NAME_CEILING) -> str:
    """Return ``name`` if it is a valid nickname of at most ``limit``
    characters, else raise BadNick."""
    if _NAME_RE.match(name) is None or len(name) > limit:
        raise BadNick(f"invalid nickname {name[:40]!r}: 1-{limit} letters, digits, '_', '-' or '.'")
    return name


def check_room(name: str, limit: int = NAME_CEILING) -> str:
    """Return the room name without a leading ``#``, or raise BadRoom."""
    bare = name[1:] if name.startswith("#") else name
    if _NAME_RE.match(bare) is None or len(bare) > limit:
        raise BadRoom(
            f"invalid room name {name[:40]!r}: 1-{limit} letters, digits, '_', '-' or '.'"
        )
    return bare


def name_key(name: str) -> str:
    """The case-insensitive identity of a nickname or room name."""
    return name.lower()


def _one_arg(args: str, usage: str) -> str:
    if not args or " " in args:
        raise BadArgs(f"usage: {usage}")
    return args


def _parse_format(args: str) -> Format:
    try:
        return Format[args.upper()]
    except KeyError:
        raise BadArgs("usage: /format text|json") from None


def _parse_msg(args: str) -> Msg:
    nick, _, text = args.partition(" ")
    text = text.strip()
    if not nick or not text:
        raise BadArgs("usage: /msg NICK TEXT")
    return Msg(check_nick(nick), text)


def _parse_me(args: str) -> Me:
    if not args:
        raise BadArgs("usage: /me ACTION")
    return Me(args)


#: Passwords: 8 to 128 characters, no spaces (they separate arguments).
MIN_PASSWORD_LEN: Final = 8
MAX_PASSWORD_LEN: Final = 128
#: Most messages one /history answers.
MAX_HISTORY: Final = 1000


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN or " " in password:
        raise BadArgs(
            f"a password has {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters and no spaces"
        )
    return password


def _parse_register(args: str) -> Register:
    if not args:
        raise BadArgs("usage: /register PASSWORD")
    return Register(check_password(args))


def _parse_login(args: str) -> Login:
    nick, _, password = args.partition(" ")
    if not nick or not password:
        raise BadArgs("usage: /login NICK PASSWORD")
    # A wrong password is a bad login, not a usage error: no hint about rules.
    return Login(check_nick(nick), password.strip())


def _parse_passwd(args: str) -> Passwd:
    parts = args.split()
    if len(parts) != 2:
        raise BadArgs("usage: /passwd OLD NEW")
    return Passwd(parts[0], check_password(parts[1]))


def _parse_history(args: str) -> ShowHistory:
    usage = f"usage: /history [ROOM|@NICK] [N] [before=ID] (N at most {MAX_HISTORY})"
    target: str | None = None
    count = 20
    before: int | None = None
    for i, word in enumerate(args.split()):
        if word.startswith("before="):
            value = word[7:]
            if not value.isdigit() or before is not None:
                raise BadArgs(usage)
            before = int(value)
        elif word.isdigit():
            count = int(word)
            if not 1 <= count <= MAX_HISTORY:
                raise BadArgs(usage)
        elif i == 0 and word.startswith("@"):
            target = "@" + check_nick(word[1:])
        elif i == 0:
            target = check_room(word)
        else:
            raise BadArgs(usage)
    return ShowHistory(target, count, before)


def _parse_rooms(args: str) -> ListRooms:
    word = args.lower()
    if word in ("watch", "unwatch"):
        return ListRooms(watch=word == "watch")
    if word:
        raise BadArgs("usage: /rooms [watch|unwatch]")
    return ListRooms()


_MAX_KEEPALIVE: Final = 3600


def _parse_ping(args: str) -> Ping | KeepAlive:
    word, _, rest = args.partition(" ")
    if word.lower() != "every":
        return Ping(args)
    usage = f"usage: /ping every SECONDS (0 to stop, at most {_MAX_KEEPALIVE})"
    try:
        interval = float(rest.strip())
    except ValueError:
        raise BadArgs(usage) from None
    if not 0 <= interval <= _MAX_KEEPALIVE:  # also refuses nan
        raise BadArgs(usage)
    return KeepAlive(int(interval) if interval.is_integer() else interval)


_PARSERS: Final[dict[str, Any]] = {
    "nick": lambda a: Nick(check_nick(_one_arg(a, "/nick NAME"))),
    "create": lambda a: Create(check_room(_one_arg(a, "/create ROOM"))),
    "join": lambda a: Join(check_room(_one_arg(a, "/join ROOM"))),
    "leave": lambda a: Leave(check_room(_one_arg(a, "/leave [ROOM]")) if a else None),
    "rooms": _parse_rooms,
    "who": lambda a: Who(check_room(_one_arg(a, "/who [ROOM]")) if a else None),
    "msg": _parse_msg,
    "me": _parse_me,
    "topic": lambda a: Topic(a or None),
    "format": lambda a: SetFormat(_parse_format(a)),
    "ping": _parse_ping,
    "pong": lambda a: Answer(a),
    "help": lambda a: Help(),
    "quit": lambda a: Quit(a),
    "register": _parse_register,
    "login": _parse_login,
    "logout": lambda a: Logout(),
    "passwd": _parse_passwd,
    "history": _parse_history,
}


def parse_line(line: bytes) -> Command | None:
    """Parse one line (without its terminator) into a command.

    Returns ``None`` for a blank line. Raises a ProtocolError subclass for
    anything else that is not a valid command.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEncoding(f"line is not valid UTF-8 (byte {exc.start}); ignored") from None
    text = clean_text(text)
    if not text or text.isspace():
        return None
    if text[0] != "/":
        return Say(text)
    if text.startswith("//"):
        return Say(text[1:])
    name, _, args = text[1:].partition(" ")
    parser = _PARSERS.get(name.lower())
    if parser is None:
        raise UnknownCommand(f"unknown command /{name[:40]}; /help lists the commands")
    result: Command = parser(args.strip())
    return result


# ---------------------------------------------------------------------------
# Events: what happened. Named as facts; ``type`` is the JSON discriminator.


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


@dataclasses.dataclass(frozen=True, slots=True)
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
    if fmt == Format.JSON:
        if type(event) is Message:
            return _message_json(event)
        return _json_encode(event_to_json(event)).encode() + b"\n"
    return event_to_text(event).encode() + b"\n"
