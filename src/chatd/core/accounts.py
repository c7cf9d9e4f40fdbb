"""Password hashing and the brute-force guard for logins.

Hashing is argon2id (argon2-cffi) in a small thread pool of its own, so a
burst of logins costs threads, never the event loop, and cannot take every
thread of the loop's default executor. :class:`LoginGuard` is pure code with
an injectable clock: it decides when a login may be tried at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import argon2

#: argon2id at the OWASP minimum (19 MiB, 2 passes): about 50 ms here.
STANDARD: Final = argon2.Parameters(
    type=argon2.Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=2,
    memory_cost=19 * 1024,
    parallelism=1,
)


class Passwords:
    """Hash and verify passwords off the event loop."""

    def __init__(self, cost: str = "standard", threads: int = 2) -> None:
        params = STANDARD if cost == "standard" else argon2.profiles.CHEAPEST
        self._hasher = argon2.PasswordHasher.from_parameters(params)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="chatd-hash")
        # Verified when a nickname has no account, so that a wrong nickname
        # takes as long to refuse as a wrong password.
        self._decoy = self._hasher.hash("no account has this password")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return (
            await loop.run_in_executor(
                self._pool, self._verify, password_hash or self._decoy, password
            )
            and password_hash is not None
        )

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class LoginGuard:
    """Growing back-off after failed logins, per account and per address.

    Each key (a nickname, an IP address) gets ``free`` failures; after that
    the next attempt must wait ``base * 2**(extra failures - 1)`` seconds
    after the last failure, up to ``cap``. Attempts during the wait are
    refused without checking the password, so they cost almost nothing and
    teach nothing. An attempt counts as a failure from the moment it is let
    through, so many connections guessing at once get no more tries than
    one; a success takes that back and clears the account's record. A key
    forgets its failures after ``forget`` quiet seconds.
    """

    def __init__(
        self,
        *,
        free_per_account: int = 10,
        free_per_ip: int = 20,
        base: float = 1.0,
        cap: float = 300.0,
        forget: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = {"account": free_per_account, "ip": free_per_ip}
        self._base, self._cap, self._forget = base, cap, forget
        self._clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}

    def attempt(self, ip: str, account: str) -> float:
        """Let a login try through (0.0, counted as failed until it succeeds),
        or return the seconds to wait before the next one may."""
        wait = self.wait(ip, account)
        if wait == 0:
            self.failed(ip, account)
        return wait

    def wait(self, ip: str, account: str) -> float:
        """Seconds before a login to ``account`` from ``ip`` may be tried (0: now)."""
        now = self._clock()
        return max(self._wait(("ip", ip), now), self._wait(("account", account), now))

    def _wait(self, key: tuple[str, str], now: float) -> float:
        record = self._failures.get(key)
        if record is None:
            return 0.0
        if now - record.last > self._forget:
            del self._failures[key]
            return 0.0
        extra = record.count - self._free[key[0]]
        if extra <= 0:
            return 0.0
        delay = min(self._cap, self._base * 2.0 ** (extra - 1))
        return max(0.0, record.last + delay - now)

    def failed(self, ip: str, account: str) -> None:
        now = self._clock()
        for key in (("ip", ip), ("account", account)):
            record = self._failures.get(key)
            if record is None:
                self._failures[key] = _Failures(1, now)
            else:
                record.count += 1
                record.last = now
        if len(self._failures) > 100_000:
            self._prune(now)

    def succeeded(self, ip: str, account: str) -> None:
        """The attempt let through by :meth:`attempt` was right: take it back."""
        self._failures.pop(("account", account), None)
        record = self._failures.get(("ip", ip))
        if record is not None:
            record.count -= 1
            if record.count <= 0:
                del self._failures[("ip", ip)]

    def _prune(self, now: float) -> None:
        self._failures = {k: v for k, v in self._failures.items() if now - v.last <= self._forget}


class Auth:
    """What sessions share for logins: the hasher, the guard, the delay."""

    def __init__(self, cost: str = "standard", fail_delay: float = 1.0) -> None:
        self.passwords = Passwords(cost)
        self.guard = LoginGuard()
        #: Seconds before a wrong password is answered.
        self.fail_delay = fail_delay

    def close(self) -> None:
        self.passwords.close()
