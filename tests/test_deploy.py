"""Container deployment: the Dockerfile, docker-compose.yml and ``chatd health``.

No Docker engine is needed, and none is used: hadolint lints the Dockerfile,
the Docker Compose binary validates the compose file and resolves which services
each profile starts, and both files are parsed here and held against chatd's
own argument parser (every command they run parses, every CHATD_* variable
they set is one chatd reads, every port agrees). Building the image and
running the containers is tests/test_container.py's part. ``chatd health``
runs against real daemons.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest

from chatd.cli import build_parser, settings_from_args
from chatd.config import Settings
from chatd.transports.tls import generate_certificate
from tests.helpers import DEADLINE, Daemon, child_env, free_port, signal_child, tool

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
#: The CLI's source: the cli package, and the settings its serve options are made from.
CLI_SOURCES = (
    REPO / "src" / "chatd" / "config.py",
    *sorted((REPO / "src" / "chatd" / "cli").glob("*.py")),
)


# ---------------------------------------------------------------------------
# The tools: dev extras, so they are in this virtualenv.


def run_tool(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # The user's own COMPOSE_PROFILES, COMPOSE_FILE or DOCKER_HOST would change
    # what compose resolves: it sees only the files here.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    )


def hadolint(path: Path) -> list[dict[str, Any]]:
    result = run_tool(tool("hadolint"), "-f", "json", str(path))
    assert result.stdout.strip(), f"no JSON from hadolint: {result.stderr}"
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    assert result.returncode == (1 if findings else 0), result
    return findings


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return run_tool(tool("docker-compose"), "-f", str(file), *args)


def compose_config(*profiles: str) -> dict[str, Any]:
    """The resolved compose model, as ``docker compose [--profile P] up`` would use it."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


# ---------------------------------------------------------------------------
# Reading the Dockerfile


@dataclasses.dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped, as Docker reads them."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # also inside a continuation, where Docker skips them too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return found


def exec_form(args: str, what: str) -> list[str]:
    """A JSON array of strings: exec form, so no shell stands between Docker and chatd."""
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        argv = None
    assert isinstance(argv, list), f"{what} is not in exec form: {args}"
    assert argv, f"{what} is empty"
    assert all(isinstance(a, str) for a in argv), f"{what}: {argv}"
    return argv


@dataclasses.dataclass(frozen=True, slots=True)
class Image:
    """What the final stage of the Dockerfile says about the running container."""

    stages: int
    env: dict[str, str]
    expose: set[int]
    volumes: list[str]
    user: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    stopsignal: str
    base_images: list[str]


def read_image() -> Image:
    every = instructions(DOCKERFILE.read_text())
    starts = [i for i, ins in enumerate(every) if ins.keyword == "FROM"]
    final = every[starts[-1] :]
    env: dict[str, str] = {}
    expose: set[int] = set()
    volumes: list[str] = []
    single: dict[str, str] = {}
    for ins in final:
        if ins.keyword == "ENV":
            tokens = shlex.split(ins.args)
            if "=" not in tokens[0]:  # the old ENV KEY VALUE form
                env[tokens[0]] = " ".join(tokens[1:])
            else:
                for token in tokens:
                    key, _, value = token.partition("=")
                    env[key] = value
        elif ins.keyword == "EXPOSE":
            expose.update(int(port.split("/")[0]) for port in ins.args.split())
        elif ins.keyword == "VOLUME":
            args = ins.args
            volumes += exec_form(args, "VOLUME") if args.startswith("[") else args.split()
        else:
            single[ins.keyword] = ins.args
    health = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.*)", single.get("HEALTHCHECK", ""), re.DOTALL)
    assert health is not None, f"no HEALTHCHECK ... CMD: {single.get('HEALTHCHECK')}"
    return Image(
        stages=len(starts),
        env=env,
        expose=expose,
        volumes=volumes,
        user=single.get("USER", ""),
        entrypoint=exec_form(single.get("ENTRYPOINT", ""), "ENTRYPOINT"),
        cmd=exec_form(single["CMD"], "CMD") if "CMD" in single else [],
        healthcheck=exec_form(health.group(1), "HEALTHCHECK CMD"),
        stopsignal=single.get("STOPSIGNAL", ""),
        base_images=[every[i].args.split()[0] for i in starts],
    )


@pytest.fixture(scope="module")
def image() -> Image:
    return read_image()


# ---------------------------------------------------------------------------
# chatd's own view of a command line


def env_names_read_by_cli() -> set[str]:
    """Every CHATD_* name that appears as a whole string in the CLI's source."""
    return {
        node.value
        for source in CLI_SOURCES
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"CHATD_[A-Z0-9_]+", node.value)
    }


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ as in the container: the given CHATD_* variables and no others."""
    outside = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    with mock.patch.dict(os.environ, {**outside, **env}, clear=True):
        yield


def parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    """Parse a ``chatd ...`` command line with chatd's parser, in that environment.

    The parser reads its defaults from the environment when it is built, so
    it is built inside it, as it would be in the container.
    """
    assert argv[0] == "chatd", f"not a chatd command: {argv}"
    errors = io.StringIO()
    with environment(env), contextlib.redirect_stderr(errors):
        try:
            return build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            raise AssertionError(f"{argv} does not parse: {errors.getvalue()}") from exc


def serve_settings(argv: list[str], env: dict[str, str]) -> Settings:
    """The daemon's Settings for a ``chatd serve`` command line, validated as serve does."""
    args = parse(argv, env)
    assert args.command == "serve", argv
    try:
        return settings_from_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{argv} in {env}: {exc}") from None


# ---------------------------------------------------------------------------
# The Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_is_live(tmp_path: Path) -> None:
    """A Dockerfile with known faults gets findings: the clean result above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install chatd\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013"} <= codes  # the "latest" tag; an unpinned pip install


def test_the_image_is_built_in_stages_from_pinned_bases(image: Image) -> None:
    assert image.stages >= 2, "the wheels are built in a stage of their own"
    for base in image.base_images:
        tag = base.partition(":")[2]
        assert re.fullmatch(r"\d+\.\d+\.\d+-\S+", tag), f"{base}: not an exact version tag"


def test_the_image_runs_chatd_serve_as_pid_1_and_stops_it_with_sigterm(image: Image) -> None:
    argv = image.entrypoint + image.cmd
    assert argv[:2] == ["chatd", "serve"], argv
    assert image.stopsignal == "SIGTERM"
    # Numeric, so no lookup in /etc/passwd; not 0, so not root.
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", image.user), f"USER {image.user}"


def test_the_image_sets_only_variables_chatd_reads(image: Image) -> None:
    read = env_names_read_by_cli()
    assert {"CHATD_HOST", "CHATD_PORT", "CHATD_HTTP_PORT", "CHATD_DB"} <= read  # the scan works
    chatd_env = {name for name in image.env if name.startswith("CHATD_")}
    assert chatd_env, "the image sets no CHATD_* variable"
    assert chatd_env <= read, f"set but never read by chatd: {chatd_env - read}"


def test_in_the_image_serve_listens_where_expose_and_volume_say(image: Image) -> None:
    settings = serve_settings(image.entrypoint + image.cmd, image.env)
    defaults = Settings()
    assert settings.host == "0.0.0.0", "reachable through a published port"
    assert settings.port == defaults.port == 9999
    assert settings.tls_port == defaults.tls_port == 9998
    assert settings.http_port == 8080
    assert settings.irc_port == 6667, "IRC is on in the container"
    expose = {settings.port, settings.tls_port, settings.http_port, settings.irc_port}
    assert image.expose == expose
    assert str(PurePosixPath(settings.db).parent) in image.volumes, (settings.db, image.volumes)


def test_the_healthcheck_is_chatd_health_on_the_web_port(image: Image) -> None:
    args = parse(image.healthcheck, image.env)
    assert args.command == "health"
    assert args.http_port == 8080  # from CHATD_HTTP_PORT, as serve reads it
    assert args.host == "0.0.0.0"  # a wildcard: chatd health probes loopback
    assert args.timeout < 5, "within the HEALTHCHECK's own --timeout=5s"


# ---------------------------------------------------------------------------
# The build context


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's matcher (moby/patternmatcher) compiles it."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(ch, ch if ch in "[]" else re.escape(ch))
        i += 1
    return re.compile(out + "$")


def in_build_context(path: str, rules: list[str]) -> bool:
    """Whether ``path`` is sent to the builder (patternmatcher's MatchesOrParentMatches)."""
    parents = path.split("/")[:-1]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _ignore_regex(os.path.normpath(rule.removeprefix("!")).lstrip("/"))
        if negated != excluded:
            continue
        if regex.match(path) or any(
            regex.match("/".join(parents[: n + 1])) for n in range(len(parents))
        ):
            excluded = not negated
    return not excluded


def test_the_build_context_holds_what_the_build_needs_and_nothing_else() -> None:
    text = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in text if line.strip() and not line.startswith("#")]
    sources = ["pyproject.toml", "README.md", "LICENSE"] + [
        str(p.relative_to(REPO))
        for p in (REPO / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "src/chatd/webpage/index.html" in sources
    for path in sources:
        assert in_build_context(path, rules), f"{path} is needed to build the wheel"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "tests/test_deploy.py",
        "docs/PROTOCOL.md",
        "src/chatd/__pycache__/cli.cpython-311.pyc",
        "chatd.db",
        "chatd-key.pem",
        "src/chatd/dev-key.pem",
        ".mypy_cache/x",
    ):
        assert not in_build_context(path, rules), f"{path} should stay out of the build"


# ---------------------------------------------------------------------------
# docker-compose.yml


def test_compose_file_is_valid() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_validation_is_live(tmp_path: Path) -> None:
    """The same file with one key misspelt fails; unchanged, beside it, it passes."""
    text = COMPOSE_FILE.read_text()
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(text)
    bad.write_text(text.replace("    ports:", "    prots:", 1))
    assert compose("config", "--quiet", file=good).returncode == 0
    result = compose("config", "--quiet", file=bad)
    assert result.returncode != 0
    assert "prots" in result.stderr


def published(service: dict[str, Any]) -> dict[int, int]:
    """Host port -> container port."""
    return {int(p["published"]): int(p["target"]) for p in service.get("ports", [])}


def test_compose_up_starts_the_single_node_only() -> None:
    result = compose("config", "--services")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["chatd"]
    config = compose_config()
    assert published(config["services"]["chatd"]) == {9999: 9999, 8080: 8080, 6667: 6667}


def test_compose_cluster_profile_starts_redis_and_two_nodes_only() -> None:
    result = compose("--profile", "cluster", "config", "--services")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["node1", "node2", "redis"]
    services = compose_config("cluster")["services"]
    assert published(services["node1"]) == {9999: 9999, 8080: 8080, 6667: 6667}
    assert published(services["node2"]) == {10000: 9999, 8081: 8080, 6668: 6667}
    assert published(services["redis"]) == {}, "Redis is for the nodes only"


@pytest.mark.parametrize("profiles", [(), ("cluster",)], ids=["default", "cluster"])
def test_no_two_services_publish_the_same_host_port(profiles: tuple[str, ...]) -> None:
    ports = [port for s in compose_config(*profiles)["services"].values() for port in published(s)]
    assert ports, "nothing published"
    assert len(ports) == len(set(ports)), sorted(ports)


def chatd_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in config["services"].items() if "build" in s}


@pytest.mark.parametrize("profiles", [(), ("cluster",)], ids=["default", "cluster"])
def test_compose_services_agree_with_the_cli(image: Image, profiles: tuple[str, ...]) -> None:
    """Commands parse; every variable is one chatd reads; published ports are the ones served."""
    read = env_names_read_by_cli()
    services = chatd_services(compose_config(*profiles))
    assert services
    for name, service in services.items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        assert set(env) <= read, f"{name} sets variables chatd never reads: {set(env) - read}"
        # As Docker runs it: an entrypoint set here replaces the image's and its CMD.
        if service.get("entrypoint"):
            argv = service["entrypoint"] + (service.get("command") or [])
        else:
            argv = image.entrypoint + (service.get("command") or image.cmd)
        settings = serve_settings(argv, {**image.env, **env})
        targets = set(published(service).values())
        assert targets == {settings.port, settings.http_port, settings.irc_port}, (name, targets)
        check = service.get("healthcheck")
        if check and check.get("test") and check["test"][0] != "NONE":
            assert check["test"][0] == "CMD", f"{name}: the health check in exec form"
            assert parse(check["test"][1:], {**image.env, **env}).command == "health"


def test_compose_single_node_keeps_its_database_in_a_named_volume(image: Image) -> None:
    service = compose_config()["services"]["chatd"]
    db_dir = str(PurePosixPath(image.env["CHATD_DB"]).parent)
    mounts = [v for v in service.get("volumes", []) if v["target"] == db_dir]
    assert mounts, f"nothing mounted on {db_dir}"
    assert mounts[0]["type"] == "volume"
    assert mounts[0]["source"] in compose_config()["volumes"]


def test_compose_cluster_nodes_share_redis_under_distinct_names(image: Image) -> None:
    config = compose_config("cluster")
    redis = config["services"]["redis"]
    assert redis["healthcheck"]["test"], "the nodes wait for Redis to answer"
    nodes = chatd_services(config)
    assert sorted(nodes) == ["node1", "node2"]
    ids = []
    for name, service in nodes.items():
        settings = serve_settings(
            image.entrypoint + image.cmd, {**image.env, **service["environment"]}
        )
        assert settings.redis is not None, f"{name} is not in the cluster"
        url = urlsplit(settings.redis)
        assert url.scheme == "redis"
        assert url.hostname == "redis", "the compose service"
        assert (url.port or 6379) == 6379
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        ids.append(settings.node_id)
    assert ids == ["node1", "node2"]


# ---------------------------------------------------------------------------
# chatd health against real daemons


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    err: str


async def health(*args: str, env: dict[str, str] | None = None) -> Outcome:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatd",
        "health",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(**(env or {})),
    )
    try:
        async with asyncio.timeout(DEADLINE):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            signal_child(proc)
            await proc.wait()
    assert out == b"", "chatd health prints nothing on stdout"
    assert proc.returncode is not None
    return Outcome(proc.returncode, err.decode())


def assert_unhealthy(outcome: Outcome, reason: str) -> None:
    assert outcome.code == 1, outcome
    assert "Traceback" not in outcome.err
    lines = outcome.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("chatd health: unhealthy: "), lines
    assert re.search(reason, lines[0]), lines


async def web_port(daemon: Daemon) -> int:
    line = await daemon.wait_log(r"web page and WebSocket on https?://\S+:\d+/")
    match = re.search(r":(\d+)/$", line)
    assert match is not None, line
    return int(match.group(1))


async def test_health_on_the_chat_port() -> None:
    daemon = await Daemon.start("--host", "127.0.0.1")
    try:
        outcome = await health("--port", str(daemon.port))
        assert outcome == Outcome(0, "")
    finally:
        assert await daemon.stop() == 0


async def test_health_on_the_web_port_and_from_the_environment() -> None:
    daemon = await Daemon.start("--host", "127.0.0.1", "--http-port", "0")
    try:
        http_port = await web_port(daemon)
        assert await health("--port", "1", "--http-port", str(http_port)) == Outcome(0, "")
        # As in the image: a wildcard host and the ports from the environment.
        env = {"CHATD_HOST": "0.0.0.0", "CHATD_PORT": "1", "CHATD_HTTP_PORT": str(http_port)}
        assert await health(env=env) == Outcome(0, "")
        # Without the web port it is the chat port that answers.
        env = {"CHATD_HOST": "0.0.0.0", "CHATD_PORT": str(daemon.port)}
        assert await health(env=env) == Outcome(0, "")
    finally:
        assert await daemon.stop() == 0


async def test_health_over_https_when_the_daemon_has_a_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_certificate(cert, key, ["localhost"])
    daemon = await Daemon.start(
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--tls-port",
        "0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    try:
        http_port = str(await web_port(daemon))
        # CHATD_TLS_CERT, as the daemon's own environment would have it.
        env = {"CHATD_TLS_CERT": str(cert), "CHATD_HTTP_PORT": http_port}
        assert await health(env=env) == Outcome(0, "")
        assert_unhealthy(await health("--no-tls", env=env), r"http://127\.0\.0\.1:\d+/healthz")
    finally:
        assert await daemon.stop() == 0


async def test_health_against_a_closed_port_is_unhealthy_without_a_traceback() -> None:
    port = str(free_port())
    assert_unhealthy(await health("--port", port), rf"chat port 127\.0\.0\.1:{port}: .*refused")
    assert_unhealthy(await health("--http-port", port), r"/healthz: .*refused")


async def test_health_against_the_wrong_port_says_what_came_back() -> None:
    daemon = await Daemon.start("--host", "127.0.0.1")
    try:
        outcome = await health("--http-port", str(daemon.port))
        assert_unhealthy(outcome, r"not an HTTP response: \* welcome to chatd")
    finally:
        assert await daemon.stop() == 0


async def test_health_reports_a_503_with_its_reason() -> None:
    async def unhealthy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"a store write failed in the last 30 s\n"
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(unhealthy, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        outcome = await health("--http-port", str(port))
    assert_unhealthy(outcome, r"/healthz: 503 a store write failed in the last 30 s$")


async def test_health_gives_up_at_its_timeout() -> None:
    """A port that accepts and never answers (a hung daemon): unhealthy at the deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes the handshake; nobody ever reads
        port = str(listener.getsockname()[1])
        outcome = await health("--port", port, "--timeout", "0.5")
        assert_unhealthy(outcome, r"no answer within 0\.5 s")
        outcome = await health("--http-port", port, "--timeout", "0.5")
        assert_unhealthy(outcome, r"no answer within 0\.5 s")
