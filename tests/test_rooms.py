"""RoomManager with in-memory members: state changes and who hears what."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd.core.rooms import Member, RoomManager
from chatd.errors import NickTaken, NoSuchNick, NoSuchRoom, NotInRoom, RoomExists, TooManyRooms
from chatd.protocol import Format


class Inbox(Member):
    """A member that keeps what it is sent, as JSON objects."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        super().__init__(Format.JSON)
        self.chunks: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.chunks.append(data)

    reply = deliver

    def take(self) -> list[dict[str, Any]]:
        events = [json.loads(c) for c in self.chunks]
        self.chunks.clear()
        return events

    def types(self) -> list[str]:
        return [e["type"] for e in self.take()]


@pytest.fixture
def manager() -> RoomManager:
    return RoomManager(clock=lambda: 1000.0, max_rooms_per_session=3)


def member(manager: RoomManager, nick: str) -> Inbox:
    m = Inbox()
    manager.register(m, nick)
    m.take()
    return m


def clear(*members: Inbox) -> None:
    for m in members:
        m.take()


def test_register_puts_member_in_general(manager: RoomManager) -> None:
    alice = Inbox()
    manager.register(alice, "alice")
    assert alice.take() == [
        {"type": "registered", "nick": "alice", "account": False},
        {"type": "join", "room": "general", "nick": "alice"},
        {"type": "current", "room": "general"},
    ]
    assert manager.find("ALICE") is alice


def test_nicknames_are_unique_case_insensitively(manager: RoomManager) -> None:
    member(manager, "alice")
    with pytest.raises(NickTaken):
        manager.register(Inbox(), "Alice")


def test_message_reaches_every_member_and_the_sender_once(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    alice.take()
    manager.say(bob, "hi")
    expected = {
        "type": "message",
        "id": 1,
        "ts": 1000.0,
        "room": "general",
        "from": "bob",
        "text": "hi",
    }
    assert alice.take() == [expected]
    assert bob.take() == [expected]


def test_render_once_shares_the_same_bytes(manager: RoomManager) -> None:
    members = [member(manager, f"m{i}") for i in range(5)]
    for m in members:
        m.take()
    manager.say(members[0], "shared")
    first = members[0].chunks[0]
    assert all(m.chunks[0] is first for m in members)


def test_mixed_formats_get_their_own_rendering(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    bob.fmt = Format.TEXT
    alice.take()
    manager.say(alice, "hello")
    assert bob.chunks == [b"[general] alice: hello\n"]
    assert json.loads(alice.chunks[0])["text"] == "hello"


def test_create_join_leave_and_room_lifecycle(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    clear(alice)
    manager.join(alice, "dev", create=True)
    assert alice.types() == ["join", "current"]
    with pytest.raises(RoomExists):
        manager.join(bob, "DEV", create=True)
    manager.join(bob, "Dev")
    assert [e["type"] for e in alice.take()] == ["join"]
    clear(bob)
    assert manager.room_list().rooms == (("dev", 2), ("general", 2))
    manager.leave(alice)
    assert bob.take() == [{"type": "leave", "room": "dev", "nick": "alice", "reason": ""}]
    # alice falls back to her remaining room.
    assert alice.take()[-1] == {"type": "current", "room": "general"}
    manager.leave(bob, "dev")
    assert ("dev", 0) not in manager.room_list().rooms
    assert [name for name, _ in manager.room_list().rooms] == ["general"]


def test_general_survives_being_empty(manager: RoomManager) -> None:
    alice = member(manager, "alice")
    manager.leave(alice, "general")
    assert alice.take()[-1] == {"type": "current", "room": None}
    assert manager.room_list().rooms == (("general", 0),)
    with pytest.raises(NotInRoom):
        manager.say(alice, "anyone?")


def test_joining_a_room_already_joined_only_makes_it_current(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    clear(alice)
    manager.join(alice, "dev")
    manager.join(alice, "general")
    bob.take()
    assert alice.types() == ["join", "current", "current"]
    manager.say(alice, "back in general")
    assert bob.take()[0]["room"] == "general"


def test_leave_errors(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    manager.join(bob, "dev")
    with pytest.raises(NotInRoom):
        manager.leave(alice, "dev")
    with pytest.raises(NoSuchRoom):
        manager.leave(alice, "nowhere")


def test_room_limit_per_member(manager: RoomManager) -> None:
    alice = member(manager, "alice")
    manager.join(alice, "a")
    manager.join(alice, "b")
    with pytest.raises(TooManyRooms):
        manager.join(alice, "c")
    manager.join(alice, "a")  # already a member: still allowed


def test_direct_message_to_both_sides_only(manager: RoomManager) -> None:
    alice, bob, carol = (member(manager, n) for n in ("alice", "bob", "carol"))
    clear(alice, bob)
    manager.direct(alice, "BOB", "psst")
    dm = {"type": "dm", "id": 1, "ts": 1000.0, "from": "alice", "to": "bob", "text": "psst"}
    assert alice.take() == [dm]
    assert bob.take() == [dm]
    assert carol.take() == []
    with pytest.raises(NoSuchNick):
        manager.direct(alice, "dave", "hello?")


def test_rename_tells_each_room_mate_once(manager: RoomManager) -> None:
    alice, bob, carol = (member(manager, n) for n in ("alice", "bob", "carol"))
    manager.join(alice, "dev")
    manager.join(bob, "dev")
    for m in (alice, bob, carol):
        m.take()
    manager.rename(alice, "alicia")
    change = {"type": "nick", "old": "alice", "new": "alicia"}
    assert alice.take() == [change]
    assert bob.take() == [change]
    assert carol.take() == [change]
    assert manager.find("alice") is None
    assert manager.find("alicia") is alice
    with pytest.raises(NickTaken):
        manager.rename(alice, "BOB")
    manager.rename(alice, "Alicia")  # a change of case only is fine


def test_topic_set_and_shown_on_join(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    manager.join(alice, "dev")
    manager.set_topic(alice, "ship it")
    assert alice.take()[-1] == {
        "type": "topic",
        "room": "dev",
        "topic": "ship it",
        "by": "alice",
        "changed": True,
    }
    manager.join(bob, "dev")
    events = bob.take()
    assert {
        "type": "topic",
        "room": "dev",
        "topic": "ship it",
        "by": "alice",
        "changed": False,
    } in (events)
    assert manager.topic_of(bob).topic == "ship it"


def test_who_lists_members_sorted(manager: RoomManager) -> None:
    for nick in ("carol", "Bob", "alice"):
        member(manager, nick)
    viewer = member(manager, "zed")
    assert manager.who(viewer, None).nicks == ("alice", "Bob", "carol", "zed")
    with pytest.raises(NoSuchRoom):
        manager.who(viewer, "nowhere")


def test_disconnect_tells_rooms_and_frees_the_nick(manager: RoomManager) -> None:
    alice, bob = member(manager, "alice"), member(manager, "bob")
    manager.join(alice, "dev")
    manager.join(bob, "dev")
    clear(alice, bob)
    manager.disconnect(bob, "quit: bye")
    left = [e for e in alice.take() if e["type"] == "leave"]
    assert sorted(e["room"] for e in left) == ["dev", "general"]
    assert all(e["reason"] == "quit: bye" for e in left)
    assert bob.take() == []  # the leaver is not told
    assert manager.find("bob") is None
    manager.register(Inbox(), "bob")  # the nickname is free again


def test_crowded_rooms_announce_joins_and_leaves_only_to_the_member() -> None:
    manager = RoomManager(announce_limit=2)
    ann, bob = member(manager, "ann"), member(manager, "bob")
    clear(ann, bob)
    cat = Inbox()
    manager.register(cat, "cat")  # general now has 3 > 2 members
    assert [e["type"] for e in ann.take()] == []
    assert cat.take()[1] == {"type": "join", "room": "general", "nick": "cat"}
    manager.leave(cat, "general")
    assert ann.take() == []
    assert cat.take()[0] == {"type": "leave", "room": "general", "nick": "cat", "reason": ""}
    # Back under the limit, rooms talk about arrivals again.
    manager.disconnect(bob, "quit")
    assert ann.take() == [{"type": "leave", "room": "general", "nick": "bob", "reason": "quit"}]
    assert manager.who(ann, None).nicks == ("ann",)
