"""Real containers for the tests: rootful podman, its Docker-compatible API
for the Docker Compose binary, and stand-ins for the registry images.

A machine with no container registry cannot pull ``python:3.11.11-slim-bookworm``
or the Redis image of ``docker-compose.yml``. The stand-in base is made
from Debian's archive instead (debootstrap of bookworm with Python 3.11 and
pip), adjusted to behave like the official image where the Dockerfile relies
on it: ``python`` and ``pip`` on ``/usr/local/bin``, ``pip install`` into the
system site-packages allowed (no ``EXTERNALLY-MANAGED``), the machine's extra
CA certificates trusted so pip can reach the package index. The Redis
stand-in is Debian's redis-server on that base (``standin/redis.Containerfile``).
Both are tagged with the names the project's files use and labelled
``chatd.standin``; they are built once and reused while their recipe is the
same. A real image under that name (no label) is used as it is.

podman runs with its own ``containers.conf`` (``CONTAINERS_CONF``): the runc
runtime (crun refuses a hybrid cgroup layout), the cgroupfs manager and a
file events log (no systemd), netavark (containers of a compose project
find each other by name through aardvark-dns) and ulimits that runc can set
without CAP_SYS_RESOURCE. ``BUILDAH_FORMAT=docker`` keeps the image's
HEALTHCHECK. With no systemd podman runs no health check by itself:
:meth:`Podman.healthchecks` runs them while a test waits on them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import DEADLINE, unavailable

REPO = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "standin"
#: Debian packages the container tests need; .ci/run installs them.
PACKAGES = "podman runc debootstrap containernetworking-plugins netavark aardvark-dns uidmap"
#: What the stand-in base installs besides minbase.
BASE_PACKAGES = "python3.11,python3-venv,python3-pip,ca-certificates"
#: Names of what the tests create start with this, then the pid of the run.
PREFIX = "chatd-test-"
#: A container that takes longer than this to answer is broken.
START_DEADLINE = 60.0


def image_name(ref: str) -> str:
    """A Docker-style short reference in full: ``redis:7`` -> ``docker.io/library/redis:7``."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def dockerfile_base() -> str:
    """The image every stage of the Dockerfile starts FROM (one, by design)."""
    bases = set(re.findall(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE))
    assert len(bases) == 1, f"the Dockerfile starts from {bases}; the stand-in makes one"
    return image_name(bases.pop())


def compose_redis_image() -> str:
    m = re.search(
        r"^  redis:\n(?:    .*\n)*?    image:\s*(\S+)",
        (REPO / "docker-compose.yml").read_text(),
        re.M,
    )
    assert m is not None, "docker-compose.yml has no redis service with an image"
    return image_name(m.group(1))


def apt_mirror() -> str:
    """The Debian mirror apt already uses for bookworm (deb.debian.org if none is found)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if (
                "deb" in fields.get("Types", "").split()
                and fields.get("Enabled", "yes").lower() != "no"
                and "bookworm" in fields.get("Suites", "").split()
                and "main" in fields.get("Components", "").split()
            ):
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.is_file():
            for m in re.finditer(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s+.*\bmain\b", path.read_text(), re.M
            ):
                return m.group(1)
    return "http://deb.debian.org/debian"


def why_no_podman() -> str | None:
    """Why the container tests cannot run here, or None."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root: the tests use rootful podman"
    missing = [p for p in ("podman", "runc", "debootstrap") if shutil.which(p) is None]
    missing += [
        Path(path).name
        for path in ("/usr/lib/podman/netavark", "/usr/lib/podman/aardvark-dns")
        if not os.access(path, os.X_OK)
    ]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install {PACKAGES}; .ci/run does)"
    return None


def require_podman() -> None:
    """Skip without podman, runc and debootstrap; under CI fail: .ci/run installs them."""
    reason = why_no_podman()
    if reason is not None:
        unavailable(f"container tests: {reason}")


class CommandFailed(AssertionError):
    pass


def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
    stdin: Any = subprocess.DEVNULL,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv)}: exit {result.returncode}\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return result


@dataclass
class Built:
    """What :meth:`Podman.ensure_standins` did: seconds per image, None if reused."""

    base: float | None
    redis: float | None


class Podman:
    """Rootful podman with the tests' own containers.conf."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        conf = workdir / "containers.conf"
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = nofile if nofile != resource.RLIM_INFINITY else 1 << 20
        conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
            "\n[network]\n"
            'network_backend = "netavark"\n'
            "\n[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "BUILDAH_FORMAT": "docker"}
        self.env.pop("DOCKER_HOST", None)
        #: What went wrong in the health-check thread (it carries on).
        self.health_errors: list[str] = []

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: Any = subprocess.DEVNULL
    ) -> subprocess.CompletedProcess[str]:
        return run(["podman", *args], env=self.env, timeout=timeout, check=check, stdin=stdin)

    def out(self, *args: str, timeout: float = 120) -> str:
        return self(*args, timeout=timeout).stdout.strip()

    # -- images ------------------------------------------------------------

    def label(self, image: str, name: str) -> str | None:
        """The image's label ``name`` ("" without it), or None without the image."""
        found = self("image", "inspect", "--format", "{{json .Labels}}", image, check=False)
        if found.returncode != 0:
            return None
        return str((json.loads(found.stdout) or {}).get(name, ""))

    def ensure_standins(self) -> Built:
        base, redis = dockerfile_base(), compose_redis_image()
        base_took = self._ensure_base(base)
        base_id = self._image_id(base)
        assert base_id is not None, f"no {base} after making it"
        recipe = hashlib.sha256(
            (STANDIN / "redis.Containerfile").read_bytes() + base_id.encode()
        ).hexdigest()[:16]
        redis_took = None
        if self.label(redis, "chatd.standin") not in ("", recipe):
            start = time.monotonic()
            old = self._image_id(redis)
            self.build(
                redis,
                STANDIN,
                file=STANDIN / "redis.Containerfile",
                args={"BASE": base},
                labels={"chatd.standin": recipe},
                layers=False,
            )
            self._drop(old)
            redis_took = time.monotonic() - start
        return Built(base_took, redis_took)

    def _ensure_base(self, tag: str) -> float | None:
        # The recipe is this method: a change to it makes a new stand-in.
        recipe = hashlib.sha256(
            (inspect.getsource(Podman._ensure_base) + BASE_PACKAGES).encode()
            + b"".join(cert.read_bytes() for cert in _extra_certificates())
        ).hexdigest()[:16]
        if self.label(tag, "chatd.standin") in ("", recipe):
            return None  # the stand-in of this recipe, or the real image
        start = time.monotonic()
        old = self._image_id(tag)
        root = self.workdir / "rootfs"
        try:
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={BASE_PACKAGES}",
                    "bookworm",
                    str(root),
                    apt_mirror(),
                ],
                timeout=900,
            )
            # Like the official image: python and pip on /usr/local/bin, and
            # pip may install into the system's site-packages.
            (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
            for name, target in [
                ("python", "python3.11"),
                ("python3", "python3.11"),
                ("pip", "pip3"),
                ("pip3", "pip3"),
            ]:
                link = root / "usr/local/bin" / name
                link.unlink(missing_ok=True)
                link.symlink_to(f"/usr/bin/{target}")
            # The machine's extra CA certificates (a proxy's, say) for pip.
            for cert in _extra_certificates():
                shutil.copy(cert, root / "usr/local/share/ca-certificates" / cert.name)
            run(["chroot", str(root), "update-ca-certificates"], timeout=120)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (root / junk).glob("*"):
                    if path.is_file():
                        path.unlink()
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                self(
                    "import",
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    f"LABEL chatd.standin={recipe}",
                    "--change",
                    'CMD ["python3"]',
                    "-",
                    tag,
                    stdin=tar.stdout,
                    timeout=300,
                )
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                assert tar.wait(timeout=60) == 0, "tar of the stand-in root failed"
        finally:
            shutil.rmtree(root, ignore_errors=True)
        self._drop(old)
        return time.monotonic() - start

    def _image_id(self, image: str) -> str | None:
        found = self("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def _drop(self, image_id: str | None) -> None:
        """An image replaced by a new build of its tag, removed (if unused)."""
        if image_id is not None:
            self("rmi", image_id, check=False)

    def build(
        self,
        tag: str,
        context: Path,
        *,
        file: Path | None = None,
        target: str | None = None,
        args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        layers: bool = True,
    ) -> None:
        """``podman build`` with the network (pip) and never a pull."""
        argv = [
            "build",
            "--network",
            "host",
            "--pull=never",
            f"--layers={str(layers).lower()}",
            "-t",
            tag,
        ]
        if file is not None:
            argv += ["-f", str(file)]
        if target is not None:
            argv += ["--target", target]
        for key, value in (args or {}).items():
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        self(*argv, str(context), timeout=900)

    # -- containers --------------------------------------------------------

    def names(self, *filters: str, every: bool = False) -> list[str]:
        argv = ["ps", "--format", "{{.Names}}", *(f"--filter={f}" for f in filters)]
        return self.out(*argv, *(["--all"] if every else [])).split()

    def anonymous_volumes(self, container: str) -> list[str]:
        """The volumes the image's VOLUME made for the container (no name given)."""
        mounts = json.loads(self.inspect(container, "{{json .Mounts}}")) or []
        names = [m["Name"] for m in mounts if m.get("Type") == "volume" and m.get("Name")]
        return [
            name
            for name in names
            if self.out("volume", "inspect", "--format", "{{.Anonymous}}", name) == "true"
        ]

    def inspect(self, container: str, template: str) -> str:
        return self.out("inspect", "--format", template, container)

    def health(self, container: str) -> subprocess.CompletedProcess[str]:
        """``podman healthcheck run``: exit 0 when the check passed, 1 and "unhealthy" if not."""
        return self("healthcheck", "run", container, check=False, timeout=60)

    @contextlib.contextmanager
    def healthchecks(self, *filters: str, every: float = 2.0) -> Iterator[None]:
        """Run the health check of each running container that matches
        ``filters`` every ``every`` seconds (what systemd timers would do)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    for name in self.names(*filters):
                        if stop.is_set():
                            break
                        self.health(name)
                except (AssertionError, OSError, subprocess.SubprocessError) as e:
                    self.health_errors.append(str(e))  # tried again at the next round
                stop.wait(every)

        thread = threading.Thread(target=loop, name="healthchecks", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=120)

    def remove(self, *filters: str) -> None:
        """Remove every container, then every volume and network, matching ``filters``."""
        if not filters:
            raise ValueError("remove needs a filter")
        for name in self.names(*filters, every=True):
            self("rm", "--force", "--volumes", "--time", "0", name, check=False)
        flags = [f"--filter={f}" for f in filters]
        for kind in ("volume", "network"):
            listed = self(kind, "ls", "--format", "{{.Name}}", *flags, check=False)
            for name in listed.stdout.split():
                self(kind, "rm", "--force", name, check=False)

    def sweep(self) -> list[str]:
        """Remove what an earlier run left (one killed by its timeout, whose
        clean-up never ran): the containers, volumes and networks labelled by
        a test run (``chatd.test``, or a compose project it named) and the
        images it tagged, when its process is gone. Returns what went: the
        labels of the runs and the images."""
        owner = re.compile(rf"^{PREFIX}(\d+)(?:-\d+)?$")
        image = re.compile(rf"^localhost/{PREFIX}(?:image|build):(\d+)$")

        def stale(pattern: re.Pattern[str], name: str) -> bool:
            m = pattern.match(name)
            return m is not None and not _alive(int(m.group(1)))

        gone: list[str] = []
        for key in ("chatd.test", "com.docker.compose.project"):
            value = f'{{{{index .Labels "{key}"}}}}'
            labelled = f"--filter=label={key}"
            owners = self.out("ps", "--all", labelled, "--format", value).split()
            owners += self.out("volume", "ls", labelled, "--format", value).split()
            for network in self.out("network", "ls", labelled, "--format", "{{.Name}}").split():
                owners.append(self.out("network", "inspect", "--format", value, network))
            for test_run in sorted({o for o in owners if stale(owner, o)}):
                self.remove(f"label={key}={test_run}")
                gone.append(f"{key}={test_run}")
        for name in self.out("images", "--format", "{{.Repository}}:{{.Tag}}").split():
            if stale(image, name):
                self("rmi", "--force", name, check=False)
                gone.append(name)
        return gone

    @contextlib.contextmanager
    def host_lock(self, timeout: float = 300) -> Iterator[None]:
        """One run of the container tests at a time on this host: two would
        share the build cache, and one's clean-up would pull layers from under
        the other's build."""
        where = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
        with (where / "chatd-container-tests.lock").open("w") as lock:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, (
                        "another run of the container tests holds the host"
                    )
                    time.sleep(1)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def service(self) -> Iterator[str]:
        """``podman system service`` on a socket of its own: its DOCKER_HOST."""
        sock = self.workdir / "podman.sock"
        sock.unlink(missing_ok=True)
        log = (self.workdir / "service.log").open("w")
        proc = subprocess.Popen(
            # Idle for 5 minutes, it ends by itself (if this run were killed).
            ["podman", "system", "service", "--time=300", f"unix://{sock}"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + DEADLINE * 3
            while not _answers(sock):
                assert proc.poll() is None, f"podman system service exited: {_tail(log.name)}"
                assert time.monotonic() < deadline, f"no API on {sock}: {_tail(log.name)}"
                time.sleep(0.1)
            yield f"unix://{sock}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            log.close()


def _extra_certificates() -> list[Path]:
    """The machine's own CA certificates (a proxy's, say), which pip needs."""
    extra = Path("/usr/local/share/ca-certificates")
    return sorted(extra.rglob("*.crt")) if extra.is_dir() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Ports quiet_port handed out in this process: never twice.
_GIVEN: set[int] = set()


def quiet_port() -> int:
    """A free loopback port, never the same twice, below the kernel's
    ephemeral range where that leaves room (so no outgoing connection takes
    it between now and the container's start), else any free one."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    span = range(10000, low) if low > 12000 else range(low, 65536)
    for port in random.sample(span, k=min(len(span), 2000)):
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise AssertionError(f"no free port in {span}")


def _answers(sock: Path) -> bool:
    """The API answers ``GET /_ping`` on the socket."""
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _tail(path: str, n: int = 4000) -> str:
    try:
        return Path(path).read_text()[-n:]
    except OSError as e:
        return str(e)


def healthz(
    port: int, timeout: float = START_DEADLINE, failed: Callable[[], str | None] = lambda: None
) -> None:
    """Wait until ``GET /healthz`` on the loopback port answers 200; stop
    early when ``failed`` says why it never will."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if (why := failed()) is not None:
            raise AssertionError(f"/healthz on {port}: {why}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
                last = f"status {r.status}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.2)
    raise AssertionError(f"/healthz on {port} did not answer 200 in {timeout:g} s: {last}")


class Chat:
    """A blocking JSON-mode client of a published chat port."""

    def __init__(self, port: int, nick: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.buffer = b""
        self.backlog: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        assert self.line().startswith("* welcome"), "no welcome line"
        self.send("/format json")
        self.expect(lambda e: e["type"] == "format")
        self.send(f"/nick {nick}")
        self.expect(lambda e: e["type"] == "current")
        #: What came before the end of registration (the room's history): expect reads it first.
        self.backlog = self.skipped
        self.nick = nick

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def line(self, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line in {timeout:g} s; have {self.buffer!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"connection closed; have {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def expect(self, pred: Any, what: str = "", timeout: float = DEADLINE) -> dict[str, Any]:
        """The first event (the backlog's, then new ones) that ``pred`` accepts."""
        for i, event in enumerate(self.backlog):
            if pred(event):
                del self.backlog[: i + 1]
                return event
        deadline = time.monotonic() + timeout
        self.skipped = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what or 'event'} in {timeout:g} s; saw {self.skipped}")
            try:
                event: dict[str, Any] = json.loads(self.line(left))
            except AssertionError as e:
                raise AssertionError(f"no {what or 'event'}: {e}; saw {self.skipped}") from None
            if pred(event):
                return event
            self.skipped.append(event)

    def rest(self, timeout: float = DEADLINE) -> bytes:
        """Everything until the server closes the connection."""
        deadline = time.monotonic() + timeout
        data = self.buffer
        while time.monotonic() < deadline:
            self.sock.settimeout(deadline - time.monotonic())
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        raise AssertionError(f"the server did not close in {timeout:g} s; got {data!r}")

    def close(self) -> None:
        self.sock.close()
