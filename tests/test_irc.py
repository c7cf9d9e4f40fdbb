"""The IRC gateway over real sockets: a scripted IRC client, nc and JSON users.

Each test starts a daemon with its IRC port on a free loopback port and
talks to it as IRC clients do (``tests.ircclient``), next to the chatd
users they share rooms with. Every wait is for a line, with a deadline;
``IrcClient.sync`` (a PING, answered after every earlier reply) shows that
something did not come.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chatd.daemon.server import Server
from tests.conftest import Nodes, StartServer
from tests.helpers import DEADLINE, REDIS, Event, LineClient, open_json
from tests.ircclient import IrcClient, Line
from tests.test_web import WsClient

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct-horse"


class Gateway:
    """A daemon with an IRC port, and the clients a test opened to it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._irc: list[IrcClient] = []
        self._lines: list[LineClient] = []

    async def irc(self, nick: str | None = None, **register: Any) -> IrcClient:
        """An IRC client, registered as ``nick`` if given (see IrcClient.register)."""
        client = await IrcClient.open(self.server.irc_port)
        self._irc.append(client)
        if nick is not None:
            await client.register(nick, **register)
        return client

    async def json(self, nick: str | None = None) -> LineClient:
        """A chatd client in JSON mode (it lands in #general)."""
        client = await open_json(self.server.port, nick)
        self._lines.append(client)
        return client

    async def nc(self, nick: str) -> LineClient:
        """A chatd client in text mode, as ``nc`` is."""
        client = await LineClient.open("127.0.0.1", self.server.port)
        self._lines.append(client)
        await client.register(nick, json_mode=False)
        return client

    async def account(self, nick: str, password: str = PASSWORD) -> None:
        """Register ``nick`` as an account (``/register``), then leave."""
        client = await open_json(self.server.port, nick)
        try:
            await client.send(f"/register {password}")
            await client.expect(lambda e: e["type"] == "registered" and e["account"], "account")
            await client.send("/quit")
            await client.expect_eof()
        finally:
            client.close()

    def close(self) -> None:
        for irc in self._irc:
            irc.close()
        for line in self._lines:
            line.close()


OpenGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def open_gateway(start_server: StartServer) -> AsyncIterator[OpenGateway]:
    """``await open_gateway(**settings)``: a daemon with an IRC port."""
    made: list[Gateway] = []

    async def open_(**overrides: Any) -> Gateway:
        gateway = Gateway(await start_server(irc_port=0, **overrides))
        made.append(gateway)
        return gateway

    yield open_
    for gateway in made:
        gateway.close()


@pytest.fixture
async def gw(open_gateway: OpenGateway) -> Gateway:
    return await open_gateway()


# ---------------------------------------------------------------------------
# Small helpers


def said(text: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "message" and e.get("text") == text


def joined(room: str, nick: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "join" and e["room"] == room and e["nick"] == nick


def verbs(lines: list[Line]) -> list[str]:
    return [line.verb for line in lines]


def guest(nick: str) -> str:
    return f"{nick}!~{nick}@chatd/guest"


def member(nick: str) -> str:
    return f"{nick}!{nick}@chatd/account"


async def join(client: IrcClient, *chans: str) -> None:
    """JOIN the channels and wait for the end of each one's NAMES."""
    await client.send(f"JOIN {','.join(chans)}")
    for chan in chans:
        await client.expect("366", names_end(chan), f"NAMES of {chan}")


def names_end(chan: str) -> Callable[[Line], bool]:
    return lambda m: m.params[1] == chan


async def enter(client: LineClient, room: str) -> None:
    await client.send(f"/join {room}")
    await client.expect(lambda e: e["type"] == "current" and e["room"] == room, f"in #{room}")


# ---------------------------------------------------------------------------
# Registration


async def test_registration_without_cap(gw: Gateway) -> None:
    alice = await gw.irc()
    await alice.send("JOIN #early")
    assert (await alice.expect("451")).params[0] == "*"
    lines = await alice.register("alice")
    numerics = [v for v in verbs(lines) if v.isdigit()]
    assert numerics[:5] == ["001", "002", "003", "004", "005"]
    assert {"251", "254", "255", "375", "372", "376"} <= set(numerics)
    welcome = next(line for line in lines if line.verb == "001")
    assert welcome.source == "chatd"
    assert welcome.text.endswith(guest("alice"))
    tokens = {t for line in lines if line.verb == "005" for t in line.params[1:-1]}
    assert {"CASEMAPPING=ascii", "CHANTYPES=#", "PREFIX=(qov)~@+", "UTF8ONLY"} <= tokens
    assert "CHANMODES=b,k,l,imnst" in tokens
    # An IRC connection lands in no channel.
    await alice.send("WHOIS alice")
    whois = await alice.lines_until("318")
    assert "319" not in verbs(whois)
    await alice.send("FROB x")
    assert (await alice.expect("421")).params[1] == "FROB"
    await alice.send("JOIN")
    assert (await alice.expect("461")).params[1] == "JOIN"
    await alice.send("MODE alice")
    assert (await alice.expect("221")).params[1] == "+i"


async def test_cap_negotiation_holds_registration_until_cap_end(gw: Gateway) -> None:
    bob = await gw.irc()
    await bob.send("CAP LS 302", "NICK bob", "USER bob 0 * :Bob")
    ls = await bob.expect("CAP")
    assert ls.params[:2] == ("*", "LS")
    offered = ls.text.split()
    assert "sasl=PLAIN" in offered
    for cap in ("echo-message", "server-time", "message-tags", "batch", "draft/chathistory"):
        assert cap in offered
    # Registration waits for CAP END, whatever else comes.
    assert "001" not in verbs(await bob.sync("held"))
    await bob.send("CAP REQ :echo-message no-such-cap")
    nak = await bob.expect("CAP")
    assert nak.params[1:] == ("NAK", "echo-message no-such-cap")
    await bob.send("CAP REQ :echo-message server-time")
    ack = await bob.expect("CAP")
    assert ack.params[1:] == ("ACK", "echo-message server-time")
    await bob.send("CAP LIST")
    assert set((await bob.expect("CAP")).text.split()) == {"echo-message", "server-time"}
    assert "001" not in verbs(await bob.sync("still-held"))
    await bob.send("CAP END")
    assert (await bob.expect("001")).params[0] == "bob"
    await bob.expect("376")


async def test_sasl_plain_logs_in_to_an_account(gw: Gateway) -> None:
    await gw.account("carol")
    carol = await gw.irc()
    lines = await carol.register("whatever", sasl=("carol", PASSWORD))
    logged = next(line for line in lines if line.verb == "900")
    assert logged.params[1:3] == (member("carol"), "carol")
    assert "903" in verbs(lines)
    welcome = next(line for line in lines if line.verb == "001")
    assert welcome.params[0] == "carol"  # the account's nickname, not the one asked for
    assert welcome.text.endswith(member("carol"))
    await carol.send("AUTHENTICATE PLAIN")
    assert (await carol.expect_any(("907", "904"))).verb == "907"
    # Others see the account: WHOIS 311 with its host, and 330.
    dave = await gw.irc("dave")
    await dave.send("WHOIS carol")
    whois = await dave.lines_until("318")
    assert [line.params[1:3] for line in whois if line.verb == "330"] == [("carol", "carol")]
    user = next(line for line in whois if line.verb == "311")
    assert user.params[1:4] == ("carol", "carol", "chatd/account")


async def test_sasl_failures(gw: Gateway) -> None:
    await gw.account("erin")
    client = await gw.irc()
    await client.send("CAP LS 302", "NICK erin", "USER erin 0 * :Erin")
    await client.expect("CAP")
    await client.send("AUTHENTICATE PLAIN")  # sasl not requested yet
    assert (await client.expect_any(("904", "AUTHENTICATE"))).verb == "904"
    await client.send("CAP REQ :sasl")
    await client.expect("CAP", lambda m: m.params[1] == "ACK")
    await client.send("AUTHENTICATE SCRAM-SHA-256")
    assert (await client.expect("908")).params[1] == "PLAIN"
    await client.expect("904")
    await client.send("AUTHENTICATE PLAIN")
    await client.expect("AUTHENTICATE", lambda m: m.params == ("+",))
    await client.send("AUTHENTICATE *")
    await client.expect("906")
    assert (await client.authenticate("erin", "wrong-password")).verb == "904"
    assert (await client.authenticate("nobody", PASSWORD)).verb == "904"
    await client.send("AUTHENTICATE PLAIN")
    await client.expect("AUTHENTICATE", lambda m: m.params == ("+",))
    await client.send("AUTHENTICATE not-base64!")
    await client.expect("904")
    # Nothing logged in: the account's nickname is refused, another is welcome.
    await client.send("CAP END")
    assert (await client.expect_any(("433", "001"))).verb == "433"
    await client.send("NICK frank")
    assert (await client.expect("001")).params[0] == "frank"


async def test_pass_logs_in_and_a_wrong_one_registers_a_guest(gw: Gateway) -> None:
    for account in ("gina", "hank", "ivy"):
        await gw.account(account)
    gina = await gw.irc()
    lines = await gina.register("gina", password=PASSWORD)
    assert "900" in verbs(lines)
    assert next(line for line in lines if line.verb == "001").text.endswith(member("gina"))
    # account:password logs in to the account the password names.
    other = await gw.irc()
    lines = await other.register("someone", password=f"hank:{PASSWORD}")
    assert other.nick == "hank"
    # A wrong password: 464; registration goes on as a guest, so the
    # account's nickname (in use by nobody) is refused with 433.
    wrong = await gw.irc()
    await wrong.send("PASS :not-the-password", "NICK ivy", "USER i 0 * :I")
    assert (await wrong.expect_any(("464", "001"))).verb == "464"
    assert (await wrong.expect_any(("433", "001"))).params[1] == "ivy"
    await wrong.send("NICK ivan")
    assert (await wrong.expect("001")).text.endswith(guest("ivan"))


async def test_nick_collisions_and_bad_nicks(gw: Gateway) -> None:
    await gw.json("jack")
    await gw.account("kate")
    client = await gw.irc()
    await client.send("USER k 0 * :K", "NICK jack")
    taken = await client.expect("433")
    assert taken.params[:2] == ("*", "jack")
    await client.send("NICK JACK")  # ASCII case-insensitive
    await client.expect("433", lambda m: m.params[1] == "JACK")
    await client.send("NICK bad!nick")
    assert (await client.expect("432")).params[1] == "bad!nick"
    await client.send("NICK " + "n" * 33)
    await client.expect("432")
    await client.send("NICK kate")  # registered, not logged in
    assert (await client.expect("433")).params[1] == "kate"
    await client.send("NICK lena")
    await client.expect("001")
    # After registration too.
    await client.send("NICK jack")
    assert (await client.expect("433")).params[:2] == ("lena", "jack")
    await client.send("NICK #chan")
    await client.expect("432")


# ---------------------------------------------------------------------------
# Channels and messages


@pytest.mark.both_stores
async def test_join_with_keys_several_channels_and_join_0(gw: Gateway) -> None:
    owner = await gw.irc("owner")
    await join(owner, "#vault")
    await owner.send("MODE #vault +k sesame")
    await owner.expect("MODE", lambda m: m.params[1:] == ("+k", "sesame"))
    watcher = await gw.json("watcher")
    await enter(watcher, "open")
    mike = await gw.irc("mike")
    await mike.send("JOIN #vault,#open wrong")
    refused = await mike.expect("475")
    assert refused.params[1] == "#vault"
    await mike.expect("JOIN", lambda m: m.params[0] == "#open")
    names = await mike.expect("353")
    assert names.params[2] == "#open"
    assert set(names.text.split()) == {"@watcher", "mike"}
    await watcher.expect(joined("open", "mike"))
    await mike.send("JOIN #other,#vault ,sesame")
    await mike.expect("JOIN", lambda m: m.params[0] == "#other")
    await mike.expect("JOIN", lambda m: m.params[0] == "#vault")
    await owner.expect("JOIN", lambda m: m.nick == "mike" and m.params[0] == "#vault")
    await mike.send("JOIN 0")
    parts = [(await mike.expect("PART")).params[0] for _ in range(3)]
    assert sorted(parts) == ["#open", "#other", "#vault"]
    left = await watcher.expect("leave")
    assert (left["room"], left["nick"], left["reason"]) == ("open", "mike", "")
    await owner.expect("PART", lambda m: m.nick == "mike" and m.params[0] == "#vault")
    await mike.send("PART #vault")
    assert (await mike.expect("442")).params[1] == "#vault"
    await mike.send("PART #never-made")
    assert (await mike.expect("403")).params[1] == "#never-made"


@pytest.mark.both_stores
async def test_privmsg_and_notice_both_ways(gw: Gateway) -> None:
    nina = await gw.irc("nina")
    await join(nina, "#general")
    omar = await gw.json("omar")
    await nina.expect("JOIN", lambda m: m.nick == "omar")
    pat = await gw.nc("pat")
    await nina.expect("JOIN", lambda m: m.nick == "pat")
    # IRC -> chatd, in the channel: formatting codes stripped.
    await nina.send("PRIVMSG #general :\x02bold\x02 and \x0304,01red\x03 words")
    got = await omar.expect("message")
    assert (got["room"], got["from"], got["text"]) == ("general", "nina", "bold and red words")
    assert await pat.expect_line(r"^\[general\] nina: ") == "[general] nina: bold and red words"
    # chatd -> IRC, in the channel.
    await omar.send("hello irc")
    line = await nina.expect("PRIVMSG")
    assert (line.source, line.params) == (guest("omar"), ("#general", "hello irc"))
    await pat.send("hi from nc")
    line = await nina.expect("PRIVMSG")
    assert (line.nick, line.params) == ("pat", ("#general", "hi from nc"))
    # NOTICE is carried as a message.
    await nina.send("NOTICE #general :a notice")
    await omar.expect(said("a notice"))
    # Private messages both ways.
    await nina.send("PRIVMSG omar :just you")
    dm = await omar.expect("dm")
    assert (dm["from"], dm["to"], dm["text"]) == ("nina", "omar", "just you")
    await omar.send("/msg nina and back")
    line = await nina.expect("PRIVMSG")
    assert (line.source, line.params) == (guest("omar"), ("nina", "and back"))
    await nina.send("NOTICE pat :quietly")
    assert await pat.expect_line(r"^\[nina -> pat\]") == "[nina -> pat] quietly"
    # A long line from nc is split into PRIVMSGs of at most 512 bytes.
    long = " ".join(f"word{n}" for n in range(300))
    await pat.send(long)
    pieces: list[str] = []
    while " ".join(pieces) != long:
        pieces.append((await nina.expect("PRIVMSG", lambda m: m.nick == "pat")).text.strip())
        assert len(pieces) < 10, pieces
    assert len(pieces) > 1
    accents = "é" * 2000  # 4000 bytes and no space: cut between characters
    await pat.send(accents)
    text = ""
    while len(text) < len(accents):
        text += (await nina.expect("PRIVMSG", lambda m: m.nick == "pat")).text
    assert text == accents
    # Errors: not a member (404), no such channel (403), no such nick (401).
    await nina.send("PRIVMSG #nowhere :x", "PRIVMSG nobody :x")
    assert (await nina.expect("403")).params[1] == "#nowhere"
    assert (await nina.expect("401")).params[1] == "nobody"
    await omar.send("/create closed")
    await omar.expect("current")
    await nina.send("PRIVMSG #closed :x")
    assert (await nina.expect("404")).params[1] == "#closed"
    await nina.send("PRIVMSG omar", "PRIVMSG")
    await nina.expect("412")
    await nina.expect("411")
    # A NOTICE is never answered with an error.
    await nina.send("NOTICE #closed :x", "NOTICE nobody :x", "NOTICE #nowhere :x")
    assert (await nina.sync("quiet")) == []


@pytest.mark.both_stores
async def test_ctcp_action_is_me_and_other_ctcp_is_not_carried(gw: Gateway) -> None:
    quinn = await gw.irc("quinn")
    await join(quinn, "#general")
    rosa = await gw.json("rosa")
    await quinn.expect("JOIN", lambda m: m.nick == "rosa")
    await quinn.send("PRIVMSG #general :\x01ACTION waves\x01")
    action = await rosa.expect("message")
    assert (action["text"], action.get("action")) == ("waves", True)
    await rosa.send("/me bows")
    line = await quinn.expect("PRIVMSG")
    assert line.params == ("#general", "\x01ACTION bows\x01")
    await quinn.send("PRIVMSG #general :\x01VERSION\x01", "PRIVMSG rosa :\x01PING 1\x01")
    await quinn.send("PRIVMSG #general :after")
    await rosa.expect(said("after"))
    assert [e for e in await rosa.sync() if e["type"] in ("message", "dm")] == []
    # chatd has no /me in private: the action is written out.
    await quinn.send("PRIVMSG rosa :\x01ACTION nods\x01")
    assert (await rosa.expect("dm"))["text"] == "* quinn nods"


@pytest.mark.both_stores
async def test_echo_message_on_and_off(gw: Gateway) -> None:
    echo = await gw.irc("echo", caps=["echo-message"])
    plain = await gw.irc("plain")
    await join(echo, "#room")
    await join(plain, "#room")
    await echo.send("PRIVMSG #room :from echo", "PRIVMSG plain :dm from echo")
    own = await echo.expect("PRIVMSG")
    assert (own.source, own.params) == (guest("echo"), ("#room", "from echo"))
    own = await echo.expect("PRIVMSG")
    assert (own.source, own.params) == (guest("echo"), ("plain", "dm from echo"))
    await plain.send("PRIVMSG #room :from plain", "PRIVMSG echo :dm from plain")
    received = [line.params for line in await plain.sync() if line.verb == "PRIVMSG"]
    assert received == [("#room", "from echo"), ("plain", "dm from echo")]
    got = [line.params for line in await echo.sync() if line.verb == "PRIVMSG"]
    assert got == [("#room", "from plain"), ("echo", "dm from plain")]


@pytest.mark.both_stores
async def test_ping_after_a_burst_is_answered_after_its_echoes(gw: Gateway) -> None:
    talker = await gw.irc("talker", caps=["echo-message"])
    await join(talker, "#burst")
    await talker.send(*(f"PRIVMSG #burst :n{n}" for n in range(100)), "PING :after")
    lines = await talker.lines_until("PONG")
    assert lines[-1].params == ("chatd", "after")
    assert [line.text for line in lines if line.verb == "PRIVMSG"] == [f"n{n}" for n in range(100)]


async def test_topic_names_who_and_list(gw: Gateway) -> None:
    sam = await gw.irc("sam")
    await join(sam, "#talk")
    await sam.send("TOPIC #talk")
    assert (await sam.expect("331")).params[1] == "#talk"
    tina = await gw.json("tina")
    await enter(tina, "talk")
    await sam.send("TOPIC #talk :release on \x02friday\x02")
    line = await sam.expect("TOPIC")
    assert (line.source, line.params) == (guest("sam"), ("#talk", "release on friday"))
    topic = await tina.expect("topic")
    assert (topic["topic"], topic["by"], topic["changed"]) == ("release on friday", "sam", True)
    await tina.send("/topic from tina")
    assert (await sam.expect("TOPIC")).params == ("#talk", "from tina")
    await sam.send("TOPIC #talk")
    assert (await sam.expect("332")).params[1:] == ("#talk", "from tina")
    # A new joiner gets the topic before the names.
    uma = await gw.irc("uma")
    await uma.send("JOIN #talk")
    got = await uma.lines_until("366")
    assert verbs(got) == ["JOIN", "332", "353", "366"]
    assert set(got[2].text.split()) == {"@sam", "tina", "uma"}
    await sam.send("NAMES #talk")
    assert set((await sam.expect("353")).text.split()) == {"@sam", "tina", "uma"}
    await sam.expect("366")
    await sam.send("WHO #talk")
    who = await sam.lines_until("315")
    rows = {line.params[5]: line for line in who if line.verb == "352"}
    assert set(rows) == {"sam", "tina", "uma"}
    assert rows["sam"].params[1:4] == ("#talk", "~sam", "chatd/guest")
    assert rows["sam"].params[6] == "H@"
    assert rows["tina"].params[6] == "H"
    await sam.send("WHO tina")
    who = await sam.lines_until("315")
    assert [line.params[5] for line in who if line.verb == "352"] == ["tina"]
    # LIST: every channel, or the ones asked for; a secret one is hidden.
    await tina.send("/create hidden")
    await tina.expect("current")
    await tina.send("/mode hidden +s")
    await tina.expect(lambda e: e["type"] == "mode" and e["change"] == "+s")
    await sam.send("LIST")
    listed = await sam.lines_until("323")
    assert listed[0].verb == "321"
    rooms = {line.params[1]: line for line in listed if line.verb == "322"}
    assert {"#talk", "#general"} <= set(rooms)
    assert "#hidden" not in rooms
    assert rooms["#talk"].params[2:] == ("3", "from tina")
    await sam.send("LIST #talk")
    listed = await sam.lines_until("323")
    assert [line.params[1] for line in listed if line.verb == "322"] == ["#talk"]


async def test_whois_ison_and_userhost(gw: Gateway) -> None:
    await gw.account("vera")
    vera = await gw.irc("vera", sasl=("vera", PASSWORD))
    await join(vera, "#one", "#two")
    walt = await gw.irc("walt")
    await walt.send("WHOIS vera")
    whois = await walt.lines_until("318")
    assert verbs(whois) == ["311", "319", "312", "330", "318"]
    assert set(whois[1].text.split()) == {"#one", "#two"}
    await walt.send("WHOIS nobody")
    assert verbs(await walt.lines_until("318")) == ["401", "318"]
    await walt.send("ISON vera nobody WALT")
    assert (await walt.expect("303")).text.split() == ["vera", "walt"]
    await walt.send("USERHOST vera walt nobody")
    assert (await walt.expect("302")).text.split() == [
        "vera=+vera@chatd/account",
        "walt=+~walt@chatd/guest",
    ]


@pytest.mark.both_stores
async def test_away_and_away_notify(gw: Gateway) -> None:
    xena = await gw.irc("xena")
    notified = await gw.irc("yuri", caps=["away-notify"])
    other = await gw.irc("zack")
    for client in (xena, notified, other):
        await join(client, "#away")
    await xena.send("AWAY :gone to lunch")
    await xena.expect("306")
    line = await notified.expect("AWAY")
    assert (line.source, line.params) == (guest("xena"), ("gone to lunch",))
    assert "AWAY" not in verbs(await other.sync())
    await other.send("PRIVMSG xena :are you there?")
    assert (await other.expect("301")).params[1:] == ("xena", "gone to lunch")
    assert (await xena.expect("PRIVMSG")).text == "are you there?"
    await other.send("WHO #away")
    rows = {m.params[5]: m.params[6] for m in await other.lines_until("315") if m.verb == "352"}
    assert rows["xena"].startswith("G")
    assert rows["zack"].startswith("H")
    await other.send("USERHOST xena")
    assert (await other.expect("302")).text == "xena=-~xena@chatd/guest"
    await xena.send("AWAY")
    await xena.expect("305")
    line = await notified.expect("AWAY")
    assert line.params == ()
    await other.send("PRIVMSG xena :back?")
    assert "301" not in verbs(await other.sync())


@pytest.mark.both_stores
async def test_away_notify_tells_of_an_away_user_joining(gw: Gateway) -> None:
    """IRCv3 away-notify: an AWAY line also "when a user joins and has an away
    message set" (and none for one without)."""
    watcher = await gw.irc("watcher", caps=["away-notify"])
    await join(watcher, "#lobby")
    sleeper = await gw.irc("sleeper")
    await sleeper.send("AWAY :asleep")
    await sleeper.expect("306")
    await join(sleeper, "#lobby")
    await watcher.expect("JOIN", lambda m: m.nick == "sleeper")
    after = await watcher.sync()
    assert [(m.nick, m.verb, m.params) for m in after] == [("sleeper", "AWAY", ("asleep",))]
    awake = await gw.irc("awake")
    await join(awake, "#lobby")
    await watcher.expect("JOIN", lambda m: m.nick == "awake")
    assert "AWAY" not in verbs(await watcher.sync())


@pytest.mark.both_stores
async def test_nick_change_is_seen_once_by_everyone_sharing_a_channel(gw: Gateway) -> None:
    adam = await gw.irc("adam")
    bea = await gw.irc("bea")
    await join(adam, "#a", "#b")
    await join(bea, "#a", "#b")
    carl = await gw.json("carl")
    await enter(carl, "a")
    await adam.expect("JOIN", lambda m: m.nick == "carl")
    await adam.send("NICK adam2")
    mine = await adam.expect("NICK")
    assert (mine.source, mine.params) == (guest("adam"), ("adam2",))
    seen = await bea.expect("NICK")
    assert (seen.source, seen.params) == (guest("adam"), ("adam2",))
    assert "NICK" not in verbs(await bea.sync())
    changed = await carl.expect("nick")
    assert (changed["old"], changed["new"]) == ("adam", "adam2")
    await adam.send("PRIVMSG #a :renamed")
    assert (await bea.expect("PRIVMSG")).source == guest("adam2")
    # The numerics name the new nickname.
    await adam.send("MODE adam2")
    assert (await adam.expect("221")).params[0] == "adam2"


@pytest.mark.both_stores
async def test_quit_is_one_quit_for_two_shared_channels(gw: Gateway) -> None:
    dora = await gw.irc("dora")
    eli = await gw.irc("eli")
    await join(dora, "#q1", "#q2")
    await join(eli, "#q1", "#q2")
    fay = await gw.json("fay")
    await enter(fay, "q1")
    await enter(fay, "q2")
    await dora.send("QUIT :see \x02you\x02")
    closing = await dora.wait_closed()
    quit_ = await eli.expect("QUIT")
    assert (quit_.source, quit_.params) == (guest("dora"), ("quit: see you",))
    assert "QUIT" not in verbs(await eli.sync())
    leaves = [await fay.expect("leave") for _ in range(2)]
    assert sorted(e["room"] for e in leaves) == ["q1", "q2"]
    assert {e["reason"] for e in leaves} == {"quit: see you"}
    # A chatd user quitting is one QUIT too.
    await fay.send("/quit bye all")
    quit_ = await eli.expect("QUIT")
    assert (quit_.nick, quit_.params) == ("fay", ("quit: bye all",))
    assert "QUIT" not in verbs(await eli.sync())
    # The quitter is told the link closes, with its own reason.
    assert closing[-1].raw == "ERROR :Closing link (see you)"


# ---------------------------------------------------------------------------
# Operators of a channel


@pytest.mark.both_stores
async def test_kick_and_member_modes(gw: Gateway) -> None:
    gus = await gw.irc("gus")
    await join(gus, "#mod")
    hal = await gw.json("hal")
    await enter(hal, "mod")
    ida = await gw.irc("ida")
    await join(ida, "#mod")
    await ida.send("KICK #mod hal :no")
    assert (await ida.expect("482")).params[1] == "#mod"
    await gus.send("MODE #mod +v ida")
    line = await ida.expect("MODE")
    assert (line.source, line.params) == (guest("gus"), ("#mod", "+v", "ida"))
    role = await hal.expect("role")
    assert (role["nick"], role["role"], role["by"]) == ("ida", "voice", "gus")
    await gus.send("MODE #mod +o hal")
    assert (await ida.expect("MODE")).params == ("#mod", "+o", "hal")
    assert (await hal.expect("role"))["role"] == "op"
    await gus.send("MODE #mod -v ida")
    assert (await ida.expect("MODE")).params[:2] == ("#mod", "-ov")
    await gus.send("NAMES #mod")
    assert set((await gus.expect("353")).text.split()) == {"@gus", "@hal", "ida"}
    # chatd's moderation as IRC shows it: a mute, a voice.
    await hal.send("/mute ida")
    notice = await ida.expect("NOTICE")
    assert (notice.source, notice.params[0]) == ("chatd", "#mod")
    assert notice.text.startswith("ida is muted")
    await ida.send("PRIVMSG #mod :let me speak")
    assert (await ida.expect("404")).params[1] == "#mod"
    await hal.send("/unmute ida")
    await ida.expect("NOTICE", lambda m: m.text == "ida may speak again")
    await hal.send("/voice ida")
    line = await ida.expect("MODE")
    assert (line.source, line.params) == (guest("hal"), ("#mod", "+v", "ida"))
    # KICK: the line alone, to everyone, the kicked included.
    await gus.send("KICK #mod ida :\x02too loud\x02")
    kick = await ida.expect("KICK")
    assert (kick.source, kick.params) == (guest("gus"), ("#mod", "ida", "too loud"))
    event = await hal.expect("kick")
    assert (event["nick"], event["by"], event["reason"]) == ("ida", "gus", "too loud")
    assert "PART" not in verbs(await ida.sync())
    await gus.expect("KICK")
    assert [v for v in verbs(await gus.sync()) if v in ("PART", "QUIT")] == []
    # chatd kicks reach IRC.
    await join(ida, "#mod")
    await hal.send("/kick ida again")
    assert (await ida.expect("KICK")).params == ("#mod", "ida", "again")
    await ida.send("PRIVMSG #mod :still here?")
    await ida.expect("404")
    await gus.send("KICK #mod nobody")
    await gus.expect("401")


@pytest.mark.both_stores
async def test_channel_modes(gw: Gateway) -> None:
    jay = await gw.irc("jay")
    await join(jay, "#modes")
    kim = await gw.irc("kim")
    await join(kim, "#modes")
    await jay.send("MODE #modes")
    shown = await jay.expect("324")
    assert shown.params[1:] == ("#modes", "+n")
    await kim.send("MODE #modes +m")
    assert (await kim.expect("482")).params[1] == "#modes"
    await jay.send("MODE #modes +tm")
    line = await kim.expect("MODE")
    assert (line.source, line.params) == (guest("jay"), ("#modes", "+tm"))
    await kim.send("PRIVMSG #modes :may I?", "TOPIC #modes :mine")
    assert (await kim.expect("404")).params[1] == "#modes"
    assert (await kim.expect("482")).params[1] == "#modes"
    await jay.send("MODE #modes +kl door 2")
    line = await kim.expect("MODE")
    assert line.params == ("#modes", "+kl", "door", "2")
    await jay.send("MODE #modes")
    assert (await jay.expect("324")).params[1:] == ("#modes", "+nklmt", "door", "2")
    # The limit: full at 2.
    lou = await gw.irc("lou")
    await lou.send("JOIN #modes door")
    assert (await lou.expect("471")).params[1] == "#modes"
    await jay.send("MODE #modes -l+i")
    await kim.expect("MODE", lambda m: m.params[1] in ("-l+i", "+i-l"))
    await lou.send("JOIN #modes door")
    assert (await lou.expect("473")).params[1] == "#modes"
    await jay.send("MODE #modes -ik *")
    await kim.expect("MODE")
    await lou.send("JOIN #modes")
    await lou.expect("JOIN")
    await jay.send("MODE #modes +s")
    await kim.expect("MODE", lambda m: m.params[1:] == ("+s",))
    # Modes IRC knows that chatd does not have.
    await jay.send("MODE #modes -n")
    assert (await jay.expect("472")).params[1] == "n"
    await jay.send("MODE #modes +n")
    assert [v for v in verbs(await jay.sync()) if v.isdigit() or v == "MODE"] == []
    await jay.send("MODE #modes +z")
    assert (await jay.expect("472")).params[1] == "z"
    await jay.send("MODE #modes +q kim")
    refused = await jay.expect("696")
    assert refused.params[1:4] == ("#modes", "q", "kim")
    await jay.send("MODE kim +i")
    await jay.expect("502")
    await jay.send("MODE jay +w")
    await jay.expect("501")


@pytest.mark.both_stores
async def test_ban_masks(gw: Gateway) -> None:
    await gw.account("maya")
    ned = await gw.irc("ned")
    await join(ned, "#bans")
    olga = await gw.irc("olga")
    await join(olga, "#bans")
    # A nickname.
    await ned.send("MODE #bans +b olga")
    line = await ned.expect("MODE")
    assert line.params == ("#bans", "+b", "olga!*@*")
    kick = await olga.expect("KICK")
    assert (kick.source, kick.params[:2]) == ("chatd", ("#bans", "olga"))
    assert "banned by ned" in kick.text
    await olga.send("JOIN #bans")
    assert (await olga.expect("474")).params[1] == "#bans"
    # An account.
    await ned.send("MODE #bans +b $a:maya")
    assert (await ned.expect("MODE")).params == ("#bans", "+b", "$a:maya")
    maya = await gw.irc("maya", sasl=("maya", PASSWORD))
    await maya.send("JOIN #bans")
    await maya.expect("474")
    await ned.send("MODE #bans b")
    listed = await ned.lines_until("368")
    masks = [line.params[2] for line in listed if line.verb == "367"]
    assert sorted(masks) == ["$a:maya", "olga!*@*"]
    assert {line.params[3] for line in listed if line.verb == "367"} == {"ned"}
    await ned.send("MODE #bans -b olga!*@*")
    assert (await ned.expect("MODE")).params == ("#bans", "-b", "olga!*@*")
    await olga.send("JOIN #bans")
    await olga.expect("JOIN")
    # An address: everyone here comes from 127.0.0.1 (an op is not banned out).
    await ned.send("MODE #bans +b *!*@127.0.0.1")
    line = await ned.expect("MODE")
    assert line.params == ("#bans", "+b", "*!*@127.0.0.1")
    await olga.expect("KICK", lambda m: m.params[1] == "olga")
    newcomer = await gw.json("pete")
    await newcomer.send("/join bans")
    assert (await newcomer.expect("error"))["code"] == "banned"


async def test_a_ban_mask_with_no_chatd_form_is_refused_with_696(gw: Gateway) -> None:
    """IRC's answer to a mode parameter the server cannot take is 696."""
    ned = await gw.irc("ned")
    await join(ned, "#masks")
    await ned.send("MODE #masks +b a*!b@c")
    refused = await ned.expect_any(("696", "NOTICE", "MODE", "472", "461"))
    assert (refused.verb, refused.params[1:4]) == ("696", ("#masks", "b", "a*!b@c")), refused


@pytest.mark.both_stores
async def test_invite(gw: Gateway) -> None:
    quentin = await gw.irc("quentin")
    await join(quentin, "#club")
    await quentin.send("MODE #club +i")
    await quentin.expect("MODE")
    rita = await gw.irc("rita")
    await rita.send("JOIN #club")
    await rita.expect("473")
    await quentin.send("INVITE rita #club")
    sent = await quentin.expect("341")
    assert sent.params == ("quentin", "rita", "#club")
    invite = await rita.expect("INVITE")
    assert (invite.source, invite.params) == (guest("quentin"), ("rita", "#club"))
    await rita.send("JOIN #club")
    await rita.expect("JOIN")
    # An invitation from chatd reaches IRC; IRC's reaches chatd.
    stan = await gw.json("stan")
    await quentin.send("INVITE stan #club")
    await quentin.expect("341")
    got = await stan.expect("invite")
    assert (got["room"], got["from"]) == ("club", "quentin")
    await quentin.send("INVITE nobody #club")
    await quentin.expect("401")


# ---------------------------------------------------------------------------
# IRCv3: tags and history


@pytest.mark.both_stores
async def test_message_tags_server_time_account_tag_and_extended_join(gw: Gateway) -> None:
    await gw.account("tess")
    tagged = await gw.irc(
        "ulf", caps=["server-time", "message-tags", "account-tag", "extended-join"]
    )
    await join(tagged, "#tags")
    tess = await gw.irc("tess", sasl=("tess", PASSWORD))
    await join(tess, "#tags")
    line = await tagged.expect("JOIN", lambda m: m.nick == "tess")
    assert (line.source, line.params) == (member("tess"), ("#tags", "tess", "tess"))
    vic = await gw.json("vic")
    await enter(vic, "tags")
    line = await tagged.expect("JOIN", lambda m: m.nick == "vic")
    assert line.params == ("#tags", "*", "vic")
    await tess.send("PRIVMSG #tags :with tags")
    line = await tagged.expect("PRIVMSG")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.tags["time"]), line
    assert line.tags["account"] == "tess"
    sent = await vic.expect("message")
    assert line.tags["msgid"] == str(sent["id"])
    await vic.send("from a guest")
    line = await tagged.expect("PRIVMSG")
    assert "account" not in line.tags
    assert set(line.tags) == {"time", "msgid"}
    # A client without the caps gets no tags at all.
    line = await tess.expect("PRIVMSG")
    assert line.tags == {}
    assert line.raw.startswith(":vic!")


@pytest.mark.both_stores
async def test_history_on_join_only_with_batch_and_chathistory(gw: Gateway) -> None:
    wes = await gw.json("wes")
    await enter(wes, "hist")
    for n in range(3):
        await wes.send(f"earlier {n}")
        await wes.expect(said(f"earlier {n}"))
    plain = await gw.irc("plain", caps=["server-time", "batch"])
    await join(plain, "#hist")
    assert [v for v in verbs(await plain.sync()) if v in ("BATCH", "PRIVMSG")] == []
    history = await gw.irc("history", caps=["server-time", "batch", "draft/chathistory"])
    await history.send("JOIN #hist")
    lines = await history.lines_until("BATCH", lambda m: m.params[0].startswith("-"))
    assert verbs(lines)[:3] == ["JOIN", "353", "366"]
    start, *messages, end = lines[3:]
    assert start.verb == "BATCH"
    ref = start.params[0][1:]
    assert start.params == (f"+{ref}", "chathistory", "#hist")
    assert end.params == (f"-{ref}",)
    assert [m.text for m in messages] == ["earlier 0", "earlier 1", "earlier 2"]
    for message in messages:
        assert message.verb == "PRIVMSG"
        assert message.source == guest("wes")
        assert message.tags["batch"] == ref
        assert "time" in message.tags
    # After the batch, live messages carry no batch tag.
    await wes.send("live")
    live = await history.expect("PRIVMSG")
    assert (live.text, "batch" in live.tags) == ("live", False)


@pytest.mark.both_stores
async def test_chathistory_latest_and_before(gw: Gateway) -> None:
    reader = await gw.irc("reader", caps=["batch", "draft/chathistory", "message-tags"])
    await join(reader, "#log")
    for n in range(5):
        await reader.send(f"PRIVMSG #log :line {n}")
    writer = await gw.json("writer")
    await enter(writer, "log")
    await writer.send("last one")
    await reader.expect("PRIVMSG", lambda m: m.text == "last one")
    await reader.send("CHATHISTORY LATEST #log * 3")
    lines = await reader.lines_until("BATCH", lambda m: m.params[0].startswith("-"))
    assert lines[0].verb == "BATCH"
    assert lines[0].params[1:] == ("chathistory", "#log")
    messages = [m for m in lines if m.verb == "PRIVMSG"]
    assert [m.text for m in messages] == ["line 3", "line 4", "last one"]
    assert all(m.tags.get("batch") == lines[0].params[0][1:] for m in messages)
    oldest = messages[0].tags["msgid"]
    await reader.send(f"CHATHISTORY BEFORE #log msgid={oldest} 2")
    lines = await reader.lines_until("BATCH", lambda m: m.params[0].startswith("-"))
    assert [m.text for m in lines if m.verb == "PRIVMSG"] == ["line 1", "line 2"]
    await reader.send("CHATHISTORY AROUND #log * 3")
    assert (await reader.expect("FAIL")).params[:2] == ("CHATHISTORY", "INVALID_PARAMS")
    await reader.send("CHATHISTORY LATEST #elsewhere * 3")
    assert (await reader.expect("FAIL")).params[:2] == ("CHATHISTORY", "INVALID_TARGET")


# ---------------------------------------------------------------------------
# Lines the gateway must refuse, and clients it must cut


async def test_an_over_long_line_is_refused_and_the_connection_kept(gw: Gateway) -> None:
    yan = await gw.irc("yan")
    await join(yan, "#long")
    zoe = await gw.json("zoe")
    await enter(zoe, "long")
    await yan.send("PRIVMSG #long :" + "x" * 600)
    assert (await yan.expect("417")).params[0] == "yan"
    await yan.send("PRIVMSG #long :short again")
    assert (await zoe.expect("message"))["text"] == "short again"
    # Tags do not count against the 512 bytes (up to their own 4096).
    await yan.send("@+example=" + "t" * 2000 + " PRIVMSG #long :tagged")
    assert (await zoe.expect("message"))["text"] == "tagged"
    assert "417" not in verbs(await yan.sync())
    # The limit exactly: 510 bytes and CR LF pass, one more does not.
    head = "PRIVMSG #long :"
    await yan.send(head + "a" * (510 - len(head)), head + "b" * (511 - len(head)))
    assert (await zoe.expect("message"))["text"] == "a" * (510 - len(head))
    await yan.expect("417")
    # A line far over every limit is thrown away whole, and the next one runs.
    await yan.send(head + "c" * 20_000, head + "after the big one")
    assert (await zoe.expect("message"))["text"] == "after the big one"


async def test_invalid_utf8_is_refused_and_the_connection_kept(gw: Gateway) -> None:
    abe = await gw.irc("abe")
    await join(abe, "#bytes")
    cy = await gw.json("cy")
    await enter(cy, "bytes")
    await abe.send(b"PRIVMSG #bytes :caf\xe9\r\n")
    fail = await abe.expect("FAIL")
    assert fail.params[:2] == ("*", "INVALID_UTF8")
    await abe.send("PRIVMSG #bytes :café")
    assert (await cy.expect("message"))["text"] == "café"


@pytest.mark.both_stores
async def test_a_flood_is_cut_with_an_error_line_and_others_carry_on(
    open_gateway: OpenGateway,
) -> None:
    gw = await open_gateway(msg_rate=5, msg_burst=5, flood_lines=50)
    flooder = await gw.irc("flooder")
    await join(flooder, "#flood")
    bystander = await gw.irc("bystander")
    await join(bystander, "#flood")
    flooder.writer.write(b"".join(b"PRIVMSG #flood :spam %d\r\n" % n for n in range(5000)))
    closing = await flooder.wait_closed()
    assert closing[-1].raw == "ERROR :Closing link: flooding: too many lines too fast"
    quit_ = await bystander.expect("QUIT")
    assert (quit_.nick, quit_.text) == ("flooder", "flooding")
    await bystander.send("PRIVMSG #flood :still here")
    listener = await gw.json("listener")
    await enter(listener, "flood")
    await bystander.send("PRIVMSG #flood :and talking")
    assert (await listener.expect("message"))["text"] == "and talking"


@pytest.mark.both_stores
async def test_a_client_that_never_reads_is_dropped_and_others_carry_on(
    open_gateway: OpenGateway,
) -> None:
    gw = await open_gateway(sndbuf=4096, max_queue_bytes=32 * 1024)
    stuck = await gw.irc("stuck")
    await join(stuck, "#slow")
    stuck.stop_reading()
    listener = await gw.irc("listener")
    await join(listener, "#slow")
    talker = await gw.json("talker")
    await enter(talker, "slow")
    count, payload, window = 1000, "p" * 200, 50

    async def talk() -> None:
        for start in range(0, count, window):
            await talker.send(*(f"{n} {payload}" for n in range(start, start + window)))
            for n in range(start, start + window):
                await talker.expect(said(f"{n} {payload}"))

    async def listen() -> list[int]:
        got: list[int] = []
        while len(got) < count:
            line = await listener.expect("PRIVMSG", lambda m: m.nick == "talker")
            got.append(int(line.text.split()[0]))
        return got

    _, got = await asyncio.gather(talk(), listen())
    assert got == list(range(count))
    # The stuck one was dropped: the listener saw it quit (amid the messages, or after).
    quits = [m for m in listener.seen if m.verb == "QUIT" and m.nick == "stuck"]
    if not quits:
        quits.append(await listener.expect("QUIT", lambda m: m.nick == "stuck"))
    assert len(quits) == 1
    assert "send queue overflow" in quits[0].text
    await listener.send("PRIVMSG #slow :after")
    await talker.expect(said("after"))


async def test_server_ping_and_ping_timeout(open_gateway: OpenGateway) -> None:
    gw = await open_gateway(irc_ping_interval=1)
    idle = await gw.irc("idle")
    ping = await idle.expect("PING", timeout=DEADLINE)
    assert ping.source is None or ping.source == "chatd"
    await idle.send(f"PONG :{ping.text}")
    # Answered: the connection stays; unanswered: it ends.
    second = await idle.expect("PING", timeout=DEADLINE)
    assert second.text != ping.text
    closing = await idle.wait_closed()
    assert closing, "closed without a word"
    assert closing[-1].verb == "ERROR"
    assert "ping" in closing[-1].text.lower()


# ---------------------------------------------------------------------------
# Everyone together: the web, nc, other nodes, TLS


@pytest.mark.both_stores
async def test_irc_nc_and_websocket_users_in_one_channel(open_gateway: OpenGateway) -> None:
    gw = await open_gateway(http_port=0)
    irc = await gw.irc("ircer")
    await join(irc, "#mixed")
    nc = await gw.nc("nccer")
    await nc.send("/join mixed")
    await nc.expect_line(r"now talking in #mixed")
    web = await WsClient.open(gw.server.http_port, "webber")
    try:
        await web.send("/join mixed")
        await web.expect("current", room="mixed")
        await irc.expect("JOIN", lambda m: m.nick == "nccer")
        await irc.expect("JOIN", lambda m: m.nick == "webber")
        await irc.send("PRIVMSG #mixed :from irc")
        assert (await web.expect("message", text="from irc"))["from"] == "ircer"
        await nc.expect_line(r"^\[mixed\] ircer: from irc$")
        await web.send("from the web")
        line = await irc.expect("PRIVMSG")
        assert (line.nick, line.params) == ("webber", ("#mixed", "from the web"))
        await nc.send("from nc")
        line = await irc.expect("PRIVMSG")
        assert (line.nick, line.params) == ("nccer", ("#mixed", "from nc"))
        await web.expect("message", text="from nc")
        await irc.send("PRIVMSG webber :private")
        assert (await web.expect("dm", text="private"))["from"] == "ircer"
        await irc.send("QUIT :done")
        left = await web.expect("leave", nick="ircer")
        assert left["reason"] == "quit: done"
        await nc.expect_line(r"ircer left #mixed")
    finally:
        await web.close()


cluster = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")


@cluster
@pytest.mark.both_stores
async def test_cluster_irc_on_one_node_json_on_the_other(nodes: Nodes) -> None:
    one, two = await nodes(2, irc_port=0)
    here, there = Gateway(one), Gateway(two)
    try:
        alice = await here.irc("alice")
        await join(alice, "#span")
        bob = await there.json("bob")
        await enter(bob, "span")
        await alice.expect("JOIN", lambda m: m.nick == "bob")
        await alice.send("NAMES #span")
        assert set((await alice.expect("353")).text.split()) == {"@alice", "bob"}
        await alice.send("PRIVMSG #span :over the bus")
        got = await bob.expect(said("over the bus"))
        assert got["from"] == "alice"
        await bob.send("and back")
        line = await alice.expect("PRIVMSG")
        assert (line.source, line.params) == (guest("bob"), ("#span", "and back"))
        await bob.send("/msg alice psst")
        line = await alice.expect("PRIVMSG")
        assert line.params == ("alice", "psst")
        await alice.send("PRIVMSG bob :psst back")
        await bob.expect(lambda e: e["type"] == "dm" and e["text"] == "psst back")
        await alice.send("WHOIS bob")
        whois = await alice.lines_until("318")
        assert "401" not in verbs(whois)
        # Nicknames are one namespace across the nodes.
        other = await here.irc()
        await other.send("NICK bob", "USER b 0 * :B")
        await other.expect("433")
        # Joins and leaves both ways.
        carol = await there.irc("carol")
        await join(carol, "#span")
        await alice.expect("JOIN", lambda m: m.nick == "carol")
        assert (await bob.expect(joined("span", "carol")))["nick"] == "carol"
        await bob.send("/leave span")
        await alice.expect("PART", lambda m: m.nick == "bob")
        await alice.send("PART #span")
        await carol.expect("PART", lambda m: m.nick == "alice")
    finally:
        here.close()
        there.close()


async def test_registration_timeout_and_cap_negotiation(open_gateway: OpenGateway) -> None:
    """CAP holds registration open, not past register_timeout: with or
    without a SASL login, a client that never ends CAP is cut."""
    gw = await open_gateway(register_timeout=1)
    await gw.account("limbo")
    held = await gw.irc()
    await held.send("CAP LS 302", "NICK held", "USER u 0 * :u")
    logged = await gw.irc()
    await logged.send("CAP LS 302", "NICK other", "USER u 0 * :u", "CAP REQ :sasl")
    await logged.expect("CAP", lambda m: m.params[1] == "ACK")
    assert (await logged.authenticate("limbo", PASSWORD)).verb == "903"
    closing = await held.wait_closed()
    assert closing[-1].verb == "ERROR", closing
    # The same deadline has passed for the one logged in by SASL.
    closing = await logged.wait_closed()
    assert closing[-1].verb == "ERROR", closing


async def test_nothing_is_delivered_before_the_welcome(gw: Gateway) -> None:
    """A client logged in by SASL but still in CAP negotiation has no 001 yet:
    no message may reach it before its welcome."""
    await gw.account("early")
    early = await gw.irc()
    await early.send("CAP LS 302", "NICK early", "USER u 0 * :u", "CAP REQ :sasl")
    await early.expect("CAP", lambda m: m.params[1] == "ACK")
    assert (await early.authenticate("early", PASSWORD)).verb == "903"
    sender = await gw.json("sender")
    await sender.send("/msg early too soon")
    await sender.sync()
    before = await early.sync()
    assert "PRIVMSG" not in verbs(before), [m.raw for m in before]
    await early.send("CAP END")
    assert (await early.expect("001")).params[0] == "early"


async def test_irc_over_tls(start_server: StartServer, cert_pair: tuple[str, str]) -> None:
    cert, key = cert_pair
    server = await start_server(irc_port=0, irc_tls_port=0, tls_port=0, tls_cert=cert, tls_key=key)
    trust = ssl.create_default_context(cafile=cert)
    gw = Gateway(server)
    secure = await IrcClient.open(server.irc_tls_port, tls=trust)
    try:
        await gw.account("sec")
        await secure.register("sec", caps=["echo-message"], sasl=("sec", PASSWORD))
        await join(secure, "#tls")
        plain = await gw.irc("plain")
        await join(plain, "#tls")
        await secure.send("PRIVMSG #tls :encrypted")
        assert (await plain.expect("PRIVMSG")).source == member("sec")
        assert (await secure.expect("PRIVMSG")).text == "encrypted"
        await plain.send("PRIVMSG #tls :hello tls")
        assert (await secure.expect("PRIVMSG")).text == "hello tls"
    finally:
        secure.close()
        gw.close()


async def test_admission_refusal_on_the_irc_port(open_gateway: OpenGateway) -> None:
    gw = await open_gateway(max_per_ip=2)
    first = await gw.irc("first")
    second = await gw.irc()
    await second.sync("admitted")  # PING is answered before registration
    third = await gw.irc()
    closing = await third.wait_closed()
    assert [line.raw for line in closing] == [
        "ERROR :Closing link: too many connections from 127.0.0.1 (at most 2)"
    ]
    await first.sync("unaffected")


async def test_shutdown_says_error_to_irc_clients(open_gateway: OpenGateway) -> None:
    gw = await open_gateway()
    irc = await gw.irc("leaving")
    await join(irc, "#end")
    unregistered = await gw.irc()
    await unregistered.sync("here")
    stopping = asyncio.create_task(gw.server.shutdown())
    for client in (irc, unregistered):
        closing = await client.wait_closed()
        assert closing[-1].raw == "ERROR :Closing link (server shutting down)"
        client.close()
    await stopping


async def test_server_operators(open_gateway: OpenGateway) -> None:
    gw = await open_gateway(opers=("root",))
    await gw.account("root")
    root = await gw.irc("root", sasl=("root", PASSWORD))
    await root.send("OPER root anything", "MODE root")
    await root.expect("381")
    assert (await root.expect("221")).params[1] == "+io"
    victim = await gw.irc("victim")
    watcher = await gw.irc("watcher")
    for client in (root, victim, watcher):
        await join(client, "#ops")
    await victim.send("OPER victim x", "KILL watcher :no")
    await victim.expect("491")
    await victim.expect("481")
    await watcher.send("WHOIS root")
    assert "313" in verbs(await watcher.lines_until("318"))
    chatter = await gw.json("chatter")
    await root.send("WALLOPS :maintenance at noon")
    wall = await watcher.expect("NOTICE")
    assert (wall.source, wall.params) == (member("root"), ("$*", "[root] maintenance at noon"))
    got = await chatter.expect("wall")
    assert (got["from"], got["text"]) == ("root", "maintenance at noon")
    await root.send("KILL victim :spam")
    closing = await victim.wait_closed()
    assert closing[-1].raw == "ERROR :Closing link (killed by root: spam)"
    quit_ = await watcher.expect("QUIT")
    assert (quit_.nick, quit_.text) == ("victim", "killed by root: spam")
    await root.expect("NOTICE", lambda m: "victim" in m.text)


# ---------------------------------------------------------------------------
# Hostile and careless clients: what an attacker or a sloppy bot sends gets a
# numeric (or nothing) and leaves the connection, the room and the daemon as
# they were.


@pytest.mark.both_stores
@pytest.mark.parametrize(
    "line",
    [
        b"WHOIS :",
        b"WHOIS ::x",
        b"NICK ::x",
        b"JOIN ::x",
        b"KICK #fz ::x",
        b"MODE #fz +b ::x",
        b"NAMES ,",
        b"WHO :",
        b"PRI\0VMSG #fz :ab",
        b"PING a\0b",
        b"CAP REQ :a\rb",
        b"JOIN #" + b"z" * 503,
        b"WHOIS " + b"w" * 503,
    ],
)
async def test_a_reply_that_repeats_a_bad_parameter_keeps_the_connection(
    gw: Gateway, line: bytes
) -> None:
    """Replies that echo a parameter IRC cannot write (empty, ``:x``, NUL,
    CR, 500 bytes) are written anyway, within 512 bytes, and the sender stays."""
    ann = await gw.irc("ann")
    bob = await gw.irc("bob")
    await join(ann, "#fz")
    await join(bob, "#fz")
    await ann.send(line)
    await ann.sync()  # a PONG after the reply: still connected (every line read is checked)
    assert "QUIT" not in verbs(await bob.sync())
    await ann.send("PRIVMSG #fz :still here")
    assert (await bob.expect("PRIVMSG")).text == "still here"


async def test_a_key_irc_cannot_write_is_refused_and_modes_stay_readable(gw: Gateway) -> None:
    op = await gw.irc("kop")
    other = await gw.irc("kmem")
    await join(op, "#kx")
    await join(other, "#kx")
    for key in ("::abc", "k,ey"):  # "::abc": the key ":abc", as the trailing parameter
        await op.send(f"MODE #kx +lk 5 {key}")
        refused = await op.expect("472")  # +l 5 is taken; the key is refused
        assert "comma" in refused.text
    await op.send("MODE #kx +k -i")  # IRC takes arguments in order: the key is "-i"
    change = await other.expect("MODE", lambda m: m.params[1] == "+k")
    assert change.params[2:] == ("-i",)
    await other.send("MODE #kx")
    shown = await other.expect("324")
    assert shown.params[2].startswith("+")
    await other.sync()


async def test_one_line_with_many_targets_is_paced_as_many(open_gateway: OpenGateway) -> None:
    gw = await open_gateway(msg_rate=5.0, flood_factor=3.0)
    amp = await gw.irc("amp")
    watcher = await gw.irc("watcher")
    await join(amp, "#amp")
    await join(watcher, "#amp")
    await amp.send("PRIVMSG " + ",".join(["#amp"] * 80) + ",watcher,WATCHER,x1,x2,x3 :ampN")
    refused = await amp.expect("407")
    assert refused.params[1] == "x3"  # #amp, watcher, x1 and x2 were the first four
    lines = await watcher.sync()
    assert [line.text for line in lines if line.verb == "PRIVMSG"] == ["ampN", "ampN"]
    assert "TARGMAX=JOIN:,KICK:4,NAMES:,NOTICE:4,PART:,PRIVMSG:4" in str(
        [line.raw for line in amp.seen if line.verb == "005"]
    )


async def test_a_line_cut_off_by_a_disconnect_never_runs(gw: Gateway) -> None:
    cut = await gw.irc("mida")
    bob = await gw.irc("bob")
    await join(cut, "#mid")
    await join(bob, "#mid")
    cut.writer.write(b"PRIVMSG #mid :this line was cut off in the mi")
    await cut.writer.drain()
    cut.writer.write_eof()
    lines = await bob.lines_until("QUIT", lambda m: m.nick == "mida")
    assert "PRIVMSG" not in verbs(lines + await bob.sync())


async def test_sasl_is_for_registration_only_and_checks_its_parts(gw: Gateway) -> None:
    await gw.account("acct2")
    late = await gw.irc("latesasl", caps=["sasl"])
    await late.send("AUTHENTICATE PLAIN")
    assert (await late.expect("904")).text.endswith("log in before the welcome")
    early = await gw.irc()
    await early.send("CAP LS 302", "NICK x1", "USER u 0 * :u", "CAP REQ :sasl")
    await early.expect("CAP", lambda m: m.params[1] == "ACK")
    await early.send("AUTHENTICATE")
    await early.expect("461")
    await early.send("AUTHENTICATE PLAIN")
    await early.expect("AUTHENTICATE")
    await early.send("AUTHENTICATE " + "A" * 401)
    await early.expect("905")
    # Logging in as someone else (an authzid that is not the account): refused.
    await early.send("AUTHENTICATE PLAIN")
    await early.expect("AUTHENTICATE")
    other = base64.b64encode(f"someone\0acct2\0{PASSWORD}".encode()).decode()
    await early.send(f"AUTHENTICATE {other}")
    await early.expect("904")
    await early.send("CAP END")
    welcome = await early.expect("001")
    assert welcome.params[0] == "x1"


async def test_an_over_long_line_after_a_notice_is_answered(gw: Gateway) -> None:
    ann = await gw.irc("ann")
    await ann.send("NOTICE #nope :x")  # a NOTICE is never answered...
    await ann.send("PRIVMSG #x :" + "y" * 600)  # ...but the next line is its own
    await ann.expect("417")


async def test_capability_values_only_for_cap_302(gw: Gateway) -> None:
    old = await gw.irc()
    await old.send("CAP LS")
    listed = await old.expect("CAP")
    assert "sasl" in listed.text.split()
    assert "=" not in listed.text
    new = await gw.irc()
    await new.send("CAP LS 302")
    assert "sasl=PLAIN" in (await new.expect("CAP")).text.split()


async def test_a_bad_tag_does_not_lose_the_message(gw: Gateway) -> None:
    ann = await gw.irc("ann")
    bob = await gw.irc("bob")
    await join(ann, "#t")
    await join(bob, "#t")
    await ann.send("@=x PRIVMSG #t :notag", "@+typing=active TAGMSG #t")
    assert (await bob.expect("PRIVMSG")).text == "notag"
    assert "TAGMSG" not in verbs(await bob.sync())  # client tags go nowhere (CLIENTTAGDENY=*)


async def test_a_tab_is_no_separator_and_a_same_nick_no_change(gw: Gateway) -> None:
    ann = await gw.irc("Ann")
    await ann.send("PRIVMSG\t#fz :tab")
    await ann.expect("421")
    await ann.send("NICK Ann")
    assert "NICK" not in verbs(await ann.sync())


async def test_an_enormous_history_id_is_refused_not_crashed(gw: Gateway) -> None:
    ann = await gw.irc("ann", caps=["batch", "draft/chathistory"])
    await join(ann, "#big")
    await ann.send("CHATHISTORY BEFORE #big msgid=9223372036854775808 5")
    fail = await ann.expect("FAIL")
    assert fail.params[:2] == ("CHATHISTORY", "INVALID_PARAMS")
    nc = await gw.nc("carl")
    await nc.send("/history general 5 before=99999999999999999999999999")
    await nc.expect_line("bad_args|usage")
    await nc.send("still talking")
    await nc.expect_line("still talking")


async def test_empty_list_items_are_skipped(gw: Gateway) -> None:
    ann = await gw.irc("ann")
    await ann.send("JOIN #a,,#a,")
    await ann.expect("366")
    lines = await ann.sync()
    assert "403" not in verbs(lines)
    assert "JOIN" not in verbs(lines)


async def test_chatd_users_are_untouched_by_an_irc_attack(gw: Gateway) -> None:
    """Everything above, next to a chatd user: its room keeps working."""
    json_user = await gw.json("carol")
    ann = await gw.irc("ann")
    await join(ann, "#general")
    for line in (b"WHOIS :", b"MODE #general +b ::x", b"PRIVMSG " + b",".join([b"#general"] * 9)):
        await ann.send(line + b" :boom")
    await ann.send("PRIVMSG #general :fine")
    await json_user.expect(said("fine"))
    assert isinstance(json_user, LineClient)
    await asyncio.wait_for(enter(json_user, "other"), DEADLINE)


# ---------------------------------------------------------------------------
# Notices stay notices, so that bots do not answer each other


async def _notice_bots(here: Gateway, there: Gateway) -> None:
    """Two bots that answer a PRIVMSG with a NOTICE (and a NOTICE with
    nothing, as RFC 1459 wants): one question, one answer, no loop."""
    one = await here.irc("bot1", caps=["server-time"])
    two = await there.irc("bot2")
    await join(one, "#bots")
    await join(two, "#bots")
    await one.send("PRIVMSG bot2 :!ping", "PRIVMSG #bots :!ping all")
    for _ in range(2):
        asked = await two.expect_any(("PRIVMSG", "NOTICE"))
        assert asked.verb == "PRIVMSG"
        await two.send(f"NOTICE {asked.nick if asked.params[0] == 'bot2' else '#bots'} :pong")
    answers = [await one.expect_any(("PRIVMSG", "NOTICE")) for _ in range(2)]
    assert [(a.verb, a.params) for a in answers] == [
        ("NOTICE", ("bot1", "pong")),
        ("NOTICE", ("#bots", "pong")),
    ]
    assert "time" in answers[0].tags  # a notice is a message: tags and all
    assert not {"PRIVMSG", "NOTICE"} & set(verbs(await two.sync()))


@pytest.mark.both_stores
async def test_a_notice_stays_a_notice_for_every_reader(gw: Gateway) -> None:
    await _notice_bots(gw, gw)
    json_user = await gw.json("jo")
    text_user = await gw.nc("tex")
    await enter(json_user, "bots")
    await text_user.send("/join bots")
    bot = await gw.irc("bot3", caps=["batch", "draft/chathistory"])
    await join(bot, "#bots")
    await bot.send("NOTICE #bots :heads up")
    got = await json_user.expect(said("heads up"))
    assert got["notice"] is True
    await text_user.expect_line(r"^\[bots\] -bot3- heads up$")
    # History keeps it a notice (h1 was the history on JOIN).
    await bot.send("CHATHISTORY LATEST #bots * 5")
    batch = await bot.lines_until("BATCH", lambda m: m.params[0] == "-h2")
    kinds = [(m.verb, m.text) for m in batch if m.verb in ("PRIVMSG", "NOTICE")]
    assert ("NOTICE", "heads up") in kinds
    assert ("PRIVMSG", "!ping all") in kinds


@cluster
@pytest.mark.both_stores
async def test_a_notice_stays_a_notice_across_the_cluster(nodes: Nodes) -> None:
    one, two = await nodes(2, irc_port=0)
    here, there = Gateway(one), Gateway(two)
    try:
        await _notice_bots(here, there)
    finally:
        here.close()
        there.close()


@pytest.mark.parametrize(
    "line",
    [
        "CAP LS \u00b2",
        "CHATHISTORY BEFORE #sup msgid=\u00b2 5",
        "CHATHISTORY LATEST #sup * \u00b3",
        "KLINE \u00b2 *!*@10.1.1.1",
    ],
)
async def test_a_digit_that_is_not_ascii_is_no_number(gw: Gateway, line: str) -> None:
    ann = await gw.irc("ann", caps=["batch", "draft/chathistory"])
    await join(ann, "#sup")
    await ann.send(line)
    await ann.sync()  # still connected: answered or refused, never crashed


async def test_the_registration_limit_inside_sasl_closes_with_error(
    open_gateway: OpenGateway,
) -> None:
    gw = await open_gateway(register_lines=5)
    client = await gw.irc()
    await client.send("CAP LS 302", "CAP REQ :sasl")
    await client.expect("CAP", lambda m: m.params[1] == "ACK")
    await client.send(*["AUTHENTICATE PLAIN"] * 6)
    closing = await client.wait_closed()
    assert closing[-1].verb == "ERROR", closing  # not a 904: the limit ends the connection
    assert "before choosing a nickname" in closing[-1].text


@cluster
@pytest.mark.both_stores
async def test_away_is_seen_on_every_node(nodes: Nodes) -> None:
    """AWAY on one daemon: 301, WHO's G, WHOIS, USERHOST and away-notify
    on the other; back again, the same; and it goes with the connection."""
    one, two = await nodes(2, irc_port=0)
    here, there = Gateway(one), Gateway(two)
    try:
        alice = await here.irc("alice", caps=["away-notify"])
        bob = await there.irc("bob")
        await join(alice, "#span")
        await join(bob, "#span")
        await alice.expect("JOIN", lambda m: m.nick == "bob")
        await bob.send("AWAY :afk")
        await bob.expect("306")
        note = await alice.expect("AWAY")
        assert (note.nick, note.params) == ("bob", ("afk",))
        await alice.send("PRIVMSG bob :there?", "WHO #span", "WHOIS bob", "USERHOST bob")
        assert (await alice.expect("301")).params[1:] == ("bob", "afk")
        who = await alice.expect("352", lambda m: m.params[5] == "bob")
        assert who.params[6].startswith("G")
        whois = await alice.lines_until("318")
        assert ("bob", "afk") in [m.params[1:] for m in whois if m.verb == "301"]
        assert (await alice.expect("302")).text == "bob=-~bob@chatd/guest"
        # Joining a channel while away: the JOIN, then the AWAY (away-notify).
        await join(alice, "#more")
        await join(bob, "#more")
        seen = await alice.lines_until("AWAY")
        assert [(m.verb, m.nick) for m in seen][-2:] == [("JOIN", "bob"), ("AWAY", "bob")]
        await bob.send("AWAY")
        await bob.expect("305")
        back = await alice.expect("AWAY")
        assert (back.nick, back.params) == ("bob", ())
        await alice.send("WHO #span")
        who = await alice.expect("352", lambda m: m.params[5] == "bob")
        assert who.params[6].startswith("H")
        # Away when the connection ends: whoever takes the nickname next is here.
        await bob.send("AWAY :gone for good", "QUIT")
        await alice.expect("QUIT", lambda m: m.nick == "bob")
        again = await there.irc("bob")
        await again.sync()
        await alice.send("USERHOST bob")
        assert (await alice.expect("302")).text == "bob=+~bob@chatd/guest"
    finally:
        here.close()
        there.close()


async def test_long_lists_are_split_not_cut(open_gateway: OpenGateway) -> None:
    """319 (WHOIS channels) takes as many lines as it needs; 303 (ISON)
    answers a full line in full."""
    gw = await open_gateway(max_room_len=32, max_nick_len=32)
    chans = [f"#{i:02d}" + "c" * 30 for i in range(20)]
    ann = await gw.irc("ann")
    await join(ann, *chans[:10])  # a JOIN line holds 10 of these names
    await join(ann, *chans[10:])
    asker = await gw.irc("asker")
    await asker.send("WHOIS ann")
    whois = await asker.lines_until("318")
    listed = [c for m in whois if m.verb == "319" for c in m.text.split()]
    assert sorted(listed) == sorted(chans)
    assert len([m for m in whois if m.verb == "319"]) > 1
    nicks = [f"n{i:02d}" + "x" * 29 for i in range(14)]  # as many as an ISON line holds
    for nick in nicks:
        await gw.irc(nick)
    await asker.send("ISON " + " ".join(nicks))
    ison = await asker.lines_until("303", lambda m: nicks[-1] in m.text.split())
    online = [n for m in ison if m.verb == "303" for n in m.text.split()]
    assert online == nicks


async def test_a_secret_channel_lists_nobody_to_outsiders(gw: Gateway) -> None:
    owner = await gw.irc("owner")
    await join(owner, "#hush")
    await owner.send("MODE #hush +s")
    await owner.expect("MODE")
    outsider = await gw.irc("outsider")
    await outsider.send("NAMES #hush", "WHO #hush")
    lines = await outsider.sync()
    assert [m.verb for m in lines] == ["366", "315"]
    assert "403" not in verbs(lines)


async def test_empty_target_lists_are_answered(gw: Gateway) -> None:
    ann = await gw.irc("ann")
    await join(ann, "#c")
    await ann.send("KICK #c ,", "PART ,", "NAMES ,", "PRIVMSG , :x", "NOTICE , :x")
    lines = await ann.sync()
    assert verbs(lines) == ["461", "461", "461", "411"]
