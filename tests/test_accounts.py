"""Accounts over real sockets: register, login, logout, passwd, brute force."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from chatd.core.accounts import LoginGuard
from tests.conftest import Connect, StartServer
from tests.helpers import LineClient, accounts_cli, open_json

PASSWORD = "correct-horse"


async def registered_account(connect: Connect, nick: str = "alice") -> LineClient:
    client = await connect(nick)
    await client.send(f"/register {PASSWORD}")
    assert await client.expect("registered") == {
        "type": "registered",
        "nick": nick,
        "account": True,
    }
    return client


async def test_register_protects_the_nickname(connect: Connect) -> None:
    alice = await registered_account(connect)
    alice.close()
    guest = await connect()
    await guest.send("/nick alice")
    error = await guest.expect("error")
    assert error["code"] == "nick_registered"
    assert "/login alice" in error["text"]
    # Other spellings are the same nickname.
    await guest.send("/nick ALICE")
    assert (await guest.expect("error"))["code"] == "nick_registered"
    await guest.send("bob")
    await guest.expect("current")
    await guest.send("/nick Alice")
    assert (await guest.expect("error"))["code"] == "nick_registered"


async def test_login_as_the_first_command_joins_general(connect: Connect) -> None:
    (await registered_account(connect)).close()
    client = await connect()
    await client.send(f"/login alice {PASSWORD}")
    assert await client.expect("registered") == {
        "type": "registered",
        "nick": "alice",
        "account": True,
    }
    assert await client.expect("current") == {"type": "current", "room": "general"}


async def test_a_guest_logs_in_and_others_see_the_rename(connect: Connect) -> None:
    (await registered_account(connect)).close()
    watcher = await connect("watcher")
    client = await connect("temp")
    await watcher.expect(lambda e: e == {"type": "join", "room": "general", "nick": "temp"})
    await client.send(f"/login alice {PASSWORD}")
    assert (await client.expect("registered"))["account"] is True
    assert await watcher.expect("nick") == {"type": "nick", "old": "temp", "new": "alice"}


async def test_wrong_password_and_unknown_nick_look_the_same(connect: Connect) -> None:
    (await registered_account(connect)).close()
    client = await connect()
    await client.send("/login alice wrong-password")
    wrong = await client.expect("error")
    await client.send("/login nobody wrong-password")
    unknown = await client.expect("error")
    assert (
        wrong
        == unknown
        == {
            "type": "error",
            "code": "bad_login",
            "text": "wrong nickname or password",
        }
    )
    await client.send("/nick carol")  # still free to be a guest
    assert (await client.expect("registered"))["nick"] == "carol"


@pytest.mark.timeout(60)
async def test_a_second_login_joins_the_first_connection(connect: Connect) -> None:
    """A second login no longer throws the first connection out: both are
    sessions of the account, which others see once."""
    old = await registered_account(connect)
    new = await connect()
    await new.send(f"/login alice {PASSWORD}")
    assert (await new.expect("registered"))["account"] is True
    events = await old.sync("still-connected")
    assert not [e for e in events if e["type"] in ("bye", "leave")], events
    watcher = await connect("watcher")
    for c in (new, old, watcher):
        await c.send("/who general")
        assert (await c.expect("who"))["nicks"] == ["alice", "watcher"]
    # Both get what is said, and what either says.
    await watcher.send("hello alice")
    for c in (old, new):
        assert (await c.expect("message"))["text"] == "hello alice"
    await new.send("/sessions")
    assert len((await new.expect("sessions"))["sessions"]) == 2


async def test_logout_returns_to_choosing_a_nickname(connect: Connect) -> None:
    alice = await registered_account(connect)
    watcher = await connect("watcher")
    await alice.send("/logout")
    assert await alice.expect("logout") == {"type": "logout", "nick": "alice"}
    leave = await watcher.expect("leave")
    assert (leave["nick"], leave["reason"]) == ("alice", "logged out")
    await alice.send("hello?")
    assert (await alice.expect("error"))["code"] == "bad_nick"  # a bare line is a nickname now
    await alice.send("/join dev")
    assert (await alice.expect("error"))["code"] == "not_registered"
    await alice.send(f"/login alice {PASSWORD}")
    assert (await alice.expect("registered"))["account"] is True
    await alice.send("/logout")
    await alice.expect("logout")
    await alice.send("/logout")
    assert (await alice.expect("error"))["code"] == "not_registered"


async def test_a_guest_cannot_logout_or_change_a_password(connect: Connect) -> None:
    guest = await connect("guest")
    await guest.send("/logout")
    assert (await guest.expect("error"))["code"] == "not_logged_in"
    await guest.send("/passwd old-password new-password")
    assert (await guest.expect("error"))["code"] == "not_logged_in"


async def test_register_twice_and_register_a_taken_account(connect: Connect) -> None:
    alice = await registered_account(connect)
    await alice.send(f"/register {PASSWORD}")
    assert (await alice.expect("error"))["code"] == "nick_registered"
    # Leaving the account's nickname leaves the account.
    await alice.send("/nick alice2")
    assert (await alice.expect("nick"))["new"] == "alice2"
    assert await alice.expect("registered") == {
        "type": "registered",
        "nick": "alice2",
        "account": False,
    }
    await alice.send("/nick alice")
    assert (await alice.expect("error"))["code"] == "nick_registered"


async def test_passwd_changes_the_password(connect: Connect) -> None:
    alice = await registered_account(connect)
    await alice.send("/passwd wrong-password new-password")
    assert (await alice.expect("error"))["code"] == "bad_login"
    await alice.send(f"/passwd {PASSWORD} new-password")
    assert await alice.expect("passwd") == {"type": "passwd", "nick": "alice"}
    alice.close()
    client = await connect()
    await client.send(f"/login alice {PASSWORD}")
    assert (await client.expect("error"))["code"] == "bad_login"
    await client.send("/login alice new-password")
    assert (await client.expect("registered"))["account"] is True


async def test_passwords_never_reach_the_log(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await registered_account(connect)
    await alice.send(f"/passwd {PASSWORD} another-secret")
    await alice.expect("passwd")
    other = await connect()
    await other.send("/login alice guessed-wrong")
    await other.expect("error")
    assert "account registered: alice" in caplog.text
    for secret in (PASSWORD, "another-secret", "guessed-wrong"):
        assert secret not in caplog.text


async def test_guessing_is_throttled_per_account(connect: Connect) -> None:
    (await registered_account(connect)).close()
    guesser = await connect()
    codes = []
    free = LoginGuard()._free["account"]
    for n in range(free + 3):
        await guesser.send(f"/login alice guess-{n:04d}")
        codes.append((await guesser.expect("error"))["code"])
    assert codes[:free] == ["bad_login"] * free
    assert "login_throttled" in codes[free:]
    # Even the right password waits out the back-off: nothing is learnt meanwhile.
    await guesser.send(f"/login alice {PASSWORD}")
    assert (await guesser.expect("error"))["code"] == "login_throttled"
    # Everyone else carries on.
    other = await connect("bob")
    await other.send("hello")
    assert (await other.expect("message"))["text"] == "hello"


def test_login_guard_backs_off_and_forgets() -> None:
    now = [0.0]
    guard = LoginGuard(free_per_account=2, free_per_ip=4, base=1.0, cap=8.0, clock=lambda: now[0])
    # Attempts count from the moment they are let through: two at once use both free ones.
    assert guard.attempt("1.2.3.4", "alice") == 0
    assert guard.attempt("1.2.3.4", "alice") == 0
    assert guard.attempt("1.2.3.4", "alice") == 0  # the free ones are used; this one counts
    assert guard.attempt("1.2.3.4", "alice") == 1.0  # refused, and not counted
    assert guard.wait("5.6.7.8", "bob") == 0  # other accounts and addresses are free
    now[0] = 1.0
    assert guard.attempt("1.2.3.4", "alice") == 0
    assert guard.wait("1.2.3.4", "alice") == 2.0
    for _ in range(10):
        guard.failed("1.2.3.4", "alice")
    assert guard.wait("1.2.3.4", "alice") == 8.0  # capped
    # The address is throttled for other accounts too, past its own free failures.
    assert guard.wait("1.2.3.4", "carol") == 8.0
    now[0] = 100.0
    assert guard.attempt("9.9.9.9", "alice") == 0
    guard.succeeded("9.9.9.9", "alice")  # right: the account is clear, the address too
    assert guard.wait("9.9.9.9", "alice") == 0
    assert guard.wait("9.9.9.9", "zed") == 0
    now[0] = 10_000.0
    assert guard.wait("1.2.3.4", "carol") == 0  # forgotten after an hour of quiet


async def test_concurrent_guesses_get_no_more_tries(connect: Connect) -> None:
    (await registered_account(connect)).close()
    guessers = [await connect() for _ in range(12)]
    for n, guesser in enumerate(guessers):
        await guesser.send(f"/login alice guess-{n:04d}")
    codes = [(await g.expect("error"))["code"] for g in guessers]
    free = LoginGuard()._free["account"]
    assert codes.count("bad_login") == free + 1  # the free ones, and the first that counts
    assert codes.count("login_throttled") == len(guessers) - free - 1


async def test_accounts_survive_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db)
    alice = await open_json(first.port, "alice")
    await alice.send(f"/register {PASSWORD}")
    await alice.expect("registered")
    alice.close()
    await first.shutdown()
    second = await start_server(db=db)
    guest = await open_json(second.port)
    await guest.send("/nick alice")
    assert (await guest.expect("error"))["code"] == "nick_registered"
    await guest.send(f"/login alice {PASSWORD}")
    assert (await guest.expect("registered"))["account"] is True
    guest.close()


async def test_accounts_admin_commands(start_server: StartServer, tmp_path: Path) -> None:
    db = str(tmp_path / "chat.db")
    server = await start_server(db=db)
    for nick in ("alice", "bob"):
        client = await open_json(server.port, nick)
        await client.send(f"/register {PASSWORD}")
        await client.expect("registered")
        client.close()

    code, out, _ = await accounts_cli(db, "list")
    assert code == 0
    assert [line.split("\t")[0] for line in out.splitlines()] == ["alice", "bob"]

    code, out, _ = await accounts_cli(db, "reset-password", "alice", stdin=b"brand-new-pass\n")
    assert (code, out) == (0, "password of alice reset\n")
    client = await open_json(server.port)
    await client.send("/login alice brand-new-pass")
    assert (await client.expect("registered"))["account"] is True
    client.close()

    # The daemon keeps the nicknames it knows reserved: delete waits for it to stop.
    code, _, err = await accounts_cli(db, "delete", "bob")
    assert code == 1
    assert f"the database {db} is in use by a running chatd (pid {os.getpid()})" in err
    await server.shutdown()
    code, out, _ = await accounts_cli(db, "delete", "bob")
    assert (code, out) == (0, "deleted bob\n")
    code, _, err = await accounts_cli(db, "delete", "bob")
    assert (code, err) == (1, "chatd accounts: no account bob\n")
    code, _, err = await accounts_cli(db, "reset-password", "alice", stdin=b"short\n")
    assert code == 2
    assert "8-128 characters" in err
    code, _, err = await accounts_cli(str(tmp_path / "missing.db"), "list")
    assert code == 1
    assert "no database" in err
