"""Fan-out: one event to many members, encoded once per codec."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from chatd.core.model import Member
from chatd.protocol import Event
from chatd.protocol.codec import Codec


class Batches:
    """The batches members have open in one loop pass (``Member.batch``),
    and how many bytes fan-out may still append to them unchecked.

    Each member that opens a batch lowers the credit to what it can take
    before its soft limit; each encoding of an event fanned out spends its
    size once, however many batches it goes into, so no member takes more
    than its share unchecked. When the credit runs out, every batch closes
    (the member counts and checks what is in it: ``Member.close_batch``)
    and the rest of the pass goes through ``deliver()``, which checks each
    delivery. The flush of the pass starts a new one (:meth:`new_pass`).
    """

    __slots__ = ("credit", "members")

    def __init__(self) -> None:
        self.credit = 0
        self.members: list[Member] = []

    def open(self, member: Member, room: int) -> bool:
        """May ``member``, which can take ``room`` more bytes, open a batch?"""
        if room <= 0 or (self.members and self.credit <= 0):
            return False
        self.credit = min(self.credit, room) if self.members else room
        self.members.append(member)
        return True

    def spend(self, size: int) -> None:
        """An event of ``size`` bytes goes to the open batches; when the
        credit runs out, every batch closes."""
        self.credit -= size
        if self.credit < 0:
            members, self.members = self.members, []
            for member in members:
                member.close_batch()

    def new_pass(self) -> None:
        """The pass's batches were flushed: the next pass starts with none."""
        self.members = []


class _PerThread(threading.local):
    # One event loop runs in a thread at a time: its batches are the thread's.
    def __init__(self) -> None:
        self.batches = Batches()


_THREAD = _PerThread()


def batches() -> Batches:
    """The batches of the event loop running in this thread."""
    return _THREAD.batches


def send_all(
    members: Iterable[Member],
    event: Event,
    actor: Member | None = None,
    *,
    encoded: dict[Codec, bytes] | None = None,
) -> None:
    """Deliver ``event`` to ``members``: the same bytes go into every outbox
    of a codec, and per recipient the work is one call.

    ``actor``, the member whose command caused the event, gets it as a reply
    while earlier commands of its are still pending, so that it comes in its
    place among the replies to its commands. ``encoded``: the event in the
    codecs it was already encoded in.
    """
    if actor is not None and actor.ops_pending() and actor in members:
        actor.tell(event)
        members = [m for m in members if m is not actor]
    open_batches = _THREAD.batches
    if encoded is None:
        encoded = {}
    elif open_batches.members:
        # Each encoding spends its size once: a member takes one of them.
        open_batches.spend(sum(map(len, encoded.values())))
    last: Codec | None = None
    data = b""
    # The hot path of the daemon: per recipient two attribute reads, an
    # identity check and one append to the batch the member has open for
    # this loop pass (Member.batch); a call to deliver() only for the first
    # delivery of a pass or a member that is behind or closing.
    for member in members:
        if member.codec is not last:
            last = member.codec
            cached = encoded.get(last)
            if cached is None:
                cached = encoded[last] = last.encode(event)
                if open_batches.members:
                    open_batches.spend(len(cached))
            data = cached
        batch = member.batch
        if batch is None:
            member.deliver(data)
        else:
            batch.append(data)


class Watchers:
    """Members that asked for ``room`` events (``/rooms watch``).

    Opt-in: a room created among thousands of connections costs one
    delivery per watcher, not one per connection. Logging out or
    disconnecting stops it.
    """

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: dict[Member, None] = {}

    def watch(self, member: Member, on: bool) -> None:
        if on:
            self._members[member] = None
        else:
            self._members.pop(member, None)

    def tell(self, event: Event) -> None:
        """The one place that decides who learns of a room: every room is
        visible to everyone today; a room some may not see is filtered here."""
        if self._members:
            send_all(self._members, event)
