"""The protocol of sessions, read markers, unread counts, mentions and
search: parsing, JSON both ways, text, and the IRC forms. Pure functions,
no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.errors import ALL_CODES, BadArgs, BadNick, BadRoom, ProtocolError
from chatd.protocol import (
    Direct,
    Event,
    Format,
    KickSession,
    ListSessions,
    Logout,
    MarkRead,
    Message,
    Read,
    RoomList,
    Search,
    SearchDone,
    SessionEntry,
    SessionList,
    ShowUnread,
    UnreadEntry,
    UnreadList,
    event_from_json,
    event_to_json,
    event_to_text,
    parse_line,
    render,
)
from chatd.protocol.events import _json_encode
from chatd.protocol.ircmap import IrcCodec
from chatd.protocol.ircreplies import error_reply
from chatd.protocol.mention import named

pytestmark = pytest.mark.timeout(60)

# -- parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"/logout", Logout()),
        (b"/logout --all", Logout(everywhere=True)),
        (b"/sessions", ListSessions()),
        (b"/kick-session s3", KickSession("s3")),
        (b"/KICK-SESSION s12", KickSession("s12")),
        (b"/unread", ShowUnread()),
        (b"/read", MarkRead(None, None)),
        (b"/read 42", MarkRead(None, 42)),
        (b"/read dev", MarkRead("dev", None)),
        (b"/read #dev 42", MarkRead("dev", 42)),
        (b"/read #12", MarkRead("12", None)),
        (b"/read 12 5", MarkRead("12", 5)),
        (b"/read @Bob", MarkRead("@Bob", None)),
        (b"/read @bob 7", MarkRead("@bob", 7)),
        (b"/search hello", Search("hello")),
        (b"/search hello world", Search("hello world")),
        (b"/search #dev deploy 2", Search("deploy", "dev", None, 2)),
        (b"/search @bob lunch before=99", Search("lunch", "@bob", 99, 20)),
        (b"/search a before=3 7", Search("a", None, 3, 7)),
        (b"/search a 7 before=3", Search("a", None, 3, 7)),
        (b"/search error 404 5", Search("error 404", None, None, 5)),
        (b'/search error "404"', Search('error "404"')),
        (b'/search "ship it" OR deplo*', Search('"ship it" OR deplo*')),
        (b"/search 42", Search("42")),
        (b"/search before=5", Search("before=5")),
        (b"/search # @", Search("# @")),
        (b"/search hi 100", Search("hi", count=100)),
    ],
)
def test_parse_the_new_commands(line: bytes, command: object) -> None:
    assert parse_line(line) == command


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"/logout now", BadArgs),
        (b"/logout --ALL please", BadArgs),
        (b"/sessions all", BadArgs),
        (b"/kick-session", BadArgs),
        (b"/kick-session s1 s2", BadArgs),
        (b"/unread dev", BadArgs),
        (b"/read dev 1 2", BadArgs),
        (b"/read 5 dev", BadArgs),
        (b"/read dev x", BadArgs),
        (b"/read dev 1234567890123456789", BadArgs),
        (b"/read ##dev", BadRoom),
        (b"/read bad/room", BadRoom),
        (b"/read @b@d", BadNick),
        (b"/search", BadArgs),
        (b"/search #dev", BadArgs),
        (b"/search ##dev hi", BadRoom),
        (b"/search @b@d hi", BadNick),
        (b"/search hi 0", BadArgs),
        (b"/search hi 101", BadArgs),
        (b"/search error 404", BadArgs),
        (b"/search hi before=x", BadArgs),
        (b"/search hi before=1 before=2", BadArgs),
        (b"/search " + b"x" * 201, BadArgs),
    ],
)
def test_the_new_commands_refuse_bad_arguments(line: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error) as info:
        parse_line(line)
    assert info.value.code in ALL_CODES


def test_search_text_may_be_as_long_as_the_limit() -> None:
    command = parse_line(b"/search " + b"x" * 200)
    assert isinstance(command, Search)
    assert len(command.text) == 200


# -- JSON ------------------------------------------------------------------

SESSIONS = SessionList(
    (
        SessionEntry("s3", "tcp", "127.0.0.1", 1795228179.508, True),
        SessionEntry("s12", "ircs", "::1", 1795228201.0),
    )
)
UNREAD = UnreadList(
    (
        UnreadEntry("general", None, 3, 1, 39),
        UnreadEntry("dev", None, 0, 0, 12),
        UnreadEntry(None, "bob", 2, 0, 0),
    )
)

EVENTS_JSON: list[tuple[Event, dict[str, Any]]] = [
    (
        Message(7, 1.5, "general", "bob", "hi ann", mention=True),
        {
            "type": "message",
            "id": 7,
            "ts": 1.5,
            "room": "general",
            "from": "bob",
            "text": "hi ann",
            "mention": True,
        },
    ),
    (
        Message(8, 2.0, "dev", "bob", "deploy", search=True),
        {
            "type": "message",
            "id": 8,
            "ts": 2.0,
            "room": "dev",
            "from": "bob",
            "text": "deploy",
            "search": True,
        },
    ),
    (
        Message(9, 2.5, "dev", "bob", "waves at ann", True, True, True, True, True),
        {
            "type": "message",
            "id": 9,
            "ts": 2.5,
            "room": "dev",
            "from": "bob",
            "text": "waves at ann",
            "action": True,
            "history": True,
            "notice": True,
            "mention": True,
            "search": True,
        },
    ),
    (
        Direct(10, 3.0, "bob", "ann", "lunch?", search=True),
        {
            "type": "dm",
            "id": 10,
            "ts": 3.0,
            "from": "bob",
            "to": "ann",
            "text": "lunch?",
            "search": True,
        },
    ),
    (
        RoomList((("Dev", 2), ("general", 5), ("ops", 1)), (("dev", 3, 1), ("general", 0, 0))),
        {
            "type": "rooms",
            "rooms": [
                {"name": "Dev", "members": 2, "unread": 3, "mentions": 1},
                {"name": "general", "members": 5, "unread": 0, "mentions": 0},
                {"name": "ops", "members": 1},
            ],
        },
    ),
    (Read("general", None, 42), {"type": "read", "room": "general", "peer": None, "id": 42}),
    (Read(None, "bob", 7), {"type": "read", "room": None, "peer": "bob", "id": 7}),
    (
        UNREAD,
        {
            "type": "unread",
            "conversations": [
                {"room": "general", "peer": None, "unread": 3, "mentions": 1, "last_read": 39},
                {"room": "dev", "peer": None, "unread": 0, "mentions": 0, "last_read": 12},
                {"room": None, "peer": "bob", "unread": 2, "mentions": 0, "last_read": 0},
            ],
        },
    ),
    (UnreadList(()), {"type": "unread", "conversations": []}),
    (
        SESSIONS,
        {
            "type": "sessions",
            "sessions": [
                {
                    "id": "s3",
                    "transport": "tcp",
                    "address": "127.0.0.1",
                    "since": 1795228179.508,
                    "current": True,
                },
                {
                    "id": "s12",
                    "transport": "ircs",
                    "address": "::1",
                    "since": 1795228201.0,
                    "current": False,
                },
            ],
        },
    ),
    (
        SearchDone("deploy", 20, True, 1187),
        {
            "type": "search",
            "query": "deploy",
            "count": 20,
            "more": True,
            "before": 1187,
            "cut": False,
        },
    ),
    (
        SearchDone('"ship it"', 0, False, None, cut=True),
        {
            "type": "search",
            "query": '"ship it"',
            "count": 0,
            "more": False,
            "before": None,
            "cut": True,
        },
    ),
]


@pytest.mark.parametrize(("event", "obj"), EVENTS_JSON)
def test_json_contract(event: Event, obj: dict[str, Any]) -> None:
    data = render(event, Format.JSON)
    assert data.count(b"\n") == 1
    assert data.endswith(b"\n")
    assert json.loads(data) == obj
    assert list(json.loads(data)) == list(obj), "the documented key order"


@pytest.mark.parametrize(("event", "obj"), EVENTS_JSON)
def test_event_from_json_inverts_event_to_json(event: Event, obj: dict[str, Any]) -> None:
    assert event_from_json(obj) == event
    assert event_from_json(event_to_json(event)) == event
    assert event_from_json(json.loads(render(event, Format.JSON))) == event


def test_flags_are_sent_only_when_set() -> None:
    plain = json.loads(render(Message(1, 1.0, "r", "a", "t"), Format.JSON))
    assert "mention" not in plain
    assert "search" not in plain
    dm = json.loads(render(Direct(1, 1.0, "a", "b", "t"), Format.JSON))
    assert "search" not in dm


def test_room_counts_follow_the_room_whatever_its_case() -> None:
    """``unread`` holds name keys; a room shown as ``Dev`` gets the counts of
    ``dev``, and counts for a room not listed are not sent."""
    event = RoomList((("Dev", 2), ("general", 5)), (("dev", 4, 2), ("gone", 1, 0)))
    rooms = event_to_json(event)["rooms"]
    assert rooms == [
        {"name": "Dev", "members": 2, "unread": 4, "mentions": 2},
        {"name": "general", "members": 5},
    ]
    assert event_from_json(event_to_json(event)) == RoomList(event.rooms, (("dev", 4, 2),))
    # A guest's list, or one without counts, is as before.
    bare = RoomList((("dev", 2),))
    assert event_to_json(bare) == {"type": "rooms", "rooms": [{"name": "dev", "members": 2}]}


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "read", "room": "general", "peer": None},
        {"type": "read", "room": "general", "peer": None, "id": "42"},
        {"type": "unread", "conversations": "many"},
        {"type": "unread", "conversations": [{"room": "a", "peer": None}]},
        {"type": "sessions", "sessions": [{"id": "s1", "transport": "tcp", "address": "x"}]},
        {
            "type": "sessions",
            "sessions": [{"id": 1, "transport": "tcp", "address": "x", "since": 1}],
        },
        {"type": "search", "query": "x", "count": True, "more": False, "before": None},
        {"type": "search", "count": 1, "more": False, "before": None},
        {"type": "rooms", "rooms": [{"name": "a", "members": 1, "unread": "3"}]},
    ],
)
def test_event_from_json_refuses_malformed_new_events(obj: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="event"):
        event_from_json(obj)


@given(
    text=st.text(max_size=60),
    room=st.text(min_size=1, max_size=10),
    sender=st.text(min_size=1, max_size=10),
    msg_id=st.integers(min_value=0, max_value=2**53),
    ts=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    flags=st.tuples(*[st.booleans()] * 5),
)
def test_the_fast_message_rendering_is_the_generic_one_whatever_the_flags(
    text: str,
    room: str,
    sender: str,
    msg_id: int,
    ts: float,
    flags: tuple[bool, bool, bool, bool, bool],
) -> None:
    """Room messages skip the dict and the generic encoder: the same bytes,
    and the same event back, with any marks."""
    message = Message(msg_id, ts, room, sender, text, *flags)
    generic = _json_encode(event_to_json(message)).encode() + b"\n"
    assert render(message, Format.JSON) == generic
    assert event_from_json(json.loads(generic)) == message
    assert render(message, Format.TEXT) == event_to_text(message).encode() + b"\n"


# -- text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (Message(1, 0.0, "general", "alice", "hi bob", mention=True), "![general] alice: hi bob"),
        (
            Message(1, 0.0, "general", "alice", "waves at bob", action=True, mention=True),
            "![general] * alice waves at bob",
        ),
        (
            Message(1, 0.0, "general", "alice", "bob?", notice=True, mention=True),
            "![general] -alice- bob?",
        ),
        (
            Message(1, 86400.0, "general", "alice", "hi bob", history=True, mention=True),
            "1970-01-02 00:00 ![general] alice: hi bob",
        ),
        (
            Message(1, 86400.0, "dev", "alice", "deploy", search=True),
            "found 1970-01-02 00:00 [dev] alice: deploy",
        ),
        (
            Message(1, 86400.0, "dev", "alice", "deploy", history=True, search=True),
            "found 1970-01-02 00:00 [dev] alice: deploy",
        ),
        (
            Direct(1, 60.0, "bob", "ann", "lunch?", search=True),
            "found 1970-01-01 00:01 [bob -> ann] lunch?",
        ),
        (Direct(1, 60.0, "bob", "ann", "lunch?", notice=True), "[bob -> ann] lunch?"),
        (
            RoomList((("dev", 1), ("General", 4)), (("general", 3, 1),)),
            "* rooms: #dev (1), #General (4, 3 unread, 1 mention)",
        ),
        (
            RoomList((("dev", 1), ("general", 4)), (("dev", 5, 2), ("general", 0, 0))),
            "* rooms: #dev (1, 5 unread, 2 mentions), #general (4)",
        ),
        (RoomList((), (("dev", 1, 0),)), "* rooms: none"),
        (Read("general", None, 42), "* read #general up to 42"),
        (Read(None, "bob", 42), "* read @bob up to 42"),
        (UNREAD, "* unread: #general 3 (1 mention), @bob 2"),
        (
            UnreadList((UnreadEntry(None, "bob", 1000, 2, 0),)),
            "* unread: @bob 1000 (2 mentions)",
        ),
        (UnreadList((UnreadEntry("dev", None, 0, 0, 9),)), "* unread: nothing"),
        (UnreadList(()), "* unread: nothing"),
        (
            SESSIONS,
            "* sessions of your account: 2\n"
            "  s3   tcp   127.0.0.1  since 2026-11-21 02:29:39 UTC (this one)\n"
            "  s12  ircs  ::1        since 2026-11-21 02:30:01 UTC",
        ),
        (SessionList(()), "* sessions of your account: none"),
        (SearchDone("hello", 3, False, None), '* search "hello": 3 found'),
        (SearchDone("hello", 0, False, None), '* search "hello": nothing found'),
        (
            SearchDone("deploy", 20, True, 1187),
            '* search "deploy": 20 found; more: repeat it with before=1187',
        ),
        (
            SearchDone("deploy", 4, False, None, cut=True),
            '* search "deploy": 4 found (cut short: the search took too long)',
        ),
        (
            SearchDone("deploy", 4, True, 77, cut=True),
            '* search "deploy": 4 found (cut short: the search took too long);'
            " more: repeat it with before=77",
        ),
    ],
)
def test_text_rendering(event: Event, text: str) -> None:
    assert render(event, Format.TEXT) == text.encode() + b"\n"


_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-.", min_size=1, max_size=12)


@given(room=_NAMES, sender=_NAMES, text=st.text(max_size=40), action=st.booleans())
def test_only_a_mention_starts_with_its_mark(
    room: str, sender: str, text: str, action: bool
) -> None:
    """No sender can make a line look like a mention: the mark is before the
    ``[``, where only the server writes."""
    plain = event_to_text(Message(1, 0.0, room, sender, "!" + text, action))
    assert plain.startswith("[")
    marked = event_to_text(Message(1, 0.0, room, sender, text, action, mention=True))
    assert marked.startswith("![")
    assert marked[1:] == event_to_text(Message(1, 0.0, room, sender, text, action))


# -- IRC -------------------------------------------------------------------


def test_the_new_errors_have_their_irc_forms() -> None:
    def reply(code: str, verb: str) -> str:
        return error_reply(code, "why", "ann", verb, "", "").decode()

    assert reply("bad_query", "PRIVMSG") == ":chatd FAIL PRIVMSG INVALID_PARAMS why\r\n"
    assert reply("too_many_sessions", "PASS") == ":chatd 464 ann why\r\n"


@pytest.mark.parametrize("caps", [frozenset(), frozenset({"server-time", "message-tags"})])
def test_irc_readers_get_no_line_for_markers_counts_sessions_or_search(
    caps: frozenset[str],
) -> None:
    codec = IrcCodec(caps, lambda nick: False)
    for event in (Read("general", None, 4), UNREAD, SESSIONS, SearchDone("x", 0, False, None)):
        assert codec.encode(event) == b""
    live = Message(5, 1.0, "general", "bob", "hi ann")
    assert codec.encode(Message(5, 1.0, "general", "bob", "hi ann", mention=True)) == (
        codec.encode(live)
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("hey @Bob, and bobby", {"bob"}),
        ("bob.", {"bob"}),
        ("ask bob.smith or Bob...", {"bob", "bob.smith"}),
        ("ALICE: x", {"alice", "x"}),
        ("nobody here", set()),
        ("a.b. a.b", {"a.b", "a.b."}),
    ],
)
def test_looking_names_up_finds_the_words_that_are_names(text: str, found: set[str]) -> None:
    names = {key: key for key in ("bob", "alice", "a.b", "a.b.", "bob.smith", "x")}
    assert set(named(text, names)) == found
