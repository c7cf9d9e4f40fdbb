"""``chatd health``: does a running daemon answer? For container health checks."""

from __future__ import annotations

import argparse
import http.client
import socket
import ssl
import sys
import time


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
