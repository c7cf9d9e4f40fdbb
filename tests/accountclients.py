"""JSON clients of accounts, for the tests of sessions: a guest, a
connection that registers an account, one more that logs in to it. Every
client opened here is closed by :func:`close_all`, which each test file
calls from a fixture torn down before its daemons stop."""

from __future__ import annotations

from tests.helpers import LineClient, open_json

PASSWORD = "correct-horse"

_opened: list[LineClient] = []


def close_all() -> None:
    while _opened:
        _opened.pop().close()


async def client(port: int, nick: str | None = None) -> LineClient:
    """A JSON client, registered as the guest ``nick`` if given."""
    opened = await open_json(port, nick)
    _opened.append(opened)
    return opened


async def account(port: int, nick: str) -> LineClient:
    """A connection that registers ``nick`` as an account."""
    first = await client(port, nick)
    await first.send(f"/register {PASSWORD}")
    await first.expect(lambda e: e["type"] == "registered" and e["account"], "registered")
    return first


async def device(port: int, nick: str) -> LineClient:
    """One more connection logged in to ``nick``'s account, landed in its rooms."""
    more = await client(port)
    await more.send(f"/login {nick} {PASSWORD}")
    await more.expect(lambda e: e["type"] == "registered" and e["account"], "logged in")
    await more.sync("logged-in")
    return more
