"""The daemon's Prometheus exposition (``/metrics``).

prometheus-client turns the plain numbers of :class:`~chatd.core.stats.Stats` into
the text format when ``/metrics`` is read, through a collector
(:class:`ChatdCollector`) registered in a registry of the server's own, so
several servers in one process (the tests) never share counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from chatd.core.stats import Stats
from chatd.daemon.garbage import POLICY

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True, slots=True)
class Gauges:
    """Readings taken at scrape time."""

    clients: Callable[[], Counter[str]]
    rooms: Callable[[], int]
    store_backlog: Callable[[], int]
    nicknames: Callable[[], int]
    tasks: Callable[[], int]


class ChatdCollector(Collector):
    def __init__(self, stats: Stats, gauges: Gauges) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        s, g = self._stats, self._gauges
        clients = GaugeMetricFamily(
            "chatd_clients", "Connected clients, by transport", labels=["transport"]
        )
        counts = g.clients()
        for transport in ("tcp", "tls", "ws", "irc", "ircs"):
            clients.add_metric([transport], counts.get(transport, 0))
        yield clients
        yield GaugeMetricFamily("chatd_rooms", "Rooms that exist now", value=g.rooms())
        yield GaugeMetricFamily(
            "chatd_nicknames", "Nicknames held by connected users", value=g.nicknames()
        )
        yield GaugeMetricFamily("chatd_tasks", "asyncio tasks alive in the daemon", value=g.tasks())
        yield GaugeMetricFamily(
            "chatd_store_backlog", "Writes waiting for the store", value=g.store_backlog()
        )
        accepted = CounterMetricFamily(
            "chatd_connections", "Connections accepted, by transport", labels=["transport"]
        )
        for transport in ("tcp", "tls", "ws", "irc", "ircs"):
            accepted.add_metric([transport], s.connections.get(transport, 0))
        yield accepted
        refused = CounterMetricFamily(
            "chatd_connections_refused", "Connections refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(s.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield _moderation(s)
        yield CounterMetricFamily(
            "chatd_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            value=s.tls_handshake_failures,
        )
        yield CounterMetricFamily(
            "chatd_messages_received", "Chat messages accepted and stored", value=s.messages_in
        )
        yield CounterMetricFamily(
            "chatd_messages_delivered",
            "Chat message copies queued to recipients",
            value=s.messages_out,
        )
        yield CounterMetricFamily("chatd_bytes_sent", "Bytes written to clients", value=s.bytes_out)
        yield CounterMetricFamily(
            "chatd_slow_consumer_disconnects",
            "Clients cut for reading too slowly",
            value=s.slow_consumers,
        )
        limited = CounterMetricFamily(
            "chatd_rate_limited", "Flood control hits, by action", labels=["action"]
        )
        limited.add_metric(["delayed"], s.rate_delayed)
        limited.add_metric(["disconnected"], s.rate_disconnects)
        yield limited
        for name, doc, hist in (
            (
                "chatd_fanout_latency_seconds",
                "From a message's arrival to its queueing for every recipient",
                s.fanout_latency,
            ),
            (
                "chatd_store_write_latency_seconds",
                "From a message's arrival to its commit in the store",
                s.store_latency,
            ),
        ):
            yield HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.total)
        pauses = HistogramMetricFamily(
            "chatd_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (see --gc)",
            labels=["generation"],
        )
        for generation, hist in enumerate(POLICY.pauses):
            pauses.add_metric([str(generation)], hist.cumulative(), hist.total)
        yield pauses
        yield GaugeMetricFamily(
            "chatd_gc_frozen_objects",
            "Objects the collector no longer scans (gc.freeze; 0 with --gc default)",
            value=POLICY.frozen,
        )


def registry(stats: Stats, gauges: Gauges) -> CollectorRegistry:
    """A registry holding the daemon's metrics and its process's (memory, CPU, fds)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ChatdCollector(stats, gauges))
    ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(reg)


def _moderation(s: Stats) -> CounterMetricFamily:
    """Moderation actions by kind; kick, ban and kline are always there."""
    moderation = CounterMetricFamily(
        "chatd_moderation_actions",
        "Moderation actions taken here, by kind (kick, ban, unban, mute, mode, role, "
        "invite, kill, kline)",
        labels=["action"],
    )
    for action in ("kick", "ban", "kline"):  # always shown, even at zero
        moderation.add_metric([action], s.moderation.get(action, 0))
    for action, n in sorted(s.moderation.items()):
        if action not in ("kick", "ban", "kline"):
            moderation.add_metric([action], n)
    return moderation
