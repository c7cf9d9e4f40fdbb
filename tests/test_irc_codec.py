"""The IRC codec's lowest layer as plain function calls: lines to messages
and back, checked against the public ``irc-parser-tests`` vectors."""

from __future__ import annotations

from typing import Any

import parser_tests.data as vectors  # irc-parser-tests, a dev extra
import pytest

from chatd.protocol import (
    Direct,
    Event,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Notice,
    RoleIs,
    TopicIs,
)
from chatd.protocol.irc import (
    BadMessage,
    IrcMessage,
    escape_tag,
    parse_message,
    render_message,
    split_userhost,
)
from chatd.protocol.ircmap import channel, ctcp_action, quit_line, room_event, room_of

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
        (
            Left("dev", "bob", "kicked by alice"),
            ":bob!bob@chatd/account PART #dev :kicked by alice",
        ),
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
            ":root!~root@chatd/guest NOTICE * :[root] restart at noon",
        ),
    ],
)
def test_room_events_become_irc_lines(event: Event, line: str | None) -> None:
    message = room_event(event, accounts=frozenset({"bob"}))
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
