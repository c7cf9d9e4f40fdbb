"""Where input comes from: ``chatd connect`` on a terminal or on pipes.

Two modes, chosen by whether stdin and stdout are terminals:

* **Interactive**: a prompt_toolkit prompt (``[general]> ``) inside
  ``patch_stdout(raw=True)``, so incoming lines are printed above the line
  being typed and never garble it. Lines are coloured when the terminal has
  colours (``NO_COLOR`` or ``TERM=dumb`` turn them off): nicks by a stable
  hash, errors red, system lines dim, server notices (``/wall``) bold, a
  line that mentions the user highlighted. That line, and a private message
  from someone else, ring the bell. The typed line is erased on Enter; the
  server's echo of it takes its place. Ctrl-D and Ctrl-C quit, as ``/quit``.
* **Pipe**: no prompt_toolkit. Each stdin line is sent; each event is printed
  as one plain line on stdout (with ``--json``: the server's JSON object,
  control characters removed), so scripts can use it; the lists
  (``/bans``, ``/klines``, ``/modlog``, ``/sessions``) are a heading line
  and one indented line per entry, as in the server's text mode. A mention
  is marked in its line (``![room]``); no bell is written. Status messages
  (connection lost, reconnecting, fatal errors) go to stderr, prefixed
  ``chatd connect:``, so stdout carries only events. At the end of stdin the
  client sends ``/ping <token>`` and waits for that pong, which proves every
  earlier line was answered and printed, then quits.

Exit status: 0 after ``/quit``, Ctrl-D, Ctrl-C at the prompt or the end of
input; 1 when it cannot connect at start, loses the connection with
``--no-reconnect``, is sent away by the server (a ``bye`` it did not ask
for), or (pipe mode) finds nobody reading its stdout any more;
130 when a pipe-mode client is interrupted by SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from chatd.client.chat import READ_SIZE, ChatClient
from chatd.client.commands import SECRET_COMMANDS, command_name
from chatd.client.options import ClientOptions
from chatd.client.ui import PipeUi, TerminalUi

#: The package's one logger, as in chatd.client.chat.
logger = logging.getLogger("chatd.client")


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
            while chunk := os.read(self._fd, READ_SIZE):
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
            if command_name(string) not in SECRET_COMMANDS:
                super().append_string(string)

    return NoSecretsHistory()


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
