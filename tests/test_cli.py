"""The ``chatd`` command as users run it: a real daemon process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from chatd import __version__
from tests.helpers import Daemon, LineClient, free_port, signal_child


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"chatd {__version__}"


def test_serve_help_explains_every_flag() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--host",
        "--port",
        "--loop",
        "--log-level",
        "--log-format",
        "--max-line",
        "--max-queue-bytes",
        "--msg-rate",
        "--msg-burst",
        "--max-clients",
        "--max-per-ip",
        "--register-timeout",
        "--register-lines",
        "--register-bytes",
        "--conn-rate",
        "--conn-burst",
        "--max-room-members",
        "--max-nick-len",
        "--max-room-len",
        "--queue-soft-bytes",
        "--queue-soft-seconds",
        "--ping-min-interval",
        "CHATD_HOST",
        "CHATD_PORT",
    ):
        assert flag in result.stdout, flag


def test_connect_help() -> None:
    result = run_cli("connect", "--help")
    assert result.returncode == 0
    for flag in ("--port", "--nick", "--no-reconnect", "--json"):
        assert flag in result.stdout


def _subcommands() -> list[tuple[str, ...]]:
    """Every ``chatd`` subcommand, nested ones (``accounts list``) included."""
    from chatd.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path] if path else []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += walk(child, (*path, name))
        return found

    return walk(build_parser(), ())


def _help_entries(text: str) -> dict[str, str]:
    """An option's help, on one line, by each of its flags (``--tls``, ``--no-tls``)."""
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in [*text.splitlines(), ""]:
        if re.match(r"  \S", line) or not line.strip() or not line.startswith(" "):
            if current:
                joined = " ".join(" ".join(current).split())
                flags = re.findall(r"(?<![\w-])(--?[\w-]+|[a-z]\w*)(?=[ ,]|$)", current[0])
                for flag in flags[:1] + [f for f in flags if f.startswith("-")]:
                    entries.setdefault(flag, joined)
            current = [line] if re.match(r"  \S", line) else []
        elif current:
            current.append(line)
    return entries


#: Options whose default is a value the reader can use, and how help shows it.
SHOWN_DEFAULTS = {
    ("serve",): {"--port": "9999", "--tls-port": "9998", "--max-line": "4096", "--loop": "uvloop"},
    ("connect",): {"host": "localhost", "--loop": "uvloop"},
    ("accounts",): {"--db": "chatd.db"},
    ("gencert",): {"--cert": "chatd-cert.pem", "--key": "chatd-key.pem", "--days": "365"},
    ("health",): {"--port": "9999", "--timeout": "5.0"},
    ("bench",): {"--duration": "10.0", "--procs": "2", "--rates": "500.0,1000.0,2000.0"},
    ("chatd.soak",): {"--seconds": "600.0", "--workers": "50"},
}
#: Options that are off or computed unless given: no made-up default.
NO_DEFAULT = {
    ("serve",): ["--redis", "--tls-cert", "--tls-key", "--http-port", "--tls-only"],
    ("health",): ["--http-port"],
    ("bench",): ["--host", "--pid", "--quick"],
}


@pytest.mark.parametrize("command", [*_subcommands(), ("chatd.soak",)], ids=" ".join)
def test_every_help_shows_each_real_default_once(command: tuple[str, ...]) -> None:
    """``chatd SUB --help``, and ``python -m chatd.soak --help`` beside them."""
    argv = ["chatd", *command] if command != ("chatd.soak",) else list(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env["COLUMNS"] = "400"  # no wrapping inside a word (HOSTNAME- PID)
    result = subprocess.run(
        [sys.executable, "-m", *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    entries = _help_entries(result.stdout)
    assert "-h" in entries
    for flag, text in entries.items():
        for empty in ("None", "False", "[]", ")"):
            assert f"(default: {empty}" not in text, (flag, text)
        assert text.count("default:") <= 1, (flag, text)
    for flag, value in SHOWN_DEFAULTS.get(command, {}).items():
        assert re.search(rf"default: [^)]*{re.escape(value)}", entries[flag]), entries[flag]
    for flag in NO_DEFAULT.get(command, []):
        assert "default" not in entries[flag], entries[flag]
    if command == ("serve",):
        assert entries["--node-id"].count("HOSTNAME-PID") == 1


def test_the_subcommands_checked_are_all_there() -> None:
    assert {c[0] for c in _subcommands()} >= {
        "serve",
        "connect",
        "accounts",
        "gencert",
        "health",
        "bench",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-line", "0"], "max_line must be at least 1"),
        (["--port", "70000"], "port must be between 0 and 65535"),
        (["--register-timeout", "nan"], "register_timeout must be a finite number"),
        (["--msg-rate", "inf"], "msg_rate must be a finite number"),
        (["--max-line", "4096", "--max-queue-bytes", "8192"], "at least 4 x max_line"),
        (["--host", ""], "host must not be empty"),
    ],
)
def test_bad_settings_are_refused_clearly(args: list[str], message: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_host_in_the_environment_means_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CHATD_HOST= (say, from compose interpolation) must not mean every interface."""
    from chatd.cli import build_parser

    monkeypatch.setenv("CHATD_HOST", "")
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


async def test_a_second_signal_cuts_everyone_and_still_exits_0() -> None:
    daemon = await Daemon.start("--shutdown-grace", "60", "--sndbuf", "4096")
    stuck = await LineClient.open("127.0.0.1", daemon.port)
    try:
        await stuck.use_json()
        await stuck.register("stuck")
        stuck.stop_reading()
        await stuck.send(*(["/help"] * 400))  # replies it will never read
        await stuck.send("/ping queued")
        signal_child(daemon.proc, signal.SIGTERM)
        await daemon.wait_log("shutting down")
        # The first signal would wait the 60 s grace for the stuck client.
        assert await daemon.stop(signal.SIGINT, timeout=20) == 0
    finally:
        stuck.close()
    log = "\n".join(daemon.log)
    assert "second signal: cutting every connection now" in log
    assert "shutdown complete" in log
    assert "Traceback" not in log


async def test_shutdown_while_a_client_is_throttled_is_clean() -> None:
    daemon = await Daemon.start("--msg-rate", "0.2", "--msg-burst", "3", "--shutdown-grace", "1")
    client = await LineClient.open("127.0.0.1", daemon.port)
    try:
        await client.use_json()  # 1 token
        await client.register("slow")  # 2 tokens; the lines below wait
        await client.send("one", "two", "three")
        assert await daemon.stop() == 0
    finally:
        client.close()
    log = "\n".join(daemon.log)
    assert "Traceback" not in log
    assert " ERROR " not in log


@pytest.mark.parametrize(("sig", "loop"), [(signal.SIGTERM, "uvloop"), (signal.SIGINT, "asyncio")])
async def test_signal_shuts_down_gracefully(sig: signal.Signals, loop: str) -> None:
    daemon = await Daemon.start("--loop", loop)
    client = await LineClient.open("127.0.0.1", daemon.port)
    try:
        await client.use_json()
        await client.register("stayer")
        stopping = asyncio.create_task(daemon.stop(sig))
        shutdown = await client.expect("shutdown")
        assert shutdown["reason"]
        await client.wait_closed()
        client.close()  # as nc and telnet do when the server closes
        assert await stopping == 0
    finally:
        client.close()
    log = "\n".join(daemon.log)
    assert "shutdown complete" in log
    assert "Traceback" not in log
    assert "Task was destroyed" not in log


async def test_port_from_environment_and_json_logs() -> None:
    port = free_port()
    daemon = await Daemon.start("--log-format", "json", env={"CHATD_PORT": str(port)}, port=None)
    try:
        assert daemon.port == port
    finally:
        assert await daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log]
    assert any(r["msg"].startswith("listening on") for r in records)
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHATD_PORT": "abc"}, "argument --port: invalid int value: 'abc'"),
        ({"CHATD_LOG_LEVEL": "verbose"}, "invalid level 'verbose'"),
    ],
)
def test_bad_environment_is_a_usage_error(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_cli("--version").returncode == 0
    result = run_cli("serve")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_operators_come_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chatd.cli.args import build_parser, settings_from_args

    monkeypatch.setenv("CHATD_OPERS", "alice, bob,")
    args = build_parser().parse_args(["serve", "--oper", "carol"])
    assert settings_from_args(args).opers == ("alice", "bob", "carol")
    monkeypatch.delenv("CHATD_OPERS")
    assert settings_from_args(build_parser().parse_args(["serve"])).opers == ()
