"""``chatd bench --quick`` runs end to end and reports; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_quick_runs_and_reports() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    reports = {r["scenario"]: r for r in map(json.loads, result.stdout.splitlines())}
    fanout = reports["fanout"]
    assert fanout["messages_sent"] > 0
    assert fanout["loss"] == 0, "every message reaches every member"
    assert fanout["deliveries_per_s"] > 0
    assert fanout["daemon_cpu_us_per_delivery"] > 0
    idle = reports["idle"]
    assert idle["connections"] == 50
    assert idle["rss_per_connection_kib"] is not None
    assert "Traceback" not in result.stderr
