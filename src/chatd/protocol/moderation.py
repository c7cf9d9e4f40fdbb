"""The values of room ownership and moderation: roles, modes, masks, durations.

Pure code, like the rest of :mod:`chatd.protocol`: parsing a mask, a
duration or a mode change is a plain function call that raises a
:class:`~chatd.errors.ProtocolError` with a wire code (``bad_mask``,
``bad_mode``, ``bad_args``). What these values mean for a room (who may do
what, who is banned) is :mod:`chatd.core.rules`.

They map one-to-one onto IRC's: roles are the channel prefixes
(``~`` owner, ``@`` op, ``+`` voice), modes are ``+i +k +m +s +t +l``, and
masks name what a ban can match on a server without hostnames: an account,
a nickname, or an address (a CIDR block).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import re
from typing import Final

from chatd.errors import BadArgs, BadMask, BadMode


class Role(enum.IntEnum):
    """A member's rights in one room; each includes the ones below it."""

    MEMBER = 0
    VOICE = 1
    OP = 2
    OWNER = 3

    @property
    def label(self) -> str:
        """The role's name on the wire: ``member``, ``voice``, ``op``, ``owner``."""
        return self.name.lower()

    @property
    def prefix(self) -> str:
        """IRC's prefix for the role, shown before a nickname in ``/who``."""
        return ("", "+", "@", "~")[self]

    @classmethod
    def of(cls, label: str) -> Role:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"no role {label!r}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Modes:
    """A room's modes: ``+i +m +s +t`` switches, ``+k KEY`` and ``+l N``."""

    invite_only: bool = False
    moderated: bool = False
    secret: bool = False
    topic_ops: bool = False
    key: str | None = None
    limit: int | None = None

    def flags(self) -> str:
        """The set modes as IRC writes them (``+iklt``), without arguments."""
        on = [
            flag
            for flag, value in (
                ("i", self.invite_only),
                ("k", self.key is not None),
                ("l", self.limit is not None),
                ("m", self.moderated),
                ("s", self.secret),
                ("t", self.topic_ops),
            )
            if value
        ]
        return "+" + "".join(on) if on else ""

    def to_json(self) -> dict[str, object]:
        return {
            "i": self.invite_only,
            "k": self.key,
            "l": self.limit,
            "m": self.moderated,
            "s": self.secret,
            "t": self.topic_ops,
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Modes:
        key, limit = obj.get("k"), obj.get("l")
        return cls(
            invite_only=obj.get("i") is True,
            moderated=obj.get("m") is True,
            secret=obj.get("s") is True,
            topic_ops=obj.get("t") is True,
            key=key if isinstance(key, str) else None,
            limit=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
        )


#: The mode letters chatd knows, and which take an argument when set.
MODE_FLAGS: Final = "iklmst"
_WITH_ARG: Final = "kl"
#: The largest ``+l``.
MAX_LIMIT: Final = 1_000_000
#: A key: printable ASCII without spaces or commas, not starting with ``:``
#: (IRC could not write it in a JOIN, nor as a MODE argument).
_KEY_RE: Final = re.compile(r"(?!:)[!-+\--~]{1,32}\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class ModeChange:
    """One letter of a ``/mode`` line: ``+k secret`` is ("+", "k", "secret")."""

    sign: str
    flag: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.sign + self.flag


def parse_mode_changes(words: list[str]) -> tuple[ModeChange, ...]:
    """``["+kl", "secret", "20", "-m"]`` into its changes, or raise BadMode.

    Words that start with ``+`` or ``-`` hold letters; the arguments of
    ``+k`` and ``+l`` follow, in the order of their letters, after the word
    that holds them (as IRC writes them).
    """
    changes: list[ModeChange] = []
    pending: list[tuple[str, str]] = []
    args: list[str] = []
    for word in words:
        if word[:1] in ("+", "-"):
            if args:
                raise BadMode(f"mode argument {args[0]!r} belongs to no +k or +l")
            sign = ""
            for char in word:
                if char in "+-":
                    sign = char
                elif char not in MODE_FLAGS:
                    raise _unknown_mode(char)
                else:
                    pending.append((sign, char))
            _take_args(changes, pending, args)
        else:
            args.append(word)
            _take_args(changes, pending, args)
    if args:
        raise BadMode(f"mode argument {args[0]!r} belongs to no +k or +l")
    for sign, flag in pending:
        changes.append(mode_change(sign, flag))  # BadMode: +k or +l without its argument
    if not changes:
        raise BadMode("no mode change; write it like +i, -k or +l 20")
    # One change per letter, the last one given: +iiii is +i.
    return tuple({change.flag: change for change in changes}.values())


def mode_change(sign: str, flag: str, arg: str | None = None) -> ModeChange:
    """One change, checked as :func:`parse_mode_changes` checks it (BadMode)."""
    if flag not in MODE_FLAGS:
        raise _unknown_mode(flag)
    if sign == "+" and flag in _WITH_ARG:
        if arg is None:
            raise BadMode(f"{'+k KEY' if flag == 'k' else '+l N'} needs its argument")
        return ModeChange(sign, flag, _check_mode_arg(flag, arg))
    return ModeChange(sign, flag)


def _take_args(changes: list[ModeChange], pending: list[tuple[str, str]], args: list[str]) -> None:
    """Move the letters whose arguments have arrived (or need none) to ``changes``."""
    while pending:
        sign, flag = pending[0]
        needs = sign == "+" and flag in _WITH_ARG
        if needs and not args:
            return
        changes.append(mode_change(sign, flag, args.pop(0) if needs else None))
        pending.pop(0)


def _unknown_mode(flag: str) -> BadMode:
    return BadMode(f"unknown mode {flag!r}; modes are +i +k KEY +l N +m +s +t")


def _check_mode_arg(flag: str, arg: str) -> str:
    if flag == "k":
        if _KEY_RE.match(arg) is None:
            raise BadMode(
                "a key is 1-32 printable characters without spaces or commas, not starting with ':'"
            )
        return arg
    if not (arg.isascii() and arg.isdigit()) or not 1 <= int(arg) <= MAX_LIMIT:
        raise BadMode(f"+l takes a member count from 1 to {MAX_LIMIT}")
    return str(int(arg))


def apply_modes(modes: Modes, changes: tuple[ModeChange, ...]) -> Modes:
    """The modes after ``changes``."""
    values = dataclasses.asdict(modes)
    names = {"i": "invite_only", "m": "moderated", "s": "secret", "t": "topic_ops"}
    for change in changes:
        on = change.sign == "+"
        if change.flag == "k":
            values["key"] = change.arg if on else None
        elif change.flag == "l":
            values["limit"] = int(change.arg or 0) if on else None
        else:
            values[names[change.flag]] = on
    return Modes(**values)


# -- masks -------------------------------------------------------------------

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Mask:
    """What a ban matches: a ``nick``, an ``account`` (names, lower case) or
    an ``ip`` address or network (``10.0.0.7``, ``2001:db8::/48``), each in
    one canonical form, so equal masks are equal strings."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def shown(self) -> str:
        """How text mode names it: the bare name for a nick or an account."""
        return str(self) if self.kind == "ip" else self.value

    def matches(self, account: str | None, nick: str | None, address: str) -> bool:
        """Whether a connection with that account name, nickname and address matches."""
        if self.kind == "account":
            return account is not None and account.lower() == self.value
        if self.kind == "nick":
            return nick is not None and nick.lower() == self.value
        ip = _address(address)
        if ip is None:
            return False
        network = _network(self.value)
        return ip.version == network.version and ip in network


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(value)


@functools.lru_cache(maxsize=4096)
def parse_mask(text: str) -> Mask:
    """``bob``, ``nick:bob``, ``account:alice`` or ``ip:ADDRESS[/PREFIX]``; else BadMask.

    A bare nickname is a ``nick`` mask here: the moderator makes it the
    account's if that nickname is logged in.
    """
    kind, sep, value = text.partition(":")
    if not sep:
        kind, value = "nick", text
    kind = kind.lower()
    if kind in ("nick", "account"):
        if _NAME_RE.match(value) is None:
            raise BadMask(f"invalid {kind} in mask {text[:40]!r}")
        return Mask(kind, value.lower())
    if kind == "ip":
        try:
            network = ipaddress.ip_network(value.strip("[]"), strict=False)
        except ValueError:
            raise BadMask(f"invalid address in mask {text[:40]!r}") from None
        mapped = getattr(network.network_address, "ipv4_mapped", None)
        if mapped is not None and network.prefixlen >= 96:
            # ::ffff:a.b.c.d/N is the IPv4 block a.b.c.d/(N-96): clients are
            # matched as IPv4 (see _address), so the mask is written as one.
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
        whole = network.prefixlen == network.max_prefixlen
        return Mask("ip", str(network.network_address) if whole else str(network))
    raise BadMask(f"invalid mask {text[:40]!r}: a nickname, account:NAME or ip:ADDRESS[/PREFIX]")


# -- durations -----------------------------------------------------------------

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE: Final = re.compile(r"([0-9]{1,7})([smhd])\Z")
#: The longest duration: a year.
MAX_DURATION: Final = 365 * 86400


def is_duration(word: str) -> bool:
    return _DURATION_RE.match(word.lower()) is not None


def parse_duration(word: str) -> int:
    """``30s``, ``10m``, ``2h``, ``7d`` in seconds; else BadArgs."""
    found = _DURATION_RE.match(word.lower())
    if found is None:
        raise BadArgs(f"invalid duration {word[:20]!r}: a number and s, m, h or d (like 10m)")
    seconds = int(found[1]) * _UNITS[found[2]]
    if not 1 <= seconds <= MAX_DURATION:
        raise BadArgs("a duration is from 1s to 365d")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact form: 3600 is ``1h``, 90 is ``90s``."""
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
