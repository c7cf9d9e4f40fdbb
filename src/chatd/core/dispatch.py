"""The dispatcher: what each command does.

A session frames a line, its codec parses it into a
:class:`~chatd.protocol.Command`, and :meth:`Dispatcher.dispatch` carries it
out against the :class:`~chatd.core.rooms.RoomManager` (which changes the
state and fans events out), the store and the
:class:`~chatd.core.bus.Bus`. Answers go back as events through the
:class:`Caller`, the small interface a connection implements: ``tell`` an
event, ``reply``/``deliver`` bytes its codec made, and the return value
that ends the connection. Nothing here knows about sockets, framing, text
or JSON, or WebSocket frames.

Most commands finish at once. One that must wait (for the store, the bus,
or a password hash) comes back as a coroutine, which the session awaits
before it takes its next line: a connection's commands run in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Sequence

from chatd.config import Settings
from chatd.core.accounts import Auth
from chatd.core.caller import Caller, Pending
from chatd.core.model import Member, stored_event
from chatd.core.reading import Reading
from chatd.core.rooms import RoomManager
from chatd.core.rules import principal
from chatd.errors import (
    BadArgs,
    BadLogin,
    Banned,
    ChatError,
    LoginThrottled,
    NickRegistered,
    NotInRoom,
    NotLoggedIn,
    NotRegistered,
    StorageUnavailable,
    TooManySessions,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Answer,
    Bye,
    Command,
    Create,
    Error,
    Help,
    HelpText,
    History,
    Join,
    KeepAlive,
    KickSession,
    Leave,
    ListRooms,
    ListSessions,
    Login,
    Logout,
    MarkRead,
    Me,
    Message,
    Moderation,
    Msg,
    Nick,
    Passwd,
    PasswordChanged,
    Ping,
    Pong,
    Quit,
    Register,
    RoomList,
    Say,
    Search,
    SessionEntry,
    SessionList,
    SetFormat,
    ShowHistory,
    ShowUnread,
    Topic,
    Who,
    check_nick,
    check_room,
    name_key,
)
from chatd.store import Account, AccountRooms, StoreError, dm_key

logger = logging.getLogger(__name__)


class Dispatcher:
    """Carries out commands: one per daemon, shared by every connection."""

    def __init__(self, manager: RoomManager, settings: Settings, auth: Auth | None) -> None:
        self.manager = manager
        self.settings = settings
        self.auth = auth
        #: /read, /unread, /search, and what a login is shown of its rooms.
        self.reading = Reading(manager)

    def dispatch(self, caller: Caller, command: Command) -> str | Pending | None:
        """Carry out one command; return a reason when the connection should
        end, or a coroutine to await when the command must wait."""
        if type(command) is Say and caller.key is not None and not self._messages_may_wait():
            # Most commands are lines of chat: they go first, past the
            # matching below (the same as _registered, then _send).
            self.manager.say(caller, command.text, notice=command.notice)
            return None
        match command:
            case SetFormat(fmt):
                caller.set_format(fmt)
            case Ping(token):
                # After everything this connection said is stored and
                # delivered, in its place among the replies.
                seq = caller.begin_op()
                pong = caller.encode(Pong(token))
                self.manager.barrier(lambda: caller.end_op(seq, pong))
            case KeepAlive(interval):
                caller.set_keepalive(interval)
            case Answer():
                pass  # any input answers a ping; this one runs nothing
            case Help():
                caller.tell(HelpText())
            case Quit(reason) if caller.ops_pending():
                return self._quit_after(caller, reason)  # the messages before it go out first
            case Quit(reason):
                caller.tell(Bye(reason))
                return f"quit: {reason}" if reason else "quit"
            case Say(text) if caller.key is None:
                # The classic greeting: a bare first line is the nickname.
                return self.dispatch(caller, Nick(check_nick(text.strip())))
            case Nick(name) if len(name) > self.settings.max_nick_len:
                check_nick(name, self.settings.max_nick_len)
            case Create(room) | Join(room) if len(room) > self.settings.max_room_len and not (
                isinstance(command, Join) and self.manager.is_live(room)
            ):
                check_room(room, self.settings.max_room_len)  # a new room's name
            case Nick(name):
                return self._nick(caller, name)
            case Login(nick, password):
                return self._login(caller, nick, password)
            case _ if caller.key is None:
                raise NotRegistered(
                    "choose a nickname first: type it, /nick NAME, or /login NICK PASSWORD"
                )
            case _:
                return self._registered(caller, command)
        return None

    def _registered(self, caller: Caller, command: Command) -> str | Pending | None:
        """The commands of a connection that has a nickname."""
        manager = self.manager
        match command:
            case Say() | Me() | Msg() if self._messages_may_wait():
                return self._when_clear(caller, command)
            case Say() | Me() | Msg():
                return self._send(caller, command)
            case Create(room) if manager.is_live(room):
                manager.join(caller, room, create=True)
            case Join(room, key) if manager.is_live(room):
                manager.join(caller, room, password=key)
            case Create(room):
                return self._join_stored(caller, room, create=True)
            case Join(room, key):
                return self._join_stored(caller, room, create=False, key=key)
            case Leave(room):
                manager.leave(caller, room)
            case ListRooms(watch):
                if watch is not None:
                    manager.watch_rooms(caller, watch)  # before the list: nothing falls between
                return self._rooms(caller)
            case Who(room):
                return self._who(caller, room)
            case Topic(text):
                if text is None:
                    caller.tell(manager.topic_of(caller))
                else:
                    manager.set_topic(caller, text)
            case Register(password):
                return self._register_account(caller, password)
            case Logout() | ListSessions() | KickSession() if caller.account is None:
                raise NotLoggedIn("you are not logged in")
            case Logout(everywhere) if everywhere:
                return self._logout_everywhere(caller)
            case Logout() if caller.ops_pending():
                return self._logout_after(caller)  # the messages before it are delivered first
            case Logout():
                self._logout(caller)
            case ListSessions():
                return self._sessions(caller)
            case KickSession(session_id):
                return self._kick_session(caller, session_id)
            case MarkRead(target, message_id):
                return self.reading.mark_read(caller, target, message_id)
            case ShowUnread():
                return self.reading.unread(caller)
            case Search():
                return self.reading.search(caller, command)
            case Passwd(old, new):
                return self._passwd(caller, old, new)
            case ShowHistory():
                return self._history(caller, command)
            case _ if isinstance(command, Moderation):
                return manager.moderator.run(caller, command)
        return None

    # -- messages ------------------------------------------------------------

    def _send(self, caller: Caller, command: Say | Me | Msg) -> Pending | None:
        """A room message or a DM: stored, then delivered (RoomManager)."""
        match command:
            case Say(text, notice):
                self.manager.say(caller, text, notice=notice)
            case Me(text):
                self.manager.say(caller, text, action=True)
            case Msg(nick, text, notice):
                return self._direct(caller, nick, text, notice)
        return None

    def _messages_may_wait(self) -> bool:
        """The store window is full or some reader is behind: a message goes
        through _when_clear, which finds out whether it must wait."""
        manager = self.manager
        return manager.window.full or manager.pushback.anyone_behind

    async def _direct(self, caller: Caller, nick: str, text: str, notice: bool = False) -> None:
        await self.manager.bus.direct(caller, nick, text, notice=notice)

    async def _when_clear(self, caller: Caller, command: Say | Me | Msg) -> str | None:
        """Run a message once the store window has room and no reader of it
        that is behind but still reading holds it back.

        The sender waits, and so TCP pushes back on it: a burst from one
        group commit never grows the readers' outboxes past the window, and
        a reader a little slower than the talkers is waited for, not cut.
        """
        manager = self.manager
        pushback, loop = manager.pushback, asyncio.get_running_loop()
        to = command.nick if isinstance(command, Msg) else None
        held = False
        try:
            while not caller.closing:
                if manager.window.full:
                    wake, timeout = manager.window.space(), None
                elif (wait := pushback.backpressure(caller, to, loop.time())) > 0:
                    wake, timeout = pushback.relief(), wait
                    if not held:
                        held = True
                        pushback.hold(loop.time(), True)
                else:
                    break
                await caller.wait_for(wake, timeout)
        finally:
            if held:
                pushback.hold(loop.time(), False)
        if caller.closing:
            return None
        pending = self._send(caller, command)
        if pending is not None:
            await pending
        return None

    async def _quit_after(self, caller: Caller, reason: str) -> str:
        """/quit after messages still on their way to the store: they and their
        echoes go out first (within the shutdown grace), then the goodbye."""
        await caller.ops_settled(self.settings.shutdown_grace)
        caller.tell(Bye(reason))
        return f"quit: {reason}" if reason else "quit"

    # -- nicknames, rooms and queries -------------------------------------------

    async def _nick(self, caller: Caller, nick: str) -> str | None:
        """Choose or change a nickname, taken on the bus first (which may
        refuse it), then here (RoomManager.register or rename, which check
        it again: the bus may have waited)."""
        manager, bus = self.manager, self.manager.bus
        if not caller.oper and (refused := self._klined(caller, nick, caller.account is not None)):
            return refused
        key = name_key(nick)
        old = caller.key
        manager.check_rename(caller, nick)
        keep_account = caller.account is not None and key == caller.key
        await bus.claim(caller, nick, account=caller.account if keep_account else None)
        if caller.closing or caller.key != old:
            if manager.find(nick) is None and key != caller.key:
                bus.released(key)
            return None
        if old is None:
            manager.register(caller, nick)
        else:
            manager.rename(caller, nick)
        return None

    async def _join_stored(
        self,
        caller: Caller,
        room: str,
        *,
        create: bool,
        key: str | None = None,
        shown: tuple[Sequence[Message], bool] | None = None,
        make_current: bool = True,
    ) -> None:
        """Join a room that is not live here, made ready by the bus (its
        rules and history from the store)."""
        async with self.manager.bus.open(room, create=create) as opening:
            if caller.key is not None and not caller.closing:
                self.manager.join(
                    caller,
                    room,
                    create=opening.create,
                    history=opening.history,
                    password=key,
                    fresh=opening.fresh,
                    shown=shown,
                    make_current=make_current,
                )

    async def _rooms(self, caller: Caller) -> None:
        manager = self.manager
        rooms = await manager.bus.room_list()
        if not caller.oper:
            # Secret rooms: only their members see them.
            hidden = manager.moderator.hidden_rooms(caller)
            hidden |= await manager.store.secret_rooms() - set(caller.rooms)
            if hidden:
                rooms = RoomList(tuple(r for r in rooms.rooms if name_key(r[0]) not in hidden))
        if caller.account is not None and caller.rooms:
            counts = await self.reading.counts(caller)
            rooms = dataclasses.replace(
                rooms,
                unread=tuple(
                    (u.conversation, u.unread, u.mentions) for u in counts if u.room is not None
                ),
            )
        caller.tell(rooms)
        caller.charge(len(rooms.rooms) // 100)  # big answers cost more

    async def _who(self, caller: Caller, room: str | None) -> None:
        who = await self.manager.bus.who(caller, room)
        who = await self.manager.moderator.with_roles(caller, who)
        caller.tell(who)
        caller.charge(len(who.nicks) // 100)

    # -- accounts --------------------------------------------------------------

    def _need_auth(self) -> Auth:
        if self.auth is None:
            raise StorageUnavailable("accounts are not available on this server")
        return self.auth

    async def _register_account(self, caller: Caller, password: str) -> str | None:
        auth, store = self._need_auth(), self.manager.store
        nick = caller.nick or ""
        if caller.account is not None:
            raise NickRegistered(f"you are already logged in to {nick}")
        if store.is_registered(nick):
            raise NickRegistered(f"{nick} is already registered; /login {nick} PASSWORD")
        operators = self.manager.moderator.operators
        if not operators.oper_account(nick, False) and (
            refused := self._klined(caller, nick, True)
        ):
            return refused  # a kline on the account it would become
        password_hash = await auth.passwords.hash(password)
        try:
            account = await store.create_account(nick, password_hash)
        except StoreError as exc:
            raise StorageUnavailable(f"the account was not created: {exc}") from None
        if account is None:
            raise NickRegistered(f"{nick} is already registered; /login {nick} PASSWORD")
        logger.info("account registered: %s from %s", nick, caller.peer)
        if caller.nick == nick and not caller.closing:
            was = principal(caller)
            self.manager.account_created(caller, account.id)
            moderator = self.manager.moderator
            moderator.logged_in(
                caller, moderator.operators.oper_account(account.nick, account.oper), was
            )
        return None

    async def check_password(self, caller: Caller, nick: str, password: str) -> Account:
        """The account if ``password`` is right; else a delay and BadLogin."""
        auth, store = self._need_auth(), self.manager.store
        ip, key = caller.peer.rpartition(":")[0], name_key(nick)
        wait = auth.guard.attempt(ip, key)
        if wait > 0:
            raise LoginThrottled(f"too many failed logins; try again in {math.ceil(wait)} s")
        try:
            account = await store.account(nick)
        except StoreError as exc:
            raise StorageUnavailable(f"cannot check the password now: {exc}") from None
        if await auth.passwords.verify(account.password_hash if account else None, password):
            assert account is not None
            auth.guard.succeeded(ip, key)
            return account
        logger.info("failed login for %s from %s", nick, caller.peer)
        await caller.pause(auth.fail_delay)
        raise BadLogin("wrong nickname or password")

    async def _login(self, caller: Caller, nick: str, password: str) -> str | None:
        if caller.account is not None and caller.key == name_key(nick):
            raise NickRegistered(f"you are already logged in to {caller.nick}")
        account = await self.check_password(caller, nick, password)
        if caller.closing:
            return None
        return await self.enter(caller, account)

    async def enter(self, caller: Caller, account: Account) -> str | None:
        """Log ``caller`` in to ``account``, whose password it has proved
        (:meth:`check_password`): the account's nickname, its rooms."""
        manager = self.manager
        oper = manager.moderator.operators.oper_account(account.nick, account.oper)
        if not oper and (refused := self._klined(caller, account.nick, True)):
            return refused
        try:
            saved = await manager.store.account_rooms(account.id)
            markers = await manager.store.read_markers(account.id)
        except StoreError as exc:
            raise StorageUnavailable(f"cannot log in now: {exc}") from None
        if caller.closing:
            return None
        # What it is shown of each room it lands in at once: general, or the
        # rooms of the account's connections here (it joins them in the
        # same step as it joins the account, so that it is never one of
        # its connections without being in its rooms).
        holder = self._connected(caller, account)
        landing = [room.key for room in holder.rooms.values()] if holder is not None else []
        if caller.key is None and not caller.chooses_rooms:
            landing.append(DEFAULT_ROOM)
        shown = await self.reading.unread_histories(landing, markers, caller.chooses_rooms)
        if caller.closing:
            return None
        holder = self._connected(caller, account)
        if holder is None:
            await manager.bus.claim(
                caller, account.nick, account=account.id, takeover=True, guest=False
            )
            if caller.closing:
                return None
            holder = self._connected(caller, account)
        was = principal(caller) if caller.key is not None else None
        with manager.saved.rejoining(caller):
            manager.login(caller, account.nick, account.id, shown, saved.current)
            manager.moderator.logged_in(caller, oper, was)
            logger.info("login %s from %s (%s)", caller.nick, caller.peer, caller.session_id)
            if holder is None and not caller.chooses_rooms:
                await self._rejoin(caller, saved, markers)
        return None

    def _connected(self, caller: Caller, account: Account) -> Member | None:
        """A connection of ``account`` here that ``caller`` would join (None:
        there is none); raises TooManySessions if it has as many as it may."""
        holder = self.manager.find(account.nick)
        if holder is None or holder is caller or holder.account != account.id:
            return None
        if caller in self.manager.devices(holder):
            return None
        limit = self.settings.max_sessions_per_account
        if len(self.manager.devices(holder)) >= limit:
            raise TooManySessions(
                f"{account.nick} has {limit} sessions, the most allowed; "
                "/logout --all on one of them, or /kick-session ID"
            )
        return holder

    def _klined(self, caller: Caller, nick: str, account: bool) -> str | None:
        """A kline covers ``caller`` as ``nick``: it is told, and the
        connection ends (the reason); None if none does."""
        try:
            self.manager.moderator.operators.check_kline(caller, nick, account)
        except Banned as exc:
            logger.info("refused %s from %s: %s", nick, caller.peer, exc.text)
            caller.tell(Error.of(exc))
            return "banned from the server"
        return None

    async def _rejoin(
        self, caller: Caller, saved: AccountRooms, markers: dict[str, int] | None = None
    ) -> None:
        """Put a connection that just logged in back into its account's rooms.

        Each room is joined as by /join (created if gone), with what the
        account has not read of it (see :meth:`Reading.unread_history`); one that
        cannot be (a limit) is reported with its error and skipped. None of
        them becomes current on the way (a client takes the current room for
        the one on screen, and marks it read); then the account's current
        room is current again, the one ``current`` event.
        """
        manager = self.manager
        last: str | None = None  # the last room rejoined
        for name in saved.rooms:
            if caller.key is None or caller.closing:
                return
            key = name_key(name)
            if key in caller.rooms:
                continue
            try:
                shown = None
                if markers and key in markers and not caller.chooses_rooms:
                    shown = await self.reading.unread_history(key, markers[key])
                    if caller.key is None or caller.closing or key in caller.rooms:
                        continue
                if manager.is_live(name):
                    manager.join(caller, name, shown=shown, make_current=False)
                else:
                    check_room(name, self.settings.max_room_len)
                    await self._join_stored(
                        caller, name, create=False, shown=shown, make_current=False
                    )
                if key in caller.rooms:
                    last = name
            except ChatError as exc:
                caller.tell(Error.of(exc))
        current = saved.current
        if current is None or name_key(current) not in caller.rooms:
            current = last  # as if each rejoined room had been made current in turn
        if current is None and caller.current is None and caller.rooms:
            current = next(reversed(caller.rooms.values())).name  # general, say
        if (
            current is not None
            and name_key(current) in caller.rooms
            and (caller.current is None or caller.current.key != name_key(current))
            and caller.key is not None
            and not caller.closing
        ):
            manager.join(caller, current)  # already in it: only makes it current

    # -- sessions ------------------------------------------------------------------

    async def _sessions(self, caller: Caller) -> None:
        """``/sessions``: the account's connections, on every node."""
        assert caller.key is not None
        entries = await self.manager.bus.sessions(caller.key)
        if entries is None:
            entries = [
                SessionEntry(d.session_id, d.kind, d.address, d.since)
                for d in self.manager.devices(caller)
            ]
        caller.tell(
            SessionList(
                tuple(dataclasses.replace(e, current=e.id == caller.session_id) for e in entries)
            )
        )

    async def _kick_session(self, caller: Caller, session_id: str) -> None:
        """``/kick-session``: end another connection of the account, on any node."""
        assert caller.key is not None
        if session_id == caller.session_id:
            raise BadArgs("that is this session: /logout or /quit to end it")
        reason = f"ended by another session of {caller.nick}"
        manager = self.manager
        if not manager.end_session(caller.key, session_id, reason) and not (
            await manager.bus.end_session(caller.key, session_id, reason)
        ):
            raise BadArgs(f"no session {session_id[:40]} of {caller.nick}; /sessions lists them")
        if caller.key is not None and not caller.closing:
            await self._sessions(caller)

    async def _end_others(self, caller: Caller, reason: str) -> None:
        """Every other connection of the account ends, on every node."""
        assert caller.key is not None
        key, manager = caller.key, self.manager
        entries = await manager.bus.sessions(key)
        for device in list(manager.devices(caller)):
            if device is not caller:
                manager.end_session(key, device.session_id, reason)
        for entry in entries or ():
            if entry.id != caller.session_id:
                await manager.bus.end_session(key, entry.id, reason)

    def _logout(self, caller: Caller) -> None:
        self.manager.logout(caller)
        caller.logged_out()

    async def _logout_everywhere(self, caller: Caller) -> None:
        await self._end_others(caller, f"ended by another session of {caller.nick}")
        if caller.account is not None and not caller.closing:
            pending = self._registered(caller, Logout())
            if pending is not None and not isinstance(pending, str):
                await pending

    async def _logout_after(self, caller: Caller) -> None:
        """/logout after messages still on their way: they reach the rooms
        (and their echoes this connection) while it is still in them."""
        await caller.ops_settled(self.settings.shutdown_grace)
        if caller.account is not None and not caller.closing:
            self._logout(caller)

    async def _passwd(self, caller: Caller, old: str, new: str) -> None:
        auth, store = self._need_auth(), self.manager.store
        nick = caller.nick or ""
        if caller.account is None:
            raise NotLoggedIn("log in first: /passwd changes your account's password")
        await self.check_password(caller, nick, old)
        try:
            changed = await store.set_password(nick, await auth.passwords.hash(new))
        except StoreError as exc:
            raise StorageUnavailable(f"the password was not changed: {exc}") from None
        if not changed:
            raise NotLoggedIn(f"the account {nick} no longer exists")
        caller.tell(PasswordChanged(nick))

    # -- history ---------------------------------------------------------------

    async def _history(self, caller: Caller, command: ShowHistory) -> None:
        """Earlier messages of a room or of a private conversation, oldest first."""
        target = command.target
        room_name: str | None = None
        peer: str | None = None
        account: int | None = None
        if target is None:
            if caller.current is None:
                raise NotInRoom("you are in no room; /history ROOM or /join one")
            room_name = caller.current.name
            conversation = caller.current.key
        elif target.startswith("@"):
            if caller.account is None:
                raise NotLoggedIn("log in to read private messages back: /login NICK PASSWORD")
            peer, account = target[1:], caller.account
            conversation = dm_key(caller.nick or "", peer)
        else:
            room = caller.rooms.get(name_key(target))
            if room is None:
                raise NotInRoom(f"join #{target} to read its history")
            room_name, conversation = room.name, room.key
        try:
            messages, more = await self.manager.store.recent(
                conversation, command.count, command.before, account
            )
        except StoreError as exc:
            raise StorageUnavailable(str(exc)) from None
        # The newest that fit the outbox: a page never overflows it, and a
        # reader must be very slow to be cut for asking for one.
        budget, lines = caller.page_bytes, []
        for m in reversed(messages):
            data = caller.encode(stored_event(m, history=True))
            budget -= len(data)
            if budget < 0:
                more = True
                break
            lines.append((m.id, data))
        lines.reverse()
        for _, data in lines:
            caller.reply(data)
        before = lines[0][0] if more and lines else None
        caller.tell(History(room_name, peer, len(lines), more, before))
        caller.charge(len(lines) // 100)
