"""Every limit and setting of the daemon, in one frozen object.

:class:`Settings` is built once (from flags and environment, in
:mod:`chatd.cli`) and handed down; nothing else defines a limit. Each field
is documented in ``docs/PROTOCOL.md`` under "Limits".

Each field also says how it is given on the command line (its :class:`Flag`):
``chatd serve``'s options are made from the fields, in their order, by
:mod:`chatd.cli.args`, so a setting is defined in this one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

#: No nickname or room name is ever longer, whatever the settings say.
NAME_CEILING = 64

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Flag:
    """How a setting is given to ``chatd serve``: its option and its ``--help``.

    The option's kind comes from the field's type: a number is converted and
    checked by argparse, a bool is a switch, a tuple is a repeatable option.
    """

    #: The option's help text, without the environment variable (added to it).
    help: str
    #: The title of the ``--help`` section; sections appear in field order.
    group: str
    #: The option; None: ``--`` and the field's name with dashes.
    flag: str | None = None
    #: The environment variable that gives the default, if any.
    env: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: A default computed later, in words, shown beside the variable.
    default_text: str | None = None

    def option(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def help_text(self) -> str:
        """The help text with its environment variable (and worded default)."""
        if self.env is None:
            return self.help
        if self.default_text is None:
            return f"{self.help} (env {self.env})"
        return f"{self.help} (env {self.env}; default: {self.default_text})"


def setting(
    default: T,
    *,
    help: str,
    group: str,
    flag: str | None = None,
    env: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    default_text: str | None = None,
) -> T:
    """A :class:`Settings` field with its default and its :class:`Flag`."""
    spec = Flag(help, group, flag, env, metavar, choices, default_text)
    return dataclasses.field(default=default, metadata={"flag": spec})


# The sections of ``chatd serve --help``.
LISTENING = "listening"
LIMITS = "limits (see docs/PROTOCOL.md)"
STORAGE = "accounts and history"
CLUSTER = "cluster (see docs/CLUSTER.md)"
TLS = "TLS (see 'chatd gencert' for a development certificate)"
WEB = "web page, WebSocket, /healthz and /metrics"
IRC = "IRC gateway (see README: With an IRC client)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = setting(
        "127.0.0.1",
        env="CHATD_HOST",
        group=LISTENING,
        help="address to listen on; 0.0.0.0 for every interface",
    )
    port: int = setting(
        9999, env="CHATD_PORT", group=LISTENING, help="TCP port; 0 picks a free one"
    )
    backlog: int = setting(4096, group=LISTENING, help="listen backlog")

    #: Longest accepted line in bytes, not counting its terminator.
    max_line: int = setting(
        4096, group=LIMITS, help="longest accepted line in bytes; longer ones get line_too_long"
    )
    #: Outbound queue bounds per client; a client over either is disconnected.
    max_queue_bytes: int = setting(
        1 << 20,
        group=LIMITS,
        help="bytes queued for one client before it is disconnected as too slow",
    )
    max_queue_events: int = setting(
        10_000,
        group=LIMITS,
        help="lines queued for one client before it is disconnected as too slow",
    )
    #: Sustained lines per second and burst per session; 0 turns flood control off.
    msg_rate: float = setting(
        10.0,
        group=LIMITS,
        help="lines per second a client may send, sustained; 0 turns flood control off",
    )
    msg_burst: int = setting(
        40, group=LIMITS, help="lines a client may send at once before the rate applies"
    )
    #: Lines read ahead while a session is throttled; past them the daemon
    #: stops reading (TCP pushes back). Also the burst of the arrival limit.
    flood_lines: int = setting(
        200,
        group=LIMITS,
        help="lines read ahead from a throttled client; past them it is read no further "
        "until it catches up (TCP pushes back)",
    )
    #: Lines arriving faster than flood_factor x msg_rate, beyond a burst of
    #: flood_lines, are a flood: rate_limited and a disconnect.
    flood_factor: float = setting(
        4.0,
        group=LIMITS,
        help="lines arriving faster than this many times --msg-rate, beyond a burst of "
        "--flood-lines, are a flood: rate_limited and a disconnect",
    )
    #: Rooms on the whole server (general included).
    max_total_rooms: int = setting(
        10_000, group=LIMITS, help="rooms on the whole server; more get too_many_rooms"
    )
    #: Registered rooms one account may own (they stay when empty).
    max_owned_rooms: int = setting(
        20,
        group=LIMITS,
        help="rooms one account may bring into use and own; a new room past it gets too_many_rooms",
    )
    #: Rooms with more members do not announce joins and leaves to everyone.
    announce_limit: int = setting(
        100,
        group=LIMITS,
        help="rooms with more members than this announce joins and leaves only to the "
        "member concerned",
    )
    max_clients: int = setting(
        10_000, group=LIMITS, help="connections held at once; more get server_full"
    )
    max_per_ip: int = setting(
        100, group=LIMITS, help="connections from one address; more get too_many_connections"
    )
    #: New connections per second from one address, sustained, and the burst
    #: allowed before that rate applies; a conn_rate of 0 turns the limit off.
    conn_rate: float = setting(
        10.0,
        group=LIMITS,
        help="new connections a second from one address, sustained; more get "
        "too_many_connections; 0 turns the limit off",
    )
    conn_burst: int = setting(
        50,
        group=LIMITS,
        help="new connections from one address at once before --conn-rate applies",
    )
    #: Members of one room; general is exempt (everyone is in it; max_clients bounds it).
    max_room_members: int = setting(
        1000, group=LIMITS, help="members of one room (general excepted); more get room_full"
    )
    #: Longest nickname and room name, in characters (at most NAME_CEILING).
    max_nick_len: int = setting(
        32, group=LIMITS, help="longest nickname in characters (at most 64)"
    )
    max_room_len: int = setting(
        32, group=LIMITS, help="longest name of a new room in characters (at most 64)"
    )
    max_rooms_per_session: int = setting(
        100,
        flag="--max-rooms",
        group=LIMITS,
        help="rooms one session may be in; more get too_many_rooms",
    )
    #: Connections logged in to one account at once (on one daemon).
    max_sessions_per_account: int = setting(
        10,
        group=LIMITS,
        help="connections logged in to one account at once; more get too_many_sessions",
    )
    #: Seconds a new connection has to choose a nickname.
    register_timeout: float = setting(
        60.0, group=LIMITS, help="seconds a new connection has to pick a nickname"
    )
    #: Input a connection may send before it has a nickname: lines and bytes.
    register_lines: int = setting(
        30,
        group=LIMITS,
        help="lines a connection may send before choosing a nickname; more: "
        "registration_limit and a disconnect",
    )
    register_bytes: int = setting(
        8192,
        group=LIMITS,
        help="bytes a connection may send before choosing a nickname; more: "
        "registration_limit and a disconnect",
    )
    #: The soft limit: a client whose unsent output stays above
    #: queue_soft_bytes for queue_soft_seconds is disconnected. Above it, the
    #: client's own commands also wait for its output to drain. 0: a quarter
    #: of max_queue_bytes (see soft_queue_bytes).
    queue_soft_bytes: int = setting(
        0,
        group=LIMITS,
        help="a client whose unsent output stays above this many bytes for "
        "--queue-soft-seconds is disconnected as too slow; 0: a quarter of "
        "--max-queue-bytes",
    )
    queue_soft_seconds: float = setting(
        10.0, group=LIMITS, help="seconds a client's output may stay above --queue-soft-bytes"
    )
    #: Shortest interval a client may ask for with "/ping every SECONDS".
    ping_min_interval: float = setting(
        5.0,
        group=LIMITS,
        help="shortest interval a client may ask for with /ping every SECONDS (at most 3600)",
    )
    #: Seconds a write may stay blocked (the client reads nothing) before the
    #: client is disconnected.
    write_timeout: float = setting(
        60.0,
        group=LIMITS,
        help="seconds a client may go without reading while output waits for it",
    )
    #: Seconds a graceful shutdown waits for queued output to reach clients.
    shutdown_grace: float = setting(
        5.0,
        group=LIMITS,
        help="seconds a closing connection (on shutdown, or any other close) may take "
        "to flush its output before it is cut",
    )
    #: TCP keepalive: idle seconds before the first probe, probe interval, probe count.
    keepalive_idle: int = setting(
        60, group=LIMITS, help="TCP keepalive: idle seconds before the first probe"
    )
    keepalive_interval: int = setting(
        10, group=LIMITS, help="TCP keepalive: seconds between probes"
    )
    keepalive_count: int = setting(
        6,
        group=LIMITS,
        help="TCP keepalive: unanswered probes before the connection is dropped",
    )
    #: SO_SNDBUF for client sockets, 0 for the kernel's default (tests clamp it).
    sndbuf: int = setting(
        0,
        group=LIMITS,
        help="SO_SNDBUF for client sockets in bytes, 0 for the system default "
        "(small values make slow-consumer handling visible in tests)",
    )

    #: The database file; ":memory:" keeps nothing (see chatd.store). ``chatd
    #: serve``'s default is a file instead (see chatd.cli.args).
    db: str = setting(
        ":memory:",
        env="CHATD_DB",
        group=STORAGE,
        help="SQLite database of accounts, rooms and messages, created if missing; "
        ":memory: keeps nothing",
    )
    #: SQLite's synchronous mode: "normal" survives a crash of the daemon,
    #: "full" also a crash of the machine (an fsync per group commit).
    db_sync: str = setting(
        "normal",
        choices=("normal", "full"),
        group=STORAGE,
        help="normal: what clients saw survives a crash of chatd; full: also a crash of "
        "the machine (an fsync per group commit)",
    )
    #: Messages a member is shown when joining a room.
    history_on_join: int = setting(
        20, group=STORAGE, help="messages of a room shown when joining it (0-1000)"
    )
    #: Seconds before a wrong password is answered.
    login_fail_delay: float = setting(
        1.0, group=STORAGE, help="seconds before a wrong password is answered"
    )
    #: Password hashing cost: "standard" (argon2id, 19 MiB, 2 passes) or
    #: "test" (the cheapest argon2id, for test suites only).
    password_cost: str = setting(
        "standard",
        choices=("standard", "test"),
        group=STORAGE,
        help="argon2id cost: standard (19 MiB, 2 passes) or test (the cheapest; "
        "only for test suites)",
    )
    #: Accounts that are server operators (besides ``chatd accounts oper``).
    opers: tuple[str, ...] = setting(
        (),
        flag="--oper",
        env="CHATD_OPERS",
        metavar="NICK",
        group=STORAGE,
        help="this account is a server operator: owner rights in every room, /kill, "
        "/kline, /wall; repeatable (the variable: names separated by commas)",
    )

    #: Cluster mode: the Redis server that joins several daemons into one chat
    #: (see chatd.cluster); None runs one daemon on its own store.
    redis: str | None = setting(
        None,
        env="CHATD_REDIS",
        metavar="URL",
        group=CLUSTER,
        help="join the daemons using this Redis server (redis://HOST:6379/0) into one "
        "chat; accounts, topics and history then live in Redis and --db is not used",
    )
    #: This daemon's name in the cluster (None: HOSTNAME-PID).
    node_id: str | None = setting(
        None,
        env="CHATD_NODE_ID",
        default_text="HOSTNAME-PID",
        metavar="NAME",
        group=CLUSTER,
        help="this daemon's name in the cluster, unique among running nodes",
    )
    #: Seconds after a node's last heartbeat before its users are dropped.
    node_ttl: float = setting(
        10.0,
        group=CLUSTER,
        help="seconds after a node's last heartbeat before the others drop its users",
    )
    #: Messages kept per conversation in Redis (trimmed approximately).
    redis_history: int = setting(
        10_000,
        group=CLUSTER,
        help="messages kept per room or private conversation in Redis (approximate)",
    )

    #: TLS: certificate and key files (PEM). With both, a TLS listener runs
    #: on tls_port (and the web port speaks HTTPS); tls_only drops the plain one.
    tls_cert: str | None = setting(
        None,
        env="CHATD_TLS_CERT",
        group=TLS,
        help="certificate chain (PEM); with --tls-key, adds a TLS listener and makes the "
        "web port HTTPS; reloaded on SIGHUP",
    )
    tls_key: str | None = setting(
        None, env="CHATD_TLS_KEY", group=TLS, help="private key of the certificate (PEM)"
    )
    tls_port: int = setting(9998, env="CHATD_TLS_PORT", group=TLS, help="TLS chat port")
    tls_only: bool = setting(
        False, group=TLS, help="no plain chat port: only TLS (and the web port)"
    )
    #: Seconds a TLS handshake (or a WebSocket's HTTP handshake) may take.
    tls_handshake_timeout: float = setting(
        10.0, group=TLS, help="seconds a TLS or WebSocket handshake may take"
    )

    #: The web page, /ws, /healthz and /metrics; None: no web listener.
    http_port: int | None = setting(
        None,
        env="CHATD_HTTP_PORT",
        group=WEB,
        help="serve the web chat page on / , a WebSocket on /ws, /healthz and /metrics on "
        "this port; off unless given",
    )
    #: The IRC gateway (chatd.daemon.irc): plain and TLS ports; None: off.
    irc_port: int | None = setting(
        None,
        env="CHATD_IRC_PORT",
        group=IRC,
        help="serve IRC clients on this port (IRC's is 6667); off unless given",
    )
    irc_tls_port: int | None = setting(
        None,
        env="CHATD_IRC_TLS_PORT",
        group=IRC,
        help="serve IRC clients over TLS on this port (IRC's is 6697); needs --tls-cert "
        "and --tls-key",
    )
    irc_ping_interval: float = setting(
        120.0,
        group=IRC,
        help="seconds an IRC client may stay silent before the server sends it a PING; "
        "as long again without an answer ends the connection",
    )
    #: Origins (scheme://host[:port]) whose pages may open a WebSocket, besides
    #: the server's own; "*" allows any.
    origins: tuple[str, ...] = setting(
        (),
        flag="--allowed-origin",
        metavar="ORIGIN",
        group=WEB,
        help="also accept WebSockets from pages of this origin (scheme://host[:port]); "
        "repeatable; * for any. Pages served by chatd itself are always accepted",
    )
    #: WebSocket keepalive: a ping every interval; no pong within timeout ends it.
    ws_ping_interval: float = setting(20.0, group=WEB, help="seconds between WebSocket pings")
    ws_ping_timeout: float = setting(
        20.0,
        group=WEB,
        help="seconds a WebSocket client has to answer a ping before it is disconnected",
    )

    def __post_init__(self) -> None:
        # The checks run in this order, and the first failure is the one
        # reported: chatd serve prints it.
        self._check_listening()
        self._check_numbers()
        self._check_limits()
        self._check_storage()
        self._check_network()

    def _check_listening(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty (use 0.0.0.0 for every interface)")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")

    def _check_numbers(self) -> None:
        for name in _FINITE:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def _check_limits(self) -> None:
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

    def _check_storage(self) -> None:
        if self.db_sync not in ("normal", "full"):
            raise ValueError("db_sync must be normal or full")
        if self.password_cost not in ("standard", "test"):
            raise ValueError("password_cost must be standard or test")
        if not 0 <= self.history_on_join <= 1000 or self.login_fail_delay < 0:
            raise ValueError("history_on_join must be 0-1000 and login_fail_delay >= 0")

    def _check_network(self) -> None:
        for name in ("tls_port", "http_port", "irc_port", "irc_tls_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_only and self.tls_cert is None:
            raise ValueError("tls_only needs a certificate and a key")
        if not 0 < self.irc_ping_interval <= 3600:
            raise ValueError("irc_ping_interval must be above 0 and at most 3600")
        if self.irc_tls_port is not None and self.tls_cert is None:
            raise ValueError("irc_tls_port needs a certificate and a key")
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


#: Settings that must be finite numbers (checked before any other bound).
_FINITE = (
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
    "irc_ping_interval",
)
#: Counts and sizes that must be at least 1.
_AT_LEAST_ONE = (
    "max_line",
    "max_queue_bytes",
    "max_queue_events",
    "flood_lines",
    "max_clients",
    "max_per_ip",
    "max_rooms_per_session",
    "max_sessions_per_account",
    "max_total_rooms",
    "max_owned_rooms",
    "announce_limit",
    "backlog",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
    "conn_burst",
    "max_room_members",
    "register_lines",
)


def flags() -> Iterator[tuple[dataclasses.Field[Any], Flag]]:
    """Each setting given on the command line, with its :class:`Flag`, in field order."""
    for field in dataclasses.fields(Settings):
        spec = field.metadata.get("flag")
        if isinstance(spec, Flag):
            yield field, spec


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default where it tells the reader something.

    ``ArgumentDefaultsHelpFormatter`` prints ``(default: None)`` for an option
    that is off unless given, and a second default after a help text that
    already names one. Here a default is shown once: not when the help text
    already gives it (``%(default)s``, or words such as ``default: HOSTNAME-PID``
    for a default computed later), and not when it is None, False or empty,
    which only mean "not given".
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if not _meaningful_default(default):
            # Some Python versions add this themselves (BooleanOptionalAction).
            return help_text.replace(" (default: %(default)s)", "")
        if "%(default)" in help_text or "default:" in help_text:
            return help_text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, "*"):
            return help_text  # a required positional argument has no default
        if isinstance(default, list | tuple):
            shown = ",".join(str(value) for value in default).replace("%", "%%")
            return f"{help_text} (default: {shown})"
        return f"{help_text} (default: %(default)s)"


def _meaningful_default(default: object) -> bool:
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, str | list | tuple) and not default)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter`; subcommands'
    parsers are made from the same class, so every ``--help`` shows defaults
    the same way (``chatd``'s, and the tools' run as ``python -m``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
