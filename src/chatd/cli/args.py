"""The ``chatd`` command line: the parser of every subcommand.

``chatd serve``'s options are not written here: they are made from the
fields of :class:`~chatd.config.Settings` and their :class:`~chatd.config.Flag`
(:func:`add_settings_arguments`), and read back into a ``Settings`` by
:func:`settings_from_args`. The other subcommands' options are their own.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from chatd import __version__
from chatd.config import ArgumentParser, Settings, flags
from chatd.store import default_db_path

_DEFAULTS = Settings()

if TYPE_CHECKING:
    Subcommands: TypeAlias = argparse._SubParsersAction[ArgumentParser]


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


def connect_port(port: int | None, tls: bool) -> int:
    """``chatd connect``'s port: ``--port``, else the daemon's own variable for
    what the client speaks (CHATD_TLS_PORT over TLS, CHATD_PORT without), so
    that beside a daemon, as in the container image, it finds the right one.
    ArgumentTypeError for a value that is not a port."""
    if port is not None:
        return port
    name, default = (
        ("CHATD_TLS_PORT", _DEFAULTS.tls_port) if tls else ("CHATD_PORT", _DEFAULTS.port)
    )
    try:
        return _port_number(os.environ.get(name) or str(default))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: {exc}") from None


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise argparse.ArgumentTypeError(
            f"invalid level {value!r} (choose from debug, info, warning, error)"
        )
    return level


#: How a Settings field's type (as written in chatd.config) becomes an option.
#: The argparse arguments for each type a setting may have, keyed by the
#: field's annotation as written: config.py keeps ``from __future__ import
#: annotations``, so ``field.type`` is that string (a new type needs a line
#: here, or building the parser fails with a KeyError, in every CLI test).
_KINDS: dict[str, dict[str, Any]] = {
    "str": {},
    "str | None": {},
    "int": {"type": int},
    "int | None": {"type": int},
    "float": {"type": float},
    "bool": {"action": "store_true"},
    "tuple[str, ...]": {"action": "append"},
}


def _dest(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


def add_settings_arguments(
    parser: argparse.ArgumentParser, defaults: Mapping[str, object] | None = None
) -> None:
    """An option for each :class:`Settings` field that has a flag, in field order,
    in sections (argument groups) ordered by their first field.

    A default is the field's, or the one given in ``defaults`` by field name.
    A setting with an environment variable takes its default from it: when
    the variable is set, for one that is off (None) by default; when it is set
    and not empty for the others (``CHATD_HOST=`` means the default). Such a
    default is a string, which argparse converts and checks like a
    command-line value (so a bad value is a usage error).
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, spec in flags():
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        option = spec.option(field.name)
        kwargs: dict[str, Any] = dict(_KINDS[str(field.type)])
        default: Any = (defaults or {}).get(field.name, field.default)
        if kwargs.get("action") == "append":
            # From the environment: values separated by commas; the options add to them.
            env = os.environ.get(spec.env) if spec.env is not None else None
            default = [v.strip() for v in env.split(",") if v.strip()] if env else list(default)
        elif spec.env is not None:
            default = os.environ.get(spec.env) if default is None else _env(spec.env, default)
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        if spec.metavar is not None:
            kwargs["metavar"] = spec.metavar
        groups[spec.group].add_argument(
            option, dest=_dest(option), default=default, help=spec.help_text(), **kwargs
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The Settings ``chatd serve``'s options give; invalid ones exit with the reason."""
    values: dict[str, Any] = {}
    for field, spec in flags():
        value = getattr(args, _dest(spec.option(field.name)))
        values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        return Settings(**values)
    except ValueError as exc:
        raise SystemExit(f"chatd serve: {exc}") from None


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
    _add_serve(sub)
    _add_accounts(sub)
    _add_rooms(sub)
    _add_klines(sub)
    _add_connect(sub)
    _add_gencert(sub)
    _add_health(sub)
    _add_bench(sub)
    return parser


def _add_serve(sub: Subcommands) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the chat daemon",
        description="Run the chat daemon. Stop it with SIGINT or SIGTERM: clients are told, "
        "their queued output is flushed, and the daemon exits 0.",
    )
    # Settings keeps nothing by default; the command keeps a file of the user's.
    add_settings_arguments(serve, defaults={"db": default_db_path()})
    _add_common(serve)
    serve.add_argument(
        "--gc",
        choices=("freeze", "default"),
        default="freeze",
        help="garbage collection: freeze what survives start-up and each tenth of a "
        "second, so a collection looks only at what is new (no pause that grows with "
        "the number of clients; a full one at most every ten minutes, once the heap "
        "grew by a quarter), or Python's default collector (default: %(default)s)",
    )


def _add_db(parser: argparse.ArgumentParser) -> None:
    """``--db``, for the commands that work on a database file."""
    parser.add_argument(
        "--db",
        default=_env("CHATD_DB", default_db_path()),
        help="the database (env CHATD_DB)",
    )


def _add_accounts(sub: Subcommands) -> None:
    accounts = sub.add_parser(
        "accounts",
        help="list, delete or reset accounts in a database",
        description="Manage the accounts in a chatd database. list and reset-password work "
        "while a daemon serves the database (a new password counts from the next login); "
        "delete is refused until that daemon stops, since a running daemon keeps the "
        "nicknames it knows reserved.",
    )
    _add_db(accounts)
    actions = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="one line per account: nickname, created (UTC)")
    delete = actions.add_parser("delete", help="delete an account; its nickname is free again")
    delete.add_argument("nick")
    reset = actions.add_parser(
        "reset-password",
        help="set a new password, read from the terminal (or one line of stdin)",
    )
    reset.add_argument("nick")
    oper = actions.add_parser(
        "oper",
        help="make an account a server operator (on) or not (off), from its next login",
    )
    oper.add_argument("nick")
    oper.add_argument("state", choices=("on", "off"))


def _add_klines(sub: Subcommands) -> None:
    klines = sub.add_parser(
        "klines",
        help="list or lift the server bans (klines) in a database",
        description="The server bans that /kline keeps in a chatd database. list works while "
        "a daemon serves the database; remove is refused until it stops (a running daemon "
        "keeps them in memory), and is the way out of a kline that shuts out the "
        "operators themselves.",
    )
    _add_db(klines)
    actions = klines.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="one line per kline: mask, by, until (UTC), reason")
    remove = actions.add_parser("remove", help="lift a kline (MASK as /klines shows it)")
    remove.add_argument("mask")


def _add_rooms(sub: Subcommands) -> None:
    rooms = sub.add_parser(
        "rooms",
        help="list, show, transfer or delete the registered rooms in a database",
        description="Manage the registered rooms (rooms created by a logged-in account, and "
        "general) in a chatd database. list and show work while a daemon serves the "
        "database; transfer and delete are refused until it stops, since a running daemon "
        "keeps each room's rules in memory and writes them back.",
    )
    _add_db(rooms)
    actions = rooms.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="one line per registered room: name, owner, modes, bans")
    show = actions.add_parser("show", help="a room's owner, modes, roles, bans and mutes")
    show.add_argument("room")
    transfer = actions.add_parser(
        "transfer", help="give a room to another account (the old owner stays an op)"
    )
    transfer.add_argument("room")
    transfer.add_argument("account")
    delete = actions.add_parser(
        "delete", help="delete a room: its rules, topic, moderation log and messages"
    )
    delete.add_argument("room")


def _add_connect(sub: Subcommands) -> None:
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
        type=_port_number,
        help=f"server port (env CHATD_PORT, or CHATD_TLS_PORT with --tls; default: "
        f"{_DEFAULTS.port}, or {_DEFAULTS.tls_port} with --tls)",
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


def _add_gencert(sub: Subcommands) -> None:
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


def _add_health(sub: Subcommands) -> None:
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


def _add_bench(sub: Subcommands) -> None:
    from chatd.tools import bench

    bench_parser = sub.add_parser(
        "bench",
        help="measure a daemon under load",
        description="Measure chatd under load generated from separate processes, against a "
        "daemon it spawns (default) or one already running (--host/--port, --pid for its "
        "CPU and memory). Prints a table and one JSON object per scenario.",
    )
    bench.add_arguments(bench_parser)
