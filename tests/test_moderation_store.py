"""What a registered room keeps across restarts (SQLite, the default store),
and the admin commands that manage it: ``chatd rooms`` and ``chatd accounts oper``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import LineClient, admin_cli, open_json

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct-horse"
_opened: list[LineClient] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _opened:
        _opened.pop().close()


async def client(server: Server, nick: str | None = None, *, ip: str = "127.0.0.1") -> LineClient:
    c = await open_json(server.port, nick, local_addr=(ip, 0))
    _opened.append(c)
    return c


async def account(server: Server, nick: str) -> LineClient:
    c = await client(server, nick)
    await c.send(f"/register {PASSWORD}")
    await c.expect(lambda e: e["type"] == "registered" and e["account"], "the account")
    return c


async def login(server: Server, nick: str) -> LineClient:
    c = await client(server)
    await c.send(f"/login {nick} {PASSWORD}")
    await c.expect(lambda e: e["type"] == "registered" and e["account"], f"logged in as {nick}")
    return c


async def test_a_registered_rooms_owner_modes_and_bans_survive_a_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await start_server(db=db)
    alice = await account(server, "alice")
    carol = await account(server, "carol")
    await alice.send("/join club")
    await alice.expect(lambda e: e["type"] == "current" and e["room"] == "club")
    await carol.send("/join club")
    await carol.expect(lambda e: e["type"] == "current" and e["room"] == "club")
    await alice.send("/op carol", "/mode +kml door 10", "/ban ip:127.0.0.66 spam", "/ban eve 1h")
    await alice.sync()
    await server.shutdown()

    server = await start_server(db=db)
    owner = await login(server, "alice")
    await owner.send("/mode club")
    mode = await owner.expect("mode")
    assert (mode["owner"], mode["registered"]) == ("alice", True)
    assert mode["modes"] == {"i": False, "k": "door", "l": 10, "m": True, "s": False, "t": True}
    await owner.send("/who club")
    roles = {m["nick"]: m["role"] for m in (await owner.expect("who"))["members"]}
    assert roles == {"alice": "owner"}  # carol is not back yet; her role waits for her
    await owner.send("/bans")
    bans = {b["mask"]: b for b in (await owner.expect("bans"))["bans"]}
    assert set(bans) == {"ip:127.0.0.66", "nick:eve"}
    assert bans["nick:eve"]["until"] is not None
    # Its rules hold for newcomers.
    guest = await client(server, "guest")
    await guest.send("/join club")
    assert (await guest.expect("error"))["code"] == "bad_key"
    spammer = await client(server, "spam2", ip="127.0.0.66")
    await spammer.send("/join club door")
    assert (await spammer.expect("error"))["code"] == "banned"
    op = await login(server, "carol")
    await op.send("/who club")
    roles = {m["nick"]: m["role"] for m in (await op.expect("who"))["members"]}
    assert roles == {"alice": "owner", "carol": "op"}
    await op.send("/modlog")
    actions = [e["action"] for e in (await op.expect("modlog"))["entries"]]
    assert actions == ["register", "role", "mode", "ban", "ban"]


async def test_chatd_rooms_lists_shows_transfers_and_deletes(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await start_server(db=db)
    alice = await account(server, "alice")
    await account(server, "bob")
    await alice.send("/join club", "/mode +s", "/ban ip:10.0.0.0/8 botnet")
    await alice.sync()
    status, out, _ = await admin_cli("rooms", db, "list")  # beside the running daemon
    assert status == 0
    assert "club\towner alice\tmodes +st\tbans 1" in out.splitlines()
    status, out, err = await admin_cli("rooms", db, "transfer", "club", "bob")
    assert status == 1
    assert "in use" in err
    await server.shutdown()

    status, out, _ = await admin_cli("rooms", db, "transfer", "#club", "bob")
    assert (status, out) == (0, "#club now belongs to bob\n")
    status, out, _ = await admin_cli("rooms", db, "show", "club")
    assert status == 0
    lines = out.splitlines()
    assert "owner\tbob" in lines
    assert "op\talice" in lines
    assert "ban\tip:10.0.0.0/8\tby alice\tbotnet" in lines
    status, _, err = await admin_cli("rooms", db, "transfer", "club", "nobody")
    assert (status, err) == (1, "chatd rooms: no account nobody\n")

    server = await start_server(db=db)
    bob = await login(server, "bob")
    await bob.send("/mode club")
    assert (await bob.expect("mode"))["owner"] == "bob"
    await server.shutdown()

    status, out, _ = await admin_cli("rooms", db, "delete", "club")
    assert (status, out) == (0, "deleted #club\n")
    status, out, _ = await admin_cli("rooms", db, "list")
    assert "club" not in out
    status, _, err = await admin_cli("rooms", db, "show", "club")
    assert (status, err) == (1, "chatd rooms: no registered room #club\n")


async def test_chatd_accounts_oper_makes_a_server_operator_from_its_next_login(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await start_server(db=db)
    root = await account(server, "root")
    await root.send("/wall hi")
    assert (await root.expect("error"))["code"] == "not_oper"
    status, out, _ = await admin_cli("accounts", db, "oper", "root", "on")
    assert (status, out) == (0, "root is now a server operator\n")
    status, out, _ = await admin_cli("accounts", db, "list")
    assert out.splitlines()[0].endswith("\toper")
    root = await login(server, "root")
    await root.send("/wall hi")
    assert await root.expect("wall") == {"type": "wall", "from": "root", "text": "hi"}
    status, _, _ = await admin_cli("accounts", db, "oper", "root", "off")
    assert status == 0
    root = await login(server, "root")
    await root.send("/wall hi")
    assert (await root.expect("error"))["code"] == "not_oper"
    status, _, err = await admin_cli("accounts", db, "oper", "nobody", "on")
    assert (status, err) == (1, "chatd accounts: no account nobody\n")


@pytest.mark.both_stores
async def test_each_rooms_moderation_log_keeps_its_own_last_entries(
    chatd_store: str,
) -> None:
    from chatd.store import MODLOG_MAX, open_store

    store = open_store(chatd_store)
    await store.open()
    try:
        for i in range(3):
            store.log_action("quiet", f'{{"n": {i}}}')
        for i in range(MODLOG_MAX + 5):  # a busy room, after the quiet one
            store.log_action("busy", f'{{"n": {i}}}')
        store.log_action("quiet", '{"n": 3}')
        assert await store.modlog("quiet", 10) == [f'{{"n": {i}}}' for i in range(4)]
        busy = await store.modlog("busy", 2 * MODLOG_MAX)
        assert len(busy) == MODLOG_MAX
        assert busy[0] == '{"n": 5}'
    finally:
        await store.close()


async def test_chatd_klines_lifts_a_kline_that_shut_out_everyone(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await start_server(db=db, opers=("root",))
    root = await account(server, "root")
    await account(server, "bob")
    await root.send("/kline bob", "/kline ip:127.0.0.0/8 1d oops")
    await root.expect(lambda e: e["type"] == "kline" and e["mask"].startswith("ip:"))
    status, out, _ = await admin_cli("klines", db, "list")  # beside the running daemon
    assert status == 0
    assert re.fullmatch(
        r"account:bob\tby root\tuntil -\nip:127\.0\.0\.0/8\tby root\tuntil \S+ \S+\toops\n", out
    ), out
    status, _, err = await admin_cli("klines", db, "remove", "ip:127.0.0.0/8")
    assert (status, "in use" in err) == (1, True)
    await server.shutdown()

    server = await start_server(db=db)
    shut = await LineClient.open("127.0.0.1", server.port)
    _opened.append(shut)
    assert (await shut.line()).startswith("! banned: you are banned from this server (oops)")
    await server.shutdown()
    status, out, _ = await admin_cli("klines", db, "remove", "ip:127.0.0.0/8")
    assert (status, out) == (0, "lifted the kline on ip:127.0.0.0/8\n")
    status, out, _ = await admin_cli("klines", db, "remove", "Bob")  # as /klines shows it
    assert (status, out) == (0, "lifted the kline on account:bob\n")
    status, _, err = await admin_cli("klines", db, "remove", "ip:127.0.0.0/8")
    assert (status, err) == (1, "chatd klines: no kline on ip:127.0.0.0/8\n")
    status, _, err = await admin_cli("klines", db, "remove", "host:x")
    assert status == 2
    server = await start_server(db=db)
    await client(server, "back")  # let in again
