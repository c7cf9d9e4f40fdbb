"""``chatd serve --gc``: what the daemon's garbage collection does, as /metrics
shows it, and the fan-out's batches that keep each outbox within its limits."""

from __future__ import annotations

import re

import pytest

from chatd.core.fanout import Batches, send_all
from chatd.core.model import Member
from chatd.protocol import Pong
from tests.helpers import Daemon, open_json, until_async
from tests.test_web import http, metric

pytestmark = pytest.mark.timeout(60)


async def web_metrics(daemon: Daemon) -> str:
    port = next(
        int(m.group(1))
        for line in daemon.log
        if (m := re.search(r"WebSocket on http://\S+?:(\d+)/", line))
    )
    status, _, body = await http(port, "/metrics")
    assert status == 200
    return body.decode()


def gen2_pauses(text: str) -> float:
    return metric(text, 'chatd_gc_pause_seconds_count{generation="2"}')


async def test_serve_freezes_what_survives_and_records_every_pause() -> None:
    daemon = await Daemon.start("--http-port", "0")
    clients = []
    try:
        clients = [await open_json(daemon.port, f"user{n}") for n in range(20)]
        for client in clients:
            await client.send("hello")
        await clients[0].expect(lambda e: e.get("from") == "user19" and e.get("text") == "hello")
        first = await web_metrics(daemon)
        # The tick runs ten times a second: a few more full (unfrozen-only)
        # collections come within the deadline, each recorded.
        text = first

        async def ticked() -> bool:
            nonlocal text
            text = await web_metrics(daemon)
            return gen2_pauses(text) >= gen2_pauses(first) + 3

        await until_async(ticked, "three more collections of what is not frozen")
        assert metric(text, "chatd_gc_frozen_objects") > 10_000  # modules, settings, sessions
        # Pauses are short: all of them so far under a quarter of a second.
        count = gen2_pauses(text)
        assert metric(text, 'chatd_gc_pause_seconds_bucket{generation="2",le="0.25"}') == count
    finally:
        for client in clients:
            client.close()
        await daemon.stop()


async def test_gc_default_leaves_pythons_collector_alone() -> None:
    daemon = await Daemon.start("--http-port", "0", "--gc", "default")
    try:
        client = await open_json(daemon.port, "ann")
        text = await web_metrics(daemon)
        assert metric(text, "chatd_gc_frozen_objects") == 0
        client.close()
    finally:
        await daemon.stop()


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
    from chatd.core import fanout

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
