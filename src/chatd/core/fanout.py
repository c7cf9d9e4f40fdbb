"""Fan-out: one event to many members, encoded once per codec."""

from __future__ import annotations

from collections.abc import Iterable

from chatd.core.model import Member
from chatd.protocol import Event
from chatd.protocol.codec import Codec


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
    if encoded is None:
        encoded = {}
    last: Codec | None = None
    data = b""
    # The hot path of the daemon: per recipient one attribute read, one
    # identity check and the call (binding the codec to a local, or any
    # further test per recipient, measurably costs more per delivery).
    for member in members:
        if member.codec is not last:
            last = member.codec
            cached = encoded.get(last)
            if cached is None:
                cached = encoded[last] = last.encode(event)
            data = cached
        member.deliver(data)


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
