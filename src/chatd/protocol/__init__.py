"""The chatd wire protocol, with no I/O at all.

Three pure pieces, each a plain function or object that tests call directly,
one module each, in the order a line goes through them:

* :mod:`chatd.protocol.framing`: :class:`LineFramer` turns a byte stream into
  lines, with a hard limit on what it buffers; :func:`foreign_protocol` spots
  TLS or HTTP on the plain port.
* :mod:`chatd.protocol.commands`: :func:`parse_line` turns one line into a
  :data:`Command` or raises a :class:`~chatd.errors.ProtocolError` carrying
  the wire code. Text a client sends to others is cleaned of control
  characters here, once, and the nickname and room name rules live here.
* :mod:`chatd.protocol.events`: :func:`render` turns an :data:`Event` into
  bytes, in text or JSON.
* :mod:`chatd.protocol.codec`: a :class:`~chatd.protocol.codec.Codec` is
  the pair (decode a line, encode an event) one connection speaks; the
  dispatcher and the room manager see only codecs, so another line
  protocol is one more codec. The room manager encodes a room event once
  per codec and hands the same ``bytes`` object to every recipient.

The rest of chatd imports from this package (codecs from
:mod:`chatd.protocol.codec`): every public name of the other three is
re-exported here.
"""

from __future__ import annotations

from chatd.protocol.commands import (
    COMMAND_HELP,
    DEFAULT_ROOM,
    MAX_HISTORY,
    MAX_PASSWORD_LEN,
    MIN_PASSWORD_LEN,
    Answer,
    Command,
    Create,
    Help,
    Join,
    KeepAlive,
    Leave,
    ListRooms,
    Login,
    Logout,
    Me,
    Msg,
    Nick,
    Passwd,
    Ping,
    Quit,
    Register,
    Say,
    SetFormat,
    ShowHistory,
    Topic,
    Who,
    check_nick,
    check_password,
    check_room,
    clean_text,
    name_key,
    parse_line,
)
from chatd.protocol.events import (
    Bye,
    Current,
    Direct,
    Error,
    Event,
    FormatIs,
    HelpText,
    History,
    Joined,
    KeepAliveIs,
    Left,
    LoggedOut,
    Message,
    NickChanged,
    PasswordChanged,
    Pong,
    Registered,
    RoomChanged,
    RoomList,
    ServerPing,
    Shutdown,
    TopicIs,
    Welcome,
    WhoList,
    event_from_json,
    event_to_json,
    event_to_text,
    render,
)
from chatd.protocol.events import _json_encode as _json_encode  # a test compares with it
from chatd.protocol.framing import Format, LineFramer, foreign_protocol

__all__ = [
    "COMMAND_HELP",
    "DEFAULT_ROOM",
    "MAX_HISTORY",
    "MAX_PASSWORD_LEN",
    "MIN_PASSWORD_LEN",
    "Answer",
    "Bye",
    "Command",
    "Create",
    "Current",
    "Direct",
    "Error",
    "Event",
    "Format",
    "FormatIs",
    "Help",
    "HelpText",
    "History",
    "Join",
    "Joined",
    "KeepAlive",
    "KeepAliveIs",
    "Leave",
    "Left",
    "LineFramer",
    "ListRooms",
    "LoggedOut",
    "Login",
    "Logout",
    "Me",
    "Message",
    "Msg",
    "Nick",
    "NickChanged",
    "Passwd",
    "PasswordChanged",
    "Ping",
    "Pong",
    "Quit",
    "Register",
    "Registered",
    "RoomChanged",
    "RoomList",
    "Say",
    "ServerPing",
    "SetFormat",
    "ShowHistory",
    "Shutdown",
    "Topic",
    "TopicIs",
    "Welcome",
    "Who",
    "WhoList",
    "check_nick",
    "check_password",
    "check_room",
    "clean_text",
    "event_from_json",
    "event_to_json",
    "event_to_text",
    "foreign_protocol",
    "name_key",
    "parse_line",
    "render",
]
