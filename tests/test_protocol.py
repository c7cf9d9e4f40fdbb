"""The pure protocol layer: framing, parsing and rendering, no sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.errors import (
    ALL_CODES,
    BadArgs,
    BadEncoding,
    BadNick,
    BadRoom,
    ChatError,
    LineTooLong,
    ProtocolError,
    UnknownCommand,
)
from chatd.protocol import (
    Answer,
    Create,
    Current,
    Direct,
    Error,
    Format,
    FormatIs,
    Help,
    HelpText,
    History,
    Join,
    Joined,
    KeepAlive,
    KeepAliveIs,
    Leave,
    Left,
    LineFramer,
    ListRooms,
    LoggedOut,
    Login,
    Logout,
    Me,
    Message,
    Msg,
    Nick,
    NickChanged,
    Passwd,
    PasswordChanged,
    Ping,
    Pong,
    Quit,
    Register,
    Registered,
    RoomChanged,
    RoomList,
    Say,
    ServerPing,
    SetFormat,
    ShowHistory,
    Shutdown,
    Topic,
    TopicIs,
    Welcome,
    Who,
    WhoList,
    clean_text,
    event_from_json,
    event_to_json,
    parse_line,
    render,
)

# -- framing ---------------------------------------------------------------


def feed_all(framer: LineFramer, *chunks: bytes) -> list[bytes | str]:
    """Feed chunks; errors become their wire code so results compare easily."""
    out: list[bytes | str] = []
    for chunk in chunks:
        out.extend(
            item.code if isinstance(item, ChatError) else item for item in framer.feed(chunk)
        )
    return out


def test_lf_and_crlf_terminate_lines() -> None:
    assert feed_all(LineFramer(100), b"one\ntwo\r\nthree") == [b"one", b"two"]


def test_partial_line_completes_across_chunks() -> None:
    framer = LineFramer(100)
    assert feed_all(framer, b"hel", b"lo", b"\r", b"\nnext\n") == [b"hello", b"next"]


def test_line_at_the_limit_is_accepted_with_either_terminator() -> None:
    exact = b"x" * 10
    assert feed_all(LineFramer(10), exact + b"\n", exact + b"\r\n") == [exact, exact]
    # Split so the \r arrives before its \n.
    assert feed_all(LineFramer(10), exact + b"\r", b"\n") == [exact]


def test_over_long_line_reports_once_and_discards_its_tail() -> None:
    framer = LineFramer(10)
    out = feed_all(framer, b"a" * 25, b"b" * 30, b"/quit tail\n/ping ok\n")
    assert out == ["line_too_long", b"/ping ok"]
    assert framer.buffered == 0


def test_over_long_complete_line_in_one_chunk() -> None:
    assert feed_all(LineFramer(4), b"hello world\nok\n") == ["line_too_long", b"ok"]


def test_ten_megabytes_without_newline_keep_memory_bounded() -> None:
    framer = LineFramer(4096)
    errors = 0
    for _ in range(160):
        for item in framer.feed(b"z" * 65536):
            assert isinstance(item, LineTooLong)
            errors += 1
        assert framer.buffered <= 4097
    assert errors == 1
    assert feed_all(framer, b"tail\nhello\n") == [b"hello"]


def test_a_last_line_without_newline_is_kept_at_end_of_input() -> None:
    framer = LineFramer(10)
    assert feed_all(framer, b"one\ntwo\r") == [b"one"]
    assert framer.finish() == [b"two"]
    assert framer.finish() == []
    # ...unless it was already reported as too long.
    framer.feed(b"x" * 20)
    assert framer.finish() == []


def test_telnet_negotiation_is_stripped() -> None:
    iac = b"\xff"
    will_echo = iac + b"\xfb\x01"
    subneg = iac + b"\xfa\x18\x01some terminal" + iac + b"\xf0"
    data = will_echo + b"hel" + subneg + b"lo" + iac + b"\xf1" + b"\r\n"
    assert feed_all(LineFramer(100), data) == [b"hello"]


def test_telnet_sequence_split_across_chunks() -> None:
    framer = LineFramer(100)
    assert feed_all(framer, b"ab\xff", b"\xfd", b"\x03cd\xff\xfa", b"xx\xff", b"\xf0ef\n") == [
        b"abcdef"
    ]


lines_st = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\xff", b"")),
    max_size=20,
)


@given(lines=lines_st, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_any_split_of_the_stream_frames_the_same(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    whole = feed_all(LineFramer(24), stream)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_all(LineFramer(24), *pieces) == whole
    # Each input line gives exactly one item: itself (without \r) or one error.
    assert len(whole) == len(lines)
    for line, item in zip(lines, whole, strict=True):
        bare = line[:-1] if line.endswith(b"\r") else line
        assert item == (bare if len(bare) <= 24 else "line_too_long")


# -- parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"hello world", Say("hello world")),
        (b"//etc is a path", Say("/etc is a path")),
        (b"/nick alice", Nick("alice")),
        (b"/NICK Alice", Nick("Alice")),
        (b"/create #dev", Create("dev")),
        (b"/join dev", Join("dev")),
        (b"/join #Dev.Team", Join("Dev.Team")),
        (b"/leave", Leave(None)),
        (b"/leave #dev", Leave("dev")),
        (b"/rooms", ListRooms()),
        (b"/rooms watch", ListRooms(watch=True)),
        (b"/ROOMS Unwatch", ListRooms(watch=False)),
        (b"/who", Who(None)),
        (b"/who general", Who("general")),
        (b"/msg bob hi there", Msg("bob", "hi there")),
        (b"/me waves", Me("waves")),
        (b"/topic", Topic(None)),
        (b"/topic Release  planning", Topic("Release  planning")),
        (b"/format json", SetFormat(Format.JSON)),
        (b"/format TEXT", SetFormat(Format.TEXT)),
        (b"/ping", Ping("")),
        (b"/ping 42", Ping("42")),
        (b"/ping every 30", KeepAlive(30)),
        (b"/PING EVERY 0.5", KeepAlive(0.5)),
        (b"/ping every 0", KeepAlive(0)),
        (b"/ping everyone", Ping("everyone")),
        (b"/pong 7", Answer("7")),
        (b"/help", Help()),
        (b"/quit", Quit("")),
        (b"/quit gone fishing", Quit("gone fishing")),
        ("caf\u00e9 \u2615".encode(), Say("caf\u00e9 \u2615")),
        (b"/register s3cret-pw", Register("s3cret-pw")),
        (b"/login Alice s3cret-pw", Login("Alice", "s3cret-pw")),
        (b"/logout", Logout()),
        (b"/passwd old new-pass1", Passwd("old", "new-pass1")),
        (b"/history", ShowHistory(None, 20, None)),
        (b"/history dev", ShowHistory("dev", 20, None)),
        (b"/history #dev 50 before=1234", ShowHistory("dev", 50, 1234)),
        (b"/history 1000", ShowHistory(None, 1000, None)),
        (b"/history @bob 5", ShowHistory("@bob", 5, None)),
        (b"/history before=7", ShowHistory(None, 20, 7)),
    ],
)
def test_parse_line(line: bytes, command: object) -> None:
    assert parse_line(line) == command


@pytest.mark.parametrize("line", [b"", b"   ", b"\t", b"\x00\x07"])
def test_blank_lines_are_ignored(line: bytes) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"/frobnicate", UnknownCommand),
        (b"/", UnknownCommand),
        (b"/nick", BadArgs),
        (b"/nick two words", BadArgs),
        (b"/nick bad!name", BadNick),
        (b"/nick " + b"x" * 65, BadNick),
        (b"/nick \xc3\xa9t\xc3\xa9", BadNick),
        (b"/join", BadArgs),
        (b"/join #", BadRoom),
        (b"/join ##dev", BadRoom),
        (b"/create room/x", BadRoom),
        (b"/msg bob", BadArgs),
        (b"/msg", BadArgs),
        (b"/msg b@d hi", BadNick),
        (b"/me", BadArgs),
        (b"/format xml", BadArgs),
        (b"/rooms all", BadArgs),
        (b"\xc3\x28", BadEncoding),
        (b"ok \xed\xa0\x80 surrogate", BadEncoding),
        (b"\xc0\xaf overlong slash", BadEncoding),
        (b"/register", BadArgs),
        (b"/register short", BadArgs),
        (b"/register two words!", BadArgs),
        (b"/login alice", BadArgs),
        (b"/login b@d password1", BadNick),
        (b"/passwd onlyone", BadArgs),
        (b"/passwd old short", BadArgs),
        (b"/history 1001", BadArgs),
        (b"/history 0", BadArgs),
        (b"/history dev before=x", BadArgs),
        (b"/history dev 5 extra", BadArgs),
        (b"/history @b@d", BadNick),
        (b"/ping every", BadArgs),
        (b"/ping every soon", BadArgs),
        (b"/ping every 3601", BadArgs),
        (b"/ping every -1", BadArgs),
        (b"/ping every nan", BadArgs),
    ],
)
def test_parse_errors_carry_wire_codes(line: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error) as info:
        parse_line(line)
    assert info.value.code in ALL_CODES


def test_control_characters_never_reach_others() -> None:
    raw = "a\rb\x00c\x1b[31mred\u009b\tend\u007f".encode()
    assert parse_line(raw) == Say("abc[31mred end")
    assert clean_text("fine") == "fine"


@given(st.binary(max_size=200))
def test_parse_line_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        command = parse_line(raw)
    except ProtocolError:
        return
    for value in (getattr(command, f) for f in getattr(command, "__slots__", ())):
        if isinstance(value, str):
            assert not any(ch in value for ch in "\r\n\0\x1b")


# -- rendering -------------------------------------------------------------

EVENTS_JSON = [
    (Welcome("chatd", "1.0"), {"type": "welcome", "server": "chatd", "version": "1.0"}),
    (Registered("alice"), {"type": "registered", "nick": "alice", "account": False}),
    (Registered("bob", True), {"type": "registered", "nick": "bob", "account": True}),
    (
        Message(7, 1.5, "general", "bob", "hi"),
        {"type": "message", "id": 7, "ts": 1.5, "room": "general", "from": "bob", "text": "hi"},
    ),
    (
        Message(8, 2.0, "dev", "bob", "waves", action=True),
        {
            "type": "message",
            "id": 8,
            "ts": 2.0,
            "room": "dev",
            "from": "bob",
            "text": "waves",
            "action": True,
        },
    ),
    (
        Direct(9, 3.0, "bob", "alice", "psst"),
        {"type": "dm", "id": 9, "ts": 3.0, "from": "bob", "to": "alice", "text": "psst"},
    ),
    (Joined("dev", "bob"), {"type": "join", "room": "dev", "nick": "bob"}),
    (Left("dev", "bob", "quit"), {"type": "leave", "room": "dev", "nick": "bob", "reason": "quit"}),
    (Current("dev"), {"type": "current", "room": "dev"}),
    (Current(None), {"type": "current", "room": None}),
    (NickChanged("bob", "rob"), {"type": "nick", "old": "bob", "new": "rob"}),
    (
        TopicIs("dev", "ship it", "bob", changed=True),
        {"type": "topic", "room": "dev", "topic": "ship it", "by": "bob", "changed": True},
    ),
    (
        RoomList((("dev", 2), ("general", 5))),
        {
            "type": "rooms",
            "rooms": [{"name": "dev", "members": 2}, {"name": "general", "members": 5}],
        },
    ),
    (
        RoomChanged("dev", "created", 1),
        {"type": "room", "room": "dev", "event": "created", "members": 1},
    ),
    (
        RoomChanged("dev", "removed", 0),
        {"type": "room", "room": "dev", "event": "removed", "members": 0},
    ),
    (
        WhoList("dev", ("alice", "bob"), ("op", "member")),
        {
            "type": "who",
            "room": "dev",
            "nicks": ["alice", "bob"],
            "members": [{"nick": "alice", "role": "op"}, {"nick": "bob", "role": "member"}],
        },
    ),
    (Pong("x"), {"type": "pong", "token": "x"}),
    (KeepAliveIs(30), {"type": "keepalive", "interval": 30}),
    (KeepAliveIs(0.5), {"type": "keepalive", "interval": 0.5}),
    (ServerPing("7"), {"type": "ping", "token": "7"}),
    (FormatIs(Format.JSON), {"type": "format", "format": "json"}),
    (Error("nick_taken", "taken"), {"type": "error", "code": "nick_taken", "text": "taken"}),
    (Shutdown("bye all"), {"type": "shutdown", "reason": "bye all"}),
    (
        Message(10, 4.0, "dev", "bob", "old", history=True),
        {
            "type": "message",
            "id": 10,
            "ts": 4.0,
            "room": "dev",
            "from": "bob",
            "text": "old",
            "history": True,
        },
    ),
    (
        Direct(11, 5.0, "bob", "alice", "old psst", history=True),
        {
            "type": "dm",
            "id": 11,
            "ts": 5.0,
            "from": "bob",
            "to": "alice",
            "text": "old psst",
            "history": True,
        },
    ),
    (
        History("dev", None, 20, True, 10),
        {"type": "history", "room": "dev", "peer": None, "count": 20, "more": True, "before": 10},
    ),
    (
        History(None, "bob", 1, False, None),
        {"type": "history", "room": None, "peer": "bob", "count": 1, "more": False, "before": None},
    ),
    (LoggedOut("alice"), {"type": "logout", "nick": "alice"}),
    (PasswordChanged("alice"), {"type": "passwd", "nick": "alice"}),
]


@pytest.mark.parametrize(("event", "obj"), EVENTS_JSON)
def test_json_contract(event: object, obj: dict[str, object]) -> None:
    data = render(event, Format.JSON)  # type: ignore[arg-type]
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    assert json.loads(data) == obj


@pytest.mark.parametrize(("event", "obj"), EVENTS_JSON)
def test_event_from_json_inverts_event_to_json(event: object, obj: dict[str, object]) -> None:
    assert event_from_json(obj) == event
    assert event_from_json(json.loads(render(event, Format.JSON))) == event  # type: ignore[arg-type]


def test_event_from_json_round_trips_help() -> None:
    assert event_from_json(json.loads(render(HelpText(), Format.JSON))) == HelpText()


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"type": "surprise"},
        {"type": "join", "room": "dev"},
        {"type": "join", "room": "dev", "nick": 7},
        {"type": "message", "id": "1", "ts": 1.0, "room": "r", "from": "a", "text": "t"},
        {"type": "message", "id": True, "ts": 1.0, "room": "r", "from": "a", "text": "t"},
        {"type": "rooms", "rooms": "lots"},
        {"type": "rooms", "rooms": [{"name": "a"}]},
        {"type": "who", "room": "r", "nicks": None},
        {"type": "format", "format": "xml"},
    ],
)
def test_event_from_json_refuses_malformed_objects(obj: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="event"):
        event_from_json(obj)


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (Message(1, 0.0, "general", "bob", "hi"), "[general] bob: hi"),
        (Message(1, 0.0, "general", "bob", "waves", action=True), "[general] * bob waves"),
        (Direct(1, 0.0, "bob", "alice", "psst"), "[bob -> alice] psst"),
        (Joined("dev", "alice"), "* alice joined #dev"),
        (Left("dev", "alice", ""), "* alice left #dev"),
        (Left("dev", "alice", "quit: bye"), "* alice left #dev (quit: bye)"),
        (NickChanged("a", "b"), "* a is now known as b"),
        (TopicIs("dev", "", None), "* #dev has no topic"),
        (TopicIs("dev", "plans", "bob", changed=True), "* bob set the topic of #dev: plans"),
        (TopicIs("dev", "plans", "bob"), "* topic of #dev: plans (set by bob)"),
        (RoomList((("dev", 1), ("general", 3))), "* rooms: #dev (1), #general (3)"),
        (WhoList("dev", ("a", "b")), "* in #dev: a, b"),
        (RoomChanged("dev", "created", 1), "* room #dev created (1 member)"),
        (RoomChanged("dev", "created", 3), "* room #dev created (3 members)"),
        (RoomChanged("dev", "removed", 0), "* room #dev removed"),
        (Error("nick_taken", "nickname bob is taken"), "! nick_taken: nickname bob is taken"),
        (Pong(""), "* pong"),
        (KeepAliveIs(30), "* you will be pinged after 30 s of silence; answer /pong TOKEN"),
        (KeepAliveIs(0), "* keepalive pings off"),
        (ServerPing("7"), "* ping 7: answer /pong 7"),
        (Shutdown("server shutting down"), "! shutdown: server shutting down"),
        (Registered("ann", True), "* you are ann (logged in)"),
        (
            Message(1, 86400.0, "general", "bob", "old", history=True),
            "1970-01-02 00:00 [general] bob: old",
        ),
        (Direct(1, 60.0, "bob", "ann", "p", history=True), "1970-01-01 00:01 [bob -> ann] p"),
        (
            History("dev", None, 20, True, 31),
            "* 20 earlier messages of #dev; more: /history #dev 20 before=31",
        ),
        (History(None, "bob", 1, False, None), "* 1 earlier message of you and bob"),
        (PasswordChanged("ann"), "* password of ann changed"),
    ],
)
def test_text_rendering(event: object, text: str) -> None:
    assert render(event, Format.TEXT) == text.encode() + b"\n"  # type: ignore[arg-type]


def test_help_lists_every_command_in_both_formats() -> None:
    text = render(HelpText(), Format.TEXT).decode()
    obj = json.loads(render(HelpText(), Format.JSON))
    usages = [c["usage"] for c in obj["commands"]]
    for name in ("nick", "create", "join", "leave", "rooms", "who", "msg", "me", "topic"):
        assert any(u.startswith(f"/{name} ") or u == f"/{name}" for u in usages), name
        assert f"/{name}" in text
    for name in ("format", "ping", "help", "quit"):
        assert any(u.split()[0] == f"/{name}" for u in usages), name


def test_json_text_is_one_line_even_with_odd_characters() -> None:
    data = render(Message(1, 0.0, "r", "n", 'line\u2028sep "quoted" \\ caf\u00e9'), Format.JSON)
    assert data.count(b"\n") == 1
    assert json.loads(data)["text"] == 'line\u2028sep "quoted" \\ caf\u00e9'


@given(
    text=st.text(max_size=60),
    room=st.text(min_size=1, max_size=10),
    sender=st.text(min_size=1, max_size=10),
    msg_id=st.integers(min_value=0, max_value=2**53),
    ts=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    action=st.booleans(),
)
def test_the_fast_message_rendering_is_the_generic_one(
    text: str, room: str, sender: str, msg_id: int, ts: float, action: bool
) -> None:
    """Room messages skip the dict and the generic encoder: same bytes."""
    from chatd.protocol import _json_encode

    message = Message(msg_id, ts, room, sender, text, action)
    generic = _json_encode(event_to_json(message)).encode() + b"\n"
    assert render(message, Format.JSON) == generic
