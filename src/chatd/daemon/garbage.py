"""Garbage collection without pauses that grow with the number of clients.

CPython's cyclic collector scans, in a full collection, every container
object the process holds. With thousands of connections that is hundreds
of thousands of objects: a pause of tens to hundreds of milliseconds that
every client sees as latency, longer the more clients there are.

chatd makes no reference cycles on its per-message and per-connection paths
(``tests/test_gc.py`` churns connections and messages and finds nothing
for the collector): what it allocates is freed by reference counting as
soon as it is no longer used. So ``chatd serve`` (``--gc freeze``, the
default) runs the collector this way:

* at start-up, one full collection, then :func:`gc.freeze`: the modules,
  the settings, the store's objects are never scanned again;
* ten times a second (:meth:`GarbagePolicy.tick`), a collection of what is
  not frozen, then a freeze of what survived. What is not frozen is what
  was made since the last tick and is still alive: its cost is bounded by
  that, a storm of new connections included, not by the size of the heap;
* CPython's own young collections (generations 0 and 1) run as usual: they
  look at new objects only;
* at most every ten minutes, and only when the frozen objects are a
  quarter more than after the last one, one full collection of everything
  (:meth:`thaw`).

A frozen object is still freed by reference counting when its connection
goes; only a reference cycle among frozen objects would stay. chatd makes
none (the test guards it); what code outside chatd leaves is returned by
the full collection, one pause whose length grows with the heap (about
90 ms at 10,000 connections, see docs/PERFORMANCE.md), which a daemon
whose heap does not grow never takes. Every collection's
pause is recorded for ``/metrics`` (``chatd_gc_pause_seconds``, by
generation). ``--gc default`` leaves CPython's collector as it is.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from chatd.core.stats import Histogram

#: Seconds between two collect-and-freeze steps: often enough that each
#: one has little to look at (about a millisecond on average at 2,000
#: messages a second in 1000 rooms, see docs/PERFORMANCE.md).
FREEZE_INTERVAL = 0.1
#: Seconds at least between two full collections (see GarbagePolicy.thaw),
#: and how much the frozen objects must have grown since the last one.
THAW_INTERVAL = 600.0
THAW_GROWTH = 1.25
#: Buckets of the pause histogram (seconds).
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

logger = logging.getLogger(__name__)


class GarbagePolicy:
    """How the process collects garbage, and what it cost (process-wide,
    like the collector itself: one per process, see :data:`POLICY`)."""

    def __init__(self) -> None:
        #: Pauses of the collector, one histogram per generation.
        self.pauses = [Histogram(PAUSE_BUCKETS) for _ in range(3)]
        self.mode = "default"
        #: Full collections made by :meth:`thaw`, and the frozen objects
        #: after the last (or after start-up).
        self.thaws = 0
        self._frozen_after = 0
        self._started = 0.0
        self._watching = False

    def watch(self) -> None:
        """Record every collection's pause (idempotent)."""
        if not self._watching:
            self._watching = True
            gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.pauses[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0

    def start(self, mode: str) -> None:
        """Apply ``mode`` ("freeze" or "default") to this process."""
        self.mode = mode
        self.watch()
        if mode == "freeze":
            gc.collect()
            gc.freeze()
            self._frozen_after = gc.get_freeze_count()

    def tick(self) -> None:
        """Collect what was made since the last tick and freeze the rest."""
        if self.mode == "freeze":
            gc.collect()
            gc.freeze()

    def thaw(self) -> int:
        """A full collection of everything, frozen objects included; return
        how many unreachable objects it found.

        The safety net under the freezing: code outside chatd (asyncio's
        selector transport on Python 3.11 keeps a reference cycle per
        connection; a Redis client replaced after an outage leaves some)
        can leave cycles among objects that were frozen while alive. This
        returns them, at the cost of one pause that grows with the heap
        (measured in docs/PERFORMANCE.md); :meth:`run` calls it only when
        :meth:`thaw_due`, at most every :data:`THAW_INTERVAL`.
        """
        if self.mode != "freeze":
            return 0
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._frozen_after = gc.get_freeze_count()
        self.thaws += 1
        logger.debug("full collection: %d unreachable objects", found)
        return found

    def thaw_due(self) -> bool:
        """The frozen objects grew by :data:`THAW_GROWTH` since the last
        full collection (as CPython's own rule for full collections)."""
        return gc.get_freeze_count() > self._frozen_after * THAW_GROWTH

    async def run(self) -> None:
        """:meth:`tick` every :data:`FREEZE_INTERVAL` seconds; :meth:`thaw`
        instead when it is due, at most every :data:`THAW_INTERVAL`. With
        ``--gc default`` there is nothing to do: it returns at once."""
        if self.mode != "freeze":
            return
        loop = asyncio.get_running_loop()
        thaw_at = loop.time() + THAW_INTERVAL
        while True:
            await asyncio.sleep(FREEZE_INTERVAL)
            if loop.time() >= thaw_at and self.thaw_due():
                thaw_at = loop.time() + THAW_INTERVAL
                self.thaw()
            else:
                self.tick()

    @property
    def frozen(self) -> int:
        return gc.get_freeze_count()


#: The process's policy: ``chatd serve`` starts it; ``/metrics`` reads it.
POLICY = GarbagePolicy()
