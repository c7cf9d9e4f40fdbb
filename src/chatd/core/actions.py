"""What ops do to a room: roles, kicks, bans, mutes, invitations, modes, the log.

:class:`RoomActions` carries out the room commands (``/op``, ``/kick``,
``/ban``, ``/mode`` ...): it checks the caller's rights against its
target's, changes the room's :class:`~chatd.core.rules.RoomRules` and hands
the change to the :class:`~chatd.core.moderation.Moderator`'s ``commit``,
which saves it, carries it out here and sends it to the other nodes.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from chatd.core.bus import Person
from chatd.core.model import Member, Room
from chatd.core.operators import Operators, Rooms, detail, lookup, person, resolve
from chatd.core.rules import (
    INVITE_TTL,
    MAX_BANS,
    MAX_MUTES,
    BanRecord,
    Grant,
    MuteRecord,
    RoomRules,
)
from chatd.errors import (
    BadArgs,
    BadMode,
    ListFull,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    NotOp,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Ban,
    BanLifted,
    BanList,
    BanSet,
    Event,
    Invite,
    Invited,
    InviteSent,
    Kick,
    Kicked,
    ListBans,
    LogEntry,
    Mask,
    Mode,
    ModeChange,
    ModeIs,
    ModLog,
    Mute,
    MuteLifted,
    MuteSet,
    Role,
    RoleIs,
    SetRole,
    ShowModLog,
    Unban,
    Unmute,
    apply_modes,
    event_to_json,
    name_key,
)
from chatd.protocol.events import BANNED_BY, KICKED_BY
from chatd.store import RoomRecord, Store, StoreError

logger = logging.getLogger(__name__)

#: The commands on a room.
RoomCommand = SetRole | Kick | Ban | Unban | ListBans | Mute | Unmute | Invite | Mode | ShowModLog


class Authority(Protocol):
    """What room actions use of the :class:`~chatd.core.moderation.Moderator`."""

    manager: Rooms
    operators: Operators

    def now(self) -> float: ...
    def role(self, room: Room, member: Member) -> Role: ...
    def hidden(self, room: Room, member: Member) -> bool: ...
    def log(self, room: Room, by: str | None, action: str, target: str, detail: str) -> None: ...
    def commit(
        self,
        room: Room,
        actor: Member | None,
        event: Event | None,
        audience: str,
        *,
        evict: dict[str, object] | None = None,
    ) -> None: ...


class RoomActions:
    """The room commands, carried out against the rules of their room."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.manager = authority.manager

    @property
    def store(self) -> Store:
        return self.manager.store

    async def run(self, caller: Member, command: RoomCommand) -> None:
        """Carry out an op's (or a member's) command on a room."""
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

    async def _set_role(self, caller: Member, nick: str, role: Role, on: bool) -> None:
        room = self._as_op(caller, None)
        target = await self._member_of(room, nick)
        actor_role, target_role = self.authority.role(room, caller), self._role_of(room, target)
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
        self.authority.log(room, caller.nick, "role", target.nick, new.label)
        self.authority.commit(room, caller, event, "room")

    async def _kick(self, caller: Member, nick: str, reason: str) -> None:
        room = self._as_op(caller, None)
        target = await self._member_of(room, nick)
        self._outranks(room, caller, target)
        by = caller.nick or ""
        event = Kicked(room.name, target.nick, by, reason)
        left = KICKED_BY + by + (f": {reason}" if reason else "")
        self.authority.log(room, by, "kick", target.nick, reason)
        self.authority.commit(
            room, caller, event, "room", evict={"nick": target.key, "reason": left}
        )

    async def _ban(self, caller: Member, mask: Mask, duration: int | None, reason: str) -> None:
        room = self._as_op(caller, None)
        mask = await resolve(self.manager, mask)
        rank = self.authority.role(room, caller)
        if mask.kind != "ip" and self._rank_of_name(room, mask) >= rank:
            raise NotOp(f"{mask.value} has as many rights as you in #{room.name}, or more")
        for member in room.members:  # an address: whoever it covers here
            if member is not caller and self.authority.role(room, member) >= rank:
                account = member.nick if member.account is not None else None
                if mask.matches(account, member.nick, member.address):
                    raise NotOp(
                        f"{mask} covers {member.nick}, who has as many rights as you "
                        f"in #{room.name}, or more"
                    )
        rules, now, by = room.rules, self.authority.now(), caller.nick or ""
        rules.bans = [b for b in rules.bans if b.mask != mask]
        if len(rules.bans) >= MAX_BANS:
            raise ListFull(f"#{room.name} has {MAX_BANS} bans, the most allowed; /unban some")
        until = now + duration if duration else None
        rules.bans.append(BanRecord(mask, by, reason, until, now))
        event = BanSet(room.name, str(mask), by, reason, until, duration)
        self.authority.log(room, by, "ban", str(mask), detail(duration, reason))
        evict = {
            "mask": str(mask),
            "below": int(self.authority.role(room, caller)),
            "reason": BANNED_BY + by,
        }
        self.authority.commit(room, caller, event, "ops", evict=evict)

    async def _unban(self, caller: Member, mask: Mask) -> None:
        room = self._as_op(caller, None)
        rules = room.rules
        masks = {mask, await resolve(self.manager, mask)}
        if mask.kind == "nick":
            masks.add(Mask("account", mask.value))
        found = [b for b in rules.bans if b.mask in masks]
        if not found:
            raise BadArgs(f"no ban on {mask.shown} in #{room.name}; /bans lists them")
        rules.bans = [b for b in rules.bans if b.mask not in masks]
        by = caller.nick or ""
        for ban in found:
            self.authority.log(room, by, "unban", str(ban.mask), "")
            self.authority.commit(room, caller, BanLifted(room.name, str(ban.mask), by), "ops")

    async def _mute(self, caller: Member, nick: str, duration: int | None) -> None:
        room = self._as_op(caller, None)
        target = await self._member_of(room, nick)
        self._outranks(room, caller, target)
        rules, now, by = room.rules, self.authority.now(), caller.nick or ""
        who = _principal(target)
        if who not in rules.mutes and len(rules.mutes) >= MAX_MUTES:
            raise ListFull(f"#{room.name} has {MAX_MUTES} mutes, the most allowed")
        until = now + duration if duration else None
        rules.mutes[who] = MuteRecord(target.nick, by, until)
        self.authority.log(room, by, "mute", target.nick, detail(duration, ""))
        self.authority.commit(
            room, caller, MuteSet(room.name, target.nick, by, until, duration), "room"
        )

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
        self.authority.log(room, by, "unmute", name, "")
        self.authority.commit(room, caller, MuteLifted(room.name, name, by), "room")

    async def _invite(self, caller: Member, nick: str, room_name: str | None) -> None:
        room = self._room_of(caller, room_name)
        if room.rules.modes.invite_only and self.authority.role(room, caller) < Role.OP:
            raise NotOp(f"#{room.name} is invite-only: only its ops invite")
        target = await person(self.manager, self.authority.operators.opers, nick)
        if room.key in self._rooms_of(target):
            raise BadArgs(f"{target.nick} is already in #{room.name}")
        modes = room.rules.modes
        if modes.invite_only or modes.key is not None:
            # What an invitation lets past; elsewhere it is only a message.
            room.rules.invite(_principal(target), self.authority.now() + INVITE_TTL)
            self.authority.commit(room, None, None, "room")
        logger.info("invite to #%s: %s by %s", room.name, target.nick, caller.nick)
        self.manager.stats.moderation["invite"] += 1
        self._tell(target, Invited(room.name, caller.nick or ""))
        caller.tell(InviteSent(room.name, target.nick))

    def _mode(self, caller: Member, room: Room, changes: tuple[ModeChange, ...]) -> None:
        rules = room.rules
        if not changes:
            modes = rules.modes
            if room.key not in caller.rooms and self.authority.role(room, caller) < Role.OP:
                modes = apply_modes(modes, (ModeChange("-", "k"),))  # the key is the members'
            caller.tell(ModeIs(room.name, None, "", modes, _owner(rules), rules.registered))
            return
        if self.authority.role(room, caller) < Role.OP:
            raise NotOp(f"you need op rights in #{room.name} to change its modes")
        if room.key == DEFAULT_ROOM and any(c.sign == "+" and c.flag in "ikl" for c in changes):
            raise BadMode(f"everyone lands in #{room.name}: it takes no +i, +k or +l")
        rules.modes = apply_modes(rules.modes, changes)
        change = _change_text(changes)
        by = caller.nick or ""
        event = ModeIs(room.name, by, change, rules.modes, _owner(rules), rules.registered)
        self.authority.log(room, by, "mode", room.name, change)
        self.authority.commit(room, caller, event, "room")

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

    def _as_op(self, caller: Member, room_name: str | None) -> Room:
        """The room a command acts on (the current one), checking op rights."""
        room = self._room_of(caller, room_name)
        if self.authority.role(room, caller) < Role.OP:
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
        if visible and live is not None and not self.authority.hidden(live, caller):
            return live
        if visible and (live is None or self.authority.hidden(live, caller)):
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
            if self.authority.hidden(room, caller):
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

    def _rank_of_name(self, room: Room, mask: Mask) -> Role:
        """The rights of whoever the account (or nickname) ``mask`` names."""
        if mask.kind == "account" and name_key(mask.value) in self.authority.operators.opers:
            return Role.OWNER
        return room.rules.role_by_name(mask.value)

    def _outranks(self, room: Room, caller: Member, target: Person) -> None:
        if self._role_of(room, target) >= self.authority.role(room, caller):
            raise NotOp(f"{target.nick} has as many rights as you in #{room.name}, or more")

    async def _member_of(self, room: Room, nick: str) -> Person:
        person = await lookup(self.manager, self.authority.operators.opers, nick)
        if person is None or room.key not in self._rooms_of(person):
            raise NoSuchNick(f"{nick} is not in #{room.name}")
        return person

    @staticmethod
    def _rooms_of(person: Person) -> frozenset[str]:
        return person.rooms

    def _tell(self, target: Person, event: Event) -> None:
        if not self.manager.tell_nick(target.key, event):
            self.manager.bus.broadcast(None, ["tell", target.key, event_to_json(event)])

    def _live_bans(self, room: Room) -> list[BanRecord]:
        now = self.authority.now()
        return [b for b in room.rules.bans if b.until is None or b.until > now]


def _principal(person: Person) -> str:
    return f"a:{person.account}" if person.account is not None else f"n:{person.key}"


def _owner(rules: RoomRules) -> str | None:
    return rules.owner[1] if rules.owner is not None else None


def _change_text(changes: tuple[ModeChange, ...]) -> str:
    """``+k +l -m`` as IRC writes it: ``+kl-m``."""
    out, sign = "", ""
    for change in changes:
        if change.sign != sign:
            sign = change.sign
            out += sign
        out += change.flag
    return out
