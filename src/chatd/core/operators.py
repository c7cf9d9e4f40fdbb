"""Server operators and their powers over the whole server.

An account is a server operator when the configuration names it
(``--oper``) or its flag in the store says so (``chatd accounts oper``).
:class:`Operators` carries out their commands (``/kill``, ``/kline``,
``/unkline``, ``/klines``, ``/wall``) here and, through the bus, on the
other nodes of a cluster, and keeps the klines, which the server checks at
connect, and the dispatcher at login and when a nickname is chosen.

Rooms are the :class:`~chatd.core.moderation.Moderator`'s; the lookups both
need (who holds a nickname, anywhere; what a mask names) are here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from chatd.core.bus import Bus, Person
from chatd.core.model import Member, Room
from chatd.core.rules import BanRecord
from chatd.core.stats import Stats
from chatd.errors import BadArgs, Banned, ListFull, NoSuchNick, NotOper
from chatd.protocol import (
    Error,
    Event,
    Kill,
    KillDone,
    Kline,
    KlineLifted,
    KlineList,
    KlineSet,
    ListKlines,
    Mask,
    Notice,
    Unkline,
    Wall,
    event_from_json,
    event_to_json,
    format_duration,
    name_key,
)
from chatd.store import Store

logger = logging.getLogger(__name__)

#: Most server bans (klines).
MAX_KLINES: Final = 1000

#: The commands of server operators.
ServerCommand = Kill | Kline | Unkline | ListKlines | Wall


class Rooms(Protocol):
    """What moderation uses of the :class:`~chatd.core.rooms.RoomManager`."""

    store: Store
    stats: Stats
    bus: Bus
    connections: Callable[[], Iterable[Member]]

    def live(self, name: str) -> Room | None: ...
    def live_rooms(self) -> list[Room]: ...
    def open_room(self, name: str) -> Room: ...
    def find(self, nick: str) -> Member | None: ...
    def disconnect(self, member: Member, reason: str, *, release: bool = True) -> None: ...
    def end(self, key: str, reason: str, *, release: bool = True) -> None: ...
    def tell_nick(self, key: str, event: Event) -> bool: ...
    def expel(self, member: Member, room: Room, reason: str) -> None: ...


class Operators:
    """The server operators' commands, and the klines."""

    def __init__(
        self,
        manager: Rooms,
        *,
        opers: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        #: Account names that are server operators by configuration (--oper).
        self.opers = {name_key(n) for n in opers}
        self._clock = clock
        #: Server bans by mask (str).
        self.klines: dict[str, BanRecord] = {}

    async def restore(self) -> None:
        """Load the server bans."""
        now = self._clock()
        for doc in await self.manager.store.klines():
            try:
                ban = BanRecord.load(json.loads(doc))
            except (ValueError, TypeError) as exc:
                logger.error("a stored kline was unreadable: %s", exc)
                continue
            if ban.until is None or ban.until > now:
                self.klines[str(ban.mask)] = ban

    def oper_account(self, name: str, flag: bool) -> bool:
        """Whether the account ``name`` is a server operator (its ``flag``
        in the store, or named by the configuration)."""
        return flag or name_key(name) in self.opers

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
            raise Banned("you are banned from this server" + reason_text(ban.reason))

    def expire(self, now: float) -> None:
        """Forget the klines whose time is up."""
        for mask in [m for m, b in self.klines.items() if b.until is not None and b.until <= now]:
            del self.klines[mask]

    async def run(self, caller: Member, command: ServerCommand) -> None:
        """Carry out a server operator's command."""
        if not caller.oper:
            raise NotOper("only server operators can do that")
        match command:
            case Kill(nick, reason):
                await self._kill(caller, nick, reason)
            case Kline(mask, duration, reason):
                await self._kline(caller, mask, duration, reason)
            case Unkline(mask):
                await self._unkline(caller, mask)
            case ListKlines():
                now = self._clock()
                live = [b for b in self.klines.values() if b.until is None or b.until > now]
                caller.tell(KlineList(tuple(b.entry() for b in live)))
            case Wall(text):
                self._wall(caller, text)

    async def _kill(self, caller: Member, nick: str, reason: str) -> None:
        target = await person(self.manager, self.opers, nick)
        by = caller.nick or ""
        why = f"killed by {by}" + (f": {reason}" if reason else "")
        logger.info("kill %s by %s: %s", target.nick, by, reason or "-")
        self.manager.stats.moderation["kill"] += 1
        caller.tell(KillDone(target.nick, by, reason))
        self.disconnect(target.key, why)
        self.manager.bus.broadcast(None, ["kill", target.key, why])

    async def _kline(self, caller: Member, mask: Mask, duration: int | None, reason: str) -> None:
        mask = await resolve(self.manager, mask)
        now, by = self._clock(), caller.nick or ""
        if str(mask) not in self.klines and len(self.klines) >= MAX_KLINES:
            raise ListFull(f"the server has {MAX_KLINES} klines, the most allowed")
        ban = BanRecord(mask, by, reason, now + duration if duration else None, now)
        self._set_kline(ban)
        logger.info("kline %s by %s: %s", mask, by, detail(duration, reason) or "-")
        self.manager.stats.moderation["kline"] += 1
        caller.tell(KlineSet(str(mask), by, reason, ban.until, duration))
        self.manager.store.save_kline(str(mask), json.dumps(ban.dump()))
        self.manager.bus.broadcast(None, ["kline", ban.dump()])

    async def _unkline(self, caller: Member, mask: Mask) -> None:
        masks = [str(mask), str(await resolve(self.manager, mask))]
        if mask.kind == "nick":
            masks.append(str(Mask("account", mask.value)))
        found = [m for m in dict.fromkeys(masks) if m in self.klines]
        if not found:
            raise BadArgs(f"no kline on {mask.shown}; /klines lists them")
        by = caller.nick or ""
        for key in found:
            del self.klines[key]
            self.manager.store.save_kline(key, None)
            logger.info("unkline %s by %s", key, by)
            self.manager.bus.broadcast(None, ["unkline", key])
            caller.tell(KlineLifted(key, by))

    def _wall(self, caller: Member, text: str) -> None:
        logger.info("wall from %s: %s", caller.nick, text)
        event = Notice(caller.nick or "", text)
        self._notice(event)
        self.manager.bus.broadcast(None, ["wall", event_to_json(event)])

    def arrived(self, data: list[Any]) -> bool:
        """Another node's server-wide step (False: it is not one)."""
        match data[0]:
            case "kill":
                self.disconnect(data[1], data[2])
            case "kline":
                self._set_kline(BanRecord.load(data[1]))
            case "unkline":
                self.klines.pop(data[1], None)
            case "wall":
                event = event_from_json(data[1])
                if isinstance(event, Notice):
                    self._notice(event)
            case _:
                return False
        return True

    def disconnect(self, nick_key: str, why: str) -> None:
        """End the connections of ``nick_key`` if it is here (``/kill``)."""
        self.manager.end(nick_key, why)

    def _set_kline(self, ban: BanRecord) -> None:
        """Keep a server ban and disconnect whoever it covers here."""
        self.klines[str(ban.mask)] = ban
        why = f"banned from the server by {ban.by}" + reason_text(ban.reason)
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


async def lookup(manager: Rooms, opers: set[str], nick: str) -> Person | None:
    """Whoever holds ``nick``, anywhere. Another node of a cluster knows an
    operator by its account's flag only: an account the configuration names
    (--oper) is one too, as it is for the members here."""
    found = await manager.bus.person(nick)
    if found is not None and found.account is not None and found.key in opers:
        return found._replace(oper=True)
    return found


async def person(manager: Rooms, opers: set[str], nick: str) -> Person:
    """As :func:`lookup`; NoSuchNick when nobody holds ``nick``."""
    found = await lookup(manager, opers, nick)
    if found is None:
        raise NoSuchNick(f"nobody is called {nick}")
    return found


async def resolve(manager: Rooms, mask: Mask) -> Mask:
    """A nickname mask means its account when that nickname is logged in."""
    if mask.kind != "nick":
        return mask
    found = await manager.bus.person(mask.value)
    if found is not None and found.account is not None:
        return Mask("account", found.key)
    return mask


def reason_text(reason: str) -> str:
    return f" ({reason})" if reason else ""


def detail(duration: int | None, reason: str) -> str:
    parts = [f"for {format_duration(duration)}" if duration else "", reason]
    return " ".join(p for p in parts if p)
