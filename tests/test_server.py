"""Chat over real loopback sockets: what nc users and programs see."""

from __future__ import annotations

import asyncio

from chatd.daemon.server import Server
from tests.conftest import Connect
from tests.helpers import LineClient


async def test_nc_style_session(server: Server) -> None:
    """A human with nc: greeting, a bare nickname, plain text both ways."""
    alice = await LineClient.open("127.0.0.1", server.port)
    bob = await LineClient.open("127.0.0.1", server.port)
    try:
        assert "nickname" in (await alice.line()).lower()
        await alice.send("alice\r\n")  # telnet sends CRLF
        await alice.expect_line(r"^\* now talking in #general$")
        await bob.send("bob")
        await bob.expect_line(r"^\* now talking in #general$")
        await alice.expect_line(r"^\* bob joined #general$")
        await bob.send("hello alice")
        # It mentions alice: marked so for her alone.
        assert await alice.expect_line(r"bob:") == "![general] bob: hello alice"
        assert await bob.expect_line(r"bob:") == "[general] bob: hello alice"
        await alice.send("//etc is where config lives")
        assert await bob.expect_line(r"alice:") == "[general] alice: /etc is where config lives"
        await alice.send("/frobnicate")
        assert (await alice.expect_line(r"^!")).startswith("! unknown_command:")
    finally:
        alice.close()
        bob.close()


async def test_commands_before_registration(connect: Connect) -> None:
    guest = await connect()
    await guest.send("/join dev")
    assert (await guest.expect("error"))["code"] == "not_registered"
    await guest.send("/help")
    helptext = await guest.expect("help")
    assert any(c["usage"].startswith("/join") for c in helptext["commands"])
    await guest.send("bad nick!")
    assert (await guest.expect("error"))["code"] == "bad_nick"
    await guest.send("guest")
    assert await guest.expect("registered") == {
        "type": "registered",
        "nick": "guest",
        "account": False,
    }
    assert await guest.expect("join") == {"type": "join", "room": "general", "nick": "guest"}


async def test_json_contract_for_a_conversation(connect: Connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.expect(lambda e: e == {"type": "join", "room": "general", "nick": "bob"})

    await alice.send("hi bob")
    mention = await bob.expect("message")
    assert mention.pop("mention") is True  # it names bob: marked for him alone
    msg = await alice.expect("message")  # the sender's echo is the same event, unmarked
    assert msg == mention
    assert set(msg) == {"type", "id", "ts", "room", "from", "text"}
    assert (msg["room"], msg["from"], msg["text"]) == ("general", "alice", "hi bob")
    assert isinstance(msg["id"], int)
    assert isinstance(msg["ts"], float)

    await bob.send("/me waves")
    action = await alice.expect("message")
    assert action["action"] is True
    assert action["text"] == "waves"

    await alice.send("/msg bob a secret")
    dm = await bob.expect("dm")
    assert {k: dm[k] for k in ("from", "to", "text")} == {
        "from": "alice",
        "to": "bob",
        "text": "a secret",
    }
    assert await alice.expect("dm") == dm

    await bob.send("/nick robert")
    assert await alice.expect("nick") == {"type": "nick", "old": "bob", "new": "robert"}

    await alice.send("/topic plans for today")
    topic = await bob.expect("topic")
    assert topic == {
        "type": "topic",
        "room": "general",
        "topic": "plans for today",
        "by": "alice",
        "changed": True,
    }

    await alice.send("/ping abc")
    assert await alice.expect("pong") == {"type": "pong", "token": "abc"}

    await bob.send("/quit off to lunch")
    assert await bob.expect("bye") == {"type": "bye", "reason": "off to lunch"}
    assert await alice.expect("leave") == {
        "type": "leave",
        "room": "general",
        "nick": "robert",
        "reason": "quit: off to lunch",
    }
    await bob.wait_closed()


async def test_rooms_create_join_leave_who(connect: Connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.send("/create dev")
    assert await alice.expect("current") == {"type": "current", "room": "dev"}
    await bob.send("/create #DEV")
    assert (await bob.expect("error"))["code"] == "room_exists"
    await bob.send("/join #dev")
    await bob.expect("current")
    assert await alice.expect("join") == {"type": "join", "room": "dev", "nick": "bob"}

    await bob.send("/rooms")
    rooms = await bob.expect("rooms")
    assert rooms["rooms"] == [{"name": "dev", "members": 2}, {"name": "general", "members": 2}]
    await bob.send("/who")
    assert await bob.expect("who") == {
        "type": "who",
        "room": "dev",
        "nicks": ["alice", "bob"],
        "members": [{"nick": "alice", "role": "op"}, {"nick": "bob", "role": "member"}],
    }

    # Talking goes to the current room only.
    await alice.send("dev talk")
    assert (await bob.expect("message"))["room"] == "dev"
    await bob.send("/join general")
    await bob.expect("current")
    await bob.send("general talk")
    heard = await alice.expect(lambda e: e.get("text") == "general talk")
    assert heard["room"] == "general"

    await alice.send("/leave dev")
    assert (await bob.expect("leave"))["room"] == "dev"
    await bob.send("/leave dev")
    await bob.expect("leave")
    await bob.send("/rooms")
    assert (await bob.expect("rooms"))["rooms"] == [{"name": "general", "members": 2}]
    await bob.send("/who dev")
    assert (await bob.expect("error"))["code"] == "no_such_room"


async def test_error_codes_over_the_wire(connect: Connect) -> None:
    alice = await connect("alice")
    bob = await connect()
    cases = [
        (bob, "/nick ALICE", "nick_taken"),
        (bob, "/nick no way", "bad_args"),
        (bob, "/nick n@pe", "bad_nick"),
        (bob, "/who", "not_registered"),
        (alice, "/msg nobody hi", "no_such_nick"),
        (alice, "/join bad/room", "bad_room"),
        (alice, "/leave nowhere", "no_such_room"),
        (alice, "/format yaml", "bad_args"),
        (alice, "/nope", "unknown_command"),
    ]
    for client, line, code in cases:
        await client.send(line)
        error = await client.expect("error")
        assert error["code"] == code, line
        assert error["text"]


async def test_one_order_for_everyone(connect: Connect) -> None:
    """Messages from several senders arrive in the same order at every member."""
    clients = [await connect(f"user{i}") for i in range(4)]
    for c in clients:
        await c.sync()
    per_sender = 25
    await asyncio.gather(*(c.send(*(f"{c.nick} {n}" for n in range(per_sender))) for c in clients))
    total = per_sender * len(clients)

    async def collect(c: LineClient) -> list[int]:
        ids: list[int] = []
        while len(ids) < total:
            ids.append((await c.expect("message"))["id"])
        return ids

    orders = await asyncio.gather(*(collect(c) for c in clients))
    assert all(order == orders[0] for order in orders)
    assert orders[0] == sorted(orders[0])


async def test_text_and_json_clients_share_a_room(connect: Connect) -> None:
    program = await connect("bot")
    human = await connect("human", json_mode=False)
    await human.send("hello bot")
    assert (await program.expect("message"))["text"] == "hello bot"
    await program.send("/me beeps")
    assert await human.expect_line("beeps") == "[general] * bot beeps"
    await human.send("/format json")
    assert await human.expect("format") == {"type": "format", "format": "json"}
    await human.send("/format text")
    assert await human.expect_line("format") == "* format: text"


async def test_piped_input_without_final_newline(server: Server) -> None:
    """printf 'bob\\nhi there' | nc: the last line counts though unterminated."""
    listener = await LineClient.open("127.0.0.1", server.port)
    piped = await LineClient.open("127.0.0.1", server.port)
    try:
        await listener.use_json()
        await listener.register("listener")
        piped.writer.write(b"bob\nhi there")
        piped.writer.write_eof()
        assert (await listener.expect("message"))["text"] == "hi there"
        await piped.wait_closed()
    finally:
        listener.close()
        piped.close()


async def test_half_closed_client_gets_all_its_answers(server: Server) -> None:
    """nc -N style: send commands, close the sending side, read every reply."""
    client = await LineClient.open("127.0.0.1", server.port)
    try:
        await client.send("/format json", "/nick halfway", "/join side", "/ping last")
        client.writer.write_eof()
        data = await client.wait_closed()
    finally:
        client.close()
    assert b'"type":"pong","token":"last"' in data
    assert b'"current","room":"side"' in data


async def test_room_watchers_hear_of_rooms_created_and_removed(connect: Connect) -> None:
    """/rooms watch keeps a room list current; nobody else pays for it."""
    watcher = await connect("wendy")
    bystander = await connect("olga")  # never asks: gets no room events
    reader = await connect("rita", json_mode=False)  # a human watching in text mode
    await watcher.send("/rooms watch")
    listing = await watcher.expect("rooms")
    assert [r["name"] for r in listing["rooms"]] == ["general"]
    await reader.send("/rooms watch")
    await reader.expect_line(r"^\* rooms: ")

    nc = await connect("ned", json_mode=False)
    await nc.send("/create Lab")
    await nc.expect_line(r"^\* now talking in #Lab$")
    assert await watcher.expect("room") == {
        "type": "room",
        "room": "Lab",
        "event": "created",
        "members": 1,
    }
    assert await reader.expect_line(r"^\* room ") == "* room #Lab created (1 member)"

    # Joins and leaves that keep the room in use are not room events.
    await bystander.send("/join lab")
    await bystander.expect("current")
    await bystander.send("/leave lab")
    await bystander.expect("current")
    await nc.send("/quit")  # the last member goes: the room is gone
    assert await watcher.expect("room") == {
        "type": "room",
        "room": "Lab",
        "event": "removed",
        "members": 0,
    }
    assert await reader.expect_line(r"^\* room ") == "* room #Lab removed"
    assert [e for e in await watcher.sync() if e["type"] == "room"] == []
    assert [e for e in await bystander.sync() if e["type"] == "room"] == []

    # unwatch stops them.
    await watcher.send("/rooms unwatch")
    await watcher.expect("rooms")
    await bystander.send("/create quiet")
    await bystander.expect("current")
    assert [e for e in await watcher.sync() if e["type"] == "room"] == []
    await watcher.send("/rooms watching")
    assert (await watcher.expect("error"))["code"] == "bad_args"
