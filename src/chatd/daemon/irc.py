"""The IRC gateway's commands: IRC verbs as chatd's commands.

:class:`IrcClient` is the session of one IRC connection once registered
(:mod:`chatd.daemon.ircsession` does registration and the replies). Each
IRC command becomes the chatd commands that mean it, run by the same
:class:`~chatd.core.dispatch.Dispatcher` as every client's; the numerics
that answer it are written from the events chatd answers with. A command
that takes several channels or targets runs them one after another, in
order, so its replies come in order, and a ``PING`` after it is answered
after them (chatd's ``/ping`` barrier).

IRC has no current room: a command about ``#room`` (a message, a topic, a
kick, a mode) makes that room the session's current one first, which is
how chatd's room-scoped commands find it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

from chatd.core.caller import Pending
from chatd.daemon.ircquery import IrcQueries, Step
from chatd.daemon.ircsession import IrcSession, check_nick_ok, strip_formatting
from chatd.errors import (
    BadArgs,
    BadMode,
    ChatError,
    NoSuchRoom,
    NotInRoom,
    NotRegistered,
    UnknownCommand,
)
from chatd.protocol import (
    Ban,
    Invite,
    Join,
    Kick,
    Kill,
    Kline,
    Leave,
    ListBans,
    Me,
    Mode,
    Msg,
    Ping,
    Quit,
    Say,
    SetRole,
    ShowHistory,
    Topic,
    TopicIs,
    Unban,
    Unkline,
    Wall,
    Who,
    check_nick,
    check_room,
    is_number,
    name_key,
)
from chatd.protocol.irc import IrcMessage
from chatd.protocol.ircmap import (
    channel,
    chatd_mask,
    ctcp_action,
    fit,
    room_of,
)
from chatd.protocol.moderation import MODE_FLAGS, ModeChange, Role, mode_change, parse_duration

logger = logging.getLogger(__name__)

#: Commands an unregistered client may send.
_BEFORE_WELCOME = frozenset({"AUTHENTICATE", "CAP", "NICK", "PASS", "PING", "PONG", "QUIT", "USER"})

Handler = Callable[["IrcClient", IrcMessage], str | Pending | None]


class IrcClient(IrcQueries):
    """An IRC connection: its commands."""

    __slots__ = ()

    def command(self, verb: str, message: IrcMessage) -> str | Pending | None:
        handler = self.COMMANDS.get(verb)
        if handler is None:
            if not self._welcomed:
                raise NotRegistered("You have not registered")
            raise UnknownCommand("Unknown command")
        if not self._welcomed and verb not in _BEFORE_WELCOME:
            raise NotRegistered("You have not registered")
        return handler(self, message)

    # -- channels -------------------------------------------------------------

    def _join(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        if not params:
            raise BadArgs("Not enough parameters")
        if params[0] == "0":
            return self.steps(self._leave_step(room.name) for room in list(self.rooms.values()))
        chans = self.targets(params[0], limit=None)
        keys = params[1].split(",") if len(params) > 1 else []
        return self._join_all(chans, keys)

    async def _join_all(self, chans: list[str], keys: list[str]) -> str | None:
        for i, chan in enumerate(chans):
            key = keys[i] if i < len(keys) and keys[i] else None
            bare = room_of(chan)
            if bare is not None and name_key(bare) in self.rooms:
                continue  # already there: nothing, as IRC servers do
            reason = await self.steps([lambda c=chan, k=key: self._join_one(c, k)])  # type: ignore[misc]
            if reason is not None or self.closing:
                return reason
            room = room_of(chan)
            if room is None or name_key(room) not in self.rooms:
                continue
            joined = self.rooms[name_key(room)]
            self._dispatcher.manager.away.announce(self, [joined.key])
            self.context("NAMES", chan)
            reason = await self.steps([lambda r=joined.name: self.run_chatd(Who(r))])  # type: ignore[misc]
            if reason is not None:
                return reason
            self.history_batches()
        return None

    def _join_one(self, chan: str, key: str | None) -> str | Pending | None:
        self.context("JOIN", chan)
        room = room_of(chan)
        if room is None:
            raise NoSuchRoom("No such channel")
        check_room(
            room, self._settings.max_room_len if not self._dispatcher.manager.is_live(room) else 64
        )
        if name_key(room) in self.rooms:
            return None  # already there: nothing, as IRC servers do
        return self.run_chatd(Join(room, key))

    def _leave_step(self, name: str) -> Step:
        def leave() -> str | Pending | None:
            self.context("PART", channel(name))
            return self.run_chatd(Leave(name))

        return leave

    def _part(self, message: IrcMessage) -> str | Pending | None:
        if not message.params:
            raise BadArgs("Not enough parameters")
        steps = [self._part_step(chan) for chan in self.targets(message.params[0], limit=None)]
        if not steps:
            raise BadArgs("Not enough parameters")
        return self.steps(steps)

    def _part_step(self, chan: str) -> Step:
        def part() -> str | Pending | None:
            self.context("PART", chan)
            room = self.in_room(chan)
            return self.run_chatd(Leave(room.name))

        return part

    def _topic(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        if not params:
            raise BadArgs("Not enough parameters")
        if len(params) == 1:
            room = self._visible(params[0])
            self.tell(TopicIs(room.name, room.topic, room.topic_by))
            return None
        self.in_room(params[0])
        return self.run_chatd(Topic(fit(strip_formatting(params[1]), 390)))

    def _kick(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        if len(params) < 2:
            raise BadArgs("Not enough parameters")
        chan, reason = params[0], strip_formatting(params[2]) if len(params) > 2 else ""
        self.in_room(chan)
        steps = [self._kick_step(chan, nick, reason) for nick in self.targets(params[1])]
        if not steps:
            raise BadArgs("Not enough parameters")
        return self.steps(steps)

    def _kick_step(self, chan: str, nick: str, reason: str) -> Step:
        def kick() -> str | Pending | None:
            self.context("KICK", chan, nick=nick)
            self.in_room(chan)
            return self.run_chatd(Kick(nick, fit(reason, 390)))

        return kick

    def _invite(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        if len(params) < 2:
            raise BadArgs("Not enough parameters")
        nick, chan = params[0], params[1]
        self.context("INVITE", chan, nick=nick)
        room = self.in_room(chan)  # 403 for no such channel, 442 for one not joined
        target = self._dispatcher.manager.find(nick)
        if target is not None and room.key in target.rooms:
            self.numeric("443", target.nick or nick, chan, "is already on channel")
            return None
        return self.run_chatd(Invite(nick, room.name))

    # -- messages -------------------------------------------------------------

    def _privmsg(self, message: IrcMessage, *, notice: bool = False) -> str | Pending | None:
        params = message.params
        verb = "NOTICE" if notice else "PRIVMSG"
        if not params:
            if not notice:
                self.numeric("411", f"No recipient given ({verb})")
            return None
        if len(params) < 2 or not params[1]:
            if not notice:
                self.numeric("412", "No text to send")
            return None
        targets, text = self.targets(params[0], quiet=notice), params[1]
        if not targets:
            if not notice:
                self.numeric("411", f"No recipient given ({verb})")
            return None
        action = ctcp_action(text)
        if action is None and text.startswith("\x01"):
            return None  # CTCP other than ACTION: not carried between clients
        body = strip_formatting(action if action is not None else text)
        if not body:
            return None
        if len(targets) == 1:
            return self._send(targets[0], body, action is not None, notice)
        steps = [self._send_step(t, body, action is not None, notice) for t in targets]
        return self.steps(steps)

    def _send_step(self, target: str, text: str, action: bool, notice: bool) -> Step:
        return lambda: self._send(target, text, action, notice)

    def _send(self, target: str, text: str, action: bool, notice: bool) -> str | Pending | None:
        self._ctx.verb, self._ctx.target, self._ctx.quiet = "PRIVMSG", target, notice
        if target.startswith("#"):
            try:
                self.in_room(target)
            except NotInRoom:
                if not notice:
                    self.numeric("404", target, "Cannot send to channel")
                return None
            return self.run_chatd(Me(text) if action else Say(text, notice))
        if action:
            # chatd has no /me in private: the action is written out, as every
            # client shows it alike.
            text = f"* {self.nick} {text}"
        away = self._dispatcher.manager.away.get(target)
        if not notice and away is not None:
            self.numeric("301", target, away)
        return self.run_chatd(Msg(target, text, notice and not action))

    def _notice(self, message: IrcMessage) -> str | Pending | None:
        return self._privmsg(message, notice=True)

    # -- modes ----------------------------------------------------------------

    def _mode(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        if not params:
            raise BadArgs("Not enough parameters")
        target = params[0]
        if not target.startswith("#"):
            self._user_mode(target, params[1:])
            return None
        room = room_of(target)
        if room is None:
            raise NoSuchRoom("No such channel")
        if len(params) == 1:
            return self.run_chatd(Mode(room))
        return self.steps(self._mode_steps(target, params[1], list(params[2:])))

    def _user_mode(self, nick: str, words: tuple[str, ...]) -> None:
        if name_key(nick) != self.key:
            if self._dispatcher.manager.find(nick) is None:
                self.numeric("401", nick, "No such nick/channel")
            else:
                self.numeric("502", "Can't change mode for other users")
            return
        if not words:
            self.numeric("221", "+io" if self.oper else "+i")
            return
        sign = "+"
        for char in words[0]:
            if char in "+-":
                sign = char
            elif not (char == "i" and sign == "+"):
                # Everyone is +i (chatd lists people only by room); no other mode exists.
                self.numeric("501", "Unknown MODE flag")
                return

    def _mode_steps(self, chan: str, letters: str, args: list[str]) -> list[Step]:
        """``+o-v+kl bob ann key 20``: chatd's room modes in one step, then
        each role and ban in order. Arguments are taken in order, as IRC
        writes them (a key may look like anything, ``-i`` included)."""
        changes: dict[str, ModeChange] = {}  # one per letter, the last given
        later: list[Step] = []
        sign = "+"
        for char in letters:
            if char in "+-":
                sign = char
                continue
            on = sign == "+"
            if char in "ovq" or (char == "b" and args):
                arg = args.pop(0) if args else None
                later.append(self._member_mode_step(chan, char, on, arg))
            elif char == "b":
                later.append(self._ban_list_step(chan))
            elif char in MODE_FLAGS:
                arg = args.pop(0) if args and (on or char == "k") and char in "kl" else None
                if on and char in "kl" and arg is None:
                    later.append(self._refuse(chan, char, BadArgs("Not enough parameters")))
                    continue
                try:
                    changes[char] = mode_change(sign, char, arg)  # -k's key is not needed
                except BadMode as exc:
                    later.append(self._refuse(chan, char, exc))
            elif char == "n" and on:
                continue  # chatd rooms take messages from their members only: +n always
            else:
                why = f"is unknown mode char to me{' (+n is always set)' if char == 'n' else ''}"
                later.append(self._refuse(chan, char, BadMode(why)))
        if changes:
            later.insert(0, self._room_mode_step(chan, tuple(changes.values())))
        return later

    def _refuse(self, chan: str, char: str, exc: ChatError) -> Step:
        def refuse() -> None:
            self.context("MODE", chan, mode=char)
            raise exc

        return refuse

    def _room_mode_step(self, chan: str, changes: tuple[ModeChange, ...]) -> Step:
        def mode() -> str | Pending | None:
            self.context("MODE", chan, mode=changes[0].flag)
            return self.run_chatd(Mode(room_of(chan) or "", changes))

        return mode

    def _ban_list_step(self, chan: str) -> Step:
        def bans() -> str | Pending | None:
            self.context("MODE", chan, mode="b")
            self.in_room(chan)
            return self.run_chatd(ListBans())

        return bans

    def _member_mode_step(self, chan: str, char: str, on: bool, arg: str | None) -> Step:
        def member_mode() -> str | Pending | None:
            self.context("MODE", chan, mode=char, nick=arg or "")
            if arg is None:
                raise BadArgs("Not enough parameters")
            self.in_room(chan)
            if char == "b":
                mask = chatd_mask(arg)
                return self.run_chatd(Ban(mask) if on else Unban(mask))
            if char == "q":
                self.numeric("696", chan, "q", arg, "ownership is not given or taken by MODE")
                return None
            role = Role.OP if char == "o" else Role.VOICE
            return self.run_chatd(SetRole(check_nick(arg), role, on))

        return member_mode

    # -- people ---------------------------------------------------------------

    def _nick_change(self, message: IrcMessage) -> str | Pending | None:
        return self.REGISTRATION["NICK"](self, message)

    # -- the rest ---------------------------------------------------------------

    def _ping(self, message: IrcMessage) -> str | Pending | None:
        if not message.params:
            self.numeric("409", "No origin specified")
            return None
        return self.run_chatd(Ping(message.params[-1]))

    def _pong(self, message: IrcMessage) -> None:
        pass  # any line answers the server's PING

    def _quit(self, message: IrcMessage) -> str | Pending | None:
        reason = strip_formatting(message.params[0]) if message.params else ""
        return self.run_chatd(Quit(fit(reason, 300)))

    def _oper(self, message: IrcMessage) -> None:
        if self.oper:
            self.numeric("381", "You are now an IRC operator")
        else:
            self.numeric(
                "491", "chatd's operators are accounts: log in to one (SASL or PASS) instead"
            )

    def _kill(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        if not params:
            raise BadArgs("Not enough parameters")
        reason = strip_formatting(params[1]) if len(params) > 1 else ""
        return self.run_chatd(Kill(params[0], fit(reason, 300)))

    def _kline(self, message: IrcMessage) -> str | Pending | None:
        """``KLINE [minutes] mask [:reason]``."""
        params = list(message.params)
        duration = None
        if params and is_number(params[0]):
            minutes = int(params.pop(0))
            duration = parse_duration(f"{minutes}m") if minutes else None
        if not params:
            raise BadArgs("Not enough parameters")
        mask = chatd_mask(
            "*!" + params[0] if "@" in params[0] and "!" not in params[0] else params[0]
        )
        reason = strip_formatting(params[1]) if len(params) > 1 else ""
        return self.run_chatd(Kline(mask, duration, fit(reason, 300)))

    def _unkline(self, message: IrcMessage) -> str | Pending | None:
        if not message.params:
            raise BadArgs("Not enough parameters")
        return self.run_chatd(Unkline(chatd_mask(message.params[0])))

    def _wallops(self, message: IrcMessage) -> str | Pending | None:
        if not message.params:
            raise BadArgs("Not enough parameters")
        return self.run_chatd(Wall(strip_formatting(message.params[0])))

    def _chathistory(self, message: IrcMessage) -> str | Pending | None:
        """``CHATHISTORY LATEST target * N`` and ``BEFORE target msgid=ID N``."""
        params = message.params
        sub = params[0].upper() if params else ""
        if sub not in ("LATEST", "BEFORE") or len(params) < 4:
            return self._history_fail("INVALID_PARAMS", sub or "*", "LATEST * and BEFORE only")
        target, ref, count = params[1], params[2], params[3]
        before: int | None = None
        if sub == "LATEST" and ref != "*":
            return self._history_fail("INVALID_PARAMS", ref, "LATEST takes * only")
        if sub == "BEFORE":
            if not ref.startswith("msgid=") or not is_number(ref[6:]) or len(ref) > 24:
                return self._history_fail("INVALID_PARAMS", ref, "BEFORE takes msgid=ID")
            before = int(ref[6:])
        if not is_number(count) or not 1 <= int(count) <= 100:
            return self._history_fail("INVALID_PARAMS", count, "a count of 1-100")
        if target.startswith("#"):
            try:
                wanted = self.in_room(target).name
            except ChatError:
                return self._history_fail("INVALID_TARGET", sub, target, "not on that channel")
        elif not check_nick_ok(target):
            return self._history_fail("INVALID_TARGET", sub, target, "not a channel or a nickname")
        elif self.account is None:
            return self._history_fail("INVALID_TARGET", sub, target, "log in for private history")
        else:
            wanted = "@" + target
        self.context("CHATHISTORY", target)
        if "batch" in self._caps:
            self._batch_seq += 1
            self._ctx.batch = f"h{self._batch_seq}"
            self.send_line("BATCH", f"+{self._ctx.batch}", "chathistory", target)
        return self.run_chatd(ShowHistory(wanted, int(count), before))

    def _history_fail(self, code: str, *params: str) -> Pending | None:
        """CHATHISTORY refused (an IRCv3 standard reply); nothing more runs."""
        self.send_line("FAIL", "CHATHISTORY", code, *params)
        return None

    def _tagmsg(self, message: IrcMessage) -> None:
        """Tags alone (typing notifications and the like): chatd carries
        text, so they go nowhere."""

    COMMANDS: ClassVar[dict[str, Handler]] = {}

    # -- replies --------------------------------------------------------------


IrcClient.COMMANDS = {
    **IrcSession.REGISTRATION,
    "AWAY": IrcClient._away_command,
    "CHATHISTORY": IrcClient._chathistory,
    "TAGMSG": IrcClient._tagmsg,
    "INVITE": IrcClient._invite,
    "ISON": IrcClient._ison,
    "JOIN": IrcClient._join,
    "KICK": IrcClient._kick,
    "KILL": IrcClient._kill,
    "KLINE": IrcClient._kline,
    "LIST": IrcClient._list,
    "LUSERS": IrcClient._lusers,
    "MODE": IrcClient._mode,
    "MOTD": IrcClient._motd,
    "NAMES": IrcClient._names,
    "NICK": IrcClient._nick_change,
    "NOTICE": IrcClient._notice,
    "OPER": IrcClient._oper,
    "PART": IrcClient._part,
    "PING": IrcClient._ping,
    "PONG": IrcClient._pong,
    "PRIVMSG": IrcClient._privmsg,
    "QUIT": IrcClient._quit,
    "TIME": IrcClient._time,
    "TOPIC": IrcClient._topic,
    "UNKLINE": IrcClient._unkline,
    "USERHOST": IrcClient._userhost,
    "VERSION": IrcClient._version,
    "WALLOPS": IrcClient._wallops,
    "WHO": IrcClient._who,
    "WHOIS": IrcClient._whois,
}
