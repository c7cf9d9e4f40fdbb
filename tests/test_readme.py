"""Every command in README.md's shell blocks, run as a user would type it.

The commands are read from README.md's ```sh blocks when the tests are
collected, each is given to the runner whose role matches it (``ROLES``),
and :func:`test_every_readme_command_has_one_runner` fails for a command
that has none, so a command added to the README is run here or named as
missing. A runner executes the README's own text; only ports and paths
change:

- a port the command names (``--port 9999``, ``--irc-port 6667``,
  ``localhost:9998``, ``-p 6667``, ``redis://127.0.0.1:6379/0``) becomes a
  free loopback port, the same one
  for the same number throughout a test, and a default the command relies
  on comes from ``CHATD_PORT`` / ``CHATD_TLS_PORT``, which chatd reads;
- commands run in a temporary directory that holds this checkout's
  ``scripts``, ``.venv`` and ``pyproject.toml`` (files the commands write,
  such as the certificate pair, land there), with ``XDG_DATA_HOME`` in it,
  so the default database is a temporary one.

Daemons (``run.sh``) are stopped with SIGTERM once they serve and must exit
0; the clients (``nc``, ``telnet``, ``chatd connect``, ``openssl s_client``)
talk to a live daemon through their stdin and stdout, and ``irssi`` runs in a
tmux session of its own, typed into with the README's lines for it (see
tests/test_irc_terminal.py). ``test.sh`` runs its
lint and type checks for real and, unless the command names one test, has
pytest collect what it would run (running the whole suite from inside the
suite would never end). ``docker compose`` needs a Docker engine: the compose
file is validated with the Compose binary of the dev extras, then the test
skips, naming what is missing; under CI=true, where nothing may skip, it
passes on that validation and the run's summary says what was not run.

The tests are synchronous, each running its own event loop: what is tested
runs in child processes, so running every test under both loops (as the
async tests do) would only double the time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import urllib.request
import zipfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import (
    DEADLINE,
    LineClient,
    RedisServer,
    free_port,
    needs,
    open_json,
    signal_child,
)
from tests.test_deploy import compose_config
from tests.test_irc_terminal import Pane, irssi_home, joined, left, readme_lines, whispered

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
#: Starting a daemon through run.sh (bash, the venv check, chatd's imports)
#: on a busy machine; a safety net, not a synchroniser.
START = 2 * DEADLINE


# ---------------------------------------------------------------------------
# Reading the README


@dataclasses.dataclass(frozen=True, slots=True)
class ReadmeCommand:
    text: str  # as written, without its comment
    section: str  # the heading above its block
    line: int  # in README.md

    def __str__(self) -> str:
        return self.text


def readme_commands(text: str) -> list[ReadmeCommand]:
    """Each command line of the shell blocks (```sh, ```bash, ```shell)."""
    found: list[ReadmeCommand] = []
    section = ""
    fence: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if fence is None:
            if m := re.match(r"^(```+)\s*(\S*)", raw):
                fence = m.group(1) if m.group(2) in ("sh", "bash", "shell") else m.group(1) + "!"
            elif m := re.match(r"^#+\s+(.*?)\s*$", raw):
                section = m.group(1)
            continue
        if raw.startswith(fence.rstrip("!")) and not raw.strip("`"):
            fence = None
            continue
        if fence.endswith("!"):
            continue  # a block that is not shell
        code = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not code:
            continue
        # What a shell would run: the comment must not have been inside quotes.
        assert shlex.split(code) == shlex.split(raw, comments=True), f"README.md:{number}: {raw}"
        found.append(ReadmeCommand(code, section, number))
    assert fence is None, "README.md ends inside a code block"
    return found


COMMANDS = readme_commands(README.read_text())

#: Role -> (section title, command): which runner runs which README command.
#: Both are regular expressions matched in full.
ROLES: dict[str, tuple[str, str]] = {
    "quick start: run.sh": ("Quick start", r"\./scripts/run\.sh"),
    "test.sh": (".*", r"\./scripts/test\.sh(?: .+)?"),
    "connecting: nc": ("Connecting", r"nc localhost \d+"),
    "connecting: telnet": ("Connecting", r"telnet localhost \d+"),
    "connecting: chatd connect": ("Connecting", r"\.venv/bin/chatd connect"),
    "browser: run.sh": ("In a browser", r"\./scripts/run\.sh --http-port \d+"),
    "tls: gencert": ("Over TLS", r"\.venv/bin/chatd gencert"),
    "tls: run.sh": (
        "Over TLS",
        r"\./scripts/run\.sh --tls-cert (\S+) --tls-key (\S+) --http-port \d+",
    ),
    "tls: chatd connect": ("Over TLS", r"\.venv/bin/chatd connect --cafile \S+"),
    "tls: s_client": ("Over TLS", r"openssl s_client -quiet -connect localhost:\d+"),
    "irc: run.sh": ("With an IRC client", r"\./scripts/run\.sh --irc-port \d+"),
    "irc: irssi": ("With an IRC client", r"irssi -c 127\.0\.0\.1 -p \d+ -n (\S+)"),
    "cluster: run.sh": (
        "Several daemons, one chat",
        r"\./scripts/run\.sh --port \d+ +--redis \S+ --node-id \S+",
    ),
    "build.sh": ("Development", r"\./scripts/build\.sh"),
    "soak.sh": ("Development", r"\./scripts/soak\.sh --seconds \d+"),
    "docker compose": ("Docker", r"docker compose .+"),
    "docker: nc": ("Docker", r"nc localhost \d+"),
}
#: Roles that several commands may have.
MANY = {"test.sh", "cluster: run.sh", "docker compose", "docker: nc"}


def roles_of(command: ReadmeCommand) -> list[str]:
    return [
        role
        for role, (section, pattern) in ROLES.items()
        if re.fullmatch(section, command.section) and re.fullmatch(pattern, command.text)
    ]


def commands(role: str) -> list[ReadmeCommand]:
    """The README's commands in this role, in README order, each text once."""
    found: dict[str, ReadmeCommand] = {}
    for command in COMMANDS:
        if role in roles_of(command):
            found.setdefault(command.text, command)
    return list(found.values())


def command(role: str) -> ReadmeCommand:
    found = commands(role)
    if len(found) != 1:
        pytest.fail(f"README.md has {len(found)} commands for {role!r}, this test runs one")
    return found[0]


def test_the_readme_is_read() -> None:
    """The parser finds the quick start, so a broken parser cannot pass as an empty README."""
    assert "./scripts/run.sh" in [c.text for c in COMMANDS], COMMANDS


def test_every_readme_command_has_one_runner() -> None:
    unclaimed = [f"README.md:{c.line}: {c.text}  (under {c.section!r})" for c in COMMANDS]
    problems = [
        f"{where}: no runner in tests/test_readme.py"
        if not (roles := roles_of(c))
        else f"{where}: several runners {roles}"
        for c, where in zip(COMMANDS, unclaimed, strict=True)
        if len(roles_of(c)) != 1
    ]
    assert not problems, "\n".join(problems)
    stale = [role for role in ROLES if not commands(role)]
    assert not stale, f"no README command for these runners any more: {stale}"
    for role in set(ROLES) - MANY:
        assert len(commands(role)) == 1, f"{role}: {commands(role)}"


# ---------------------------------------------------------------------------
# Where the commands run: a temporary checkout, free ports


#: Where a command names a port: --port N, --http-port N, --tls-port N,
#: --irc-port N, --irc-tls-port N, -p N (irssi), localhost N (nc, telnet),
#: localhost:N, 127.0.0.1:N (a URL).
PORT_AT = re.compile(
    r"(--(?:http-|tls-|irc-|irc-tls-)?port[ =]|(?<![\w-])-p |\b(?:localhost|127\.0\.0\.1)[ :])"
    r"(\d+)\b"
)


class Sandbox:
    """A temporary working directory that looks like this checkout to the commands."""

    def __init__(self, root: Path, checkout: Path | None = None) -> None:
        """``checkout``: a copy of the checkout to run in, instead of links to this one."""
        if checkout is None:
            checkout = root / "checkout"
            checkout.mkdir()
            for name in ("scripts", ".venv", "pyproject.toml"):
                (checkout / name).symlink_to(REPO / name)
        self.cwd = checkout
        self.data = root / "data"
        self.ports: dict[int, int] = {}

    def port(self, written: int) -> int:
        """The free port that stands for ``written`` in this test."""
        if written not in self.ports:
            port = free_port()
            while port in self.ports.values():
                port = free_port()
            self.ports[written] = port
        return self.ports[written]

    def argv(self, command: ReadmeCommand) -> list[str]:
        """The command as written, its ports replaced."""
        text = PORT_AT.sub(lambda m: m.group(1) + str(self.port(int(m.group(2)))), command.text)
        return shlex.split(text)

    def env(self, **extra: str) -> dict[str, str]:
        """The user's environment, without settings that would change what runs."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CHATD_", "COMPOSE_", "DOCKER_", "PYTEST_"))
        }
        return {**env, "XDG_DATA_HOME": str(self.data), **extra}


def venv_up_to_date() -> None:
    """If .venv is older than pyproject.toml, a script run from a temporary
    checkout would reinstall chatd from there into this .venv: stop first."""
    stamps = list((REPO / ".venv").glob(".chatd-installed*"))
    newest = max((s.stat().st_mtime for s in stamps), default=0.0)
    if newest < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.fail(".venv is not up to date with pyproject.toml: run ./scripts/test.sh")


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    venv_up_to_date()
    return Sandbox(tmp_path)


def run_async(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


# ---------------------------------------------------------------------------
# A command running in a child process


class Child:
    """A README command in a child process, its stdout and stderr lines collected."""

    def __init__(self, what: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.what = what
        self.proc = proc
        self.lines: list[str] = []
        self._cursor = 0
        self._changed = asyncio.Event()
        self._collectors = [
            asyncio.create_task(self._collect(proc.stdout)),
            asyncio.create_task(self._collect(proc.stderr)),
        ]

    @classmethod
    async def start(cls, argv: list[str], *, cwd: Path, env: dict[str, str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(shlex.join(argv), proc)

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
            self._changed.set()
        self._changed.set()

    def output(self) -> str:
        return "\n".join(self.lines)

    async def expect(
        self, pattern: str, *, anywhere: bool = False, timeout: float = DEADLINE
    ) -> re.Match[str]:
        """Wait for a line after the last one expected (any line: ``anywhere``) to match."""
        start = 0 if anywhere else self._cursor
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for i in range(start, len(self.lines)):
                        if m := re.search(pattern, self.lines[i]):
                            if not anywhere:
                                self._cursor = i + 1
                            return m
                    start = max(start, len(self.lines)) if not anywhere else 0
                    if all(task.done() for task in self._collectors):
                        break
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        raise AssertionError(f"{self.what}: no line matching {pattern!r}:\n{self.output()}")

    async def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        for line in lines:
            self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait(self, timeout: float = DEADLINE) -> int:
        """The exit status, once all the output is in."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
                await asyncio.gather(*self._collectors)
        except TimeoutError:
            raise AssertionError(f"{self.what}: still running:\n{self.output()}") from None
        return code

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process by its pid, as a user would; its exit status."""
        signal_child(self.proc, sig)
        return await self.wait()

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            signal_child(self.proc)
            await self.proc.wait()
        for task in self._collectors:
            task.cancel()
        await asyncio.gather(*self._collectors, return_exceptions=True)


class Children(contextlib.AsyncExitStack):
    """Starts README commands; whatever is left running is killed at the end."""

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__()
        self.sandbox = sandbox

    async def start(self, command: ReadmeCommand, *, cwd: Path | None = None, **env: str) -> Child:
        child = await Child.start(
            self.sandbox.argv(command), cwd=cwd or self.sandbox.cwd, env=self.sandbox.env(**env)
        )
        self.push_async_callback(child.aclose)
        return child

    async def client(self, port: int, nick: str) -> LineClient:
        client = await open_json(port, nick)
        self.callback(client.close)
        return client


async def serving(daemon: Child, *kinds: str) -> dict[str, int]:
    """Wait until the daemon listens on each kind of port ("plain", "TLS", "http",
    "https"); the ports it reports. Exits 0 on SIGTERM later, see :func:`stopped`."""
    ports: dict[str, int] = {}
    for kind in kinds:
        if kind.startswith("http"):
            pattern = rf"web page and WebSocket on {kind}://127\.0\.0\.1:(\d+)/"
        else:
            pattern = rf"listening on 127\.0\.0\.1:(\d+) \({kind}\)"
        ports[kind] = int((await daemon.expect(pattern, anywhere=True, timeout=START)).group(1))
    return ports


async def stopped(daemon: Child) -> None:
    """SIGTERM by pid: run.sh has become chatd itself, which says goodbye and exits 0.

    (Clients still connected hold the exit for the shutdown grace, 5 s, unless
    they close: the tests close theirs first.)
    """
    assert await daemon.stop() == 0, daemon.output()
    await daemon.expect(r"shutdown complete", anywhere=True)


def said(nick: str, text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "message" and e.get("from") == nick and e.get("text") == text


async def talk(client: Child, nick: str, peer: LineClient, *, welcome: bool = True) -> None:
    """The README's session through a client's stdin and stdout: pick a
    nickname, hear someone who is already there, answer, quit; exit 0."""
    assert peer.nick is not None
    if welcome:
        await client.expect(r"^\* welcome to chatd .* Pick a nickname")
    await client.send(nick)
    await client.expect(rf"^\* you are {nick}$")
    await client.expect(r"^\* now talking in #general$")
    await peer.send(f"hi {nick}")
    await client.expect(rf"\[general\] {peer.nick}: hi {nick}$")
    await client.send(f"hi {peer.nick}")
    await peer.expect(said(nick, f"hi {peer.nick}"), f"{nick}'s answer")
    await client.send("/quit back later")
    await client.expect(r"^\* bye \(back later\)$")
    assert await client.wait() == 0, client.output()


def get(url: str, cafile: Path | None = None) -> tuple[int, str, bytes]:
    """GET without the user's proxy; status, content type, body."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if cafile is not None:
        handlers.append(
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile))
        )
    with urllib.request.build_opener(*handlers).open(url, timeout=DEADLINE) as answer:
        return answer.status, answer.headers.get_content_type(), answer.read()


async def check_web(port: int, scheme: str = "http", cafile: Path | None = None) -> None:
    """The page, /healthz and /metrics answer, as the README says."""
    base = f"{scheme}://127.0.0.1:{port}"
    status, kind, body = await asyncio.to_thread(get, f"{base}/", cafile)
    assert (status, kind) == (200, "text/html")
    assert b"chatd" in body
    status, _, _ = await asyncio.to_thread(get, f"{base}/healthz", cafile)
    assert status == 200
    status, _, body = await asyncio.to_thread(get, f"{base}/metrics", cafile)
    assert status == 200
    assert b"chatd_clients" in body


# ---------------------------------------------------------------------------
# Quick start and Connecting


def test_run_sh_serves_nc_telnet_and_chatd_connect(sandbox: Sandbox) -> None:
    """``./scripts/run.sh`` serves on its default port with the default database
    (under XDG_DATA_HOME); nc, telnet and ``chatd connect`` chat with it."""
    needs("nc", "netcat-openbsd")
    needs("telnet", "telnet")

    async def scenario() -> None:
        async with Children(sandbox) as children:
            port = sandbox.port(9999)  # run.sh and chatd connect use the default
            daemon = await children.start(command("quick start: run.sh"), CHATD_PORT=str(port))
            assert (await serving(daemon, "plain"))["plain"] == port
            assert (sandbox.data / "chatd" / "chatd.db").is_file()
            bob = await children.client(port, "bob")
            for nick, role in [("alice", "connecting: nc"), ("carol", "connecting: telnet")]:
                client = await children.start(command(role))
                await talk(client, nick, bob)
            client = await children.start(
                command("connecting: chatd connect"), CHATD_PORT=str(port)
            )
            await talk(client, "dave", bob, welcome=False)
            bob.close()
            await stopped(daemon)

    run_async(scenario())


def test_run_sh_with_a_web_port(sandbox: Sandbox) -> None:
    """An argument to run.sh goes to ``chatd serve``: the web port serves the
    page, /healthz and /metrics. (run.sh once took its arguments as pip extras.)"""

    async def scenario() -> None:
        async with Children(sandbox) as children:
            cmd = command("browser: run.sh")
            daemon = await children.start(cmd, CHATD_PORT=str(sandbox.port(9999)))
            ports = await serving(daemon, "http", "plain")
            assert ports["http"] == sandbox.port(int(cmd.text.split()[-1]))
            await check_web(ports["http"])
            await stopped(daemon)

    run_async(scenario())


# ---------------------------------------------------------------------------
# Over TLS


def test_tls_gencert_run_sh_chatd_connect_and_s_client(sandbox: Sandbox) -> None:
    """The TLS walk-through in order: a certificate pair, the daemon with it,
    the terminal client verifying it, and openssl's raw client."""
    needs("openssl", "openssl")

    async def scenario() -> None:
        async with Children(sandbox) as children:
            gencert = await children.start(command("tls: gencert"))
            assert await gencert.wait() == 0, gencert.output()
            serve = command("tls: run.sh")
            names = re.fullmatch(ROLES["tls: run.sh"][1], serve.text)
            assert names is not None
            cert, key = (sandbox.cwd / name for name in names.groups())
            check_certificate(cert, key)

            plain, tls = sandbox.port(9999), sandbox.port(9998)
            daemon = await children.start(serve, CHATD_PORT=str(plain), CHATD_TLS_PORT=str(tls))
            ports = await serving(daemon, "https", "plain", "TLS")
            assert ports["TLS"] == tls
            assert ports["https"] == sandbox.port(int(serve.text.split()[-1]))
            await check_web(ports["https"], "https", cafile=cert)
            bob = await children.client(plain, "bob")  # plain and TLS users meet
            client = await children.start(command("tls: chatd connect"), CHATD_TLS_PORT=str(tls))
            await talk(client, "alice", bob, welcome=False)
            client = await children.start(command("tls: s_client"))
            await talk(client, "carol", bob)
            bob.close()
            await stopped(daemon)

    run_async(scenario())


def check_certificate(cert_path: Path, key_path: Path) -> None:
    """What the README says gencert writes: ECDSA P-256 for localhost, 127.0.0.1 and ::1."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert key_path.stat().st_mode & 0o077 == 0, "the key is readable by others"


# ---------------------------------------------------------------------------
# With an IRC client


@pytest.mark.slow
def test_irc_run_sh_and_irssi(sandbox: Sandbox, tmp_path: Path) -> None:
    """``run.sh --irc-port`` serves IRC on the port it names (a registration
    there is welcomed) beside the chat port; the README's irssi command, run
    as written in tmux (HOME a temporary one, whose ~/.irssi turns irssi's
    flood queue off), reaches it, and the lines the README types in irssi join
    #general, talk with bob (a line client) both ways, message him privately
    and quit, as bob sees."""
    needs("irssi", "irssi")
    needs("tmux", "tmux")

    async def scenario() -> None:
        async with Children(sandbox) as children:
            serve = command("irc: run.sh")
            daemon = await children.start(serve, CHATD_PORT=str(sandbox.port(9999)))
            ports = await serving(daemon, "plain", "IRC")
            assert ports["IRC"] == sandbox.port(int(serve.text.split()[-1]))
            await irc_welcomes(ports["IRC"], "carol")
            bob = await children.client(ports["plain"], "bob")

            irssi = command("irc: irssi")
            nick = re.fullmatch(ROLES["irc: irssi"][1], irssi.text)
            assert nick is not None
            home = tmp_path / "home"
            irssi_home(home / ".irssi")  # the user's ~/.irssi, with no flood queue
            pane = await Pane.start(
                sandbox.argv(irssi), cwd=sandbox.cwd, env=sandbox.env(HOME=str(home))
            )
            children.push_async_callback(pane.close)
            await pane.expect(rf"Welcome to the chatd IRC network, {nick[1]}!")
            await irssi_session(pane, nick[1], bob, readme_lines("/join "))
            bob.close()
            await stopped(daemon)

    run_async(scenario())


async def irc_welcomes(port: int, nick: str) -> None:
    """An IRC registration (NICK, USER) on ``port`` gets chatd's welcome."""
    client = await LineClient.open("127.0.0.1", port)
    try:
        await client.send(f"NICK {nick}\r\n", f"USER {nick} 0 * :{nick}\r\n")
        await client.expect_line(rf"^:chatd 001 {nick} :Welcome to the chatd IRC network")
        await client.send("QUIT :done\r\n")
        assert b"\r\nERROR :Closing link" in await client.wait_closed()
    finally:
        client.close()


async def irssi_session(pane: Pane, nick: str, bob: LineClient, lines: list[str]) -> None:
    """Type the README's irssi lines; after each, what bob (in #general) sees.
    Once in #general, bob speaks, and irssi shows it."""
    room = "general"
    for line in lines:
        await pane.type(line)
        if m := re.fullmatch(r"/join #(\S+)", line):
            room = m[1]
            assert room == "general", f"{line}: bob is not there"
            await bob.expect(joined(nick, room), f"{nick} joining #{room}")
            await pane.expect(rf"{nick} \[\S+\] has joined #{room}$")
            await bob.send(f"hi {nick}")
            await pane.expect(rf"<.?{bob.nick}> hi {nick}$")
        elif m := re.fullmatch(r"/msg (\S+) (.+)", line):
            assert m[1] == bob.nick, f"{line}: a private message for bob, please"
            await bob.expect(whispered(nick, m[2]), f"{nick}'s private message")
        elif m := re.fullmatch(r"/quit(?: (.+))?", line):
            reason = f"quit: {m[1]}" if m[1] else None
            await bob.expect(left(nick, reason, room), f"{nick} quitting")
            await pane.ended()
        else:
            assert not line.startswith("/"), f"README.md: no check for {line!r}"
            await bob.expect(said(nick, line), f"{nick}'s line")


# ---------------------------------------------------------------------------
# Several daemons, one chat; and the nc commands of the Docker section


@pytest.fixture
def redis_server_exe() -> str:
    return needs("redis-server", "redis-server")


@pytest.mark.slow
def test_cluster_run_sh_pair_and_nc_to_each_node(sandbox: Sandbox, redis_server_exe: str) -> None:
    """The two run.sh commands of "Several daemons" share one chat through
    Redis (on the port their URL names); the Docker section's ``nc`` to the
    first node's port and to the second's reach one node each, and their users
    hear each other. (The compose file publishes those ports for its nodes:
    see the ``docker compose`` tests.)"""
    needs("nc", "netcat-openbsd")

    async def scenario() -> None:
        nodes_cmds = commands("cluster: run.sh")
        assert len(nodes_cmds) == 2, nodes_cmds
        redis_url = re.search(r"redis://127\.0\.0\.1:(\d+)/", nodes_cmds[0].text)
        assert redis_url is not None, nodes_cmds[0]
        redis = await RedisServer.start(redis_server_exe, sandbox.port(int(redis_url[1])))
        try:
            async with Children(sandbox) as children:
                nodes = [await children.start(cmd) for cmd in nodes_cmds]
                ports = [(await serving(node, "plain"))["plain"] for node in nodes]
                node_port = {
                    sandbox.port(int(shlex.split(cmd.text)[2])): n
                    for n, cmd in enumerate(nodes_cmds)
                }
                assert sorted(node_port) == sorted(ports)
                nc_cmds = commands("docker: nc")
                assert len(nc_cmds) == 2, nc_cmds
                for nick, cmd in zip(["alice", "erin"], nc_cmds, strict=True):
                    here = node_port[sandbox.port(int(cmd.text.split()[-1]))]
                    other = ports[1 - here]
                    peer = await children.client(other, f"peer-of-{nick}")
                    await talk(await children.start(cmd), nick, peer)
                    peer.close()
                for node in nodes:
                    await stopped(node)
        finally:
            await redis.stop()

    run_async(scenario())


# ---------------------------------------------------------------------------
# Development: test.sh, build.sh, soak.sh


def collects_only(cmd: ReadmeCommand) -> bool:
    """A test.sh command that names one test runs it; any other has pytest
    collect its selection, since it would run the suite this test is part of."""
    return "::" not in cmd.text


@pytest.fixture(scope="module")
def test_sh_results() -> Iterator[
    dict[str, concurrent.futures.Future[subprocess.CompletedProcess[str]]]
]:
    """Every README test.sh command, started once for the module, two at a time:
    each runs ruff and mypy (seconds each), and they are independent."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    runs = {}
    for cmd in commands("test.sh"):
        extra = {"PYTEST_ADDOPTS": "--collect-only -q"} if collects_only(cmd) else {}
        runs[cmd.text] = pool.submit(
            subprocess.run,
            shlex.split(cmd.text),
            cwd=REPO,  # test.sh works on the checkout it is in, wherever it is called from
            env={**env, **extra},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
    yield runs
    pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def _start_test_sh_early(request: pytest.FixtureRequest) -> None:
    """The test.sh runs take the longest, on their own CPU: they start with the
    module and run alongside the tests that mostly wait on daemons."""
    if any(item.name.startswith("test_test_sh[") for item in request.session.items):
        request.getfixturevalue("test_sh_results")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("cmd", commands("test.sh"), ids=str)
def test_test_sh(
    cmd: ReadmeCommand,
    test_sh_results: dict[str, concurrent.futures.Future[subprocess.CompletedProcess[str]]],
) -> None:
    """ruff, the format check and mypy pass, and pytest accepts the arguments
    and selects tests (runs them, for one named test)."""
    result = test_sh_results[cmd.text].result(timeout=170)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "All checks passed!" in out, out  # ruff
    assert "Success: no issues found" in out, out  # mypy
    if collects_only(cmd):
        m = re.search(r"^(\d+)(?:/\d+)? tests? collected", out, re.MULTILINE)
        assert m is not None, out
        assert int(m[1]) > 0, out
    else:
        m = re.search(r"\b(\d+) passed\b", out)
        assert m is not None, out
        assert int(m[1]) > 0, out
        assert " failed" not in out, out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_build_sh(tmp_path: Path) -> None:
    """A wheel and an sdist, built from a copy of the checkout (dist/ is written
    next to scripts/); the wheel holds the web page and the ``chatd`` command."""
    venv_up_to_date()
    copy = tmp_path / "checkout"
    shutil.copytree(
        REPO,
        copy,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".*_cache", ".hypothesis", "dist", "build", "__pycache__", "*.db"
        ),
    )
    # copytree keeps the times: run.sh's check sees .venv as up to date.
    (copy / ".venv").symlink_to(REPO / ".venv")
    sandbox = Sandbox(tmp_path, copy)
    result = subprocess.run(
        sandbox.argv(command("build.sh")),
        cwd=sandbox.cwd,
        env=sandbox.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = sorted(p.name for p in (copy / "dist").iterdir())
    assert len(built) == 2, built
    wheel = next((copy / "dist").glob("chatd-*-py3-none-any.whl"))
    assert next((copy / "dist").glob("chatd-*.tar.gz"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "chatd = chatd.cli:main" in archive.read(entry_points).decode()
    assert {"chatd/webpage/index.html", "chatd/webpage/app.js"} <= names


@pytest.mark.slow
def test_soak_sh_runs_and_stops_cleanly_on_sigterm(sandbox: Sandbox) -> None:
    """The soak as written runs for half an hour; the test sees it begin (its
    daemon answers), stops it with SIGTERM, and finds that daemon stopped too."""

    async def scenario() -> None:
        async with Children(sandbox) as children:
            soak = await children.start(command("soak.sh"))
            began = await soak.expect(
                r"^soak: chatd serve \(pid (\d+)\) on 127\.0\.0\.1:(\d+), \d+ clients churning "
                r"for 1800 s$",
                timeout=START,
            )
            daemon_pid, port = int(began[1]), int(began[2])
            client = await LineClient.open("127.0.0.1", port)
            try:
                assert (await client.line()).startswith("* welcome")
            finally:
                client.close()
            assert await soak.stop() == 128 + signal.SIGTERM, soak.output()
            await soak.expect(r"^soak: stopped by SIGTERM before the end", anywhere=True)
            with pytest.raises(ProcessLookupError):
                os.kill(daemon_pid, 0)

    run_async(scenario())


# ---------------------------------------------------------------------------
# Docker


def published(config: dict[str, Any]) -> dict[int, str]:
    """Host port -> the service that publishes it."""
    return {
        int(port["published"]): name
        for name, service in config["services"].items()
        for port in service.get("ports", [])
    }


@pytest.mark.parametrize("cmd", commands("docker compose"), ids=str)
def test_docker_compose(cmd: ReadmeCommand) -> None:
    """The file as each command reads it: the Docker Compose binary of the dev
    extras resolves it with the command's flags, the services it would start
    publish distinct host ports (the ones the README's ``nc`` commands use,
    for the cluster), and ``down`` names a set that ``up`` starts. The
    commands themselves run, as written, in tests/test_container.py, which
    builds the image and starts the containers with podman."""
    argv = shlex.split(cmd.text)
    assert argv[:2] == ["docker", "compose"], argv
    *flags, action = argv[2:]
    assert action in ("up", "down"), f"{cmd}: no check for 'docker compose {action}'"
    profiles = flags[1::2]
    assert flags[::2] == ["--profile"] * len(profiles), f"{cmd}: flags this test does not know"
    config = compose_config(*profiles)
    assert config["services"], f"{cmd}: no service would start"
    ports = published(config)
    every = [p["published"] for s in config["services"].values() for p in s.get("ports", [])]
    assert len(every) == len(ports), f"{cmd}: two services publish one host port: {every}"
    if action == "down":
        ups = [c.text.split()[2:-1] for c in commands("docker compose") if c.text.endswith(" up")]
        assert flags in ups, f"{cmd}: no 'up' in the README starts what this stops"
    if "cluster" in profiles and action == "up":
        # The README's nc commands reach the cluster's two chatd nodes.
        reached = {ports.get(int(c.text.split()[-1])) for c in commands("docker: nc")}
        assert None not in reached, (reached, ports)
        assert len(reached) == 2, (reached, ports)
        assert all(config["services"][s]["environment"].get("CHATD_REDIS") for s in reached)
