"""A real daemon process on loopback, and real clients for it (signed, unsigned, half-open).

Used by the HTTP-front tests of tests/security and by the flood scenario of tests/chaos. The
daemon follows a local git repo (so config-repo reads happen on every commit) and serves signed
GitHub and GitLab webhooks for the repositories of the real payload samples in contracts/.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.conftest import free_port, git

CONTRACTS = Path(os.environ.get("RECONCILER_CONTRACTS", Path(__file__).resolve().parents[3]
                                / "shared" / "contracts"))
GITHUB_SAMPLE = CONTRACTS / "webhooks" / "github" / "push.new-branch.json"
GITLAB_SAMPLE = CONTRACTS / "webhooks" / "gitlab" / "push.json"
GITHUB_SECRET = "security-test-github-secret-5b1e"
GITLAB_TOKEN = "security-test-gitlab-token-9c2f"
GITHUB_REPO = "https://github.com/Codertocat/Hello-World.git"
GITLAB_REPO = "http://example.com/mike/diaspora.git"


def github_push(n: int, branch: str = "main") -> bytes:
    """The real GitHub push sample with a distinct ``after`` per ``n`` (a distinct delivery)."""
    doc: dict[str, Any] = copy.deepcopy(json.loads(GITHUB_SAMPLE.read_bytes()))
    after = hashlib.sha1(f"push-{n}".encode()).hexdigest()
    doc.update(ref=f"refs/heads/{branch}", after=after, created=False, deleted=False)
    return json.dumps(doc).encode()


def gitlab_push(n: int) -> bytes:
    doc: dict[str, Any] = json.loads(GITLAB_SAMPLE.read_bytes())
    doc["after"] = hashlib.sha1(f"gitlab-push-{n}".encode()).hexdigest()
    return json.dumps(doc).encode()


def github_headers(body: bytes, delivery: str | None = "0b9a2c10-6d2e-11ef-8f1a-3a4b5c6d7e8f",
                   secret: str = GITHUB_SECRET, content_type: str = "application/json"
                   ) -> dict[str, str]:
    headers = {"Content-Type": content_type, "X-GitHub-Event": "push",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body,
                                                           hashlib.sha256).hexdigest(),
               "User-Agent": "GitHub-Hookshot/security-test"}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, *, source: str = "127.0.0.1",
            timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection from loopback address ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metric(port: int, name: str, labels: str = "") -> float:
    """The value of one sample of /metrics (0 when absent)."""
    _, text = request(port, "GET", "/metrics")
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.decode().splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    repo: Path
    log: Path
    state: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str, *, timeout: float = 5.0, source: str = "127.0.0.1"
            ) -> tuple[int, bytes]:
        return request(self.port, "GET", path, timeout=timeout, source=source)

    def readyz(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/readyz")[1]))

    def log_lines(self, containing: str = "") -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if containing in line]

    def soft_nofile(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-files line in /proc/PID/limits")


def systemd_nofile() -> tuple[int, int]:
    """``LimitNOFILE=1024:524288`` (systemd's default for services), with the hard limit
    lowered to this process's own when it may not be raised (no CAP_SYS_RESOURCE)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1024, 524288 if hard == resource.RLIM_INFINITY else min(524288, hard)


def _limit_nofile(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


def init_repo(path: Path, extra: dict[str, str] | None = None) -> Path:
    """A config repo holding a local Target (and ``extra`` files under fleet/)."""
    (path / "fleet").mkdir(parents=True)
    (path / "fleet" / "target.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: local}\n"
        f"spec: {{provider: bare_metal, transport: local, root: {path.parent / 'root'}}}\n")
    for rel, text in (extra or {}).items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "fleet")
    return path


def commit(repo: Path, rel: str, text: str) -> str:
    (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"change {rel}")
    return git(repo, "rev-parse", "HEAD")


def start(tmp_path: Path, *, repo: Path | None = None, nofile: tuple[int, int] | None = None,
          secrets: dict[str, str] | None = None, extra_args: tuple[str, ...] = (),
          env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
    """Start ``reconciler daemon`` on a free loopback port; by default it serves GitHub and
    GitLab webhooks and follows a fresh local repo."""
    repo = repo or init_repo(tmp_path / "config")
    port = free_port()
    secrets = {"github": GITHUB_SECRET, "gitlab": GITLAB_TOKEN} if secrets is None else secrets
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    args = []
    for provider, value in secrets.items():
        child_env[f"SECURITY_TEST_{provider.upper()}"] = value
        args += ["--webhook-secret", f"{provider}=env:SECURITY_TEST_{provider.upper()}"]
    child_env.update(env or {})
    state = tmp_path / "state"
    log = tmp_path / "daemon.log"
    cmd = [sys.executable, "-m", "reconciler", "--state-dir", str(state), "--log-format", "json",
           "daemon", "--repo", str(repo), "--path", "fleet", "--interval", "1h",
           "--listen", f"127.0.0.1:{port}", *args,
           "--webhook-repo", GITHUB_REPO, "--webhook-repo", GITLAB_REPO,
           "--webhook-branch", "main", "--webhook-branch", "master", *extra_args]
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the daemon
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env,
                                preexec_fn=_limit_nofile(*nofile) if nofile else None)
    daemon = Daemon(proc, port, repo, log, state)
    if wait:
        try:
            deadline = time.monotonic() + 60
            while True:
                assert daemon.alive(), log.read_text()[-3000:]
                try:
                    if daemon.get("/readyz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "daemon did not become ready"
                time.sleep(0.2)
        except BaseException:
            stop(daemon)  # never leave a daemon behind
            raise
    return daemon


def stop(daemon: Daemon) -> int:
    if daemon.alive():
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            return daemon.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
    return daemon.proc.wait(timeout=10)


@contextmanager
def running(tmp_path: Path, **kwargs: Any) -> Iterator[Daemon]:
    daemon = start(tmp_path, **kwargs)
    try:
        yield daemon
    finally:
        stop(daemon)


# -- half-open connections (slow loris) -----------------------------------------------------------

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@dataclass
class Flood:
    """``size`` connections that send the start of a request and never finish it, spread over
    the loopback sources ``sources``; ``refill()`` replaces the ones the daemon closed."""

    port: int
    size: int
    sources: tuple[str, ...]
    sockets: list[socket.socket] = field(default_factory=list)
    opened: int = 0
    failed: int = 0

    def _open(self, source: str) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((source, 0))
            s.connect_ex(("127.0.0.1", self.port))
            self.sockets.append(s)
            self.opened += 1
        except OSError:
            self.failed += 1
            s.close()

    def fill(self) -> None:
        """Open up to ``size``, 64 at a time: a burst of thousands of SYNs overflows the accept
        queue and most would sit unaccepted, which is no flood of the daemon at all."""
        i = len(self.sockets)
        while len(self.sockets) < self.size:
            self._open(self.sources[i % len(self.sources)])
            i += 1
            if i % 64 == 0:
                time.sleep(0.02)

    def send_partial(self) -> None:
        for s in self.sockets:
            try:
                s.send(PARTIAL)
            except OSError:
                pass

    def refill(self) -> int:
        """Drop the sockets the daemon closed and open new ones; returns how many were closed."""
        alive: list[socket.socket] = []
        for s in self.sockets:
            try:
                data = s.recv(4096)
                closed = data == b"" or data.startswith(b"HTTP/1.1 503")
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                s.close()
            else:
                alive.append(s)
        gone = len(self.sockets) - len(alive)
        self.sockets = alive
        before = len(self.sockets)
        self.fill()
        for s in self.sockets[before:]:
            try:
                s.send(PARTIAL)
            except OSError:
                pass
        return gone

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()


def loopback_sources(count: int, first: int = 2) -> tuple[str, ...]:
    """127.0.0.<first>…: distinct peer addresses, so per-peer caps alone do not explain a
    result (Linux routes all of 127/8 to lo)."""
    return tuple(f"127.0.0.{first + i}" for i in range(count))


def timed_get(daemon: Daemon, path: str = "/healthz", timeout: float = 5.0
              ) -> tuple[float, int | None]:
    """Seconds taken and status (None when the request failed)."""
    started = time.monotonic()
    try:
        status, _ = daemon.get(path, timeout=timeout)
    except OSError:
        return time.monotonic() - started, None
    return time.monotonic() - started, status
