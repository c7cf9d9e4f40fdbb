"""Every limit and setting of the daemon, in one frozen object.

:class:`Settings` is built once (from flags and environment, in
:mod:`chatd.cli`) and handed down; nothing else defines a limit. Each field
is documented in ``docs/PROTOCOL.md`` under "Limits".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9999

    #: Longest accepted line in bytes, not counting its terminator.
    max_line: int = 4096
    #: Outbound queue bounds per client; a client over either is disconnected.
    max_queue_bytes: int = 1 << 20
    max_queue_events: int = 10_000
    #: Sustained lines per second and burst per session; 0 turns flood control off.
    msg_rate: float = 10.0
    msg_burst: int = 40
    #: Lines a throttled session may have waiting before it is cut for flooding.
    flood_lines: int = 200
    max_clients: int = 10_000
    max_per_ip: int = 100
    max_rooms_per_session: int = 100
    #: Seconds a new connection has to choose a nickname.
    register_timeout: float = 60.0
    #: TCP keepalive: idle seconds before the first probe, probe interval, probe count.
    keepalive_idle: int = 60
    keepalive_interval: int = 10
    keepalive_count: int = 6
    backlog: int = 4096
    #: Seconds a write may stay blocked (the client reads nothing) before the
    #: client is disconnected.
    write_timeout: float = 60.0
    #: Seconds a graceful shutdown waits for queued output to reach clients.
    shutdown_grace: float = 5.0
    #: SO_SNDBUF for client sockets, 0 for the kernel's default (tests clamp it).
    sndbuf: int = 0

    def __post_init__(self) -> None:
        positive = (
            "max_line",
            "max_queue_bytes",
            "max_queue_events",
            "flood_lines",
            "max_clients",
            "max_per_ip",
            "max_rooms_per_session",
            "backlog",
            "keepalive_idle",
            "keepalive_interval",
            "keepalive_count",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.msg_rate < 0 or self.msg_burst < 1:
            raise ValueError("msg_rate must be >= 0 and msg_burst >= 1")
        if self.register_timeout <= 0 or self.write_timeout <= 0 or self.shutdown_grace < 0:
            raise ValueError("register_timeout and write_timeout must be > 0, shutdown_grace >= 0")
