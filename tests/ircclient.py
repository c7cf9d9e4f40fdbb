"""A small scripted IRC client for tests: real sockets, parsed lines, deadlines.

It parses what it reads with its own few lines of code (not chatd's), so a
test sees the bytes as any IRC client would. Every read has a deadline: a
line that never comes is a failure that lists what came instead.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from tests.helpers import DEADLINE


@dataclasses.dataclass(frozen=True)
class Line:
    """One line from the server, split into its parts."""

    raw: str
    verb: str
    params: tuple[str, ...] = ()
    source: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def nick(self) -> str:
        """The nickname of the source (``bob`` of ``bob!~bob@chatd/guest``)."""
        return (self.source or "").partition("!")[0]

    @property
    def text(self) -> str:
        """The last parameter (the trailing text of most lines)."""
        return self.params[-1] if self.params else ""

    def __str__(self) -> str:
        return self.raw


_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append(_TAG_ESCAPES.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


def parse(raw: str) -> Line:
    """``[@tags ][:source ]VERB params... [:trailing]`` into a :class:`Line`."""
    rest = raw
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        head, _, rest = rest.partition(" ")
        for item in head[1:].split(";"):
            key, _, value = item.partition("=")
            tags[key] = _unescape(value)
    source = None
    if rest.startswith(":"):
        head, _, rest = rest.partition(" ")
        source = head[1:]
    trailing: str | None = None
    if rest.startswith(":"):
        rest, trailing = "", rest[1:]
    elif " :" in rest:
        rest, _, trailing = rest.partition(" :")
    words = rest.split()
    params = words[1:] + ([trailing] if trailing is not None else [])
    return Line(raw, words[0].upper() if words else "", tuple(params), source, tags)


Predicate = Callable[[Line], bool]


class IrcClient:
    """An IRC connection to a chatd gateway, driven line by line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.nick = ""
        #: Every line read so far, in order (for failure messages).
        self.seen: list[Line] = []
        self._pings = 0

    @classmethod
    async def open(
        cls, port: int, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> IrcClient:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=tls,
                server_hostname="localhost" if tls is not None else None,
                limit=1 << 20,
            )
        return cls(reader, writer)

    # -- output -------------------------------------------------------------

    async def send(self, *lines: str | bytes) -> None:
        """Send each line with CR LF (a line that has its own ending keeps it)."""
        for line in lines:
            data = line if isinstance(line, bytes) else line.encode()
            self.writer.write(data if data.endswith(b"\n") else data + b"\r\n")
        await self.writer.drain()

    # -- input --------------------------------------------------------------

    async def line(self, timeout: float = DEADLINE) -> Line:
        """The next line; AssertionError at the end of the connection."""
        async with asyncio.timeout(timeout):
            raw = await self.reader.readline()
        if not raw:
            raise AssertionError(f"connection closed; last lines: {self._tail()}")
        assert raw.endswith(b"\r\n"), f"an IRC line must end in CR LF: {raw!r}"
        body = raw.partition(b" ")[2] if raw.startswith(b"@") else raw
        assert len(body) <= 512, f"over 512 bytes without its tags: {raw!r}"
        line = parse(raw[:-2].decode())  # the server's lines are UTF-8: strict
        self.seen.append(line)
        return line

    async def expect(
        self,
        verb: str,
        pred: Predicate | None = None,
        what: str = "",
        timeout: float = DEADLINE,
    ) -> Line:
        """Read until a line with ``verb`` (a command or a numeric) matches
        ``pred``; fail with the lines that came instead."""
        skipped: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.line()
                    if line.verb == verb.upper() and (pred is None or pred(line)):
                        return line
                    skipped.append(line.raw)
        except TimeoutError:
            raise AssertionError(
                f"{self.nick or 'client'}: no {verb} {what} within {timeout} s; saw {skipped}"
            ) from None

    async def lines_until(
        self, verb: str, pred: Predicate | None = None, timeout: float = DEADLINE
    ) -> list[Line]:
        """Every line up to and including the first that matches."""
        start = len(self.seen)
        await self.expect(verb, pred, timeout=timeout)
        return self.seen[start:]

    async def sync(self, token: str | None = None) -> list[Line]:
        """``PING token``: every line before its PONG (the PONG comes after
        every reply to what was sent before it)."""
        if token is None:
            self._pings += 1
            token = f"sync{self._pings}"
        await self.send(f"PING {token}")
        lines = await self.lines_until("PONG", lambda m: m.text == token)
        return lines[:-1]

    async def wait_closed(self, timeout: float = DEADLINE) -> list[Line]:
        """Read until the server closes: the lines that came before the end."""
        start = len(self.seen)
        buffer = b""
        closed = True
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    buffer += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            closed = False
        for raw in buffer.split(b"\r\n")[:-1]:
            self.seen.append(parse(raw.decode(errors="replace")))
        if not closed:
            raise AssertionError(f"still open after {timeout} s; last: {self._tail()}")
        return self.seen[start:]

    def _tail(self) -> list[str]:
        return [line.raw for line in self.seen[-15:]]

    # -- registration ---------------------------------------------------------

    async def register(
        self,
        nick: str,
        *,
        caps: Sequence[str] = (),
        sasl: tuple[str, str] | None = None,
        password: str | None = None,
        user: str = "u",
    ) -> list[Line]:
        """Register as ``nick``: with ``caps`` (and ``sasl``) by CAP LS 302,
        REQ and END; with ``password`` by PASS. Returns the lines up to the
        end of the MOTD (376)."""
        start = len(self.seen)
        wanted = [*caps, *(["sasl"] if sasl is not None and "sasl" not in caps else [])]
        if wanted:
            await self.send("CAP LS 302")
        if password is not None:
            await self.send(f"PASS :{password}")
        await self.send(f"NICK {nick}", f"USER {user} 0 * :Real {nick}")
        if wanted:
            await self.expect("CAP", lambda m: m.params[1] == "LS")
            await self.send(f"CAP REQ :{' '.join(wanted)}")
            ack = await self.expect("CAP", lambda m: m.params[1] in ("ACK", "NAK"))
            assert ack.params[1] == "ACK", ack
            if sasl is not None:
                done = await self.authenticate(*sasl)
                assert done.verb == "903", f"SASL refused: {done}"
            await self.send("CAP END")
        welcome = await self.expect("001", what="(welcome)")
        self.nick = welcome.params[0]
        await self.expect("376", what="(end of MOTD)")
        return self.seen[start:]

    async def authenticate(self, account: str, password: str) -> Line:
        """SASL PLAIN; returns 903 (or the 904 that refused it)."""
        await self.send("AUTHENTICATE PLAIN")
        await self.expect("AUTHENTICATE", lambda m: m.params == ("+",))
        await self.send("AUTHENTICATE " + sasl_plain(account, password))
        return await self.expect_any(("903", "904"))

    async def expect_any(self, verbs: Iterable[str], timeout: float = DEADLINE) -> Line:
        """The first line with one of ``verbs``."""
        wanted = {v.upper() for v in verbs}
        skipped: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while (line := await self.line()).verb not in wanted:
                    skipped.append(line.raw)
                return line
        except TimeoutError:
            raise AssertionError(f"no line of {sorted(wanted)}; saw {skipped}") from None

    # -- the connection -------------------------------------------------------

    def stop_reading(self) -> None:
        """Behave like a client that never reads: the kernel buffers fill up."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        cast(asyncio.ReadTransport, self.writer.transport).pause_reading()

    def close(self) -> None:
        self.writer.transport.abort()


def sasl_plain(account: str, password: str) -> str:
    """The AUTHENTICATE payload of SASL PLAIN (no authorisation identity)."""
    return base64.b64encode(f"\0{account}\0{password}".encode()).decode()
