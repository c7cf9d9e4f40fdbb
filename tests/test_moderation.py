"""Rooms that belong to someone, over real sockets: roles, modes, kicks,
bans, mutes, invitations, the moderation log and server operators.

Each test runs on the memory store and on SQLite (the default). Clients
that must look like different machines connect from their own loopback
address (127.0.0.x), so a ban by address can tell them apart.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import LineClient, enter, refused, who

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_stores]

PASSWORD = "correct-horse"
Event = dict[str, Any]
Open = Callable[..., Awaitable[LineClient]]


@pytest.fixture
async def open_client(server: Server) -> AsyncIterator[Open]:
    """``await open_client("bob", ip="127.0.0.66")``: a JSON client from that
    address, registered as ``bob``; ``account=True`` also registers the
    account; ``json_mode=False`` speaks text, as ``nc`` does."""
    clients: list[LineClient] = []

    async def start(
        nick: str | None = None,
        *,
        ip: str = "127.0.0.1",
        account: bool = False,
        json_mode: bool = True,
    ) -> LineClient:
        c = await LineClient.open("127.0.0.1", server.port, local_addr=(ip, 0))
        clients.append(c)
        if json_mode:
            await c.use_json()
        if nick is not None:
            await c.register(nick, json_mode=json_mode)
        if account:
            await c.send(f"/register {PASSWORD}")
            await c.expect(lambda e: e["type"] == "registered" and e["account"], "the account")
        return c

    yield start
    for c in clients:
        c.close()


async def test_a_guests_room_has_its_creator_as_op_and_others_are_refused_not_op(
    open_client: Open,
) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "dev")
    await enter(bob, "dev")
    assert await who(bob, "dev") == {"alice": "op", "bob": "member"}
    for command in (
        "/kick alice",
        "/ban carol",
        "/unban carol",
        "/bans",
        "/mute alice",
        "/unmute alice",
        "/op bob",
        "/voice bob",
        "/mode +i",
        "/modlog",
    ):
        await refused(bob, command, "not_op")
    await bob.send("/mode")
    shown = await bob.expect("mode")
    assert shown["by"] is None
    assert shown["modes"] == {"i": False, "k": None, "l": None, "m": False, "s": False, "t": False}
    # The guest's op rights last while it is in the room.
    await alice.send("/leave dev")
    await enter(alice, "dev")
    assert (await who(alice, "dev"))["alice"] == "member"
    for command in ("/kill bob", "/kline ip:10.0.0.1", "/unkline ip:10.0.0.1", "/klines"):
        await refused(alice, command, "not_oper")
    await refused(alice, "/wall hello", "not_oper")


async def test_a_kick_reaches_the_room_and_the_kicked_may_come_back(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    watcher = await open_client("carol", json_mode=False)
    await enter(alice, "dev")
    await enter(bob, "dev")
    await watcher.send("/join dev")
    await watcher.expect_line(r"^\* now talking in #dev$")
    await alice.send("/kick bob spam")
    kick = await bob.expect("kick")
    assert kick == {"type": "kick", "room": "dev", "nick": "bob", "by": "alice", "reason": "spam"}
    leave = await bob.expect("leave")
    assert leave["reason"] == "kicked by alice: spam"
    assert (await bob.expect("current"))["room"] == "general"
    await watcher.expect_line(r"^\* alice kicked bob from #dev \(spam\)$")
    await watcher.expect_line(r"^\* bob left #dev \(kicked by alice: spam\)$")
    assert await who(alice, "dev") == {"alice": "op", "carol": "member"}
    await refused(alice, "/kick nobody", "no_such_nick")
    await enter(bob, "dev")  # a kick is not a ban
    # An op cannot kick someone with as many rights.
    await alice.send("/op bob")
    await alice.expect(lambda e: e["type"] == "role" and e["nick"] == "bob" and e["role"] == "op")
    await refused(bob, "/kick alice", "not_op")
    await refused(bob, "/deop alice", "not_op")


async def test_a_spammer_banned_by_address_is_refused_under_another_nickname(
    open_client: Open,
) -> None:
    alice = await open_client("alice")
    spammer = await open_client("spammer", ip="127.0.0.66")
    neighbour = await open_client("neighbour", ip="127.0.0.67")
    await enter(alice, "dev")
    await enter(spammer, "dev")
    await enter(neighbour, "dev")
    await spammer.send("buy now")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "buy now")
    await alice.send("/ban ip:127.0.0.66 1h spam")
    ban = await alice.expect("ban")
    assert ban["mask"] == "ip:127.0.0.66"
    assert ban["by"] == "alice"
    assert ban["reason"] == "spam"
    assert ban["until"] is not None
    leave = await spammer.expect("leave")
    assert leave == {"type": "leave", "room": "dev", "nick": "spammer", "reason": "banned by alice"}
    # Only ops and the author are told of the ban; the room sees the leave.
    events = await neighbour.sync()
    assert [e["type"] for e in events if e["type"] in ("ban", "leave")] == ["leave"]
    spammer.close()
    again = await open_client("hamspam", ip="127.0.0.66")
    error = await refused(again, "/join dev", "banned")
    assert "spam" in error["text"]
    await refused(again, "/history dev", "not_in_room")
    assert "hamspam" not in await who(alice, "dev")
    await alice.send("/bans")
    listed = await alice.expect("bans")
    assert [(b["mask"], b["by"], b["reason"]) for b in listed["bans"]] == [
        ("ip:127.0.0.66", "alice", "spam")
    ]
    await alice.send("/unban ip:127.0.0.66")
    assert (await alice.expect("unban"))["mask"] == "ip:127.0.0.66"
    await enter(again, "dev")
    await refused(alice, "/ban ip:300.1.1.1", "bad_mask")
    await refused(alice, "/ban host:example.org", "bad_mask")


async def test_a_ban_by_nickname_means_its_account_when_logged_in(open_client: Open) -> None:
    alice = await open_client("alice")
    bob = await open_client("bob", account=True)
    guest = await open_client("guest")
    for c in (alice, bob, guest):
        await enter(c, "dev")
    await alice.send("/ban bob")
    assert (await alice.expect("ban"))["mask"] == "account:bob"
    await alice.send("/ban guest")
    assert (await alice.expect("ban"))["mask"] == "nick:guest"
    await bob.expect(lambda e: e["type"] == "leave" and e["reason"] == "banned by alice")
    await guest.expect(lambda e: e["type"] == "leave" and e["reason"] == "banned by alice")
    await refused(bob, "/join dev", "banned")
    await refused(guest, "/join dev", "banned")


async def test_an_invitation_admits_once_to_an_invite_only_room(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "team")
    await alice.send("/mode +i")
    mode = await alice.expect("mode")
    assert (mode["by"], mode["change"], mode["modes"]["i"]) == ("alice", "+i", True)
    await refused(bob, "/join team", "invite_only")
    await alice.send("/invite bob")
    assert await alice.expect("invited") == {"type": "invited", "room": "team", "nick": "bob"}
    assert await bob.expect("invite") == {"type": "invite", "room": "team", "from": "alice"}
    await enter(bob, "team")
    await refused(alice, "/invite bob", "bad_args")  # already there
    await bob.send("/leave team")
    await bob.expect(lambda e: e["type"] == "current")
    await refused(bob, "/join team", "invite_only")
    await refused(bob, "/invite carol team", "not_in_room")


async def test_a_key_keeps_out_who_does_not_know_it(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "vault")
    await alice.send("/mode +k s3cret")
    assert (await alice.expect("mode"))["modes"]["k"] == "s3cret"
    await refused(bob, "/join vault", "bad_key")
    await refused(bob, "/join vault wrong", "bad_key")
    await enter(bob, "vault", "s3cret")
    await refused(alice, "/mode +k", "bad_mode")
    await refused(alice, "/mode +x", "bad_mode")
    await alice.send("/mode -k+l 2")
    mode = await alice.expect("mode")
    assert mode["change"] == "-k+l"
    assert (mode["modes"]["k"], mode["modes"]["l"]) == (None, 2)
    carol = await open_client("carol")
    await refused(carol, "/join vault", "room_full")


async def test_a_moderated_room_hears_only_voiced_members(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "stage")
    await enter(bob, "stage")
    await alice.send("/mode +m")
    await bob.expect("mode")
    await refused(bob, "can I talk?", "muted")
    await refused(bob, "/me waves", "muted")
    await alice.send("/voice bob")
    role = await bob.expect("role")
    assert role == {"type": "role", "room": "stage", "nick": "bob", "role": "voice", "by": "alice"}
    await bob.send("now I can")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "now I can")
    await alice.send("/devoice bob")
    await bob.expect(lambda e: e["type"] == "role" and e["role"] == "member")
    await refused(bob, "silence again", "muted")


async def test_mutes_and_bans_end_on_time(open_client: Open) -> None:
    alice, bob, carol = (
        await open_client("alice"),
        await open_client("bob"),
        await open_client("carol"),
    )
    for c in (alice, bob, carol):
        await enter(c, "dev")
    await alice.send("/mute bob 1s")
    mute = await bob.expect("mute")
    assert (mute["nick"], mute["by"], mute["duration"]) == ("bob", "alice", 1)
    await refused(bob, "hello?", "muted")
    await alice.send("/ban carol 2s")
    await carol.expect(lambda e: e["type"] == "leave" and e["reason"] == "banned by alice")
    await refused(carol, "/join dev", "banned")
    # The server says when each ends; no clock is read here.
    unmute = await bob.expect("unmute", timeout=10)
    assert (unmute["nick"], unmute["by"]) == ("bob", None)
    await bob.send("back")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "back")
    unban = await alice.expect("unban", timeout=10)
    assert (unban["mask"], unban["by"], unban["reason"]) == ("nick:carol", None, "expired")
    await enter(carol, "dev")


async def test_a_secret_room_leaks_nothing_to_outsiders(open_client: Open) -> None:
    alice = await open_client("alice")
    outsider = await open_client("eve")
    await enter(alice, "hidden")
    await alice.send("/mode +si")
    await alice.expect("mode")
    await outsider.send("/rooms")
    names = [r["name"] for r in (await outsider.expect("rooms"))["rooms"]]
    assert "hidden" not in names
    await alice.send("/rooms")
    assert "hidden" in [r["name"] for r in (await alice.expect("rooms"))["rooms"]]
    # Each answer is the one a room that does not exist gets.
    for command in ("/who {}", "/mode {}", "/history {}", "/invite alice {}"):
        real = await outsider_error(outsider, command.format("hidden"))
        none = await outsider_error(outsider, command.format("nosuch"))
        assert real == {**none, "text": none["text"].replace("nosuch", "hidden")}
    await refused(outsider, "/join hidden", "invite_only")  # the one /join must give
    await alice.send("/who")
    assert (await alice.expect("who"))["nicks"] == ["alice"]
    # Nor does its end: a watcher of /rooms is not told it went.
    await outsider.send("/rooms watch")
    await outsider.expect("rooms")
    await alice.send("/leave hidden")
    await alice.expect("current")
    await alice.send("/rooms")
    assert "hidden" not in [r["name"] for r in (await alice.expect("rooms"))["rooms"]]
    assert [e for e in await outsider.sync() if e["type"] == "room"] == []


async def outsider_error(c: LineClient, command: str) -> Event:
    await c.send(command)
    return await c.expect("error", command)


async def test_an_owner_outranks_ops_and_ops_outrank_members(open_client: Open) -> None:
    owner = await open_client("owner", account=True)
    op, member = await open_client("op", account=True), await open_client("member")
    await enter(owner, "club")
    await owner.send("/mode")
    mode = await owner.expect("mode")
    assert (mode["owner"], mode["registered"], mode["modes"]["t"]) == ("owner", True, True)
    await enter(op, "club")
    await enter(member, "club")
    await owner.send("/op op")
    await op.expect(lambda e: e["type"] == "role" and e["role"] == "op")
    assert await who(member, "club") == {"owner": "owner", "op": "op", "member": "member"}
    # +t: only ops set the topic.
    await refused(member, "/topic mine now", "not_op")
    await op.send("/topic set by an op")
    await member.expect(lambda e: e["type"] == "topic" and e["topic"] == "set by an op")
    await refused(op, "/kick owner", "not_op")
    await refused(op, "/deop owner", "bad_args")
    await op.send("/op member")  # an op may raise a member to op
    await member.expect(lambda e: e["type"] == "role" and e["role"] == "op")
    await refused(op, "/deop member", "not_op")  # but not take op from an op
    await owner.send("/deop member")
    await member.expect(lambda e: e["type"] == "role" and e["role"] == "member")
    await owner.send("/kick op bye")
    await op.expect("kick")


async def test_the_moderation_log_keeps_what_ops_did(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "dev")
    await enter(bob, "dev")
    await alice.send("/mode +m")
    await alice.send("/voice bob")
    await alice.send("/kick bob enough")
    await alice.expect("kick")
    await alice.send("/modlog 10")
    log = await alice.expect("modlog")
    assert [(e["by"], e["action"], e["target"]) for e in log["entries"]] == [
        ("alice", "mode", "dev"),
        ("alice", "role", "bob"),
        ("alice", "kick", "bob"),
    ]
    assert log["entries"][-1]["detail"] == "enough"


async def test_a_room_keeps_its_bans_within_bounds(open_client: Open) -> None:
    alice = await open_client("alice")
    await enter(alice, "dev")
    for i in range(200):
        await alice.send(f"/ban ip:10.0.0.{i}")
        if i % 20 == 19:
            await alice.sync()  # a burst of 200 commands would hold the loop
    await refused(alice, "/ban ip:10.9.9.9", "list_full")


# -- server operators ------------------------------------------------------------


@pytest.fixture
async def oper_server(start_server: StartServer) -> Server:
    return await start_server(opers=("root",))


_opened: list[LineClient] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Clients are closed even when a test fails halfway, on the test's loop."""
    yield
    while _opened:
        _opened.pop().close()


async def oper_client(server: Server, nick: str, *, ip: str = "127.0.0.1") -> LineClient:
    c = await LineClient.open("127.0.0.1", server.port, local_addr=(ip, 0))
    _opened.append(c)
    await c.use_json()
    return c


async def test_server_operators_kill_kline_and_wall(oper_server: Server) -> None:
    server = oper_server
    root = await oper_client(server, "root")
    await root.register("root")
    await root.send(f"/register {PASSWORD}")
    await root.expect(lambda e: e["type"] == "registered" and e["account"])
    bob = await oper_client(server, "bob", ip="127.0.0.70")
    await bob.register("bob")
    await bob.send(f"/register {PASSWORD}")
    await bob.expect(lambda e: e["type"] == "registered" and e["account"])
    dave = await oper_client(server, "dave")
    await dave.register("dave")
    await enter(dave, "daves")
    await enter(bob, "daves")
    texter = await LineClient.open("127.0.0.1", server.port)
    _opened.append(texter)
    assert (await texter.line()).startswith("* welcome")
    await texter.send("tex")
    await texter.expect_line(r"^\* now talking in #general$")
    lurker = await LineClient.open("127.0.0.1", server.port)  # no nickname yet
    _opened.append(lurker)
    assert (await lurker.line()).startswith("* welcome")
    # Owner rights in a room it does not own, without being in it.
    await root.send("/mode daves +m")
    await dave.expect(lambda e: e["type"] == "mode" and e["by"] == "root")
    await root.send("/wall maintenance at noon")
    for c in (dave, bob):
        assert await c.expect("wall") == {
            "type": "wall",
            "from": "root",
            "text": "maintenance at noon",
        }
    await texter.expect_line(r"^! notice from root: maintenance at noon$")
    await lurker.expect_line(r"^! notice from root: maintenance at noon$")
    await root.send("/kill dave go away")
    assert (await root.expect("kill"))["nick"] == "dave"
    bye = await dave.expect("bye")
    assert bye["reason"] == "killed by root: go away"
    await dave.wait_closed()
    left = await bob.expect(lambda e: e["type"] == "leave" and e["nick"] == "dave")
    assert left["reason"] == "killed by root: go away"
    # A kline on an account: it is cut now and refused at login.
    await root.send("/kline bob 1h abuse")
    kline = await root.expect("kline")
    assert (kline["mask"], kline["reason"]) == ("account:bob", "abuse")
    error = await bob.expect("error")
    assert error["code"] == "banned"
    await bob.wait_closed()
    again = await oper_client(server, "x")
    await again.send(f"/login bob {PASSWORD}")
    assert (await again.expect("error"))["code"] == "banned"
    await again.wait_closed()
    # A kline on an address: refused at connect, with a reason, then closed.
    await root.send("/kline ip:127.0.0.70")
    await root.expect("kline")
    cut = await LineClient.open("127.0.0.1", server.port, local_addr=("127.0.0.70", 0))
    _opened.append(cut)
    line = await cut.line()
    assert re.match(r"^! banned: you are banned from this server", line), line
    await cut.wait_closed()
    await root.send("/klines")
    masks = {k["mask"] for k in (await root.expect("klines"))["klines"]}
    assert masks == {"account:bob", "ip:127.0.0.70"}
    await root.send("/unkline bob")
    assert (await root.expect("unkline"))["mask"] == "account:bob"
    back = await oper_client(server, "y")
    await back.send(f"/login bob {PASSWORD}")
    await back.expect(lambda e: e["type"] == "registered" and e["account"])


async def test_a_guest_who_registers_keeps_its_op_and_its_mute(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "dev")
    await enter(bob, "dev")
    await alice.send("/mute bob")
    await bob.expect("mute")
    await bob.send(f"/register {PASSWORD}")
    await bob.expect(lambda e: e["type"] == "registered" and e["account"])
    await refused(bob, "still muted?", "muted")  # an account is no way out of a mute
    await alice.send(f"/register {PASSWORD}")
    await alice.expect(lambda e: e["type"] == "registered" and e["account"])
    assert await who(alice, "dev") == {"alice": "op", "bob": "member"}
    await alice.send("/unmute bob")
    await bob.expect("unmute")
    await bob.send("free")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "free")


async def login(c: LineClient, nick: str) -> None:
    await c.send(f"/login {nick} {PASSWORD}")
    await c.expect(lambda e: e["type"] == "registered" and e["account"], f"logged in as {nick}")


async def test_a_login_does_not_take_an_account_into_a_room_that_changed_hands(
    open_client: Open,
) -> None:
    guest = await open_client("guest")
    alice = await open_client("alice", account=True)
    await enter(guest, "party")
    await enter(alice, "party")
    await alice.send("/quit")
    await alice.expect("bye")
    await guest.send("/leave party")  # the room goes out of use
    await guest.expect("current")
    bob = await open_client("bob", account=True)
    await enter(bob, "party")  # a new room of that name, bob's
    await bob.send("/mode +ik sekrit")
    await bob.expect("mode")
    back = await open_client()
    await back.send(f"/login alice {PASSWORD}")
    events = await back.sync()
    assert [e["code"] for e in events if e["type"] == "error"] == ["invite_only"]
    assert [e["room"] for e in events if e["type"] == "join"] == ["general"]


async def test_a_ban_holds_whatever_name_the_banned_comes_in_under(open_client: Open) -> None:
    owner = await open_client("owner", account=True)
    balice = await open_client("balice", account=True)
    await balice.send("/quit")  # not connected: a login renames the guest in place
    await balice.expect("bye")
    await enter(owner, "club")
    await owner.send("/ban account:balice", "/ban nick:troll")
    await owner.expect("ban")
    # In the room as a guest, then logged in: out, as the ban says.
    anon = await open_client("anon")
    await enter(anon, "club")
    await login(anon, "balice")
    leave = await anon.expect(lambda e: e["type"] == "leave" and e["room"] == "club")
    assert leave["reason"] == "banned by owner"
    # Renamed into a banned nickname inside the room: the same.
    sneaky = await open_client("sneaky")
    await enter(sneaky, "club")
    await sneaky.send("/nick troll")
    leave = await sneaky.expect(lambda e: e["type"] == "leave" and e["room"] == "club")
    assert leave["reason"] == "banned by owner"
    assert await who(owner, "club") == {"owner": "owner"}


async def test_a_mute_follows_its_member_out_of_its_account(open_client: Open) -> None:
    alice = await open_client("alice")
    mal = await open_client("mal", account=True)
    await enter(alice, "dev")
    await enter(mal, "dev")
    await alice.send("/mute mal")
    await mal.expect("mute")
    await mal.send("/nick mal2")  # leaves the account, stays in the room
    await mal.expect(lambda e: e["type"] == "registered" and not e["account"])
    await refused(mal, "still here", "muted")
    await alice.send("/unmute mal2")
    await mal.expect("unmute")
    await mal.send("heard")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "heard")


async def test_a_mute_on_someone_gone_can_be_lifted_by_name(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "dev")
    await enter(bob, "dev")
    await alice.send("/mute bob")
    await alice.expect("mute")
    bob.close()
    await alice.expect(lambda e: e["type"] == "leave" and e["nick"] == "bob")
    await alice.send("/unmute bob")
    assert (await alice.expect("unmute"))["nick"] == "bob"
    await refused(alice, "/unmute bob", "bad_args")


async def test_an_op_cannot_ban_an_op_or_the_owner(open_client: Open) -> None:
    owner = await open_client("owner", account=True)
    opb = await open_client("opb", account=True)
    opc = await open_client("opc", account=True)
    await enter(owner, "club")
    await enter(opb, "club")
    await enter(opc, "club")
    await owner.send("/op opb", "/op opc")
    await opc.expect(lambda e: e["type"] == "role" and e["nick"] == "opc")
    await refused(opb, "/ban opc", "not_op")
    await refused(opb, "/ban account:owner", "not_op")
    await owner.send("/ban opc")  # the owner may
    await opc.expect(lambda e: e["type"] == "leave" and e["reason"] == "banned by owner")


async def test_a_secret_room_is_not_found_by_leave_or_create(open_client: Open) -> None:
    alice, eve = await open_client("alice"), await open_client("eve")
    await enter(alice, "hid")
    await alice.send("/mode +si")
    await alice.expect("mode")
    real = await outsider_error(eve, "/leave hid")
    none = await outsider_error(eve, "/leave nosuch")
    assert real == {**none, "text": none["text"].replace("nosuch", "hid")}
    # /create answers as /join does: the one answer that says it exists.
    await refused(eve, "/create hid", "invite_only")
    await alice.send("/mode -si")
    await alice.expect("mode")
    await refused(eve, "/create hid", "room_exists")


async def test_an_invitation_to_an_open_room_is_a_message_only(open_client: Open) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "dev")
    await alice.send("/invite bob")
    assert (await bob.expect("invite"))["room"] == "dev"
    await alice.send("/modlog")
    assert (await alice.expect("modlog"))["entries"] == []


async def test_a_change_made_from_outside_the_room_is_told_to_its_author(
    start_server: StartServer,
) -> None:
    server = await start_server(opers=("root",))
    root = await LineClient.open("127.0.0.1", server.port)
    dave = await LineClient.open("127.0.0.1", server.port)
    try:
        for c, nick in ((root, "root"), (dave, "dave")):
            await c.use_json()
            await c.register(nick)
        await root.send(f"/register {PASSWORD}")
        await root.expect(lambda e: e["type"] == "registered" and e["account"])
        await enter(dave, "daves")
        await root.send("/mode daves +m")
        mode = await root.expect("mode")
        assert (mode["room"], mode["by"], mode["change"]) == ("daves", "root", "+m")
        # Everyone lands in general: it never shuts anyone out.
        await refused(root, "/mode general +i", "bad_mode")
        await refused(root, "/mode general +l 5", "bad_mode")
    finally:
        root.close()
        dave.close()


async def test_a_guests_room_left_empty_keeps_its_topic_and_not_its_modes(
    open_client: Open,
) -> None:
    alice, bob = await open_client("alice"), await open_client("bob")
    await enter(alice, "lobby")
    await alice.send("/topic come in", "/mode +i")
    await alice.expect("mode")
    await alice.send("/leave lobby")
    await alice.expect("current")
    await enter(bob, "lobby")  # not shut for good by a guest who left
    await bob.send("/topic")
    assert (await bob.expect("topic"))["topic"] == "come in"


async def test_an_account_owns_a_bounded_number_of_rooms(start_server: StartServer) -> None:
    server = await start_server(max_owned_rooms=2)
    hog = await LineClient.open("127.0.0.1", server.port)
    try:
        await hog.use_json()
        await hog.register("hog")
        await hog.send(f"/register {PASSWORD}")
        await hog.expect(lambda e: e["type"] == "registered" and e["account"])
        for room in ("hog1", "hog2"):
            await enter(hog, room)
            await hog.send(f"/leave {room}")  # registered: it stays, empty
        error = await refused(hog, "/join hog3", "too_many_rooms")
        assert "you own 2 rooms" in error["text"]
        await enter(hog, "hog1")  # its own rooms are still there to join
    finally:
        hog.close()


async def test_a_mute_stays_one_entry_however_often_its_member_changes_name(
    open_client: Open,
) -> None:
    alice = await open_client("alice")
    mal = await open_client("mal", account=True)
    await enter(alice, "dev")
    await enter(mal, "dev")
    await alice.send("/mute mal")
    await mal.expect("mute")
    for i in range(5):
        await mal.send(f"/nick alt{i}")
        await mal.expect(lambda e: e["type"] == "registered" and not e["account"])
        await mal.send(f"/login mal {PASSWORD}")
        await mal.expect(lambda e: e["type"] == "registered" and e["account"])
    await refused(mal, "still?", "muted")
    await alice.send("/unmute mal")
    await mal.expect("unmute")
    await mal.send("free")
    await alice.expect(lambda e: e["type"] == "message" and e["text"] == "free")
    # Nothing of the round trips is left behind under the names it passed through.
    for i in range(5):
        await refused(alice, f"/unmute alt{i}", "bad_args")


async def test_an_op_cannot_ban_an_address_that_covers_another_op(open_client: Open) -> None:
    owner = await open_client("owner", account=True)
    opb = await open_client("opb", account=True, ip="127.0.0.8")
    opc = await open_client("opc", account=True, ip="127.0.0.9")
    await enter(owner, "club")
    for c in (opb, opc):
        await enter(c, "club")
    await owner.send("/op opb", "/op opc", "/mode +k door")
    await opc.expect(lambda e: e["type"] == "mode")
    error = await refused(opb, "/ban ip:127.0.0.9", "not_op")
    assert "opc" in error["text"]
    # The owner sees the key from outside the room; a member who left does not.
    await owner.send("/leave club", "/mode club")
    assert (await owner.expect("mode"))["modes"]["k"] == "door"


async def test_klines_hold_at_register_and_spare_operators_renaming(
    start_server: StartServer,
) -> None:
    server = await start_server(opers=("root",))
    clients: list[LineClient] = []

    async def fresh(nick: str) -> LineClient:
        c = await LineClient.open("127.0.0.1", server.port)
        clients.append(c)
        await c.use_json()
        await c.register(nick)
        return c

    try:
        root = await fresh("root")
        await root.send(f"/register {PASSWORD}")
        await root.expect(lambda e: e["type"] == "registered" and e["account"])
        newbie = await fresh("newbie")
        await root.send("/kline account:newbie")
        await root.expect("kline")
        # A guest that would become the account the kline names: told, closed.
        await newbie.send(f"/register {PASSWORD}")
        assert (await newbie.expect("error"))["code"] == "banned"
        await newbie.wait_closed()
        # An operator under a kline of its own address keeps its connection,
        # even when it changes the case of its nickname.
        await root.send("/kline ip:127.0.0.0/8")
        await root.expect("kline")
        await root.send("/nick ROOT")
        assert (await root.expect("nick"))["new"] == "ROOT"
        await root.send("/unkline ip:127.0.0.0/8")
        await root.expect("unkline")
    finally:
        for c in clients:
            c.close()
