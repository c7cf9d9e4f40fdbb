"""Adversarial tests, each with the figure it measured (printed under
"figures" at the end of the run, and collected in docs/RELIABILITY.md).

Everything runs on loopback, bounded in count and time. ``--long`` runs the
soak and the crowds at full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import chatd.protocol.codec as codec_module
from tests.conftest import StartServer
from tests.helpers import (
    DEADLINE,
    Daemon,
    LineClient,
    loop_name,
    open_json,
    rss_kib,
    signal_child,
    until,
    until_async,
)

Figure = Callable[[str, object], None]


# -- 3. slow-consumer isolation ----------------------------------------------


@pytest.mark.both_stores
async def test_one_stuck_reader_among_200_is_cut_and_the_others_lose_nothing(
    figure: Figure, long_run: bool, chatd_store: str
) -> None:
    """A room of 200 readers and one client that never reads.

    The daemon's send buffers are clamped (--sndbuf 4096), so the stuck
    client's output backs up in the daemon at once. Only the write deadline
    may cut it here (the queue bounds are set out of its way).
    """
    readers_n = 400 if long_run else 200
    # 160 KiB for the stuck one: far over what the clamped socket buffers and
    # the transport (64 KiB) take before its writes count as blocked.
    messages = 800 if long_run else 400
    daemon = await Daemon.start(
        "--db",
        chatd_store,
        "--loop",
        loop_name(),
        "--sndbuf",
        "4096",
        "--write-timeout",
        "2",
        "--max-queue-bytes",
        str(64 << 20),
        "--max-queue-events",
        "1000000",
        "--queue-soft-seconds",
        "3600",
        "--max-per-ip",
        "1000",
        "--announce-limit",
        "1000",  # the room is told when the stuck one goes
        env={"CHATD_LOG_LEVEL": "info"},
    )
    readers = [await open_json(daemon.port, f"r{n}") for n in range(readers_n)]
    stuck = await open_json(daemon.port, "stuck")
    talker = await open_json(daemon.port, "talker")
    try:
        stuck.stop_reading()
        rss_before = rss_kib(daemon.proc.pid)
        text = "y" * 400
        started = time.monotonic()
        for i in range(messages):
            await talker.send(f"{i} {text}")
        cut_after = None
        left = await talker.expect(lambda e: e["type"] == "leave" and e["nick"] == "stuck")
        cut_after = time.monotonic() - started
        assert left["reason"] == "write timeout (2 s without reading)"
        rss_peak = rss_kib(daemon.proc.pid)

        async def receive_all(client: LineClient) -> list[int]:
            got: list[int] = []
            while len(got) < messages:
                event = await client.expect("message", timeout=DEADLINE * 3)
                got.append(int(event["text"].split()[0]))
            return got

        results = await asyncio.gather(*(receive_all(r) for r in readers))
        assert all(got == list(range(messages)) for got in results)
        figure("readers", readers_n)
        figure("messages x bytes", f"{messages} x {len(text) + 4}")
        figure("stuck client cut after", f"{cut_after:.1f} s (write deadline 2 s, swept each 1 s)")
        figure("daemon RSS growth while it was stuck", f"{(rss_peak - rss_before) / 1024:.1f} MiB")
        assert rss_peak - rss_before < 64 * 1024  # bounded: far below one copy per reader
    finally:
        for client in (*readers, stuck, talker):
            client.close()
        assert await daemon.stop() == 0


# -- 4. connection floods, per-address limits, slowloris -----------------------


async def test_a_connection_flood_from_many_addresses_meets_the_limits(
    start_server: StartServer, figure: Figure, long_run: bool
) -> None:
    """Ten addresses open connections as fast as they can; each is held to
    max_per_ip at once and conn_burst (then conn_rate) new ones."""
    server = await start_server(max_per_ip=20, conn_rate=5.0, conn_burst=30)
    per_address = 100 if long_run else 50
    outcomes: dict[str, int] = {}
    clients: list[LineClient] = []

    async def attempt(host: str) -> None:
        client = await LineClient.open("127.0.0.1", server.port, local_addr=(host, 0))
        clients.append(client)
        first = await client.line()
        kind = first.split(":")[0] if first.startswith("!") else "welcome"
        outcomes[kind] = outcomes.get(kind, 0) + 1

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(per_address):
            for a in range(2, 12):
                group.create_task(attempt(f"127.0.0.{a}"))
    flood_time = time.monotonic() - started
    # Meanwhile-and-after: a newcomer from a fresh address gets in at once.
    joined = time.monotonic()
    newcomer = await open_json(server.port, "newcomer", local_addr=("127.0.0.99", 0))
    newcomer_time = time.monotonic() - joined
    try:
        assert outcomes["welcome"] == 10 * 20  # max_per_ip from each address
        assert outcomes["! too_many_connections"] == 10 * (per_address - 20)
        assert server.session_count == 10 * 20 + 1
        figure("attempts", f"{10 * per_address} from 10 addresses in {flood_time:.2f} s")
        figure("admitted / refused", f"{outcomes['welcome']} / {10 * (per_address - 20)}")
        figure("newcomer registered after the flood in", f"{newcomer_time * 1000:.0f} ms")
    finally:
        newcomer.close()
        for client in clients:
            client.close()


async def test_slowloris_clients_are_closed_on_time_while_others_get_in(
    start_server: StartServer, figure: Figure, long_run: bool
) -> None:
    """Clients that trickle bytes without a newline, or never send at all,
    are all closed at the registration deadline; a newcomer meanwhile
    registers as fast as ever."""
    deadline = 2.0
    server = await start_server(register_timeout=deadline, max_per_ip=1000)
    n = 200 if long_run else 60
    tricklers = [await LineClient.open("127.0.0.1", server.port) for _ in range(n)]
    silent = [await LineClient.open("127.0.0.1", server.port) for _ in range(n)]
    opened = time.monotonic()
    stop = asyncio.Event()

    async def trickle(client: LineClient) -> None:
        # One byte every 0.25 s, never a newline: load, not synchronisation.
        while not stop.is_set():
            try:
                client.writer.write(b"x")
                await client.writer.drain()
            except ConnectionError:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    trickling = [asyncio.create_task(trickle(c)) for c in tricklers]
    try:
        started = time.monotonic()
        newcomer = await open_json(server.port, "newcomer")
        newcomer_ms = (time.monotonic() - started) * 1000
        closes = await asyncio.gather(*(c.wait_closed() for c in (*tricklers, *silent)))
        all_closed = time.monotonic() - opened
        assert all(b"! registration_timeout:" in data for data in closes)
        await until(lambda: server.session_count == 1, "slow sessions gone")
        await newcomer.send("/ping still here")
        await newcomer.expect("pong")
        figure("slow clients", f"{n} trickling + {n} silent, registration deadline {deadline:g} s")
        figure("all closed within", f"{all_closed:.2f} s of opening")
        figure("newcomer registered meanwhile in", f"{newcomer_ms:.0f} ms")
        newcomer.close()
    finally:
        stop.set()
        await asyncio.gather(*trickling)
        for client in (*tricklers, *silent):
            client.close()


# -- 5. file-descriptor exhaustion -------------------------------------------


async def admitted_client(port: int, what: str) -> LineClient:
    """The first connection the daemon welcomes again, greeting read.

    A place frees up once the daemon has finished with a session, a moment
    after its client saw the connection close; until then, refusals.
    """
    admitted: list[LineClient] = []

    async def try_once() -> bool:
        probe = await LineClient.open("127.0.0.1", port)
        if (await probe.line()).startswith("* welcome"):
            admitted.append(probe)
            return True
        probe.close()
        return False

    await until_async(try_once, what)
    return admitted[0]


def emfile_lines(log: list[str]) -> int:
    """accept() failures for want of descriptors that asyncio logged, one
    entry each (its traceback's "Too many open files" is the same entry)."""
    return sum("out of system resource" in line for line in log)


async def test_a_low_open_file_limit_refuses_the_excess_and_recovers(figure: Figure) -> None:
    """ulimit -n 160: the daemon says so at start, serves 96 clients, refuses
    the rest with server_full (through EMFILE when a burst outruns it), and
    accepts again once clients leave."""
    daemon = await Daemon.start("--loop", loop_name(), env={"CHATD_LOG_LEVEL": "info"}, max_fds=160)
    clients: list[LineClient] = []
    burst: list[LineClient] = []
    try:
        warning = next(line for line in daemon.log if "open-file limit" in line)
        assert "open-file limit 160 leaves room for 96 clients" in warning
        for n in range(96):
            clients.append(await open_json(daemon.port, f"c{n}"))
        # 300 at once: the daemon has 64 descriptors to spare for them.
        started = time.monotonic()
        opened = await asyncio.gather(
            *(LineClient.open("127.0.0.1", daemon.port) for _ in range(300))
        )
        burst.extend(opened)
        answers = await asyncio.gather(*(c.wait_closed(timeout=DEADLINE * 3) for c in burst))
        refused_in = time.monotonic() - started
        # Refused with a line, or (uvloop out of descriptors) closed at once.
        assert all(
            a.startswith(b"! server_full: the server is full (96 clients)") or a == b""
            for a in answers
        )
        refused = sum(a.startswith(b"! server_full") for a in answers)
        # Those already in were not disturbed.
        await clients[0].send("still talking")
        assert (await clients[-1].expect("message"))["text"] == "still talking"
        for client in clients[:10]:
            await client.send("/quit")
            await client.wait_closed()
        newcomer = await admitted_client(daemon.port, "a free slot after ten clients quit")
        clients.append(newcomer)
        await newcomer.send("newcomer", "/ping in")
        await newcomer.expect_line(r"^\* pong in$")
        emfile = emfile_lines(daemon.log)
        figure("open-file limit", "160 -> 96 clients served")
        figure("burst of 300 refused in", f"{refused_in:.2f} s, {refused} with server_full")
        figure("EMFILE log lines during the burst", emfile)
    finally:
        for client in (*clients, *burst):
            client.close()
        assert await daemon.stop() == 0


async def test_emfile_is_survived(figure: Figure) -> None:
    """ulimit -n 40 leaves the daemon fewer descriptors than one accept pass
    wants: accepting fails with EMFILE in a burst. asyncio pauses accepting
    for a second (and logs it); libuv (uvloop) closes the excess at once.
    Either way nobody gets in beyond max_clients, the daemon lives, and it
    accepts again afterwards."""
    daemon = await Daemon.start("--loop", loop_name(), env={"CHATD_LOG_LEVEL": "info"}, max_fds=40)
    burst: list[LineClient] = []
    try:
        assert any("serving at most 1;" in line for line in daemon.log)
        first = await open_json(daemon.port, "first")
        # Stopped, the daemon cannot accept: the kernel queues all 300, and
        # when it goes on they are all there at once.
        signal_child(daemon.proc, signal.SIGSTOP)
        try:
            burst.extend(
                await asyncio.gather(
                    *(LineClient.open("127.0.0.1", daemon.port) for _ in range(300))
                )
            )
        finally:
            signal_child(daemon.proc, signal.SIGCONT)
        answers = await asyncio.gather(*(c.wait_closed(timeout=DEADLINE * 3) for c in burst))
        assert not any(a.startswith(b"* welcome") for a in answers)
        refused = sum(a.startswith(b"! server_full") for a in answers)
        first.close()
        newcomer = await admitted_client(daemon.port, "accepting again")
        await newcomer.send("newcomer", "/ping alive")
        await newcomer.expect_line(r"^\* pong alive$")
        newcomer.close()
        emfile = emfile_lines(daemon.log)
        figure("burst of 300 at ulimit -n 40", f"{refused} told server_full, the rest closed")
        figure("accept() failures with EMFILE logged", emfile)
    finally:
        for client in burst:
            client.close()
        assert await daemon.stop() == 0


# -- 6. unicode and control bytes --------------------------------------------


async def test_hostile_bytes_never_reach_another_client(start_server: StartServer) -> None:
    server = await start_server()
    sender = await open_json(server.port, "sender")
    text_reader = await LineClient.open("127.0.0.1", server.port)
    json_reader = await open_json(server.port, "jreader")
    try:
        await text_reader.line()
        await text_reader.register("treader", json_mode=False)
        hostile = [
            b"over\xc0\xaflong",  # an overlong "/"
            b"sur\xed\xa0\x80rogate",  # an encoded surrogate
            b"nul\x00inside",
            b"cr\rinside",
            b"\x1b[2J\x1b[31mred\x1b]0;title\x07",  # ANSI clear screen, colour, window title
            "c1 \u009b31m csi".encode(),
            b"tab\there",
        ]
        for line in hostile:
            await sender.send(line)
        # A multi-byte character split across two writes (two TCP segments).
        sender.writer.write("split caf\u00e9".encode()[:-1])
        await sender.writer.drain()
        sender.writer.write("split caf\u00e9".encode()[-1:] + b"\n")
        await sender.send("/ping end")
        events = await sender.sync("end")
        errors = [e["code"] for e in events if e["type"] == "error"]
        assert errors == ["bad_encoding", "bad_encoding"]
        said = [e["text"] for e in events if e["type"] == "message"]
        assert said == [
            "nulinside",
            "crinside",
            "[2J[31mred]0;title",
            "c1 31m csi",
            "tab here",
            "split caf\u00e9",
        ]
        got = [e["text"] for e in await json_reader.sync("end") if e["type"] == "message"]
        assert got == said
        raw = await text_reader.reader.readuntil("split caf\u00e9\n".encode())
        for byte in (b"\x00", b"\r", b"\x1b", b"\x07", "\u009b".encode()):
            assert byte not in raw
    finally:
        for client in (sender, text_reader, json_reader):
            client.close()


# -- 7. event-loop health ------------------------------------------------------


async def test_the_loop_check_catches_a_daemon_callback_that_blocks(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite-wide 50 ms check (tests/conftest.py) is live: a command that
    burns 80 ms of CPU inside the daemon is caught (under asyncio; uvloop's
    slow callbacks are listed, see conftest)."""
    from tests import conftest

    real = codec_module.parse_line

    def burning(line: bytes) -> object:
        if line == b"/ping burn":
            end = time.thread_time() + 0.08
            while time.thread_time() < end:
                pass
        return real(line)

    monkeypatch.setattr(codec_module, "parse_line", burning)
    figures_before = len(conftest.FIGURES)
    server = await start_server()
    client = await open_json(server.port, "burner")
    try:
        await client.send("/ping burn")
        await client.expect("pong")
        caught, conftest._SLOW.seen[:] = list(conftest._SLOW.seen), []
        if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
            assert any("chatd" in seen and "s of CPU" in seen for seen in caught), caught
        else:  # uvloop: reported with its wall time, not counted
            assert caught == []
            assert any("chatd" in value for _, value in conftest.FIGURES[figures_before:])
    finally:
        client.close()


# -- 8. soak, short -----------------------------------------------------------


async def test_soak_leaves_no_trace(figure: Figure, long_run: bool) -> None:
    """scripts/soak.sh in small: churn, then compare the daemon with its start."""
    seconds = "300" if long_run else "8"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd.soak",
        "--seconds",
        seconds,
        "--workers",
        "20",
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(float(seconds) + 60):
        out, err = await proc.communicate()
    report = json.loads(out)
    assert report["leaks"] == [], report
    assert report["errors"] == 0, err.decode()
    assert report["sessions"] > 0
    assert proc.returncode == 0
    start, end = report["start"], report["end"]
    assert end["rss_mib"] - start["rss_mib"] < 32  # generous: a leak per session would be far more
    figure(
        "churned",
        f"{report['sessions']} sessions, {report['messages']} messages in {report['seconds']} s",
    )
    for name in ("rss_mib", "fds", "tasks", "nicknames", "rooms"):
        figure(name, f"{start[name]:g} -> {end[name]:g}")


# -- 9. clean shutdown under load ---------------------------------------------


async def test_sigterm_under_load_is_clean_and_loses_no_acknowledged_message(
    tmp_path: Path, figure: Figure, long_run: bool
) -> None:
    """SIGTERM with 500 clients: talkers, readers, clients that never read,
    clients in the middle of logging in. Exit 0 in bounded time, no
    warning about tasks or transports (ResourceWarning is an error), and
    every message a sender saw acknowledged is in the database."""
    db = str(tmp_path / "chat.db")
    total = 1000 if long_run else 500
    args = ("--db", db, "--max-per-ip", "2000", "--shutdown-grace", "3", "--sndbuf", "4096")
    setup = await Daemon.start(*args)
    owner = await open_json(setup.port, "owner")
    await owner.send("/register s3cret-pass")
    await owner.expect("registered")
    owner.close()
    assert await setup.stop() == 0

    daemon = await Daemon.start(
        *args,
        "--loop",
        loop_name(),
        python=("-W", "error::ResourceWarning"),
        env={"CHATD_LOG_LEVEL": "info"},
    )
    quarter = total // 4
    readers = [await open_json(daemon.port, f"r{n}") for n in range(quarter)]
    mute = [await open_json(daemon.port, f"m{n}") for n in range(quarter)]
    talkers = [await open_json(daemon.port, f"t{n}") for n in range(quarter)]
    logging_in = [await open_json(daemon.port) for _ in range(total - 3 * quarter)]
    for client in mute:
        client.stop_reading()
    acked: list[tuple[int, str]] = []

    async def talk(client: LineClient) -> None:
        for i in range(1000):
            text = f"{client.nick}-{i}"
            try:
                await client.send(text)
                event = await client.expect(
                    lambda e, text=text: e["type"] == "message" and e["text"] == text
                )
            except (ConnectionError, AssertionError, ValueError):
                return  # the shutdown ended it
            acked.append((event["id"], text))

    tasks = [asyncio.create_task(talk(c)) for c in talkers]
    await until(lambda: len(acked) >= 2 * quarter, "messages acknowledged")
    for client in logging_in:
        client.writer.write(b"/login owner s3cret-pass\n")
    started = time.monotonic()
    code = await daemon.stop(signal.SIGTERM, timeout=30)
    stopped_in = time.monotonic() - started
    await asyncio.gather(*tasks)
    for client in (*readers, *mute, *talkers, *logging_in):
        client.close()
    assert code == 0
    bad_signs = (
        "Task was destroyed",
        "unclosed",
        "ResourceWarning",
        "Traceback",
        "never retrieved",
    )
    for n, line in enumerate(daemon.log):
        assert not any(bad in line for bad in bad_signs), "\n".join(daemon.log[n - 3 : n + 80])
    assert any("shutdown complete" in line for line in daemon.log)

    check = await Daemon.start("--db", db)
    try:
        reader = await open_json(check.port, "checker")
        stored: dict[int, str] = {}
        before = ""
        while True:
            await reader.send(f"/history general 1000{before}")
            page = await reader.sync()
            stored.update((e["id"], e["text"]) for e in page[:-1])
            if not page[-1]["more"]:
                break
            before = f" before={page[-1]['before']}"
        missing = [(i, t) for i, t in acked if stored.get(i) != t]
        assert missing == []
        figure(
            "clients at SIGTERM",
            f"{total} ({quarter} reading, {quarter} not reading, "
            f"{quarter} talking, {total - 3 * quarter} logging in)",
        )
        figure("exit after SIGTERM", f"{stopped_in:.2f} s, status 0 (grace 3 s)")
        figure("acknowledged messages, all stored", len(acked))
        reader.close()
    finally:
        await check.stop()
