"""Shared fixtures: a real daemon on a free loopback port, and clients for it.

Every async test runs twice, under the asyncio loop and under uvloop.
Tests wait for the line they expect, with a deadline; never for time to pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import os
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import uvloop

import chatd
from chatd.config import Settings
from chatd.daemon.server import Server
from chatd.transports.tls import generate_certificate
from tests.helpers import REDIS, LineClient, PipeClient, RedisServer

#: A callback that holds the event loop longer than this fails its test.
SLOW_CALLBACK = 0.05


def _debug_loop(factory: Callable[[], asyncio.AbstractEventLoop]) -> asyncio.AbstractEventLoop:
    """A loop in asyncio debug mode: slow callbacks are logged (and fail the
    test, see ``_no_slow_callbacks``), as are calls from the wrong thread."""
    loop = factory()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK
    return loop


#: The loop thread's CPU time when the callback being run started, recorded
#: by every asyncio callback (below). uvloop's callbacks cannot be wrapped:
#: its slow callbacks (wall time) are listed under "figures" but do not fail
#: a test; chatd runs the same code under both loops, and asyncio's exact
#: measure is the one that decides.
_CPU_SAMPLE = [-1.0]
#: Seconds the loop thread has spent in the garbage collector, in all and
#: when the current callback started. A collection that happens to run inside
#: a callback is paid for everything the test process holds (hundreds of
#: tests' worth), not for what the callback does: it is not counted.
_GC_TOTAL = [0.0]
_GC_AT_START = [0.0]
_gc_began = [0.0]
_handle_run = asyncio.events.Handle._run


def _run_timed(self: asyncio.Handle) -> None:
    _CPU_SAMPLE[0] = time.thread_time()
    _GC_AT_START[0] = _GC_TOTAL[0]
    _handle_run(self)


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if threading.get_ident() != threading.main_thread().ident:
        return
    if phase == "start":
        _gc_began[0] = time.thread_time()
    else:
        _GC_TOTAL[0] += time.thread_time() - _gc_began[0]


gc.callbacks.append(_time_gc)


asyncio.events.Handle._run = _run_timed  # type: ignore[method-assign]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {
        "asyncio": lambda: _debug_loop(asyncio.new_event_loop),
        "uvloop": lambda: _debug_loop(uvloop.new_event_loop),
    }


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's "Executing <callback> took 0.123 seconds" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("Executing ") and "took" in record.msg:
            text = record.getMessage()
            # Only chatd's own callbacks count: its tasks and the callbacks it
            # schedules name its source files. The loop's transport callbacks
            # serve the test's clients as much as the daemon, and the test's
            # own coroutines are not chatd.
            if _CHATD not in text.partition(" took ")[0]:
                return
            # asyncio measures wall time. On a busy machine a trivial callback
            # can wait for a CPU longer than the threshold; only a callback
            # that used the CPU that long held the loop by itself.
            loop = asyncio.get_running_loop()
            if not isinstance(loop, asyncio.BaseEventLoop):  # uvloop: no CPU figure
                FIGURES.append(("slow uvloop callback (wall time, not counted)", text))
                return
            gc_time = _GC_TOTAL[0] - _GC_AT_START[0]
            cpu = time.thread_time() - _CPU_SAMPLE[0] - gc_time
            if cpu >= SLOW_CALLBACK:
                self.seen.append(f"{text} ({cpu:.3f} s of CPU)")


_CHATD = os.path.dirname(chatd.__file__) + os.sep
_SLOW = _SlowCallbacks()
logging.getLogger("asyncio").addHandler(_SLOW)
# Debug mode also logs every accepted connection and more at DEBUG level; the
# test run would capture and format each of them inside the callback it measures.
logging.getLogger("asyncio").setLevel(logging.INFO)

_extract_stack = traceback.StackSummary.extract.__func__  # type: ignore[attr-defined]


def _cheap_extract(
    klass: type[traceback.StackSummary],
    frame_gen: Iterable[tuple[FrameType, int]],
    *,
    limit: int | None = None,
    lookup_lines: bool = True,
    capture_locals: bool = False,
) -> traceback.StackSummary:
    """StackSummary.extract without reading source files up front.

    Debug mode records where every future, task and callback was created
    (asyncio's C futures through traceback.extract_stack). The standard
    version then stat()s every file on the stack and reads each line, which
    made a callback several times slower and the 50 ms check measure the
    instrumentation rather than chatd. Lines are still read, lazily, when a
    traceback is shown; a stack asked for whole keeps its 16 innermost frames.
    """
    if capture_locals:
        return _extract_stack(  # type: ignore[no-any-return]
            klass, frame_gen, limit=limit, lookup_lines=lookup_lines, capture_locals=True
        )
    summary = klass()
    # Where a future was created is in its innermost frames; the C futures
    # ask for the whole stack, pytest's frames included.
    for frame, lineno in itertools.islice(frame_gen, limit or 16):
        code = frame.f_code
        summary.append(
            traceback.FrameSummary(code.co_filename, lineno, code.co_name, lookup_line=False)
        )
    return summary


traceback.StackSummary.extract = classmethod(_cheap_extract)  # type: ignore[method-assign,assignment]


@pytest.fixture(autouse=True)
def _no_slow_callbacks() -> Iterator[None]:
    """Fail a test whose event loop ran one callback for more than 50 ms.

    Password hashing, SQLite and anything else slow must run off the loop.
    """
    _SLOW.seen.clear()
    yield
    if _SLOW.seen:
        slow, _SLOW.seen[:] = list(_SLOW.seen), []
        pytest.fail(f"event loop blocked over {SLOW_CALLBACK * 1000:g} ms: {slow}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the hardening tests at full size (the soak for minutes, more clients)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --long, the hardening tests get the time their full sizes need."""
    if config.getoption("--long"):
        for item in items:
            if item.path.name == "test_hardening.py":
                item.add_marker(pytest.mark.timeout(900))


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True with --long: the hardening tests use their full sizes."""
    return bool(request.config.getoption("--long"))


#: Figures measured by the hardening tests, printed at the end of the run.
FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """Record a measured figure: ``figure("cut after", "2.1 s")``."""
    name = request.node.name

    def record(what: str, value: object) -> None:
        FIGURES.append((f"{name}: {what}", str(value)))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for what, value in FIGURES:
            terminalreporter.write_line(f"{what} = {value}")


#: Test defaults: flood control and the connection rate off unless a test
#: turns them on.
TEST_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    msg_rate=0,
    conn_rate=0,
    shutdown_grace=2.0,
    password_cost="test",
    login_fail_delay=0.05,
)

StartServer = Callable[..., Awaitable[Server]]
Connect = Callable[..., Awaitable[LineClient]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_stores`` run on the memory store and on SQLite.

    SQLite is what users get by default: its group commit completes many
    writes at once, which the memory store never does.
    """
    if metafunc.definition.get_closest_marker("both_stores") is not None:
        if "chatd_store" not in metafunc.fixturenames:
            metafunc.fixturenames.append("chatd_store")
        metafunc.parametrize("chatd_store", ["memory", "sqlite"], indirect=True)


@pytest.fixture
def chatd_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``db`` setting of a ``both_stores`` test: ``:memory:`` or a new SQLite file."""
    kind: str = request.param
    return ":memory:" if kind == "memory" else str(tmp_path / "chat.db")


@pytest.fixture
async def start_server(request: pytest.FixtureRequest) -> AsyncIterator[StartServer]:
    """Start an in-process daemon on a free port; ``start_server(max_line=100)``.

    In a ``both_stores`` test the daemon uses that run's store unless told otherwise.
    """
    servers: list[Server] = []
    db = (
        request.getfixturevalue("chatd_store")
        if "chatd_store" in request.fixturenames
        else TEST_SETTINGS.db
    )

    async def start(**overrides: Any) -> Server:
        overrides.setdefault("db", db)
        server = Server(dataclasses.replace(TEST_SETTINGS, **overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Connect]:
    """Open clients to ``server``: ``await connect("alice")`` is registered in JSON mode."""
    clients: list[LineClient] = []

    async def open_client(nick: str | None = None, *, json_mode: bool = True) -> LineClient:
        client = await LineClient.open("127.0.0.1", server.port)
        clients.append(client)
        if json_mode:
            await client.use_json()
        if nick is not None:
            await client.register(nick, json_mode=json_mode)
        return client

    yield open_client
    for client in clients:
        client.close()


Spawn = Callable[..., Awaitable[PipeClient]]


@pytest.fixture
async def spawn(start_server: StartServer) -> AsyncIterator[Spawn]:
    """Start pipe clients; they are killed before the servers stop."""
    clients: list[PipeClient] = []

    async def start(port: int, *args: str) -> PipeClient:
        client = await PipeClient.start(port, *args)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()


@pytest.fixture(scope="session")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate and its key for localhost (PEM files)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    generate_certificate(cert, key, ["localhost", "127.0.0.1"])
    return str(cert), str(key)


Nodes = Callable[..., Awaitable[list[Server]]]


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    assert REDIS is not None
    server = await RedisServer.start(REDIS)
    yield server
    await server.stop()


@pytest.fixture
async def nodes(redis_server: RedisServer, start_server: StartServer) -> Nodes:
    """``await nodes(2)``: daemons node1, node2... joined through one Redis."""

    async def start(count: int, **overrides: Any) -> list[Server]:
        return [
            await start_server(redis=redis_server.url, node_id=f"node{i + 1}", **overrides)
            for i in range(count)
        ]

    return start
