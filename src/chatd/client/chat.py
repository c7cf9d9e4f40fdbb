"""The client's connection and state: ``chatd connect`` without its terminal.

The client always speaks JSON to the server (it sends ``/format json`` first
on every connection) and renders what it receives for people. JSON makes the
client independent of the server's human wording and lets it track its own
state: its nickname, the rooms it is in and its current room, which it needs
to come back after a reconnect. Where input comes from and where output goes
(a prompt, or the pipes of a script) is :mod:`chatd.client.terminal`'s.

What the client does not print, because the client caused it and not the user:

* the server's welcome (pipe mode only; interactive mode shows it, and a
  hint to pick a nickname when ``--nick`` was not given);
* the answer to the client's own ``/format json``;
* the pongs for its own ping tokens, and, in pipe mode, the ``bye`` of the
  ``/quit`` it sends at the end of input;
* the answers to the ``/read`` marks it sends itself (below), and the
  ``read`` events another connection of the account caused: only a
  ``/read`` the user typed is answered on screen;
* during a restore after a reconnect: the registration, its own joins and
  leaves, the ``current`` changes and the topics shown on join. One status
  line ("reconnected as ...") stands for them, printed after the missed
  messages. Of the history the joins replay, only the messages it had not
  shown yet (by id and time, per room; a room that had shown nothing is
  measured against the newest message shown anywhere, as ids are global)
  are printed; if the replay may not reach back to them all, the rest is
  fetched with ``/history #ROOM`` and printed first, in order. A fetch the
  server answers with an error is said, with the command to try again, and
  what was held back for it follows.

Logged in to an account, the client marks the room on screen (its current
room) read, with ``/read #ROOM ID`` up to the newest message it received
there: when messages arrive in it and when another room becomes current, at
most once every 2 s (see :mod:`chatd.client.marks`), never for a guest
(the server would refuse) and never during a restore. Each such ``/read``,
and each one the user types, goes out between two ``/ping`` tokens of the
client's: replies to one connection come in order, so what comes between
their pongs answers that ``/read`` (a ``read`` event, or an error), and is
hidden or shown accordingly. A message that mentions the user, and a
private message from someone else, ring the terminal's bell (interactive
mode only; see :mod:`chatd.client.ui`).

``/format`` typed by the user is refused locally: switching the server to
text would break the client, so ``/help`` does not list it. ``/quit`` is
sent and the client waits (a bounded time) for the ``bye`` or the close.

Reconnecting: when the connection ends without a ``/quit`` (the server
closed it, a network error, or a ``shutdown`` event, which is printed and
then treated as the end of the connection), the client says so and retries
after a delay that starts at ``backoff_initial`` (0.5 s) and doubles up to
``backoff_max`` (30 s), each delay moved by up to +-20 % of jitter so that the
clients of a restarted server do not all return at the same instant. A
connection only counts as made (and resets the delay) once the server has
acknowledged ``/format json``. On the new connection the client takes its
nickname back (logging in again with the password of the ``/login`` or
``/register`` typed in this session, kept in memory only and updated by
``/passwd``; the server then puts it back in the account's rooms itself, as
they are now); a guest rejoins its rooms in their old order, leaves
``general`` if it had left it, and makes its old current room current again. Lines typed at
the prompt while disconnected are kept and sent after that; in pipe mode
stdin is simply not read until the connection is back. If someone took the
nickname meanwhile, the server's error is shown and the user picks another
one. With ``--no-reconnect``, or when the very first connection fails, the
client exits with status 1 instead. A ``bye`` the client did not ask for
with ``/quit`` means the server sent this session away on purpose (another
connection of the account ended it with ``/kick-session`` or ``/logout
--all``, a login on another daemon of a cluster took the account over, or
any kick): the client says so and exits with status 1 rather than come
back, which would undo it (and, in a cluster, throw the other session off in
turn).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from chatd.client.catchup import CatchUp
from chatd.client.commands import REFUSED_COMMANDS, command_name
from chatd.client.link import Link
from chatd.client.login import Relogin
from chatd.client.marks import ReadMarks
from chatd.client.options import ClientOptions
from chatd.client.reconnect import Backoff, Snapshot, restore_commands
from chatd.client.render import field, parse_server_line
from chatd.client.ui import Ui
from chatd.errors import LineTooLong
from chatd.protocol import LineFramer, name_key

#: The package's one logger: log lines name ``chatd.client`` whichever module wrote them.
logger = logging.getLogger("chatd.client")

#: Longest line accepted from the server; a big ``/rooms`` answer stays well under it.
_MAX_SERVER_LINE: Final = 1 << 20
#: Bytes asked for in one read, from the server or from stdin.
READ_SIZE: Final = 65536
#: Errors that answer a /read: hidden when the /read was the client's own.
_READ_ERRORS: Final = frozenset(
    {
        "not_logged_in",
        "not_in_room",
        "no_such_room",
        "bad_args",
        "storage_unavailable",
        "unknown_command",
    }
)
#: The ``bye`` reason of a connection ended by another of its account.
_ENDED_BY_SESSION: Final = "ended by another session of "


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class ChatClient:
    """Connects, renders, reconnects: everything but where input comes from.

    Input arrives through :meth:`submit`, :meth:`end_of_input` and
    :meth:`quit`, called by whichever input loop :meth:`run` was given.
    """

    def __init__(self, options: ClientOptions, ui: Ui) -> None:
        self._options = options
        self._ui = ui
        self._address = f"{options.host}:{options.port}"
        #: The nickname the server gave us on the current connection.
        self._nick: str | None = None
        #: Rooms we are in (name_key -> name), in join order.
        self._rooms: dict[str, str] = {}
        #: The keys of rooms with +k (name_key -> key): typed in /join ROOM
        #: KEY or seen in a ``mode`` event, for rejoining after a reconnect.
        self._keys: dict[str, str] = {}
        self._current: str | None = None
        self._link: Link | None = None
        self._snapshot: Snapshot | None = None
        #: The /login that takes the account back after a reconnect (in memory only).
        self._relogin = Relogin()
        #: Why the server sent us away with a ``bye`` we did not ask for.
        self._sent_away: str | None = None
        #: Lines typed (interactive) while there was no connection to send them on.
        self._backlog: list[str] = []
        self._ready = asyncio.Event()
        self._quit_requested = asyncio.Event()
        self._quitting = False
        self._quiet_quit = False
        self._exit_status = 0
        self._token_prefix = f"chatd-client-{secrets.token_hex(6)}"
        self._token_count = 0
        self._tokens: set[str] = set()
        self._eof_token: str | None = None
        #: What was shown, and the missed messages of a reconnect.
        self._catchup = CatchUp(ui, self._new_token)
        #: The server said we are logged in to an account (read marks are kept).
        self._logged_in = False
        #: The automatic /read of the room on screen.
        self._marks = ReadMarks(self._send_mark)
        #: The ping token sent before each /read -> whether the user typed it,
        #: and the one sent after it: between their pongs comes its answer.
        self._read_starts: dict[str, bool] = {}
        self._read_ends: set[str] = set()
        #: Inside the answer to a /read: True the user's (shown), False the
        #: client's own (hidden); None outside.
        self._reading: bool | None = None
        #: Called when what the prompt shows may have changed.
        self.on_change: Callable[[], None] = lambda: None

    # -- what the input side calls ---------------------------------------

    @property
    def quitting(self) -> bool:
        """The user (or the end of input) asked to quit: stop reading input."""
        return self._quitting

    def prompt(self) -> str:
        """The prompt text: the current room, and whether we are connected."""
        link = self._link
        room = self._current
        if (link is None or link.restoring) and self._snapshot is not None:
            room = self._snapshot.current
        prefix = "" if link is not None else "(offline) "
        return f"{prefix}[{room or '-'}]> "

    async def submit(self, line: str) -> None:
        """Send one line the user typed: said in the room, or a slash command."""
        line = line.rstrip("\r\n")
        if self._quitting or not line.strip():
            return
        command = command_name(line)
        if command == "/quit":
            self.quit(line)
            return
        if command is not None and (why := REFUSED_COMMANDS.get(command)):
            self._ui.status(f"{command} is not sent: {why}", error=True)
            return
        if self._ui.interactive and (self._link is None or not self._link.ready):
            self._backlog.append(line)
            self._ui.status("not connected yet: the line will be sent once reconnected")
            return
        self._relogin.typed(command, line)
        if command == "/join" and len(words := line.split()) == 3:
            self._keys[name_key(words[1].lstrip("#"))] = words[2]
        # Pipe mode waits for a connection instead: stdin is read no faster than it is sent.
        while (link := self._link) is None or not link.ready:
            await self._ready.wait()
        self._send_line(link, line)
        await link.drain()

    def end_of_input(self) -> None:
        """No more input: quit once everything sent so far has been answered."""
        if self._quitting or self._eof_token is not None:
            return
        self._eof_token = self._new_token()
        link = self._link
        if link is not None and link.ready:
            link.send(f"/ping {self._eof_token}")
        # Otherwise _make_ready sends the ping once a connection is up.

    def quit(self, line: str = "/quit", *, quiet: bool = False, status: int = 0) -> None:
        """Leave: send ``line`` (a /quit) if connected, then let :meth:`run` finish.

        ``quiet`` hides the server's ``bye``: the user did not type this /quit.
        """
        if self._quitting:
            return
        self._quitting = True
        self._quiet_quit = quiet
        self._exit_status = status
        if self._link is not None:
            self._link.send(line)
        self._quit_requested.set()

    # -- the connection loop ----------------------------------------------

    async def run(self, read_input: Callable[[], Awaitable[None]]) -> int:
        """Connect, then serve until the user quits; return the exit status.

        ``read_input`` is started once the first connection is up and is
        cancelled when the client is done.
        """
        try:
            link = await self._open()
        except OSError as exc:
            self._ui.status(f"cannot connect to {self._address}: {_describe(exc)}", error=True)
            return 1
        backoff = Backoff(
            self._options.backoff_initial,
            self._options.backoff_max,
            self._options.backoff_jitter,
        )
        ever_made = False
        self._attach(link)
        input_task = asyncio.create_task(self._input_boundary(read_input), name="client-input")
        try:
            while True:
                reason = await self._serve(link)
                if self._quitting:
                    return self._exit_status
                if self._sent_away is not None:
                    # Sent away on purpose: coming back would undo it (and a
                    # login elsewhere would throw that one off in turn).
                    self._ui.status(self._sent_away, error=True)
                    return 1
                if link.acked:
                    ever_made = True
                    backoff.reset()
                elif not ever_made:
                    self._ui.status(
                        f"{self._address} closed the connection before it was set up: {reason}",
                        error=True,
                    )
                    return 1
                if not self._options.reconnect:
                    self._ui.status(
                        f"connection to {self._address} lost: {reason}; "
                        "not reconnecting (--no-reconnect)",
                        error=True,
                    )
                    return 1
                self._ui.status(f"connection to {self._address} lost: {reason}", error=True)
                next_link = await self._reconnect(backoff)
                if next_link is None:
                    return self._exit_status
                link = next_link
                self._attach(link)
        finally:
            input_task.cancel()
            await asyncio.wait([input_task])

    async def _input_boundary(self, read_input: Callable[[], Awaitable[None]]) -> None:
        try:
            await read_input()
        except Exception:
            logger.exception("reading input failed")
            self._ui.status("reading input failed; quitting", error=True)
            self.quit(status=1)

    async def _open(self) -> Link:
        async with asyncio.timeout(self._options.connect_timeout):
            options = self._options
            reader, writer = await asyncio.open_connection(
                options.host,
                options.port,
                ssl=options.tls,
                server_hostname=options.host if options.tls else None,
            )
        logger.debug("connected to %s", self._address)
        return Link(reader, writer)

    async def _reconnect(self, backoff: Backoff) -> Link | None:
        """Retry with backoff until connected; None when the user quits meanwhile."""
        while True:
            delay = backoff.next()
            self._ui.status(f"reconnecting in {delay:.1f} s")
            try:
                async with asyncio.timeout(delay):
                    await self._quit_requested.wait()
                return None
            except TimeoutError:
                pass
            try:
                link = await self._open()
            except OSError as exc:
                self._ui.status(f"cannot reconnect to {self._address}: {_describe(exc)}")
                continue
            if self._quitting:
                await link.close()
                return None
            return link

    def _attach(self, link: Link) -> None:
        """Make ``link`` the connection and start its handshake."""
        self._link = link
        self._start(link)
        self.on_change()

    async def _serve(self, link: Link) -> str:
        """Run one (attached) connection until it ends; return why it ended."""
        reader = asyncio.create_task(self._read_events(link), name="client-reader")
        quit_wait = asyncio.create_task(self._quit_requested.wait(), name="client-quit")
        try:
            await asyncio.wait([reader, quit_wait], return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                # /quit went out: wait for the bye or the close, but not forever.
                await asyncio.wait([reader], timeout=self._options.quit_timeout)
            return reader.result() if reader.done() else "quit"
        finally:
            if not link.restoring:
                self._snapshot = (
                    Snapshot(
                        self._nick,
                        tuple(self._rooms.values()),
                        self._current,
                        self._relogin.line,
                        self._catchup.newest,
                    )
                    if self._nick is not None
                    else None
                )
            # else: the restore did not finish; the next connection tries the same one.
            self._link = None
            self._ready.clear()
            for task in (reader, quit_wait):
                task.cancel()
            await asyncio.wait([reader, quit_wait])
            await link.close()
            self.on_change()

    def _start(self, link: Link) -> None:
        """Open the conversation: JSON first, then the nickname."""
        # A new connection is a new session: the server knows nothing of us yet.
        self._nick = None
        self._logged_in = False
        self._rooms.clear()
        self._current = None
        self._catchup.reset()
        self._marks.reset()
        self._read_starts.clear()
        self._read_ends.clear()
        self._reading = None
        link.send("/format json")
        if self._snapshot is not None:
            link.restore = self._snapshot
            link.send(self._snapshot.login or f"/nick {self._snapshot.nick}")
            # The rest goes out once the server confirms the nickname (_on_event).
        else:
            if self._options.nick:
                link.send(f"/nick {self._options.nick}")
            self._make_ready(link)

    def _make_ready(self, link: Link) -> None:
        link.ready = True
        self._ready.set()
        for line in self._backlog:
            self._send_line(link, line)
        self._backlog.clear()
        if self._eof_token is not None:
            link.send(f"/ping {self._eof_token}")

    def _send_line(self, link: Link, line: str) -> None:
        """Send a line the user typed; a /read between ping tokens (see above)."""
        if command_name(line) == "/read":
            self._send_read(link, line, typed=True)
        else:
            link.send(line)

    def _send_read(self, link: Link, line: str, *, typed: bool) -> None:
        start, end = self._new_token(), self._new_token()
        self._read_starts[start] = typed
        self._read_ends.add(end)
        link.send(f"/ping {start}")
        link.send(line)
        link.send(f"/ping {end}")

    def _send_mark(self, room: str, message_id: int) -> bool:
        """Mark ``room`` read up to ``message_id``, if it may be done now."""
        link = self._link
        if (
            not self._logged_in
            or self._quitting
            or link is None
            or not link.ready
            or link.restoring
            or name_key(room) not in self._rooms
        ):
            return False
        # "#": a room named by digits alone would be read as the id.
        self._send_read(link, f"/read #{room} {message_id}", typed=False)
        return True

    def _new_token(self) -> str:
        self._token_count += 1
        token = f"{self._token_prefix}-{self._token_count}"
        self._tokens.add(token)
        return token

    async def _read_events(self, link: Link) -> str:
        """The reader task: handle events until the connection ends; return why."""
        framer = LineFramer(_MAX_SERVER_LINE)
        try:
            while True:
                data = await link.reader.read(READ_SIZE)
                if not data:
                    return "closed by the server"
                for item in framer.feed(data):
                    if isinstance(item, LineTooLong):
                        # Shown, not logged: a log line would garble the prompt.
                        self._ui.status(f"skipped a line from the server: {item.text}")
                        continue
                    end = self._on_line(link, item)
                    if end is not None:
                        return end
        except (ConnectionError, OSError) as exc:
            return _describe(exc)
        except Exception:
            logger.exception("handling the server's events failed")
            return "client error (see the log)"

    def _on_line(self, link: Link, line: bytes) -> str | None:
        """Handle one line; return a reason when the connection should end."""
        text = line.decode("utf-8", "replace")
        event, is_json = parse_server_line(text)
        hidden = self._on_event(link, event)
        if not hidden and not self._catchup.hold(link, event, text if is_json else None):
            self._catchup.show(event, text if is_json else None, bell=self._rings(event))
        kind = event.get("type")
        if kind == "welcome" and not hidden and self._options.nick is None:
            self._ui.status("pick a nickname: type it, or /nick NAME")
        if kind == "bye":
            return "bye"
        if kind == "shutdown":
            return "the server is shutting down"
        return None

    def _is_me(self, nick: object) -> bool:
        return (
            isinstance(nick, str)
            and self._nick is not None
            and name_key(nick) == name_key(self._nick)
        )

    def _rings(self, event: Mapping[str, Any]) -> bool:
        """Whether an event calls for the user: a mention, or someone's private message."""
        if event.get("history") is True or event.get("search") is True:
            return False
        match event.get("type"):
            case "message":
                return event.get("mention") is True
            case "dm":
                return not self._is_me(event.get("from"))
        return False

    def _on_message(self, event: Mapping[str, Any]) -> None:
        """Note a room message for the read marks; mark the room on screen."""
        room, message_id = event.get("room"), event.get("id")
        if (
            not isinstance(room, str)
            or not isinstance(message_id, int)
            or isinstance(message_id, bool)
            or event.get("search") is True
        ):
            return
        self._marks.received(room, message_id)
        if self._is_me(event.get("from")):
            # Sending a message marks its room read up to it.
            self._marks.read(room, message_id)
        elif self._current is not None and name_key(room) == name_key(self._current):
            self._marks.on_screen(room)

    def _on_event(self, link: Link, event: Mapping[str, Any]) -> bool:
        """Track our own state from an event; return True to hide it."""
        restoring = link.restoring
        match event.get("type"):
            case "format":
                if link.acked:
                    return False
                link.acked = True
                return True
            case "welcome":
                return restoring or not self._ui.interactive
            case "registered":
                nick = event.get("nick")
                self._nick = nick if isinstance(nick, str) else None
                self._logged_in = event.get("account") is True
                self._marks.forget_reads()  # another account, or none
                self._relogin.registered(
                    nick,
                    account=event.get("account") is True,
                    restore=link.restore if restoring else None,
                )
                if restoring and link.restore_token is None:
                    self._send_restore(link)
                return restoring
            case "logout":
                self._nick, self._relogin.line = None, None
                self._logged_in = False
                self._marks.reset()
                self._rooms.clear()
                self._current = None
                self.on_change()
                return False
            case "mode":
                room, modes = event.get("room"), event.get("modes")
                if isinstance(room, str) and isinstance(modes, Mapping):
                    key = modes.get("k")
                    if isinstance(key, str):
                        self._keys[name_key(room)] = key
                    elif "k" in modes:
                        self._keys.pop(name_key(room), None)
                return False
            case "nick":
                if self._is_me(event.get("old")) and isinstance(new := event.get("new"), str):
                    self._nick = new
                return False
            case "join":
                room = event.get("room")
                if self._is_me(event.get("nick")) and isinstance(room, str):
                    self._rooms[name_key(room)] = room
                    return restoring
                return False
            case "leave":
                room = event.get("room")
                if self._is_me(event.get("nick")) and isinstance(room, str):
                    self._rooms.pop(name_key(room), None)
                    return restoring
                return False
            case "current":
                room = event.get("room")
                self._current = room if isinstance(room, str) else None
                self.on_change()
                if self._current is not None:
                    self._marks.on_screen(self._current)
                return restoring
            case "message":
                self._on_message(event)
                return False
            case "read":
                room, message_id = event.get("room"), event.get("id")
                if (
                    isinstance(room, str)
                    and isinstance(message_id, int)
                    and not isinstance(message_id, bool)
                ):
                    self._marks.read(room, message_id)
                # Shown only as the answer to a /read the user typed.
                return self._reading is not True
            case "topic":
                return restoring and event.get("changed") is not True
            case "passwd":
                self._relogin.passwd_changed(self._nick)
                return False
            case "pong":
                return self._on_pong(link, event.get("token"))
            case "error":
                if restoring and link.restore_token is None:
                    self._abandon_restore(link, event)
                code = field(event, "code")
                if self._reading is False and code in _READ_ERRORS:
                    if code in ("not_logged_in", "unknown_command"):
                        self._logged_in = False  # no more marks on this connection
                    return True
                return False
            case "bye":
                if not self._quitting:
                    reason = field(event, "reason")
                    if reason == "logged in from elsewhere":
                        self._sent_away = "you logged in from somewhere else; not reconnecting"
                    elif reason.startswith(_ENDED_BY_SESSION):
                        self._sent_away = (
                            f"another session of {reason.removeprefix(_ENDED_BY_SESSION)} "
                            "ended this one; not reconnecting"
                        )
                    else:
                        self._sent_away = (
                            f"the server ended the session ({reason or 'no reason given'}); "
                            "not reconnecting"
                        )
                return self._quiet_quit
        return False

    def _send_restore(self, link: Link) -> None:
        """Our nickname is back: rejoin the rooms, then let the user's lines through.

        Logged in, the server has put the connection back in the account's
        rooms itself, as they are now: the account's other connections may
        have joined or left rooms meanwhile, which rejoining the old list
        would undo for all of them."""
        snapshot = link.restore
        assert snapshot is not None
        if not self._logged_in:
            for command in restore_commands(snapshot.rooms, snapshot.current, self._keys):
                link.send(command)
        link.restore_token = self._new_token()
        link.send(f"/ping {link.restore_token}")
        self._make_ready(link)

    def _abandon_restore(self, link: Link, event: Mapping[str, Any]) -> None:
        """The nickname could not be taken back (taken meanwhile, say): carry on without."""
        snapshot = link.restore
        assert snapshot is not None
        link.restored = True
        self._snapshot = None
        self._ui.status(
            f"reconnected, but could not take back the nickname {snapshot.nick} "
            f"({field(event, 'code')}); pick one with /nick NAME",
            error=True,
        )
        self._make_ready(link)

    def _on_pong(self, link: Link, token: object) -> bool:
        if not isinstance(token, str) or token not in self._tokens:
            return False
        if token in self._read_starts:
            self._tokens.discard(token)
            self._reading = self._read_starts.pop(token)
        elif token in self._read_ends:
            self._tokens.discard(token)
            self._read_ends.discard(token)
            self._reading = None
        elif token == link.restore_token and link.restoring:
            link.restored = True
            self._snapshot = None
            rooms = ", ".join(f"#{room}" for room in self._rooms.values()) or "no room"
            where = f"; talking in #{self._current}" if self._current else ""
            self._catchup.restored(f"reconnected as {self._nick} in {rooms}{where}")
            self.on_change()
            if self._current is not None:
                self._marks.on_screen(self._current)
        elif token == self._eof_token:
            self.quit(quiet=True)
        else:
            self._catchup.on_pong(token)
        return True
