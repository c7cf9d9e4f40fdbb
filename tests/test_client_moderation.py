"""The terminal client's rendering of room moderation and server operators' events.

Pure tests of :func:`chatd.client.render.render_event`: each event type as
the server sends it, the ``who`` list with its role prefixes, the lists that
span several lines, the colours, and malformed events (the server is
untrusted): they render as well as they can and never raise.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.client import render_event
from chatd.client.render import list_lines
from chatd.protocol import (
    BanEntry,
    BanList,
    Kicked,
    LogEntry,
    ModeIs,
    Modes,
    ModLog,
    WhoList,
    event_to_json,
    event_to_text,
)

TS = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()
LATER = datetime(2024, 5, 7, 7, 8, 9, tzinfo=UTC).timestamp()
MODES_OFF = {"i": False, "k": None, "l": None, "m": False, "s": False, "t": False}
#: Any C0 or C1 control character: none may reach the terminal.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def render(event: dict[str, Any]) -> str:
    return render_event(event, colour=False, tz=UTC)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {"type": "kick", "room": "dev", "nick": "bob", "by": "ann", "reason": "spam"},
            "* ann kicked bob from #dev (spam)",
        ),
        (
            {"type": "kick", "room": "dev", "nick": "bob", "by": "ann", "reason": ""},
            "* ann kicked bob from #dev",
        ),
        (
            {"type": "leave", "room": "dev", "nick": "bob", "reason": "kicked by ann: spam"},
            "* bob left #dev (kicked by ann: spam)",
        ),
        (
            {
                "type": "mode",
                "room": "dev",
                "by": "ann",
                "change": "+i-k",
                "modes": MODES_OFF | {"i": True},
                "owner": None,
                "registered": False,
            },
            "* ann set #dev +i-k",
        ),
        (
            {
                "type": "mode",
                "room": "dev",
                "by": None,
                "change": "",
                "modes": MODES_OFF | {"i": True, "k": "hunter2", "l": 20, "t": True},
                "owner": "ann",
                "registered": True,
            },
            "* modes of #dev: +iklt hunter2 20; owner ann",
        ),
        (
            {
                "type": "mode",
                "room": "dev",
                "by": None,
                "change": "",
                "modes": MODES_OFF,
                "owner": None,
                "registered": False,
            },
            "* modes of #dev: none",
        ),
        (
            {"type": "role", "room": "dev", "nick": "bob", "role": "op", "by": "ann"},
            "* bob is now op in #dev (by ann)",
        ),
        (
            {"type": "role", "room": "dev", "nick": "ann", "role": "owner", "by": None},
            "* ann is now owner in #dev",
        ),
        (
            {
                "type": "ban",
                "room": "dev",
                "mask": "nick:bob",
                "by": "ann",
                "reason": "spam",
                "until": TS,
                "duration": 3600,
            },
            "* ann banned bob from #dev for 1h (spam)",
        ),
        (
            {
                "type": "ban",
                "room": "dev",
                "mask": "ip:10.0.0.0/8",
                "by": "ann",
                "reason": "",
                "until": None,
                "duration": None,
            },
            "* ann banned ip:10.0.0.0/8 from #dev",
        ),
        (
            {"type": "unban", "room": "dev", "mask": "account:bob", "by": "ann", "reason": ""},
            "* ann unbanned bob from #dev",
        ),
        (
            {"type": "unban", "room": "dev", "mask": "nick:bob", "by": None, "reason": ""},
            "* the ban on bob in #dev expired",
        ),
        (
            {
                "type": "mute",
                "room": "dev",
                "nick": "bob",
                "by": "ann",
                "until": TS,
                "duration": 600,
            },
            "* ann muted bob in #dev for 10m",
        ),
        (
            {"type": "mute", "room": "dev", "nick": "bob", "by": "ann", "until": None},
            "* ann muted bob in #dev",
        ),
        (
            {"type": "unmute", "room": "dev", "nick": "bob", "by": "ann"},
            "* ann unmuted bob in #dev",
        ),
        (
            {"type": "unmute", "room": "dev", "nick": "bob", "by": None},
            "* bob may speak in #dev again",
        ),
        (
            {"type": "invite", "room": "dev", "from": "ann"},
            "* ann invites you to #dev: /join dev",
        ),
        ({"type": "invited", "room": "dev", "nick": "bob"}, "* invited bob to #dev"),
        (
            {"type": "wall", "from": "root", "text": "restart at noon"},
            "! notice from root: restart at noon",
        ),
        (
            {
                "type": "kline",
                "mask": "account:bob",
                "by": "root",
                "reason": "abuse",
                "until": None,
                "duration": 86400,
            },
            "* root banned bob from the server for 1d (abuse)",
        ),
        (
            {"type": "unkline", "mask": "ip:192.0.2.7", "by": "root"},
            "* root lifted the server ban on ip:192.0.2.7",
        ),
        (
            {"type": "unkline", "mask": "nick:bob", "by": None},
            "* the server ban on bob expired",
        ),
        (
            {"type": "kill", "nick": "bob", "by": "root", "reason": "flooding"},
            "* root disconnected bob (flooding)",
        ),
        (
            {
                "type": "who",
                "room": "dev",
                "nicks": ["ann", "bob", "cat", "dan"],
                "members": [
                    {"nick": "ann", "role": "owner"},
                    {"nick": "bob", "role": "op"},
                    {"nick": "cat", "role": "voice"},
                    {"nick": "dan", "role": "member"},
                ],
            },
            "* in #dev: ~ann, @bob, +cat, dan",
        ),
        # A server that sends no roles: the nicknames, bare.
        ({"type": "who", "room": "dev", "nicks": ["ann"], "members": []}, "* in #dev: ann"),
        (
            {"type": "error", "code": "not_op", "text": "you are not an op in #dev"},
            "! not_op: you are not an op in #dev",
        ),
        (
            {"type": "error", "code": "banned", "text": "you are banned from #dev"},
            "! banned: you are banned from #dev",
        ),
    ],
)
def test_each_moderation_event(event: dict[str, Any], line: str) -> None:
    assert render(event) == line


def test_the_who_list_reads_roles_by_nickname() -> None:
    event = {
        "type": "who",
        "room": "dev",
        "nicks": ["Ann", "bob", "cat"],
        # Out of order, another spelling, and an entry for nobody in the list.
        "members": [
            {"nick": "cat", "role": "voice"},
            {"nick": "ANN", "role": "owner"},
            {"nick": "zed", "role": "op"},
        ],
    }
    assert render(event) == "* in #dev: ~Ann, bob, +cat"


@pytest.mark.parametrize(
    "members",
    [
        "ops",
        None,
        [1, "x", None],
        [{"nick": "ann"}],
        [{"nick": 7, "role": "op"}],
        [{"nick": "ann", "role": ["op"]}],
        [{"nick": "ann", "role": "emperor"}],
    ],
)
def test_malformed_roles_leave_the_nicknames_bare(members: object) -> None:
    event = {"type": "who", "room": "dev", "nicks": ["ann", "bob"], "members": members}
    assert render(event) == "* in #dev: ann, bob"


def test_the_lists_span_several_lines_in_the_local_zone() -> None:
    bans = {
        "type": "bans",
        "room": "dev",
        "bans": [
            {"mask": "nick:bob", "by": "ann", "reason": "spam", "until": LATER, "since": TS},
            {"mask": "ip:10.0.0.0/8", "by": None, "reason": "", "until": None, "since": TS},
        ],
    }
    assert render(bans).split("\n") == [
        "* bans of #dev: 2",
        "  bob by ann until 2024-05-07 07:08 (spam)",
        "  ip:10.0.0.0/8 by server",
    ]
    assert render({"type": "bans", "room": "dev", "bans": []}) == "* bans of #dev: none"

    klines = {
        "type": "klines",
        "klines": [{"mask": "account:eve", "by": "root", "reason": "", "until": None, "since": TS}],
    }
    assert render(klines).split("\n") == ["* server bans (klines): 1", "  eve by root"]
    assert render({"type": "klines", "klines": []}) == "* server bans (klines): none"

    modlog = {
        "type": "modlog",
        "room": "dev",
        "entries": [
            {"ts": TS, "by": "ann", "action": "kick", "target": "bob", "detail": "spam"},
            {"ts": LATER, "by": None, "action": "unban", "target": "bob", "detail": ""},
        ],
    }
    assert render(modlog).split("\n") == [
        "* moderation log of #dev: 2",
        "  2024-05-06 07:08 ann kick bob spam",
        "  2024-05-07 07:08 server unban bob",
    ]
    assert render({"type": "modlog", "room": "dev", "entries": []}) == (
        "* moderation log of #dev: 0"
    )
    # Times are in the zone asked for; local time by default, as messages.
    local = datetime.fromtimestamp(TS).strftime("%Y-%m-%d %H:%M")
    assert f"  {local} ann kick bob spam" in render_event(modlog).split("\n")


def test_the_lists_say_what_the_server_text_says_in_utc() -> None:
    """The client's wording is the server's text mode, times aside (UTC there)."""
    entry = BanEntry("nick:bob", "ann", "spam", LATER, TS)
    bans = BanList("dev", (entry, BanEntry("ip:10.0.0.0/8", None, "", None, TS)))
    server = event_to_text(bans).replace(" UTC", "")
    assert render(event_to_json(bans)) == server
    log = ModLog("dev", (LogEntry(TS, "ann", "kick", "bob", "spam"),))
    assert render(event_to_json(log)) == event_to_text(log)


def test_the_server_events_render_as_the_server_words_them() -> None:
    modes = Modes(invite_only=True, key="k3y", limit=5)
    for event in (
        Kicked("dev", "bob", "ann", "bye"),
        ModeIs("dev", None, "", modes, "ann", True),
        ModeIs("dev", "ann", "+ikl", modes),
        WhoList("dev", ("ann", "bob", "cat"), ("owner", "op", "member")),
    ):
        assert render(event_to_json(event)) == event_to_text(event)


def test_no_field_can_start_a_line_of_its_own() -> None:
    """A list's lines come from the server's entries only: newlines in a field are dropped."""
    bans = {
        "type": "bans",
        "room": "dev\n* fake",
        "bans": [
            {
                "mask": "nick:bob\n  eve by root",
                "by": "ann\r",
                "reason": "a\nb\x1b[2J",
                "until": None,
            }
        ],
    }
    lines = render(bans).split("\n")
    assert lines == ["* bans of #dev* fake: 1", "  bob  eve by root by ann (ab[2J)"]
    for line in lines:
        assert not CONTROL.search(line)


def test_colours_of_the_new_events() -> None:
    kick = {"type": "kick", "room": "dev", "nick": "bob", "by": "ann", "reason": ""}
    assert render_event(kick, colour=True) == "\x1b[2m* ann kicked bob from #dev\x1b[0m"
    wall = {"type": "wall", "from": "root", "text": "hi"}
    # Bold: not dim like the other system lines, not red like an error.
    assert render_event(wall, colour=True) == "\x1b[1m! notice from root: hi\x1b[0m"
    error = {"type": "error", "code": "not_op", "text": "no"}
    assert render_event(error, colour=True) == "\x1b[31m! not_op: no\x1b[0m"
    # A list: each line dim on its own, so no colour runs across a line break.
    bans = {"type": "bans", "room": "dev", "bans": [{"mask": "nick:bob", "by": "ann"}]}
    lines = render_event(bans, colour=True).split("\n")
    assert lines == ["\x1b[2m* bans of #dev: 1\x1b[0m", "\x1b[2m  bob by ann\x1b[0m"]
    assert "\x1b" not in render_event(bans, colour=False)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        # Missing or mistyped fields: shown as they came, cleaned.
        ({"type": "kick", "room": "dev"}, '* kick: {"room": "dev"}'),
        (
            {"type": "mode", "room": "dev", "modes": "+i"},
            '* mode: {"room": "dev", "modes": "+i"}',
        ),
        (
            {"type": "role", "room": "dev", "nick": 5, "role": "op", "by": None},
            '* role: {"room": "dev", "nick": 5, "role": "op", "by": null}',
        ),
        (
            {"type": "ban", "room": "dev", "mask": "bob", "by": "ann", "duration": "1h"},
            '* ban: {"room": "dev", "mask": "bob", "by": "ann", "duration": "1h"}',
        ),
        ({"type": "mute", "room": "dev"}, '* mute: {"room": "dev"}'),
        ({"type": "invite", "room": None}, '* invite: {"room": null}'),
        ({"type": "wall", "text": "x"}, '* wall: {"text": "x"}'),
        ({"type": "kill"}, "* kill: {}"),
        ({"type": "who", "room": "dev", "nicks": "ann"}, '* who: {"room": "dev", "nicks": "ann"}'),
        # A list that is not a list.
        ({"type": "bans", "room": "dev", "bans": {}}, '* bans: {"room": "dev", "bans": {}}'),
        ({"type": "klines"}, "* klines: {}"),
        ({"type": "modlog", "entries": None}, '* modlog: {"entries": null}'),
        # Entries that are not objects are skipped; odd fields are blanks or "?".
        ({"type": "bans", "room": "dev", "bans": [1, None, "x"]}, "* bans of #dev: none"),
        (
            {"type": "klines", "klines": [{"mask": 5, "by": [], "until": "soon"}]},
            "* server bans (klines): 1\n  5 by [] until ?",
        ),
        (
            {"type": "modlog", "room": "dev", "entries": [{"ts": 1e300}, {"ts": "now"}, {}]},
            "* moderation log of #dev: 3\n  ---------- server ?\n"
            "  ---------- server ?\n  ---------- server ?",
        ),
        (
            {"type": "bans", "room": "dev", "bans": [{"until": -1e300}]},
            "* bans of #dev: 1\n  ? by server until ?",
        ),
    ],
)
def test_malformed_events_render_without_raising(event: dict[str, Any], line: str) -> None:
    assert render(event) == line


def test_a_time_out_of_any_calendar_does_not_raise() -> None:
    """A ban's end beyond any date: the line about it does not show it anyway."""
    event = {"type": "ban", "room": "dev", "mask": "bob", "by": "ann", "until": 1e300}
    assert render(event) == "* ann banned bob from #dev"


_KINDS = (
    "kick",
    "mode",
    "role",
    "ban",
    "unban",
    "bans",
    "mute",
    "unmute",
    "invite",
    "invited",
    "wall",
    "modlog",
    "kline",
    "unkline",
    "klines",
    "kill",
    "who",
)
_KEYS = (
    "room",
    "nick",
    "by",
    "reason",
    "change",
    "modes",
    "owner",
    "registered",
    "role",
    "mask",
    "until",
    "duration",
    "bans",
    "from",
    "text",
    "entries",
    "klines",
    "nicks",
    "members",
    "ts",
    "action",
    "target",
    "detail",
    "since",
    "i",
    "k",
    "l",
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=6)
    ),
    max_leaves=20,
)


@given(
    kind=st.sampled_from(_KINDS),
    fields=st.dictionaries(st.sampled_from(_KEYS), _values, max_size=8),
    colour=st.booleans(),
)
def test_any_moderation_event_renders_without_control_characters(
    kind: str, fields: dict[str, Any], colour: bool
) -> None:
    line = render_event({"type": kind, **fields}, colour=colour, tz=UTC)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    for part in plain.split("\n"):
        assert not CONTROL.search(part)
    lines = list_lines({"type": kind, **fields}, tz=UTC)
    if lines is None:
        assert "\n" not in plain
    else:
        assert len(plain.split("\n")) == len(lines)
