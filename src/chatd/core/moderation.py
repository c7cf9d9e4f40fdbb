"""Room ownership and moderation: the questions a join or a line asks, and
the one way a room's rules change.

The :class:`Moderator` answers the :class:`~chatd.core.rooms.RoomManager`
on a join, a line, a topic or a change of identity (may this member come
in, speak, set the topic; does a ban or a mute follow it), and hands the
moderation commands to :class:`~chatd.core.actions.RoomActions` (rooms) or
:class:`~chatd.core.operators.Operators` (server operators). Each room's
authority is its :class:`~chatd.core.rules.RoomRules`, kept on the room;
only these classes change it.

Every change is made by :meth:`Moderator.commit`, in three steps, whichever
daemon it comes from:

1. the rules are changed (and saved whole: see ``_save``);
2. :meth:`Moderator._apply` tells the local audience (the room, or its ops)
   and removes the local members the action evicts (a kick, a ban);
3. the bus carries the same step 2 to the other nodes of a cluster
   (:meth:`~chatd.core.bus.Bus.broadcast`), where :meth:`Moderator.arrived`
   runs it for their members. One daemon's bus carries nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from chatd.core.actions import RoomActions
from chatd.core.fanout import send_all
from chatd.core.model import Member, Room
from chatd.core.operators import Operators, Rooms, ServerCommand
from chatd.core.rules import (
    MAX_MUTES,
    Grant,
    MuteRecord,
    RoomRules,
    principal,
    registered_rules,
)
from chatd.errors import (
    BadKey,
    Banned,
    InviteOnly,
    Muted,
    NoSuchRoom,
    NotOp,
    RoomFull,
    TooManyRooms,
)
from chatd.protocol import (
    BanLifted,
    Event,
    Moderation,
    MuteLifted,
    Role,
    WhoList,
    event_from_json,
    event_to_json,
    name_key,
    parse_mask,
)
from chatd.protocol.events import BANNED_BY
from chatd.store import RoomRecord, Store, StoreError

logger = logging.getLogger(__name__)

Pending = Coroutine[Any, Any, None]


class Moderator:
    """Ownership and moderation of one daemon's rooms; server operators'
    powers through :attr:`operators`, the room commands through :attr:`actions`."""

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
        self._clock = clock
        #: Server operators' commands and the klines.
        self.operators = Operators(manager, opers=opers, clock=clock)
        #: The room commands.
        self.actions = RoomActions(self)

    @property
    def store(self) -> Store:
        return self.manager.store

    def now(self) -> float:
        return self._clock()

    async def restore(self) -> None:
        """Make the registered rooms live with their rules (those this node
        keeps live: all of them on one daemon), and load the server bans."""
        now, manager = self._clock(), self.manager
        for name, doc in (await self.store.all_rules()).items():
            if not manager.bus.keeps(RoomRecord(name, "", None)):
                continue
            try:
                rules = RoomRules.load(doc).restarted()
            except ValueError as exc:
                logger.error("the rules of #%s were unreadable: %s", name, exc)
                continue
            rules.expire(now)
            try:
                manager.open_room(name).rules = rules
            except TooManyRooms as exc:
                logger.error("registered rooms past the room limit are not live: %s", exc)
                break
        await self.operators.restore()

    def hidden_rooms(self, member: Member) -> set[str]:
        """The keys of the live secret rooms ``member`` may not see."""
        rooms = self.manager.live_rooms()
        return {r.key for r in rooms if r.rules.modes.secret and self.hidden(r, member)}

    # -- what the room manager asks ------------------------------------------------

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
                    self.changed(room)
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
            if mute is not None and who != was:
                # A guest's mute moves with it; an account's stays on the account
                # too (it may log in again), unless the list is at its bound.
                if was.startswith("n:") or len(rules.mutes) >= MAX_MUTES:
                    del rules.mutes[was]
                if who not in rules.mutes:
                    rules.mutes[who] = MuteRecord(member.nick or mute.name, mute.by, mute.until)
                self.changed(room)
            if self.role(room, member) < Role.OWNER and (
                ban := rules.ban_on(member, member.address, now)
            ):
                self.manager.expel(member, room, BANNED_BY + (ban.by or "the server"))

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
        if modes.limit is not None and room.people >= modes.limit:
            raise RoomFull(f"#{room.name} is full ({modes.limit} members, its +l)")
        if invited:
            del rules.invites[principal(member)]
            self.changed(room)

    def created(self, room: Room, member: Member) -> None:
        """``member`` brought ``room`` into use: an account registers it and
        owns it; a guest is its op while it stays."""
        if member.account is not None and member.nick is not None:
            room.rules = registered_rules((member.account, member.nick))
            self.changed(room)
            self.log(room, member.nick, "register", room.name, "")
        elif member.key is not None:
            room.rules = RoomRules(roles={principal(member): Grant(member.nick or "", Role.OP)})
            self.changed(room)

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
            self.changed(room)

    def renamed(self, member: Member, old_key: str) -> None:
        """A guest changed nickname: its roles and mutes follow it."""
        if member.account is not None or member.key is None:
            return
        for room in member.rooms.values():
            rules = room.rules
            if f"n:{old_key}" in rules.roles or f"n:{old_key}" in rules.mutes:
                rules.rename_guest(old_key, member.key, member.nick or "")
                self.changed(room)

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
        self.operators.expire(now)

    # -- commands ------------------------------------------------------------------

    def run(self, caller: Member, command: Moderation) -> Pending:
        """Carry out a moderation command (a coroutine: some ask the bus)."""
        if isinstance(command, ServerCommand):
            return self.operators.run(caller, command)
        return self.actions.run(caller, command)

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
        elif kind == "tell":
            self.manager.tell_nick(data[1], event_from_json(data[2]))
        else:
            self.operators.arrived(data)

    # -- the one way a change is made ---------------------------------------------

    def commit(
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

    def changed(self, room: Room) -> None:
        """Rules changed without an event (a guest's role, an invitation used)."""
        self.commit(room, None, None, "room")

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

    def log(self, room: Room, by: str | None, action: str, target: str, detail: str) -> None:
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


def _reason(reason: str) -> str:
    return f" ({reason})" if reason else ""
