"""The values of moderation as plain function calls: masks, durations,
mode changes, and a room's rules as one document."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.core.rules import BanRecord, Grant, MuteRecord, RoomRules
from chatd.errors import BadArgs, BadMask, BadMode, ProtocolError
from chatd.protocol import (
    Ban,
    Join,
    Kick,
    Mask,
    Mode,
    ModeChange,
    Modes,
    Role,
    SetRole,
    apply_modes,
    format_duration,
    parse_duration,
    parse_line,
    parse_mask,
    parse_mode_changes,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("text", "mask"),
    [
        ("Bob", Mask("nick", "bob")),
        ("nick:Bob", Mask("nick", "bob")),
        ("account:Alice", Mask("account", "alice")),
        ("ip:10.0.0.7", Mask("ip", "10.0.0.7")),
        ("ip:10.0.0.7/32", Mask("ip", "10.0.0.7")),
        ("ip:10.1.2.3/8", Mask("ip", "10.0.0.0/8")),
        ("ip:2001:db8::1/48", Mask("ip", "2001:db8::/48")),
        ("IP:[::1]", Mask("ip", "::1")),
    ],
)
def test_masks_have_one_canonical_form(text: str, mask: Mask) -> None:
    assert parse_mask(text) == mask


@pytest.mark.parametrize("text", ["", "host:x", "ip:300.1.1.1", "ip:10.0.0.0/33", "a b", "nick:"])
def test_bad_masks(text: str) -> None:
    with pytest.raises(BadMask):
        parse_mask(text)


def test_masks_match_accounts_nicks_and_addresses() -> None:
    assert parse_mask("account:alice").matches("Alice", "alice", "1.2.3.4")
    assert not parse_mask("account:alice").matches(None, "alice", "1.2.3.4")  # a guest
    assert parse_mask("bob").matches(None, "BOB", "1.2.3.4")
    assert parse_mask("ip:10.0.0.0/8").matches(None, None, "10.200.3.4")
    assert parse_mask("ip:10.0.0.7").matches(None, None, "::ffff:10.0.0.7")
    assert not parse_mask("ip:10.0.0.0/8").matches(None, None, "11.0.0.1")
    assert not parse_mask("ip:::1").matches(None, None, "127.0.0.1")
    assert not parse_mask("ip:10.0.0.1").matches(None, None, "not an address")


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        ("30s", 30, "30s"),
        ("10m", 600, "10m"),
        ("2H", 7200, "2h"),
        ("7d", 604800, "7d"),
        ("90s", 90, "90s"),
        ("120s", 120, "2m"),
    ],
)
def test_durations(text: str, seconds: int, shown: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == shown


@pytest.mark.parametrize("text", ["0s", "10", "1w", "366d", "-1m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadArgs):
        parse_duration(text)


def test_mode_changes_read_as_irc_writes_them() -> None:
    assert parse_mode_changes(["+kl", "door", "20", "-m"]) == (
        ModeChange("+", "k", "door"),
        ModeChange("+", "l", "20"),
        ModeChange("-", "m"),
    )
    assert parse_mode_changes(["-k+i"]) == (ModeChange("-", "k"), ModeChange("+", "i"))
    modes = apply_modes(Modes(topic_ops=True), parse_mode_changes(["+iskl", "k", "5"]))
    assert modes == Modes(True, False, True, True, "k", 5)
    assert modes.flags() == "+iklst"


@pytest.mark.parametrize(
    "words",
    [["+x"], ["+k"], ["+l", "many"], ["+l", "0"], ["door"], ["+i", "extra"], ["+"], ["+k", "a b"]],
)
def test_bad_mode_changes(words: list[str]) -> None:
    with pytest.raises(BadMode):
        parse_mode_changes(words)


def test_moderation_commands_parse() -> None:
    assert parse_line(b"/join dev door") == Join("dev", "door")
    assert parse_line(b"/kick bob go away") == Kick("bob", "go away")
    assert parse_line(b"/ban bob 1h spam links") == Ban(Mask("nick", "bob"), 3600, "spam links")
    assert parse_line(b"/ban ip:10.0.0.1 flooding") == Ban(Mask("ip", "10.0.0.1"), None, "flooding")
    assert parse_line(b"/deop bob") == SetRole("bob", Role.OP, False)
    assert parse_line(b"/mode #dev") == Mode("dev", ())
    assert parse_line(b"/mode +m") == Mode(None, (ModeChange("+", "m"),))


@given(st.lists(st.text(max_size=8), max_size=6))
def test_any_mode_line_parses_or_is_a_protocol_error(words: list[str]) -> None:
    try:
        changes = parse_mode_changes([w for w in words if w])
    except ProtocolError as exc:
        assert exc.code == "bad_mode", exc  # noqa: PT017 (the code is the contract)
    else:
        assert changes
        assert all(c.flag in "iklmst" and c.sign in "+-" for c in changes)
        assert all((c.arg is not None) == (c.sign == "+" and c.flag in "kl") for c in changes)


def test_a_rooms_rules_are_one_document() -> None:
    rules = RoomRules(
        registered=True,
        owner=(7, "alice"),
        modes=Modes(invite_only=True, key="door", limit=9),
        roles={"a:8": Grant("bob", Role.OP), "n:carol": Grant("carol", Role.VOICE)},
        bans=[BanRecord(parse_mask("ip:10.0.0.0/8"), "alice", "botnet", 99.5, 1.0)],
        mutes={"a:9": MuteRecord("dave", "alice", None)},
        invites={"n:eve": 123.0},
    )
    assert RoomRules.load(rules.dump()) == rules
    kept = RoomRules.load(rules.dump()).restarted()
    assert list(kept.roles) == ["a:8"]  # a guest's role and invitations do not outlive it
    assert kept.invites == {}
    with pytest.raises(ValueError, match="rules"):
        RoomRules.load('{"roles": {"x": 5}}')


def test_expiry_drops_what_ran_out() -> None:
    rules = RoomRules(
        bans=[
            BanRecord(parse_mask("a"), "x", "", 10.0, 0.0),
            BanRecord(parse_mask("b"), "x", "", None, 0.0),
        ],
        mutes={"n:c": MuteRecord("c", "x", 5.0)},
        invites={"n:d": 1.0},
    )
    bans, mutes = rules.expire(10.0)
    assert [str(b.mask) for b in bans] == ["nick:a"]
    assert [m.name for m in mutes] == ["c"]
    assert [str(b.mask) for b in rules.bans] == ["nick:b"]
    assert rules.invites == {}


@pytest.mark.parametrize("line", ["/mode +l ²", "/mode +l ١٢", "/modlog ²", "/history general ²"])
def test_digits_are_ascii_digits(line: str) -> None:
    """Other scripts' digits pass str.isdigit(): int() then fails, or reads another number."""
    with pytest.raises(ProtocolError) as info:
        parse_line(line.encode())
    assert info.value.code in ("bad_mode", "bad_args")


def test_ipv4_mapped_masks_are_written_as_ipv4() -> None:
    assert parse_mask("ip:::ffff:127.0.0.111") == Mask("ip", "127.0.0.111")
    assert parse_mask("ip:::ffff:127.0.0.0/104") == Mask("ip", "127.0.0.0/8")
    assert parse_mask("ip:::ffff:127.0.0.111").matches(None, None, "127.0.0.111")


def test_reasons_are_cut_to_their_bound() -> None:
    kick = parse_line(b"/kick bob " + b"x" * 1000)
    ban = parse_line(b"/ban bob 1h " + b"y" * 1000)
    assert isinstance(kick, Kick)
    assert isinstance(ban, Ban)
    assert (len(kick.reason), len(ban.reason)) == (300, 300)


def test_a_letter_changes_once_per_line() -> None:
    assert parse_mode_changes(["+" + "i" * 4000]) == (ModeChange("+", "i"),)
    assert parse_mode_changes(["+i-i+k", "door"]) == (
        ModeChange("-", "i"),  # the last word on i
        ModeChange("+", "k", "door"),
    )
