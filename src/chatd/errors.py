"""The errors a client can be told about, each with a stable wire code.

Every error a client sees is an instance of :class:`ChatError`; its class
carries the ``code`` that goes on the wire (``{"type":"error","code":...}``
or ``! code: text``). Codes are part of the protocol and never change; texts
are for humans and may.

::

    ChatError                       the client is told, the connection stays
    ├── ProtocolError               the line itself is wrong
    │   ├── LineTooLong             line_too_long
    │   ├── BadEncoding             bad_encoding
    │   ├── UnknownCommand          unknown_command
    │   ├── BadArgs                 bad_args
    │   ├── BadNick                 bad_nick
    │   ├── BadRoom                 bad_room
    │   ├── BadMask                 bad_mask
    │   ├── BadMode                 bad_mode
    │   └── WrongProtocol           wrong_protocol
    ├── StateError                  the line is fine, the state forbids it
    │   ├── NotRegistered           not_registered
    │   ├── NickTaken               nick_taken
    │   ├── NoSuchRoom              no_such_room
    │   ├── RoomExists              room_exists
    │   ├── NoSuchNick              no_such_nick
    │   ├── NotInRoom               not_in_room
    │   ├── NickRegistered          nick_registered
    │   ├── BadLogin                bad_login
    │   ├── NotLoggedIn             not_logged_in
    │   ├── NotOp                   not_op
    │   ├── NotOper                 not_oper
    │   ├── InviteOnly              invite_only
    │   ├── BadKey                  bad_key
    │   ├── Banned                  banned
    │   └── Muted                   muted
    └── LimitError                  a limit was reached (some end the connection)
        ├── RateLimited             rate_limited
        ├── TooManyRooms            too_many_rooms
        ├── RoomFull                room_full
        ├── ListFull                list_full
        ├── ServerFull              server_full
        ├── TooManyConnections      too_many_connections
        ├── RegistrationTimeout     registration_timeout
        ├── LoginThrottled          login_throttled
        ├── StorageUnavailable      storage_unavailable
        └── ClusterUnavailable      cluster_unavailable

Names avoid the builtins (``ConnectionError``, ``TimeoutError``) on purpose.
"""

from __future__ import annotations

from typing import ClassVar


class ChatError(Exception):
    """Base of every error that is reported to a client."""

    code: ClassVar[str] = "error"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class ProtocolError(ChatError):
    """The client sent a line that cannot be understood."""


class LineTooLong(ProtocolError):
    code = "line_too_long"


class BadEncoding(ProtocolError):
    code = "bad_encoding"


class UnknownCommand(ProtocolError):
    code = "unknown_command"


class BadArgs(ProtocolError):
    code = "bad_args"


class BadNick(ProtocolError):
    code = "bad_nick"


class BadRoom(ProtocolError):
    code = "bad_room"


class BadMask(ProtocolError):
    """Not a nickname, ``account:NAME`` or ``ip:ADDRESS[/PREFIX]``."""

    code = "bad_mask"


class BadMode(ProtocolError):
    """Not a mode change chatd knows (``+i``, ``-k``, ``+l 20`` ...)."""

    code = "bad_mode"


class BadQuery(ProtocolError):
    """A /search query the search syntax cannot read (an open quote, a lone operator)."""

    code = "bad_query"


class WrongProtocol(ProtocolError):
    """TLS or HTTP spoken to the plain chat port."""

    code = "wrong_protocol"


class StateError(ChatError):
    """The command is well formed but not possible in the current state."""


class NotRegistered(StateError):
    code = "not_registered"


class NickTaken(StateError):
    code = "nick_taken"


class NoSuchRoom(StateError):
    code = "no_such_room"


class RoomExists(StateError):
    code = "room_exists"


class NoSuchNick(StateError):
    code = "no_such_nick"


class NotInRoom(StateError):
    code = "not_in_room"


class NickRegistered(StateError):
    code = "nick_registered"


class BadLogin(StateError):
    code = "bad_login"


class NotLoggedIn(StateError):
    code = "not_logged_in"


class NotOp(StateError):
    """The command needs op or owner rights in the room (or more than the target's)."""

    code = "not_op"


class NotOper(StateError):
    """The command is for server operators only."""

    code = "not_oper"


class InviteOnly(StateError):
    """The room is invite-only (+i) and there is no invitation for you."""

    code = "invite_only"


class BadKey(StateError):
    """The room has a key (+k) and the join gave none, or a wrong one."""

    code = "bad_key"


class Banned(StateError):
    """Banned from the room (a join is refused), or from the server (a kline)."""

    code = "banned"


class Muted(StateError):
    """The room is moderated (+m) and you have no voice, or you are muted."""

    code = "muted"


class LimitError(ChatError):
    """A configured limit was reached."""


class RateLimited(LimitError):
    code = "rate_limited"


class TooManyRooms(LimitError):
    code = "too_many_rooms"


class ServerFull(LimitError):
    code = "server_full"


class TooManyConnections(LimitError):
    code = "too_many_connections"


class RegistrationTimeout(LimitError):
    code = "registration_timeout"


class RegistrationLimit(LimitError):
    code = "registration_limit"


class TooManySessions(LimitError):
    """An account has as many connections as ``--max-sessions-per-account`` allows."""

    code = "too_many_sessions"


class RoomFull(LimitError):
    code = "room_full"


class ListFull(LimitError):
    """A room's bans, mutes or invitations, or the server's klines, are at their bound."""

    code = "list_full"


class PingTimeout(LimitError):
    code = "ping_timeout"


class LoginThrottled(LimitError):
    code = "login_throttled"


class StorageUnavailable(LimitError):
    code = "storage_unavailable"


class ClusterUnavailable(LimitError):
    """Cluster mode: Redis cannot be reached (or falls behind); nothing was done."""

    code = "cluster_unavailable"


#: Every wire code, for documentation and tests.
ALL_CODES: tuple[str, ...] = tuple(
    cls.code
    for cls in (
        LineTooLong,
        BadEncoding,
        UnknownCommand,
        BadArgs,
        BadNick,
        BadRoom,
        BadMask,
        BadMode,
        BadQuery,
        WrongProtocol,
        NotRegistered,
        NickTaken,
        NoSuchRoom,
        RoomExists,
        NoSuchNick,
        NotInRoom,
        NickRegistered,
        BadLogin,
        NotLoggedIn,
        NotOp,
        NotOper,
        InviteOnly,
        BadKey,
        Banned,
        Muted,
        RateLimited,
        TooManyRooms,
        RoomFull,
        TooManySessions,
        ListFull,
        ServerFull,
        TooManyConnections,
        RegistrationTimeout,
        RegistrationLimit,
        PingTimeout,
        LoginThrottled,
        StorageUnavailable,
        ClusterUnavailable,
    )
)
