"""The IRC gateway's queries and the replies that list things.

:class:`IrcQueries` sits between registration
(:mod:`chatd.daemon.ircsession`) and the commands that change things
(:mod:`chatd.daemon.irc`): it runs several chatd commands in turn for one
IRC line (:meth:`IrcQueries.steps`), finds the room a channel names, and
answers the questions an IRC client asks (NAMES, WHO, WHOIS, LIST, ISON,
USERHOST, AWAY, MOTD, LUSERS, VERSION, TIME), writing chatd's answers
(``who``, ``rooms``, ``mode``, ``bans``, invitations) as their numerics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from chatd import __version__
from chatd.core.caller import Pending
from chatd.core.model import Room
from chatd.core.rooms import RoomManager
from chatd.daemon.ircsession import MOTD, IrcSession, strip_formatting
from chatd.errors import BadArgs, NoSuchRoom, NotInRoom
from chatd.protocol import (
    BanList,
    Event,
    Invited,
    InviteSent,
    KillDone,
    KlineLifted,
    KlineList,
    KlineSet,
    ListRooms,
    ModeIs,
    ModLog,
    PasswordChanged,
    RoomList,
    Who,
    WhoList,
    name_key,
    render,
)
from chatd.protocol.framing import Format
from chatd.protocol.irc import IrcMessage
from chatd.protocol.ircmap import SERVER, channel, fit, irc_mask, room_of, source_of, wire
from chatd.protocol.ircreplies import listed, motd, names, numeric
from chatd.protocol.moderation import Role

#: Events for this client alone that IRC has no numeric for: a NOTICE with
#: chatd's own text.
_NOTICES = (KillDone, KlineSet, KlineLifted, KlineList, ModLog, PasswordChanged)

#: One chatd command of several that an IRC line runs (see IrcQueries.steps).
Step = Callable[[], str | Pending | None]


#: The most targets of one PRIVMSG, NOTICE or KICK (TARGMAX); more: 407.
MAX_TARGETS = 4


class IrcQueries(IrcSession):
    """An IRC connection's questions, and the numerics of chatd's answers."""

    __slots__ = ()

    def targets(
        self, text: str, limit: int | None = MAX_TARGETS, *, quiet: bool = False
    ) -> list[str]:
        """A comma list of channels or nicknames: empty items and repeats
        dropped; each one past the first costs a line of flood control, so
        one line naming many is paced as many lines are; past ``limit``,
        ``407``."""
        found: dict[str, str] = {}
        for item in text.split(","):
            if item:
                found.setdefault(name_key(item), item)
        chosen = list(found.values())
        if limit is not None and len(chosen) > limit:
            if not quiet:  # a NOTICE is never answered
                self.numeric("407", chosen[limit], f"Too many targets: at most {limit}")
            chosen = chosen[:limit]
        self.charge(max(len(chosen) - 1, 0))
        return chosen

    async def steps(self, steps: Iterable[Step]) -> str | None:
        """Run several chatd commands in turn; an error answers its own step."""
        for step in steps:
            if self.closing:
                return None
            if (reason := await self.settle(step)) is not None:
                return reason
        return None

    def in_room(self, name: str) -> Room:
        """The channel as a room this client is in (made current), else an error."""
        bare = room_of(name)
        room = self.rooms.get(name_key(bare)) if bare else None
        if room is not None:
            self.current = room
            return room
        live = self._dispatcher.manager.live(bare) if bare else None
        if live is not None and not self._dispatcher.manager.moderator.hidden(live, self):
            raise NotInRoom("You're not on that channel")
        raise NoSuchRoom("No such channel")

    def _visible(self, chan: str) -> Room:
        """A channel this client may look at: one it is in, or one not secret."""
        try:
            return self.in_room(chan)
        except NotInRoom:
            live = self._dispatcher.manager.live(room_of(chan) or "")
            assert live is not None
            return live

    def _names(self, message: IrcMessage) -> str | Pending | None:
        if not message.params:
            self.numeric("366", "*", "End of /NAMES list.")
            return None
        chans = self.targets(message.params[0], limit=None)
        if not chans:
            raise BadArgs("Not enough parameters")
        return self.steps(self._names_step(chan) for chan in chans)

    def _names_step(self, chan: str) -> Step:
        def who() -> str | Pending | None:
            self.context("NAMES", chan)
            room = room_of(chan)
            if room is None:
                self.numeric("366", chan, "End of /NAMES list.")
                return None
            return self.run_chatd(Who(room))

        return who

    def _list(self, message: IrcMessage) -> str | Pending | None:
        self.context("LIST", message.params[0] if message.params else "")
        return self.run_chatd(ListRooms())

    def _away_command(self, message: IrcMessage) -> None:
        """AWAY: kept in the room model's book, cluster-wide (see
        chatd.core.away), which tells the IRC clients sharing a channel."""
        text = strip_formatting(message.params[0]) if message.params else ""
        away = fit(text, 390) or None
        if away is None:
            self.numeric("305", "You are no longer marked as being away")
        else:
            self.numeric("306", "You have been marked as being away")
        self._dispatcher.manager.away.set(self, away)

    async def _whois(self, message: IrcMessage) -> None:
        params = message.params
        if not params:
            self.numeric("431", "No nickname given")
            return
        nick = params[-1]
        manager = self._dispatcher.manager
        person = await manager.bus.person(nick)
        if person is None:
            self.numeric("401", nick, "No such nick/channel")
            self.numeric("318", nick, "End of /WHOIS list.")
            return
        account = person.account is not None
        user, _, host = source_of(person.nick, account=account).partition("!")[2].partition("@")
        self.numeric("311", person.nick, user, host, "*", person.nick)
        chans = []
        for key in sorted(person.rooms):
            room = manager.live(key)
            if room is not None and not manager.moderator.hidden(room, self):
                chans.append(channel(room.name))
        if chans:
            self.reply(listed("319", self.reader(), person.nick, items=chans))
        self.numeric("312", person.nick, SERVER, "chatd")
        if person.oper:
            self.numeric("313", person.nick, "is an IRC operator")
        if account:
            self.numeric("330", person.nick, person.nick, "is logged in as")
        if (away := manager.away.get(person.nick)) is not None:
            self.numeric("301", person.nick, away)
        self.numeric("318", person.nick, "End of /WHOIS list.")

    async def _ison(self, message: IrcMessage) -> None:
        found = []
        for nick in " ".join(message.params).split()[:64]:
            person = await self._dispatcher.manager.bus.person(nick)
            if person is not None:
                found.append(person.nick)
        self.reply(listed("303", self.reader(), items=found))

    async def _userhost(self, message: IrcMessage) -> None:
        found = []
        for nick in message.params[:5]:
            person = await self._dispatcher.manager.bus.person(nick)
            if person is not None:
                away = self._dispatcher.manager.away.get(person.nick) is not None
                me = source_of(person.nick, account=person.account is not None)
                found.append(
                    person.nick
                    + ("*" if person.oper else "")
                    + "="
                    + ("-" if away else "+")
                    + me.partition("!")[2]
                )
        self.numeric("302", " ".join(found))

    def _who(self, message: IrcMessage) -> str | Pending | None:
        mask = message.params[0] if message.params else "*"
        self.context("WHO", mask)
        room = room_of(mask)
        if room is not None:
            return self.run_chatd(Who(room))
        return self._who_nick(mask)

    async def _who_nick(self, mask: str) -> None:
        person = await self._dispatcher.manager.bus.person(mask) if mask != "*" else None
        if person is not None:
            self.reply(self._who_line("*", person.nick, "member"))
        self.numeric("315", mask, "End of WHO list")

    def _motd(self, message: IrcMessage) -> None:
        self.reply(motd(self.reader(), MOTD))

    def _lusers(self, message: IrcMessage) -> None:
        self.lusers()

    def _version(self, message: IrcMessage) -> None:
        self.numeric("351", f"chatd-{__version__}", SERVER, "the chatd IRC gateway")

    def _time(self, message: IrcMessage) -> None:
        self.numeric("391", SERVER, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))

    def encode(self, event: Event) -> bytes:
        match event:
            case WhoList(room, nicks, roles):
                return self._who_list(room, nicks, roles)
            case RoomList(rooms):
                return self._room_list(rooms)
            case ModeIs(room, None, _, modes):
                args = [a for a in (modes.key, modes.limit) if a is not None]
                flags = "+n" + modes.flags()[1:]
                return numeric("324", self.reader(), channel(room), flags, *map(str, args))
            case BanList(room, bans):
                out = [
                    numeric(
                        "367",
                        self.reader(),
                        channel(room),
                        irc_mask(b.mask),
                        b.by or SERVER,
                        str(int(b.since)),
                    )
                    for b in bans
                ]
                out.append(numeric("368", self.reader(), channel(room), "End of channel ban list"))
                return b"".join(out)
            case InviteSent(room, nick):
                return numeric("341", self.reader(), nick, channel(room))
            case Invited(room, sender):
                me = self.reader()
                account = self._dispatcher.manager.store.is_registered(sender)
                return wire(
                    IrcMessage("INVITE", (me, channel(room)), source_of(sender, account=account))
                )
            case _ if isinstance(event, _NOTICES):
                text = render(event, Format.TEXT).decode().rstrip("\n")
                return b"".join(
                    wire(IrcMessage("NOTICE", (self.reader(), fit(line, 400)), SERVER))
                    for line in text.splitlines()
                )
        return super().encode(event)

    def _who_list(self, room: str, nicks: tuple[str, ...], roles: tuple[str, ...]) -> bytes:
        live = self._dispatcher.manager.live(room)
        if self._ctx.verb == "WHO":
            lines = [
                self._who_line(channel(room), n, r)
                for n, r in zip(nicks, roles or ("",) * len(nicks), strict=True)
            ]
            lines.append(numeric("315", self.reader(), self._ctx.target, "End of WHO list"))
            return b"".join(lines)
        secret = live is not None and live.rules.modes.secret
        return names(self.reader(), room, nicks, roles, secret=secret)

    def _who_line(self, chan: str, nick: str, role: str) -> bytes:
        manager = self._dispatcher.manager
        account = manager.store.is_registered(nick)
        user, _, host = source_of(nick, account=account).partition("!")[2].partition("@")
        peer = manager.find(nick)
        flags = "G" if manager.away.get(nick) is not None else "H"
        if peer is not None and peer.oper:
            flags += "*"
        if role and role != "member":
            flags += Role.of(role).prefix
        return numeric("352", self.reader(), chan, user, host, SERVER, nick, flags, f"0 {nick}")

    def _room_list(self, rooms: tuple[tuple[str, int], ...]) -> bytes:
        manager = self._dispatcher.manager
        wanted = {name_key(room_of(c) or c) for c in self._ctx.target.split(",") if c}
        out = [numeric("321", self.reader(), "Channel", "Users  Name")]
        for name, count in rooms:
            if wanted and name_key(name) not in wanted:
                continue
            live = manager.live(name)
            text = fit(live.topic, 390) if live is not None else ""
            out.append(numeric("322", self.reader(), channel(name), str(count), text))
        out.append(numeric("323", self.reader(), "End of /LIST"))
        return b"".join(out)


def tell_away(manager: RoomManager, nick: str, text: str | None, rooms: list[str]) -> None:
    """``away-notify``: ``nick``'s AWAY state to the IRC clients here that
    share one of ``rooms`` with it and asked for it (a listener of the room
    model's AwayBook: on an AWAY here or on another node, and after a JOIN)."""
    source = source_of(nick, account=manager.store.is_registered(nick))
    line = wire(IrcMessage("AWAY", (text,) if text else (), source))
    told: set[IrcSession] = set()
    key = name_key(nick)
    for room_key in rooms:
        room = manager.live(room_key)
        for member in room.members if room is not None else ():
            if (
                isinstance(member, IrcSession)
                and member.key != key
                and member not in told
                and "away-notify" in member.caps
            ):
                told.add(member)
                member.deliver(line)
