"""What a reconnect needs: the delays between attempts, the state to bring back.

How the client reconnects, and what it shows of what it missed, is told in
:mod:`chatd.client.chat`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from chatd.protocol import DEFAULT_ROOM, name_key


class Backoff:
    """Delays between reconnection attempts: doubling, capped, jittered.

    ``rng`` returns floats in [0, 1); tests pass a fixed one.
    """

    __slots__ = ("_attempt", "_rng", "initial", "jitter", "maximum")

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(self._attempt, 64))
        self._attempt += 1
        return min(self.maximum, base * (1.0 + self.jitter * (2.0 * self._rng() - 1.0)))

    def reset(self) -> None:
        """Start again from ``initial`` (after a connection was really made)."""
        self._attempt = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the client was on the server, to be restored after a reconnect."""

    nick: str
    rooms: tuple[str, ...]
    current: str | None
    #: The /login line that made the session an account's, kept in memory
    #: only, to log in again after a reconnect (the nickname is protected).
    login: str | None = None
    #: (id, ts) of the newest message or DM shown anywhere: message ids are
    #: global, so it bounds what was seen in a room that showed nothing yet.
    newest: tuple[int, float] | None = None


def restore_commands(
    rooms: Sequence[str], current: str | None, keys: Mapping[str, str] | None = None
) -> list[str]:
    """The commands that bring a freshly registered session back to a state.

    Registering puts a session in ``general`` only; this rejoins ``rooms`` in
    their order, with the key of each room that has one (``keys``, by room
    key), leaves ``general`` if it is not among them and makes ``current``
    current again (a join makes the room current).
    """
    passwords = keys or {}
    present = {name_key(room) for room in rooms}
    commands = [
        f"/join {room} {passwords[name_key(room)]}".strip()
        if name_key(room) in passwords
        else f"/join {room}"
        for room in rooms
        if name_key(room) != DEFAULT_ROOM
    ]
    if DEFAULT_ROOM not in present:
        commands.append(f"/leave {DEFAULT_ROOM}")
    if current is not None and name_key(current) in present:
        commands.append(f"/join {current}")
    return commands
