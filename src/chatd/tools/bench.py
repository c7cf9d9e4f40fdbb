"""``chatd bench``: load from separate processes, figures from the server's /proc.

The load generator runs in worker processes (never in the server's), each
with its own event loop and a share of the clients. The same workers drive
chatd (JSON lines) and, for ``--baseline redis``, a fresh ``redis-server``
(SUBSCRIBE/PUBLISH over RESP), so every chatd figure can be read as a ratio
to raw Redis pub/sub on the same machine at the same moment.

A run goes through barriers so that nothing is measured while clients are
still joining:

1. *ready*: every client is connected, registered, in its room (subscribed),
   and has had a ping answered;
2. *synced*: every client has pinged again after **all** clients were ready,
   so join events of late joiners are behind it, not counted as load;
3. *go*: the measured phase starts at a time given to all workers;
4. *final*: after the phase every client pings once more; its answer comes
   after every message sent in the phase, so counts are complete (loss).

Talkers write like real clients: every message is its own ``send()`` on the
talker's socket (never several messages in one write, never an event loop's
write buffer that would merge them); only when the kernel refuses part of a
message does the rest wait for the socket to take it (counted as
``talker_sends_deferred``). Redis talkers publish on a connection of their
own, as a real client must (a subscribed RESP2 connection cannot publish).
The workers collect no garbage cyclically during a measured phase
(``gc.disable()``), so a pause of the generator is not counted as the
server's latency.

Workers read large chunks and count byte markers, never parsing JSON on the
hot path. Every payload carries its talker's tag (``~t3~``) and, where
latency is measured, the time it was *scheduled* to be sent (open loop: a
stall shows up as latency instead of being hidden by a slower send rate).
Only sampled listeners parse stamps. Server CPU comes from
``/proc/PID/stat``, memory from ``/proc/PID/status``.

Scenarios (``--scenario``, comma-separated):

* ``fanout``: 1 room, 100 listeners + 10 talkers; each talker keeps a window
  of 32 messages unconfirmed by its own echo (closed loop: capacity, not
  overload). Deliveries per second, server CPU per delivery, loss.
* ``latency``: 10 rooms of 50 listeners + 2 talkers, 20 talkers sending at a
  fixed total rate (``--rates``, open loop). p50/p99/p99.9 and server CPU.
* ``rooms``: 1000 rooms of 5 members who all talk, 2000 messages/s in total.
  p99 latency, server CPU, loss.
* ``idle``: 5000 and 10000 registered idle connections in 1000 rooms. Server
  RSS per connection.
* ``storm``: 2000 connections opened at once, each registering and joining.
  Connections per second to "ready", failures.

``--transport ws`` runs the same scenarios with every chatd client on a
WebSocket to the web port instead of a TCP connection (reported as server
``chatd-ws``). ``--transport irc`` runs them over the IRC gateway (reported
as ``chatd-irc``): every client registers as an IRC client would (``CAP LS
302``, ``CAP REQ :echo-message``, ``NICK``, ``USER``, ``CAP END``, then waits
for the end of the MOTD) and joins its room's channel ``#room`` (waits for
the end of NAMES); talkers send ``PRIVMSG #room :payload`` and are
confirmed by their own line coming back (echo-message); barriers are
``PING :token``, whose PONG comes after every earlier command of that
connection has been carried out; listeners count `` PRIVMSG #`` in what
arrives. A PING from the server is answered with its PONG. An IRC line is at
most 512 bytes, so ``--payload`` is at most 400 there. history, login and
search run over TCP only, as with ``ws``.

chatd only, run when named (no Redis counterpart): ``history`` (``/history
ROOM 1000`` on a room of a million stored messages), ``login`` (wrong
passwords against the throttle) and ``search``: ``/search`` on a SQLite
database of ``--search-messages`` stored messages (a million by default) in
50 rooms and private conversations, their words drawn from a Zipf-like
vocabulary. The database is built once per message count and schema (its
rows with ``executemany``, then the full-text index by chatd's own
migration) and kept in ``--search-cache``; each run starts a daemon on a
copy of it. One client logs in to the account whose private messages it
holds, joins every room, and times each kind of query (rare, common,
prefix, phrase, one room, one private conversation, deep pages, no match)
from its line to the ``search`` summary.

``--cluster N`` spawns a ``redis-server`` and N daemons joined through it
(cluster mode) and spreads the clients of every scenario over the N daemons
in turn, so a room's members are on every node (reported as server
``chatd-clusterN``). Server CPU is then the sum over the daemons and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import hashlib
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chatd.protocol.irc import BadMessage, IrcMessage, parse_message

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_STAMP_RE = re.compile(rb"~t[0-9x]+~(\d+)~")
_MARKERS = {"chatd": b'"type":"message"', "redis": b"$7\r\nmessage\r\n"}
#: What marks a message delivered over IRC (the trailing ``:`` may be left
#: out when the text has no space), and a PING from the server.
_IRC_MARKER = b" PRIVMSG #"
_IRC_PING_RE = re.compile(rb"(?<=\n)(?::\S+ +)?PING +([^\r\n]*)\r?\n")
#: The longest ``--payload`` over IRC: the line relayed to members (source,
#: ``PRIVMSG #room :``, CR LF) must stay within IRC's 512 bytes.
IRC_MAX_PAYLOAD = 400
SCENARIOS = ("fanout", "latency", "rooms", "idle", "storm")
#: chatd-only scenarios (no Redis counterpart), run only when named.
EXTRA_SCENARIOS = ("history", "login", "search")


# ---------------------------------------------------------------------------
# Servers under test


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
    """A server to load: chatd or redis-server, spawned or already running."""

    kind: str  # "chatd" or "redis"
    host: str
    port: int
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None
    #: How chatd's clients connect: "tcp" (JSON lines), "ws" (WebSocket
    #: frames to the web port, which ``port`` then is) or "irc" (IRC lines
    #: to the IRC port, which ``port`` then is).
    transport: str = "tcp"
    #: Cluster mode: the other daemons (clients are spread over all of them)
    #: and the Redis joining them.
    others: list[Target] = field(default_factory=list)
    #: chatd's store as spawned: "sqlite" (a fresh file) or "memory", and
    #: the database file ("" when in memory or not spawned).
    store: str = ""
    db: str = ""
    #: A directory made for the spawned daemon's database, removed at stop.
    scratch: str | None = None
    #: Seconds from the spawn to the daemon listening (a seed's copy included).
    start_s: float = 0.0

    @property
    def label(self) -> str:
        nodes = 1 + sum(t.kind == "chatd" for t in self.others)
        if nodes > 1:
            return f"{self.kind}-cluster{nodes}"
        return self.kind if self.transport == "tcp" else f"{self.kind}-{self.transport}"

    @property
    def ports(self) -> list[int]:
        return [self.port] + [t.port for t in self.others if t.kind == "chatd"]

    def cpu(self) -> float | None:
        if not self.pid:
            return None
        total = proc_cpu_seconds(self.pid)
        for other in self.others:
            total += other.cpu() or 0.0
        return total

    def rss_kib(self) -> int | None:
        return proc_rss_kib(self.pid) if self.pid else None

    def stop(self) -> None:
        """Stop the server (in cluster mode every daemon, then Redis)."""
        for other in self.others:
            if other.kind == "chatd":
                other.stop()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for other in self.others:
            if other.kind != "chatd":
                other.stop()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def spawn_cluster(loop: str, nodes: int) -> Target:
    """A ``redis-server`` and ``nodes`` daemons joined through it."""
    redis = spawn_redis()
    targets: list[Target] = []
    try:
        for n in range(nodes):
            targets.append(
                spawn_chatd(
                    loop,
                    extra=["--redis", f"redis://127.0.0.1:{redis.port}/0", "--node-id", f"b{n}"],
                )
            )
    except BaseException:
        for target in [*targets, redis]:
            target.stop()
        raise
    first = targets[0]
    first.others = [*targets[1:], redis]
    return first


def _fresh_database(db: str | None) -> tuple[str, str | None]:
    """The ``--db`` of a spawned daemon, and the directory made for it (or
    None): a new file for None, a named file emptied, or ``:memory:``."""
    scratch = None
    if db is None:
        scratch = tempfile.mkdtemp(prefix="chatd-bench-")
        db = os.path.join(scratch, "chatd.db")
    elif db != ":memory:":
        from pathlib import Path

        from chatd.store import DatabaseLock, StoreError

        lock = DatabaseLock(Path(db))
        try:
            lock.acquire()
        except FileNotFoundError:
            pass  # no directory yet: nothing to empty
        except (StoreError, OSError) as exc:
            raise SystemExit(f"chatd bench: {exc}") from None
        else:
            try:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(db + suffix)
            finally:
                lock.release()
    return db, scratch


def _free_port() -> int:
    """A loopback port free at the moment (for a server told its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _chatd_command(loop: str, db: str, transport: str, irc_port: int) -> list[str]:
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
        "--conn-rate",
        "0",
        "--max-room-members",
        "100000",
        "--max-rooms",
        "1000",
        "--db",
        db,
    ]
    if transport == "ws":
        cmd += ["--http-port", "0", "--ws-ping-interval", "86400"]
    elif transport == "irc":
        cmd += ["--irc-port", str(irc_port)]
    return cmd


def _accepting(host: str, port: int, deadline: float) -> bool:
    """Whether ``host:port`` takes a connection before the deadline."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)  # still opening; this is the harness, not a test
    return False


def spawn_chatd(
    loop: str,
    db: str | None = ":memory:",
    transport: str = "tcp",
    extra: Sequence[str] = (),
    seed: str | None = None,
) -> Target:
    """Start ``chatd serve`` on a free loopback port, configured for load.

    ``db=None`` is the default store, SQLite, on a new file in a directory
    of its own that is removed when the daemon stops. A named database file
    is emptied first: each spawn measures a fresh store.
    One that a running daemon holds is left alone, and the bench stops.
    ``seed`` is a database file copied to the daemon's before it starts
    (the file itself is never written).
    With ``transport="ws"`` the web port is opened too, with WebSocket pings
    off: the load generator frames what it sends but never parses frames.
    With ``transport="irc"`` the IRC port is opened too, on a free port, and
    the daemon is ready once that port takes a connection.
    """
    began = time.monotonic()
    if seed is not None and db == ":memory:":
        raise SystemExit("chatd bench: a database to start from needs SQLite (not --db :memory:)")
    db, scratch = _fresh_database(db)
    if seed is not None:
        os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
        shutil.copyfile(seed, db)
    irc_port = _free_port() if transport == "irc" else 0
    cmd = _chatd_command(loop, db, transport, irc_port) + list(extra)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen: list[str] = []
    web_port = 0
    while time.monotonic() < deadline:
        raw = proc.stderr.readline()
        if not raw:
            break
        seen.append(raw.decode(errors="replace").rstrip())
        if web := re.search(r"WebSocket on http://(\S+):(\d+)/", seen[-1]):
            web_port = int(web.group(2))
        if m := re.search(r"listening on (\S+):(\d+)", seen[-1]):
            _pump_stderr(proc, "chatd")
            port = {"ws": web_port, "irc": irc_port}.get(transport, int(m.group(2)))
            if transport == "irc" and not _accepting(m.group(1), port, deadline):
                seen.append(f"(nothing accepted connections on the IRC port {port})")
                break
            store, path = ("memory", "") if db == ":memory:" else ("sqlite", db)
            return Target(
                "chatd",
                m.group(1),
                port,
                proc.pid,
                proc,
                transport,
                store=store,
                db=path,
                scratch=scratch,
                start_s=round(time.monotonic() - began, 2),
            )
    proc.kill()
    proc.wait()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    raise SystemExit("chatd bench: the daemon did not start:\n" + "\n".join(seen))


def spawn_redis() -> Target:
    """Start a throwaway ``redis-server`` on a free port: no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("chatd bench: --baseline redis needs redis-server on the PATH")
    port = _free_port()
    cmd = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--tcp-backlog",
        "4096",
        "--maxclients",
        "100000",
        "--client-output-buffer-limit",
        "pubsub 0 0 0",
        "--loglevel",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    _pump_stderr(proc, "redis", stream="stdout")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return Target("redis", "127.0.0.1", port, proc.pid, proc)
        except OSError:
            time.sleep(0.05)  # starting up; this is the harness, not a test
    proc.kill()
    proc.wait()
    raise SystemExit("chatd bench: redis-server did not start")


def _pump_stderr(proc: subprocess.Popen[bytes], name: str, stream: str = "stderr") -> None:
    """Keep reading a server's log so it never blocks; show only problems."""
    pipe = proc.stderr if stream == "stderr" else proc.stdout

    def pump() -> None:
        assert pipe is not None
        for raw in pipe:
            line = raw.decode(errors="replace")
            if any(w in line for w in (" WARNING ", " ERROR ", "Traceback", "rror:")):
                sys.stderr.write(f"{name}: {line}")

    threading.Thread(target=pump, daemon=True).start()


# ---------------------------------------------------------------------------
# Worker side: one client


@dataclass(frozen=True)
class ClientSpec:
    name: str
    room: str
    talks: bool = False  # sends messages
    samples: bool = False  # parses latency stamps
    node: int = 0  # which of the target's ports (cluster mode)


class BenchClient:
    """One connection in a worker; a reader task counts what arrives.

    Over WebSocket the client frames what it sends with websockets'
    sans-I/O protocol and counts markers in the raw bytes it receives, as
    over TCP: server frames are unmasked, so their JSON is there as sent.
    Over IRC it registers and joins reading line by line (every refusal is
    an error), then counts ``PRIVMSG`` lines in the raw bytes.
    """

    def __init__(self, spec: ClientSpec, kind: str, transport: str = "tcp") -> None:
        self.spec = spec
        self.kind = kind
        self.transport = transport
        self._ws: Any = None  # websockets.client.ClientProtocol over WebSocket
        self.messages = 0
        self.base = 0
        self.mine = 0
        self.sent = 0
        self.latencies: list[float] = []
        self.sampling = False
        self.progress = asyncio.Event()
        self._irc = kind == "chatd" and transport == "irc"
        self._marker = _IRC_MARKER if self._irc else _MARKERS[kind]
        self._tag = f"~{spec.name}~".encode()
        #: What ends the awaited answer to a ping (any one of them).
        self._awaited: tuple[bytes, ...] | None = None
        self._found = asyncio.Event()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: How a talker sends its messages (see Sender).
        self.sender: Sender | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        if self.spec.talks:
            if self.kind == "redis":
                self.sender = await Sender.connect(host, port)
            else:
                self.sender = Sender.beside(self.writer)
        if self.transport == "ws":
            await self._handshake(host, port)
        elif self._irc:
            await self._irc_register()
            await self._irc_join()
        self._task = asyncio.create_task(self._read_loop())
        if self.kind == "redis":
            hello = f"SUBSCRIBE {self.spec.room}\r\n".encode()
        elif self._irc:  # registered and joined above
            hello = b""
        elif self.transport == "ws":  # JSON is fixed on a WebSocket
            hello = self.line(f"/nick {self.spec.name}") + self.line(f"/join {self.spec.room}")
        else:
            hello = f"/format json\n/nick {self.spec.name}\n/join {self.spec.room}\n".encode()
        await self.roundtrip("ready", hello)

    async def _handshake(self, host: str, port: int) -> None:
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        assert self.reader is not None
        assert self.writer is not None
        self._ws = protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}/ws"), max_size=None)
        protocol.send_request(protocol.connect())
        self.writer.write(b"".join(protocol.data_to_send()))
        protocol.receive_data(await self.reader.readuntil(b"\r\n\r\n"))
        if protocol.state is not State.OPEN:
            raise ConnectionRefusedError(f"WebSocket handshake failed: {protocol.handshake_exc}")

    async def _irc_register(self) -> None:
        """Register as an IRC client that wants echo-message; return at the
        end of the MOTD (376, or 422 without one)."""
        assert self.writer is not None
        name = self.spec.name
        self.writer.write(
            b"CAP LS 302\r\nCAP REQ :echo-message\r\n"
            + f"NICK {name}\r\nUSER {name} 0 * :{name}\r\nCAP END\r\n".encode()
        )
        echo = False
        while True:
            msg = await self._irc_line("registering")
            if msg.command == "CAP" and len(msg.params) >= 3 and msg.params[1] == "ACK":
                echo = echo or "echo-message" in msg.params[2].split()
            elif msg.command == "CAP" and len(msg.params) >= 2 and msg.params[1] == "NAK":
                refused = " ".join(msg.params)
                raise ConnectionRefusedError(f"IRC: echo-message refused: CAP {refused}")
            elif msg.command in ("376", "422"):
                break
        if not echo:
            raise ConnectionRefusedError("IRC: registered without echo-message acknowledged")

    async def _irc_join(self) -> None:
        """Join the room's channel; return at the end of NAMES (366)."""
        assert self.writer is not None
        self.writer.write(f"JOIN #{self.spec.room}\r\n".encode())
        while (await self._irc_line("joining")).command != "366":
            pass

    async def _irc_line(self, doing: str) -> IrcMessage:
        """The next IRC message (before the read loop runs); a server PING is
        answered, an ERROR or an error numeric (400-599) raises."""
        assert self.reader is not None
        assert self.writer is not None
        while True:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise ConnectionResetError(f"IRC: closed while {doing}: {raw!r}")
            text = raw.decode(errors="replace").rstrip("\r\n")
            try:
                msg = parse_message(text)
            except BadMessage:
                raise ConnectionRefusedError(
                    f"IRC: not an IRC line while {doing}: {raw!r}"
                ) from None
            if msg.command == "PING":
                self.writer.write(b"PONG " + raw.partition(b"PING ")[2])
                continue
            code = int(msg.command) if msg.command.isdigit() else 0
            if msg.command == "ERROR" or (400 <= code < 600 and code != 422):
                raise ConnectionRefusedError(f"IRC: refused while {doing}: {text}")
            return msg

    def line(self, text: str | bytes) -> bytes:
        """One command line as sent on this transport: a line, or a frame."""
        data = text.encode() if isinstance(text, str) else text
        if self._irc:
            return data + b"\r\n"
        if self._ws is None:
            return data + b"\n"
        self._ws.send_text(data)
        return b"".join(self._ws.data_to_send())

    async def roundtrip(self, token: str, before: bytes = b"") -> None:
        """Send, then a ping; wait for its answer (all earlier output is in)."""
        assert self.writer is not None
        if self._irc:
            # The token is the PONG's last parameter, written with or
            # without the ``:`` of a trailing one.
            self._awaited = tuple(f"PONG chatd {c}{token}\r\n".encode() for c in ("", ":"))
            ping = self.line(f"PING :{token}")
        elif self.kind == "chatd":
            self._awaited = (f'"token":"{token}"'.encode(),)
            ping = self.line(f"/ping {token}")
        else:
            self._awaited = (f"${len(token)}\r\n{token}\r\n".encode(),)
            ping = f"PING {token}\r\n".encode()
        self._found.clear()
        self.writer.write(before + ping)
        await self.writer.drain()
        await self._found.wait()

    async def _read_loop(self) -> None:
        assert self.reader is not None
        marker, tag = self._marker, self._tag
        keep = 256
        # Over IRC the read loop starts at a line's start (registration read
        # whole lines): a PING is a line after a line feed.
        tail = b"\n" if self._irc else b""
        stamps = b""
        while data := await self.reader.read(1 << 18):
            now = time.monotonic()
            buf = tail + data
            start = max(0, len(tail) - len(marker) + 1)
            self.messages += buf.count(marker, start)
            if self.spec.talks:
                mine = buf.count(tag, max(0, len(tail) - len(tag) + 1))
                if mine:
                    self.mine += mine
                    self.progress.set()
            if self.sampling:
                stamps = self._take_stamps(stamps + data, now)
            if self._awaited is not None and any(a in buf for a in self._awaited):
                self._awaited = None
                self._found.set()
            if self._irc and b"PING " in buf:
                self._irc_pong(buf, len(tail))
            tail = buf[-keep:]

    def _irc_pong(self, buf: bytes, seen: int) -> None:
        """Answer each server PING whose line ends past ``seen`` (not answered
        with the previous chunk)."""
        assert self.writer is not None
        for m in _IRC_PING_RE.finditer(buf):
            if m.end() > seen:
                self.writer.write(b"PONG " + m.group(1) + b"\r\n")

    def _take_stamps(self, buf: bytes, now: float) -> bytes:
        """Record the latency of each stamp in ``buf``; return the unparsed rest."""
        last = 0
        for m in _STAMP_RE.finditer(buf):
            self.latencies.append(now - int(m.group(1)) / 1e6)
            last = m.end()
        return buf[last:] if last else buf[-256:]

    def message(self, stamp: float, size: int) -> bytes:
        """One payload of about ``size`` bytes: tag, scheduled time, padding."""
        head = f"{self.spec.name}~{int(stamp * 1e6)}~"
        body = "~" + head + "x" * max(0, size - len(head) - 1)
        if self._irc:
            return self.line(f"PRIVMSG #{self.spec.room} :{body}")
        if self.kind == "chatd":
            return self.line(body)
        return f"PUBLISH {self.spec.room} {body}\r\n".encode()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        if self.writer is not None:
            self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()


class Sender:
    """A talker's way out: one ``send()`` per message, as a real client writes.

    It sends on its own socket object (a duplicate of the connection's file
    descriptor, or a publish connection of its own), never through the event
    loop's transport, which would merge the writes of one loop pass into one
    system call. Only what the kernel does not take at once waits for the
    socket to be writable, and that is counted (``deferred``).
    """

    def __init__(self, sock: socket.socket, drain_replies: bool = False) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self.sends = 0
        self.deferred = 0
        self._task = self._loop.create_task(self._drain()) if drain_replies else None

    @classmethod
    def beside(cls, writer: asyncio.StreamWriter) -> Sender:
        """Send on the connection that ``writer`` reads from and pings on."""
        fd = writer.get_extra_info("socket").fileno()
        return cls(socket.socket(fileno=os.dup(fd)))

    @classmethod
    async def connect(cls, host: str, port: int) -> Sender:
        """A connection of its own, whose replies are read and dropped."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return cls(sock, drain_replies=True)

    async def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while await self._loop.sock_recv(self._sock, 1 << 16):
                pass

    async def send(self, data: bytes) -> None:
        self.sends += 1
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.deferred += 1
            await self._loop.sock_sendall(self._sock, data[sent:])

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._sock.close()


class Worker:
    """The clients of one worker process and the phases they go through."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.kind: str = job["kind"]
        self.clients = [
            BenchClient(ClientSpec(*spec), self.kind, job["transport"]) for spec in job["clients"]
        ]

    async def connect_all(self, parallel: int | None) -> tuple[int, int]:
        """Connect every client; return (ready, failed)."""
        limiter = asyncio.Semaphore(parallel or len(self.clients) or 1)
        host, ports = self.job["host"], self.job["ports"]
        told = False

        async def one(client: BenchClient) -> bool:
            nonlocal told
            async with limiter:
                try:
                    async with asyncio.timeout(60):
                        await client.connect(host, ports[client.spec.node])
                except (OSError, TimeoutError) as exc:
                    if not told:  # the first reason, once per worker
                        told = True
                        sys.stderr.write(f"chatd bench: {client.spec.name}: {exc!r}\n")
                    return False
                return True

        results = await asyncio.gather(*(one(c) for c in self.clients))
        return sum(results), len(results) - sum(results)

    async def sync(self, token: str) -> None:
        await asyncio.gather(*(c.roundtrip(token) for c in self.clients if c.writer))

    async def closed_loop(self, start: float, duration: float) -> dict[str, Any]:
        """Talkers keep a window of messages unconfirmed by their own echo."""
        window, size = self.job["window"], self.job["payload"]
        deadline = start + duration
        talkers = [c for c in self.clients if c.spec.talks]

        async def talk(client: BenchClient) -> None:
            assert client.sender is not None
            send = client.sender.send
            line = client.message(0.0, size)
            while time.monotonic() < deadline:
                if client.sent - client.mine < window:
                    await send(line)
                    client.sent += 1
                else:
                    client.progress.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            await client.progress.wait()

        return await self._measure(start, duration, [talk(c) for c in talkers], wait_echoes=True)

    async def open_loop(self, start: float, duration: float, rate: float) -> dict[str, Any]:
        """Every talker sends at ``rate`` per second on a fixed schedule."""
        size = self.job["payload"]
        deadline = start + duration

        async def talk(client: BenchClient, offset: float) -> None:
            assert client.sender is not None
            send = client.sender.send
            interval = 1.0 / rate
            k = 0
            while (due := start + offset + k * interval) < deadline:
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                # Late (the generator was busy): each overdue message still
                # goes in a send() of its own, stamped with when it was due.
                while (due := start + offset + k * interval) <= now and due < deadline:
                    await send(client.message(due, size))
                    client.sent += 1
                    k += 1

        talkers = [c for c in self.clients if c.spec.talks]
        # Spread the talkers over one interval so they do not all fire at once.
        spread = [(i / max(len(talkers), 1)) / rate for i in range(len(talkers))]
        coros = [talk(c, off) for c, off in zip(talkers, spread, strict=True)]
        return await self._measure(start, duration, coros, wait_echoes=False)

    async def _measure(
        self, start: float, duration: float, coros: list[Any], *, wait_echoes: bool
    ) -> dict[str, Any]:
        # Sampling starts before the start: the first messages may beat our wake-up.
        for client in self.clients:
            client.sampling = client.spec.samples
        # No cyclic collection in the generator while it measures: its pause
        # would read as the server's latency (bounded: one phase).
        gc.collect()
        gc.disable()
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0 = time.process_time()
        base = sum(c.messages for c in self.clients)
        tasks = [asyncio.create_task(c) for c in coros]
        await asyncio.sleep(max(0.0, start + duration - time.monotonic()))
        in_window = sum(c.messages for c in self.clients) - base
        cpu = time.process_time() - cpu0
        try:
            await asyncio.gather(*tasks)
        finally:
            gc.enable()
        if wait_echoes:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    for client in self.clients:
                        while client.spec.talks and client.mine < client.sent:
                            client.progress.clear()
                            await client.progress.wait()
        sent: dict[str, int] = defaultdict(int)
        for client in self.clients:
            sent[client.spec.room] += client.sent
        senders = [c.sender for c in self.clients if c.sender is not None]
        return {
            "received_in_window": in_window,
            "sent": dict(sent),
            "cpu": cpu,
            "sends": sum(s.sends for s in senders),
            "deferred": sum(s.deferred for s in senders),
        }

    def counts(self) -> dict[str, Any]:
        latencies = [x for c in self.clients for x in c.latencies]
        return {
            "received": sum(c.messages - c.base for c in self.clients),
            "latencies": latencies,
        }

    def close(self) -> None:
        for client in self.clients:
            client.close()


async def _worker(pipe: multiprocessing.connection.Connection, job: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    recv: Callable[[], Any] = pipe.recv
    worker = Worker(job)
    try:
        while True:
            what, arg = await loop.run_in_executor(None, recv)
            if what == "hello":
                pipe.send(("hello", None))
            elif what == "connect":
                t0 = time.monotonic()
                ready, failed = await worker.connect_all(arg)
                pipe.send(("connected", (ready, failed, time.monotonic() - t0)))
            elif what == "sync":
                await worker.sync("sync")
                for client in worker.clients:
                    client.base = client.messages
                pipe.send(("synced", None))
            elif what == "closed":
                pipe.send(("done", await worker.closed_loop(*arg)))
            elif what == "open":
                pipe.send(("done", await worker.open_loop(*arg)))
            elif what == "final":
                await worker.sync("final")
                pipe.send(("counted", worker.counts()))
            elif what == "stop":
                break
    finally:
        worker.close()


def _worker_main(pipe: multiprocessing.connection.Connection, job: dict[str, Any]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker(pipe, job))
    else:
        uvloop.run(_worker(pipe, job))


# ---------------------------------------------------------------------------
# Main side


class Workers:
    """Worker processes sharing out the clients, driven in lock step."""

    def __init__(self, target: Target, specs: Sequence[ClientSpec], procs: int, **job: Any):
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        ports = target.ports
        # Each talker is spread like the listeners: talkers and listeners are
        # on every node.
        specs = [replace(s, node=i % len(ports)) for i, s in enumerate(specs)]
        for n in range(procs):
            mine, theirs = ctx.Pipe()
            share = [tuple(vars(s).values()) for s in specs[n::procs]]
            spec = {
                "kind": target.kind,
                "host": target.host,
                "port": target.port,
                "ports": ports,
                "transport": target.transport,
            }
            proc = ctx.Process(
                target=_worker_main, args=(theirs, {**spec, "clients": share, **job}), daemon=True
            )
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def ask(self, what: str, arg: Any = None, *, answer: str, timeout: float = 300) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((what, arg))
        results = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise SystemExit(f"chatd bench: a worker did not answer {what!r} in time")
            got, value = pipe.recv()
            if got != answer:
                raise SystemExit(f"chatd bench: worker said {got!r} to {what!r}")
            results.append(value)
        return results

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
    target: Target, specs: Sequence[ClientSpec], procs: int, parallel: int | None = 200, **job: Any
) -> Iterator[Workers]:
    """Workers with every client connected, ready and synced."""
    group = Workers(target, specs, procs, **job)
    try:
        results = group.ask("connect", parallel, answer="connected")
        failed = sum(r[1] for r in results)
        if failed:
            raise SystemExit(f"chatd bench: {failed} of {len(specs)} clients failed to connect")
        group.ask("sync", answer="synced")
        yield group
    finally:
        group.close()


@dataclass
class Result:
    scenario: str
    server: str
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "server": self.server,
            **self.figures,
            "notes": self.notes,
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _run_phase(
    target: Target, group: Workers, what: str, duration: float, *extra: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None]:
    start = time.monotonic() + 0.5
    for pipe in group.pipes:
        pipe.send((what, (start, duration, *extra)))
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = target.cpu()
    time.sleep(duration)
    cpu1 = target.cpu()
    reports = []
    for pipe in group.pipes:
        if not pipe.poll(duration + 120):
            raise SystemExit("chatd bench: a worker did not finish its phase")
        got, value = pipe.recv()
        if got != "done":
            raise SystemExit(f"chatd bench: worker said {got!r}")
        reports.append(value)
    counts = group.ask("final", answer="counted")
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return reports, counts, cpu


def _loss(
    reports: list[dict[str, Any]], counts: list[dict[str, Any]], members: dict[str, int]
) -> tuple[int, int]:
    sent: dict[str, int] = defaultdict(int)
    for report in reports:
        for room, n in report["sent"].items():
            sent[room] += n
    expected = sum(n * members[room] for room, n in sent.items())
    return sum(sent.values()), expected - sum(c["received"] for c in counts)


def _cpu_figures(
    result: Result,
    cpu: float | None,
    duration: float,
    deliveries: int,
    reports: list[dict[str, Any]],
    procs: int,
) -> None:
    f = result.figures
    # Every message went out in a send() of its own; these many waited for
    # the kernel to take their rest (a full socket buffer).
    f["talker_sends"] = sum(r["sends"] for r in reports)
    f["talker_sends_deferred"] = sum(r["deferred"] for r in reports)
    gen_cpu = sum(r["cpu"] for r in reports)
    f["generator_cpu_util"] = round(gen_cpu / duration, 2)
    if cpu is None:
        return
    f["server_cpu_util"] = round(cpu / duration, 2)
    f["server_cpu_us_per_delivery"] = round(cpu / max(deliveries, 1) * 1e6, 3)
    cores = os.cpu_count() or 1
    util = cpu / duration
    if util < 0.85 and gen_cpu / duration > 0.85 * min(procs, max(cores - util, 0.5)):
        result.notes.append(
            f"the server used {util:.0%} of a core while the generator used "
            f"{gen_cpu / duration:.0%}: the generator, not the server, may be the limit"
        )


def run_fanout(target: Target, opts: argparse.Namespace) -> Result:
    specs = [ClientSpec(f"l{n}", "fanout") for n in range(opts.listeners)]
    specs += [ClientSpec(f"t{n}", "fanout", talks=True) for n in range(opts.talkers)]
    members = {"fanout": len(specs)}
    with workers(target, specs, opts.procs, window=opts.window, payload=opts.payload) as group:
        reports, counts, cpu = _run_phase(target, group, "closed", opts.duration)
    in_window = sum(r["received_in_window"] for r in reports)
    sent, loss = _loss(reports, counts, members)
    result = Result("fanout", target.label)
    result.figures.update(
        members=len(specs),
        window=opts.window,
        payload=opts.payload,
        duration_s=opts.duration,
        deliveries_per_s=round(in_window / opts.duration),
        messages_sent=sent,
        loss=loss,
    )
    _cpu_figures(result, cpu, opts.duration, in_window, reports, opts.procs)
    return result


def _open_loop_scenario(
    target: Target,
    opts: argparse.Namespace,
    name: str,
    specs: list[ClientSpec],
    rate_total: float,
    extra: dict[str, Any],
) -> Result:
    members: dict[str, int] = defaultdict(int)
    for spec in specs:
        members[spec.room] += 1
    talkers = sum(s.talks for s in specs)
    with workers(target, specs, opts.procs, window=0, payload=opts.payload) as group:
        reports, counts, cpu = _run_phase(
            target, group, "open", opts.duration, rate_total / talkers
        )
    in_window = sum(r["received_in_window"] for r in reports)
    sent, loss = _loss(reports, counts, members)
    latencies = sorted(x for c in counts for x in c["latencies"])
    result = Result(name, target.label)
    result.figures.update(extra)
    result.figures.update(
        rate=rate_total,
        duration_s=opts.duration,
        messages_sent=sent,
        loss=loss,
        samples=len(latencies),
        p50_ms=round(_percentile(latencies, 0.5) * 1e3, 3),
        p99_ms=round(_percentile(latencies, 0.99) * 1e3, 3),
        p999_ms=round(_percentile(latencies, 0.999) * 1e3, 3),
        max_ms=round(latencies[-1] * 1e3, 3) if latencies else None,
    )
    _cpu_figures(result, cpu, opts.duration, in_window, reports, opts.procs)
    return result


def run_latency(target: Target, opts: argparse.Namespace, rate: float) -> Result:
    specs = []
    for r in range(opts.latency_rooms):
        room = f"lat{r}"
        # Five listeners per room parse stamps; the rest only count.
        specs += [
            ClientSpec(f"l{r}x{n}", room, samples=n < 5) for n in range(opts.latency_listeners)
        ]
        specs += [ClientSpec(f"t{r}x{n}", room, talks=True) for n in range(2)]
    extra = {"rooms": opts.latency_rooms, "listeners_per_room": opts.latency_listeners}
    return _open_loop_scenario(target, opts, "latency", specs, rate, extra)


def run_rooms(target: Target, opts: argparse.Namespace) -> Result:
    specs = [
        ClientSpec(f"t{r}x{n}", f"r{r}", talks=True, samples=True)
        for r in range(opts.rooms_count)
        for n in range(5)
    ]
    extra = {"rooms": opts.rooms_count, "members_per_room": 5}
    return _open_loop_scenario(target, opts, "rooms", specs, opts.rooms_rate, extra)


def run_idle(target: Target, opts: argparse.Namespace, count: int) -> Result:
    rss0 = target.rss_kib()
    specs = [ClientSpec(f"i{n}", f"room{n % opts.idle_rooms}") for n in range(count)]
    with workers(target, specs, opts.procs, window=0, payload=0):
        rss1 = target.rss_kib()
    result = Result("idle", target.label)
    result.figures.update(connections=count, rooms=opts.idle_rooms)
    if rss0 is not None and rss1 is not None:
        result.figures.update(
            server_rss_before_kib=rss0,
            server_rss_kib=rss1,
            rss_per_connection_kib=round((rss1 - rss0) / count, 2),
        )
    return result


def run_storm(target: Target, opts: argparse.Namespace) -> Result:
    specs = [ClientSpec(f"s{n}", f"storm{n % 100}") for n in range(opts.storm)]
    group = Workers(target, specs, opts.procs, window=0, payload=0)
    try:
        group.ask("hello", answer="hello")  # started and imported: not part of the storm
        t0 = time.monotonic()
        results = group.ask("connect", None, answer="connected")
        elapsed = time.monotonic() - t0
    finally:
        group.close()
    ready = sum(r[0] for r in results)
    result = Result("storm", target.label)
    result.figures.update(
        connections=opts.storm,
        ready=ready,
        failed=sum(r[1] for r in results),
        seconds=round(elapsed, 3),
        connections_per_s=round(ready / elapsed),
    )
    return result


def run_all(
    start: Callable[[], Target],
    opts: argparse.Namespace,
    scenarios: list[str],
    seeded: Callable[[str], Target] | None = None,
) -> list[Result]:
    """Every scenario (and every rate, every count) on a server of its own.

    A fresh server per measurement keeps one from inheriting another's
    memory (the idle figures) or leftover connections. ``seeded`` starts a
    daemon on a copy of a given database (search), None if the bench does
    not start the daemon.
    """
    jobs: list[tuple[Callable[..., Result], tuple[Any, ...], Callable[[], Target]]] = []
    for name in scenarios:
        if name == "fanout":
            jobs.append((run_fanout, (), start))
        elif name == "latency":
            jobs += [(run_latency, (rate,), start) for rate in opts.rates]
        elif name == "rooms":
            jobs.append((run_rooms, (), start))
        elif name == "idle":
            jobs += [(run_idle, (count,), start) for count in opts.idle]
        elif name == "storm":
            jobs.append((run_storm, (), start))
        elif name == "history":
            jobs.append((run_history, (), start))
        elif name == "login":
            jobs.append((run_login, (), start))
        elif name == "search":
            if seeded is None:
                jobs.append((run_search, (None,), start))
            else:
                # Built (or found) before any daemon runs.
                database = search_database(opts)
                jobs.append((run_search, (database,), functools.partial(seeded, database.path)))
    results = []
    for job, args, begin in jobs:
        target = begin()
        try:
            result = job(target, opts, *args)
        finally:
            target.stop()
        if target.store:
            result.figures["store"] = target.store
        results.append(result)
    return results


# ---------------------------------------------------------------------------
# chatd only: history reads and password guessing


async def _open_json(target: Target, *hello: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 22)
    writer.write(("/format json\n" + "".join(f"{h}\n" for h in hello)).encode())
    return reader, writer


async def _read_until(reader: asyncio.StreamReader, needle: bytes) -> bytes:
    data = b""
    while needle not in data:
        chunk = await reader.read(1 << 20)
        if not chunk:
            raise ConnectionError(f"closed before {needle!r}")
        data += chunk
    return data


def run_history(target: Target, opts: argparse.Namespace) -> Result:
    """``/history ROOM 1000`` on a room of ``--history-messages`` stored messages."""
    import sqlite3

    result = Result("history", target.kind)
    if not target.db:
        result.notes.append("needs a spawned daemon on a database file (not --db :memory:)")
        return result
    room, count = "histbench", opts.history_messages
    t0 = time.monotonic()
    with contextlib.closing(sqlite3.connect(target.db, timeout=30)) as conn:
        first = 10**12  # far above the daemon's own ids
        now = time.time()
        for start in range(0, count, 100_000):
            rows = [
                (first + i, now, room, room, f"u{i % 50}", None, f"message {i} " + "x" * 60, 0)
                for i in range(start, min(count, start + 100_000))
            ]
            conn.executemany(
                "INSERT INTO messages (id, ts, conv, room, sender, target, text, action)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.commit()
    fill_s = time.monotonic() - t0

    async def measure() -> list[float]:
        reader, writer = await _open_json(target, "/nick reader", f"/join {room}", "/ping ready")
        await _read_until(reader, b'"token":"ready"')
        times = []
        for n in range(opts.history_rounds):
            # A different page each time, so no answer is the cached one before.
            before = first + count - n * 1000
            t = time.perf_counter()
            writer.write(f"/history {room} 1000 before={before}\n".encode())
            data = await _read_until(reader, b'"type":"history"')
            times.append(time.perf_counter() - t)
            assert data.count(b'"history":true') == 1000, "a short page"
        writer.close()
        return times

    times = sorted(asyncio.run(measure()))
    result.figures.update(
        messages_in_room=count,
        fill_s=round(fill_s, 1),
        rounds=len(times),
        history_1000_p50_ms=round(_percentile(times, 0.5) * 1000, 2),
        history_1000_max_ms=round(times[-1] * 1000, 2),
    )
    return result


def run_login(target: Target, opts: argparse.Namespace) -> Result:
    """Wrong passwords from one address, as fast as answers allow."""
    result = Result("login", target.kind)
    password = "the-right-password"

    async def measure() -> dict[str, int]:
        reader, writer = await _open_json(target, "/nick victim", f"/register {password}")
        await _read_until(reader, b'"account":true')
        writer.close()
        counts = {"bad_login": 0, "login_throttled": 0}
        deadline = time.monotonic() + opts.duration

        async def guesser(n: int) -> None:
            reader, writer = await _open_json(target)
            guess = 0
            while time.monotonic() < deadline:
                guess += 1
                writer.write(f"/login victim guess-{n}-{guess:06d}\n".encode())
                data = await _read_until(reader, b'"type":"error"')
                for code in counts:
                    if code.encode() in data:
                        counts[code] += 1
            writer.close()

        await asyncio.gather(*(guesser(n) for n in range(opts.login_clients)))
        return counts

    counts = asyncio.run(measure())
    result.figures.update(
        clients=opts.login_clients,
        seconds=opts.duration,
        passwords_checked=counts["bad_login"],
        refused_throttled=counts["login_throttled"],
        wrong_guesses_per_s=round(counts["bad_login"] / opts.duration, 2),
    )
    return result


# ---------------------------------------------------------------------------
# chatd only: /search through a database of stored messages

#: Change it when what the database holds (words, mix) or the queries
#: change: a database cached by another version is then built again.
SEARCH_GENERATOR = 1
SEARCH_ROOMS = 50
#: Share of the messages that are private, and of those the share that the
#: searching account sent or received (the only private ones it may search).
SEARCH_PRIVATE = 0.05
SEARCH_OWN_PRIVATE = 0.3
SEARCH_SENDERS = 500
SEARCH_NICK = "searcher"
_SEARCH_PASSWORD = "search-bench-password"
#: The first stored message's time (2026-01-01 UTC); one every 30 s after it.
_SEARCH_EPOCH = 1_767_225_600.0
_SEARCH_GAP = 30.0
#: The most frequent words of the messages, most frequent first. Eight of
#: them begin with "wor" (the prefix query). The rest of the vocabulary is
#: made-up words of two to four syllables, none of them with a "w".
_SEARCH_HEAD_WORDS = """
the i to you a and it is that in of for on we this be have not just so but
with can do are at what if was get all like my me no up about work one out
there now they time know think will good how go need yes ok yeah thanks lol
here when still should from some see then would did going back today make new
right maybe build test working let look want sure got fix also more only use
people why because any could well way day really try said deploy world thing
code other first much meeting tomorrow word review please last worth branch
issue done again after before morning worry release server error check push
merge later lunch coffee week team bug change worse call help update question
idea problem night weekend anyone everyone nice great worked ticket docs
config staging prod log cache client database query index page
"""
_SEARCH_HEAD = tuple(_SEARCH_HEAD_WORDS.split())
#: Stock phrases, one added to about 2% of the messages.
_SEARCH_PHRASES = (
    "see you tomorrow",
    "ship it",
    "good morning",
    "merge conflict",
    "on call today",
    "sounds good",
    "any update",
    "lunch break",
)
_SEARCH_PHRASE_SHARE = 0.02
_SEARCH_TAIL = 30_000


def search_vocabulary() -> list[str]:
    """Every word the generated messages use, the most frequent first; the
    word of rank r is used in proportion to 1/r (Zipf's law)."""
    rng = random.Random(7)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    head = set(_SEARCH_HEAD)
    tail: set[str] = set()
    while len(tail) < _SEARCH_TAIL:
        word = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 3, 3, 4))))
        if word not in head:
            tail.add(word)
    made = sorted(tail)  # a set's order changes from run to run; the ranks must not
    rng.shuffle(made)
    return [*_SEARCH_HEAD, *made]


@dataclass(frozen=True)
class SearchProbe:
    """One /search the bench times."""

    name: str
    #: TEXT as typed after /search.
    text: str
    #: The same in FTS5's syntax, to count the matches when the database is built.
    match: str
    #: Only this room (``/search #ROOM TEXT``) or this private conversation
    #: (``/search @NICK TEXT``).
    room: str | None = None
    peer: str | None = None
    limit: int = 20
    #: Walks back page by page, each with the ``before=`` the last one gave,
    #: starting halfway back in the history.
    paged: bool = False

    def command(self, before: int | None) -> str:
        where = f"#{self.room} " if self.room else f"@{self.peer} " if self.peer else ""
        page = f" before={before}" if before is not None else ""
        return f"/search {where}{self.text}{page} {self.limit}"


def search_probes(vocabulary: Sequence[str]) -> list[SearchProbe]:
    """The searches timed: a rare word (about 40 matches in a million
    messages), the most common one, a prefix, a phrase, a word in one room,
    the most common word in one small private conversation (about 30
    messages in a million), pages deep in the history, and a word that is in
    no message."""
    rare = vocabulary[20_000]
    return [
        SearchProbe("rare", rare, f'"{rare}"', limit=100),
        SearchProbe("common", "the", '"the"'),
        SearchProbe("prefix", "wor*", '"wor" *'),
        SearchProbe("phrase", '"see you tomorrow"', '"see you tomorrow"'),
        SearchProbe("room", "deploy", '"deploy"', room="room7"),
        SearchProbe("private", "the", '"the"', peer="user3"),
        SearchProbe("paged", "the", '"the"', paged=True),
        SearchProbe("nothing", "xylophone", '"xylophone"'),
    ]


SEARCH_PROBE_NAMES = ("rare", "common", "prefix", "phrase", "room", "private", "paged", "nothing")


@dataclass(frozen=True)
class SearchDatabase:
    """A database built for the search scenario, and what it holds."""

    path: str
    #: Written when it was built: messages, build times, size, matches per probe.
    facts: dict[str, Any]
    #: Built by this run (not found in the cache).
    built: bool


def _search_paged_start(messages: int) -> int:
    return messages // 2 + 1


def build_search_database(path: str, messages: int, index: str) -> dict[str, Any]:
    """Write ``messages`` stored messages to a new database at ``path``, the
    schema made by chatd's own migrations, and return what it holds.

    ``index="rebuild"`` stores the rows at the schema version before the
    full-text index, then migrates: the index is built in one pass over the
    table, as when a daemon upgrades a database. ``index="trigger"`` migrates
    first, so the trigger indexes each row as it is stored, as the daemon
    does with every message.
    """
    import sqlite3

    import argon2

    from chatd.store import MIGRATIONS, dm_key, migrate

    t0 = time.monotonic()
    vocabulary = search_vocabulary()
    weights = list(itertools.accumulate(1 / rank for rank in range(1, len(vocabulary) + 1)))
    senders = [f"user{n}" for n in range(SEARCH_SENDERS)]
    rooms = [f"room{n}" for n in range(SEARCH_ROOMS)]
    rng = random.Random(1)
    conn = sqlite3.connect(path, isolation_level=None)
    with contextlib.closing(conn):
        # A scratch file until it is complete: nothing to keep after a crash.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        if index == "trigger":
            migrate(conn)
        else:
            fts = next(
                (n for n, m in enumerate(MIGRATIONS) if any("messages_fts" in s for s in m)), None
            )
            if fts is None:
                raise SystemExit("chatd bench: this schema has no messages_fts index to search")
            for number in range(fts):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
        hasher = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
        account = conn.execute(
            "INSERT INTO accounts (key, nick, password_hash, created) VALUES (?, ?, ?, ?)",
            (SEARCH_NICK, SEARCH_NICK, hasher.hash(_SEARCH_PASSWORD), _SEARCH_EPOCH),
        ).lastrowid
        private = own = 0
        conn.execute("BEGIN")
        for start in range(0, messages, 50_000):
            count = min(messages, start + 50_000) - start
            lengths = [rng.randint(3, 15) for _ in range(count)]
            words = rng.choices(vocabulary, cum_weights=weights, k=sum(lengths))
            rows: list[tuple[Any, ...]] = []
            at = 0
            for length in lengths:
                text = " ".join(words[at : at + length])
                at += length
                if rng.random() < _SEARCH_PHRASE_SHARE:
                    text += " " + rng.choice(_SEARCH_PHRASES)
                id_ = start + len(rows) + 1
                room: str | None = None
                sender_account = target_account = None
                if rng.random() < SEARCH_PRIVATE:
                    private += 1
                    if rng.random() < SEARCH_OWN_PRIVATE:
                        own += 1
                        sender, target = SEARCH_NICK, rng.choice(senders)
                        sender_account = account
                        if rng.random() < 0.5:
                            sender, target = target, sender
                            sender_account, target_account = None, account
                    else:
                        sender, target = rng.sample(senders, 2)
                    conv = dm_key(sender, target)
                else:
                    room = conv = rooms[rng.randrange(SEARCH_ROOMS)]
                    sender, target = rng.choice(senders), None
                action = int(rng.random() < 0.02)
                ts = _SEARCH_EPOCH + id_ * _SEARCH_GAP
                rows.append(
                    (
                        id_,
                        ts,
                        conv,
                        room,
                        sender,
                        target,
                        text,
                        action,
                        sender_account,
                        target_account,
                    )
                )
            conn.executemany(
                "INSERT INTO messages (id, ts, conv, room, sender, target, text, action,"
                " sender_account, target_account) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        conn.execute("COMMIT")
        filled = time.monotonic()
        migrate(conn)
        indexed = time.monotonic()
        conn.execute("PRAGMA journal_mode = WAL")
        matches: dict[str, int] = {}
        args: list[Any]
        for probe in search_probes(vocabulary):
            mine = "? IN (m.sender_account, m.target_account)"
            if probe.room is not None:
                scope, args = "m.conv = ?", [probe.room]
            elif probe.peer is not None:
                scope, args = f"m.conv = ? AND {mine}", [dm_key(SEARCH_NICK, probe.peer), account]
            else:  # the searcher is in every room
                scope, args = f"(m.room IS NOT NULL OR {mine})", [account]
            before = _search_paged_start(messages) if probe.paged else 2**63 - 1
            (matches[probe.name],) = conn.execute(
                "SELECT count(*) FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid"
                f" WHERE messages_fts MATCH ? AND messages_fts.rowid < ? AND {scope}",
                [probe.match, before, *args],
            ).fetchone()
    return {
        "messages": messages,
        "rooms": SEARCH_ROOMS,
        "private": private,
        "searcher_private": own,
        "vocabulary": len(vocabulary),
        "index": index,
        "fill_s": round(filled - t0, 1),
        "index_s": round(indexed - filled, 1),
        "build_s": round(indexed - t0, 1),
        "count_s": round(time.monotonic() - indexed, 1),
        "db_bytes": os.path.getsize(path),
        "matches": matches,
    }


def search_database(opts: argparse.Namespace) -> SearchDatabase:
    """The database of ``--search-messages`` messages: from the cache
    (``--search-cache``), or built there now. Its name holds the message
    count, how it was indexed, the schema (version and a digest of its
    migrations) and SEARCH_GENERATOR; databases of another schema or
    generator are removed when a new one is built."""
    from chatd.store import MIGRATIONS, SCHEMA_VERSION

    digest = hashlib.sha256(repr(MIGRATIONS).encode()).hexdigest()[:10]
    version = f"search-v{SCHEMA_VERSION}-{digest}-g{SEARCH_GENERATOR}-"
    name = f"{version}{opts.search_index}-{opts.search_messages}"
    cache = opts.search_cache or os.path.join(tempfile.gettempdir(), "chatd-bench-search")
    os.makedirs(cache, exist_ok=True)
    path, about = os.path.join(cache, name + ".db"), os.path.join(cache, name + ".json")
    if os.path.exists(path):
        with contextlib.suppress(FileNotFoundError, ValueError), open(about) as f:
            facts = json.load(f)
            if set(facts.get("matches", ())) >= set(SEARCH_PROBE_NAMES):
                return SearchDatabase(path, facts, built=False)
    for old in os.listdir(cache):
        if old.startswith("search-v") and not old.startswith(version):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(cache, old))
    sys.stderr.write(
        f"chatd bench: building {opts.search_messages:,} messages to search in {path}"
        " (kept for the next runs)\n"
    )
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        facts = build_search_database(partial, opts.search_messages, opts.search_index)
        with open(about + ".tmp", "w") as f:
            json.dump(facts, f)
        for stale in (path + "-wal", path + "-shm"):  # of a database replaced
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        os.replace(partial, path)
        os.replace(about + ".tmp", about)
    finally:
        for leftover in (partial, partial + "-wal", partial + "-shm", about + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return SearchDatabase(path, facts, built=True)


async def _search_answer(reader: asyncio.StreamReader) -> tuple[dict[str, Any], int]:
    """The ``search`` summary of one /search and the number of results
    before it; an error raises."""
    found = 0
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError("the daemon closed the connection during a search")
        if line.startswith(b'{"type":"search"'):
            summary: dict[str, Any] = json.loads(line)
            return summary, found
        if line.startswith(b'{"type":"error"'):
            raise RuntimeError(f"chatd bench: /search refused: {line.decode().strip()}")
        found += b'"search":true' in line


async def _ready(reader: asyncio.StreamReader, token: str) -> None:
    """Read up to the pong of ``/ping token``; an error before it raises."""
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError("the daemon closed the connection while logging in")
        if line.startswith(b'{"type":"error"'):
            raise RuntimeError(f"chatd bench: refused while logging in: {line.decode().strip()}")
        if f'"token":"{token}"'.encode() in line:
            return


def _spawn_seeded(opts: argparse.Namespace, seed: str) -> Target:
    """A daemon on a copy of ``seed`` (search), where the searching account
    may bring every room it joins into use."""
    return spawn_chatd(opts.loop, opts.db, extra=["--max-owned-rooms", "100000"], seed=seed)


def run_search(target: Target, opts: argparse.Namespace, database: SearchDatabase | None) -> Result:
    """/search on a database of ``--search-messages`` messages, end to end.

    One client logs in to the account whose private messages the database
    holds and joins every room, then sends each probe ``--search-rounds``
    times (the probes in turn), one at a time, timing each from its line to
    the ``search`` summary that ends the answer."""
    result = Result("search", target.kind)
    if database is None or not target.db:
        result.notes.append("needs a daemon the bench spawns on the database it builds")
        return result
    facts = database.facts
    probes = search_probes(search_vocabulary())
    start = _search_paged_start(facts["messages"])

    async def measure() -> dict[str, list[tuple[float, dict[str, Any], int]]]:
        rooms = [f"/join room{n}" for n in range(facts["rooms"])]
        hello = (f"/login {SEARCH_NICK} {_SEARCH_PASSWORD}", *rooms, "/ping ready")
        reader, writer = await _open_json(target, *hello)
        await asyncio.wait_for(_ready(reader, "ready"), 60)
        answers: dict[str, list[tuple[float, dict[str, Any], int]]] = defaultdict(list)
        before = start
        for _ in range(opts.search_rounds):
            for probe in probes:
                line = probe.command(before if probe.paged else None) + "\n"
                t = time.perf_counter()
                writer.write(line.encode())
                summary, found = await asyncio.wait_for(_search_answer(reader), 60)
                answers[probe.name].append((time.perf_counter() - t, summary, found))
                if found != summary["count"]:
                    raise RuntimeError(f"{found} results, but the summary says {summary}")
                if probe.paged:
                    before = summary["before"] if summary["more"] else start
        writer.close()
        return answers

    answers = asyncio.run(measure())
    result.figures.update(
        messages=facts["messages"],
        rooms=facts["rooms"],
        private_messages=facts["private"],
        searcher_private=facts["searcher_private"],
        db_mib=round(facts["db_bytes"] / 2**20, 1),
        index=facts["index"],
        fill_s=facts["fill_s"],
        index_s=facts["index_s"],
        build_s=facts["build_s"],
        count_s=facts["count_s"],
        build="new" if database.built else "cached",
        daemon_start_s=target.start_s,
        rounds=opts.search_rounds,
    )
    for probe in probes:
        times = sorted(t for t, _, _ in answers[probe.name])
        first = answers[probe.name][0][1]
        result.figures.update(
            {
                f"{probe.name}_command": probe.command(start if probe.paged else None),
                f"{probe.name}_p50_ms": round(_percentile(times, 0.5) * 1e3, 2),
                f"{probe.name}_p95_ms": round(_percentile(times, 0.95) * 1e3, 2),
                f"{probe.name}_max_ms": round(times[-1] * 1e3, 2),
                f"{probe.name}_count": first["count"],
                f"{probe.name}_cut": sum(bool(s.get("cut")) for _, s, _ in answers[probe.name]),
                f"{probe.name}_matches": facts["matches"][probe.name],
            }
        )
    return result


def _search_table(result: Result) -> str:
    f = result.figures
    rows = [
        f"== search ({result.server}, {f.get('store', 'sqlite')})",
        f"  {f['messages']:,} messages in {f['rooms']} rooms and private conversations"
        f" ({f['private_messages']:,} private, {f['searcher_private']:,} of them the searcher's);"
        f" database {f['db_mib']} MiB",
        f"  built in {f['build_s']} s (rows {f['fill_s']} s, index {f['index_s']} s by"
        f" {f['index']}; matches counted in {f['count_s']} s; {f['build']});"
        f" daemon up in {f['daemon_start_s']} s; {f['rounds']} rounds",
        f"  {'query':<8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'results':>7}"
        f" {'cut':>4} {'matching':>9}  command",
    ]
    for name in SEARCH_PROBE_NAMES:
        if f"{name}_p50_ms" not in f:
            continue
        rows.append(
            f"  {name:<8} {f[f'{name}_p50_ms']:>8} {f[f'{name}_p95_ms']:>8}"
            f" {f[f'{name}_max_ms']:>8} {f[f'{name}_count']:>7} {f[f'{name}_cut']:>4}"
            f" {f[f'{name}_matches']:>9}  {f[f'{name}_command']}"
        )
    rows += [f"  note: {n}" for n in result.notes]
    return "\n".join(rows)


# ---------------------------------------------------------------------------
# Command line


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        default=",".join(SCENARIOS),
        help="comma-separated scenarios: "
        + ", ".join(SCENARIOS + EXTRA_SCENARIOS)
        + f" (default: all but {', '.join(EXTRA_SCENARIOS[:-1])} and {EXTRA_SCENARIOS[-1]})",
    )
    parser.add_argument(
        "--baseline",
        choices=("redis",),
        help="also run the same workloads against a fresh redis-server (SUBSCRIBE/PUBLISH)",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat everything; report medians")
    parser.add_argument("--host", help="benchmark a chatd already running here (no spawn)")
    parser.add_argument("--port", type=int, default=9999, help="its port (default: %(default)s)")
    parser.add_argument("--pid", type=int, help="its process id, for CPU and memory from /proc")
    parser.add_argument(
        "--db",
        default=None,
        help="database of the spawned daemon: a file (emptied first) or :memory: "
        "(default: SQLite, as chatd serve's default, on a new file removed afterwards)",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the spawned daemon (default: %(default)s)",
    )
    parser.add_argument(
        "--transport",
        choices=("tcp", "ws", "irc"),
        default="tcp",
        help="how chatd's clients connect: TCP lines, WebSockets to the web port, or IRC "
        "(registered with echo-message) to the IRC port; with --host, --port is then that "
        f"port; history, login and search are TCP only; --payload is at most {IRC_MAX_PAYLOAD} "
        "over IRC",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        default=1,
        metavar="N",
        help="spawn a redis-server and N daemons in cluster mode, clients spread over "
        "them in turn (TCP only; not with --host)",
    )
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument("--payload", type=int, default=128, help="message bytes")
    g = parser.add_argument_group("fanout")
    g.add_argument("--listeners", type=int, default=100, help="listening clients")
    g.add_argument("--talkers", type=int, default=10, help="talking clients")
    g.add_argument("--window", type=int, default=32, help="messages in flight per talker")
    g = parser.add_argument_group("latency")
    g.add_argument("--rates", type=_floats, default=[500.0, 1000.0, 2000.0], help="total msg/s")
    g.add_argument("--latency-rooms", type=int, default=10, help="rooms")
    g.add_argument("--latency-listeners", type=int, default=50, help="listeners per room")
    g = parser.add_argument_group("rooms")
    g.add_argument("--rooms-count", type=int, default=1000, help="rooms of 5 talkers")
    g.add_argument("--rooms-rate", type=float, default=2000.0, help="total msg/s")
    g = parser.add_argument_group("idle and storm")
    g.add_argument("--idle", type=_ints, default=[5000, 10000], help="connection counts")
    g.add_argument("--idle-rooms", type=int, default=1000, help="rooms to spread over")
    g.add_argument("--storm", type=int, default=2000, help="connections opened at once")
    g = parser.add_argument_group("history and login (chatd only; run when named)")
    g.add_argument(
        "--history-messages",
        type=int,
        default=1_000_000,
        help="messages stored in the room before /history 1000 is timed (needs a database file)",
    )
    g.add_argument("--history-rounds", type=int, default=20, help="/history requests timed")
    g.add_argument(
        "--login-clients", type=int, default=20, help="connections guessing passwords at once"
    )
    g = parser.add_argument_group("search (chatd only, SQLite; run when named)")
    g.add_argument(
        "--search-messages",
        type=int,
        default=1_000_000,
        help="messages in the database searched (default: %(default)s)",
    )
    g.add_argument("--search-rounds", type=int, default=20, help="times each search is timed")
    g.add_argument(
        "--search-cache",
        metavar="DIR",
        help="where built databases are kept for the next runs "
        "(default: chatd-bench-search in the temporary directory)",
    )
    g.add_argument(
        "--search-index",
        choices=("rebuild", "trigger"),
        default="rebuild",
        help="build the full-text index in one pass after the rows (as an upgrade does), "
        "or row by row through its trigger (as the daemon stores messages); "
        "default: %(default)s",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small, fast run that checks everything works"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON lines")


def _quick(opts: argparse.Namespace) -> None:
    opts.listeners, opts.talkers, opts.duration = 10, 2, 1.0
    opts.rates, opts.latency_rooms, opts.latency_listeners = [200.0], 2, 6
    opts.rooms_count, opts.rooms_rate = 20, 200.0
    opts.idle, opts.idle_rooms, opts.storm = [50], 10, 50
    opts.history_messages, opts.history_rounds, opts.login_clients = 3000, 2, 2
    opts.search_messages, opts.search_rounds = 2000, 2


def _median_results(runs: list[list[Result]]) -> list[Result]:
    """Merge repeated runs: numeric figures become medians (with min and max)."""
    merged = []
    for group in zip(*runs, strict=True):
        first = group[0]
        out = Result(first.scenario, first.server, notes=[n for r in group for n in r.notes])
        for key, value in first.figures.items():
            values = [r.figures.get(key) for r in group]
            if len(group) > 1 and all(isinstance(v, int | float) for v in values):
                nums = [v for v in values if v is not None]
                median = statistics.median(nums)
                # Counts stay integers; an even number of runs may give a half.
                if isinstance(median, float) and not median.is_integer():
                    median = round(median, 3)
                elif all(isinstance(v, int) for v in nums):
                    median = int(median)
                out.figures[key] = median
                out.figures[f"{key}_range"] = [min(nums), max(nums)]
            else:
                out.figures[key] = value
        merged.append(out)
    return merged


def main(opts: argparse.Namespace) -> int:
    if opts.quick:
        _quick(opts)
    scenarios = [s.strip() for s in opts.scenario.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS) - set(EXTRA_SCENARIOS)
    if unknown:
        raise SystemExit(f"chatd bench: unknown scenario(s): {', '.join(sorted(unknown))}")
    if opts.cluster > 1 and (opts.transport != "tcp" or opts.host):
        raise SystemExit("chatd bench: --cluster spawns its daemons and runs over TCP")
    if opts.transport != "tcp" and set(scenarios) & set(EXTRA_SCENARIOS):
        raise SystemExit(
            "chatd bench: history, login and search run over TCP only "
            f"(drop --transport {opts.transport})"
        )
    if "search" in scenarios and (opts.cluster > 1 or opts.db == ":memory:"):
        raise SystemExit(
            "chatd bench: search measures one daemon on a SQLite database "
            "(drop --cluster and --db :memory:)"
        )
    if "search" in scenarios and (opts.search_messages < 1 or opts.search_rounds < 1):
        raise SystemExit("chatd bench: --search-messages and --search-rounds must be at least 1")
    if opts.transport == "irc" and opts.payload > IRC_MAX_PAYLOAD:
        raise SystemExit(
            f"chatd bench: an IRC line is at most 512 bytes: --payload at most "
            f"{IRC_MAX_PAYLOAD} with --transport irc"
        )
    chatd_runs: list[list[Result]] = []
    redis_runs: list[list[Result]] = []
    for _ in range(opts.runs):
        # chatd and Redis alternate within each run, so both see the same machine.
        for kind, runs in (("chatd", chatd_runs), ("redis", redis_runs)):
            if kind == "redis" and opts.baseline != "redis":
                continue
            wanted = [s for s in scenarios if kind == "chatd" or s in SCENARIOS]
            start: Callable[[], Target]
            if kind == "redis":
                start = spawn_redis
            elif opts.host:
                start = lambda: Target(  # noqa: E731
                    "chatd", opts.host, opts.port, opts.pid, transport=opts.transport
                )
            elif opts.cluster > 1:
                start = lambda: spawn_cluster(opts.loop, opts.cluster)  # noqa: E731
            else:
                start = lambda: spawn_chatd(opts.loop, opts.db, opts.transport)  # noqa: E731
            seeded: Callable[[str], Target] | None = None
            if kind == "chatd" and not opts.host:
                seeded = functools.partial(_spawn_seeded, opts)
            runs.append(run_all(start, opts, wanted, seeded))
    results = _median_results(chatd_runs)
    if redis_runs:
        baseline = _median_results(redis_runs)
        shared = [r for r in results if r.scenario in SCENARIOS]
        _add_ratios(shared, baseline)
        extra = [r for r in results if r.scenario not in SCENARIOS]
        results = [r for pair in zip(shared, baseline, strict=True) for r in pair] + extra
    for result in results:
        if not opts.json:
            print(_table(result))
        print(json.dumps(result.row()))
    return 0


#: Figures compared with Redis, and whether higher is better.
_RATIOS = {
    "deliveries_per_s": True,
    "server_cpu_us_per_delivery": False,
    "p50_ms": False,
    "p99_ms": False,
    "p999_ms": False,
    "rss_per_connection_kib": False,
    "connections_per_s": True,
}


def _add_ratios(results: list[Result], baseline: list[Result]) -> None:
    for ours, theirs in zip(results, baseline, strict=True):
        for key in _RATIOS:
            a, b = ours.figures.get(key), theirs.figures.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and b:
                ours.figures[f"{key}_vs_redis"] = round(a / b, 2)


def _table(result: Result) -> str:
    if result.scenario == "search" and "rare_p50_ms" in result.figures:
        return _search_table(result)
    width = max((len(k) for k in result.figures), default=0)
    rows = [f"== {result.scenario} ({result.server})"]
    rows += [f"  {k:<{width}}  {v}" for k, v in result.figures.items()]
    rows += [f"  note: {n}" for n in result.notes]
    return "\n".join(rows)
