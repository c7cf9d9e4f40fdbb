"""chatd's room events as IRC sees them: who, and what line.

Pure functions over :mod:`chatd.protocol.events` and
:mod:`chatd.protocol.irc`: what an IRC client is sent when something
happens in a room it is in. The IRC front-end renders each room event once
per kind of IRC client (the capabilities that change its bytes), as the
line codecs render once per codec.

Decisions, each the IRC documentation's usual answer:

* A room is the channel ``#room``; a nickname is itself. chatd's names
  (``A-Z a-z 0-9 _ - .``, compared in ASCII lower case) are valid IRC
  nicknames and channel names as they are, under ``CASEMAPPING=ascii``.
* A member's source is ``nick!user@host``. chatd shows no addresses, so
  the host says what the member is: ``chatd/account`` for a logged-in
  member, ``chatd/guest`` for a guest; the user is the nickname (``~nick``
  for a guest, as IRC marks an unverified ident).
* An action (``/me``) is a CTCP ACTION: ``PRIVMSG #room :\\x01ACTION text\\x01``.
* A member leaving a room is a PART; a member whose connection ended is a
  QUIT, once, to everyone sharing a room with it (``IrcCodec.one_quit``); a
  member kicked is the KICK alone (the leave that follows it is not shown);
  a member banned out of a room is a KICK by the server.
* Text longer than an IRC line holds is split into several PRIVMSGs, at
  character boundaries.
* A message's ``mention`` and ``search`` marks change nothing (IRC clients
  find their own highlights). Read markers (``read``), ``unread``,
  ``sessions`` and the ``search`` summary have no IRC line: an IRC client
  cannot ask for the last three, and ``read`` (another connection of the
  account read something) has no IRC form short of IRCv3's draft
  read-marker, which chatd does not offer.

:class:`IrcCodec` is the shared encoder of one kind of IRC client: the
capabilities that change the bytes of a room event (``server-time``,
``message-tags``, ``account-tag``, ``extended-join``) are its flavour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import ClassVar, Final

from chatd.errors import UnknownCommand
from chatd.protocol.codec import Codec
from chatd.protocol.commands import Command
from chatd.protocol.events import (
    BANNED_BY,
    KICKED_BY,
    BanLifted,
    BanSet,
    Bye,
    Direct,
    Event,
    Joined,
    Kicked,
    Left,
    Message,
    ModeIs,
    MuteLifted,
    MuteSet,
    NickChanged,
    Notice,
    Pong,
    RoleIs,
    ServerPing,
    Shutdown,
    TopicIs,
)
from chatd.protocol.framing import Format
from chatd.protocol.irc import MAX_LINE, IrcMessage, render_message
from chatd.protocol.moderation import Mask, Role, parse_mask

#: The server's name: the source of its numerics and of what no member did.
SERVER: Final = "chatd"
#: The host part of a guest's and an account's source.
GUEST_HOST = "chatd/guest"
ACCOUNT_HOST = "chatd/account"

#: The channel mode letter of each role (``~`` q, ``@`` o, ``+`` v).
ROLE_MODES = {Role.OWNER: "q", Role.OP: "o", Role.VOICE: "v"}
#: The capabilities that change how a room event is written: the flavours
#: of :class:`IrcCodec`.
LINE_CAPS: Final = frozenset({"server-time", "message-tags", "account-tag", "extended-join"})

#: Is this nickname logged in to its account? (registered nicknames can only be.)
Registered = Callable[[str], bool]


def source_of(nick: str, *, account: bool = False) -> str:
    """The ``nick!user@host`` of a member."""
    if account:
        return f"{nick}!{nick}@{ACCOUNT_HOST}"
    return f"{nick}!~{nick}@{GUEST_HOST}"


def channel(room: str) -> str:
    """The IRC channel of a chatd room."""
    return "#" + room


def room_of(name: str) -> str | None:
    """The chatd room of an IRC channel name (None: not one of chatd's,
    whose names have one ``#``)."""
    return name[1:] if name.startswith("#") and name[1:2] not in ("", "#") else None


def action_text(text: str) -> str:
    """A ``/me`` as a CTCP ACTION."""
    return f"\x01ACTION {text}\x01"


def ctcp_action(text: str) -> str | None:
    """The action in a CTCP ACTION message (None: the text is not one)."""
    if text.startswith("\x01ACTION ") and len(text) > 8:
        return text[8:].removesuffix("\x01")
    return None


def _nobody(nick: str) -> bool:
    return False


def room_event(event: Event, *, registered: Registered = _nobody) -> IrcMessage | None:
    """The IRC line of a chatd event that goes to a room's members, a DM or
    a wall; None for an event IRC has no line for (the front-end answers
    those commands with numerics). ``registered``: whether a nickname is
    logged in to its account, for its source."""

    def source(nick: str) -> str:
        return source_of(nick, account=registered(nick))

    match event:
        case Message(room=room, sender=sender, text=text, action=action, notice=notice):
            body = action_text(text) if action else text
            verb = "NOTICE" if notice else "PRIVMSG"
            return IrcMessage(verb, (channel(room), body), source(sender))
        case Direct(sender=sender, to=to, text=text, notice=notice):
            return IrcMessage("NOTICE" if notice else "PRIVMSG", (to, text), source(sender))
        case Joined(room, nick):
            return IrcMessage("JOIN", (channel(room),), source(nick))
        case Left(room, nick, reason):
            return _left(room, nick, reason, source(nick))
        case NickChanged(old, new):
            return IrcMessage("NICK", (new,), source(old))
        case TopicIs(room, topic, by, True):
            return IrcMessage("TOPIC", (channel(room), fit(topic, 390)), source(by or SERVER))
        case Kicked(room, nick, by, reason):
            return IrcMessage("KICK", (channel(room), nick, reason or by), source(by))
        case RoleIs(room, nick, role, by):
            return _role_mode(room, nick, role, source(by) if by else None)
        case Notice(sender, text):
            return IrcMessage("NOTICE", ("$*", f"[{sender}] {text}"), source(sender))
    return _moderation_event(event, source)


def _left(room: str, nick: str, reason: str, source: str) -> IrcMessage | None:
    """A leave: a PART; a connection's end: a QUIT; a kick: nothing (its
    KICK was sent); a ban: a KICK by the server."""
    if not reason:
        return IrcMessage("PART", (channel(room),), source)
    if reason.startswith(KICKED_BY):
        return None
    if reason.startswith(BANNED_BY):
        return IrcMessage("KICK", (channel(room), nick, reason), SERVER)
    return IrcMessage("QUIT", (reason,), source)


def _moderation_event(event: Event, source: Callable[[str], str]) -> IrcMessage | None:
    match event:
        case ModeIs(room, by, change, modes) if by is not None and change:
            return IrcMessage("MODE", (channel(room), *mode_params(change, modes)), source(by))
        case BanSet(room, mask, by):
            return IrcMessage("MODE", (channel(room), "+b", irc_mask(mask)), source(by))
        case BanLifted(room, mask, by):
            params = (channel(room), "-b", irc_mask(mask))
            return IrcMessage("MODE", params, source(by) if by else SERVER)
        case MuteSet(room, nick, by, _, duration):
            how = f" for {duration} s" if duration else ""
            return IrcMessage("NOTICE", (channel(room), f"{nick} is muted{how} by {by}"), SERVER)
        case MuteLifted(room, nick):
            return IrcMessage("NOTICE", (channel(room), f"{nick} may speak again"), SERVER)
    return None


def mode_params(change: str, modes: object) -> tuple[str, ...]:
    """``+kl-m`` and the arguments of its ``+k`` and ``+l`` (from the
    room's ``modes`` after the change)."""
    args: list[str] = []
    sign = ""
    for char in change:
        if char in "+-":
            sign = char
        elif sign == "+" and char == "k":
            args.append(str(getattr(modes, "key", "") or "*"))
        elif sign == "+" and char == "l":
            args.append(str(getattr(modes, "limit", "") or "0"))
    return (change, *args)


def quit_line(nick: str, reason: str, *, account: bool = False) -> IrcMessage:
    """A member's connection ended: one QUIT for whoever shares a room with it."""
    return IrcMessage("QUIT", (reason or "Quit",), source_of(nick, account=account))


def _role_mode(room: str, nick: str, role: str, by: str | None) -> IrcMessage:
    """A role given as the channel modes that mean it: ``+o nick``; back to
    ``member`` takes the others away (``-qov nick nick nick``)."""
    new = Role.of(role)
    params: tuple[str, ...]
    if new is Role.MEMBER:
        letters = "".join(ROLE_MODES[r] for r in (Role.OP, Role.VOICE))
        params = (channel(room), "-" + letters, nick, nick)
    else:
        params = (channel(room), "+" + ROLE_MODES[new], nick)
    return IrcMessage("MODE", params, by or SERVER)


# -- masks --------------------------------------------------------------------


def chatd_mask(text: str) -> Mask:
    """An IRC ban mask as chatd's (BadMask if it has no chatd form).

    ``nick``, ``nick!*@*``: the nickname; ``$a:name`` (the account extban)
    or ``*!name@chatd/account``: the account; ``*!*@ADDRESS[/PREFIX]``: the
    address. chatd's own forms (``account:name``, ``ip:...``) pass too.
    """
    if text.startswith("$a:"):
        return parse_mask("account:" + text[3:])
    nick, bang, rest = text.partition("!")
    if not bang:
        return parse_mask(text)
    user, _, host = rest.partition("@")
    if host in ("*", "") and user in ("*", "") and "*" not in nick:
        return parse_mask("nick:" + nick)
    if nick == "*" and host == ACCOUNT_HOST and "*" not in user:
        return parse_mask("account:" + user)
    if nick == "*" and user in ("*", "") and "*" not in host:
        return parse_mask("ip:" + host)
    return parse_mask(text)  # BadMask, with chatd's explanation


def irc_mask(mask: str) -> str:
    """chatd's mask (``nick:bob``, ``account:bob``, ``ip:10.0.0.0/8``) as IRC writes it."""
    kind, _, value = mask.partition(":")
    if kind == "account":
        return "$a:" + value
    if kind == "ip":
        return "*!*@" + value
    return f"{value or kind}!*@*"


# -- lines ----------------------------------------------------------------------


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character boundary."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


def split_text(text: str, limit: int) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` bytes of UTF-8 (at least one)."""
    data = text.encode()
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # inside a character
            cut -= 1
        space = data.rfind(b" ", limit // 2, cut)
        if space > 0:
            cut = space + 1
        yield data[:cut].decode()
        data = data[cut:]
    yield data.decode()


def server_time(ts: float) -> str:
    """IRCv3 ``server-time``: ``2026-12-04T14:25:24.123Z``."""
    whole, ms = divmod(round(ts * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def wire(message: IrcMessage) -> bytes:
    """One message as the bytes of its line, whatever its parameters hold.

    A parameter that echoes what a client sent may be anything: CR, LF and
    NUL are dropped, a middle one that IRC cannot write (empty, with a
    space, starting with ``:``) becomes ``*`` and is cut to 64 bytes, and a
    last one too long for IRC's 512 bytes (a reason, a notice) is cut to
    fit. So this never fails, and never writes more than IRC allows.
    """
    params = [_clean_param(p) for p in message.params]
    for i, param in enumerate(params[:-1]):
        if not param or " " in param or param.startswith(":"):
            params[i] = "*"
        elif len(param) > 64:
            params[i] = fit(param, 64)
    if params != list(message.params):
        message = replace(message, params=tuple(params))
    data = (render_message(message) + "\r\n").encode()
    tags = data.find(b" ") + 1 if message.tags else 0
    over = len(data) - tags - MAX_LINE
    if over > 0 and params:
        last = params[-1]
        cut = fit(last, max(len(last.encode()) - over, 0))
        shorter = replace(message, params=(*params[:-1], cut))
        data = (render_message(shorter) + "\r\n").encode()
    return data


def _clean_param(param: str) -> str:
    if "\r" in param or "\n" in param or "\0" in param:
        return param.replace("\r", "").replace("\n", "").replace("\0", "")
    return param


class IrcCodec(Codec):
    """chatd's room events as the IRC lines one kind of IRC client is sent.

    One instance per flavour (the set of :data:`LINE_CAPS` a client
    negotiated), shared by every client of that flavour, so fan-out encodes
    once per flavour. What goes to one client only (numerics) its session
    writes; here it is b"" (see ``Member.encode``).
    """

    __slots__ = ("_registered", "caps")

    one_quit: ClassVar[bool] = True

    def __init__(self, caps: frozenset[str], registered: Registered) -> None:
        super().__init__(Format.TEXT)
        self.caps = caps & LINE_CAPS
        self._registered = registered

    def __repr__(self) -> str:
        return f"<IrcCodec {' '.join(sorted(self.caps)) or '-'}>"

    def decode(self, line: bytes) -> Command | None:
        raise UnknownCommand("IRC lines are read by the IRC session")

    def encode(self, event: Event) -> bytes:
        if type(event) is Message and not self.caps and not event.notice:
            # The hot path: a room line for a client without tags. chatd's
            # text holds no CR, LF or NUL (control characters are cleaned).
            sender = source_of(event.sender, account=self._registered(event.sender))
            body = action_text(event.text) if event.action else event.text
            data = f":{sender} PRIVMSG #{event.room} :{body}\r\n".encode()
            if len(data) <= MAX_LINE:
                return data
        return self.encode_tagged(event)

    def encode_tagged(self, event: Event, extra: Mapping[str, str] | None = None) -> bytes:
        """The event's lines, with ``extra`` tags for a client that takes tags."""
        match event:
            case Pong(token):
                return wire(IrcMessage("PONG", (SERVER, token), SERVER))
            case ServerPing(token):
                return wire(IrcMessage("PING", (token,)))
            case Bye(reason):
                return wire(IrcMessage("ERROR", (f"Closing link ({reason or 'Quit'})",)))
            case Shutdown(reason):
                return wire(IrcMessage("ERROR", (f"Closing link ({reason})",)))
        message = room_event(event, registered=self._registered)
        if message is None:
            return b""
        tags = self._tags(event, extra)
        if tags:
            message = IrcMessage(message.verb, message.params, message.source, tags)
        if message.verb == "JOIN" and "extended-join" in self.caps:
            nick = message.source.partition("!")[0] if message.source else ""
            account = nick if self._registered(nick) else "*"
            message = IrcMessage("JOIN", (*message.params, account, nick), message.source, tags)
        if message.verb not in ("PRIVMSG", "NOTICE"):
            return wire(message)
        return self._privmsg(message)

    def _tags(self, event: Event, extra: Mapping[str, str] | None) -> dict[str, str]:
        caps = self.caps
        tags: dict[str, str] = {}
        if extra:
            # The batch a line belongs to goes to whoever opened it (``batch``).
            tags.update(extra if "message-tags" in caps else {"batch": extra.get("batch", "")})
            tags = {key: value for key, value in tags.items() if value}
        if isinstance(event, Message | Direct):
            if "server-time" in caps:
                tags["time"] = server_time(event.ts)
            if "message-tags" in caps:
                tags["msgid"] = str(event.id)
            if "account-tag" in caps and self._registered(event.sender):
                tags["account"] = event.sender
        return tags

    def _privmsg(self, message: IrcMessage) -> bytes:
        """A PRIVMSG, split into as many as its text needs (IRC's 512 bytes)."""
        target, text = message.params
        verb = message.verb
        head = len(f":{message.source} {verb} {target} :\r\n".encode())
        action = ctcp_action(text)
        room = MAX_LINE - head - (9 if action is not None else 0)
        if len(text.encode()) <= MAX_LINE - head:
            return wire(message)
        pieces = split_text(action if action is not None else text, max(room, 64))
        out = []
        tags = message.tags
        for piece in pieces:
            body = action_text(piece) if action is not None else piece
            out.append(wire(IrcMessage(verb, (target, body), message.source, tags)))
            tags = {k: v for k, v in tags.items() if k != "msgid"}  # one message, one id
        return b"".join(out)
