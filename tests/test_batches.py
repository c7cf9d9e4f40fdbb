"""Fan-out's batches (``Member.batch``, ``core/fanout.Batches``) keep every
bound an outbox has: a loop pass that puts more in an outbox than its
bounds allow cuts the client, however the pass's credit for unchecked
appends ran out, and a client's answers to its own commands never do.

The deliveries of one loop pass are made here by calling fan-out
synchronously, against real sessions over loopback sockets: nothing can
split them over two passes.
"""

from __future__ import annotations

import contextlib

import pytest

from chatd.core import fanout
from chatd.core.fanout import Batches, send_all
from chatd.core.model import Member
from chatd.daemon.server import Server
from chatd.daemon.session import Session
from chatd.protocol import Pong
from tests.conftest import StartServer
from tests.helpers import LineClient, open_json, until

pytestmark = pytest.mark.timeout(30)


async def session_of(server: Server, nick: str) -> Session:
    await until(lambda: any(s.nick == nick for s in server.sessions), f"{nick} registered")
    return next(s for s in server.sessions if s.nick == nick)


async def closed_by_server(client: LineClient) -> None:
    """Wait (with the client's deadline) until the server ends the connection."""
    with contextlib.suppress(ConnectionError):
        await client.wait_closed()


@pytest.mark.parametrize("elsewhere", [False, True], ids=["alone", "credit-spent-elsewhere"])
async def test_a_pass_over_the_event_bound_cuts_the_client(
    start_server: StartServer, elsewhere: bool
) -> None:
    """Sixty events for one client in one pass, over max_queue_events 50:
    it is cut as a slow consumer. Also when the pass's credit then runs out
    on another member's big event, which closes every open batch."""
    server = await start_server(db=":memory:", max_queue_events=50, queue_soft_bytes=8192)
    reader = await open_json(server.port, "reader")
    other = await open_json(server.port, "other")
    try:
        session, bystander = await session_of(server, "reader"), await session_of(server, "other")
        for n in range(60):
            send_all([session], Pong(f"event {n}"))
        if elsewhere:
            # Over any open batch's credit: every batch closes, the reader's
            # with its sixty events in it, and nothing more comes for it.
            send_all([bystander], Pong("x" * 9000))
        await closed_by_server(reader)
        assert "reader" not in [s.nick for s in server.sessions if not s.closing]
        assert server.stats.slow_consumers >= 1
        await other.sync()  # the other client goes on
    finally:
        reader.close()
        other.close()


async def test_a_reply_never_cuts_a_client_after_fanout_in_the_same_pass(
    start_server: StartServer,
) -> None:
    """Two fan-out events, then 101 replies (a /history page, say) in the
    same pass, with max_queue_events 50: the replies are the client's own
    answers and are never dropped; the fan-out part was within bounds."""
    server = await start_server(db=":memory:", max_queue_events=50)
    reader = await open_json(server.port, "reader")
    try:
        session = await session_of(server, "reader")
        send_all([session], Pong("fan-out 1"))
        send_all([session], Pong("fan-out 2"))
        for n in range(101):
            session.tell(Pong(f"reply {n}"))
        events = await reader.sync()
        assert [e["token"] for e in events] == [
            "fan-out 1",
            "fan-out 2",
            *(f"reply {n}" for n in range(101)),
        ]
    finally:
        reader.close()


class Inbox(Member):
    """A member that keeps what it is given and opens batches like an outbox."""

    def __init__(self, batches: Batches, room: int) -> None:
        super().__init__()
        self.got: list[bytes] = []
        self.checked = 0
        self.closed = 0
        if batches.open(self, room):
            self.batch = self.got

    def deliver(self, data: bytes) -> None:
        self.checked += 1
        self.got.append(data)

    def close_batch(self) -> None:
        self.closed += 1
        self.batch = None


async def test_fanout_appends_to_open_batches_until_the_smallest_credit_is_spent() -> None:
    batches = fanout.batches()
    batches.new_pass()
    size = len(Member().codec.encode(Pong("x" * 20)))
    roomy, tight = Inbox(batches, 100 * size), Inbox(batches, 3 * size)
    assert batches.credit == 3 * size  # the tightest member sets it
    for _ in range(5):
        send_all([roomy, tight], Pong("x" * 20))
    assert len(roomy.got) == len(tight.got) == 5
    # Three events fit the credit and went into the batches unchecked; the
    # fourth spent it: every batch closed, and the rest were checked.
    assert (roomy.checked, tight.checked) == (2, 2)
    assert roomy.closed == tight.closed == 1
    assert not batches.members
    batches.new_pass()


async def test_each_encoding_of_an_event_spends_the_credit_once() -> None:
    """Members of two codecs, interleaved: an event spends the size of each
    encoding once, not once per change of codec along the room."""
    from chatd.protocol import Format

    batches = fanout.batches()
    batches.new_pass()
    members = [Inbox(batches, 10_000) for _ in range(20)]
    for n, member in enumerate(members):
        if n % 2:
            member.fmt = Format.JSON
    event = Pong("y" * 20)
    sizes = len(members[0].codec.encode(event)) + len(members[1].codec.encode(event))
    send_all(members, event)
    assert batches.credit == 10_000 - sizes
    assert all(m.checked == 0 for m in members)
    batches.new_pass()
