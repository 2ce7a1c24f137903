"""The integration-test environment that tests/infra/up.sh stands up, as seen by the tests.

up.sh writes ``$FRAISIER_TESTINFRA/env.json`` (default /var/tmp/fraisier-testinfra); ``load()``
reads it. Nothing here needs pytest, so scripts and benchmarks can use it too.

Several test sessions may share one machine (developers running suites side by side), so a test
that changes a host first *leases* it: an exclusive ``flock`` per host, re-entrant inside one
process, released when the test ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = "/var/tmp/fraisier-testinfra"
UP_HINT = "run `sudo tests/infra/up.sh` (stands up dockerd, systemd+sshd test hosts and compose)"

# One remote shell script, run as root, that returns a host to a clean state. It is a constant of
# the test suite (never built from config). Units are SIGKILLed first so a unit with a long stop
# timeout cannot slow the reset down; daemon-reload only runs when a unit file was removed.
RESET_SCRIPT = r"""
set -u
units=$(systemctl list-units --all --plain --no-legend --no-pager 'fraisier-*' | awk '{print $1}')
if [ -n "$units" ]; then
  systemctl kill -s KILL $units 2>/dev/null
  systemctl stop $units 2>/dev/null
  systemctl disable $units >/dev/null 2>&1
fi
files=$(ls -d /etc/systemd/system/fraisier-* /etc/systemd/system/*.wants/fraisier-* \
             /run/systemd/system/fraisier-* 2>/dev/null)
if [ -n "$files" ]; then rm -rf $files; systemctl daemon-reload; fi
systemctl reset-failed 'fraisier-*' 2>/dev/null
rm -rf /srv/fraisier /etc/fraisier /var/lib/fraisier /var/log/fraisier /tmp/fraisier-* \
       /home/deploy/fraisier* /root/fraisier*
true
"""


@dataclass(frozen=True)
class InfraHost:
    """One systemd+sshd test host (a container on the host network, sshd on 127.0.0.1:port)."""

    name: str
    container: str
    address: str
    port: int
    users: tuple[str, ...]
    sudo_user: str
    identity_file: str
    known_hosts: str
    host_key: str  # "ssh-ed25519 AAAA..." as pinned in known_hosts
    lock_path: str
    # OpenSSH ControlMaster sockets: a login costs ~0.3 s here, a multiplexed call ~15 ms.
    mux_dir: str = ""

    def ssh_argv(self, user: str = "root", *, connect_timeout: float = 5.0) -> list[str]:
        """OpenSSH client argv up to (not including) the remote command; strict host keys."""
        mux = (
            ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.mux_dir}/%C",
             "-o", "ControlPersist=30"]
            if self.mux_dir
            else []
        )  # fmt: skip
        return [
            "ssh", "-q", "-T",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            *mux,
            "-i", self.identity_file,
            "-p", str(self.port),
            f"{user}@{self.address}",
        ]  # fmt: skip

    def run(
        self,
        command: Sequence[str] | str,
        *,
        user: str = "root",
        timeout: float = 30.0,
        check: bool = True,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command on the host with the OpenSSH client (independent of the code under test).

        A sequence is an argv (quoted with shlex.join); a str is a remote shell script written by
        the test itself. Calls share one multiplexed login per user; after restarting the host's
        container, call ``wait_ssh()`` first (the old shared login answers 255 once).
        """
        remote = command if isinstance(command, str) else shlex.join(command)
        return subprocess.run(
            [*self.ssh_argv(user), remote],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=check,
        )

    def sh(self, script: str, *, user: str = "root", timeout: float = 30.0) -> str:
        """Run a shell script on the host, check the exit code, return stdout as text."""
        return self.run(script, user=user, timeout=timeout).stdout.decode()

    def tcp_open(self, timeout: float = 1.0) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=timeout) as conn:
                conn.settimeout(timeout)
                return conn.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def wait_ssh(self, timeout: float = 30.0) -> None:
        """Wait until an SSH login works (after a `docker restart`, say)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.run(["true"], timeout=5, check=False).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (127.0.0.1:{self.port}) not answering SSH")
            time.sleep(0.1)

    def reset(self) -> None:
        """Stop and remove fraisier-* units, wipe /srv/fraisier and friends (~0.2 s)."""
        result = self.run(RESET_SCRIPT, timeout=30, check=False)
        if result.returncode == 255:  # ssh itself failed: the host may be restarting
            self.wait_ssh()
            result = self.run(RESET_SCRIPT, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"reset of {self.name} failed: {result.stderr.decode()[-500:]}")


@dataclass(frozen=True)
class Infra:
    """Everything env.json describes."""

    workdir: str
    docker_host: str
    docker_cli: str
    compose_v1: str | None
    compose_v2: str | None
    tiny_image: str
    testhost_image: str
    identity_file: str
    known_hosts: str
    hosts: tuple[InfraHost, ...]

    @property
    def docker_socket(self) -> str:
        return self.docker_host.removeprefix("unix://")

    def docker_api_get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        """GET on the Docker Engine API over its unix socket; (status, body)."""
        conn = _UnixHTTPConnection(self.docker_socket, timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def docker_ok(self) -> bool:
        try:
            return self.docker_api_get("/_ping") == (200, b"OK")
        except OSError:
            return False

    def image_exists(self, name: str) -> bool:
        try:
            return self.docker_api_get(f"/images/{name}/json")[0] == 200
        except OSError:
            return False

    def compose_argv(self, version: str) -> list[str] | None:
        """argv prefix for compose ``v1`` or ``v2`` (the v2 binary is called directly)."""
        path = {"v1": self.compose_v1, "v2": self.compose_v2}.get(version)
        if not path or not os.access(path, os.X_OK):
            return None
        return [path]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def workdir() -> Path:
    return Path(os.environ.get("FRAISIER_TESTINFRA") or DEFAULT_WORKDIR)


def load() -> tuple[Infra | None, str]:
    """(infra, "") or (None, reason) when up.sh has not run here or env.json is unreadable."""
    path = workdir() / "env.json"
    mux_dir = path.parent / "ssh-mux"
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        mux_dir.mkdir(mode=0o700, exist_ok=True)
        hosts = tuple(
            InfraHost(
                name=h["name"],
                container=h["container"],
                address=h["address"],
                port=int(h["port"]),
                users=tuple(h["users"]),
                sudo_user=h.get("sudo_user", "deploy"),
                identity_file=h["identity_file"],
                known_hosts=h["known_hosts"],
                host_key=h["host_key"],
                lock_path=str(path.parent / f".lease-{h['name']}"),
                mux_dir=str(mux_dir),
            )
            for h in raw["hosts"]
        )
        infra = Infra(
            workdir=raw["workdir"],
            docker_host=raw["docker"]["host"],
            docker_cli=raw["docker"]["cli"],
            compose_v1=raw["compose"].get("v1"),
            compose_v2=raw["compose"].get("v2"),
            tiny_image=raw["images"]["tiny"],
            testhost_image=raw["images"]["testhost"],
            identity_file=raw["ssh"]["identity_file"],
            known_hosts=raw["ssh"]["known_hosts"],
            hosts=hosts,
        )
    except FileNotFoundError:
        return None, f"no test infrastructure ({path} missing): {UP_HINT}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable {path} ({exc!r}): re-run tests/infra/up.sh"
    return infra, ""


# --- host leases ------------------------------------------------------------------------------

_lease_guard = threading.Lock()
# lock path -> [fd, depth]; re-entrant because flock is per open file, not per process
_leases: dict[str, list[int]] = {}


def _try_lock(path: str) -> bool:
    with _lease_guard:
        held = _leases.get(path)
        if held is not None:
            held[1] += 1
            return True
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        _leases[path] = [fd, 1]
        return True


def _unlock(path: str) -> None:
    with _lease_guard:
        held = _leases[path]
        held[1] -= 1
        if held[1] == 0:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])
            del _leases[path]


@contextlib.contextmanager
def lease_any(hosts: Sequence[InfraHost], timeout: float = 600.0) -> Iterator[InfraHost]:
    """Exclusive use of the first free host (other test sessions on this machine wait)."""
    deadline = time.monotonic() + timeout
    while True:
        for host in hosts:
            if _try_lock(host.lock_path):
                try:
                    yield host
                finally:
                    _unlock(host.lock_path)
                return
        if time.monotonic() > deadline:
            raise TimeoutError("every test host stayed leased by another test session")
        time.sleep(0.2)


@contextlib.contextmanager
def lease_all(hosts: Sequence[InfraHost], timeout: float = 600.0) -> Iterator[None]:
    """Exclusive use of every host, taken in a fixed order so two sessions cannot deadlock."""
    deadline = time.monotonic() + timeout
    taken: list[str] = []
    try:
        for host in sorted(hosts, key=lambda h: h.lock_path):
            while not _try_lock(host.lock_path):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{host.name} stayed leased by another test session")
                time.sleep(0.2)
            taken.append(host.lock_path)
        yield
    finally:
        for path in reversed(taken):
            _unlock(path)
