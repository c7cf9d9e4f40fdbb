"""History over real sockets: on join, /history paging, DMs, restarts, SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from chatd.daemon.server import Server
from chatd.store import SCHEMA_VERSION, SqliteStore, StoreError
from tests.conftest import Connect, StartServer
from tests.helpers import (
    DEADLINE,
    Daemon,
    LineClient,
    fill_store,
    free_store,
    open_json,
    signal_child,
    start_fails,
)

PASSWORD = "correct-horse"


async def say_all(client: LineClient, texts: list[str]) -> list[int]:
    """Say each line and wait for its echo; return the message ids."""
    ids = []
    for text in texts:
        await client.send(text)
        echo = await client.expect(lambda e, t=text: e.get("type") == "message" and e["text"] == t)
        ids.append(echo["id"])
    return ids


async def test_joining_shows_recent_messages_before_live_ones(start_server: StartServer) -> None:
    server = await start_server(history_on_join=3)
    alice = await open_json(server.port, "alice")
    ids = await say_all(alice, [f"m{n}" for n in range(5)])
    bob = await LineClient.open("127.0.0.1", server.port)
    await bob.use_json()
    await bob.send("/nick bob")
    events = await bob.sync()
    kinds = [e["type"] for e in events]
    assert kinds == ["registered", "join", "message", "message", "message", "history", "current"]
    history = [e for e in events if e["type"] == "message"]
    assert [m["text"] for m in history] == ["m2", "m3", "m4"]
    assert [m["id"] for m in history] == ids[2:]
    assert all(m["history"] is True for m in history)
    assert events[5] == {
        "type": "history",
        "room": "general",
        "peer": None,
        "count": 3,
        "more": True,
        "before": ids[2],
    }
    await alice.send("live")
    live = await bob.expect("message")
    assert live["text"] == "live"
    assert "history" not in live
    alice.close()
    bob.close()


async def test_text_clients_see_history_with_its_time(server: Server) -> None:
    alice = await open_json(server.port, "alice")
    await say_all(alice, ["earlier words"])
    nc = await LineClient.open("127.0.0.1", server.port)
    await nc.send("carol")
    line = await nc.expect_line(r"earlier words")
    assert line.endswith(" [general] alice: earlier words")
    assert line[:4].isdigit()  # "YYYY-MM-DD HH:MM [general] ..."
    assert await nc.expect_line(r"earlier message") == "* 1 earlier message of #general"
    alice.close()
    nc.close()


async def test_history_pages_back(connect: Connect) -> None:
    alice = await connect("alice")
    ids = await say_all(alice, [f"n{n}" for n in range(45)])
    await alice.send("/history 20")
    page = await alice.sync()
    assert [e["text"] for e in page[:-1]] == [f"n{n}" for n in range(25, 45)]
    end = page[-1]
    assert (end["count"], end["more"], end["before"]) == (20, True, ids[25])
    await alice.send(f"/history general 20 before={end['before']}")
    page = await alice.sync()
    assert [e["text"] for e in page[:-1]] == [f"n{n}" for n in range(5, 25)]
    await alice.send(f"/history #general 20 before={page[-1]['before']}")
    page = await alice.sync()
    assert [e["text"] for e in page[:-1]] == [f"n{n}" for n in range(5)]
    assert (page[-1]["more"], page[-1]["before"]) == (False, None)
    await alice.send("/history 1000")
    assert len(await alice.sync()) == 46


async def test_history_of_a_room_needs_membership(connect: Connect) -> None:
    alice = await connect("alice")
    await alice.send("/create dev")
    await alice.expect("current")
    bob = await connect("bob")
    await bob.send("/history dev")
    assert (await bob.expect("error"))["code"] == "not_in_room"
    await bob.send("/history nowhere")
    assert (await bob.expect("error"))["code"] == "not_in_room"


async def test_private_history_belongs_to_accounts(connect: Connect) -> None:
    alice = await connect("alice")
    await alice.send(f"/register {PASSWORD}")
    await alice.expect("registered")
    bob = await connect("bob")
    await bob.send(f"/register {PASSWORD}")
    await bob.expect("registered")
    await alice.send("/msg bob first secret")
    await bob.expect("dm")
    await bob.send("/msg alice second secret")
    await alice.expect(lambda e: e.get("type") == "dm" and e["text"] == "second secret")
    await alice.send("/history @bob")
    events = await alice.sync()
    assert [(e["from"], e["text"], e["history"]) for e in events[:-1]] == [
        ("alice", "first secret", True),
        ("bob", "second secret", True),
    ]
    assert events[-1]["peer"] == "bob"
    # A guest cannot read private history, not even under a name that once had it.
    guest = await connect("eve")
    await guest.send("/history @bob")
    assert (await guest.expect("error"))["code"] == "not_logged_in"


async def test_history_survives_a_restart_and_empty_rooms_keep_it(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    first = await start_server(db=db)
    alice = await open_json(first.port, "alice")
    await alice.send("/create dev")
    await alice.expect("current")
    await alice.send("/topic release planning")
    await alice.expect("topic")
    await alice.send("/create scratch")
    await alice.expect("current")
    ids = await say_all(alice, ["scratch note"])
    await alice.send("/leave scratch")
    await alice.expect("current")
    await alice.send("/rooms")
    names = [r["name"] for r in (await alice.expect("rooms"))["rooms"]]
    assert "scratch" not in names  # empty and without a topic: gone from the list
    await alice.send("/create scratch")
    assert (await alice.expect("message"))["id"] == ids[0]  # but its history stays
    alice.close()
    await first.shutdown()

    second = await start_server(db=db)
    bob = await open_json(second.port, "bob")
    await bob.send("/rooms")
    rooms = {r["name"]: r["members"] for r in (await bob.expect("rooms"))["rooms"]}
    assert rooms == {"dev": 0, "general": 0 + 1}  # the room with a topic persists
    await bob.send("/join scratch")
    old = await bob.expect("message")
    assert (old["id"], old["text"], old["history"]) == (ids[0], "scratch note", True)
    await bob.send("/join dev")
    assert (await bob.expect("topic"))["topic"] == "release planning"
    await bob.send("new words")
    assert (await bob.expect("message"))["id"] > ids[0]  # ids continue, never repeat
    bob.close()


async def test_ids_keep_increasing_when_the_daemon_process_restarts(tmp_path: Path) -> None:
    """A client that keeps ids (to page /history, to spot duplicates) never sees one reused."""
    db = str(tmp_path / "chat.db")
    first = await Daemon.start("--db", db)
    try:
        alice = await open_json(first.port, "alice")
        bob = await open_json(first.port, "bob")
        before = await say_all(alice, ["one", "two"])
        await alice.send("/msg bob the last one is private")
        before.append((await bob.expect("dm"))["id"])
        alice.close()
        bob.close()
    finally:
        assert await first.stop() == 0

    second = await Daemon.start("--db", db)
    try:
        carol = await open_json(second.port, "carol")
        after = await say_all(carol, ["after the restart"])
        assert after[0] > max(before)
        carol.close()
    finally:
        await second.stop()


async def test_nothing_anyone_saw_is_lost_to_sigkill(tmp_path: Path) -> None:
    """Several talkers; SIGKILL mid-load; every message anyone saw is in /history."""
    db = str(tmp_path / "chat.db")
    daemon = await Daemon.start("--db", db)
    listener = await open_json(daemon.port, "listener")
    talkers = [await open_json(daemon.port, f"t{n}") for n in range(4)]
    seen: list[tuple[int, str]] = []

    async def talk(client: LineClient, n: int) -> None:
        for i in range(10_000):
            await client.send(f"{n}-{i}")
            await asyncio.sleep(0)

    async def listen() -> None:
        """Read until the connection dies (the timeout is the test's deadline)."""
        while True:
            try:
                event = await listener.event(timeout=DEADLINE * 3)
            except (ConnectionError, AssertionError, ValueError):  # closed, or cut mid-line
                return
            if event["type"] == "message":
                seen.append((event["id"], event["text"]))
                if len(seen) == 2000:
                    signal_child(daemon.proc, signal.SIGKILL)

    tasks = [asyncio.create_task(talk(c, n)) for n, c in enumerate(talkers)]
    await listen()
    assert await daemon.stop() == -signal.SIGKILL
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for client in [listener, *talkers]:
        client.close()

    assert len(seen) >= 2000
    ids = [i for i, _ in seen]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    restarted = await Daemon.start("--db", db)
    try:
        reader = await open_json(restarted.port, "reader")
        stored: list[tuple[int, str]] = []
        before = ""
        while True:
            await reader.send(f"/history general 1000{before}")
            page = await reader.sync()
            stored = [(e["id"], e["text"]) for e in page[:-1]] + stored
            if not page[-1]["more"]:
                break
            before = f" before={page[-1]['before']}"
        stored_ids = [i for i, _ in stored]
        assert len(set(stored_ids)) == len(stored_ids)
        in_store = dict(stored)
        missing = [(i, t) for i, t in seen if in_store.get(i) != t]
        assert missing == []
        # The store's order is the order they were delivered in.
        assert [i for i in stored_ids if i in dict(seen)] == ids
        reader.close()
    finally:
        await restarted.stop()


# -- the database file ------------------------------------------------------


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


async def test_an_empty_database_is_created_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "chat.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    assert store.migrated_from == 0
    assert {"accounts", "messages", "rooms"} <= _tables(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_previous_version_database_is_migrated_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        # Version 1 of the schema, as a chatd of that version left it.
        conn.executescript(
            """
            CREATE TABLE accounts (id INTEGER PRIMARY KEY AUTOINCREMENT,
                key TEXT NOT NULL UNIQUE, nick TEXT NOT NULL,
                password_hash TEXT NOT NULL, created REAL NOT NULL);
            CREATE TABLE messages (id INTEGER PRIMARY KEY, ts REAL NOT NULL,
                conv TEXT NOT NULL, room TEXT, sender TEXT NOT NULL, target TEXT,
                text TEXT NOT NULL, action INTEGER NOT NULL DEFAULT 0,
                sender_account INTEGER, target_account INTEGER);
            CREATE INDEX messages_by_conversation ON messages (conv, id);
            INSERT INTO accounts VALUES (1, 'ann', 'Ann', 'hash', 1.0);
            INSERT INTO messages VALUES (41, 2.0, 'general', 'general', 'Ann', NULL,
                'from the old days', 0, 1, NULL);
            PRAGMA user_version = 1;
            """
        )
    store = SqliteStore(path)
    await store.open()
    try:
        assert store.migrated_from == 1
        assert store.last_id == 41
        assert store.is_registered("ANN")
        messages, _ = await store.recent("general", 10)
        assert [(m.id, m.sender, m.text) for m in messages] == [(41, "Ann", "from the old days")]
        assert await store.rooms() == []
    finally:
        await store.close()
    assert "rooms" in _tables(path)


async def test_a_database_from_a_newer_chatd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer chatd"):
        await store.open()
    daemon_log = await start_fails("--db", str(path))
    assert "written by a newer chatd" in daemon_log


async def test_a_read_only_database_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    # Root writes files whatever their mode; an immutable file it cannot write.
    root = os.geteuid() == 0
    if root:
        await asyncio.to_thread(subprocess.run, ["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o444)
    try:
        with pytest.raises(StoreError, match="readonly"):
            await SqliteStore(path).open()
        log = await start_fails("--db", str(path))
        assert f"cannot use the database {path}" in log
        assert "readonly" in log
    finally:
        if root:
            await asyncio.to_thread(subprocess.run, ["chattr", "-i", str(path)], check=True)


async def test_a_full_database_tells_the_sender_and_recovers(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(db=str(tmp_path / "chat.db"))
    store = server.manager.store
    assert isinstance(store, SqliteStore)
    alice = await open_json(server.port, "alice")
    bob = await open_json(server.port, "bob")
    await say_all(alice, ["before"])
    event, failed = await fill_store(store, alice)
    assert event["code"] == "storage_unavailable"
    assert "full" in event["text"]
    events = await bob.sync()
    assert failed not in [e.get("text") for e in events]  # never shown, never stored
    await free_store(store)
    await say_all(alice, ["after"])
    assert (await bob.expect(lambda e: e.get("text") in ("after", failed)))["text"] == "after"
    alice.close()
    bob.close()


async def test_a_ping_still_follows_every_echo_with_a_database(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Messages wait for the store; a pong waits for them."""
    server = await start_server(db=str(tmp_path / "chat.db"))
    alice = await open_json(server.port, "alice")
    await alice.send(*[f"line {n}" for n in range(200)], "/ping done")
    events = await alice.sync("done")
    assert [e["text"] for e in events if e["type"] == "message"] == [
        f"line {n}" for n in range(200)
    ]
    alice.close()


async def test_the_text_hint_to_page_back_works_in_a_room_named_by_digits(
    connect: Connect,
) -> None:
    """The hint under a history replay is a command to type as it is: a room
    named by digits needs its '#', or the digits would be read as N."""
    talker = await connect("talker", json_mode=False)
    await talker.send("/join #2024", *[f"line {i}" for i in range(25)])
    await talker.expect_line(r"\[2024\] talker: line 24$")
    reader = await connect("reader", json_mode=False)
    await reader.send("/join #2024")
    hint = await reader.expect_line(r"more: /history ")
    command = hint.split("more: ", 1)[1]
    assert command.startswith("/history #2024 20 before="), hint
    await reader.send(command)
    assert (await reader.expect_line(r"line 4$|error")).endswith("talker: line 4")
