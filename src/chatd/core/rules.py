"""Who may do what in a room: its owner, roles, modes, bans, mutes and invitations.

:class:`RoomRules` is one room's authority, as a plain value with no I/O: the
:class:`~chatd.core.moderation.Moderator` changes it and saves it, the
:class:`~chatd.core.rooms.RoomManager` asks it whether a join or a line may
pass. It serialises to one JSON document (:meth:`RoomRules.dump`), which is
what the store keeps for a registered room and what the nodes of a cluster
pass to each other when it changes: one state, written whole.

A member is known to the rules by its *principal*: ``a:ID`` for a member
logged in to account ID, ``n:NICK`` for a guest. Roles and mutes given to
an account outlive its connections; those given to a guest last while it
is in the room.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final, Protocol

from chatd.protocol import BanEntry, Mask, Modes, Role, parse_mask


class Member(Protocol):
    """What the rules know of a member (a :class:`~chatd.core.model.Member`)."""

    nick: str | None
    key: str | None
    account: int | None


#: Bounds of one room's lists (``list_full`` past them).
MAX_BANS: Final = 200
MAX_MUTES: Final = 200
#: Open invitations per room; the oldest goes when another comes.
MAX_INVITES: Final = 100
#: Seconds an invitation stays good.
INVITE_TTL: Final = 3600.0


def principal(member: Member) -> str:
    """The key the rules know ``member`` by: its account, else its nickname."""
    if member.account is not None:
        return f"a:{member.account}"
    return f"n:{member.key}"


@dataclasses.dataclass(slots=True)
class Grant:
    """A role given to a principal; ``name`` is how it is shown."""

    name: str
    role: Role


@dataclasses.dataclass(slots=True)
class BanRecord:
    mask: Mask
    by: str | None
    reason: str
    #: When it ends (epoch seconds), None: until lifted.
    until: float | None
    since: float

    def entry(self) -> BanEntry:
        return BanEntry(str(self.mask), self.by, self.reason, self.until, self.since)

    def dump(self) -> list[Any]:
        return [str(self.mask), self.by, self.reason, self.until, self.since]

    @classmethod
    def load(cls, row: list[Any]) -> BanRecord:
        mask, by, reason, until, since = row
        return cls(parse_mask(mask), by, reason, until, since)


@dataclasses.dataclass(slots=True)
class MuteRecord:
    name: str
    by: str
    until: float | None


@dataclasses.dataclass(slots=True)
class RoomRules:
    """One room's authority. ``registered``: it belongs to an account (or,
    for general, to the server operators) and is kept across restarts."""

    registered: bool = False
    #: (account id, account name) of the owner.
    owner: tuple[int, str] | None = None
    modes: Modes = dataclasses.field(default_factory=Modes)
    roles: dict[str, Grant] = dataclasses.field(default_factory=dict)
    bans: list[BanRecord] = dataclasses.field(default_factory=list)
    mutes: dict[str, MuteRecord] = dataclasses.field(default_factory=dict)
    #: Principal of an invitee -> when the invitation lapses.
    invites: dict[str, float] = dataclasses.field(default_factory=dict)

    # -- questions -------------------------------------------------------------

    @property
    def plain(self) -> bool:
        """Nothing here limits anyone: the common room, checked in one test."""
        return (
            not self.registered
            and not self.roles
            and not self.bans
            and not self.mutes
            and self.modes == _NO_MODES
        )

    def role(self, member: Member) -> Role:
        """``member``'s role here (server operators: see Moderator.role)."""
        owner = self.owner
        if owner is not None and member.account == owner[0]:
            return Role.OWNER
        grant = self.roles.get(principal(member))
        return grant.role if grant is not None else Role.MEMBER

    def role_by_name(self, nick: str) -> Role:
        """The role of whoever is shown as ``nick`` (for members elsewhere)."""
        key = nick.lower()
        if self.owner is not None and self.owner[1].lower() == key:
            return Role.OWNER
        for grant in self.roles.values():
            if grant.name.lower() == key:
                return grant.role
        return Role.MEMBER

    def ban_on(self, member: Member, address: str, now: float) -> BanRecord | None:
        """The ban that keeps ``member`` out, if one does."""
        account = member.nick if member.account is not None else None
        for ban in self.bans:
            if (ban.until is None or ban.until > now) and ban.mask.matches(
                account, member.nick, address
            ):
                return ban
        return None

    def muted(self, member: Member, now: float) -> bool:
        mute = self.mutes.get(principal(member))
        return mute is not None and (mute.until is None or mute.until > now)

    def invited(self, member: Member, now: float) -> bool:
        until = self.invites.get(principal(member))
        return until is not None and until > now

    # -- changes -----------------------------------------------------------------

    def expire(self, now: float) -> tuple[list[BanRecord], list[MuteRecord]]:
        """Drop the bans and mutes whose time is up (and lapsed invitations);
        return the bans and mutes dropped."""
        bans = [b for b in self.bans if b.until is not None and b.until <= now]
        if bans:
            self.bans = [b for b in self.bans if b not in bans]
        mutes = [k for k, m in self.mutes.items() if m.until is not None and m.until <= now]
        gone = [self.mutes.pop(k) for k in mutes]
        for key in [k for k, until in self.invites.items() if until <= now]:
            del self.invites[key]
        return bans, gone

    def invite(self, who: str, until: float) -> None:
        self.invites.pop(who, None)
        while len(self.invites) >= MAX_INVITES:
            del self.invites[next(iter(self.invites))]
        self.invites[who] = until

    def forget_guest(self, nick_key: str) -> bool:
        """A guest left: its role here goes with it. True if it had one."""
        return self.roles.pop(f"n:{nick_key}", None) is not None

    def rename_guest(self, old_key: str, new_key: str, new_name: str) -> None:
        """A guest changed nickname: its role and mute follow it."""
        grant = self.roles.pop(f"n:{old_key}", None)
        if grant is not None:
            self.roles[f"n:{new_key}"] = Grant(new_name, grant.role)
        mute = self.mutes.pop(f"n:{old_key}", None)
        if mute is not None:
            self.mutes[f"n:{new_key}"] = MuteRecord(new_name, mute.by, mute.until)

    # -- the document ------------------------------------------------------------

    def dump(self) -> str:
        """The whole state as one JSON document (see :meth:`load`)."""
        return json.dumps(
            {
                "v": 1,
                "registered": self.registered,
                "owner": list(self.owner) if self.owner is not None else None,
                "modes": self.modes.to_json(),
                "roles": {p: [g.name, g.role.label] for p, g in self.roles.items()},
                "bans": [b.dump() for b in self.bans],
                "mutes": {p: [m.name, m.by, m.until] for p, m in self.mutes.items()},
                "invites": self.invites,
            },
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, doc: str) -> RoomRules:
        """The rules a :meth:`dump` wrote; ValueError if it is not one."""
        try:
            obj = json.loads(doc)
            owner = obj.get("owner")
            return cls(
                registered=obj.get("registered") is True,
                owner=(int(owner[0]), str(owner[1])) if owner else None,
                modes=Modes.from_json(obj.get("modes") or {}),
                roles={p: Grant(n, Role.of(r)) for p, (n, r) in obj.get("roles", {}).items()},
                bans=[BanRecord.load(row) for row in obj.get("bans", [])],
                mutes={p: MuteRecord(*row) for p, row in obj.get("mutes", {}).items()},
                invites={p: float(t) for p, t in obj.get("invites", {}).items()},
            )
        except (TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a room's rules: {exc}") from None

    def restarted(self) -> RoomRules:
        """What a restart keeps: not the roles of guests, nor invitations."""
        roles = {p: g for p, g in self.roles.items() if p.startswith("a:")}
        return dataclasses.replace(self, roles=roles, invites={})


_NO_MODES: Final = Modes()


def registered_rules(owner: tuple[int, str] | None) -> RoomRules:
    """The rules of a room an account just created: its own, +t."""
    return RoomRules(registered=True, owner=owner, modes=Modes(topic_ops=True))
