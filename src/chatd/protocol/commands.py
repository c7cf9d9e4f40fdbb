"""Lines to commands: what a client asks for, named as imperatives.

:func:`parse_line` turns one framed line into a :data:`Command` or raises a
:class:`~chatd.errors.ProtocolError` carrying the wire code. The name rules
(:func:`check_nick`, :func:`check_room`, :func:`name_key`) and the password
rule live here too, since the parser applies them to every argument.

Text a client sends to others is cleaned here once: control characters (C0,
DEL, C1, which includes ``\\r``, ``\\0`` and the ESC of terminal escapes) are
removed and tabs become spaces, so no relayed line can spoof another line or
drive someone's terminal.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

from chatd.config import NAME_CEILING
from chatd.errors import BadArgs, BadEncoding, BadNick, BadRoom, UnknownCommand
from chatd.protocol.framing import Format
from chatd.protocol.moderation import (
    Mask,
    ModeChange,
    Role,
    is_duration,
    parse_duration,
    parse_mask,
    parse_mode_changes,
)

DEFAULT_ROOM: Final = "general"
_NAME_RE: Final = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_CEILING}}}\Z")
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclasses.dataclass(frozen=True, slots=True)
class Say:
    text: str
    #: A notice (IRC's NOTICE; no chatd line makes one).
    notice: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Nick:
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Create:
    room: str


@dataclasses.dataclass(frozen=True, slots=True)
class Join:
    room: str
    #: The room's key, for a room with +k.
    key: str | None = dataclasses.field(default=None, repr=False)


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
    notice: bool = False


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
    #: ``/logout --all``: the account's other connections end too.
    everywhere: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ListSessions:
    """``/sessions``: the connections of one's account."""


@dataclasses.dataclass(frozen=True, slots=True)
class KickSession:
    """``/kick-session ID``: end another connection of one's account."""

    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class MarkRead:
    """``/read [ROOM|@NICK] [ID]``: the account has read up to ``id``
    (None: the newest) in a room (None: the current one) or a private
    conversation (``@nick``)."""

    target: str | None = None
    id: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ShowUnread:
    """``/unread``: unread and mention counts per conversation."""


@dataclasses.dataclass(frozen=True, slots=True)
class Search:
    """``/search [#ROOM|@NICK] TEXT [before=ID] [N]``."""

    text: str
    #: ``room`` (given as ``#room``) or ``@nick``; None: everything one may read.
    target: str | None = None
    before: int | None = None
    count: int = 20


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


@dataclasses.dataclass(frozen=True, slots=True)
class SetRole:
    """``/op``, ``/deop``, ``/voice``, ``/devoice``: give ``role``, or (``on``
    False) take it back, leaving the member a member."""

    nick: str
    role: Role
    on: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Kick:
    nick: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Ban:
    mask: Mask
    #: Seconds; None: until removed.
    duration: int | None = None
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Unban:
    mask: Mask


@dataclasses.dataclass(frozen=True, slots=True)
class ListBans:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Mute:
    nick: str
    duration: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Unmute:
    nick: str


@dataclasses.dataclass(frozen=True, slots=True)
class Invite:
    nick: str
    room: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Mode:
    """``/mode [ROOM] [CHANGES]``: no changes shows the room's modes."""

    room: str | None = None
    changes: tuple[ModeChange, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ShowModLog:
    count: int = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Kill:
    nick: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Kline:
    mask: Mask
    duration: int | None = None
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Unkline:
    mask: Mask


@dataclasses.dataclass(frozen=True, slots=True)
class ListKlines:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Wall:
    text: str


#: The commands of room moderation and of server operators.
Moderation = (
    SetRole
    | Kick
    | Ban
    | Unban
    | ListBans
    | Mute
    | Unmute
    | Invite
    | Mode
    | ShowModLog
    | Kill
    | Kline
    | Unkline
    | ListKlines
    | Wall
)

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
    | ListSessions
    | KickSession
    | MarkRead
    | ShowUnread
    | Search
    | Passwd
    | ShowHistory
    | Moderation
)

#: (usage, what it does), in the order ``/help`` lists them.
COMMAND_HELP: Final[tuple[tuple[str, str], ...]] = (
    ("/nick NAME", "choose or change your nickname"),
    ("/create ROOM", "create a new room, join it and make it current"),
    ("/join ROOM [KEY]", "join a room (created if needed) and make it current"),
    ("/leave [ROOM]", "leave a room (default: the current one)"),
    ("/rooms [watch|unwatch]", "list rooms with their member counts; watch: follow changes"),
    ("/who [ROOM]", "list who is in a room (default: the current one)"),
    ("/msg NICK TEXT", "send a private message"),
    ("/me ACTION", "send an action to the current room"),
    ("/topic [TEXT]", "show or set the current room's topic"),
    ("/register PASSWORD", "protect your nickname with a password"),
    ("/login NICK PASSWORD", "log in to your registered nickname"),
    ("/logout [--all]", "log out (choose a nickname again); --all: end your other sessions"),
    ("/sessions", "list the connections logged in to your account"),
    ("/kick-session ID", "end another connection of your account"),
    ("/passwd OLD NEW", "change your password"),
    ("/history [ROOM|@NICK] [N] [before=ID]", "show earlier messages"),
    ("/read [ROOM|@NICK] [ID]", "mark a conversation read (up to ID; default the newest)"),
    ("/unread", "unread messages and mentions per conversation"),
    ("/search [#ROOM|@NICK] TEXT [before=ID] [N]", "find stored messages, newest first"),
    ("/mode [ROOM] [+|-FLAGS [ARGS]]", "show or change a room's modes: i k KEY l N m s t"),
    ("/op NICK, /deop NICK", "ops: give or take op rights in the current room"),
    ("/voice NICK, /devoice NICK", "ops: let a member speak in a moderated (+m) room, or not"),
    ("/kick NICK [REASON]", "ops: remove a member from the current room"),
    ("/ban MASK [DURATION] [REASON]", "ops: ban NICK, account:NAME or ip:ADDR[/PREFIX]"),
    ("/unban MASK, /bans", "ops: lift a ban; list the room's bans"),
    ("/mute NICK [DURATION], /unmute NICK", "ops: silence a member of the room, or not"),
    ("/invite NICK [ROOM]", "invite someone (admits once to a +i or +k room)"),
    ("/modlog [N]", "ops: the room's last N moderation actions"),
    ("/kill NICK [REASON]", "server operators: disconnect someone"),
    ("/kline MASK [DURATION] [REASON]", "server operators: ban from the whole server"),
    ("/unkline MASK, /klines", "server operators: lift a server ban; list them"),
    ("/wall TEXT", "server operators: a notice to every connection"),
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
    if text.isprintable():
        return text  # the common case, decided in C: nothing to remove
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


def is_number(word: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes a superscript two, which
    ``int`` refuses, and Arabic-Indic digits, which it reads as a number."""
    return word.isascii() and word.isdigit()


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
            if not is_number(value) or len(value) > 18 or before is not None:
                raise BadArgs(usage)  # an id, which the store keeps in 63 bits
            before = int(value)
        elif is_number(word):
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


#: Most results one /search answers.
MAX_SEARCH: Final = 100
#: The longest search text.
MAX_QUERY: Final = 200


def _parse_id(word: str, usage: str) -> int:
    if not is_number(word) or len(word) > 18:
        raise BadArgs(usage)  # an id, which the store keeps in 63 bits
    return int(word)


def _parse_target(word: str) -> str:
    """``@nick`` or a room name (one ``#`` optional: ``##dev`` is no name)."""
    if word.startswith("@"):
        return "@" + check_nick(word[1:])
    return check_room(word)


def _parse_read(args: str) -> MarkRead:
    usage = "usage: /read [ROOM|@NICK] [ID]"
    words = args.split()
    if len(words) > 2:
        raise BadArgs(usage)
    target: str | None = None
    message_id: int | None = None
    for i, word in enumerate(words):
        if is_number(word) and i == len(words) - 1:
            message_id = _parse_id(word, usage)
        elif i == 0:
            target = _parse_target(word)
        else:
            raise BadArgs(usage)
    return MarkRead(target, message_id)


def _parse_search(args: str) -> Search:
    usage = (
        f"usage: /search [#ROOM|@NICK] TEXT [before=ID] [N] (N at most {MAX_SEARCH}, "
        f"TEXT at most {MAX_QUERY} characters)"
    )
    words = args.split()
    target: str | None = None
    before: int | None = None
    count = 20
    if words and (words[0].startswith("#") or words[0].startswith("@")) and len(words[0]) > 1:
        target = _parse_target(words.pop(0))
    # At the end, in either order: before=ID once, and N once. A second
    # number is searched for (``/search error 404 5``: N is 5).
    counted = False
    while len(words) > 1:
        word = words[-1]
        if word.startswith("before="):
            if before is not None:
                raise BadArgs(usage)
            before = _parse_id(word[7:], usage)
        elif is_number(word) and not counted:
            count = int(word) if len(word) < 6 else 0
            if not 1 <= count <= MAX_SEARCH:
                raise BadArgs(usage)
            counted = True
        else:
            break
        words.pop()
    text = " ".join(words)
    if not text or len(text) > MAX_QUERY:
        raise BadArgs(usage)
    return Search(text, target, before, count)


def _parse_logout(args: str) -> Logout:
    if args not in ("", "--all"):
        raise BadArgs("usage: /logout [--all]")
    return Logout(everywhere=args == "--all")


def _parse_rooms(args: str) -> ListRooms:
    word = args.lower()
    if word in ("watch", "unwatch"):
        return ListRooms(watch=word == "watch")
    if word:
        raise BadArgs("usage: /rooms [watch|unwatch]")
    return ListRooms()


def _parse_join(args: str) -> Join:
    parts = args.split()
    if not 1 <= len(parts) <= 2:
        raise BadArgs("usage: /join ROOM [KEY]")
    return Join(check_room(parts[0]), parts[1] if len(parts) == 2 else None)


#: The longest reason a kick, ban, kill or kline keeps (the rest is cut):
#: reasons are stored in rules, logs and lists that are sent whole.
MAX_REASON: Final = 300


def _nick_and_rest(args: str, usage: str) -> tuple[str, str]:
    nick, _, rest = args.partition(" ")
    if not nick:
        raise BadArgs(f"usage: {usage}")
    return check_nick(nick), rest.strip()[:MAX_REASON]


def _role(role: Role, on: bool, name: str) -> Any:
    def parse(args: str) -> SetRole:
        return SetRole(check_nick(_one_arg(args, f"/{name} NICK")), role, on)

    return parse


def _mask_duration_reason(args: str, usage: str) -> tuple[Mask, int | None, str]:
    """``MASK [DURATION] [REASON]``: a second word that reads as a duration is one."""
    words = args.split(" ", 2)
    if not words[0]:
        raise BadArgs(f"usage: {usage}")
    mask = parse_mask(words[0])
    duration: int | None = None
    rest = words[1:]
    if rest and is_duration(rest[0]):
        duration = parse_duration(rest.pop(0))
    return mask, duration, " ".join(rest).strip()[:MAX_REASON]


def _parse_ban(args: str) -> Ban:
    return Ban(*_mask_duration_reason(args, "/ban MASK [DURATION] [REASON]"))


def _parse_kline(args: str) -> Kline:
    return Kline(*_mask_duration_reason(args, "/kline MASK [DURATION] [REASON]"))


def _parse_mute(args: str) -> Mute:
    parts = args.split()
    if not 1 <= len(parts) <= 2:
        raise BadArgs("usage: /mute NICK [DURATION]")
    return Mute(check_nick(parts[0]), parse_duration(parts[1]) if len(parts) == 2 else None)


def _parse_invite(args: str) -> Invite:
    parts = args.split()
    if not 1 <= len(parts) <= 2:
        raise BadArgs("usage: /invite NICK [ROOM]")
    return Invite(check_nick(parts[0]), check_room(parts[1]) if len(parts) == 2 else None)


def _parse_mode(args: str) -> Mode:
    words = args.split()
    room: str | None = None
    if words and words[0][:1] not in ("+", "-"):
        room = check_room(words.pop(0))
    return Mode(room, parse_mode_changes(words) if words else ())


def _parse_modlog(args: str) -> ShowModLog:
    if not args:
        return ShowModLog()
    if not is_number(args) or not 1 <= int(args) <= MAX_HISTORY:
        raise BadArgs(f"usage: /modlog [N] (N at most {MAX_HISTORY})")
    return ShowModLog(int(args))


def _parse_wall(args: str) -> Wall:
    if not args:
        raise BadArgs("usage: /wall TEXT")
    return Wall(args)


def _no_args(command: Any, usage: str) -> Any:
    def parse(args: str) -> Any:
        if args:
            raise BadArgs(f"usage: {usage}")
        return command()

    return parse


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
    "join": _parse_join,
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
    "logout": _parse_logout,
    "sessions": _no_args(ListSessions, "/sessions"),
    "kick-session": lambda a: KickSession(_one_arg(a, "/kick-session ID")),
    "read": _parse_read,
    "unread": _no_args(ShowUnread, "/unread"),
    "search": _parse_search,
    "passwd": _parse_passwd,
    "history": _parse_history,
    "op": _role(Role.OP, True, "op"),
    "deop": _role(Role.OP, False, "deop"),
    "voice": _role(Role.VOICE, True, "voice"),
    "devoice": _role(Role.VOICE, False, "devoice"),
    "kick": lambda a: Kick(*_nick_and_rest(a, "/kick NICK [REASON]")),
    "ban": _parse_ban,
    "unban": lambda a: Unban(parse_mask(_one_arg(a, "/unban MASK"))),
    "bans": _no_args(ListBans, "/bans"),
    "mute": _parse_mute,
    "unmute": lambda a: Unmute(check_nick(_one_arg(a, "/unmute NICK"))),
    "invite": _parse_invite,
    "mode": _parse_mode,
    "modlog": _parse_modlog,
    "kill": lambda a: Kill(*_nick_and_rest(a, "/kill NICK [REASON]")),
    "kline": _parse_kline,
    "unkline": lambda a: Unkline(parse_mask(_one_arg(a, "/unkline MASK"))),
    "klines": _no_args(ListKlines, "/klines"),
    "wall": _parse_wall,
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
