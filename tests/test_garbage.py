"""``chatd serve --gc``: what the daemon's garbage collection does, as /metrics
shows it."""

from __future__ import annotations

import gc
import re
import weakref

import pytest

from chatd.daemon.garbage import GarbagePolicy
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


def test_a_full_collection_returns_what_died_in_a_cycle_while_frozen() -> None:
    """What code outside chatd leaves in a reference cycle after it was
    frozen is never seen by the collections of what is new; the full
    collection (GarbagePolicy.thaw, due when the frozen heap grew by a
    quarter) returns it."""

    class Node:
        me: object

    policy = GarbagePolicy()
    try:
        policy.start("freeze")
        node = Node()
        node.me = node
        alive = weakref.ref(node)
        policy.tick()  # node survives a tick: frozen
        del node
        policy.tick()
        assert alive() is not None, "a frozen cycle is not looked at by the ticks"
        assert not policy.thaw_due()  # nothing grew by a quarter
        assert policy.thaw() >= 1
        assert alive() is None
        assert policy.thaws == 1
    finally:
        gc.unfreeze()
        gc.callbacks.remove(policy._observe)
