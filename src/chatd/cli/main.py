"""``chatd``'s entry point: parse, set up logging, run the subcommand.

This is the only module that configures logging, picks the event loop and
handles signals. Signals only set an event; the server does the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from chatd.cli.accounts import manage_accounts
from chatd.cli.args import build_parser, connect_port, settings_from_args
from chatd.cli.gencert import generate_certificate
from chatd.cli.health import check_health
from chatd.config import Settings
from chatd.store import StoreError

logger = logging.getLogger("chatd")

T = TypeVar("T")


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


async def serve(settings: Settings, gc_mode: str = "freeze") -> int:
    """Run the daemon until SIGINT or SIGTERM; return the exit status.

    ``gc_mode``: how the process collects garbage (see chatd.daemon.garbage).
    """
    import ssl

    from chatd.daemon.garbage import POLICY
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
        POLICY.start(gc_mode)  # after start-up: what it made is frozen
        collecting = asyncio.create_task(POLICY.run())
        try:
            await stop.wait()
        finally:
            collecting.cancel()
    finally:
        await server.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    if args.command == "serve":
        return run(serve(settings_from_args(args), args.gc), args.loop)
    if args.command == "bench":
        from chatd.tools import bench

        return bench.main(args)
    if args.command == "accounts":
        return manage_accounts(args)
    if args.command == "rooms":
        from chatd.cli.rooms import manage_rooms

        return manage_rooms(args)
    if args.command == "klines":
        from chatd.cli.rooms import manage_klines

        return manage_klines(args)
    if args.command == "gencert":
        return generate_certificate(args)
    if args.command == "health":
        return check_health(args)
    return connect(args)


def connect(args: argparse.Namespace) -> int:
    """``chatd connect``: the terminal client."""
    from chatd.client import ClientOptions, run_client
    from chatd.transports.tls import client_context

    use_tls = args.tls or args.cafile is not None or args.insecure
    try:
        port = connect_port(args.port, use_tls)
    except argparse.ArgumentTypeError as exc:
        print(f"chatd connect: {exc}", file=sys.stderr)
        return 2
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
