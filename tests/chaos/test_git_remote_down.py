"""The config repo's remote goes away (a real ``git daemon`` on loopback, stopped) while the
reconciler daemon polls it: the daemon keeps the last good desired state (the fleet keeps
running it, /readyz names the error), ``reconciler_git_fetch_errors_total`` rises, a real
Prometheus scraping the daemon raises FraisierGitFetchFailing (the shipped rule; only ``for:``
shortened), and once the remote is back the next commit converges.

Three trials: the remote down under a running daemon; the daemon restarted while the remote is
still down (it must start from its clone in the state dir, not refuse to run); the remote
black-holed (the port accepts connections and never answers: git has no read timeout of its own,
so the fetch must be bounded by RECONCILER_GIT_TIMEOUT or the daemon's loop hangs for good)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.journal import deployment_ids, journal_problems
from tests.chaos.report import record_trial
from tests.e2e.conftest import Fleet, free_port, git, http_get, service_yaml, wait_for
from tests.e2e.test_prometheus_alerts import Prometheus, short_for_rules, stop
from tests.helpers import need

pytestmark = pytest.mark.timeout(150)
SCENARIO = "git remote unavailable (daemon polling)"
METRIC = "reconciler_git_fetch_errors_total"


class GitDaemon:
    """``git daemon`` serving one bare repository on 127.0.0.1 (git:// protocol)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/config.git"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={self.base}", "--export-all", "--informative-errors", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: subprocess.run(["git", "ls-remote", self.url], capture_output=True,
                                        timeout=10).returncode == 0, timeout=15, step=0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, wait=5)  # type: ignore[arg-type]
            self.proc = None


class BlackHole:
    """Accepts TCP connections on 127.0.0.1:port and never sends a byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        for conn in [*self.accepted, self.sock]:
            conn.close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def fetch_errors(listen: int) -> float:
    _, text = get(f"http://127.0.0.1:{listen}/metrics")
    for line in text.splitlines():
        if line.startswith(METRIC + " "):
            return float(line.split()[1])
    return -1.0


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        stop(proc, signal.SIGKILL if proc.poll() is None else signal.SIGTERM, wait=5)


def test_git_remote_down_keeps_last_good_state(fleet: Fleet, tmp_path: Path,
                                               processes: list[Any]) -> None:
    prometheus_bin = shutil.which("prometheus")
    need(prometheus_bin is not None, "prometheus not installed (Debian package `prometheus`)")
    assert prometheus_bin is not None
    port, listen, prom_port = free_port(), free_port(), free_port()
    served = tmp_path / "served"
    served.mkdir()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.commit("one")
    git(tmp_path, "clone", "-q", "--bare", str(fleet.repo), str(served / "config.git"))
    remote = GitDaemon(served)
    remote.start()
    try:
        _run(fleet, tmp_path, processes, remote, prometheus_bin, port, listen, prom_port)
    finally:
        remote.stop()


def _run(fleet: Fleet, tmp_path: Path, processes: list[Any], remote: GitDaemon,
         prometheus_bin: str, port: int, listen: int, prom_port: int) -> None:
    url = f"sqlite:///{fleet.state / 'fraisier.db'}"
    log_path = tmp_path / "daemon.log"

    def start_daemon() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
             "--repo", remote.url, "--path", "fleet", "--listen", f"127.0.0.1:{listen}",
             "--interval", "1s"],
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RECONCILER_GIT_TIMEOUT": "2s"})
        processes.append(proc)
        return proc

    def logs() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    def readyz() -> dict[str, Any]:
        status, body = get(f"http://127.0.0.1:{listen}/readyz")
        return dict(json.loads(body)) if status in (200, 503) and body else {}

    def serving(greeting: str) -> bool:
        try:
            status, body = http_get(port) if _port_open(port) else (0, "")
        except (OSError, http.client.HTTPException):  # the old process went away mid-answer
            return False
        return status == 200 and f'"{greeting}"' in body

    daemon = start_daemon()
    rules = tmp_path / "alerts.yml"
    short_for_rules(rules)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: fraisier
    static_configs:
      - targets: ["127.0.0.1:{listen}"]
""")
    prometheus = subprocess.Popen(
        [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    processes.append(prometheus)
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")
    one = git(fleet.repo, "rev-parse", "HEAD")
    wait_for(lambda: serving("one"), timeout=40, step=0.2)
    assert readyz().get("commit") == one, logs()
    wait_for(lambda: prom.query(METRIC)["data"]["result"], timeout=20, step=0.25)

    # --- trial 1: the remote goes away under a running daemon ---------------------------------
    started = time.monotonic()
    before_errors = fetch_errors(listen)
    remote.stop()
    fleet.write("api.yaml", service_yaml("api", port, greeting="two"))
    two = fleet.commit("two (not reachable while the remote is down)")
    wait_for(lambda: fetch_errors(listen) >= before_errors + 2, timeout=20, step=0.2)
    ready = readyz()
    assert ready.get("commit") == one, ready  # the last good desired state is kept
    assert "fetch failed" in str(ready.get("lastError")), ready
    assert serving("one")  # and the fleet keeps running it
    alert = wait_for(lambda: (a := prom.alert("FraisierGitFetchFailing")) is not None
                     and a["state"] == "firing" and a, timeout=30, step=0.25)
    assert alert["labels"]["severity"] == "warning"
    before = deployment_ids(url)

    remote.start()
    # the remote is back with nothing new: the error clears on the next successful fetch
    wait_for(lambda: readyz().get("lastError") is None, timeout=20, step=0.2)
    git(fleet.repo, "push", "-q", str(remote.base / "config.git"), "main")
    converged = _converged(fleet, readyz, serving, two, "two")
    problems = journal_problems(url, before)
    record_trial(SCENARIO, converged, len(problems), note="remote down under a running daemon",
                 seconds=time.monotonic() - started)
    assert converged, logs()
    assert problems == [], problems

    # --- trial 2: the daemon restarts while the remote is down --------------------------------
    started = time.monotonic()
    remote.stop()
    stop(daemon, signal.SIGTERM, wait=15)
    assert daemon.returncode == 0, logs()
    fleet.write("api.yaml", service_yaml("api", port, greeting="three"))
    three = fleet.commit("three")
    daemon = start_daemon()
    wait_for(lambda: readyz().get("ready") is True, timeout=30, step=0.2)
    wait_for(lambda: fetch_errors(listen) >= 1, timeout=20, step=0.2)
    assert readyz().get("commit") == two, (readyz(), logs())
    assert serving("two")
    before = deployment_ids(url)
    remote.start()
    git(fleet.repo, "push", "-q", str(remote.base / "config.git"), "main")
    converged = _converged(fleet, readyz, serving, three, "three")
    problems = journal_problems(url, before)
    record_trial(SCENARIO, converged, len(problems),
                 note="daemon restarted while the remote is down",
                 seconds=time.monotonic() - started)
    assert converged, logs()
    assert problems == [], problems

    # --- trial 3: the remote accepts connections and never answers -----------------------------
    started = time.monotonic()
    remote.stop()
    hole = BlackHole(remote.port)
    try:
        fleet.write("api.yaml", service_yaml("api", port, greeting="four"))
        four = fleet.commit("four")
        errors = fetch_errors(listen)
        # each pass's fetch is killed after RECONCILER_GIT_TIMEOUT (2 s): the loop goes on
        wait_for(lambda: fetch_errors(listen) >= errors + 2, timeout=30, step=0.2)
        assert hole.accepted, "the daemon never connected to the black hole"
        ready = readyz()
        assert ready.get("commit") == three, ready
        assert "did not complete" in str(ready.get("lastError")), ready
        assert get(f"http://127.0.0.1:{listen}/healthz")[0] == 200
        assert serving("three")
        before = deployment_ids(url)
    finally:
        hole.close()
    remote.start()
    git(fleet.repo, "push", "-q", str(remote.base / "config.git"), "main")
    converged = _converged(fleet, readyz, serving, four, "four")
    problems = journal_problems(url, before)
    record_trial(SCENARIO, converged, len(problems),
                 note="remote black-holed (accepts, never answers)",
                 seconds=time.monotonic() - started)
    assert converged, logs()
    assert problems == [], problems
    stop(daemon, signal.SIGTERM, wait=15)


def _converged(fleet: Fleet, readyz: Any, serving: Any, commit: str, greeting: str) -> bool:
    """The daemon at ``commit``, the fleet serving it, and every resource recorded Synced: a
    unit serves the new version a moment before its health gate records it (checked once,
    right after the first two held, that moment failed the trial now and then)."""
    def synced() -> bool:
        return all(r["sync"] == "Synced" for r in fleet.json("status")["resources"])

    try:
        wait_for(lambda: readyz().get("commit") == commit and serving(greeting), timeout=40,
                 step=0.2)
        wait_for(synced, timeout=20, step=0.5)
    except AssertionError:
        return False
    return True


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


