"""Bytes to lines: the first step of every connection's input, before parsing.

:class:`LineFramer` turns a byte stream into lines. It strips telnet
negotiation, accepts ``\\n`` and ``\\r\\n``, and never buffers more than
``max_line`` bytes: an over-long line is reported once, as soon as it goes
over, and the rest of it is discarded up to the next newline, so its tail is
never taken for a command. (``asyncio.StreamReader.readline`` does the
opposite: over its limit it hands back the tail as a fresh line.)

:func:`foreign_protocol` spots a TLS or HTTP client on the plain port from its
first bytes. :class:`Format` is how a session wants its events back; it lives
here, at the bottom of the package, because commands and events both use it.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from chatd.errors import LineTooLong, WrongProtocol


class Format(enum.IntEnum):
    """How a session wants its events: the value indexes per-format caches."""

    TEXT = 0
    JSON = 1


_IAC: Final = 0xFF
_SB: Final = 250
_SE: Final = 240
_WILL_WONT_DO_DONT: Final = frozenset({251, 252, 253, 254})

# Telnet parser states.
_T_DATA, _T_IAC, _T_OPTION, _T_SUB, _T_SUB_IAC = range(5)


class LineFramer:
    """Split a byte stream into lines of at most ``max_line`` bytes.

    :meth:`feed` returns, in order, the complete lines found so far (without
    their terminator) and a :class:`~chatd.errors.LineTooLong` for each line
    that went over the limit. Memory held between calls is at most
    ``max_line + 1`` bytes, whatever the peer sends.
    """

    __slots__ = ("_buf", "_discarding", "_strips_telnet", "_telnet", "_unterminated", "max_line")

    def __init__(self, max_line: int, *, telnet: bool = True, unterminated: bool = True) -> None:
        """``telnet=False``: the peer is no telnet client (IRC), so a 0xFF
        byte is data, not the start of a negotiation. ``unterminated=False``:
        a line is only a line with its newline (IRC), so what is left at the
        end of input is dropped."""
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        self._strips_telnet = telnet
        self._unterminated = unterminated
        self._telnet = _T_DATA

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held until its newline arrives."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        if self._strips_telnet and (self._telnet != _T_DATA or b"\xff" in data):
            data = self._strip_telnet(data)
        out: list[bytes | LineTooLong] = []
        buf = self._buf
        limit = self.max_line
        start = 0
        find = data.find
        while (nl := find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            else:
                if buf:
                    buf += data[start:nl]
                    line = bytes(buf)
                    buf.clear()
                else:
                    line = data[start:nl]
                if line.endswith(b"\r"):
                    line = line[:-1]
                out.append(line if len(line) <= limit else _too_long(limit))
            start = nl + 1
        if start < len(data) and not self._discarding:
            # Keep one byte more than the limit: it may be the \r of \r\n.
            if len(buf) + len(data) - start > limit + 1:
                buf.clear()
                self._discarding = True
                out.append(_too_long(limit))
            else:
                buf += data[start:]
        return out

    def finish(self) -> list[bytes | LineTooLong]:
        """End of input: a last line without its newline still counts."""
        line = bytes(self._buf)
        self._buf.clear()
        if self._discarding or not line or not self._unterminated:
            self._discarding = False
            return []
        return [line[:-1] if line.endswith(b"\r") else line]

    def _strip_telnet(self, data: bytes) -> bytes:
        """Remove telnet commands (IAC sequences), keeping state across calls.

        0xFF never occurs in UTF-8, so a client that is not telnet loses
        nothing by this.
        """
        out = bytearray()
        state = self._telnet
        for byte in data:
            if state == _T_DATA:
                if byte == _IAC:
                    state = _T_IAC
                else:
                    out.append(byte)
            elif state == _T_IAC:
                if byte in _WILL_WONT_DO_DONT:
                    state = _T_OPTION
                elif byte == _SB:
                    state = _T_SUB
                else:  # a two-byte command, or IAC IAC (a literal 0xFF): dropped
                    state = _T_DATA
            elif state == _T_OPTION:
                state = _T_DATA
            elif state == _T_SUB:
                if byte == _IAC:
                    state = _T_SUB_IAC
            else:  # _T_SUB_IAC
                state = _T_DATA if byte == _SE else _T_SUB
        self._telnet = state
        return bytes(out)


def _too_long(limit: int) -> LineTooLong:
    return LineTooLong(f"line longer than {limit} bytes; discarded")


_HTTP_REQUEST = re.compile(rb"[A-Z]{3,7} \S+ HTTP/\d")


def foreign_protocol(first: bytes) -> WrongProtocol | None:
    """The error for a connection whose first bytes are TLS or HTTP, else None.

    Both would otherwise sit in the line framer until the registration
    timeout: a TLS ClientHello has no newline, and an HTTP client waits for
    an answer that is not coming.
    """
    if first[:1] == b"\x16" and first[1:2] == b"\x03":  # a TLS handshake record
        return WrongProtocol("this port speaks plain text, not TLS: use the TLS port")
    if _HTTP_REQUEST.match(first):
        return WrongProtocol("this port speaks chat lines, not HTTP: use the web port")
    return None
