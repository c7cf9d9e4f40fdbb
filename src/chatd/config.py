"""Every limit and setting of the daemon, in one frozen object.

:class:`Settings` is built once (from flags and environment, in
:mod:`chatd.cli`) and handed down; nothing else defines a limit. Each field
is documented in ``docs/PROTOCOL.md`` under "Limits".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: No nickname or room name is ever longer, whatever the settings say.
NAME_CEILING = 64


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9999

    #: Longest accepted line in bytes, not counting its terminator.
    max_line: int = 4096
    #: Outbound queue bounds per client; a client over either is disconnected.
    max_queue_bytes: int = 1 << 20
    max_queue_events: int = 10_000
    #: The soft limit: a client whose unsent output stays above
    #: queue_soft_bytes for queue_soft_seconds is disconnected. Above it, the
    #: client's own commands also wait for its output to drain. 0: a quarter
    #: of max_queue_bytes (see soft_queue_bytes).
    queue_soft_bytes: int = 0
    queue_soft_seconds: float = 10.0
    #: Sustained lines per second and burst per session; 0 turns flood control off.
    msg_rate: float = 10.0
    msg_burst: int = 40
    #: Lines read ahead while a session is throttled; past them the daemon
    #: stops reading (TCP pushes back). Also the burst of the arrival limit.
    flood_lines: int = 200
    #: Lines arriving faster than flood_factor x msg_rate, beyond a burst of
    #: flood_lines, are a flood: rate_limited and a disconnect.
    flood_factor: float = 4.0
    max_clients: int = 10_000
    max_per_ip: int = 100
    #: New connections per second from one address, sustained, and the burst
    #: allowed before that rate applies; a conn_rate of 0 turns the limit off.
    conn_rate: float = 10.0
    conn_burst: int = 50
    max_rooms_per_session: int = 100
    #: Members of one room; general is exempt (everyone is in it; max_clients bounds it).
    max_room_members: int = 1000
    #: Longest nickname and room name, in characters (at most NAME_CEILING).
    max_nick_len: int = 32
    max_room_len: int = 32
    #: Rooms on the whole server (general included).
    max_total_rooms: int = 10_000
    #: Rooms with more members do not announce joins and leaves to everyone.
    announce_limit: int = 100
    #: Seconds a new connection has to choose a nickname.
    register_timeout: float = 60.0
    #: Input a connection may send before it has a nickname: lines and bytes.
    register_lines: int = 30
    register_bytes: int = 8192
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
    #: Shortest interval a client may ask for with "/ping every SECONDS".
    ping_min_interval: float = 5.0
    #: The database file; ":memory:" keeps nothing (see chatd.store).
    db: str = ":memory:"
    #: SQLite's synchronous mode: "normal" survives a crash of the daemon,
    #: "full" also a crash of the machine (an fsync per group commit).
    db_sync: str = "normal"
    #: Cluster mode: the Redis server that joins several daemons into one chat
    #: (see chatd.cluster); None runs one daemon on its own store.
    redis: str | None = None
    #: This daemon's name in the cluster (None: HOSTNAME-PID).
    node_id: str | None = None
    #: Seconds after a node's last heartbeat before its users are dropped.
    node_ttl: float = 10.0
    #: Messages kept per conversation in Redis (trimmed approximately).
    redis_history: int = 10_000
    #: Messages a member is shown when joining a room.
    history_on_join: int = 20
    #: Password hashing cost: "standard" (argon2id, 19 MiB, 2 passes) or
    #: "test" (the cheapest argon2id, for test suites only).
    password_cost: str = "standard"
    #: Seconds before a wrong password is answered.
    login_fail_delay: float = 1.0
    #: SO_SNDBUF for client sockets, 0 for the kernel's default (tests clamp it).
    sndbuf: int = 0
    #: TLS: certificate and key files (PEM). With both, a TLS listener runs
    #: on tls_port (and the web port speaks HTTPS); tls_only drops the plain one.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_port: int = 9998
    tls_only: bool = False
    #: Seconds a TLS handshake (or a WebSocket's HTTP handshake) may take.
    tls_handshake_timeout: float = 10.0
    #: The web page, /ws, /healthz and /metrics; None: no web listener.
    http_port: int | None = None
    #: Origins (scheme://host[:port]) whose pages may open a WebSocket, besides
    #: the server's own; "*" allows any.
    origins: tuple[str, ...] = ()
    #: WebSocket keepalive: a ping every interval; no pong within timeout ends it.
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty (use 0.0.0.0 for every interface)")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        for name in (
            "msg_rate",
            "flood_factor",
            "register_timeout",
            "write_timeout",
            "shutdown_grace",
            "login_fail_delay",
            "tls_handshake_timeout",
            "ws_ping_interval",
            "ws_ping_timeout",
            "node_ttl",
            "conn_rate",
            "queue_soft_seconds",
            "ping_min_interval",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        positive = (
            "max_line",
            "max_queue_bytes",
            "max_queue_events",
            "flood_lines",
            "max_clients",
            "max_per_ip",
            "max_rooms_per_session",
            "max_total_rooms",
            "announce_limit",
            "backlog",
            "keepalive_idle",
            "keepalive_interval",
            "keepalive_count",
            "conn_burst",
            "max_room_members",
            "register_lines",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.msg_rate < 0 or self.msg_burst < 1 or self.flood_factor < 1:
            raise ValueError("msg_rate must be >= 0, msg_burst >= 1 and flood_factor >= 1")
        if self.max_queue_bytes < 4 * self.max_line:
            raise ValueError("max_queue_bytes must be at least 4 x max_line")
        if self.queue_soft_bytes and not (
            self.max_line <= self.queue_soft_bytes <= self.max_queue_bytes
        ):
            raise ValueError("queue_soft_bytes must be 0 or between max_line and max_queue_bytes")
        if self.queue_soft_seconds <= 0 or self.conn_rate < 0:
            raise ValueError("queue_soft_seconds must be > 0 and conn_rate >= 0")
        if not 0 < self.ping_min_interval <= 3600:  # /ping every takes at most 3600
            raise ValueError("ping_min_interval must be above 0 and at most 3600")
        if self.register_bytes < 64:
            raise ValueError("register_bytes must be at least 64")
        for name in ("max_nick_len", "max_room_len"):
            if not 1 <= getattr(self, name) <= NAME_CEILING:
                raise ValueError(f"{name} must be between 1 and {NAME_CEILING}")
        if self.db_sync not in ("normal", "full"):
            raise ValueError("db_sync must be normal or full")
        if self.password_cost not in ("standard", "test"):
            raise ValueError("password_cost must be standard or test")
        if not 0 <= self.history_on_join <= 1000 or self.login_fail_delay < 0:
            raise ValueError("history_on_join must be 0-1000 and login_fail_delay >= 0")
        for name in ("tls_port", "http_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_only and self.tls_cert is None:
            raise ValueError("tls_only needs a certificate and a key")
        if min(self.tls_handshake_timeout, self.ws_ping_interval, self.ws_ping_timeout) <= 0:
            raise ValueError("tls_handshake_timeout and the WebSocket ping times must be > 0")
        if self.node_ttl < 1 or self.redis_history < 1:
            raise ValueError("node_ttl must be at least 1 s and redis_history at least 1")
        node = self.node_id
        if node is not None and not (node.isprintable() and node and node.split() == [node]):
            raise ValueError("node_id must be printable, without spaces, and not empty")
        if self.register_timeout <= 0 or self.write_timeout <= 0 or self.shutdown_grace < 0:
            raise ValueError("register_timeout and write_timeout must be > 0, shutdown_grace >= 0")

    @property
    def soft_queue_bytes(self) -> int:
        """The outbox's soft limit in bytes (queue_soft_bytes, or its default)."""
        return self.queue_soft_bytes or self.max_queue_bytes // 4
