"""How ``chatd connect`` was asked to run: the client's settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How ``chatd connect`` was asked to run."""

    host: str
    port: int
    nick: str | None = None
    reconnect: bool = True
    #: Print the server's JSON objects instead of rendered lines.
    json_output: bool = False
    #: Connect over TLS with this context (see chatd.transports.tls.client_context).
    tls: ssl.SSLContext | None = None
    #: First delay before a reconnection attempt, in seconds; it doubles each attempt.
    backoff_initial: float = 0.5
    #: Longest delay between reconnection attempts, in seconds.
    backoff_max: float = 30.0
    #: Each delay is moved randomly by up to this fraction of itself.
    backoff_jitter: float = 0.2
    #: Seconds one connection attempt may take.
    connect_timeout: float = 10.0
    #: Seconds to wait for the server's ``bye`` (or the close) after ``/quit``.
    quit_timeout: float = 3.0
    #: Force interactive (True) or pipe (False) mode; None decides by the terminals.
    interactive: bool | None = None

    def __post_init__(self) -> None:
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if not 0 <= self.backoff_jitter < 1:
            raise ValueError("backoff_jitter must be in [0, 1)")
        if self.connect_timeout <= 0 or self.quit_timeout < 0:
            raise ValueError("connect_timeout must be > 0 and quit_timeout >= 0")
