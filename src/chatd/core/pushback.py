"""Pushback: senders wait for readers that are a moment behind.

A member whose outbox goes over its soft limit is *behind*. While it still
reads, a message to it waits (its sender stops being read, and TCP pushes
back on the sender) instead of growing the reader's outbox until the reader
is cut for lagging a moment behind the talkers. A reader that stopped
reading holds nobody back for longer than its stall allows
(:meth:`~chatd.core.model.Member.stall`), and all of them together no longer
than the holding budget: past it, a reader much slower than its room meets
its outbox limits as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chatd.core.model import Member
from chatd.protocol import name_key

#: Backpressure's budget: seconds that senders may be held back for readers
#: that are behind, at most HOLD_BURST in one stretch and HOLD_SHARE of the
#: time after that. A reader a moment behind the talkers uses a little of
#: it; readers that stop reading, one after another, cannot slow the server
#: by more than that share.
HOLD_BURST = 3.0
HOLD_SHARE = 0.1


class Pushback:
    """Who is behind, and how long a sender to them should wait."""

    def __init__(self, find: Callable[[str], Member | None]) -> None:
        #: The member holding a nickname key (the room manager's).
        self._find = find
        #: Members whose outbox is over the soft limit; ``_relief`` is done
        #: when one of them catches up or goes.
        self._behind: dict[Member, None] = {}
        self._relief: asyncio.Future[None] | None = None
        #: The holding budget (see HOLD_BURST): seconds left, when it was
        #: last brought up to date (loop time), and how many senders wait.
        self._hold_left = HOLD_BURST
        self._hold_stamp = 0.0
        self._holders = 0

    def falling_behind(self, member: Member) -> None:
        """``member``'s outbox went over its soft limit."""
        self._behind[member] = None

    def caught_up(self, member: Member) -> None:
        """``member``'s outbox is under its soft limit again, or it is gone."""
        if member in self._behind:
            del self._behind[member]
            if self._relief is not None:
                self._relief.set_result(None)
                self._relief = None

    @property
    def anyone_behind(self) -> bool:
        """Some member is behind on its output (backpressure may apply)."""
        return bool(self._behind)

    def backpressure(self, member: Member, to: str | None, now: float) -> float:
        """Seconds ``member`` should wait before its next message to the
        current room (or to nick ``to``), at most; 0.0: send now."""
        if not self._behind or self._hold_budget(now) <= 0.0:
            return 0.0
        wait = 0.0
        if to is None:
            room = member.current
            if room is None:
                return 0.0
            for other in self._behind:
                if other is not member and other in room.members:
                    wait = max(wait, other.stall(now))
        else:
            target = self._find(name_key(to))
            if target is not None and target is not member and target in self._behind:
                wait = target.stall(now)
        return min(wait, self._hold_left)

    def hold(self, now: float, holding: bool) -> None:
        """A sender starts (``holding``) or stops waiting for backpressure."""
        self._hold_budget(now)
        self._holders += 1 if holding else -1

    def _hold_budget(self, now: float) -> float:
        """The seconds of holding left: spent while any sender waits, earned
        back at HOLD_SHARE a second while none does."""
        elapsed = max(0.0, now - self._hold_stamp)
        self._hold_stamp = now
        if self._holders:
            self._hold_left = max(0.0, self._hold_left - elapsed)
        else:
            self._hold_left = min(HOLD_BURST, self._hold_left + elapsed * HOLD_SHARE)
        return self._hold_left

    def relief(self) -> asyncio.Future[None]:
        """A future done when a member that was behind catches up or goes."""
        if self._relief is None:
            self._relief = asyncio.get_running_loop().create_future()
        return self._relief
