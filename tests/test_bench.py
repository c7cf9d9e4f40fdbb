"""``chatd bench --quick`` runs end to end and reports; no timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def bench(*args: str) -> dict[tuple[str, str], dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "bench", "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {(r["scenario"], r["server"]): r for r in rows}


def check_figures(reports: dict[tuple[str, str], dict[str, object]], server: str) -> None:
    fanout = reports["fanout", server]
    assert fanout["messages_sent"] > 0  # type: ignore[operator]
    assert fanout["loss"] == 0, "every message reaches every member"
    assert fanout["deliveries_per_s"] > 0  # type: ignore[operator]
    for name in ("latency", "rooms"):
        report = reports[name, server]
        assert report["loss"] == 0, name
        assert report["samples"] > 0, name  # type: ignore[operator]
        assert report["p50_ms"] <= report["p99_ms"] <= report["p999_ms"], name  # type: ignore[operator]
    assert reports["idle", server]["connections"] == 50
    storm = reports["storm", server]
    assert storm["ready"] == storm["connections"] == 50
    assert storm["failed"] == 0


def test_bench_quick_runs_every_scenario() -> None:
    reports = bench()
    check_figures(reports, "chatd")
    assert reports["fanout", "chatd"]["server_cpu_us_per_delivery"] > 0  # type: ignore[operator]


def test_bench_quick_with_the_redis_baseline() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server must be installed under CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    reports = bench("--baseline", "redis")
    check_figures(reports, "chatd")
    check_figures(reports, "redis")
    assert "deliveries_per_s_vs_redis" in reports["fanout", "chatd"]
    assert "rss_per_connection_kib_vs_redis" in reports["idle", "chatd"]


def test_bench_quick_on_a_two_node_cluster() -> None:
    """Every scenario with the clients spread over two daemons joined by Redis."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server must be installed under CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    reports = bench("--cluster", "2")
    check_figures(reports, "chatd-cluster2")


def test_bench_quick_history_and_login_on_a_database(tmp_path: Path) -> None:
    reports = bench("--scenario", "history,login,fanout", "--db", str(tmp_path / "bench.db"))
    history = reports["history", "chatd"]
    assert history["messages_in_room"] == 3000
    assert 0 < history["history_1000_p50_ms"] <= history["history_1000_max_ms"]  # type: ignore[operator]
    login = reports["login", "chatd"]
    assert login["passwords_checked"] > 0  # type: ignore[operator]
    assert reports["fanout", "chatd"]["loss"] == 0  # every message stored and delivered


def test_bench_quick_search_on_a_database_it_builds_once(tmp_path: Path) -> None:
    """/search timed on 2000 stored messages; the second run finds them built."""
    cache = tmp_path / "cache"
    args = ("--scenario", "search", "--search-cache", str(cache))
    first = bench(*args)["search", "chatd"]
    assert first["messages"] == 2000
    assert first["build"] == "new"
    assert first["rounds"] == 2
    for name in ("rare", "common", "prefix", "phrase", "room", "private", "paged", "nothing"):
        command = first[f"{name}_command"]
        assert isinstance(command, str), name
        assert command.startswith("/search "), name
        assert 0 < first[f"{name}_p50_ms"] <= first[f"{name}_max_ms"], name  # type: ignore[operator]
        if first[f"{name}_cut"] == 0:
            # Every result the index holds, up to the limit asked for.
            limit = int(command.split()[-1])
            assert first[f"{name}_count"] == min(limit, first[f"{name}_matches"]), name  # type: ignore[call-overload]
    assert first["common_count"] == 20
    assert first["nothing_matches"] == 0
    second = bench(*args)["search", "chatd"]
    assert second["build"] == "cached"
    assert second["common_matches"] == first["common_matches"]
    assert sorted(p.suffix for p in cache.iterdir()) == [".db", ".json"]


def test_bench_refuses_search_without_sqlite() -> None:
    assert "SQLite" in refused("--scenario", "search", "--db", ":memory:")
    assert "SQLite" in refused("--scenario", "search", "--cluster", "2")


def test_bench_quick_over_websockets() -> None:
    reports = bench("--transport", "ws")
    check_figures(reports, "chatd-ws")


def refused(*args: str) -> str:
    """What the bench says when it refuses ``args`` before starting anything."""
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "bench", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    return result.stderr


def test_bench_refuses_history_over_websockets() -> None:
    assert "TCP only" in refused("--transport", "ws", "--scenario", "login")


def test_bench_quick_over_irc() -> None:
    """Every scenario with every client an IRC client (echo-message on)."""
    reports = bench("--transport", "irc")
    check_figures(reports, "chatd-irc")
    assert reports["fanout", "chatd-irc"]["server_cpu_us_per_delivery"] > 0  # type: ignore[operator]


def test_bench_refuses_over_irc_what_irc_cannot_carry() -> None:
    assert "TCP only" in refused("--transport", "irc", "--scenario", "history")
    assert "512 bytes" in refused("--transport", "irc", "--payload", "1000")
