"""Replies in command order, though some commands finish later.

A connection's commands run in the order sent, and most answer at once. A
message does not: it is fanned out, its echo to the sender included, only
when the store has it, and in cluster mode when it comes back from Redis.
A ``/ping`` answers after a barrier. Waiting for each of them before the
next command would serialise a connection on the store's latency, so they
pipeline instead, and :class:`ReplyOrder` puts the output back in order:

* each such command is an *operation*, numbered as it begins;
* a reply made while an earlier operation is unfinished is held, tagged
  with the last operation begun before it;
* an operation ends with what it has to say in its place (an error, a
  pong, in cluster mode the sender's echo), and everything held behind it
  then goes out, in order.

Operations usually end in the order they began (the store, the cluster
link and Redis are first in, first out); one that ends early waits for
those before it. Pure: no I/O, no clock; the session does the writing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["ReplyOrder"]


class ReplyOrder:
    """The operations of one connection and the replies held behind them."""

    __slots__ = ("_echoes", "_ended", "_held", "begun", "done", "held_bytes")

    def __init__(self) -> None:
        #: The number of the last operation begun, and of the last one ended
        #: with every operation before it.
        self.begun = 0
        self.done = 0
        #: Bytes of the replies held: output the connection has to take yet,
        #: like its outbox (the session paces the client on both).
        self.held_bytes = 0
        # The containers below are made when first needed: most connections
        # only ever have one message in flight at a time and hold nothing.
        #: Replies held, with the number of the last operation begun before them.
        self._held: deque[tuple[int, bytes]] | None = None
        #: Operations ended before an earlier one did: number -> their output.
        self._ended: dict[int, bytes | None] | None = None
        #: Messages whose echo ends them (cluster mode): (number, room key),
        #: oldest first, as their echoes come back from Redis.
        self._echoes: deque[tuple[int, str]] | None = None

    @property
    def busy(self) -> bool:
        """An operation is unfinished: replies are held."""
        return self.done != self.begun

    @property
    def awaits_echo(self) -> bool:
        """A message operation ends with its echo (see echo)."""
        return bool(self._echoes)

    def begin(self, echo_room: str | None = None) -> int:
        """Begin an operation; ``echo_room``: a message to that room, ended by
        its echo (:meth:`echo`). Returns its number."""
        self.begun += 1
        if echo_room is not None:
            if self._echoes is None:
                self._echoes = deque()
            self._echoes.append((self.begun, echo_room))
        return self.begun

    def hold(self, data: bytes) -> None:
        """Hold a reply until the operations begun before it ended."""
        if self._held is None:
            self._held = deque()
        self._held.append((self.begun, data))
        self.held_bytes += len(data)

    def end(self, seq: int, data: bytes | None = None) -> Sequence[bytes]:
        """Operation ``seq`` ended, saying ``data`` in its place; return what
        goes out now, in order. Ending an operation twice does nothing."""
        ended = self._ended
        if seq <= self.done or (ended is not None and seq in ended):
            return ()
        if self._echoes:
            for i, (number, _) in enumerate(self._echoes):
                if number == seq:
                    del self._echoes[i]
                    break
        if seq == self.done + 1 and not ended and not self._held:
            # The usual case: the next operation ends, and nothing waits on it.
            self.done = seq
            return () if data is None else (data,)
        if ended is None:
            ended = self._ended = {}
        ended[seq] = data
        out: list[bytes] = []
        held = self._held
        while (self.done + 1) in ended:
            self.done += 1
            said = ended.pop(self.done)
            if said is not None:
                out.append(said)
            while held and held[0][0] <= self.done:
                reply = held.popleft()[1]
                self.held_bytes -= len(reply)
                out.append(reply)
        return out

    def echo(self, room_key: str, data: bytes) -> tuple[list[bytes], bool]:
        """The sender's own message came back (cluster mode). It ends the
        oldest message operation to that room; messages before it to other
        rooms that the sender has left since get no echo and end with it.
        Returns what goes out now, and whether an operation awaited this
        echo (if not, ``data`` is not among it: deliver it as usual)."""
        echoes = self._echoes
        out: list[bytes] = []
        while echoes:
            seq, room = echoes[0]
            if room == room_key:
                out += self.end(seq, data)
                return out, True
            out += self.end(seq)  # its room was left before the echo came: none will
        return out, False

    def release(self) -> list[bytes]:
        """Closing: every held reply, in order; nothing is awaited any more."""
        out: list[bytes] = []
        held = self._held or deque()
        ended = self._ended or {}
        for seq in sorted(ended):
            while held and held[0][0] < seq:
                out.append(held.popleft()[1])
            if (said := ended[seq]) is not None:
                out.append(said)
        out.extend(data for _, data in held)
        self._held = self._ended = self._echoes = None
        self.held_bytes = 0
        self.done = self.begun
        return out
