"""``chatd bench``: load from separate processes, figures from the daemon's /proc.

The load generator runs in worker processes (never in the daemon's), each
with its own event loop and a share of the clients. A run goes through
barriers so that nothing is measured while clients are still joining:

1. *ready*: every client is connected, registered, in its room, and has had
   a ``/ping`` answered;
2. *synced*: every client has pinged again after **all** clients were ready,
   so join events of late joiners are behind it, not counted as load;
3. *go*: the measured phase starts at a wall-clock time given to all workers.

Workers count what they receive cheaply: they read large chunks and count
byte markers (``"type":"message"``), never parsing JSON on the hot path.
Daemon CPU comes from ``/proc/PID/stat``, memory from ``/proc/PID/status``,
so this measures a daemon on this machine (spawned, or given by ``--pid``).

Scenarios:

* ``fanout``: one room, L listeners and T talkers; each talker keeps a window
  of W messages in flight (confirmed by its own echo), so this measures
  capacity, not overload. Reports deliveries per second, daemon CPU per
  delivery and loss.
* ``idle``: N registered connections spread over R rooms; reports the
  daemon's RSS per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

_MESSAGE = b'"type":"message"'
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------------------------------------------------------------------------
# The daemon under test


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Target:
    host: str
    port: int
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None

    def cpu(self) -> float | None:
        return proc_cpu_seconds(self.pid) if self.pid else None

    def rss_kib(self) -> int | None:
        return proc_rss_kib(self.pid) if self.pid else None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn_daemon(extra: list[str], loop: str) -> Target:
    """Start ``chatd serve`` on a free loopback port, configured for load."""
    cmd = [
        sys.executable,
        "-m",
        "chatd",
        "serve",
        "--port",
        "0",
        "--loop",
        loop,
        "--msg-rate",
        "0",
        "--max-clients",
        "100000",
        "--max-per-ip",
        "100000",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while time.monotonic() < deadline:
        raw = proc.stderr.readline()
        if not raw:
            break
        seen.append(raw.decode(errors="replace").rstrip())
        if m := re.search(r"listening on (\S+):(\d+)", seen[-1]):
            _drain_stderr(proc)
            return Target(m.group(1), int(m.group(2)), proc.pid, proc)
    proc.kill()
    proc.wait()
    raise SystemExit("chatd bench: the daemon did not start:\n" + "\n".join(seen))


def _drain_stderr(proc: subprocess.Popen[bytes]) -> None:
    """Keep reading the daemon's log so it never blocks; show only problems."""

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                sys.stderr.write("daemon: " + line)

    threading.Thread(target=pump, daemon=True).start()


# ---------------------------------------------------------------------------
# Worker processes


class BenchClient:
    """One connection in a worker: a reader task that counts markers."""

    def __init__(self, nick: str, room: str) -> None:
        self.nick = nick
        self.room = room
        self.messages = 0  # message lines received
        self.base = 0  # messages received before the measured phase
        self.mine = 0  # own echoes received
        self._mine_marker = f'"from":"{nick}"'.encode()
        self._awaited: bytes | None = None
        self._found = asyncio.Event()
        self.progress = asyncio.Event()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self._task = asyncio.create_task(self._read_loop())
        await self.roundtrip(
            f"/format json\n/nick {self.nick}\n/join {self.room}\n".encode(), "ready"
        )

    async def roundtrip(self, lines: bytes, token: str) -> None:
        """Send lines then a ping; wait for its pong (all earlier output is in)."""
        assert self.writer is not None
        self._awaited = f'"token":"{token}"'.encode()
        self._found.clear()
        self.writer.write(lines + f"/ping {token}\n".encode())
        await self.writer.drain()
        await self._found.wait()

    async def _read_loop(self) -> None:
        assert self.reader is not None
        keep = max(len(_MESSAGE), len(self._mine_marker), 64)
        tail = b""
        while data := await self.reader.read(1 << 18):
            buf = tail + data
            # Count markers that end inside the new data only (not in the old tail).
            start = len(tail)
            self.messages += _count_from(buf, _MESSAGE, start)
            mine = _count_from(buf, self._mine_marker, start)
            if mine:
                self.mine += mine
                self.progress.set()
            if self._awaited is not None and self._awaited in buf:
                self._awaited = None
                self._found.set()
            tail = buf[-keep:]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()


def _count_from(buf: bytes, marker: bytes, start: int) -> int:
    """Occurrences of ``marker`` in ``buf`` that end after index ``start``."""
    first = max(0, start - len(marker) + 1)
    return buf.count(marker, first)


async def _talk(client: BenchClient, deadline: float, window: int, line: bytes) -> int:
    """Send as fast as a window of unconfirmed messages allows; return the count."""
    assert client.writer is not None
    sent = 0
    while time.time() < deadline:
        room = window - (sent - client.mine)
        if room > 0:
            client.writer.write(line * room)
            sent += room
            await client.writer.drain()
        else:
            client.progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    await client.progress.wait()
    return sent


async def _wait_echoes(client: BenchClient, sent: int, within: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while client.mine < sent:
                client.progress.clear()
                await client.progress.wait()


async def _worker(pipe: multiprocessing.connection.Connection, job: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    recv: Callable[[], Any] = pipe.recv

    async def command() -> tuple[str, Any]:
        msg: tuple[str, Any] = await loop.run_in_executor(None, recv)
        return msg

    clients = [BenchClient(nick, room) for nick, room in job["clients"]]
    limiter = asyncio.Semaphore(job.get("connect_parallel", 200))

    async def open_one(client: BenchClient) -> None:
        async with limiter:
            await client.connect(job["host"], job["port"])

    try:
        await asyncio.gather(*(open_one(c) for c in clients))
        pipe.send(("ready", None))
        while True:
            what, arg = await command()
            if what == "sync":
                await asyncio.gather(*(c.roundtrip(b"", "sync") for c in clients))
                for client in clients:
                    client.base = client.messages
                pipe.send(("synced", None))
            elif what == "final":
                # Every talker has its echoes: a ping now comes after all messages.
                await asyncio.gather(*(c.roundtrip(b"", "final") for c in clients))
                pipe.send(("counted", sum(c.messages - c.base for c in clients)))
            elif what == "go":
                pipe.send(("done", await _measure(clients, job, start=arg)))
            elif what == "stop":
                break
    finally:
        for client in clients:
            client.close()


async def _measure(clients: list[BenchClient], job: dict[str, Any], start: float) -> dict[str, Any]:
    talkers = {c.nick for c in clients if c.nick.startswith("t")}
    line = ("x" * (job["payload"] - 1)).encode() + b"\n"
    deadline = start + job["duration"]
    await asyncio.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    base = sum(c.messages for c in clients)
    tasks = [
        asyncio.create_task(_talk(c, deadline, job["window"], line))
        for c in clients
        if c.nick in talkers
    ]
    await asyncio.sleep(max(0.0, deadline - time.time()))
    in_window = sum(c.messages for c in clients) - base
    cpu = time.process_time() - cpu0
    sent = await asyncio.gather(*tasks)
    for client, count in zip((c for c in clients if c.nick in talkers), sent, strict=True):
        await _wait_echoes(client, count, within=30)
    return {"received_in_window": in_window, "sent": sum(sent), "cpu": cpu}


def _worker_main(pipe: multiprocessing.connection.Connection, job: dict[str, Any]) -> None:
    _raise_nofile()
    try:
        import uvloop

        uvloop.run(_worker(pipe, job))
    except ImportError:
        asyncio.run(_worker(pipe, job))


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Workers:
    """A set of worker processes sharing out the clients."""

    def __init__(self, target: Target, clients: list[tuple[str, str]], procs: int, **job: Any):
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for n in range(procs):
            mine, theirs = ctx.Pipe()
            share = clients[n::procs]
            spec = {"host": target.host, "port": target.port, "clients": share, **job}
            proc = ctx.Process(target=_worker_main, args=(theirs, spec), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def expect(self, what: str, timeout: float = 120) -> list[Any]:
        results = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise SystemExit(f"chatd bench: a worker did not report {what!r} in time")
            got, value = pipe.recv()
            if got != what:
                raise SystemExit(f"chatd bench: worker said {got!r}, expected {what!r}")
            results.append(value)
        return results

    def send(self, what: str, arg: Any = None) -> None:
        for pipe in self.pipes:
            pipe.send((what, arg))

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def workers(
    target: Target, clients: list[tuple[str, str]], procs: int, **job: Any
) -> Iterator[Workers]:
    group = Workers(target, clients, procs, **job)
    try:
        group.expect("ready")
        yield group
    finally:
        group.close()


# ---------------------------------------------------------------------------
# Scenarios


@dataclass
class Result:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_fanout(target: Target, opts: argparse.Namespace) -> Result:
    members = opts.listeners + opts.talkers
    clients = [(f"l{n}", "fanout") for n in range(opts.listeners)]
    clients += [(f"t{n}", "fanout") for n in range(opts.talkers)]
    with workers(
        target,
        clients,
        opts.procs,
        window=opts.window,
        payload=opts.payload,
        duration=opts.duration,
    ) as group:
        group.send("sync")
        group.expect("synced")
        start = time.time() + 0.5
        group.send("go", start)
        time.sleep(max(0.0, start - time.time()))
        cpu0 = target.cpu()
        time.sleep(opts.duration)
        cpu1 = target.cpu()
        reports = group.expect("done", timeout=opts.duration + 120)
        group.send("final")
        received = sum(group.expect("counted"))
    sent = sum(r["sent"] for r in reports)
    in_window = sum(r["received_in_window"] for r in reports)
    gen_cpu = sum(r["cpu"] for r in reports)
    result = Result("fanout")
    f = result.figures
    f.update(
        listeners=opts.listeners,
        talkers=opts.talkers,
        window=opts.window,
        payload=opts.payload,
        duration_s=opts.duration,
        deliveries_per_s=round(in_window / opts.duration),
        messages_per_s=round(in_window / opts.duration / members),
        messages_sent=sent,
        loss=sent * members - received,
        generator_cpu_util=round(gen_cpu / opts.duration, 2),
    )
    if cpu0 is not None and cpu1 is not None:
        daemon_cpu = cpu1 - cpu0
        f["daemon_cpu_util"] = round(daemon_cpu / opts.duration, 2)
        f["daemon_cpu_us_per_delivery"] = round(daemon_cpu / max(in_window, 1) * 1e6, 3)
        _note_limit(result, daemon_cpu / opts.duration, gen_cpu / opts.duration, opts.procs)
    return result


def _note_limit(result: Result, daemon_util: float, gen_util: float, procs: int) -> None:
    cores = os.cpu_count() or 1
    if daemon_util < 0.85 and gen_util > 0.85 * min(procs, max(cores - daemon_util, 0.5)):
        result.notes.append(
            f"the daemon used {daemon_util:.0%} of a core while the generator used "
            f"{gen_util:.0%}: the generator, not the daemon, may be the limit"
        )


def run_idle(target: Target, opts: argparse.Namespace, count: int) -> Result:
    rss0 = target.rss_kib()
    clients = [(f"i{n}", f"room{n % opts.rooms}") for n in range(count)]
    t0 = time.monotonic()
    with workers(target, clients, opts.procs, window=0, payload=0, duration=0) as group:
        ready_s = time.monotonic() - t0
        group.send("sync")
        group.expect("synced")
        rss1 = target.rss_kib()
    result = Result("idle")
    result.figures.update(connections=count, rooms=opts.rooms, setup_s=round(ready_s, 2))
    if rss0 is not None and rss1 is not None:
        result.figures.update(
            daemon_rss_before_kib=rss0,
            daemon_rss_kib=rss1,
            rss_per_connection_kib=round((rss1 - rss0) / count, 2),
        )
    return result


# ---------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        default="fanout,idle",
        help="comma-separated scenarios to run: fanout, idle (default: %(default)s)",
    )
    parser.add_argument("--host", help="benchmark a daemon already running here (no spawn)")
    parser.add_argument("--port", type=int, default=9999, help="its port (default: %(default)s)")
    parser.add_argument(
        "--pid", type=int, help="its process id, to read its CPU and memory from /proc"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the spawned daemon (default: %(default)s)",
    )
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--listeners", type=int, default=100, help="fanout: listening clients")
    parser.add_argument("--talkers", type=int, default=10, help="fanout: talking clients")
    parser.add_argument(
        "--window", type=int, default=32, help="fanout: messages in flight per talker"
    )
    parser.add_argument("--payload", type=int, default=128, help="fanout: message bytes")
    parser.add_argument("--duration", type=float, default=10.0, help="fanout: seconds measured")
    parser.add_argument(
        "--idle",
        default="1000",
        help="idle: comma-separated connection counts (default: %(default)s)",
    )
    parser.add_argument("--rooms", type=int, default=1000, help="idle: rooms to spread over")
    parser.add_argument(
        "--quick", action="store_true", help="a small, fast run that checks everything works"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON lines")


def main(opts: argparse.Namespace) -> int:
    if opts.quick:
        opts.listeners, opts.talkers, opts.duration, opts.idle, opts.rooms = 10, 2, 1.0, "50", 10
    scenarios = [s.strip() for s in opts.scenario.split(",") if s.strip()]
    unknown = set(scenarios) - {"fanout", "idle"}
    if unknown:
        raise SystemExit(f"chatd bench: unknown scenario(s): {', '.join(sorted(unknown))}")
    target = Target(opts.host, opts.port, opts.pid) if opts.host else spawn_daemon([], opts.loop)
    results: list[Result] = []
    try:
        for name in scenarios:
            if name == "fanout":
                results.append(run_fanout(target, opts))
            else:
                for count in (int(n) for n in opts.idle.split(",")):
                    results.append(run_idle(target, opts, count))
    finally:
        target.stop()
    for result in results:
        if not opts.json:
            print(_table(result))
        print(json.dumps({"scenario": result.scenario, **result.figures, "notes": result.notes}))
    return 0


def _table(result: Result) -> str:
    width = max(len(k) for k in result.figures)
    rows = [f"== {result.scenario}"]
    rows += [f"  {k:<{width}}  {v}" for k, v in result.figures.items()]
    rows += [f"  note: {n}" for n in result.notes]
    return "\n".join(rows)
