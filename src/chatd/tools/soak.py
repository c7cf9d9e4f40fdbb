"""A soak run: connections churn against one daemon for a while, then its
resources are compared with where they started.

``python -m chatd.soak --seconds 600`` (``scripts/soak.sh``) spawns
``chatd serve`` on free loopback ports with a throwaway database, warms it
up, reads ``/metrics``, and runs ``--workers`` clients that each loop:
connect, choose a nickname, join a room, talk, send a DM, create and leave a
room of their own, quit. Two watchers stay in the busy rooms and read
everything. At the end every client leaves and ``/metrics`` is read again.

The report (one JSON object with ``--json``) gives resident memory, open
descriptors and asyncio tasks at the start and at the end, and the
nicknames and rooms left. The exit status is 1 if anything leaked:
descriptors, tasks or nicknames above the start, or any room but
``general`` left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

ROOMS = 8


@dataclass
class Report:
    seconds: float = 0.0
    workers: int = 0
    sessions: int = 0
    messages: int = 0
    errors: int = 0
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)

    @property
    def leaks(self) -> list[str]:
        found = [
            f"{name}: {self.start[name]:g} at the start, {self.end[name]:g} at the end"
            for name in ("fds", "tasks", "nicknames")
            if self.end[name] > self.start[name]
        ]
        if self.end["rooms"] > 1:
            found.append(f"rooms: {self.end['rooms']:g} left, only general should be")
        if self.end["clients"]:
            found.append(f"clients: {self.end['clients']:g} still connected")
        return found


def read_metrics(web_port: int) -> dict[str, float]:
    """The figures of /metrics a soak compares."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()

    def value(name: str) -> float:
        total = 0.0
        for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE):
            total += float(m.group(1))
        return total

    return {
        "rss_mib": round(value("process_resident_memory_bytes") / 2**20, 1),
        "fds": value("process_open_fds"),
        "tasks": value("chatd_tasks"),
        "nicknames": value("chatd_nicknames"),
        "rooms": value("chatd_rooms"),
        "clients": value("chatd_clients"),
    }


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        try:
            greeting = await client.reader.readline()
            if not greeting.startswith(b"* welcome"):
                raise ConnectionError(f"refused: {greeting.decode(errors='replace').strip()}")
            client.send("/format json")
            await client.until("format")
        except BaseException:
            # Also when the soak is stopped: an open socket would hold the
            # daemon's shutdown for its whole grace.
            writer.transport.abort()
            raise
        return client

    def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\n")

    async def until(self, kind: str, token: str | None = None) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise ConnectionError("closed by the daemon")
                event: dict[str, Any] = json.loads(raw)
                if event["type"] == kind and (token is None or event.get("token") == token):
                    return event
                if event["type"] == "error" and kind != "error":
                    raise RuntimeError(f"{event['code']}: {event['text']}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def worker(n: int, port: int, stop: float, report: Report, *, once: bool = False) -> None:
    cycle = 0
    rng = random.Random(n)
    while time.monotonic() < stop or (once and not cycle):
        cycle += 1
        nick = f"w{n}x{cycle}"
        try:
            client = await Client.open(port)
            try:
                client.send(f"/nick {nick}")
                await client.until("current")
                client.send(f"/join room{rng.randrange(ROOMS)}")
                await client.until("current")
                for i in range(3):
                    client.send(f"cycle {cycle} line {i} from {nick}")
                client.send(f"/msg {nick} a note to self")
                client.send(f"/create own-{nick}")
                await client.until("current")
                client.send(f"/leave own-{nick}")
                client.send("/ping done")
                await client.until("pong", "done")
                client.send("/quit soak")
                await client.until("bye")
                report.messages += 4
                report.sessions += 1
            finally:
                await client.close()
        except (ConnectionError, OSError, RuntimeError, TimeoutError) as exc:
            report.errors += 1
            print(f"soak: worker {n}: {exc}", file=sys.stderr)


async def watcher(port: int, room: int, done: asyncio.Event) -> None:
    client = await Client.open(port)
    try:
        await _watch(client, room, done)
    finally:
        await client.close()


async def _watch(client: Client, room: int, done: asyncio.Event) -> None:
    client.send(f"/nick watcher{room}")
    await client.until("current")
    client.send(f"/join room{room}")
    await client.until("current")
    read = asyncio.ensure_future(client.reader.read(1 << 16))
    stopped = asyncio.ensure_future(done.wait())
    while not stopped.done():
        await asyncio.wait([read, stopped], return_when=asyncio.FIRST_COMPLETED)
        if read.done():
            if not read.result():
                raise ConnectionError("the daemon closed a watcher")
            read = asyncio.ensure_future(client.reader.read(1 << 16))
    read.cancel()
    client.send("/quit")


async def spawn(db: str) -> tuple[asyncio.subprocess.Process, int, int]:
    cmd = [
        sys.executable,
        "-m",
        "chatd",
        "serve",
        "--port",
        "0",
        "--http-port",
        "0",
        "--db",
        db,
        "--conn-rate",
        "0",
        "--max-per-ip",
        "100000",
        "--max-room-members",
        "100000",
        "--log-level",
        "info",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    web = 0
    async with asyncio.timeout(30):
        while raw := await proc.stderr.readline():
            line = raw.decode(errors="replace")
            if m := re.search(r"WebSocket on http://\S+:(\d+)/", line):
                web = int(m.group(1))
            if m := re.search(r"listening on \S+:(\d+)", line):
                asyncio.get_running_loop().create_task(_drain(proc.stderr))
                return proc, int(m.group(1)), web
    raise SystemExit("soak: the daemon did not start")


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading the daemon's log (its warnings go to our stderr)."""
    while raw := await stream.readline():
        if b"WARNING" in raw or b"ERROR" in raw:
            sys.stderr.write("chatd: " + raw.decode(errors="replace"))


async def soak(seconds: float, workers: int) -> Report:
    report = Report(workers=workers)
    with tempfile.TemporaryDirectory(prefix="chatd-soak-") as tmp:
        proc, port, web = await spawn(os.path.join(tmp, "soak.db"))
        # A long run prints nothing until it ends: say it has begun, and with what.
        print(
            f"soak: chatd serve (pid {proc.pid}) on 127.0.0.1:{port}, "
            f"{workers} clients churning for {seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        watchers: list[asyncio.Task[None]] = []
        try:
            # Warm up: one cycle of everything, so what is made once is there.
            await worker(-1, port, 0.0, report, once=True)
            report.start = await asyncio.to_thread(read_metrics, web)
            done = asyncio.Event()
            watchers += [asyncio.create_task(watcher(port, r, done)) for r in range(2)]
            began = time.monotonic()
            stop = began + seconds
            await asyncio.gather(*(worker(n, port, stop, report) for n in range(workers)))
            done.set()
            await asyncio.gather(*watchers)
            report.seconds = round(time.monotonic() - began, 1)
            # Sessions end on the daemon's side a moment after their clients go.
            async with asyncio.timeout(30):
                while True:
                    report.end = await asyncio.to_thread(read_metrics, web)
                    if not report.end["clients"] and not report.end["nicknames"]:
                        break
                    await asyncio.sleep(0.1)
            # The scrape itself holds a task while it runs: read it once more.
            report.end = await asyncio.to_thread(read_metrics, web)
        finally:
            # Stopped early, the watchers are still reading: they quit first.
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            proc.terminate()
            await proc.wait()
    return report


async def stoppable(run: Coroutine[Any, Any, Report]) -> tuple[Report | None, signal.Signals]:
    """Run the soak; SIGINT or SIGTERM end it early, with no report.

    Either way the daemon it started is stopped and its database removed (the
    ``finally`` in :func:`soak`): by default SIGTERM would end this process
    at once and leave that daemon running with no one to stop it.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run)
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await task, signal.SIGINT
    except asyncio.CancelledError:
        if not received or not task.cancelled():
            raise  # not ours: this coroutine itself is being cancelled
        return None, received[0]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    from chatd.config import ArgumentParser

    parser = ArgumentParser(
        prog="python -m chatd.soak",
        description="Churn connections against a fresh daemon; compare its resources after.",
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to churn")
    parser.add_argument("--workers", type=int, default=50, help="clients churning at once")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report, stopped_by = asyncio.run(stoppable(soak(args.seconds, args.workers)))
    if report is None:
        print(
            f"soak: stopped by {stopped_by.name} before the end; nothing compared", file=sys.stderr
        )
        return 128 + stopped_by
    leaks = report.leaks
    if args.json:
        print(json.dumps({**asdict(report), "leaks": leaks}))
    else:
        print(
            f"{report.sessions} sessions, {report.messages} messages, {report.errors} errors "
            f"in {report.seconds} s with {report.workers} workers"
        )
        for name in report.start:
            print(f"  {name:>10}: {report.start[name]:>10g} -> {report.end[name]:g}")
        for leak in leaks:
            print(f"  LEAK {leak}")
    return 1 if leaks or report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
