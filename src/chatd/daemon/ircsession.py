"""An IRC connection's session: its lines in, its replies out, registration.

:class:`IrcSession` is a :class:`~chatd.daemon.session.Session` (the same
reader loop, outbox, flood control, slow-consumer protection and shutdown
as every other connection) that reads IRC lines instead of chatd's and
writes what happens as IRC writes it. Room events come from its shared
:class:`~chatd.protocol.ircmap.IrcCodec`; what is for this client alone
(numerics, which name it) from :meth:`IrcSession.encode`.

Registration follows the modern IRC documentation: ``CAP LS``/``REQ``
holds it open until ``CAP END``; ``PASS`` or SASL ``PLAIN`` log in to a
chatd account; once there is a nickname and a ``USER``, the nickname is
claimed as chatd claims any (``/nick``, or ``/login`` with a password),
and the welcome (001-005, LUSERS, MOTD) follows. The commands after it are
:mod:`chatd.daemon.irc`'s.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

from chatd import __version__
from chatd.core.caller import Pending
from chatd.core.dispatch import Dispatcher
from chatd.daemon.session import Session
from chatd.errors import BadLogin, ChatError, LineTooLong, NotRegistered
from chatd.protocol import (
    Command,
    Direct,
    Error,
    Event,
    History,
    LineFramer,
    Login,
    Message,
    Nick,
    Registered,
    TopicIs,
    check_nick,
    clean_text,
    is_number,
    name_key,
)
from chatd.protocol.irc import MAX_CLIENT_TAGS, MAX_LINE, BadMessage, IrcMessage, parse_message
from chatd.protocol.ircmap import LINE_CAPS, SERVER, IrcCodec, channel, source_of, wire
from chatd.protocol.ircreplies import FATAL, error_reply, isupport, motd, numeric, topic

if TYPE_CHECKING:
    from chatd.config import Settings
    from chatd.core.model import Room
    from chatd.core.rooms import RoomManager
    from chatd.store import Account
    from chatd.transports.base import Connection

logger = logging.getLogger(__name__)

#: The capabilities offered (``CAP LS``); sasl's value lists its mechanisms.
CAPABILITIES: dict[str, str] = {
    "account-tag": "",
    "away-notify": "",
    "batch": "",
    "draft/chathistory": "",
    "echo-message": "",
    "extended-join": "",
    "message-tags": "",
    "multi-prefix": "",
    "sasl": "PLAIN",
    "server-time": "",
}
#: IRC's formatting codes: colours with their numbers, then the switches.
_FORMATTING = re.compile(
    r"\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
#: The message of the day.
MOTD = (
    "Welcome to chatd: the same rooms for IRC, nc, the web and chatd connect.",
    "Every room is a channel: /join #general, or any #name (it is made if new).",
    "Register your nickname with a chatd client (/register), log in here with SASL or PASS.",
)
STARTED = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def check_nick_ok(name: str) -> bool:
    """Whether ``name`` is a nickname chatd accepts."""
    try:
        check_nick(name)
    except ChatError:
        return False
    return True


def strip_formatting(text: str) -> str:
    """Text as chatd keeps it: IRC's colour and style codes removed, then
    every other control character (as for every client)."""
    if "\x03" in text or "\x04" in text or not text.isprintable():
        text = _FORMATTING.sub("", text)
    return clean_text(text)


class IrcCodecs:
    """The daemon's IRC codecs, one per flavour, made when first asked for."""

    def __init__(self, registered: Callable[[str], bool]) -> None:
        self._registered = registered
        self._codecs: dict[frozenset[str], IrcCodec] = {}

    def get(self, caps: Iterable[str]) -> IrcCodec:
        key = frozenset(caps) & LINE_CAPS
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = IrcCodec(key, self._registered)
        return codec


@dataclasses.dataclass(slots=True)
class Context:
    """The IRC command being carried out, which its numerics name."""

    verb: str = ""
    target: str = ""
    mode: str = ""
    #: Errors are not answered (NOTICE: RFC 1459 sends no automatic reply).
    quiet: bool = False
    #: The nickname the command is about, which 401 names (KICK, INVITE, MODE +o).
    nick: str = ""
    #: The batch the command's answer is in (CHATHISTORY), until it ends.
    batch: str = ""


class IrcSession(Session):
    """One IRC client: registration, capabilities, and its replies."""

    __slots__ = (
        "_batch_seq",
        "_cap_open",
        "_caps",
        "_codecs",
        "_ctx",
        "_history_due",
        "_irc",
        "_password",
        "_sasl",
        "_sasl_account",
        "_user",
        "_wanted",
        "_welcomed",
    )

    chooses_rooms: ClassVar[bool] = True

    def __init__(
        self,
        manager: RoomManager,
        settings: Settings,
        conn: Connection,
        *,
        codecs: IrcCodecs,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        super().__init__(manager, settings, conn, dispatcher=dispatcher)
        self._codecs = codecs
        self._caps: set[str] = set()
        self._irc = self.codec = codecs.get(())
        self.echoes = False
        self._cap_open = False
        self._welcomed = False
        self._wanted: str | None = None
        self._user: str | None = None
        self._password: str | None = None
        #: SASL PLAIN in progress: the base64 received so far (None: none).
        self._sasl: str | None = None
        #: The account SASL proved, logged in to when registration completes.
        self._sasl_account: Account | None = None
        self._ctx = Context()
        self._batch_seq = 0
        #: Rooms joined by the command being run, whose history follows NAMES.
        self._history_due: list[Room] = []

    def __repr__(self) -> str:
        return f"<IrcSession {self.nick or '-'} {self.peer}>"

    @property
    def kind(self) -> str:
        return "ircs" if self._conn.transport == "tls" else "irc"

    @property
    def caps(self) -> frozenset[str]:
        return frozenset(self._caps)

    def _framer(self) -> LineFramer:
        # 512 bytes with CR LF, and the tags of a client that sends them.
        return LineFramer(MAX_LINE - 2 + MAX_CLIENT_TAGS, telnet=False, unterminated=False)

    def me(self) -> str:
        """This client's ``nick!user@host``."""
        nick = self.nick or self._wanted or "*"
        return source_of(nick, account=self.account is not None)

    def reader(self) -> str:
        """The first parameter of this client's numerics."""
        return self.nick or "*"

    def charge(self, tokens: int) -> None:
        # One IRC line runs several chatd commands: their costs add up.
        self._cost += tokens

    def numeric(self, number: str, *params: str) -> None:
        self.reply(numeric(number, self.reader(), *params))

    def send_line(self, verb: str, *params: str, source: str | None = SERVER) -> None:
        self.reply(wire(IrcMessage(verb, params, source)))

    # -- input ------------------------------------------------------------

    def _handle(self, item: bytes | ChatError) -> str | Pending | None:
        self._ctx = Context()  # what a refused line is answered as is its own
        if isinstance(item, ChatError):
            self.tell(Error.of(item))
            return None
        tags = item.find(b" ") + 1 if item.startswith(b"@") else 0
        if tags > MAX_CLIENT_TAGS or len(item) - tags > MAX_LINE - 2:
            why = f"lines are at most {MAX_LINE} bytes, and {MAX_CLIENT_TAGS} of tags"
            self.tell(Error.of(LineTooLong(why)))
            return None
        try:
            line = item.decode()
        except UnicodeDecodeError:
            self.send_line("FAIL", "*", "INVALID_UTF8", "lines must be UTF-8")
            return None
        try:
            message = parse_message(line)
        except BadMessage:
            if not line.startswith("@"):
                return None  # not a message: ignored, as IRC servers do
            try:  # a bad tag: the message without its tags (client tags go nowhere)
                message = parse_message(line.partition(" ")[2])
            except BadMessage:
                return None
        verb = message.command
        self._ctx = Context(verb, message.params[0] if message.params else "")
        try:
            return self.command(verb, message)
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None

    def command(self, verb: str, message: IrcMessage) -> str | Pending | None:
        """Run one IRC command (see IrcClient); here, registration's."""
        handler = self.REGISTRATION.get(verb)
        if handler is not None:
            return handler(self, message)
        raise NotRegistered("You have not registered")

    def run_chatd(self, command: Command) -> str | Pending | None:
        """Hand a chatd command to the dispatcher, as any client's."""
        return self._dispatcher.dispatch(self, command)

    async def settle(self, step: Callable[[], str | Pending | None]) -> str | None:
        """Run one chatd command to its end, waiting if it waits; an error
        is told (as Session._complete tells one), not raised."""
        try:
            result = step()
        except ChatError as exc:
            self.tell(Error.of(exc))
            return None
        if result is None or isinstance(result, str):
            return result
        return await self._complete(result)

    def context(self, verb: str, target: str = "", *, mode: str = "", nick: str = "") -> None:
        """The command that the next replies and errors answer."""
        self._ctx = Context(verb, target, mode, self._ctx.quiet, nick)

    # -- registration -----------------------------------------------------

    def _cap(self, message: IrcMessage) -> str | Pending | None:
        params = message.params
        sub = params[0].upper() if params else ""
        me = self.reader()
        if sub == "LS":
            if not self._welcomed:
                self._cap_open = True
            # Values (sasl=PLAIN) only for a client of CAP version 302 or later.
            version = params[1] if len(params) > 1 and is_number(params[1]) else "0"
            values = int(version[:6]) >= 302
            caps = " ".join(
                f"{c}={v}" if v and values else c for c, v in sorted(CAPABILITIES.items())
            )
            self.send_line("CAP", me, "LS", caps)
        elif sub == "LIST":
            self.send_line("CAP", me, "LIST", " ".join(sorted(self._caps)))
        elif sub == "REQ" and len(params) > 1:
            if not self._welcomed:
                self._cap_open = True
            self._request(params[1])
        elif sub == "END":
            self._cap_open = False
            return self._register()
        else:
            self.numeric("410", sub or "*", "Invalid CAP command")
        return None

    def _request(self, wanted: str) -> None:
        """``CAP REQ``: all of them or none."""
        names = wanted.split()
        adds = {n for n in names if not n.startswith("-")}
        drops = {n[1:] for n in names if n.startswith("-")}
        if not names or not (adds | drops) <= CAPABILITIES.keys():
            self.send_line("CAP", self.reader(), "NAK", wanted)
            return
        self._caps = (self._caps | adds) - drops
        self._irc = self.codec = self._codecs.get(self._caps)
        self.echoes = "echo-message" in self._caps
        self.send_line("CAP", self.reader(), "ACK", wanted)

    def _pass(self, message: IrcMessage) -> None:
        if self._welcomed:
            self.numeric("462", "You may not reregister")
        elif not message.params:
            self.numeric("461", "PASS", "Not enough parameters")
        else:
            self._password = message.params[-1]

    def _nick(self, message: IrcMessage) -> str | Pending | None:
        if not message.params or not message.params[0]:
            self.numeric("431", "No nickname given")
            return None
        wanted = message.params[0]
        self.context("NICK", wanted)
        check_nick(wanted, self._settings.max_nick_len)
        if self._welcomed:
            if wanted == self.nick:
                return None  # no change, nothing to tell
            return self.run_chatd(Nick(wanted))
        # Before the welcome a logged-in client (SASL) keeps its account's nickname.
        self._wanted = wanted
        return self._register()

    def _user_command(self, message: IrcMessage) -> str | Pending | None:
        if self._welcomed or self._user is not None:
            self.numeric("462", "You may not reregister")
            return None
        if len(message.params) < 4:
            self.numeric("461", "USER", "Not enough parameters")
            return None
        self._user = message.params[0]
        return self._register()

    def _register(self) -> str | Pending | None:
        """Claim the nickname once NICK, USER and CAP END are in."""
        if self._welcomed or self._cap_open or self._user is None:
            return None
        if self._sasl_account is not None:
            self.context("AUTHENTICATE", self._sasl_account.nick)
            return self._dispatcher.enter(self, self._sasl_account)
        if self.key is not None:
            self._welcome()
            return None
        if self._wanted is None:
            return None
        if self._password is not None:
            return self._pass_login(self._wanted, self._password)
        self.context("NICK", self._wanted)
        return self.run_chatd(Nick(self._wanted))

    async def _pass_login(self, wanted: str, secret: str) -> str | None:
        """``PASS``: log in to the account ``NICK`` names (or ``PASS
        account:password``'s); a wrong password (464) registers a guest."""
        account, colon, password = secret.partition(":")
        if not colon or not check_nick_ok(account):
            account, password = wanted, secret
        self.context("PASS", wanted)
        reason = await self.settle(lambda: self.run_chatd(Login(account, password)))
        self._password = None
        if reason is not None or self.key is not None or self.closing:
            return reason
        self.context("NICK", wanted)
        return await self.settle(lambda: self.run_chatd(Nick(wanted)))

    def _authenticate(self, message: IrcMessage) -> str | Pending | None:
        """SASL PLAIN: ``AUTHENTICATE PLAIN``, ``+``, then the credentials
        (base64, in pieces of 400 characters), before the welcome only."""
        self.context("AUTHENTICATE")
        if not message.params:
            self.numeric("461", "AUTHENTICATE", "Not enough parameters")
            return None
        arg = message.params[0]
        if self.account is not None or self._sasl_account is not None:
            self.numeric("907", "You have already authenticated using SASL")
            return None
        if "sasl" not in self._caps or self._welcomed:
            why = "negotiate sasl first" if not self._welcomed else "log in before the welcome"
            self.numeric("904", f"SASL authentication failed: {why}")
            return None
        if arg == "*":
            self._sasl = None
            self.numeric("906", "SASL authentication aborted")
            return None
        if self._sasl is None:
            if arg.upper() != "PLAIN":
                self.numeric("908", "PLAIN", "are available SASL mechanisms")
                self.numeric("904", "SASL authentication failed")
                return None
            self._sasl = ""
            self.send_line("AUTHENTICATE", "+", source=None)
            return None
        if len(arg) > 400 or len(self._sasl) + len(arg) > 1200:
            self._sasl = None
            self.numeric("905", "SASL message too long")
            return None
        self._sasl += "" if arg == "+" else arg
        if len(arg) == 400:
            return None  # more to come
        data, self._sasl = self._sasl, None
        try:
            authzid, account, password = base64.b64decode(data, validate=True).decode().split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self.numeric("904", "SASL authentication failed")
            return None
        if (authzid and name_key(authzid) != name_key(account)) or not check_nick_ok(account):
            raise BadLogin("wrong nickname or password")  # no logging in as someone else
        return self._sasl_check(account, password)

    async def _sasl_check(self, account: str, password: str) -> None:
        """Check the password now (900/903 or 904); log in to the account
        when registration completes, so that nothing reaches the client
        before its welcome."""
        found = await self._dispatcher.check_password(self, account, password)
        if self.closing:
            return
        self._sasl_account = found
        me = source_of(found.nick, account=True)
        self.numeric("900", me, found.nick, f"You are now logged in as {found.nick}")
        self.numeric("903", "SASL authentication successful")

    REGISTRATION: ClassVar[dict[str, Callable[[IrcSession, IrcMessage], str | Pending | None]]] = {
        "AUTHENTICATE": _authenticate,
        "CAP": _cap,
        "NICK": _nick,
        "PASS": _pass,
        "USER": _user_command,
    }

    def _welcome(self) -> None:
        """001-005, LUSERS and the MOTD: the client is registered."""
        self._welcomed = True
        nick, s = self.reader(), self._settings
        self.numeric("001", f"Welcome to the chatd IRC network, {self.me()}")
        self.numeric("002", f"Your host is {SERVER}, running version {__version__}")
        self.numeric("003", f"This server was created {STARTED}")
        self.numeric("004", SERVER, __version__, "io", "biklmnoqstv", "bkloqv")
        tokens = (
            "AWAYLEN=390",
            "CASEMAPPING=ascii",
            f"CHANLIMIT=#:{s.max_rooms_per_session}",
            "CHANMODES=b,k,l,imnst",
            f"CHANNELLEN={s.max_room_len + 1}",
            "CHANTYPES=#",
            "CHATHISTORY=100",
            "CLIENTTAGDENY=*",
            "KICKLEN=390",
            "MSGREFTYPES=msgid",
            f"NETWORK={SERVER}",
            f"NICKLEN={s.max_nick_len}",
            "PREFIX=(qov)~@+",
            "TARGMAX=JOIN:,KICK:4,NAMES:,NOTICE:4,PART:,PRIVMSG:4",
            "TOPICLEN=390",
            "UTF8ONLY",
        )
        self.reply(isupport(tokens, nick))
        self.lusers()
        self.reply(motd(nick, MOTD))
        self._keepalive = s.irc_ping_interval

    def lusers(self) -> None:
        manager = self._dispatcher.manager
        users = len(manager.members())
        self.numeric("251", f"There are {users} users and 0 invisible on 1 servers")
        self.numeric("254", str(manager.room_count), "channels formed")
        self.numeric("255", f"I have {users} clients and 1 servers")

    # -- output -------------------------------------------------------------

    def encode(self, event: Event) -> bytes:
        match event:
            case Error(code, text):
                return self._error(code, text)
            case Registered(nick, account):
                return self._registered(nick, account)
            case TopicIs(room, text, _, False):
                return topic(self.reader(), room, text)
            case Message(history=True) | Direct(history=True) if self._ctx.batch:
                return self._irc.encode_tagged(event, {"batch": self._ctx.batch})
            case History() if self._ctx.batch:
                return self._end_batch()
        return self.codec.encode(event)

    def _end_batch(self) -> bytes:
        ref, self._ctx.batch = self._ctx.batch, ""
        return wire(IrcMessage("BATCH", (f"-{ref}",), SERVER))

    def _error(self, code: str, text: str) -> bytes:
        ctx = self._ctx
        if ctx.quiet:
            return b""
        if ctx.batch:  # the answer it was to be: the batch ends, empty
            return self._end_batch() + self._error(code, text)
        if code == "no_such_nick" and ctx.nick:
            return numeric("401", self.reader(), ctx.nick, text)
        if code == "no_such_room" and ctx.verb in ("NAMES", "WHO"):
            # As IRC servers do for a channel they will not show: an empty list.
            number, end = (
                ("366", "End of /NAMES list.")
                if ctx.verb == "NAMES"
                else ("315", "End of WHO list")
            )
            return numeric(number, self.reader(), ctx.target or "*", end)
        if code == "bad_mask":
            return numeric("696", self.reader(), ctx.target or "*", "b", ctx.nick or "*", text)
        if ctx.verb == "AUTHENTICATE" and not self._sasl_account and code not in FATAL:
            return numeric("904", self.reader(), text)  # whatever stopped it
        if code == "banned" and ctx.verb != "JOIN":
            return numeric("465", self.reader(), text)  # a kline: the connection ends
        return error_reply(code, text, self.reader(), ctx.verb, ctx.target, ctx.mode)

    def _registered(self, nick: str, account: bool) -> bytes:
        out = b""
        if account and self._sasl_account is None:  # SASL said 900 already
            me = source_of(nick, account=True)
            out += numeric("900", nick, me, nick, f"You are now logged in as {nick}")
        elif not account and self._welcomed:
            out += numeric("901", nick, self.me(), "You are now logged out")
        if not self._welcomed and not self._cap_open and self._user is not None:
            self.reply(out)
            self._welcome()
            return b""
        return out

    # -- history -----------------------------------------------------------

    def show_history(self, room: Room, shown: tuple[Sequence[Message], bool] | None = None) -> None:
        """History on JOIN only for a client that asked for it
        (``batch`` and ``draft/chathistory``), after NAMES: the room's last
        messages (``shown`` is for clients that rejoin at login, which IRC
        clients do not)."""
        if {"batch", "draft/chathistory"} <= self._caps:
            self._history_due.append(room)

    def history_batches(self) -> None:
        """The history of the rooms just joined, each in a ``batch``."""
        due, self._history_due = self._history_due, []
        for room in due:
            if room.key not in self.rooms or not room.recent:
                continue
            self._batch_seq += 1
            ref = f"h{self._batch_seq}"
            self.send_line("BATCH", f"+{ref}", "chathistory", channel(room.name))
            for event in room.recent:
                hist = dataclasses.replace(event, history=True)
                self.reply(self._irc.encode_tagged(hist, {"batch": ref}))
            self.send_line("BATCH", f"-{ref}")
