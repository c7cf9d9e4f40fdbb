"""Flood control: token buckets on a connection's input, in loop time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatd.config import Settings


class TokenBucket:
    """Flood control: ``rate`` tokens a second, at most ``burst`` saved up.

    Pure: the caller passes the clock reading.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, n: float = 1.0, *, uncapped: bool = False) -> float:
        """Take ``n`` tokens; return 0, or the seconds until they are really there.

        ``uncapped`` refills for the whole time since the last take, beyond
        the burst: for input that piled up while the reader was not reading.
        """
        refill = (now - self.stamp) * self.rate
        if uncapped:
            self.tokens = min(float(self.burst), self.tokens) + refill - n
        else:
            self.tokens = min(float(self.burst), self.tokens + refill) - n
        self.stamp = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def charge(self, n: float) -> None:
        """Take ``n`` more tokens for what was just done (a costly command)."""
        self.tokens -= n


@dataclass(slots=True)
class InputLimits:
    """Flood control for one session: three buckets, all in loop time.

    * ``lines``: commands run at most ``msg_rate`` a second (burst
      ``msg_burst``); excess lines wait, nothing is dropped;
    * ``arrivals``: lines arriving faster than ``flood_factor`` x ``msg_rate``
      beyond a burst of ``flood_lines`` are a flood, and the client is cut;
    * ``volume``: input bytes, whatever they are (telnet negotiation, parts of
      over-long lines), at ``msg_rate`` x ``max_line`` a second; past it the
      session stops reading for a while, so no client costs much CPU.
    """

    lines: TokenBucket
    arrivals: TokenBucket
    volume: TokenBucket
    #: The session stopped reading for a while (pushback): what it reads next
    #: piled up in the kernel meanwhile and is judged by the time it took.
    pushed_back: bool = False

    @classmethod
    def of(cls, s: Settings, now: float) -> InputLimits:
        return cls(
            TokenBucket(s.msg_rate, s.msg_burst, now),
            TokenBucket(s.msg_rate * s.flood_factor, s.flood_lines, now),
            TokenBucket(s.msg_rate * s.max_line, s.msg_burst * s.max_line, now),
        )

    def bytes_wait(self, now: float) -> float:
        """Seconds until the byte budget is positive again."""
        return self.volume.take(now, 0.0)
