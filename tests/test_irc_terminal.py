"""Debian's terminal IRC clients, irssi and WeeChat, against chatd's IRC gateway.

Each test starts a daemon (``chatd serve --irc-port 0`` in a child process)
and a JSON-mode line client, ``bob``, the way ``nc`` talks to chatd. irssi
runs in a tmux session on a private socket (``tmux -L``), typed into with
``send-keys`` and read with ``capture-pane``; WeeChat runs headless
(``weechat-headless --dir``), typed into through its FIFO, and read from the
logs its logger writes for each buffer. What is typed is the README's
("With an IRC client") wherever the README says it, with the test's port and
password. Both clients have their client-side flood queues turned off, so
that they send each line as it is typed. Every wait is for something chatd's
side or a client's screen or log shows, with a deadline.

Without irssi, tmux or WeeChat (headless, with its FIFO plugin from the
``weechat-plugins`` package) the tests skip and say what is missing, except
under CI (``CI=true``), where that is a failure.

The tests are synchronous, each running its own event loop: what is tested
runs in child processes, so running them under both loops, as the async
tests are, would only double the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shlex
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import (
    DEADLINE,
    Daemon,
    Event,
    LineClient,
    needs,
    open_json,
    signal_child,
    unavailable,
)

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SECTION = "With an IRC client"
#: The account's password, for the README's ``PASSWORD``.
PASSWORD = "correct-horse-battery"

pytestmark = pytest.mark.slow

T = TypeVar("T")


# ---------------------------------------------------------------------------
# What the README says to type


def readme_blocks(section: str = SECTION) -> list[list[str]]:
    """The lines of each ```text block under the heading ``section``."""
    found: list[list[str]] = []
    heading = ""
    block: list[str] | None = None
    fenced = False
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            if fenced:
                if block is not None:
                    found.append(block)
                block, fenced = None, False
            else:
                fenced = True
                if raw.strip() == "```text" and heading == section:
                    block = []
            continue
        if fenced:
            if block is not None:
                block.append(raw)
        elif m := re.match(r"^#+\s+(.*?)\s*$", raw):
            heading = m.group(1)
    return found


def readme_lines(first: str) -> list[str]:
    """The README's block of client lines that starts with ``first``."""
    blocks = [b for b in readme_blocks() if b and b[0].startswith(first)]
    assert len(blocks) == 1, f"README.md, {SECTION!r}: {len(blocks)} blocks start {first!r}"
    return blocks[0]


def typed(line: str, port: int, password: str = PASSWORD) -> str:
    """A README line as the test types it: its port (6667) and password."""
    return re.sub(r"\b6667\b", str(port), line).replace("PASSWORD", password)


# ---------------------------------------------------------------------------
# The programs


def weechat() -> str:
    """weechat-headless with its FIFO plugin (Debian ships it in weechat-plugins)."""
    exe = needs("weechat-headless", "weechat-headless")
    prefix = Path(exe).resolve().parent.parent
    places = ("lib*/weechat/plugins/fifo.so", "lib*/*/weechat/plugins/fifo.so")
    if not any(found for place in places for found in prefix.glob(place)):
        unavailable("WeeChat's fifo plugin is not installed (apt-get install weechat-plugins)")
    return exe


def run_async(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


async def poll(
    check: Callable[[], Awaitable[T | None]],
    what: Callable[[], Awaitable[str]],
    timeout: float = DEADLINE,
) -> T:
    """Check a screen or a file until it shows something (nothing announces
    it): what ``check`` found; ``what()`` says what was missing."""
    try:
        async with asyncio.timeout(timeout):
            while (found := await check()) is None:  # noqa: ASYNC110 (no event to wait on)
                await asyncio.sleep(0.05)
            return found
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {await what()}") from None


_sockets = itertools.count()


class Pane:
    """A program in a 200x50 tmux session of its own, on a private tmux socket."""

    def __init__(self, tmux: str, socket: str) -> None:
        self.tmux = tmux
        self.socket = socket
        self.session = "irc"

    @classmethod
    async def start(
        cls, argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Pane:
        """Run ``argv`` in a new tmux server (it has ``env``, default this one's)."""
        tmux = needs("tmux", "tmux")
        pane = cls(tmux, f"chatd-test-{os.getpid()}-{next(_sockets)}")
        base = {k: v for k, v in (env or os.environ).items() if k not in ("TMUX", "TMUX_PANE")}
        code, out = await pane.run(
            "new-session",
            "-d",
            "-s",
            pane.session,
            "-x",
            "200",
            "-y",
            "50",
            *(["-c", str(cwd)] if cwd is not None else []),
            shlex.join(argv),
            env=base,
        )
        assert code == 0, f"tmux new-session: {out}"
        return pane

    async def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """``tmux -L SOCKET ARGS``: its status and output."""
        proc = await asyncio.create_subprocess_exec(
            self.tmux,
            "-L",
            self.socket,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            async with asyncio.timeout(DEADLINE):
                out, _ = await proc.communicate()
        finally:
            signal_child(proc)
            await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def type(self, *lines: str) -> None:
        """Type each line (literally) and Enter."""
        for line in lines:
            for keys in (["-l", line], ["Enter"]):
                code, out = await self.run("send-keys", "-t", self.session, *keys)
                assert code == 0, f"tmux send-keys: {out}"

    async def screen(self) -> str:
        code, out = await self.run("capture-pane", "-p", "-t", self.session)
        return out if code == 0 else f"(no pane: {out.strip()})"

    async def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """Wait until the screen shows a line matching ``pattern``."""

        async def check() -> re.Match[str] | None:
            return re.search(pattern, await self.screen(), re.MULTILINE)

        async def what() -> str:
            return f"no {pattern!r} on the screen:\n{await self.screen()}"

        return await poll(check, what, timeout)

    async def ended(self, timeout: float = DEADLINE) -> None:
        """Wait until the program has exited (its session is gone)."""

        async def check() -> bool | None:
            code, _ = await self.run("has-session", "-t", self.session)
            return None if code == 0 else True

        async def what() -> str:
            return f"still running:\n{await self.screen()}"

        await poll(check, what, timeout)

    async def close(self) -> None:
        """Stop this tmux server and what runs in it (SIGHUP), on its own socket."""
        await self.run("kill-server")


class WeeChat:
    """weechat-headless in a home of its own, typed into through its FIFO."""

    def __init__(self, proc: asyncio.subprocess.Process, home: Path) -> None:
        self.proc = proc
        self.home = home
        self.fifo = home / f"weechat_fifo_{proc.pid}"

    @classmethod
    async def start(cls, home: Path) -> WeeChat:
        """Start it in ``home`` (an empty directory); the logger writes each
        line at once, and messages go out as they are typed (no anti-flood queue)."""
        proc = await asyncio.create_subprocess_exec(
            weechat(),
            "--dir",
            str(home),
            "-r",
            "/set logger.file.flush_delay 0;/set irc.server_default.anti_flood_prio_high 0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = cls(proc, home)
        try:

            async def check() -> bool | None:
                if proc.returncode is not None:
                    raise AssertionError(f"weechat-headless exited with {proc.returncode}")
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISFIFO(client.fifo.stat().st_mode):
                        return True
                return None

            async def what() -> str:
                return f"no FIFO {client.fifo}: {sorted(os.listdir(home))}"

            await poll(check, what)
        except BaseException:
            await client.close()
            raise
        return client

    def type(self, buffer: str, *lines: str) -> None:
        """Type lines into a buffer (``core.weechat``, ``irc.server.chatd``,
        ``irc.chatd.#general``), as if typed there."""
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, "".join(f"{buffer} *{line}\n" for line in lines).encode())
        finally:
            os.close(fd)

    def log(self, buffer: str) -> str:
        path = self.home / "logs" / f"{buffer}.weechatlog"
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def expect(self, buffer: str, pattern: str) -> re.Match[str]:
        """Wait until the buffer's log has a line matching ``pattern``."""

        async def check() -> re.Match[str] | None:
            return re.search(pattern, self.log(buffer), re.MULTILINE)

        async def what() -> str:
            core = self.log("core.weechat").splitlines()[-15:]
            return (
                f"no {pattern!r} in {buffer}:\n{self.log(buffer)}\n"
                f"core.weechat ends:\n" + "\n".join(core)
            )

        return await poll(check, what)

    async def wait(self) -> int:
        try:
            async with asyncio.timeout(DEADLINE):
                return await self.proc.wait()
        except TimeoutError:
            raise AssertionError("weechat-headless did not exit") from None

    async def close(self) -> None:
        """SIGTERM (WeeChat quits), then SIGKILL if it lingers; by pid."""
        if self.proc.returncode is None:
            signal_child(self.proc, 15)
            try:
                async with asyncio.timeout(DEADLINE):
                    await self.proc.wait()
            except TimeoutError:
                signal_child(self.proc)
                await self.proc.wait()


# ---------------------------------------------------------------------------
# The chat side


class Chat(contextlib.AsyncExitStack):
    """A daemon with an IRC port, and ``bob``, a line client in #general."""

    daemon: Daemon
    irc_port: int
    bob: LineClient

    async def begin(self, *, account: str | None = None) -> Chat:
        """Start; ``account``: register that nickname (``/register PASSWORD``) first."""
        self.daemon = await Daemon.start("--irc-port", "0")
        self.push_async_callback(self.daemon.stop)
        m = re.search(r"listening on \S+:(\d+) \(IRC\)", await self.daemon.wait_log(r"\(IRC\)"))
        assert m is not None
        self.irc_port = int(m.group(1))
        if account is not None:
            await register(self.daemon.port, account)
        self.bob = await open_json(self.daemon.port, "bob")
        self.callback(self.bob.close)
        return self

    async def pane(self, argv: list[str]) -> Pane:
        pane = await Pane.start(argv)
        self.push_async_callback(pane.close)
        return pane

    async def weechat(self, home: Path) -> WeeChat:
        await asyncio.to_thread(home.mkdir)
        client = await WeeChat.start(home)
        self.push_async_callback(client.close)
        return client


@contextlib.asynccontextmanager
async def chat(*, account: str | None = None) -> AsyncIterator[Chat]:
    async with Chat() as scene:
        yield await scene.begin(account=account)


async def register(port: int, nick: str) -> None:
    """Make ``nick`` an account with a chatd client, which then quits."""
    client = await open_json(port, nick)
    try:
        await client.send(f"/register {PASSWORD}")
        assert (await client.expect("registered")).get("account") is True
        await client.send("/quit")
        await client.expect("bye")
    finally:
        client.close()


def joined(nick: str, room: str = "general") -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "join" and e.get("nick") == nick and e.get("room") == room


def said(nick: str, text: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "message" and e.get("from") == nick and e.get("text") == text


def whispered(nick: str, text: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "dm" and e.get("from") == nick and e.get("text") == text


def left(nick: str, reason: str | None = None, room: str = "general") -> Callable[[Event], bool]:
    """``nick`` leaves ``room`` (with this reason, unless None)."""
    return lambda e: (
        e.get("type") == "leave"
        and e.get("nick") == nick
        and e.get("room") == room
        and (reason is None or e.get("reason") == reason)
    )


#: irssi's configuration for the tests: no client-side flood queue (by
#: default irssi spaces its commands 2.2 s apart after the first few).
IRSSI_CONFIG = 'settings = { "irc/core" = { cmd_queue_speed = "0msec"; }; };\n'


def irssi_home(home: Path) -> Path:
    """An irssi home directory (``~/.irssi``) holding :data:`IRSSI_CONFIG`."""
    home.mkdir(parents=True)
    (home / "config").write_text(IRSSI_CONFIG)
    return home


def irssi_in_tmux() -> None:
    """Skip (fail under CI) without irssi or tmux."""
    needs("irssi", "irssi")
    needs("tmux", "tmux")


def irssi_argv(home: Path, *args: str) -> list[str]:
    """irssi with a new home of its own."""
    return [needs("irssi", "irssi"), f"--home={irssi_home(home)}", *args]


#: irssi's window shows its prompt: it reads what is typed.
IRSSI_READY = r"^\[\(status\)\]"


# ---------------------------------------------------------------------------
# irssi


def test_irssi_joins_talks_both_ways_and_quits(tmp_path: Path) -> None:
    """irssi connects as a guest, joins #general, and talks with bob in the
    room and privately, both ways; bob sees it quit with its reason."""

    irssi_in_tmux()

    async def scenario() -> None:
        async with chat() as c:
            irssi = await c.pane(
                irssi_argv(
                    tmp_path / "irssi", "-c", "127.0.0.1", "-p", str(c.irc_port), "-n", "alice"
                )
            )
            await irssi.expect(r"Welcome to the chatd IRC network, alice!~alice@chatd/guest")
            await irssi.type("/join #general")
            await c.bob.expect(joined("alice"), "alice joining #general")
            await irssi.expect(r"alice \[~alice@chatd/guest\] has joined #general")
            await irssi.type("hello bob")
            await c.bob.expect(said("alice", "hello bob"), "alice's line")
            await c.bob.send("hi alice, from nc")
            await irssi.expect(r"<.?bob> hi alice, from nc$")

            await irssi.type("/msg bob psst")
            await c.bob.expect(whispered("alice", "psst"), "alice's private message")
            await irssi.type("/query bob")  # the query window /msg opened, in front
            await c.bob.send("/msg alice psst yourself")
            await irssi.expect(r"<.?bob> psst yourself$")

            await irssi.type("/quit see you")
            await c.bob.expect(left("alice", "quit: see you"), "alice quitting")
            await irssi.ended()

    run_async(scenario())


def test_irssi_logs_in_with_the_readmes_sasl_lines(tmp_path: Path) -> None:
    """The README's irssi lines for SASL log in to an account made with a
    chatd client; irssi then joins #general under the account's nickname."""

    irssi_in_tmux()

    async def scenario() -> None:
        async with chat(account="alice") as c:
            irssi = await c.pane(irssi_argv(tmp_path / "irssi"))
            await irssi.expect(IRSSI_READY)
            lines = readme_lines("/network add ")
            await irssi.type(*(typed(line, c.irc_port) for line in lines))
            await irssi.expect(r"You are now logged in as alice")
            await irssi.expect(r"Welcome to the chatd IRC network, alice!alice@chatd/account")
            await irssi.type("/join #general")
            await c.bob.expect(joined("alice"), "alice (logged in) joining #general")
            await irssi.expect(r"alice \[alice@chatd/account\] has joined #general")
            await irssi.type("hello as alice")
            await c.bob.expect(said("alice", "hello as alice"), "alice's line")
            await irssi.type("/quit")
            await c.bob.expect(left("alice"), "alice quitting")
            await irssi.ended()

    run_async(scenario())


def test_irssi_logs_in_with_pass(tmp_path: Path) -> None:
    """The account's password as the server password (irssi's ``-w``, IRC's PASS)."""

    irssi_in_tmux()

    async def scenario() -> None:
        async with chat(account="alice") as c:
            argv = ["-c", "127.0.0.1", "-p", str(c.irc_port), "-w", PASSWORD, "-n", "alice"]
            irssi = await c.pane(irssi_argv(tmp_path / "irssi", *argv))
            await irssi.expect(r"Welcome to the chatd IRC network, alice!alice@chatd/account")
            await irssi.type("/join #general")
            await c.bob.expect(joined("alice"), "alice (logged in) joining #general")

    run_async(scenario())


def test_irssi_sasl_login_survives_the_nick_irssi_registers_with(tmp_path: Path) -> None:
    """irssi sends NICK and USER after CAP END, so after SASL: its own nickname
    (here ``carol``, no ``-nick`` in the network) must not undo the login.
    SASL made the connection alice's; the welcome says so."""

    irssi_in_tmux()

    async def scenario() -> None:
        async with chat(account="alice") as c:
            irssi = await c.pane(irssi_argv(tmp_path / "irssi", "-n", "carol"))
            await irssi.expect(IRSSI_READY)
            lines = [line.replace("-nick alice ", "") for line in readme_lines("/network add ")]
            await irssi.type(*(typed(line, c.irc_port) for line in lines))
            await irssi.expect(r"You are now logged in as alice")
            welcome = await irssi.expect(r"Welcome to the chatd IRC network, (\S+)$")
            assert welcome.group(1) == "alice!alice@chatd/account", await irssi.screen()

    run_async(scenario())


# ---------------------------------------------------------------------------
# WeeChat


def weechat_lines(port: int, *, sasl: bool) -> tuple[list[str], str]:
    """The README's WeeChat lines up to ``/connect``, and the ``/join`` line;
    without SASL, without the ``sasl_`` lines (as the README says for a guest)."""
    lines = [typed(line, port) for line in readme_lines("/server add chatd ")]
    if not sasl:
        lines = [line for line in lines if ".sasl_" not in line]
    assert lines[-1] == "/join #general", lines
    assert lines[-2] == "/connect chatd", lines
    return lines[:-1], lines[-1]


def test_weechat_joins_talks_both_ways_and_quits(tmp_path: Path) -> None:
    """The README's WeeChat lines, as a guest: it connects, joins #general and
    talks with bob in the room and privately, both ways; bob sees it quit."""

    weechat()

    async def scenario() -> None:
        async with chat() as c:
            client = await c.weechat(tmp_path / "weechat")
            setup, join = weechat_lines(c.irc_port, sasl=False)
            client.type("core.weechat", *setup)
            await client.expect(
                "irc.server.chatd", r"Welcome to the chatd IRC network, alice!~alice@chatd/guest"
            )
            client.type("irc.server.chatd", join)
            await c.bob.expect(joined("alice"), "alice joining #general")
            await client.expect("irc.chatd.#general", r"\balice\b.* has joined #general")
            client.type("irc.chatd.#general", "hello from weechat")
            await c.bob.expect(said("alice", "hello from weechat"), "alice's line")
            await c.bob.send("hi weechat")
            await client.expect("irc.chatd.#general", r"\t\W?bob\thi weechat$")

            client.type("irc.chatd.#general", "/msg bob psst")
            await c.bob.expect(whispered("alice", "psst"), "alice's private message")
            await c.bob.send("/msg alice psst yourself")
            await client.expect("irc.chatd.bob", r"\t\W?bob\tpsst yourself$")

            client.type("core.weechat", "/quit see you")
            await c.bob.expect(left("alice", "quit: see you"), "alice quitting")
            assert await client.wait() == 0

    run_async(scenario())


def test_weechat_logs_in_with_the_readmes_sasl_lines(tmp_path: Path) -> None:
    """All the README's WeeChat lines: SASL logs in to an account made with a
    chatd client, and the account joins #general and talks."""

    weechat()

    async def scenario() -> None:
        async with chat(account="alice") as c:
            client = await c.weechat(tmp_path / "weechat")
            setup, join = weechat_lines(c.irc_port, sasl=True)
            client.type("core.weechat", *setup)
            await client.expect("irc.server.chatd", r"You are now logged in as alice")
            await client.expect(
                "irc.server.chatd", r"Welcome to the chatd IRC network, alice!alice@chatd/account"
            )
            client.type("irc.server.chatd", join)
            await c.bob.expect(joined("alice"), "alice (logged in) joining #general")
            await client.expect("irc.chatd.#general", r"\balice\b.* has joined #general")
            client.type("irc.chatd.#general", "hello as alice")
            await c.bob.expect(said("alice", "hello as alice"), "alice's line")
            client.type("core.weechat", "/quit")
            await c.bob.expect(left("alice"), "alice quitting")
            assert await client.wait() == 0

    run_async(scenario())
