"""A raw line client for tests, and waiting helpers with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from chatd.store import SqliteStore


def signal_child(proc: asyncio.subprocess.Process, sig: int = 9) -> None:
    """Signal a child process without reaping it (default SIGKILL).

    ``Process.send_signal`` and ``kill`` poll the child first (a non-blocking
    waitpid), which can reap one that has just exited behind the back of
    asyncio's child watcher; the watcher then reports exit status 255.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


#: Generous: a safety net on a busy machine, never a synchroniser.
DEADLINE = 10.0

Event = dict[str, Any]


async def until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait for a condition that no event announces, checking every 10 ms.

    For state with no hook to wait on (a count in the server); the deadline
    makes a condition that never comes a failure, not a hang.
    """
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 (no event announces these states)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None


class LineClient:
    """A TCP client speaking the chatd line protocol, as ``nc`` would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.nick: str | None = None

    @classmethod
    async def open(cls, host: str, port: int, **kwargs: Any) -> LineClient:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 24, **kwargs)
        return cls(reader, writer)

    async def send(self, *lines: str | bytes) -> None:
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode()
            self.writer.write(data if data.endswith(b"\n") else data + b"\n")
        await self.writer.drain()

    async def line(self, timeout: float = DEADLINE) -> str:
        """The next line (without its newline); AssertionError at EOF."""
        async with asyncio.timeout(timeout):
            raw = await self.reader.readline()
        if not raw:
            raise AssertionError("connection closed while waiting for a line")
        return raw.decode().rstrip("\n")

    async def event(self, timeout: float = DEADLINE) -> Event:
        text = await self.line(timeout)
        obj: Event = json.loads(text)
        return obj

    async def expect(
        self, pred: Callable[[Event], bool] | str, what: str = "", timeout: float = DEADLINE
    ) -> Event:
        """Read JSON events until one matches; ``pred`` may be an event type."""
        check = (lambda e: e.get("type") == pred) if isinstance(pred, str) else pred
        seen: list[Event] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self.event()
                    if check(event):
                        return event
                    seen.append(event)
        except TimeoutError:
            raise AssertionError(f"no {what or pred} within {timeout}s; saw {seen}") from None

    async def expect_line(self, pattern: str, timeout: float = DEADLINE) -> str:
        """Read text lines until one matches the regular expression."""
        seen: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.line()
                    if re.search(pattern, line):
                        return line
                    seen.append(line)
        except TimeoutError:
            raise AssertionError(f"no line matching {pattern!r}; saw {seen}") from None

    async def use_json(self) -> None:
        """Switch to JSON mode, consuming the text greeting that comes first."""
        assert (await self.line()).startswith("* welcome")
        await self.send("/format json")
        await self.expect(lambda e: e.get("type") == "format", "format ack")

    async def register(self, nick: str, *, json_mode: bool = True) -> None:
        await self.send(f"/nick {nick}")
        if json_mode:
            await self.expect(lambda e: e.get("type") == "current", "current room after register")
        else:
            await self.expect_line(r"^\* now talking in #general$")
        self.nick = nick

    async def sync(self, token: str = "sync") -> list[Event]:
        """Ping and collect every event before the pong: all earlier output has arrived."""
        await self.send(f"/ping {token}")
        events: list[Event] = []
        async with asyncio.timeout(DEADLINE):
            while (event := await self.event())["type"] != "pong" or event["token"] != token:
                events.append(event)
        return events

    async def expect_eof(self, timeout: float = DEADLINE) -> bytes:
        """Read until a clean end of stream (FIN); a reset is a failure."""
        data = bytearray()
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                data += chunk
        return bytes(data)

    async def wait_closed(self, timeout: float = DEADLINE) -> bytes:
        """Read until the server closes; return what came before the end."""
        data = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    data += chunk
        except ConnectionResetError:
            pass
        return bytes(data)

    def stop_reading(self) -> None:
        """Behave like a client that never reads: the kernel buffers fill up.

        Without this the stream keeps draining the socket into its own buffer
        even when nobody calls read().
        """
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.writer.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again, as a normal client: a receive window smaller than the
        sender's segment size can stall a loopback transfer for seconds."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        self.writer.transport.resume_reading()

    def close(self) -> None:
        self.writer.transport.abort()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (Linux)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """``python -m chatd serve`` in a subprocess on a free port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self._new_line = asyncio.Event()
        self._log_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = 0,
        python: Sequence[str] = (),
        max_fds: int | None = None,
    ) -> Daemon:
        """Start the daemon; ``port=None`` leaves the port to the environment.

        ``python``: interpreter options (``-W``, ``-X dev``); ``max_fds``: its
        open-file limit, soft and hard.
        """
        cmd = [sys.executable, *python, "-m", "chatd", "serve", "--msg-rate", "0", *args]
        if "--conn-rate" not in args:
            cmd += ["--conn-rate", "0"]  # tests connect often from one address
        if "--db" not in args and "CHATD_DB" not in (env or {}):
            cmd += ["--db", ":memory:"]  # never the user's own database
        if "--password-cost" not in args:
            cmd += ["--password-cost", "test"]
        if port is not None:
            cmd += ["--port", str(port)]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
            preexec_fn=None if max_fds is None else lambda: _limit_fds(max_fds),
        )
        assert proc.stderr is not None
        log: list[str] = []
        try:
            async with asyncio.timeout(DEADLINE * 2):
                while True:
                    raw = await proc.stderr.readline()
                    if not raw:
                        raise AssertionError(f"daemon exited before listening: {log}")
                    log.append(raw.decode().rstrip())
                    if m := re.search(r"listening on \S+:(\d+)", log[-1]):
                        break
        except BaseException:
            signal_child(proc)
            await proc.wait()
            raise
        daemon = cls(proc, int(m.group(1)), log)
        daemon._log_task = asyncio.create_task(daemon._collect_log())
        return daemon

    async def _collect_log(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.log.append(raw.decode().rstrip())
            self._new_line.set()
        self._new_line.set()

    async def wait_log(self, pattern: str, timeout: float = DEADLINE) -> str:
        """Wait until a log line matches (the log is collected in the background)."""
        seen = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for line in self.log[seen:]:
                        if re.search(pattern, line):
                            return line
                    seen = len(self.log)
                    if self._log_task is None or self._log_task.done():
                        raise AssertionError(f"daemon log ended without {pattern!r}")
                    self._new_line.clear()
                    await self._new_line.wait()
        except TimeoutError:
            raise AssertionError(f"no log line matching {pattern!r}: {self.log}") from None

    async def stop(self, sig: int | None = None, timeout: float = DEADLINE) -> int:
        """Send a signal (default SIGTERM) and wait for exit; return the status."""
        if self.proc.returncode is None:
            signal_child(self.proc, sig if sig is not None else 15)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        finally:
            if self.proc.returncode is None:
                signal_child(self.proc)
                await self.proc.wait()
        if self._log_task is not None:
            await asyncio.wait([self._log_task], timeout=timeout)
        return code


def _limit_fds(n: int) -> None:
    # Runs in the child between fork and exec: a system call, no import or
    # lock that another thread of the test process might hold.
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


async def open_json(port: int, nick: str | None = None, **kwargs: Any) -> LineClient:
    """A client on 127.0.0.1 in JSON mode, registered as ``nick`` if given."""
    client = await LineClient.open("127.0.0.1", port, **kwargs)
    await client.use_json()
    if nick:
        await client.register(nick)
    return client


# ---------------------------------------------------------------------------
# Rooms and their rules, from a JSON client


async def enter(c: LineClient, room: str, key: str = "") -> None:
    """``/join ROOM [KEY]``, until the room is current."""
    await c.send(f"/join {room} {key}".strip())
    await c.expect(lambda e: e["type"] == "current" and e["room"] == room, f"in #{room}")


async def refused(c: LineClient, command: str, code: str) -> Event:
    """Send ``command``; the next error must carry ``code``."""
    await c.send(command)
    error = await c.expect("error", f"{code} for {command}")
    assert error["code"] == code, error
    return error


async def who(c: LineClient, room: str) -> dict[str, str]:
    """Who is in ``room``, each with its role."""
    await c.send(f"/who {room}")
    answer = await c.expect("who")
    return {m["nick"]: m["role"] for m in answer["members"]}


# ---------------------------------------------------------------------------
# ``chatd connect`` as a subprocess


def loop_name() -> str:
    """The loop of this test, for the child too: each test runs under both."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    return {**env, "CHATD_LOG_LEVEL": "warning", **extra}


def connect_argv(port: int | None, *args: str) -> list[str]:
    """``chatd connect`` to 127.0.0.1 on ``port`` (None: no --port, the default)."""
    return [
        sys.executable,
        "-m",
        "chatd",
        "connect",
        "127.0.0.1",
        *(["--port", str(port)] if port is not None else []),
        "--loop",
        loop_name(),
        *args,
    ]


class PipeClient:
    """``chatd connect`` with stdin and stdout as pipes; output collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._cursor = {"out": 0, "err": 0}
        self._changed = asyncio.Event()
        self._collectors = [
            asyncio.create_task(self._collect(proc.stdout, self.out)),
            asyncio.create_task(self._collect(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, port: int | None, *args: str, **env: str) -> PipeClient:
        """``chatd connect`` on ``port`` (see connect_argv), ``env`` added to its environment."""
        proc = await asyncio.create_subprocess_exec(
            *connect_argv(port, *args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(**env),
        )
        return cls(proc)

    async def _collect(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while raw := await stream.readline():
            lines.append(raw.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        for line in lines:
            self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, *, stream: str = "out", timeout: float = DEADLINE) -> str:
        """Wait for a line after the last one matched (in that stream) to match."""
        lines = self.out if stream == "out" else self.err
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for i in range(self._cursor[stream], len(lines)):
                        if re.search(pattern, lines[i]):
                            self._cursor[stream] = i + 1
                            return lines[i]
                    if all(task.done() for task in self._collectors):
                        break
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        raise AssertionError(
            f"no {stream} line matching {pattern!r}; out={self.out} err={self.err}"
        )

    async def wait(self, timeout: float = DEADLINE) -> int:
        """Wait for the client to exit and for all its output; return its status."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
                await asyncio.gather(*self._collectors)
        except TimeoutError:
            raise AssertionError(f"client still running; out={self.out} err={self.err}") from None
        return code

    async def finish(self, timeout: float = DEADLINE) -> int:
        """Close stdin (the end of input) and wait for the exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await self.wait(timeout)

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            signal_child(self.proc)
            await self.proc.wait()
        for task in self._collectors:
            task.cancel()
        await asyncio.wait(self._collectors)


# ---------------------------------------------------------------------------
# A full database, and a daemon that must not start


async def fill_store(store: SqliteStore, client: LineClient) -> tuple[Event, str]:
    """Make the database full; return the error ``client``'s message got and its text.

    SQLite's own page limit fails a write exactly as a full disk does. Each
    line needs a page of its own; the first that cannot have one fails.
    """
    pages = await store._write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store._write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    for n in range(10):
        text = f"{n}" * 4000
        await client.send(text)
        event = await client.expect(lambda e: e.get("type") in ("message", "error"))
        if event["type"] == "error":
            return event, text
    raise AssertionError("the database never filled up")


async def free_store(store: SqliteStore) -> None:
    """Undo fill_store: the database may grow again."""
    await store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))


async def start_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """``chatd serve`` with these flags must exit 1 without a traceback; its log.

    A daemon that listens after all is stopped and the test fails, rather
    than left to run.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd",
        "serve",
        "--port",
        "0",
        "--password-cost",
        "test",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(DEADLINE):
            while raw := await proc.stderr.readline():
                log.append(raw.decode().rstrip())
                assert "listening on" not in log[-1], f"the daemon serves: {log}"
            await proc.wait()
    finally:
        if proc.returncode is None:
            signal_child(proc)
            await proc.wait()
    text = "\n".join(log)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    return text


async def accounts_cli(db: str | Path, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """``chatd accounts --db DB ARGS...``: its status, stdout and stderr."""
    return await admin_cli("accounts", db, *args, stdin=stdin)


async def admin_cli(
    command: str, db: str | Path, *args: str, stdin: bytes = b""
) -> tuple[int, str, str]:
    """``chatd COMMAND --db DB ARGS...`` (accounts, rooms): status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd",
        command,
        "--db",
        str(db),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(DEADLINE):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------------------
# A real redis-server for cluster mode


#: The redis-server cluster tests run, if this machine has one.
REDIS = shutil.which("redis-server")


class RedisServer:
    """``redis-server`` on a loopback port, without persistence, stopped by pid."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    async def start(cls, exe: str, port: int | None = None) -> RedisServer:
        port = port or free_port()
        proc = await asyncio.create_subprocess_exec(
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        server = cls(proc, port)
        try:
            await until_async(server.ping, f"redis-server answering on port {port}")
        except BaseException:
            await server.stop()
            raise
        return server

    async def ping(self) -> bool:
        if self.proc.returncode is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return (await reader.readline()).startswith(b"+PONG")
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def command(self, *args: str) -> bytes:
        """One command in inline form; the first line of the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(" ".join(args).encode() + b"\r\n")
            async with asyncio.timeout(DEADLINE):
                return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, sig: int = 15) -> None:
        if self.proc.returncode is None:
            signal_child(self.proc, sig)
            try:
                async with asyncio.timeout(DEADLINE):
                    await self.proc.wait()
            finally:
                if self.proc.returncode is None:
                    signal_child(self.proc)
                    await self.proc.wait()


async def until_async(
    predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE
) -> None:
    """:func:`until` for a condition that takes a round trip to check."""
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():  # noqa: ASYNC110 (a remote state, no event)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None


#: Under CI (.ci/run) nothing may skip: what a test needs is installed.
CI = os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """What a test needs is missing: skip, or fail under CI, where it is installed."""
    if CI:
        pytest.fail(reason)
    pytest.skip(reason)


def needs(program: str, package: str) -> str:
    """A program a test runs: skip without it, fail under CI (.ci/run installs it)."""
    found = shutil.which(program)
    if found is None:
        unavailable(f"{program} is not installed (apt-get install {package}; .ci/run does)")
    return found


def tool(name: str) -> str:
    """A dev tool next to this Python (or on PATH); missing: skip, or fail under CI."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (pip install -e '.[dev]')")
    return found
