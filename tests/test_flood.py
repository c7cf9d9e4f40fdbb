"""The flood-control token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from chatd.daemon.flood import TokenBucket


def test_burst_is_free_then_the_rate_applies() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # the 4th line waits half a second
    assert bucket.take(0.5) == pytest.approx(0.5)  # and the 5th waits for its own token


def test_tokens_refill_up_to_the_burst_only() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    # An hour idle saves up no more than the burst.
    assert [bucket.take(3600.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(3600.0) == pytest.approx(0.1)


def test_a_fast_typist_never_waits_at_the_defaults() -> None:
    bucket = TokenBucket(rate=10.0, burst=40, now=0.0)
    # Three lines a second for a minute, much faster than anyone types.
    assert all(bucket.take(n / 3) == 0.0 for n in range(180))


def test_input_that_piled_up_is_judged_by_the_time_it_took() -> None:
    """After a pause, 30 lines in 0.2 s is 150 lines/s: within 400/s, not a flood."""
    arrivals = TokenBucket(rate=400.0, burst=20, now=0.0)
    assert arrivals.take(0.2, 30) > 0  # capped at the burst: looks like a flood
    arrivals = TokenBucket(rate=400.0, burst=20, now=0.0)
    arrivals.take(0.0, 20)
    assert arrivals.take(0.2, 30, uncapped=True) == 0.0  # judged by the 0.2 s it took
    assert arrivals.take(0.3, 100, uncapped=True) > 0  # 1000 lines/s is a flood still
