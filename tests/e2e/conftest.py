"""A real config repo with a real fleet on the local host, driven through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port as free_port  # re-exported: tests import it from here

ROOT = Path(__file__).resolve().parents[2]
APP = (ROOT / "examples" / "app" / "app.py").read_text()


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                         text=True, env={**os.environ, "GIT_AUTHOR_NAME": "t",
                                         "GIT_AUTHOR_EMAIL": "t@example.invalid",
                                         "GIT_COMMITTER_NAME": "t",
                                         "GIT_COMMITTER_EMAIL": "t@example.invalid"})
    return out.stdout.strip()


def service_yaml(name: str, port: int, *, greeting: str = "hi", fail: bool = False,
                 extra_env: str = "", depends: str = "", start_period: str = "1s",
                 interval: str = "200ms") -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, app.py, --port, "{port}"]
  env:
    GREETING: "{greeting}"
    FAIL_HEALTH: "{'1' if fail else '0'}"{extra_env}
  stopTimeout: 3s{depends}
  health:
    http: {{url: "http://{{host}}:{port}/healthz"}}
    interval: {interval}
    timeout: 1s
    startPeriod: {start_period}
    failureThreshold: 3
"""


@dataclass
class Fleet:
    repo: Path
    state: Path
    root: Path
    env: Mapping[str, str] | None = None  # the CLI's environment; None: this process's

    def write(self, rel: str, text: str) -> None:
        path = self.repo / "fleet" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def commit(self, message: str = "change") -> str:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        return git(self.repo, "rev-parse", "HEAD")

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "reconciler", "--state-dir", str(self.state),
               "--log-format", "text", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.repo, env=self.env)

    def repo_args(self) -> list[str]:
        return ["--repo", str(self.repo), "--path", "fleet"]

    def json(self, *args: str) -> Any:
        proc = self.cli(*args, "-o", "json")
        assert proc.stdout, proc.stderr
        return json.loads(proc.stdout)

    def process(self, name: str) -> Any:
        """The pidfile of a Service the local supervisor runs (its pid and start time): the
        same value later means the same process, never restarted."""
        [pidfile] = self.root.rglob(f"{name}.pid")
        return json.loads(pidfile.read_text())

    def stop_all(self) -> None:
        """Kill every process the supervisor started (pidfiles under the target root)."""
        for pidfile in self.root.rglob("*.pid"):
            try:
                pid = int(json.loads(pidfile.read_text())["pid"])
                os.killpg(pid, signal.SIGKILL)
            except (ValueError, KeyError, OSError):
                continue


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(APP)
    (repo / "app" / "job.py").write_text(
        "import os, sys\nprint('job says', os.environ.get('MSG', ''))\n"
        "sys.exit(int(os.environ.get('CODE', '0')))\n")
    git(repo, "init", "-q", "-b", "main")
    root = tmp_path / "root"
    f = Fleet(repo, tmp_path / "state", root)
    f.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
spec:
  provider: bare_metal
  transport: local
  root: {root}
  keepReleases: 3
""")
    yield f
    f.stop_all()


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def greeting(port: int) -> str | None:
    """The greeting the service on `port` answers with; None while no process answers it whole.
    A rollout replaces the process: a request may be refused, reset, or cut off after the
    headers (IncompleteRead) by the old process going away."""
    import http.client

    try:
        return str(json.loads(http_get(port)[1])["greeting"])
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None


def stop_daemon(daemon: subprocess.Popen[str]) -> int:
    """SIGTERM, then the daemon's exit code within 30 s; killed (and the timeout raised) if it
    hangs."""
    daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)


def wait_for(predicate: Any, timeout: float = 10.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")
