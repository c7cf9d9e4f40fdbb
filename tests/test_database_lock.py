"""One daemon per database: a second ``chatd serve`` on a database in use is refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers import Daemon, accounts_cli, open_json, start_fails


async def _history(port: int) -> list[str]:
    reader = await open_json(port, "reader")
    await reader.send("/history general 100")
    texts = [e["text"] for e in (await reader.sync())[:-1] if e["type"] == "message"]
    reader.close()
    return texts


async def test_a_second_daemon_on_a_database_in_use_is_refused(tmp_path: Path) -> None:
    """Both would number messages from the same last id: the second must not start."""
    data = tmp_path / "data"
    db = data / "chatd" / "chatd.db"  # where a daemon without --db puts it
    first = await Daemon.start("--db", str(db))
    try:
        log = await start_fails(env={"XDG_DATA_HOME": str(data), "CHATD_DB": ""})
        assert f"the database {db} is in use by another chatd (pid {first.proc.pid})" in log
        await start_fails("--db", str(db))

        # The first daemon never noticed: it serves and stores as before.
        alice = await open_json(first.port, "alice")
        await alice.send("still here")
        await alice.expect(lambda e: e.get("text") == "still here")
        alice.close()
        assert await _history(first.port) == ["still here"]
        assert not [line for line in first.log if "ERROR" in line]
    finally:
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL

    # The lock died with its holder: no stale file keeps the next daemon out.
    second = await Daemon.start("--db", str(db))
    try:
        assert await _history(second.port) == ["still here"]
    finally:
        assert await second.stop() == 0
    third = await Daemon.start("--db", str(db))  # and a clean exit releases it too
    assert await third.stop() == 0


async def test_daemons_without_a_database_file_share_nothing() -> None:
    """``--db :memory:`` takes no lock: any number of them run side by side."""
    daemons = [await Daemon.start("--db", ":memory:") for _ in range(2)]
    try:
        for n, daemon in enumerate(daemons):
            client = await open_json(daemon.port, f"user{n}")
            await client.send(f"from {n}")
            await client.expect(lambda e, n=n: e.get("text") == f"from {n}")
            client.close()
    finally:
        for daemon in daemons:
            assert await daemon.stop() == 0


async def test_accounts_beside_a_running_daemon(tmp_path: Path) -> None:
    """list and reset-password share the database with a daemon; delete waits
    for it to stop, since the daemon would keep the nickname reserved."""
    db = tmp_path / "chat.db"
    daemon = await Daemon.start("--db", str(db))
    try:
        bob = await open_json(daemon.port, "bob")
        await bob.send("/register old-password")
        await bob.expect("registered")
        bob.close()

        code, out, _ = await accounts_cli(db, "list")
        assert (code, out.split("\t")[0]) == (0, "bob")
        code, _, _ = await accounts_cli(db, "reset-password", "bob", stdin=b"new-password\n")
        assert code == 0
        client = await open_json(daemon.port)
        await client.send("/login bob new-password")  # the daemon reads it at login
        assert (await client.expect("registered"))["account"] is True
        client.close()

        code, out, err = await accounts_cli(db, "delete", "bob")
        assert (code, out) == (1, "")
        assert (
            f"the database {db} is in use by a running chatd (pid {daemon.proc.pid}); "
            "stop it to delete an account"
        ) in err
        guest = await open_json(daemon.port)
        await guest.send("/login bob new-password")  # nothing was deleted
        assert (await guest.expect("registered"))["account"] is True
        guest.close()
    finally:
        assert await daemon.stop() == 0

    code, out, _ = await accounts_cli(db, "delete", "bob")
    assert (code, out) == (0, "deleted bob\n")
    restarted = await Daemon.start("--db", str(db))
    try:
        guest = await open_json(restarted.port, "bob")  # the nickname is free
        guest.close()
    finally:
        assert await restarted.stop() == 0


async def test_every_name_of_a_database_in_use_is_refused(tmp_path: Path) -> None:
    """A symbolic or a hard link is the same database (a hard link would even
    get a write-ahead log of its own): the lock is on the file, not its name."""
    db = tmp_path / "chat.db"
    first = await Daemon.start("--db", str(db))
    try:
        (tmp_path / "soft.db").symlink_to(db)
        os.link(db, tmp_path / "hard.db")
        for name in ("soft.db", "hard.db"):
            log = await start_fails("--db", str(tmp_path / name))
            assert f"is in use by another chatd (pid {first.proc.pid})" in log
        assert not (tmp_path / "hard.db-wal").exists()
    finally:
        assert await first.stop() == 0
