"""Room ownership and moderation, and the powers of server operators.

The :class:`Moderator` carries out the moderation commands (``/op``,
``/kick``, ``/ban``, ``/mode``, ``/kline`` ...) and answers the questions the
:class:`~chatd.core.rooms.RoomManager` asks on a join or a line (may this
member come in, speak, set the topic). Each room's authority is its
:class:`~chatd.core.rules.RoomRules`, kept on the room; the moderator is the
only code that changes it.

Every change is applied here in three steps, whichever daemon it comes from:

1. the rules are changed (and, for a registered room, saved whole);
2. :meth:`Moderator._apply` tells the local audience (the room, or its ops)
   and removes the local members the action evicts (a kick, a ban);
3. the bus carries the same step 2 to the other nodes of a cluster
   (:meth:`~chatd.core.bus.Bus.broadcast`), where :meth:`Moderator.arrived`
   runs it for their members. One daemon's bus carries nothing.

Server-wide bans (klines) are kept here, checked at connect, at login and
when a guest picks a nickname.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol

from chatd.core.bus import Bus, Person
from chatd.core.fanout import send_all
from chatd.core.model import Member, Room
from chatd.core.rules import (
    INVITE_TTL,
    MAX_BANS,
    MAX_MUTES,
    BanRecord,
    Grant,
    MuteRecord,
    RoomRules,
    principal,
    registered_rules,
)
from chatd.core.stats import Stats
from chatd.errors import (
    BadArgs,
    BadKey,
    BadMode,
    Banned,
    InviteOnly,
    ListFull,
    Muted,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    NotOp,
    NotOper,
    RoomFull,
    TooManyRooms,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Ban,
    BanLifted,
    BanList,
    BanSet,
    Error,
    Event,
    Invite,
    Invited,
    InviteSent,
    Kick,
    Kicked,
    Kill,
    KillDone,
    Kline,
    KlineLifted,
    KlineList,
    KlineSet,
    ListBans,
    ListKlines,
    LogEntry,
    Mask,
    Mode,
    ModeChange,
    ModeIs,
    Moderation,
    ModLog,
    Mute,
    MuteLifted,
    MuteSet,
    Notice,
    Role,
    RoleIs,
    SetRole,
    ShowModLog,
    Unban,
    Unkline,
    Unmute,
    Wall,
    WhoList,
    apply_modes,
    event_from_json,
    event_to_json,
    format_duration,
    name_key,
    parse_mask,
)
from chatd.store import RoomRecord, Store, StoreError

logger = logging.getLogger(__name__)

#: Most server bans (klines).
MAX_KLINES: Final = 1000

Pending = Coroutine[Any, Any, None]


class Rooms(Protocol):
    """What the moderator uses of the :class:`~chatd.core.rooms.RoomManager`."""

    store: Store
    stats: Stats
    bus: Bus
    connections: Callable[[], Iterable[Member]]

    def live(self, name: str) -> Room | None: ...
    def live_rooms(self) -> list[Room]: ...
    def find(self, nick: str) -> Member | None: ...
    def disconnect(self, member: Member, reason: str, *, release: bool = True) -> None: ...
    def expel(self, member: Member, room: Room, reason: str) -> None: ...


class Moderator:
    """Ownership, moderation and server operators for one daemon's rooms."""

    def __init__(
        self,
        manager: Rooms,
        *,
        opers: Iterable[str] = (),
        max_owned: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        #: Registered rooms one account may own (bounds what it can keep in use).
        self.max_owned = max_owned
        #: Account names that are server operators by configuration (--oper).
        self.opers = {name_key(n) for n in opers}
        self._clock = clock
        #: Server bans by mask (str).
        self.klines: dict[str, BanRecord] = {}

    @property
    def store(self) -> Store:
        return self.manager.store

    async def restore(self) -> None:
        """Load the server bans (rooms' rules come with their rooms)."""
        now = self._clock()
        for doc in await self.store.klines():
            try:
                ban = BanRecord.load(json.loads(doc))
            except (ValueError, TypeError) as exc:
                logger.error("a stored kline was unreadable: %s", exc)
                continue
            if ban.until is None or ban.until > now:
                self.klines[str(ban.mask)] = ban

    # -- what the room manager asks ------------------------------------------------

    def oper_account(self, name: str, flag: bool) -> bool:
        """Whether the account ``name`` is a server operator (its ``flag``
        in the store, or named by the configuration)."""
        return flag or name_key(name) in self.opers

    def logged_in(self, member: Member, oper: bool, was: str | None = None) -> None:
        """``member`` logged in to an account (``oper``: an operator's); it
        was known as ``was`` (None: it had no nickname). A guest's role in
        its rooms is now its account's: logging in loses no op. Then, as
        for any change of identity, see :meth:`identity_changed`."""
        member.oper = oper
        if was is None:
            return
        if was.startswith("n:"):
            for room in member.rooms.values():
                rules = room.rules
                grant = rules.roles.pop(was, None)
                if grant is not None and grant.role > rules.role(member):
                    rules.roles[principal(member)] = Grant(member.nick or grant.name, grant.role)
                    self._changed(room)
        self.identity_changed(member, was)

    def identity_changed(self, member: Member, was: str) -> None:
        """``member`` is someone else now (a rename, a login, a new account;
        it was ``was``): a mute on who it was follows it, and a ban on who
        it is takes it out of the room at once, as a ban would have."""
        now, who = self._clock(), principal(member)
        for room in list(member.rooms.values()):
            rules = room.rules
            if rules.plain:
                continue
            mute = rules.mutes.get(was)
            if mute is not None and who != was and who not in rules.mutes:
                rules.mutes[who] = MuteRecord(member.nick or mute.name, mute.by, mute.until)
                self._changed(room)
            if self.role(room, member) < Role.OWNER and (
                ban := rules.ban_on(member, member.address, now)
            ):
                self.manager.expel(member, room, f"banned by {ban.by or 'the server'}")

    def role(self, room: Room, member: Member) -> Role:
        """``member``'s rights in ``room``: server operators have an owner's."""
        if member.oper:
            return Role.OWNER
        return room.rules.role(member)

    def admit(self, room: Room, member: Member, key: str | None) -> None:
        """May ``member`` join ``room``? Raises Banned, InviteOnly, BadKey or
        RoomFull; an invitation that let it in is used up.

        Owners, ops and server operators pass every mode but a ban on
        someone else; a ban never keeps out an owner or an operator. A
        login that puts an account back in its rooms passes nothing more
        than a /join does: the room may have changed hands meanwhile.
        """
        rules = room.rules
        if rules.plain:
            return
        now = self._clock()
        role = self.role(room, member)
        if role < Role.OWNER and (ban := rules.ban_on(member, member.address, now)) is not None:
            raise Banned(f"you are banned from #{room.name}" + _reason(ban.reason))
        if role >= Role.OP:
            return
        invited = rules.invited(member, now)
        modes = rules.modes
        if modes.invite_only and not invited:
            raise InviteOnly(f"#{room.name} is invite-only; ask an op for an /invite")
        if modes.key is not None and key != modes.key and not invited:
            raise BadKey(
                f"#{room.name} needs a key: /join {room.name} KEY"
                if key is None
                else f"wrong key for #{room.name}"
            )
        if modes.limit is not None and len(room.members) >= modes.limit:
            raise RoomFull(f"#{room.name} is full ({modes.limit} members, its +l)")
        if invited:
            del rules.invites[principal(member)]
            self._changed(room)

    def created(self, room: Room, member: Member) -> None:
        """``member`` brought ``room`` into use: an account registers it and
        owns it; a guest is its op while it stays."""
        if member.account is not None and member.nick is not None:
            room.rules = registered_rules((member.account, member.nick))
            self._changed(room)
            self._log(room, member.nick, "register", room.name, "")
        elif member.key is not None:
            room.rules = RoomRules(roles={principal(member): Grant(member.nick or "", Role.OP)})
            self._changed(room)

    def check_owned(self, member: Member) -> None:
        """Raise TooManyRooms if ``member``'s account owns as many rooms as
        it may (they stay when empty, so one account could fill the server).
        Counted over the rooms live here: in a cluster, this node's."""
        account = member.account
        if account is None or member.oper:
            return
        owned = sum(
            1
            for room in self.manager.live_rooms()
            if room.rules.owner is not None and room.rules.owner[0] == account
        )
        if owned >= self.max_owned:
            raise TooManyRooms(
                f"you own {owned} rooms, the most allowed; /join an existing one "
                "(an operator can delete or transfer rooms with chatd rooms)"
            )

    def check_speak(self, room: Room, member: Member) -> None:
        """Raise Muted if ``member`` may not speak in ``room`` now."""
        rules = room.rules
        if rules.mutes and rules.muted(member, self._clock()):
            raise Muted(f"you are muted in #{room.name}")
        if rules.modes.moderated and self.role(room, member) < Role.VOICE:
            raise Muted(f"#{room.name} is moderated (+m): only voiced members speak")

    def check_topic(self, room: Room, member: Member) -> None:
        if room.rules.modes.topic_ops and self.role(room, member) < Role.OP:
            raise NotOp(f"only ops set the topic of #{room.name} (+t)")

    def hidden(self, room: Room, member: Member) -> bool:
        """``room`` is secret and ``member`` is not in it, nor its owner or
        one of its ops, nor invited to it, nor a server operator."""
        rules = room.rules
        return (
            rules.modes.secret
            and room.key not in member.rooms
            and not member.oper
            and rules.role(member) < Role.OP
            and not rules.invited(member, self._clock())
        )

    def left(self, member: Member, room: Room) -> None:
        """A guest's role goes when it leaves the room."""
        if (
            member.account is None
            and member.key is not None
            and room.rules.roles
            and room.rules.forget_guest(member.key)
        ):
            self._changed(room)

    def renamed(self, member: Member, old_key: str) -> None:
        """A guest changed nickname: its roles and mutes follow it."""
        if member.account is not None or member.key is None:
            return
        for room in member.rooms.values():
            rules = room.rules
            if f"n:{old_key}" in rules.roles or f"n:{old_key}" in rules.mutes:
                rules.rename_guest(old_key, member.key, member.nick or "")
                self._changed(room)

    def roles(self, room: Room, nicks: Iterable[str]) -> tuple[str, ...]:
        """The role of each nickname in ``room``, for ``/who``."""
        here = {m.key: m for m in room.members if m.key is not None}
        out = []
        for nick in nicks:
            member = here.get(name_key(nick))
            role = self.role(room, member) if member is not None else room.rules.role_by_name(nick)
            if member is not None and member.oper:
                role = room.rules.role(member)  # shown as its role in the room
            out.append(role.label)
        return tuple(out)

    async def with_roles(self, caller: Member, who: WhoList) -> WhoList:
        """``/who``'s answer with each member's role; a secret room the
        caller is not in is no room at all."""
        room = self.manager.live(who.room)
        if room is not None:
            rules = room.rules
            if self.hidden(room, caller):
                raise NoSuchRoom(f"no room #{who.room}")
            return WhoList(who.room, who.nicks, self.roles(room, who.nicks))
        try:
            doc = await self.store.rules_of(name_key(who.room))
            rules = RoomRules.load(doc) if doc is not None else RoomRules()
        except (StoreError, ValueError):
            rules = RoomRules()
        if rules.modes.secret and not caller.oper:
            raise NoSuchRoom(f"no room #{who.room}")
        return WhoList(who.room, who.nicks, tuple(rules.role_by_name(n).label for n in who.nicks))

    def klined(self, account: str | None, nick: str | None, address: str) -> BanRecord | None:
        """The server ban on a connection (``account``: its account's name)."""
        now = self._clock()
        for ban in self.klines.values():
            if (ban.until is None or ban.until > now) and ban.mask.matches(account, nick, address):
                return ban
        return None

    def check_kline(self, member: Member, nick: str, account: bool) -> None:
        """Raise Banned if a kline covers ``member`` under ``nick``."""
        ban = self.klined(nick if account else None, nick, member.address)
        if ban is not None:
            raise Banned("you are banned from this server" + _reason(ban.reason))

    def expire(self) -> None:
        """Once a second: end the bans and mutes whose time is up, and tell."""
        now = self._clock()
        for room in self.manager.live_rooms():
            rules = room.rules
            if not rules.bans and not rules.mutes and not rules.invites:
                continue
            bans, mutes = rules.expire(now)
            for ban in bans:
                # Not in the moderation log: every node of a cluster sees it end.
                logger.info("moderation in #%s: the ban on %s expired", room.name, ban.mask)
                send_all(self._ops(room), BanLifted(room.name, str(ban.mask), None, "expired"))
            for mute in mutes:
                send_all(room.members, MuteLifted(room.name, mute.name, None))
        for mask in [m for m, b in self.klines.items() if b.until is not None and b.until <= now]:
            del self.klines[mask]

    # -- commands ------------------------------------------------------------------

    def run(self, caller: Member, command: Moderation) -> Pending:
        """Carry out a moderation command (a coroutine: some ask the bus)."""
        return self._run(caller, command)

    async def _run(self, caller: Member, command: Moderation) -> None:
        match command:
            case SetRole(nick, role, on):
                await self._set_role(caller, nick, role, on)
            case Kick(nick, reason):
                await self._kick(caller, nick, reason)
            case Ban(mask, duration, reason):
                await self._ban(caller, mask, duration, reason)
            case Unban(mask):
                await self._unban(caller, mask)
            case ListBans():
                room = self._as_op(caller, None)
                caller.tell(BanList(room.name, tuple(b.entry() for b in self._live_bans(room))))
            case Mute(nick, duration):
                await self._mute(caller, nick, duration)
            case Unmute(nick):
                await self._unmute(caller, nick)
            case Invite(nick, room_name):
                await self._invite(caller, nick, room_name)
            case Mode(room_name, changes):
                self._mode(caller, await self._any_room(caller, room_name), changes)
            case ShowModLog(count):
                await self._modlog(caller, count)
            case Kill(nick, reason):
                await self._kill(caller, nick, reason)
            case Kline(mask, duration, reason):
                await self._kline(caller, mask, duration, reason)
            case Unkline(mask):
                await self._unkline(caller, mask)
            case ListKlines():
                self._need_oper(caller)
                now = self._clock()
                live = [b for b in self.klines.values() if b.until is None or b.until > now]
                caller.tell(KlineList(tuple(b.entry() for b in live)))
            case Wall(text):
                self._wall(caller, text)

    async def _set_role(self, caller: Member, nick: str, role: Role, on: bool) -> None:
        room = self._as_op(caller, None)
        target = await self._member_of(room, nick)
        actor_role, target_role = self.role(room, caller), self._role_of(room, target)
        new = role if on else Role.MEMBER
        if target.oper:
            raise NotOp(f"{target.nick} is a server operator, with an owner's rights everywhere")
        if not on and target_role != role:
            raise BadArgs(
                f"{target.nick} is {target_role.label}, not {role.label}, in #{room.name}"
            )
        if on and target_role >= role:
            raise BadArgs(f"{target.nick} is already {target_role.label} in #{room.name}")
        # Raising someone to op is an op's right; acting on an op (or on
        # anyone at or above one's own level) is the owner's.
        if target_role >= actor_role or new > actor_role:
            raise NotOp(f"{target.nick} is {target_role.label} in #{room.name}; you cannot")
        who = _principal(target)
        if new is Role.MEMBER:
            room.rules.roles.pop(who, None)
        else:
            room.rules.roles[who] = Grant(target.nick, new)
        event = RoleIs(room.name, target.nick, new.label, caller.nick)
        self._log(room, caller.nick, "role", target.nick, new.label)
        self._commit(room, caller, event, "room")

    async def _kick(self, caller: Member, nick: str, reason: str) -> None:
        room = self._as_op(caller, None)
        target = await self._member_of(room, nick)
        self._outranks(room, caller, target)
        by = caller.nick or ""
        event = Kicked(room.name, target.nick, by, reason)
        left = f"kicked by {by}" + (f": {reason}" if reason else "")
        self._log(room, by, "kick", target.nick, reason)
        self._commit(room, caller, event, "room", evict={"nick": target.key, "reason": left})

    async def _ban(self, caller: Member, mask: Mask, duration: int | None, reason: str) -> None:
        room = self._as_op(caller, None)
        mask = await self._resolve(mask)
        if mask.kind != "ip" and self._rank_of_name(room, mask.value) >= self.role(room, caller):
            raise NotOp(f"{mask.value} has as many rights as you in #{room.name}, or more")
        rules, now, by = room.rules, self._clock(), caller.nick or ""
        rules.bans = [b for b in rules.bans if b.mask != mask]
        if len(rules.bans) >= MAX_BANS:
            raise ListFull(f"#{room.name} has {MAX_BANS} bans, the most allowed; /unban some")
        until = now + duration if duration else None
        rules.bans.append(BanRecord(mask, by, reason, until, now))
        event = BanSet(room.name, str(mask), by, reason, until, duration)
        self._log(room, by, "ban", str(mask), _detail(duration, reason))
        evict = {
            "mask": str(mask),
            "below": int(self.role(room, caller)),
            "reason": f"banned by {by}",
        }
        self._commit(room, caller, event, "ops", evict=evict)

    async def _unban(self, caller: Member, mask: Mask) -> None:
        room = self._as_op(caller, None)
        rules = room.rules
        masks = {mask, await self._resolve(mask)}
        if mask.kind == "nick":
            masks.add(Mask("account", mask.value))
        found = [b for b in rules.bans if b.mask in masks]
        if not found:
            raise BadArgs(f"no ban on {mask.shown} in #{room.name}; /bans lists them")
        rules.bans = [b for b in rules.bans if b.mask not in masks]
        by = caller.nick or ""
        for ban in found:
            self._log(room, by, "unban", str(ban.mask), "")
            self._commit(room, caller, BanLifted(room.name, str(ban.mask), by), "ops")

    async def _mute(self, caller: Member, nick: str, duration: int | None) -> None:
        room = self._as_op(caller, None)
        target = await self._member_of(room, nick)
        self._outranks(room, caller, target)
        rules, now, by = room.rules, self._clock(), caller.nick or ""
        who = _principal(target)
        if who not in rules.mutes and len(rules.mutes) >= MAX_MUTES:
            raise ListFull(f"#{room.name} has {MAX_MUTES} mutes, the most allowed")
        until = now + duration if duration else None
        rules.mutes[who] = MuteRecord(target.nick, by, until)
        self._log(room, by, "mute", target.nick, _detail(duration, ""))
        self._commit(room, caller, MuteSet(room.name, target.nick, by, until, duration), "room")

    async def _unmute(self, caller: Member, nick: str) -> None:
        room = self._as_op(caller, None)
        target = await self.manager.bus.person(nick)
        mutes, who = room.rules.mutes, _principal(target) if target is not None else None
        # Whoever holds the nickname now, or whoever was muted under it (gone).
        found = [k for k, m in mutes.items() if k == who or m.name.lower() == nick.lower()]
        if not found:
            raise BadArgs(f"{nick} is not muted in #{room.name}")
        name = mutes[found[0]].name
        for key in found:
            del mutes[key]
        by = caller.nick or ""
        self._log(room, by, "unmute", name, "")
        self._commit(room, caller, MuteLifted(room.name, name, by), "room")

    async def _invite(self, caller: Member, nick: str, room_name: str | None) -> None:
        room = self._room_of(caller, room_name)
        if room.rules.modes.invite_only and self.role(room, caller) < Role.OP:
            raise NotOp(f"#{room.name} is invite-only: only its ops invite")
        target = await self._person(nick)
        if room.key in self._rooms_of(target):
            raise BadArgs(f"{target.nick} is already in #{room.name}")
        modes = room.rules.modes
        if modes.invite_only or modes.key is not None:
            # What an invitation lets past; elsewhere it is only a message.
            room.rules.invite(_principal(target), self._clock() + INVITE_TTL)
            self._commit(room, None, None, "room")
        logger.info("invite to #%s: %s by %s", room.name, target.nick, caller.nick)
        self.manager.stats.moderation["invite"] += 1
        self._tell(target, Invited(room.name, caller.nick or ""))
        caller.tell(InviteSent(room.name, target.nick))

    def _mode(self, caller: Member, room: Room, changes: tuple[ModeChange, ...]) -> None:
        rules = room.rules
        if not changes:
            modes = rules.modes
            if room.key not in caller.rooms and not caller.oper:
                modes = apply_modes(modes, (ModeChange("-", "k"),))  # the key is the members'
            caller.tell(ModeIs(room.name, None, "", modes, _owner(rules), rules.registered))
            return
        if self.role(room, caller) < Role.OP:
            raise NotOp(f"you need op rights in #{room.name} to change its modes")
        if room.key == DEFAULT_ROOM and any(c.sign == "+" and c.flag in "ikl" for c in changes):
            raise BadMode(f"everyone lands in #{room.name}: it takes no +i, +k or +l")
        rules.modes = apply_modes(rules.modes, changes)
        change = _change_text(changes)
        by = caller.nick or ""
        event = ModeIs(room.name, by, change, rules.modes, _owner(rules), rules.registered)
        self._log(room, by, "mode", room.name, change)
        self._commit(room, caller, event, "room")

    async def _modlog(self, caller: Member, count: int) -> None:
        room = self._as_op(caller, None)
        try:
            docs = await self.store.modlog(room.key, count)
        except StoreError as exc:
            raise BadArgs(f"the moderation log cannot be read now: {exc}") from None
        entries = []
        for doc in docs:
            try:
                entries.append(LogEntry(**json.loads(doc)))
            except (TypeError, ValueError):
                continue
        caller.tell(ModLog(room.name, tuple(entries)))

    async def _kill(self, caller: Member, nick: str, reason: str) -> None:
        self._need_oper(caller)
        target = await self._person(nick)
        by = caller.nick or ""
        why = f"killed by {by}" + (f": {reason}" if reason else "")
        logger.info("kill %s by %s: %s", target.nick, by, reason or "-")
        self.manager.stats.moderation["kill"] += 1
        caller.tell(KillDone(target.nick, by, reason))
        self.disconnect(target.key, why)
        self.manager.bus.broadcast(None, ["kill", target.key, why])

    async def _kline(self, caller: Member, mask: Mask, duration: int | None, reason: str) -> None:
        self._need_oper(caller)
        mask = await self._resolve(mask)
        now, by = self._clock(), caller.nick or ""
        if str(mask) not in self.klines and len(self.klines) >= MAX_KLINES:
            raise ListFull(f"the server has {MAX_KLINES} klines, the most allowed")
        ban = BanRecord(mask, by, reason, now + duration if duration else None, now)
        self._set_kline(ban)
        logger.info("kline %s by %s: %s", mask, by, _detail(duration, reason) or "-")
        self.manager.stats.moderation["kline"] += 1
        caller.tell(KlineSet(str(mask), by, reason, ban.until, duration))
        self.store.save_kline(str(mask), json.dumps(ban.dump()))
        self.manager.bus.broadcast(None, ["kline", ban.dump()])

    async def _unkline(self, caller: Member, mask: Mask) -> None:
        self._need_oper(caller)
        masks = [str(mask), str(await self._resolve(mask))]
        if mask.kind == "nick":
            masks.append(str(Mask("account", mask.value)))
        found = [m for m in dict.fromkeys(masks) if m in self.klines]
        if not found:
            raise BadArgs(f"no kline on {mask.shown}; /klines lists them")
        by = caller.nick or ""
        for key in found:
            del self.klines[key]
            self.store.save_kline(key, None)
            logger.info("unkline %s by %s", key, by)
            self.manager.bus.broadcast(None, ["unkline", key])
            caller.tell(KlineLifted(key, by))

    def _wall(self, caller: Member, text: str) -> None:
        self._need_oper(caller)
        logger.info("wall from %s: %s", caller.nick, text)
        event = Notice(caller.nick or "", text)
        self._notice(event)
        self.manager.bus.broadcast(None, ["wall", event_to_json(event)])

    # -- what arrives from other nodes -------------------------------------------

    def arrived(self, data: list[Any]) -> None:
        """Another node's moderation step, for the members here (see module doc)."""
        kind = data[0]
        if kind == "state":
            _, room_key, doc, event, audience, evict = data
            room = self.manager.live(room_key)
            if room is None:
                return  # it is loaded from the store when it becomes live here
            room.rules = RoomRules.load(doc)
            self._apply(room, None, event_from_json(event) if event else None, audience, evict)
        elif kind == "kill":
            self.disconnect(data[1], data[2])
        elif kind == "kline":
            self._set_kline(BanRecord.load(data[1]))
        elif kind == "unkline":
            self.klines.pop(data[1], None)
        elif kind == "wall":
            event = event_from_json(data[1])
            if isinstance(event, Notice):
                self._notice(event)
        elif kind == "tell":
            member = self.manager.find(data[1])
            if member is not None:
                member.deliver(member.codec.encode(event_from_json(data[2])))

    def disconnect(self, nick_key: str, why: str) -> None:
        """End the connection of ``nick_key`` if it is here (``/kill``)."""
        member = self.manager.find(nick_key)
        if member is not None:
            self.manager.disconnect(member, why)
            member.kick(why)

    # -- internals -------------------------------------------------------------------

    def _commit(
        self,
        room: Room,
        actor: Member | None,
        event: Event | None,
        audience: str,
        *,
        evict: dict[str, Any] | None = None,
    ) -> None:
        """Save a room's changed rules, and carry out the change here and on
        every other node: tell ``audience`` (``room`` or ``ops``), evict."""
        self._save(room)
        self._apply(room, actor, event, audience, evict)
        payload = event_to_json(event) if event is not None else None
        self.manager.bus.broadcast(
            room.key, ["state", room.key, room.rules.dump(), payload, audience, evict]
        )

    def _changed(self, room: Room) -> None:
        """Rules changed without an event (a guest's role, an invitation used)."""
        self._commit(room, None, None, "room")

    def _apply(
        self,
        room: Room,
        actor: Member | None,
        event: Event | None,
        audience: str,
        evict: dict[str, Any] | None,
    ) -> None:
        """Step 2, on every node: tell the members here, then evict."""
        if event is not None:
            members: Iterable[Member] = room.members if audience == "room" else self._ops(room)
            send_all(members, event, actor)
            if actor is not None and actor not in members:
                actor.tell(event)  # from outside the room, or not among the ops
        if evict is None:
            return
        reason = str(evict["reason"])
        if "nick" in evict:
            targets = [m for m in room.members if m.key == evict["nick"]]
        else:
            mask, below = parse_mask(evict["mask"]), int(evict["below"])
            targets = [
                m
                for m in room.members
                if m is not actor
                and self.role(room, m) < below
                and mask.matches(m.nick if m.account is not None else None, m.nick, m.address)
            ]
        for member in targets:
            self.manager.expel(member, room, reason)

    def _save(self, room: Room) -> None:
        rules = room.rules
        if not rules.registered and not self.store.shared:
            return  # a guest's room lives and dies in this process
        rules.expire(self._clock())
        self.store.save_rules(
            room.name, rules.dump(), registered=rules.registered, secret=rules.modes.secret
        )

    def _log(self, room: Room, by: str | None, action: str, target: str, detail: str) -> None:
        logger.info(
            "moderation in #%s: %s %s %s%s",
            room.name,
            by or "server",
            action,
            target,
            f" ({detail})" if detail else "",
        )
        self.manager.stats.moderation[action] += 1
        entry = {"ts": self._clock(), "by": by, "action": action, "target": target}
        entry["detail"] = detail
        self.store.log_action(room.key, json.dumps(entry))

    def _ops(self, room: Room) -> list[Member]:
        return [m for m in room.members if self.role(room, m) >= Role.OP]

    def _live_bans(self, room: Room) -> list[BanRecord]:
        now = self._clock()
        return [b for b in room.rules.bans if b.until is None or b.until > now]

    def _set_kline(self, ban: BanRecord) -> None:
        """Keep a server ban and disconnect whoever it covers here."""
        self.klines[str(ban.mask)] = ban
        why = f"banned from the server by {ban.by}" + _reason(ban.reason)
        for member in list(self.manager.connections()):
            if member.oper:
                continue
            account = member.nick if member.account is not None else None
            if ban.mask.matches(account, member.nick, member.address):
                member.tell(Error.of(Banned(why)))
                self.manager.disconnect(member, why)
                member.kick(why)

    def _notice(self, event: Notice) -> None:
        for member in list(self.manager.connections()):
            member.tell(event)

    def _need_oper(self, caller: Member) -> None:
        if not caller.oper:
            raise NotOper("only server operators can do that")

    def _as_op(self, caller: Member, room_name: str | None) -> Room:
        """The room a command acts on (the current one), checking op rights."""
        room = self._room_of(caller, room_name)
        if self.role(room, caller) < Role.OP:
            raise NotOp(f"you need op rights in #{room.name}")
        return room

    def _room_of(self, caller: Member, room_name: str | None, *, visible: bool = False) -> Room:
        """The caller's current room, or the named one it is in. With
        ``visible``, also a live room it is not in, unless that room is
        secret (then: no such room, as for a room that does not exist)."""
        if room_name is None:
            if caller.current is None:
                raise NotInRoom("you are in no room; /join one")
            return caller.current
        room = caller.rooms.get(name_key(room_name))
        if room is not None:
            return room
        live = self.manager.live(room_name)
        if caller.oper and live is not None:
            return live
        if visible and live is not None and not self.hidden(live, caller):
            return live
        if visible and (live is None or self.hidden(live, caller)):
            raise NoSuchRoom(f"no room #{room_name}")
        raise NotInRoom(f"you are not in #{room_name}")

    async def _any_room(self, caller: Member, room_name: str | None) -> Room:
        """A room the caller may see, live here or not: one that is live only
        on other nodes of a cluster comes from the store, detached (its
        changes are saved and broadcast like any other)."""
        try:
            return self._room_of(caller, room_name, visible=True)
        except NoSuchRoom:
            if room_name is None or self.manager.bus.keeps(RoomRecord(room_name, "", None)):
                raise  # every room in use is live here
            try:
                doc = await self.store.rules_of(name_key(room_name))
            except StoreError:
                doc = None
            if doc is None:
                raise
            room = Room(room_name, 0)
            room.rules = RoomRules.load(doc)
            if self.hidden(room, caller):
                raise
            return room

    def _role_of(self, room: Room, target: Person) -> Role:
        if target.oper:
            return Role.OWNER
        owner = room.rules.owner
        if owner is not None and target.account == owner[0]:
            return Role.OWNER
        grant = room.rules.roles.get(_principal(target))
        return grant.role if grant is not None else Role.MEMBER

    def _rank_of_name(self, room: Room, name: str) -> Role:
        """The rights of whoever holds the account (or nickname) ``name``."""
        if name_key(name) in self.opers:
            return Role.OWNER
        return room.rules.role_by_name(name)

    def _outranks(self, room: Room, caller: Member, target: Person) -> None:
        if self._role_of(room, target) >= self.role(room, caller):
            raise NotOp(f"{target.nick} has as many rights as you in #{room.name}, or more")

    async def _lookup(self, nick: str) -> Person | None:
        """Whoever holds ``nick``, anywhere. Another node of a cluster knows
        an operator by its account's flag only: an account the configuration
        names (--oper) is one too, as it is for the members here."""
        person = await self.manager.bus.person(nick)
        if person is not None and person.account is not None and person.key in self.opers:
            return person._replace(oper=True)
        return person

    async def _person(self, nick: str) -> Person:
        person = await self._lookup(nick)
        if person is None:
            raise NoSuchNick(f"nobody is called {nick}")
        return person

    async def _member_of(self, room: Room, nick: str) -> Person:
        person = await self._lookup(nick)
        if person is None or room.key not in self._rooms_of(person):
            raise NoSuchNick(f"{nick} is not in #{room.name}")
        return person

    @staticmethod
    def _rooms_of(person: Person) -> frozenset[str]:
        return person.rooms

    async def _resolve(self, mask: Mask) -> Mask:
        """A nickname mask means its account when that nickname is logged in."""
        if mask.kind != "nick":
            return mask
        person = await self.manager.bus.person(mask.value)
        if person is not None and person.account is not None:
            return Mask("account", person.key)
        return mask

    def _tell(self, target: Person, event: Event) -> None:
        member = self.manager.find(target.key)
        if member is not None:
            member.deliver(member.codec.encode(event))
        else:
            self.manager.bus.broadcast(None, ["tell", target.key, event_to_json(event)])


def _principal(person: Person) -> str:
    return f"a:{person.account}" if person.account is not None else f"n:{person.key}"


def _owner(rules: RoomRules) -> str | None:
    return rules.owner[1] if rules.owner is not None else None


def _reason(reason: str) -> str:
    return f" ({reason})" if reason else ""


def _detail(duration: int | None, reason: str) -> str:
    parts = [f"for {format_duration(duration)}" if duration else "", reason]
    return " ".join(p for p in parts if p)


def _change_text(changes: tuple[ModeChange, ...]) -> str:
    """``+k +l -m`` as IRC writes it: ``+kl-m``."""
    out, sign = "", ""
    for change in changes:
        if change.sign != sign:
            sign = change.sign
            out += sign
        out += change.flag
    return out
