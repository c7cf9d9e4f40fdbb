"""The ``chatd`` command: ``serve``, ``connect``, ``accounts``, ``gencert``, ``bench``,
``health``.

This is the only module that configures logging, picks the event loop and
handles signals. Signals only set an event; the server does the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import logging
import math
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from chatd import __version__
from chatd.config import Settings
from chatd.errors import ChatError
from chatd.store import DatabaseInUse, SqliteStore, StoreError, default_db_path

logger = logging.getLogger("chatd")

T = TypeVar("T")

_DEFAULTS = Settings()


def _env(name: str, default: object) -> str:
    """A default from the environment, as a string that argparse converts and
    checks like a command-line value (so a bad value is a usage error)."""
    return os.environ.get(name) or str(default)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"invalid duration {value!r} (a number of seconds > 0)")
    return seconds


def _port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r} (1-65535)")
    return port


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise argparse.ArgumentTypeError(
            f"invalid level {value!r} (choose from debug, info, warning, error)"
        )
    return level


class JsonFormatter(logging.Formatter):
    """One JSON object per log record."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every connection and HTTP request at info; chatd logs
    # its own sessions, so those lines are for debugging only.
    logging.getLogger("websockets").setLevel("DEBUG" if level == "debug" else "WARNING")


def run(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """Run a coroutine on the chosen event loop implementation."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            logger.warning("uvloop is not installed; using the asyncio loop")
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


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
    the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_common(parser: argparse.ArgumentParser, log_level: str = "info") -> None:
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop implementation (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("CHATD_LOG_LEVEL", log_level),
        type=_log_level,
        metavar="{debug,info,warning,error}",
        help="log verbosity (env CHATD_LOG_LEVEL; default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or as JSON objects, on stderr (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="chatd",
        description="A line-protocol chat daemon: talk with nc, telnet or 'chatd connect'.",
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the chat daemon",
        description="Run the chat daemon. Stop it with SIGINT or SIGTERM: clients are told, "
        "their queued output is flushed, and the daemon exits 0.",
    )
    net = serve.add_argument_group("listening")
    net.add_argument(
        "--host",
        default=_env("CHATD_HOST", _DEFAULTS.host),
        help="address to listen on; 0.0.0.0 for every interface (env CHATD_HOST)",
    )
    net.add_argument(
        "--port",
        type=int,
        default=_env("CHATD_PORT", _DEFAULTS.port),
        help="TCP port; 0 picks a free one (env CHATD_PORT)",
    )
    net.add_argument("--backlog", type=int, default=_DEFAULTS.backlog, help="listen backlog")
    limits = serve.add_argument_group("limits (see docs/PROTOCOL.md)")
    limits.add_argument(
        "--max-line",
        type=int,
        default=_DEFAULTS.max_line,
        help="longest accepted line in bytes; longer ones get line_too_long",
    )
    limits.add_argument(
        "--max-queue-bytes",
        type=int,
        default=_DEFAULTS.max_queue_bytes,
        help="bytes queued for one client before it is disconnected as too slow",
    )
    limits.add_argument(
        "--max-queue-events",
        type=int,
        default=_DEFAULTS.max_queue_events,
        help="lines queued for one client before it is disconnected as too slow",
    )
    limits.add_argument(
        "--msg-rate",
        type=float,
        default=_DEFAULTS.msg_rate,
        help="lines per second a client may send, sustained; 0 turns flood control off",
    )
    limits.add_argument(
        "--msg-burst",
        type=int,
        default=_DEFAULTS.msg_burst,
        help="lines a client may send at once before the rate applies",
    )
    limits.add_argument(
        "--flood-lines",
        type=int,
        default=_DEFAULTS.flood_lines,
        help="lines read ahead from a throttled client; past them it is read no further "
        "until it catches up (TCP pushes back)",
    )
    limits.add_argument(
        "--flood-factor",
        type=float,
        default=_DEFAULTS.flood_factor,
        help="lines arriving faster than this many times --msg-rate, beyond a burst of "
        "--flood-lines, are a flood: rate_limited and a disconnect",
    )
    limits.add_argument(
        "--max-total-rooms",
        type=int,
        default=_DEFAULTS.max_total_rooms,
        help="rooms on the whole server; more get too_many_rooms",
    )
    limits.add_argument(
        "--announce-limit",
        type=int,
        default=_DEFAULTS.announce_limit,
        help="rooms with more members than this announce joins and leaves only to the "
        "member concerned",
    )
    limits.add_argument(
        "--max-clients",
        type=int,
        default=_DEFAULTS.max_clients,
        help="connections held at once; more get server_full",
    )
    limits.add_argument(
        "--max-per-ip",
        type=int,
        default=_DEFAULTS.max_per_ip,
        help="connections from one address; more get too_many_connections",
    )
    limits.add_argument(
        "--conn-rate",
        type=float,
        default=_DEFAULTS.conn_rate,
        help="new connections a second from one address, sustained; more get "
        "too_many_connections; 0 turns the limit off",
    )
    limits.add_argument(
        "--conn-burst",
        type=int,
        default=_DEFAULTS.conn_burst,
        help="new connections from one address at once before --conn-rate applies",
    )
    limits.add_argument(
        "--max-room-members",
        type=int,
        default=_DEFAULTS.max_room_members,
        help="members of one room (general excepted); more get room_full",
    )
    limits.add_argument(
        "--max-nick-len",
        type=int,
        default=_DEFAULTS.max_nick_len,
        help="longest nickname in characters (at most 64)",
    )
    limits.add_argument(
        "--max-room-len",
        type=int,
        default=_DEFAULTS.max_room_len,
        help="longest name of a new room in characters (at most 64)",
    )
    limits.add_argument(
        "--max-rooms",
        type=int,
        default=_DEFAULTS.max_rooms_per_session,
        help="rooms one session may be in; more get too_many_rooms",
    )
    limits.add_argument(
        "--register-timeout",
        type=float,
        default=_DEFAULTS.register_timeout,
        help="seconds a new connection has to pick a nickname",
    )
    limits.add_argument(
        "--register-lines",
        type=int,
        default=_DEFAULTS.register_lines,
        help="lines a connection may send before choosing a nickname; more: "
        "registration_limit and a disconnect",
    )
    limits.add_argument(
        "--register-bytes",
        type=int,
        default=_DEFAULTS.register_bytes,
        help="bytes a connection may send before choosing a nickname; more: "
        "registration_limit and a disconnect",
    )
    limits.add_argument(
        "--queue-soft-bytes",
        type=int,
        default=_DEFAULTS.queue_soft_bytes,
        help="a client whose unsent output stays above this many bytes for "
        "--queue-soft-seconds is disconnected as too slow; 0: a quarter of "
        "--max-queue-bytes",
    )
    limits.add_argument(
        "--queue-soft-seconds",
        type=float,
        default=_DEFAULTS.queue_soft_seconds,
        help="seconds a client's output may stay above --queue-soft-bytes",
    )
    limits.add_argument(
        "--ping-min-interval",
        type=float,
        default=_DEFAULTS.ping_min_interval,
        help="shortest interval a client may ask for with /ping every SECONDS (at most 3600)",
    )
    limits.add_argument(
        "--write-timeout",
        type=float,
        default=_DEFAULTS.write_timeout,
        help="seconds a client may go without reading while output waits for it",
    )
    limits.add_argument(
        "--shutdown-grace",
        type=float,
        default=_DEFAULTS.shutdown_grace,
        help="seconds a closing connection (on shutdown, or any other close) may take "
        "to flush its output before it is cut",
    )
    limits.add_argument(
        "--keepalive-idle",
        type=int,
        default=_DEFAULTS.keepalive_idle,
        help="TCP keepalive: idle seconds before the first probe",
    )
    limits.add_argument(
        "--keepalive-interval",
        type=int,
        default=_DEFAULTS.keepalive_interval,
        help="TCP keepalive: seconds between probes",
    )
    limits.add_argument(
        "--keepalive-count",
        type=int,
        default=_DEFAULTS.keepalive_count,
        help="TCP keepalive: unanswered probes before the connection is dropped",
    )
    limits.add_argument(
        "--sndbuf",
        type=int,
        default=_DEFAULTS.sndbuf,
        help="SO_SNDBUF for client sockets in bytes, 0 for the system default "
        "(small values make slow-consumer handling visible in tests)",
    )
    storage = serve.add_argument_group("accounts and history")
    storage.add_argument(
        "--db",
        default=_env("CHATD_DB", default_db_path()),
        help="SQLite database of accounts, rooms and messages, created if missing; "
        ":memory: keeps nothing (env CHATD_DB)",
    )
    storage.add_argument(
        "--db-sync",
        choices=("normal", "full"),
        default=_DEFAULTS.db_sync,
        help="normal: what clients saw survives a crash of chatd; full: also a crash of "
        "the machine (an fsync per group commit)",
    )
    storage.add_argument(
        "--history-on-join",
        type=int,
        default=_DEFAULTS.history_on_join,
        help="messages of a room shown when joining it (0-1000)",
    )
    storage.add_argument(
        "--login-fail-delay",
        type=float,
        default=_DEFAULTS.login_fail_delay,
        help="seconds before a wrong password is answered",
    )
    storage.add_argument(
        "--password-cost",
        choices=("standard", "test"),
        default=_DEFAULTS.password_cost,
        help="argon2id cost: standard (19 MiB, 2 passes) or test (the cheapest; "
        "only for test suites)",
    )
    cluster = serve.add_argument_group("cluster (see docs/CLUSTER.md)")
    cluster.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("CHATD_REDIS"),
        help="join the daemons using this Redis server (redis://HOST:6379/0) into one "
        "chat; accounts, topics and history then live in Redis and --db is not used "
        "(env CHATD_REDIS)",
    )
    cluster.add_argument(
        "--node-id",
        metavar="NAME",
        default=os.environ.get("CHATD_NODE_ID"),
        help="this daemon's name in the cluster, unique among running nodes "
        "(env CHATD_NODE_ID; default: HOSTNAME-PID)",
    )
    cluster.add_argument(
        "--node-ttl",
        type=float,
        default=_DEFAULTS.node_ttl,
        help="seconds after a node's last heartbeat before the others drop its users",
    )
    cluster.add_argument(
        "--redis-history",
        type=int,
        default=_DEFAULTS.redis_history,
        help="messages kept per room or private conversation in Redis (approximate)",
    )
    tls = serve.add_argument_group("TLS (see 'chatd gencert' for a development certificate)")
    tls.add_argument(
        "--tls-cert",
        default=os.environ.get("CHATD_TLS_CERT"),
        help="certificate chain (PEM); with --tls-key, adds a TLS listener and makes the "
        "web port HTTPS; reloaded on SIGHUP (env CHATD_TLS_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        default=os.environ.get("CHATD_TLS_KEY"),
        help="private key of the certificate (PEM) (env CHATD_TLS_KEY)",
    )
    tls.add_argument(
        "--tls-port",
        type=int,
        default=_env("CHATD_TLS_PORT", _DEFAULTS.tls_port),
        help="TLS chat port (env CHATD_TLS_PORT)",
    )
    tls.add_argument(
        "--tls-only", action="store_true", help="no plain chat port: only TLS (and the web port)"
    )
    tls.add_argument(
        "--tls-handshake-timeout",
        type=float,
        default=_DEFAULTS.tls_handshake_timeout,
        help="seconds a TLS or WebSocket handshake may take",
    )
    web = serve.add_argument_group("web page, WebSocket, /healthz and /metrics")
    web.add_argument(
        "--http-port",
        type=int,
        default=os.environ.get("CHATD_HTTP_PORT"),
        help="serve the web chat page on / , a WebSocket on /ws, /healthz and /metrics on "
        "this port; off unless given (env CHATD_HTTP_PORT)",
    )
    web.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSockets from pages of this origin (scheme://host[:port]); "
        "repeatable; * for any. Pages served by chatd itself are always accepted",
    )
    web.add_argument(
        "--ws-ping-interval",
        type=float,
        default=_DEFAULTS.ws_ping_interval,
        help="seconds between WebSocket pings",
    )
    web.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=_DEFAULTS.ws_ping_timeout,
        help="seconds a WebSocket client has to answer a ping before it is disconnected",
    )
    _add_common(serve)

    accounts = sub.add_parser(
        "accounts",
        help="list, delete or reset accounts in a database",
        description="Manage the accounts in a chatd database. list and reset-password work "
        "while a daemon serves the database (a new password counts from the next login); "
        "delete is refused until that daemon stops, since a running daemon keeps the "
        "nicknames it knows reserved.",
    )
    accounts.add_argument(
        "--db",
        default=_env("CHATD_DB", default_db_path()),
        help="the database (env CHATD_DB)",
    )
    actions = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="one line per account: nickname, created (UTC)")
    delete = actions.add_parser("delete", help="delete an account; its nickname is free again")
    delete.add_argument("nick")
    reset = actions.add_parser(
        "reset-password",
        help="set a new password, read from the terminal (or one line of stdin)",
    )
    reset.add_argument("nick")

    connect = sub.add_parser(
        "connect",
        help="the terminal client",
        description="Chat from the terminal. With a terminal on stdin: an interactive prompt "
        "that incoming messages never garble. Otherwise a pipe: each stdin line is sent, "
        "each event is printed as one line, and the client quits at the end of input.",
    )
    connect.add_argument(
        "host", nargs="?", default="localhost", help="server address (default: %(default)s)"
    )
    connect.add_argument(
        "--port",
        type=int,
        default=os.environ.get("CHATD_PORT"),
        help=f"server port (env CHATD_PORT; default: {_DEFAULTS.port}, "
        f"or {_DEFAULTS.tls_port} with --tls)",
    )
    connect.add_argument(
        "--tls", action="store_true", help="connect over TLS, verifying the server's certificate"
    )
    trust = connect.add_mutually_exclusive_group()
    trust.add_argument(
        "--cafile",
        help="trust the certificates in this PEM file (e.g. one made by 'chatd gencert') "
        "instead of the system's; implies --tls",
    )
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (encrypted, but anyone could be "
        "listening in the middle); implies --tls",
    )
    connect.add_argument("--nick", help="nickname to take on connecting")
    connect.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit with status 1 when the connection is lost instead of reconnecting",
    )
    connect.add_argument(
        "--json",
        action="store_true",
        help="print events as the server's JSON objects, one per line (for scripts)",
    )
    _add_common(connect, log_level="warning")

    gencert = sub.add_parser(
        "gencert",
        help="write a self-signed TLS certificate for development",
        description="Write a self-signed certificate and its private key (ECDSA P-256, PEM) "
        "for trying TLS. Clients trust it with 'chatd connect --tls --cafile CERT'. "
        "For a public server use a certificate from a real CA (e.g. Let's Encrypt).",
    )
    gencert.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address the certificate is for; repeatable "
        "(default: localhost, 127.0.0.1 and ::1)",
    )
    gencert.add_argument("--cert", default="chatd-cert.pem", help="certificate file to write")
    gencert.add_argument("--key", default="chatd-key.pem", help="key file to write (mode 0600)")
    gencert.add_argument("--days", type=int, default=365, help="days the certificate is valid")
    gencert.add_argument("--force", action="store_true", help="overwrite existing files")

    health = sub.add_parser(
        "health",
        help="check that a running daemon answers (for container health checks)",
        description="Check that a running daemon answers. With a web port: GET /healthz, "
        "which is 200 when the daemon accepts connections and its store commits. Without "
        "one: connect to the chat port and wait for the welcome line. Exit 0 when healthy; "
        "otherwise exit 1 with one line on stderr. The defaults come from the same "
        "environment as 'chatd serve', so in the daemon's own environment (such as its "
        "container) no flags are needed.",
    )
    health.add_argument(
        "--host",
        default=_env("CHATD_HOST", _DEFAULTS.host),
        help="the daemon's address; the wildcards 0.0.0.0 and :: are probed on loopback "
        "(127.0.0.1, ::1) (env CHATD_HOST; default: %(default)s)",
    )
    health.add_argument(
        "--port",
        type=_port_number,
        default=_env("CHATD_PORT", _DEFAULTS.port),
        help="chat port, probed when there is no web port (env CHATD_PORT; default: %(default)s)",
    )
    health.add_argument(
        "--http-port",
        type=_port_number,
        default=os.environ.get("CHATD_HTTP_PORT") or None,
        help="web port to probe with GET /healthz; without one the chat port is probed "
        "(env CHATD_HTTP_PORT)",
    )
    health.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=bool(os.environ.get("CHATD_TLS_CERT")),
        help="the web port speaks HTTPS, as it does when the daemon has a certificate; "
        "on by default when CHATD_TLS_CERT is set. The certificate is not verified: the "
        "check only asks whether the daemon answers",
    )
    health.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        help="seconds the whole check may take; no answer in time is unhealthy "
        "(default: %(default)s)",
    )

    from chatd.tools import bench

    bench_parser = sub.add_parser(
        "bench",
        help="measure a daemon under load",
        description="Measure chatd under load generated from separate processes, against a "
        "daemon it spawns (default) or one already running (--host/--port, --pid for its "
        "CPU and memory). Prints a table and one JSON object per scenario.",
    )
    bench.add_arguments(bench_parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    try:
        return Settings(
            host=args.host,
            port=args.port,
            backlog=args.backlog,
            max_line=args.max_line,
            max_queue_bytes=args.max_queue_bytes,
            max_queue_events=args.max_queue_events,
            msg_rate=args.msg_rate,
            msg_burst=args.msg_burst,
            flood_lines=args.flood_lines,
            flood_factor=args.flood_factor,
            max_total_rooms=args.max_total_rooms,
            announce_limit=args.announce_limit,
            max_clients=args.max_clients,
            max_per_ip=args.max_per_ip,
            conn_rate=args.conn_rate,
            conn_burst=args.conn_burst,
            max_room_members=args.max_room_members,
            max_nick_len=args.max_nick_len,
            max_room_len=args.max_room_len,
            max_rooms_per_session=args.max_rooms,
            register_timeout=args.register_timeout,
            register_lines=args.register_lines,
            register_bytes=args.register_bytes,
            queue_soft_bytes=args.queue_soft_bytes,
            queue_soft_seconds=args.queue_soft_seconds,
            ping_min_interval=args.ping_min_interval,
            shutdown_grace=args.shutdown_grace,
            write_timeout=args.write_timeout,
            keepalive_idle=args.keepalive_idle,
            keepalive_interval=args.keepalive_interval,
            keepalive_count=args.keepalive_count,
            sndbuf=args.sndbuf,
            db=args.db,
            db_sync=args.db_sync,
            redis=args.redis,
            node_id=args.node_id,
            node_ttl=args.node_ttl,
            redis_history=args.redis_history,
            history_on_join=args.history_on_join,
            login_fail_delay=args.login_fail_delay,
            password_cost=args.password_cost,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_port=args.tls_port,
            tls_only=args.tls_only,
            tls_handshake_timeout=args.tls_handshake_timeout,
            http_port=args.http_port,
            origins=tuple(args.allowed_origin),
            ws_ping_interval=args.ws_ping_interval,
            ws_ping_timeout=args.ws_ping_timeout,
        )
    except ValueError as exc:
        raise SystemExit(f"chatd serve: {exc}") from None


def raise_fd_limit(max_clients: int) -> int:
    """Raise the open-file limit to the hard limit; return how many clients fit.

    Each client holds one descriptor. When ``max_clients`` of them would not
    fit beside the daemon's own, the limit is lowered with a warning, so the
    excess is refused with ``server_full`` instead of failing to be accepted.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return max_clients
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    if soft == resource.RLIM_INFINITY or max_clients + FD_RESERVE <= soft:
        return max_clients
    fits = max(1, soft - FD_RESERVE)
    logger.warning(
        "open-file limit %d leaves room for %d clients, not --max-clients %d: "
        "serving at most %d; raise the limit with ulimit -n",
        soft,
        fits,
        max_clients,
        fits,
    )
    return fits


#: Descriptors kept for the daemon itself: listeners, the event loop, logs,
#: the database, and connections accepted only to be refused.
FD_RESERVE = 64


async def serve(settings: Settings) -> int:
    """Run the daemon until SIGINT or SIGTERM; return the exit status."""
    import ssl

    from chatd.daemon.server import Server

    fits = raise_fd_limit(settings.max_clients)
    if fits < settings.max_clients:
        settings = dataclasses.replace(settings, max_clients=fits)
    try:
        server = Server(settings)
    except (OSError, ssl.SSLError) as exc:
        logger.error("cannot load the TLS certificate %s: %s", settings.tls_cert, exc)
        return 1
    # Handlers go in before the listener announces itself (whoever acts on
    # "listening on" may signal at once) and stay until shutdown is over: a
    # second signal cuts every connection instead of killing the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            logger.info("signal received")
            stop.set()
        else:
            logger.warning("second signal: cutting every connection now")
            server.abort_all("server stopping now")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    try:
        try:
            await server.start()
        except StoreError as exc:
            logger.error("%s", exc)
            return 1
        except (OSError, OverflowError) as exc:
            logger.error("cannot listen on %s: %s", settings.host, exc)
            return 1
        await stop.wait()
    finally:
        await server.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


def manage_accounts(args: argparse.Namespace) -> int:
    """``chatd accounts``: work on the database file directly."""
    if args.db == ":memory:" or not os.path.exists(args.db):
        print(f"chatd accounts: no database at {args.db}", file=sys.stderr)
        return 1
    return asyncio.run(_manage_accounts(args))


async def _manage_accounts(args: argparse.Namespace) -> int:
    from chatd.core.accounts import Passwords
    from chatd.protocol import check_password

    # A daemon reads accounts and passwords from the file at each login, so
    # list and reset-password share it with one. It keeps the registered
    # nicknames in memory, though: a delete behind its back would leave the
    # nickname reserved there, so delete takes the daemon's lock (see
    # DatabaseLock), which also keeps a daemon from starting meanwhile.
    store = SqliteStore(args.db, lock=args.action == "delete")
    try:
        await store.open()
    except DatabaseInUse as exc:
        who = f"a running chatd (pid {exc.holder})" if exc.holder else "a running chatd"
        print(
            f"chatd accounts: the database {exc.path} is in use by {who}; stop it to "
            "delete an account (list and reset-password work while it runs)",
            file=sys.stderr,
        )
        return 1
    except StoreError as exc:
        print(f"chatd accounts: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "list":
            for account in await store.accounts():
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(account.created))
                print(f"{account.nick}\t{created}")
            return 0
        if await store.account(args.nick) is None:
            print(f"chatd accounts: no account {args.nick}", file=sys.stderr)
            return 1
        if args.action == "delete":
            await store.delete_account(args.nick)
            print(f"deleted {args.nick}")
            return 0
        password = _read_password()
        try:
            check_password(password)
        except ChatError as exc:
            print(f"chatd accounts: {exc.text}", file=sys.stderr)
            return 2
        passwords = Passwords()
        try:
            await store.set_password(args.nick, await passwords.hash(password))
        finally:
            passwords.close()
        print(f"password of {args.nick} reset")
        return 0
    finally:
        await store.close()


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("chatd accounts: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    if args.command == "serve":
        return run(serve(settings_from_args(args)), args.loop)
    if args.command == "bench":
        from chatd.tools import bench

        return bench.main(args)
    if args.command == "accounts":
        return manage_accounts(args)
    if args.command == "gencert":
        return generate_certificate(args)
    if args.command == "health":
        return check_health(args)
    from chatd.client import ClientOptions, run_client
    from chatd.transports.tls import client_context

    use_tls = args.tls or args.cafile is not None or args.insecure
    port = args.port or (_DEFAULTS.tls_port if use_tls else _DEFAULTS.port)
    try:
        tls = client_context(args.cafile, insecure=args.insecure) if use_tls else None
    except OSError as exc:
        print(f"chatd connect: cannot read {args.cafile}: {exc}", file=sys.stderr)
        return 2
    options = ClientOptions(
        host=args.host,
        port=int(port),
        nick=args.nick,
        reconnect=not args.no_reconnect,
        json_output=args.json,
        tls=tls,
    )
    return run(run_client(options), args.loop)


def generate_certificate(args: argparse.Namespace) -> int:
    """``chatd gencert``: a self-signed certificate and key for development."""
    from chatd.transports.tls import generate_certificate as generate

    hosts = args.host or ["localhost", "127.0.0.1", "::1"]
    if not args.force:
        for path in (args.cert, args.key):
            if os.path.exists(path):
                print(f"chatd gencert: {path} exists (--force overwrites it)", file=sys.stderr)
                return 1
    try:
        generate(args.cert, args.key, hosts, days=args.days)
    except (OSError, ValueError) as exc:
        print(f"chatd gencert: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.cert} and {args.key} for {', '.join(hosts)}, valid {args.days} days")
    print(f"serve:   chatd serve --tls-cert {args.cert} --tls-key {args.key}")
    print(f"connect: chatd connect --cafile {args.cert}")
    return 0


class Unhealthy(Exception):
    """Why a health check failed, in one line."""


def check_health(args: argparse.Namespace) -> int:
    """``chatd health``: exit 0 if the daemon answers in time, else 1 and the reason.

    Synchronous, with the standard library only: it runs every few seconds in
    a container, so it starts no event loop and none of the daemon's code.
    Each step gets only the time left before one deadline for the whole check.
    """
    host = _probe_host(args.host)
    deadline = time.monotonic() + args.timeout
    if args.http_port is not None:
        scheme = "https" if args.tls else "http"
        target = f"{scheme}://{_host_port(host, args.http_port)}/healthz"
    else:
        target = f"chat port {_host_port(host, args.port)}"
    try:
        if args.http_port is not None:
            _check_healthz(host, args.http_port, tls=args.tls, deadline=deadline)
        else:
            _check_welcome(host, args.port, deadline=deadline)
    except Unhealthy as exc:
        reason = str(exc)
    except TimeoutError:
        reason = f"no answer within {args.timeout:g} s"
    except http.client.BadStatusLine as exc:
        if isinstance(exc, http.client.RemoteDisconnected):
            reason = "closed without an answer"
        else:
            reason = f"not an HTTP response: {exc}"
    except (OSError, http.client.HTTPException) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or repr(exc)
    else:
        return 0
    # One line whatever came back (a stray welcome line, a multi-line reason).
    reason = " ".join(reason.split())[:300]
    print(f"chatd health: unhealthy: {target}: {reason}", file=sys.stderr)
    return 1


def _probe_host(host: str) -> str:
    """The address to probe for a listening address: a wildcard means loopback.

    ``::`` maps to ``::1``, not 127.0.0.1: asyncio binds IPv6 sockets with
    IPV6_V6ONLY, so a daemon on ``::`` does not answer on IPv4.
    """
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remaining(deadline: float) -> float:
    """Seconds left before the deadline; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _check_healthz(host: str, port: int, *, tls: bool, deadline: float) -> None:
    conn: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(
            host, port, timeout=_remaining(deadline), context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=_remaining(deadline))
    try:
        conn.connect()
        conn.sock.settimeout(_remaining(deadline))
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        # The response is read from the same socket: this bounds the rest.
        conn.sock.settimeout(_remaining(deadline))
        response = conn.getresponse()
        body = response.read(512).decode(errors="replace").strip()
    finally:
        conn.close()
    if response.status != http.HTTPStatus.OK:
        raise Unhealthy(f"{response.status} {body or response.reason}")


def _check_welcome(host: str, port: int, *, deadline: float) -> None:
    """Connect, read the first line, close: it must be the welcome line.

    A full server answers with an error line instead (server_full), which is
    reported as it came.
    """
    with socket.create_connection((host, port), timeout=_remaining(deadline)) as sock:
        data = b""
        while b"\n" not in data and len(data) < 4096:
            sock.settimeout(_remaining(deadline))
            chunk = sock.recv(4096)
            if not chunk:
                raise Unhealthy(f"closed before the welcome line (got {data[:200]!r})")
            data += chunk
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("* welcome"):
        raise Unhealthy(f"no welcome line: {line[:200]}")
