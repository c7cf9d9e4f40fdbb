"""The terminal client: ``chatd connect``.

The client always speaks JSON to the server (it sends ``/format json`` first
on every connection) and renders what it receives for people. JSON makes the
client independent of the server's human wording and lets it track its own
state: its nickname, the rooms it is in and its current room, which it needs
to come back after a reconnect.

Two modes, chosen by whether stdin and stdout are terminals:

* **Interactive**: a prompt_toolkit prompt (``[general]> ``) inside
  ``patch_stdout(raw=True)``, so incoming lines are printed above the line
  being typed and never garble it. Lines are coloured when the terminal has
  colours (``NO_COLOR`` or ``TERM=dumb`` turn them off): nicks by a stable
  hash, errors red, system lines dim. The typed line is erased on Enter; the
  server's echo of it takes its place. Ctrl-D and Ctrl-C quit, as ``/quit``.
* **Pipe**: no prompt_toolkit. Each stdin line is sent; each event is printed
  as one plain line on stdout (with ``--json``: the server's JSON object,
  control characters removed), so scripts can use it. Status messages
  (connection lost, reconnecting, fatal errors) go to stderr, prefixed
  ``chatd connect:``, so stdout carries only events. At the end of stdin the
  client sends ``/ping <token>`` and waits for that pong, which proves every
  earlier line was answered and printed, then quits.

What the client does not print, because the client caused it and not the user:

* the server's welcome (pipe mode only; interactive mode shows it, and a
  hint to pick a nickname when ``--nick`` was not given);
* the answer to the client's own ``/format json``;
* the pongs for its own ping tokens, and, in pipe mode, the ``bye`` of the
  ``/quit`` it sends at the end of input;
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
``/passwd``; the server then rejoins the account's rooms itself), rejoins its
rooms in their old order, leaves ``general`` if it
had left it, and makes its old current room current again. Lines typed at
the prompt while disconnected are kept and sent after that; in pipe mode
stdin is simply not read until the connection is back. If someone took the
nickname meanwhile, the server's error is shown and the user picks another
one. With ``--no-reconnect``, or when the very first connection fails, the
client exits with status 1 instead. A ``bye`` the client did not ask for
with ``/quit`` means the server sent this session away on purpose (the
account logged in somewhere else, and later any kick): the client says so
and exits with status 1 rather than come back, which would undo it (and
throw the other session off in turn).

Exit status: 0 after ``/quit``, Ctrl-D, Ctrl-C at the prompt or the end of
input; 1 when it cannot connect at start, loses the connection with
``--no-reconnect``, is sent away by the server (a ``bye`` it did not ask
for), or (pipe mode) finds nobody reading its stdout any more;
130 when a pipe-mode client is interrupted by SIGINT.

Everything the server sends is untrusted: every field is passed through
:func:`~chatd.protocol.clean_text` before it is printed, and malformed
events are shown as well as possible, never trusted to have the right types.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import signal
import ssl
import sys
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final, Protocol

from chatd.errors import LineTooLong
from chatd.protocol import (
    DEFAULT_ROOM,
    LineFramer,
    clean_text,
    event_from_json,
    event_to_text,
    name_key,
)

logger = logging.getLogger(__name__)

#: Longest line accepted from the server; a big ``/rooms`` answer stays well under it.
_MAX_SERVER_LINE: Final = 1 << 20
_READ_SIZE: Final = 65536


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How ``chatd connect`` was asked to run."""

    host: str
    port: int
    nick: str | None = None
    reconnect: bool = True
    #: Print the server's JSON objects instead of rendered lines.
    json_output: bool = False
    #: Connect over TLS with this context (see chatd.transports.tls.client_context).
    tls: ssl.SSLContext | None = None
    #: First delay before a reconnection attempt, in seconds; it doubles each attempt.
    backoff_initial: float = 0.5
    #: Longest delay between reconnection attempts, in seconds.
    backoff_max: float = 30.0
    #: Each delay is moved randomly by up to this fraction of itself.
    backoff_jitter: float = 0.2
    #: Seconds one connection attempt may take.
    connect_timeout: float = 10.0
    #: Seconds to wait for the server's ``bye`` (or the close) after ``/quit``.
    quit_timeout: float = 3.0
    #: Force interactive (True) or pipe (False) mode; None decides by the terminals.
    interactive: bool | None = None

    def __post_init__(self) -> None:
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if not 0 <= self.backoff_jitter < 1:
            raise ValueError("backoff_jitter must be in [0, 1)")
        if self.connect_timeout <= 0 or self.quit_timeout < 0:
            raise ValueError("connect_timeout must be > 0 and quit_timeout >= 0")


# ---------------------------------------------------------------------------
# Rendering: pure functions from one event to display text.

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_RED: Final = "\x1b[31m"
#: Nick colours: no red (errors) and no dim (system lines), so a nick never looks like either.
_NICK_COLOURS: Final = tuple(f"\x1b[{n}m" for n in (32, 33, 34, 35, 36, 92, 93, 94, 95, 96))


def nick_colour(nick: str) -> str:
    """The ANSI colour of a nick: a stable hash, the same in every client and run."""
    return _NICK_COLOURS[zlib.crc32(name_key(nick).encode()) % len(_NICK_COLOURS)]


def _paint(text: str, code: str, colour: bool) -> str:
    return f"{code}{text}{_RESET}" if colour and text else text


def _field(event: Mapping[str, Any], key: str) -> str:
    """A field of an untrusted event as printable text ("" when missing)."""
    value = event.get(key)
    if value is None:
        return ""
    return clean_text(value if isinstance(value, str) else str(value))


def _entries(value: object) -> list[Mapping[str, Any]]:
    """The objects of a JSON array, skipping anything that is not an object."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


#: Commands this client does not send, and why (said when one is typed).
#: ``/help`` leaves them out: it lists only what works here.
REFUSED_COMMANDS: Final[Mapping[str, str]] = {
    "/format": "this client needs JSON from the server (use 'chatd connect --json' to print JSON)",
}


def _help_rows(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``help`` event's (usage, help) pairs, less the commands refused here.

    The server's list is the one description of the commands; each client
    shows the part of it that works in that client.
    """
    rows = [(_field(c, "usage"), _field(c, "help")) for c in _entries(event.get("commands"))]
    return [(usage, text) for usage, text in rows if _command_name(usage) not in REFUSED_COMMANDS]


def _stamp(ts: object, tz: tzinfo | None, fmt: str = "%H:%M", blank: str = "--:--") -> str:
    """A message's time in ``fmt``; ``blank`` when the server sent no usable time."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return blank
    try:
        return datetime.fromtimestamp(ts, tz).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return blank


def _system_text(event: Mapping[str, Any]) -> str:
    """The wording of every event that is not a message, a DM or an error.

    The server's own text rendering, so both speak alike; the welcome (with
    the client's own hint beside it) and the help (one line, for pipes) are
    worded here. Anything malformed is shown as it came, cleaned.
    """
    kind = _field(event, "type")
    match kind:
        case "welcome":
            name = " ".join(p for p in (_field(event, "server"), _field(event, "version")) if p)
            return f"* welcome to {name or 'the server'}; /help lists the commands"
        case "help":
            rows = [f"{usage} - {text}" for usage, text in _help_rows(event)]
            return "* commands: " + "; ".join(rows)
        case "text":
            return _field(event, "text")
    try:
        return clean_text(event_to_text(event_from_json(event)))
    except ValueError:
        rest = {k: v for k, v in event.items() if k != "type"}
        return clean_text(
            f"* {kind or 'event'}: {json.dumps(rest, ensure_ascii=False, default=str)}"
        )


def render_event(
    event: Mapping[str, Any], *, colour: bool = False, tz: tzinfo | None = None
) -> str:
    """Render one server event (a decoded JSON object) as one display line.

    ``colour`` adds ANSI colours; ``tz`` is the zone of the HH:MM stamps of
    messages and DMs (None: local time). Every field is cleaned of control
    characters, and a malformed event still renders: the server is untrusted.
    """
    kind = event.get("type")
    if kind in ("message", "dm") and event.get("history") is True:
        # The past: its date too, and the whole line dim, so it reads apart.
        line = render_event({**event, "history": False}, colour=False, tz=tz)
        return _paint(
            f"{_stamp(event.get('ts'), tz, '%Y-%m-%d', '----------')} {line}", _DIM, colour
        )
    if kind in ("message", "dm"):
        when = _paint(_stamp(event.get("ts"), tz), _DIM, colour)
        sender = _field(event, "from")
        who = _paint(sender, nick_colour(sender), colour)
        text = _field(event, "text")
        if kind == "dm":
            to = _field(event, "to")
            return f"{when} [{who} -> {_paint(to, nick_colour(to), colour)}] {text}"
        room = _field(event, "room")
        if event.get("action") is True:
            return f"{when} [{room}] * {who} {text}"
        return f"{when} [{room}] {who}: {text}"
    if kind == "history":
        return _paint(f"-- {_system_text(event)[2:]} --", _DIM, colour)
    if kind == "error":
        return _paint(f"! {_field(event, 'code')}: {_field(event, 'text')}", _RED, colour)
    if kind == "shutdown":
        return _paint(f"! shutdown: {_field(event, 'reason')}", _RED, colour)
    return _paint(_system_text(event), _DIM, colour)


def help_lines(event: Mapping[str, Any], *, colour: bool = False) -> list[str]:
    """The ``help`` event as an aligned table, for the interactive mode."""
    rows = _help_rows(event)
    width = max((len(usage) for usage, _ in rows), default=0)
    lines = [
        "* commands:",
        *(f"  {usage:<{width}}  {text}" for usage, text in rows),
        "* anything else is said in your current room",
    ]
    return [_paint(line, _DIM, colour) for line in lines]


def json_line(event: Mapping[str, Any], raw: str | None = None) -> str:
    """The ``--json`` output line: the server's own text when it sent JSON.

    Control characters are removed: JSON never has raw C0 characters in
    strings, but may carry DEL and C1 characters, which terminals obey.
    """
    if raw is None:
        raw = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    return clean_text(raw)


_TEXT_ERROR_RE: Final = re.compile(r"! ([a-z_]+): (.*)\Z", re.DOTALL)
_TEXT_WELCOME_RE: Final = re.compile(r"\* welcome to (\S+) (\S+)")


def parse_server_line(text: str) -> tuple[dict[str, Any], bool]:
    """Turn one line from the server into an event dict.

    Returns ``(event, True)`` for a JSON object with a string ``type``.
    Lines that are not JSON come before the server switched to JSON (the
    welcome, and a refusal such as ``server_full``, which is written in text
    and followed by the close): they are turned into the matching event, or
    into a ``{"type": "text"}`` event, and returned with False.
    """
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            return obj, True
    if m := _TEXT_ERROR_RE.match(text):
        return {"type": "error", "code": m.group(1), "text": m.group(2)}, False
    if m := _TEXT_WELCOME_RE.match(text):
        return {"type": "welcome", "server": m.group(1), "version": m.group(2).rstrip(".")}, False
    return {"type": "text", "text": text}, False


def restore_commands(rooms: Sequence[str], current: str | None) -> list[str]:
    """The commands that bring a freshly registered session back to a state.

    Registering puts a session in ``general`` only; this rejoins ``rooms`` in
    their order, leaves ``general`` if it is not among them and makes
    ``current`` current again (a join makes the room current).
    """
    keys = {name_key(room) for room in rooms}
    commands = [f"/join {room}" for room in rooms if name_key(room) != DEFAULT_ROOM]
    if DEFAULT_ROOM not in keys:
        commands.append(f"/leave {DEFAULT_ROOM}")
    if current is not None and name_key(current) in keys:
        commands.append(f"/join {current}")
    return commands


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


# ---------------------------------------------------------------------------
# Output: where event lines and status messages go.


class Ui(Protocol):
    """The client's output path (a terminal, or stdout and stderr of a pipe)."""

    interactive: bool

    def event(self, event: Mapping[str, Any], raw: str | None) -> None:
        """Show one server event; ``raw`` is the server's JSON text, if it sent JSON."""
        ...

    def status(self, text: str, *, error: bool = False) -> None:
        """Show something the client itself has to say."""
        ...


class TerminalUi:
    """Printing above the prompt: ``sys.stdout`` is prompt_toolkit's proxy then."""

    interactive = True

    def __init__(self, *, colour: bool, json_output: bool) -> None:
        self.colour = colour and not json_output
        self.json_output = json_output

    def event(self, event: Mapping[str, Any], raw: str | None) -> None:
        if self.json_output:
            self._print(json_line(event, raw))
        elif event.get("type") == "help":
            for line in help_lines(event, colour=self.colour):
                self._print(line)
        else:
            self._print(render_event(event, colour=self.colour))

    def status(self, text: str, *, error: bool = False) -> None:
        line = clean_text(f"! {text}" if error else f"* {text}")
        self._print(_paint(line, _RED if error else _DIM, self.colour))

    @staticmethod
    def _print(line: str) -> None:
        # Looked up on each call: patch_stdout replaces sys.stdout.
        print(line, flush=True)


class PipeUi:
    """One plain line per event on stdout; status on stderr."""

    interactive = False

    def __init__(self, *, json_output: bool, on_broken: Callable[[], None]) -> None:
        self.json_output = json_output
        self._on_broken = on_broken
        self._broken = False

    def event(self, event: Mapping[str, Any], raw: str | None) -> None:
        self._emit(json_line(event, raw) if self.json_output else render_event(event))

    def status(self, text: str, *, error: bool = False) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"chatd connect: {clean_text(text)}", file=sys.stderr, flush=True)

    def _emit(self, line: str) -> None:
        if self._broken:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # Nobody reads our output any more: stop. Point fd 1 at /dev/null
            # so the interpreter's final flush does not fail loudly again.
            self._broken = True
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            self._on_broken()


# ---------------------------------------------------------------------------
# The connection and the client's state machine.


@dataclass(frozen=True, slots=True)
class _Snapshot:
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


class _Link:
    """One TCP connection to the server and where its handshake stands."""

    __slots__ = ("acked", "reader", "ready", "restore", "restore_token", "restored", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        #: The server acknowledged /format json: it speaks JSON, the connection is made.
        self.acked = False
        #: The user's lines may go out (any restore commands have been sent first).
        self.ready = False
        #: The state to bring back on this connection, or None.
        self.restore: _Snapshot | None = None
        #: The ping token whose pong ends the restore.
        self.restore_token: str | None = None
        self.restored = False

    @property
    def restoring(self) -> bool:
        return self.restore is not None and not self.restored

    def send(self, line: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(line.encode("utf-8", "replace") + b"\n")

    async def drain(self) -> None:
        """Wait while the socket buffer is full; a lost connection is noticed by the reader."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _command_name(line: str) -> str | None:
    """``/quit`` for ``/QUIT bye``; None when the line is said, not a command."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    return line.split(" ", 1)[0].lower()


def _message_mark(event: Mapping[str, Any]) -> tuple[int, float] | None:
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


def _any_mark(event: Mapping[str, Any]) -> tuple[int, float] | None:
    """(id, ts) of a room message or a DM; None for anything else."""
    if event.get("type") == "dm":
        return _message_mark({**event, "type": "message", "room": ""})
    return _message_mark(event)


def _shown_before(mark: tuple[int, float], seen: tuple[int, float]) -> bool:
    """Whether a message is no newer than the newest shown (by ``seen``).

    Ids alone would do on a daemon that kept its store; the time guards
    against a daemon that restarted without one and counts ids from 1 again.
    """
    return mark[0] <= seen[0] and mark[1] <= seen[1]


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
        self._current: str | None = None
        self._link: _Link | None = None
        self._snapshot: _Snapshot | None = None
        self._login: str | None = None  # the /login of the account we are in
        self._login_sent: str | None = None  # the last /login typed, not yet answered
        self._register_sent: str | None = None  # the password of the last /register typed
        self._passwd_sent: str | None = None  # the new password of the last /passwd typed
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
        self._newest: tuple[int, float] | None = None
        #: The "reconnected as ..." line, kept until the fetched messages are shown.
        self._restored_status: str | None = None
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
        #: Called when what the prompt shows may have changed.
        self.on_change: Callable[[], None] = lambda: None

    # -- what the input side calls ---------------------------------------

    @property
    def quitting(self) -> bool:
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
        command = _command_name(line)
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
        if command == "/login":
            self._login_sent = line
        elif command == "/register" and len(words := line.split()) == 2:
            self._register_sent = words[1]
        elif command == "/passwd" and len(words := line.split()) == 3:
            self._passwd_sent = words[2]
        # Pipe mode waits for a connection instead: stdin is read no faster than it is sent.
        while (link := self._link) is None or not link.ready:
            await self._ready.wait()
        link.send(line)
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

    async def _open(self) -> _Link:
        async with asyncio.timeout(self._options.connect_timeout):
            options = self._options
            reader, writer = await asyncio.open_connection(
                options.host,
                options.port,
                ssl=options.tls,
                server_hostname=options.host if options.tls else None,
            )
        logger.debug("connected to %s", self._address)
        return _Link(reader, writer)

    async def _reconnect(self, backoff: Backoff) -> _Link | None:
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

    def _attach(self, link: _Link) -> None:
        """Make ``link`` the connection and start its handshake."""
        self._link = link
        self._start(link)
        self.on_change()

    async def _serve(self, link: _Link) -> str:
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
                    _Snapshot(
                        self._nick,
                        tuple(self._rooms.values()),
                        self._current,
                        self._login,
                        self._newest,
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

    def _start(self, link: _Link) -> None:
        """Open the conversation: JSON first, then the nickname."""
        # A new connection is a new session: the server knows nothing of us yet.
        self._nick = None
        self._rooms.clear()
        self._current = None
        self._replay.clear()
        self._replay_repeats.clear()
        self._fetching.clear()
        self._fetch_tokens.clear()
        self._restored_status = None
        link.send("/format json")
        if self._snapshot is not None:
            link.restore = self._snapshot
            link.send(self._snapshot.login or f"/nick {self._snapshot.nick}")
            # The rest goes out once the server confirms the nickname (_on_event).
        else:
            if self._options.nick:
                link.send(f"/nick {self._options.nick}")
            self._make_ready(link)

    def _make_ready(self, link: _Link) -> None:
        link.ready = True
        self._ready.set()
        for line in self._backlog:
            link.send(line)
        self._backlog.clear()
        if self._eof_token is not None:
            link.send(f"/ping {self._eof_token}")

    def _new_token(self) -> str:
        self._token_count += 1
        token = f"{self._token_prefix}-{self._token_count}"
        self._tokens.add(token)
        return token

    async def _read_events(self, link: _Link) -> str:
        """The reader task: handle events until the connection ends; return why."""
        framer = LineFramer(_MAX_SERVER_LINE)
        try:
            while True:
                data = await link.reader.read(_READ_SIZE)
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

    def _on_line(self, link: _Link, line: bytes) -> str | None:
        """Handle one line; return a reason when the connection should end."""
        text = line.decode("utf-8", "replace")
        event, is_json = parse_server_line(text)
        hidden = self._on_event(link, event)
        if not hidden and not self._catch_up(link, event, text if is_json else None):
            self._show(event, text if is_json else None)
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

    def _on_event(self, link: _Link, event: Mapping[str, Any]) -> bool:
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
                if event.get("account") is not True:
                    self._login = None
                elif restoring and link.restore is not None:
                    self._login = link.restore.login
                elif self._login_sent is not None:
                    self._login, self._login_sent = self._login_sent, None
                elif self._register_sent is not None and isinstance(nick, str):
                    # Registered here: the same password logs in again after a reconnect.
                    self._login = f"/login {nick} {self._register_sent}"
                    self._register_sent = None
                if restoring and link.restore_token is None:
                    self._send_restore(link)
                return restoring
            case "logout":
                self._nick, self._login = None, None
                self._rooms.clear()
                self._current = None
                self.on_change()
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
                return restoring
            case "topic":
                return restoring and event.get("changed") is not True
            case "passwd":
                if self._passwd_sent is not None and self._login is not None and self._nick:
                    self._login = f"/login {self._nick} {self._passwd_sent}"
                self._passwd_sent = None
                return False
            case "pong":
                return self._on_pong(link, event.get("token"))
            case "error":
                if restoring and link.restore_token is None:
                    self._abandon_restore(link, event)
                return False
            case "bye":
                if not self._quitting:
                    reason = _field(event, "reason")
                    self._sent_away = (
                        "you logged in from somewhere else; not reconnecting"
                        if reason == "logged in from elsewhere"
                        else f"the server ended the session ({reason or 'no reason given'}); "
                        "not reconnecting"
                    )
                return self._quiet_quit
        return False

    def _show(self, event: Mapping[str, Any], raw: str | None) -> None:
        """Print an event, noting the newest message shown in each room."""
        self._ui.event(event, raw)
        if (any_mark := _any_mark(event)) is not None:
            self._newest = max(self._newest or any_mark, any_mark, key=lambda m: (m[1], m[0]))
        mark = _message_mark(event)
        if mark is not None:
            key = name_key(event["room"])
            # The newest by time: ids start again on a daemon without a store.
            self._seen[key] = max(self._seen.get(key, mark), mark, key=lambda m: (m[1], m[0]))

    def _catch_up(self, link: _Link, event: Mapping[str, Any], raw: str | None) -> bool:
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
        mark = _message_mark(event)
        history = kind == "history" or event.get("history") is True
        if key in self._fetching:
            if not history:
                self._fetching[key].append((event, raw))  # after the missed ones
            elif mark is not None:
                seen = self._seen_mark(link, key)
                if seen is None or not _shown_before(mark, seen):
                    self._show(event, raw)
            else:
                # The end of the /history page: everything held follows it.
                if event.get("more") is True:
                    self._ui.status(
                        f"more messages of #{room} were missed; "
                        f"/history #{room} 1000 before={_field(event, 'before')}"
                    )
                self._release(key)
            return True
        if not link.restoring or not history:
            return False
        seen = self._seen_mark(link, key)
        if seen is None:
            return False
        if mark is not None:
            if _shown_before(mark, seen):
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
            self._show(held, held_raw)
        return True

    def _seen_mark(self, link: _Link, key: str) -> tuple[int, float] | None:
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
            self._show(held, held_raw)
        if not self._fetching and self._restored_status is not None:
            self._ui.status(self._restored_status)
            self._restored_status = None

    def _send_restore(self, link: _Link) -> None:
        """Our nickname is back: rejoin the rooms, then let the user's lines through."""
        snapshot = link.restore
        assert snapshot is not None
        for command in restore_commands(snapshot.rooms, snapshot.current):
            link.send(command)
        link.restore_token = self._new_token()
        link.send(f"/ping {link.restore_token}")
        self._make_ready(link)

    def _abandon_restore(self, link: _Link, event: Mapping[str, Any]) -> None:
        """The nickname could not be taken back (taken meanwhile, say): carry on without."""
        snapshot = link.restore
        assert snapshot is not None
        link.restored = True
        self._snapshot = None
        self._ui.status(
            f"reconnected, but could not take back the nickname {snapshot.nick} "
            f"({_field(event, 'code')}); pick one with /nick NAME",
            error=True,
        )
        self._make_ready(link)

    def _on_pong(self, link: _Link, token: object) -> bool:
        if not isinstance(token, str) or token not in self._tokens:
            return False
        if token == link.restore_token and link.restoring:
            link.restored = True
            self._snapshot = None
            rooms = ", ".join(f"#{room}" for room in self._rooms.values()) or "no room"
            where = f"; talking in #{self._current}" if self._current else ""
            status = f"reconnected as {self._nick} in {rooms}{where}"
            if self._fetching:
                # Said after the missed messages still being fetched, not amid them.
                self._restored_status = status
            else:
                self._ui.status(status)
            self.on_change()
        elif (fetch := self._fetch_tokens.pop(token, None)) is not None:
            key, command = fetch
            if key in self._fetching:
                # The /history was answered without its page (an error): no
                # room stays held; what was held follows the error.
                self._ui.status(f"the missed messages could not be fetched; {command}", error=True)
                self._release(key)
        elif token == self._eof_token:
            self.quit(quiet=True)
        return True


# ---------------------------------------------------------------------------
# Input: a prompt on a terminal, lines of stdin otherwise.


class _StdinLines:
    """Lines of stdin, read by a daemon thread and handed to the event loop.

    A thread, because it works for every kind of stdin: a pipe, a terminal
    and a regular file (which ``connect_read_pipe`` refuses and which is
    always "readable" to ``add_reader``). It reads the file descriptor with
    ``os.read``, not ``sys.stdin``: a daemon thread blocked inside a buffered
    reader holds its lock, which can abort the interpreter's shutdown. A
    semaphore bounds the lines handed over but not yet taken, so a large
    input file is read only as fast as it is sent.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, window: int = 64) -> None:
        self._loop = loop
        self._fd = fd
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._slots = threading.Semaphore(window)
        self._thread = threading.Thread(target=self._run, name="chatd-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def get(self) -> str | None:
        """The next line without its terminator; None at the end of input."""
        item = await self._queue.get()
        self._slots.release()
        return item

    def _run(self) -> None:
        buf = bytearray()
        try:
            while chunk := os.read(self._fd, _READ_SIZE):
                buf += chunk
                for line in self._split(buf):
                    if not self._post(line):
                        return
        except OSError as exc:  # EIO from a hung-up terminal, EBADF, ...
            logger.debug("reading stdin stopped: %s", exc)
        if buf and not self._post(buf.decode("utf-8", "replace").rstrip("\r")):
            return
        self._post(None)

    @staticmethod
    def _split(buf: bytearray) -> Iterator[str]:
        """Take the complete lines out of ``buf``."""
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            yield buf[start:nl].decode("utf-8", "replace").rstrip("\r")
            start = nl + 1
        del buf[:start]

    def _post(self, item: str | None) -> bool:
        self._slots.acquire()
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the client has finished
            return False
        return True


def _terminal_has_colour() -> bool:
    """Colours unless the user opted out (NO_COLOR) or the terminal cannot."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM", "dumb") != "dumb"


def _no_secrets_history() -> Any:
    """The prompt's in-memory history, without lines that carry a password."""
    from prompt_toolkit.history import InMemoryHistory

    class NoSecretsHistory(InMemoryHistory):
        def append_string(self, string: str) -> None:
            if _command_name(string) not in SECRET_COMMANDS:
                super().append_string(string)

    return NoSecretsHistory()


#: Commands whose arguments are passwords: never kept in the prompt's history.
SECRET_COMMANDS: Final = frozenset({"/login", "/register", "/passwd"})


async def _run_interactive(options: ClientOptions) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    ui = TerminalUi(colour=_terminal_has_colour(), json_output=options.json_output)
    client = ChatClient(options, ui)

    with patch_stdout(raw=True):
        # The typed line is erased on Enter: the server's echo of it replaces it.
        session: PromptSession[str] = PromptSession(
            erase_when_done=True, history=_no_secrets_history()
        )
        client.on_change = session.app.invalidate

        async def read_prompt() -> None:
            while not client.quitting:
                try:
                    line = await session.prompt_async(client.prompt, set_exception_handler=False)
                except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C
                    client.quit()
                    return
                await client.submit(line)

        return await client.run(read_prompt)


async def _run_pipe(options: ClientOptions) -> int:
    client: ChatClient | None = None

    def on_broken() -> None:
        if client is not None:
            client.quit(quiet=True, status=1)

    client = ChatClient(options, PipeUi(json_output=options.json_output, on_broken=on_broken))
    loop = asyncio.get_running_loop()
    lines = _StdinLines(loop, sys.stdin.fileno())

    async def read_stdin() -> None:
        lines.start()
        while (line := await lines.get()) is not None:
            await client.submit(line)
        client.end_of_input()

    with _on_sigint(loop, lambda: client.quit(status=130)):
        return await client.run(read_stdin)


@contextlib.contextmanager
def _on_sigint(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> Iterator[None]:
    """Quit cleanly on Ctrl-C instead of dying with a traceback (where the loop can)."""
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def run_client(options: ClientOptions) -> int:
    """Run ``chatd connect``; return the exit status."""
    interactive = options.interactive
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        return await _run_interactive(options)
    return await _run_pipe(options)
