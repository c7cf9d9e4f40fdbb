"""The IRC codec's lowest layer as plain function calls: lines to messages
and back, checked against the public ``irc-parser-tests`` vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import parser_tests.data as vectors  # irc-parser-tests, a dev extra
import pytest

from chatd.daemon.ircsession import strip_formatting
from chatd.errors import ALL_CODES, BadMask, ChatError
from chatd.protocol import (
    Bye,
    Current,
    Direct,
    Event,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Notice,
    Pong,
    RoleIs,
    ServerPing,
    TopicIs,
)
from chatd.protocol.irc import (
    MAX_LINE,
    BadMessage,
    IrcMessage,
    escape_tag,
    parse_message,
    render_message,
    split_userhost,
)
from chatd.protocol.ircmap import (
    IrcCodec,
    channel,
    chatd_mask,
    ctcp_action,
    fit,
    irc_mask,
    quit_line,
    room_event,
    room_of,
    split_text,
)
from chatd.protocol.ircreplies import ERROR_NUMERICS, FAIL_CODES, FATAL, error_reply, names

pytestmark = pytest.mark.timeout(30)


def _atoms(message: IrcMessage) -> dict[str, Any]:
    atoms: dict[str, Any] = {"verb": message.verb}
    if message.params:
        atoms["params"] = list(message.params)
    if message.source is not None:
        atoms["source"] = message.source
    if message.tags:
        atoms["tags"] = dict(message.tags)
    return atoms


def _expected(atoms: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in atoms.items() if v is not None}
    if "tags" in out:
        out["tags"] = {k: "" if v is None else v for k, v in out["tags"].items()}
        if not out["tags"]:
            del out["tags"]
    if not out.get("params", True):
        del out["params"]
    return out


@pytest.mark.parametrize("case", vectors.msg_split["tests"], ids=lambda c: str(c["input"])[:40])
def test_lines_split_as_the_vectors_say(case: dict[str, Any]) -> None:
    assert _atoms(parse_message(case["input"])) == _expected(case["atoms"])


@pytest.mark.parametrize(
    "case", vectors.msg_join["tests"], ids=lambda c: str(c.get("desc", ""))[:40]
)
def test_messages_join_as_the_vectors_say(case: dict[str, Any]) -> None:
    atoms = _expected(case["atoms"])
    message = IrcMessage(
        atoms["verb"],
        tuple(atoms.get("params", ())),
        atoms.get("source"),
        atoms.get("tags", {}),
    )
    assert render_message(message) in case["matches"]


@pytest.mark.parametrize(
    "case", vectors.userhost_split["tests"], ids=lambda c: str(c["source"])[:40]
)
def test_sources_split_as_the_vectors_say(case: dict[str, Any]) -> None:
    atoms = case["atoms"]
    assert split_userhost(case["source"]) == (
        atoms.get("nick"),
        atoms.get("user"),
        atoms.get("host"),
    )


def test_a_message_makes_the_round_trip() -> None:
    message = IrcMessage(
        "PRIVMSG",
        ("#dev", "hello there: all"),
        "alice!alice@127.0.0.1",
        {"time": "2026-12-03T21:00:00.000Z", "msgid": "a;b c\\d"},
    )
    line = render_message(message)
    assert line == (
        "@time=2026-12-03T21:00:00.000Z;msgid=a\\:b\\sc\\\\d "
        ":alice!alice@127.0.0.1 PRIVMSG #dev :hello there: all"
    )
    assert parse_message(line) == message
    assert parse_message("privmsg #dev hi").command == "PRIVMSG"
    assert escape_tag("a b;c") == "a\\sb\\:c"


@pytest.mark.parametrize("line", ["", "   ", ":source-only", "@a=b", "@=b PING"])
def test_lines_without_a_command_are_refused(line: str) -> None:
    with pytest.raises(BadMessage):
        parse_message(line)


@pytest.mark.parametrize(
    "params", [("two words", "last"), ("", "last"), (":colon", "last"), ("a\r\nQUIT",)]
)
def test_what_cannot_be_written_is_refused(params: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="IRC"):
        render_message(IrcMessage("PRIVMSG", params))


# -- chatd's events as IRC lines -------------------------------------------------


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            Message(1, 0.0, "dev", "alice", "hi all"),
            ":alice!~alice@chatd/guest PRIVMSG #dev :hi all",
        ),
        (
            Message(2, 0.0, "dev", "alice", "waves", action=True),
            ":alice!~alice@chatd/guest PRIVMSG #dev :\x01ACTION waves\x01",
        ),
        (Direct(3, 0.0, "bob", "alice", "psst"), ":bob!bob@chatd/account PRIVMSG alice psst"),
        (Joined("dev", "bob"), ":bob!bob@chatd/account JOIN #dev"),
        (Left("dev", "bob"), ":bob!bob@chatd/account PART #dev"),
        (Left("dev", "bob", "kicked by alice"), None),  # the KICK said it
        (
            Left("dev", "bob", "banned by alice"),
            ":chatd KICK #dev bob :banned by alice",
        ),
        (Left("dev", "bob", "connection closed"), ":bob!bob@chatd/account QUIT :connection closed"),
        (NickChanged("carol", "caro"), ":carol!~carol@chatd/guest NICK caro"),
        (
            TopicIs("dev", "ship it", "alice", changed=True),
            ":alice!~alice@chatd/guest TOPIC #dev :ship it",
        ),
        (TopicIs("dev", "ship it", "alice"), None),  # an answer: a numeric, not a line
        (Kicked("dev", "bob", "alice", "spam"), ":alice!~alice@chatd/guest KICK #dev bob spam"),
        (Kicked("dev", "bob", "alice"), ":alice!~alice@chatd/guest KICK #dev bob alice"),
        (RoleIs("dev", "bob", "op", "alice"), ":alice!~alice@chatd/guest MODE #dev +o bob"),
        (
            RoleIs("dev", "bob", "member", "alice"),
            ":alice!~alice@chatd/guest MODE #dev -ov bob bob",
        ),
        (
            Notice("root", "restart at noon"),
            ":root!~root@chatd/guest NOTICE $* :[root] restart at noon",
        ),
    ],
)
def test_room_events_become_irc_lines(event: Event, line: str | None) -> None:
    message = room_event(event, registered=lambda nick: nick == "bob")
    assert (render_message(message) if message is not None else None) == line


def test_names_and_actions_cross_over() -> None:
    assert (channel("dev"), room_of("#dev"), room_of("dev"), room_of("#")) == (
        "#dev",
        "dev",
        None,
        None,
    )
    assert ctcp_action("\x01ACTION waves\x01") == "waves"
    assert ctcp_action("\x01VERSION\x01") is None
    assert render_message(quit_line("bob", "")) == ":bob!~bob@chatd/guest QUIT Quit"


# -- one kind of IRC client: IrcCodec --------------------------------------------


def _codec(*caps: str) -> IrcCodec:
    return IrcCodec(frozenset(caps), lambda nick: nick == "bob")


def test_a_plain_client_gets_plain_lines() -> None:
    line = _codec().encode(Message(7, 1764858324.25, "dev", "bob", "hi"))
    assert line == b":bob!bob@chatd/account PRIVMSG #dev :hi\r\n"


def test_tags_follow_the_capabilities() -> None:
    event = Message(7, 1764858324.25, "dev", "bob", "hi")
    tagged = _codec("server-time", "message-tags", "account-tag").encode(event)
    message = parse_message(tagged.decode().rstrip("\r\n"))
    assert dict(message.tags) == {
        "time": "2025-12-04T14:25:24.250Z",
        "msgid": "7",
        "account": "bob",
    }
    guest = _codec("account-tag").encode(Message(8, 0.0, "dev", "ann", "yo"))
    assert guest == b":ann!~ann@chatd/guest PRIVMSG #dev yo\r\n"  # no account: no tag


def test_extended_join_names_the_account() -> None:
    codec = _codec("extended-join")
    assert codec.encode(Joined("dev", "bob")) == b":bob!bob@chatd/account JOIN #dev bob bob\r\n"
    assert codec.encode(Joined("dev", "ann")) == b":ann!~ann@chatd/guest JOIN #dev * ann\r\n"


def test_a_batch_tag_reaches_a_client_without_message_tags() -> None:
    line = _codec("server-time").encode_tagged(
        Message(1, 0.0, "dev", "ann", "old", history=True), {"batch": "h1"}
    )
    assert parse_message(line.decode().rstrip("\r\n")).tags == {
        "batch": "h1",
        "time": "1970-01-01T00:00:00.000Z",
    }


def test_a_long_message_is_split_into_irc_lines() -> None:
    text = "é" * 300 + " " + "x" * 600
    data = _codec().encode(Message(1, 0.0, "dev", "ann", text))
    lines = data.split(b"\r\n")[:-1]
    assert len(lines) > 1
    assert all(len(line) + 2 <= MAX_LINE for line in lines)
    pieces = [parse_message(line.decode()).params[1] for line in lines]
    assert "".join(pieces) == text  # nothing lost, no character cut in two
    action = _codec().encode(Message(2, 0.0, "dev", "ann", "y" * 900, action=True))
    assert all(
        parse_message(line.decode()).params[1].startswith("\x01ACTION ")
        for line in action.split(b"\r\n")[:-1]
    )


def test_answers_have_no_shared_line() -> None:
    codec = _codec()
    assert codec.encode(Pong("t1")) == b":chatd PONG chatd t1\r\n"
    assert codec.encode(ServerPing("3")) == b"PING 3\r\n"
    assert codec.encode(Bye("later")) == b"ERROR :Closing link (later)\r\n"
    assert codec.encode(Current("dev")) == b""  # IRC has no current room
    assert codec.one_quit


@pytest.mark.parametrize(
    ("irc", "chatd", "back"),
    [
        ("bob", "nick:bob", "bob!*@*"),
        ("Bob!*@*", "nick:bob", "bob!*@*"),
        ("$a:alice", "account:alice", "$a:alice"),
        ("*!alice@chatd/account", "account:alice", "$a:alice"),
        ("*!*@10.0.0.7", "ip:10.0.0.7", "*!*@10.0.0.7"),
        ("*!*@10.0.0.0/8", "ip:10.0.0.0/8", "*!*@10.0.0.0/8"),
        ("ip:10.1.2.3", "ip:10.1.2.3", "*!*@10.1.2.3"),
    ],
)
def test_ban_masks_translate_both_ways(irc: str, chatd: str, back: str) -> None:
    mask = chatd_mask(irc)
    assert str(mask) == chatd
    assert irc_mask(str(mask)) == back


@pytest.mark.parametrize("irc", ["*!*@*.example.com", "b*b!*@*", "*!~bob@*", "$x:y"])
def test_masks_chatd_cannot_express_are_refused(irc: str) -> None:
    with pytest.raises(BadMask):
        chatd_mask(irc)


def test_errors_become_their_numerics() -> None:
    def reply(code: str, verb: str = "JOIN", target: str = "#dev") -> str:
        return error_reply(code, "why", "ann", verb, target, "x").decode()

    assert reply("no_such_nick", "PRIVMSG", "bob") == ":chatd 401 ann bob why\r\n"
    assert reply("banned") == ":chatd 474 ann #dev why\r\n"
    assert reply("bad_args", "KICK") == ":chatd 461 ann KICK why\r\n"
    assert reply("bad_mode", "MODE") == ":chatd 472 ann x why\r\n"
    assert reply("not_oper", "KILL") == ":chatd 481 ann why\r\n"
    assert reply("line_too_long") == ":chatd 417 ann why\r\n"
    assert reply("rate_limited") == "ERROR :Closing link: why\r\n"
    assert (
        reply("storage_unavailable", "PRIVMSG")
        == ":chatd FAIL PRIVMSG TEMPORARILY_UNAVAILABLE why\r\n"
    )
    assert reply("room_exists_not_a_code") == ":chatd NOTICE ann why\r\n"


def test_names_fit_irc_lines() -> None:
    nicks = tuple(f"member{i:03d}" for i in range(120))
    roles = ("owner", "op", "voice") + ("member",) * 117
    data = names("ann", "dev", nicks, roles, secret=True).decode()
    lines = data.split("\r\n")[:-1]
    assert all(len(line) + 2 <= MAX_LINE for line in lines)
    assert lines[0].startswith(":chatd 353 ann @ #dev :~member000 @member001 +member002 member003")
    assert lines[-1] == ":chatd 366 ann #dev :End of /NAMES list."
    listed = " ".join(parse_message(line).params[-1] for line in lines[:-1]).split()
    assert len(listed) == 120


def test_formatting_codes_are_stripped() -> None:
    assert strip_formatting("\x02bold\x02 \x0304,12red\x03 \x1dit\x1d\x0f \x04ff0000hex") == (
        "bold red it hex"
    )
    assert strip_formatting("tab\there\x07") == "tab here"
    assert split_text("abc", 10) is not None
    assert fit("ééé", 3) == "é"


def _errors(cls: type[ChatError]) -> set[str]:
    found = set()
    for sub in cls.__subclasses__():
        if "code" in sub.__dict__:
            found.add(sub.code)
        found |= _errors(sub)
    return found


def test_every_error_has_its_irc_form_and_the_protocol_says_it() -> None:
    codes = _errors(ChatError)
    assert codes == set(ALL_CODES), "ALL_CODES lists every error"
    mapped = set(ERROR_NUMERICS) | FATAL | set(FAIL_CODES)
    assert codes - mapped <= {"bad_mask"}, codes - mapped  # bad_mask: 696, by its mode
    text = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    section = text[text.index("### chatd events on IRC") : text.index("### What IRC clients")]
    for code in codes:
        assert f"| `{code}` |" in section, f"PROTOCOL.md: no IRC form for the error {code}"
    for cls in get_args(Event):
        assert f"`{cls.type}`" in section, f"PROTOCOL.md: no IRC form for the event {cls.type}"
