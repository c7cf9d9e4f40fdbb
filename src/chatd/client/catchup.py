"""What was shown, so that after a reconnect the missed messages come once, in order.

What is held back, fetched and shown during a restore is told in
:mod:`chatd.client.chat`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chatd.client.link import Link
from chatd.client.render import field
from chatd.client.ui import Ui
from chatd.protocol import name_key


def message_mark(event: Mapping[str, Any]) -> tuple[int, float] | None:
    """(id, ts) of a room message, to compare with what was shown; None otherwise."""
    id_, ts, room = event.get("id"), event.get("ts"), event.get("room")
    if (
        event.get("type") != "message"
        or not isinstance(room, str)
        or isinstance(id_, bool)
        or not isinstance(id_, int)
        or isinstance(ts, bool)
        or not isinstance(ts, int | float)
    ):
        return None
    return id_, float(ts)


def any_mark(event: Mapping[str, Any]) -> tuple[int, float] | None:
    """(id, ts) of a room message or a DM; None for anything else."""
    if event.get("type") == "dm":
        return message_mark({**event, "type": "message", "room": ""})
    return message_mark(event)


def shown_before(mark: tuple[int, float], seen: tuple[int, float]) -> bool:
    """Whether a message is no newer than the newest shown (by ``seen``).

    Ids alone would do on a daemon that kept its store; the time guards
    against a daemon that restarted without one and counts ids from 1 again.
    """
    return mark[0] <= seen[0] and mark[1] <= seen[1]


class CatchUp:
    """Shows events, noting what was shown; holds back a restore's replay.

    ``new_token`` makes a ping token the client will recognise as its own:
    each ``/history`` of a fetch is followed by a ``/ping`` with one.
    """

    def __init__(self, ui: Ui, new_token: Callable[[], str]) -> None:
        self._ui = ui
        self._new_token = new_token
        #: Per room (name_key): (id, ts) of the newest message shown, so that a
        #: reconnect shows only what was missed, not the history shown already.
        self._seen: dict[str, tuple[int, float]] = {}
        #: Rooms whose history replay (on the restore's joins) is being held
        #: back, and whether it repeated anything already shown.
        self._replay: dict[str, list[tuple[Mapping[str, Any], str | None]]] = {}
        self._replay_repeats: set[str] = set()
        #: Rooms whose missed messages are being fetched with /history: what
        #: to show after them (the replay, live messages that came meanwhile).
        self._fetching: dict[str, list[tuple[Mapping[str, Any], str | None]]] = {}
        #: The ping token sent after each /history of a fetch -> (room key,
        #: the /history line): every reply to that /history comes before its
        #: pong, so the pong releases a room its /history did not (an error).
        self._fetch_tokens: dict[str, tuple[str, str]] = {}
        #: (id, ts) of the newest message or DM shown in this session.
        self.newest: tuple[int, float] | None = None
        #: The "reconnected as ..." line, kept until the fetched messages are shown.
        self._restored_status: str | None = None

    def reset(self) -> None:
        """A new connection: nothing held or fetched on the last one is pending."""
        self._replay.clear()
        self._replay_repeats.clear()
        self._fetching.clear()
        self._fetch_tokens.clear()
        self._restored_status = None

    def show(self, event: Mapping[str, Any], raw: str | None, *, bell: bool = False) -> None:
        """Print an event, noting the newest message shown in each room.

        ``bell``: ring the bell with it (a mention, a private message).
        """
        self._ui.event(event, raw, bell=bell)
        if event.get("search") is True:
            return  # an old message found again: not what was shown of the room
        if (latest := any_mark(event)) is not None:
            self.newest = max(self.newest or latest, latest, key=lambda m: (m[1], m[0]))
        mark = message_mark(event)
        if mark is not None:
            key = name_key(event["room"])
            # The newest by time: ids start again on a daemon without a store.
            self._seen[key] = max(self._seen.get(key, mark), mark, key=lambda m: (m[1], m[0]))

    def hold(self, link: Link, event: Mapping[str, Any], raw: str | None) -> bool:
        """After a reconnect, show a room's missed messages once and in order.

        Return True when the event is not to be shown now. The joins of a
        restore replay each room's last messages: those shown before the
        connection was lost are dropped. If the replay is all new and the
        server has older ones, what was missed before it is fetched with
        ``/history`` and shown first, the replay and any live message after.
        A room that showed nothing before is measured against the newest
        message shown anywhere (ids are global), so what was said in it
        meanwhile is shown too.
        """
        kind, room = event.get("type"), event.get("room")
        if kind not in ("message", "history") or not isinstance(room, str):
            return False
        key = name_key(room)
        mark = message_mark(event)
        history = kind == "history" or event.get("history") is True
        if key in self._fetching:
            if not history:
                self._fetching[key].append((event, raw))  # after the missed ones
            elif mark is not None:
                seen = self._seen_mark(link, key)
                if seen is None or not shown_before(mark, seen):
                    self.show(event, raw)
            else:
                # The end of the /history page: everything held follows it.
                if event.get("more") is True:
                    self._ui.status(
                        f"more messages of #{room} were missed; "
                        f"/history #{room} 1000 before={field(event, 'before')}"
                    )
                self._release(key)
            return True
        if not link.restoring or not history:
            return False
        seen = self._seen_mark(link, key)
        if seen is None:
            return False
        if mark is not None:
            if shown_before(mark, seen):
                self._replay_repeats.add(key)
            else:
                self._replay.setdefault(key, []).append((event, raw))
            return True
        # The replay's summary: shown only through what it brought.
        replay = self._replay.pop(key, [])
        repeats = key in self._replay_repeats
        self._replay_repeats.discard(key)
        if replay and not repeats and event.get("more") is True:
            self._fetching[key] = replay
            # "#": a room named by digits alone would be read as the count.
            command = f"/history #{room} 1000 before={replay[0][0].get('id')}"
            token = self._new_token()
            self._fetch_tokens[token] = (key, command)
            link.send(command)
            link.send(f"/ping {token}")
            return True
        for held, held_raw in replay:
            self.show(held, held_raw)
        return True

    def restored(self, status: str) -> None:
        """Say the restore's status line, or keep it until the fetches are shown."""
        if self._fetching:
            # Said after the missed messages still being fetched, not amid them.
            self._restored_status = status
        else:
            self._ui.status(status)

    def on_pong(self, token: str) -> None:
        """The pong after a fetch's ``/history``: release its room if still held."""
        if (fetch := self._fetch_tokens.pop(token, None)) is not None:
            key, command = fetch
            if key in self._fetching:
                # The /history was answered without its page (an error): no
                # room stays held; what was held follows the error.
                self._ui.status(f"the missed messages could not be fetched; {command}", error=True)
                self._release(key)

    def _seen_mark(self, link: Link, key: str) -> tuple[int, float] | None:
        """The newest message shown in a room, or a bound for it; None: no bound.

        A room of the restored state that showed nothing yet takes the
        newest message shown anywhere before the connection was lost.
        """
        if (seen := self._seen.get(key)) is not None:
            return seen
        snapshot = link.restore
        if snapshot is None or key not in {name_key(room) for room in snapshot.rooms}:
            return None
        return snapshot.newest

    def _release(self, key: str) -> None:
        """Show what a fetch held back; the restore's status once none is left."""
        for held, held_raw in self._fetching.pop(key, []):
            self.show(held, held_raw)
        if not self._fetching and self._restored_status is not None:
            self._ui.status(self._restored_status)
            self._restored_status = None
