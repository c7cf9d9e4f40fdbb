"""An account's rooms, kept so that its next login rejoins them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from chatd.core.model import Member
from chatd.store import AccountRooms, Store


class SavedRooms:
    """Saves a logged-in member's rooms and current room in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: Members whose account's rooms are being rejoined: saved once, at the end.
        self._rejoining: set[Member] = set()

    def save(self, member: Member) -> None:
        """Remember a logged-in member's rooms, which its next login rejoins.

        Called on /join and /leave, not when a connection ends: quitting keeps
        an account's rooms, an explicit /leave forgets the room.
        """
        if (
            member.account is None
            or member.key is None
            or member.chooses_rooms
            or member in self._rejoining
        ):
            return
        current = member.current.name if member.current is not None else None
        rooms = tuple(room.name for room in member.rooms.values())
        self.store.save_account_rooms(member.account, AccountRooms(rooms, current))

    @contextlib.contextmanager
    def rejoining(self, member: Member) -> Iterator[None]:
        """Save ``member``'s rooms once when the block ends, not at each join.

        A login lands in general and then rejoins the account's rooms one by
        one, possibly waiting for the store between them: saving halfway
        would make the account forget rooms if the connection ended there.
        """
        self._rejoining.add(member)
        try:
            yield
        finally:
            self._rejoining.discard(member)
        self.save(member)
