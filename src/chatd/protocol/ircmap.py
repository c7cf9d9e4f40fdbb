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
  QUIT, once, to everyone sharing a room with it (the front-end collects
  those): :func:`room_event` gives the PART form, :func:`quit_line` the QUIT.
"""

from __future__ import annotations

from chatd.protocol.events import (
    Direct,
    Event,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Notice,
    RoleIs,
    TopicIs,
)
from chatd.protocol.irc import IrcMessage
from chatd.protocol.moderation import Role

#: The host part of a guest's and an account's source.
GUEST_HOST = "chatd/guest"
ACCOUNT_HOST = "chatd/account"

#: The channel mode letter of each role (``~`` q, ``@`` o, ``+`` v).
ROLE_MODES = {Role.OWNER: "q", Role.OP: "o", Role.VOICE: "v"}


def source_of(nick: str, *, account: bool = False) -> str:
    """The ``nick!user@host`` of a member."""
    if account:
        return f"{nick}!{nick}@{ACCOUNT_HOST}"
    return f"{nick}!~{nick}@{GUEST_HOST}"


def channel(room: str) -> str:
    """The IRC channel of a chatd room."""
    return "#" + room


def room_of(name: str) -> str | None:
    """The chatd room of an IRC channel name (None: not one of chatd's)."""
    return name[1:] if name.startswith("#") and len(name) > 1 else None


def action_text(text: str) -> str:
    """A ``/me`` as a CTCP ACTION."""
    return f"\x01ACTION {text}\x01"


def ctcp_action(text: str) -> str | None:
    """The action in a CTCP ACTION message (None: the text is not one)."""
    if text.startswith("\x01ACTION ") and len(text) > 8:
        return text[8:].removesuffix("\x01")
    return None


def room_event(event: Event, *, accounts: frozenset[str] = frozenset()) -> IrcMessage | None:
    """The IRC line of a chatd event that goes to a room's members, a DM or
    a wall; None for an event IRC has no line for (the front-end answers
    those commands with numerics). ``accounts``: the lower-case nicknames
    logged in to accounts, for their sources."""

    def source(nick: str) -> str:
        return source_of(nick, account=nick.lower() in accounts)

    match event:
        case Message(room=room, sender=sender, text=text, action=action):
            body = action_text(text) if action else text
            return IrcMessage("PRIVMSG", (channel(room), body), source(sender))
        case Direct(sender=sender, to=to, text=text):
            return IrcMessage("PRIVMSG", (to, text), source(sender))
        case Joined(room, nick):
            return IrcMessage("JOIN", (channel(room),), source(nick))
        case Left(room, nick, reason):
            params = (channel(room), reason) if reason else (channel(room),)
            return IrcMessage("PART", params, source(nick))
        case NickChanged(old, new):
            return IrcMessage("NICK", (new,), source(old))
        case TopicIs(room, topic, by, True):
            return IrcMessage("TOPIC", (channel(room), topic), source(by or "server"))
        case Kicked(room, nick, by, reason):
            return IrcMessage("KICK", (channel(room), nick, reason or by), source(by))
        case RoleIs(room, nick, role, by):
            return _role_mode(room, nick, role, source(by) if by else None)
        case Notice(sender, text):
            return IrcMessage("NOTICE", ("*", f"[{sender}] {text}"), source(sender))
    return None


def quit_line(nick: str, reason: str, *, account: bool = False) -> IrcMessage:
    """A member's connection ended: one QUIT for whoever shares a room with it."""
    return IrcMessage("QUIT", (reason or "Quit",), source_of(nick, account=account))


def _role_mode(room: str, nick: str, role: str, by: str | None) -> IrcMessage:
    """A role given as the channel modes that mean it: ``+o nick``; back to
    ``member`` takes the others away (``-ov nick nick``)."""
    new = Role.of(role)
    params: tuple[str, ...]
    if new is Role.MEMBER:
        letters = "".join(ROLE_MODES[r] for r in (Role.OP, Role.VOICE))
        params = (channel(room), "-" + letters, nick, nick)
    else:
        params = (channel(room), "+" + ROLE_MODES[new], nick)
    return IrcMessage("MODE", params, by or "chatd")
