"""What the daemon counts: plain numbers, cheap to bump on hot paths.

A delivery or a flush adds to an integer on the one :class:`Stats` object of
its server: no locks, no label lookups. :mod:`chatd.daemon.metrics` turns them into
Prometheus text when ``/metrics`` is read.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Upper bounds in seconds, from well under a millisecond to a second.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    """Counts of observations per bucket, as Prometheus histograms have them."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


@dataclass(slots=True)
class Stats:
    """Running totals since start; read by the collector, written anywhere."""

    #: Chat messages (room lines, actions, DMs) accepted and stored.
    messages_in: int = 0
    #: Copies of those messages queued to recipients (the sender's echo too).
    messages_out: int = 0
    bytes_out: int = 0
    #: Clients cut because they read too slowly (queue overflow, write timeout).
    slow_consumers: int = 0
    #: Lines that waited for flood control, and clients cut for flooding.
    rate_delayed: int = 0
    rate_disconnects: int = 0
    connections: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    tls_handshake_failures: int = 0
    #: Moderation actions by kind (kick, ban, unban, mute, mode, role, kill, kline ...).
    moderation: Counter[str] = field(default_factory=Counter)
    #: Seconds from a message's arrival to its store commit, and to the end
    #: of its fan-out (queued for every recipient).
    store_latency: Histogram = field(default_factory=Histogram)
    fanout_latency: Histogram = field(default_factory=Histogram)
