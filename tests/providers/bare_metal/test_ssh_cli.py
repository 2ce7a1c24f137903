"""End to end: `reconciler apply --repo <git repo>` with an SSH Target on two real test hosts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.bare_metal.remote import DEFAULT_ROOT
from tests.e2e.conftest import git
from tests.providers.bare_metal.conftest import HOST_APP, free_port

SECRET = "ssh-e2e-secret-4f1d9c"


def target_yaml(hosts: Any) -> str:
    entries = "".join(
        f"""
    - name: {h.name}
      address: {h.address}
      port: {h.port}
      user: root
      identityFile: {h.identity_file}
      knownHosts: {h.known_hosts}"""
        for h in hosts
    )
    return f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: hosts
spec:
  provider: bare_metal
  transport: ssh
  keepReleases: 3
  systemd: {{restart: on-failure, limits: {{memoryMax: 256M}}}}
  hosts:{entries}
"""


def service_yaml(fail: bool = False) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
spec:
  target: hosts
  source: {{path: app}}
  command: [python3, app.py]
  env:
    GREETING: hi
    FAIL_HEALTH: "{'1' if fail else '0'}"
    TOKEN: {{env: FRAISIER_SSH_E2E_TOKEN}}
  stopTimeout: 3s
  health:
    exec: {{command: [python3, app.py, check]}}
    interval: 100ms
    timeout: 2s
    startPeriod: 1s
    failureThreshold: 3
"""


JOB_YAML = """apiVersion: fraisier.dev/v1
kind: Job
metadata:
  name: migrate
spec:
  target: hosts
  source: {path: app}
  command: [python3, -c, "import os; print('migrated', open('VERSION').read().strip())"]
  timeout: 30s
"""


def http(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as response:
        return response.read().decode()


def config_repo(tmp_path: Path, hosts: Any) -> tuple[Path, dict[str, int]]:
    """A git repo (nothing committed) with the app, Target ``hosts`` and Service ``api``; each
    host's copy of the app listens on a port of its own, returned by host name."""
    ports = {}
    for host in hosts:
        ports[host.name] = free_port()
        host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-",
                  str(ports[host.name])])
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(HOST_APP)
    (repo / "app" / "VERSION").write_text("v1\n")
    (repo / "fleet").mkdir()
    (repo / "fleet" / "target.yaml").write_text(target_yaml(hosts))
    (repo / "fleet" / "api.yaml").write_text(service_yaml())
    git(repo, "init", "-q", "-b", "main")
    return repo, ports


@pytest.mark.timeout(150)
def test_apply_update_rollback_logs_through_the_cli(tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:2]
    repo, ports = config_repo(tmp_path, hosts)
    (repo / "fleet" / "job.yaml").write_text(JOB_YAML)

    def commit(message: str) -> None:
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", message)

    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "--log-format",
             "text", *args],
            capture_output=True, text=True, timeout=120, cwd=repo,
            env={**os.environ, "FRAISIER_SSH_E2E_TOKEN": SECRET},
        )

    repo_args = ["--repo", str(repo), "--path", "fleet"]
    commit("v1")
    assert cli("validate", str(repo / "fleet")).returncode == 0
    first = cli("apply", *repo_args)
    assert first.returncode == 0, first.stdout + first.stderr
    for host in hosts:
        assert http(ports[host.name]) == "v1 hi"
    history = json.loads(cli("history", "migrate", "-o", "json").stdout)
    assert (history[0]["status"], history[0]["exitCode"]) == ("succeeded", 0)
    job_logs = cli("logs", "migrate", "-n", "20", *repo_args)
    assert "migrated v1" in job_logs.stdout, job_logs.stdout + job_logs.stderr

    # update
    (repo / "app" / "VERSION").write_text("v2\n")
    commit("v2")
    second = cli("apply", *repo_args)
    assert second.returncode == 0, second.stdout + second.stderr
    for host in hosts:
        assert http(ports[host.name]) == "v2 hi"
    good_current = hosts[0].sh(f"readlink {DEFAULT_ROOT}/default/api/current").strip()

    # a revision whose health check fails is rolled back: `current` switched back, restarted
    (repo / "fleet" / "api.yaml").write_text(service_yaml(fail=True))
    commit("broken")
    started = time.monotonic()
    bad = cli("apply", *repo_args)
    elapsed = time.monotonic() - started
    assert bad.returncode == 1, bad.stdout + bad.stderr
    history = json.loads(cli("history", "api", "-o", "json").stdout)
    assert [d["status"] for d in history[:3]] == ["rolled_back", "succeeded", "succeeded"]
    print(f"failed deploy + health gate + rollback through the CLI: {elapsed:.2f}s")
    for host in hosts:
        assert http(ports[host.name]) == "v2 hi"
        assert host.sh(f"readlink {DEFAULT_ROOT}/default/api/current").strip() == good_current

    logs = cli("logs", "api", "-n", "50", *repo_args)
    assert logs.returncode == 0, logs.stderr
    for host in hosts:
        assert f"[{host.name}]" in logs.stdout and "listening on" in logs.stdout

    # the secret reached the processes but no output, log or database row
    for proc in (first, second, bad, logs):
        assert SECRET not in proc.stdout + proc.stderr
    for path in state.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    pid = hosts[0].sh("systemctl show -p MainPID --value fraisier-default_api.service").strip()
    assert f"TOKEN={SECRET}".encode() in hosts[0].run(["cat", f"/proc/{pid}/environ"]).stdout


class DaemonFleet:
    """A ``reconciler daemon`` following a repo with Target ``hosts`` (``hosts``) and Service
    ``api``, polling every second."""

    def __init__(self, tmp_path: Path, hosts: Any) -> None:
        self.hosts = hosts
        self.repo, self.ports = config_repo(tmp_path, hosts)
        self.commit("v1")
        self.env = {**os.environ, "FRAISIER_SSH_E2E_TOKEN": SECRET}
        self.base = [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state")]
        self.daemon = subprocess.Popen(
            [*self.base, "daemon", "--repo", str(self.repo), "--path", "fleet",
             "--listen", f"127.0.0.1:{free_port()}", "--interval", "1s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)

    def commit(self, message: str) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)

    def serving(self, host: Any) -> str | None:
        try:
            return http(self.ports[host.name])
        except OSError:
            return None

    @staticmethod
    def wait(predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.2)

    def newest(self) -> dict[str, Any]:
        history = json.loads(subprocess.run(
            [*self.base, "history", "api", "-o", "json"], capture_output=True, text=True,
            timeout=60, env=self.env).stdout or "[]")
        return dict(history[0]) if history else {}

    def deployed(self) -> None:
        """Until every host serves v1 and the deployment is recorded succeeded."""
        self.wait(lambda: all(self.serving(h) == "v1 hi" for h in self.hosts)
                  and self.newest().get("status") == "succeeded", 60)

    def ssh_connections(self, host: Any) -> set[int]:
        """The local ports of the daemon's established connections to ``host``'s sshd."""
        out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{host.port} )"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return {int(line.split()[2].rsplit(":", 1)[1]) for line in out.splitlines()
                if f"pid={self.daemon.pid}," in line}

    def stop(self) -> None:
        self.daemon.send_signal(signal.SIGTERM)
        try:
            assert self.daemon.wait(timeout=30) == 0
        finally:
            if self.daemon.poll() is None:
                self.daemon.kill()


@pytest.mark.timeout(150)
def test_daemon_heals_a_stopped_service_and_a_moved_current(tmp_path: Path,
                                                            ssh_hosts: Any) -> None:
    """The daemon's self-heal loop sees drift through observe() and redeploys."""
    hosts = ssh_hosts[:2]
    fleet = DaemonFleet(tmp_path, hosts)
    try:
        # serving is not enough: the hand-made drift below must come after the deployment has
        # ended, or its own last steps (a restart, the switch of `current`) undo it
        fleet.deployed()
        first = fleet.newest()["deployment"]
        unit = "fraisier-default_api.service"
        current = f"{DEFAULT_ROOT}/default/api/current"
        good = hosts[1].sh(f"readlink {current}").strip()
        # by hand: stop the service on one host, point `current` elsewhere on the other
        hosts[0].run(["systemctl", "stop", unit])
        hosts[1].run(["sh", "-c", 'mkdir -p "$1" && ln -sfn releases/elsewhere "$2"', "-",
                      f"{DEFAULT_ROOT}/default/api/releases/elsewhere", current])
        assert fleet.serving(hosts[0]) is None
        fleet.wait(lambda: fleet.serving(hosts[0]) == "v1 hi"
                   and hosts[1].sh(f"readlink {current}").strip() == good, 60)
        # the hosts serve again once the heal's deploy steps ran; the deployment is recorded
        # succeeded after its health gate, a moment later (longer on a loaded machine)
        fleet.wait(lambda: fleet.newest().get("deployment") != first
                   and fleet.newest().get("status") != "in_progress", 60)
        newest = fleet.newest()
        assert newest["trigger"] == "drift" and newest["status"] == "succeeded", newest
        assert hosts[0].sh(f"systemctl is-active {unit}").strip() == "active"
    finally:
        fleet.stop()


@pytest.mark.timeout(150)
def test_a_target_changed_under_the_daemon_keeps_one_connection_per_host(
        tmp_path: Path, ssh_hosts: Any) -> None:
    """An edited Target gets a provider of its own; the one it replaced closes its SSH
    connections instead of keeping them open (with their keepalives) until the daemon stops:
    before, each edit of a Target left one more connection per host."""
    hosts = ssh_hosts[:2]
    fleet = DaemonFleet(tmp_path, hosts)
    try:
        fleet.deployed()
        fleet.wait(lambda: all(len(fleet.ssh_connections(h)) == 1 for h in hosts), 30)
        before = {h.name: fleet.ssh_connections(h) for h in hosts}
        target = fleet.repo / "fleet" / "target.yaml"
        target.write_text(target.read_text().replace("keepReleases: 3", "keepReleases: 4"))
        fleet.commit("keep one more release")

        def replaced() -> bool:
            now = {h.name: fleet.ssh_connections(h) for h in hosts}
            return all(now[name] and not now[name] & before[name] for name in now)

        try:
            fleet.wait(replaced, 60)  # the edited Target's provider observes the hosts
        except AssertionError:
            now = {h.name: fleet.ssh_connections(h) for h in hosts}
            raise AssertionError(f"the daemon's connections (local ports) before the edit "
                                 f"{before}, a minute after it {now}") from None
        time.sleep(3)  # a few more passes
        after = {h.name: fleet.ssh_connections(h) for h in hosts}
        assert all(len(ports) == 1 and not ports & before[name]
                   for name, ports in after.items()), (before, after)
    finally:
        fleet.stop()


@pytest.mark.timeout(150)
def test_a_target_deleted_under_the_daemon_closes_its_connections(
        tmp_path: Path, ssh_hosts: Any) -> None:
    """A Target deleted from the repo (with its Service) no longer has a provider holding SSH
    connections and keepalives to its hosts: before, they stayed open until the daemon
    stopped."""
    hosts = ssh_hosts[:2]
    fleet = DaemonFleet(tmp_path, hosts)
    try:
        fleet.deployed()
        fleet.wait(lambda: all(fleet.ssh_connections(h) for h in hosts), 30)
        (fleet.repo / "fleet" / "target.yaml").unlink()
        (fleet.repo / "fleet" / "api.yaml").unlink()
        (fleet.repo / "fleet" / "README.md").write_text("Nothing runs on these hosts now.\n")
        fleet.commit("retire the hosts")
        try:
            fleet.wait(lambda: not any(fleet.ssh_connections(h) for h in hosts), 30)
        except AssertionError:
            now = {h.name: fleet.ssh_connections(h) for h in hosts}
            raise AssertionError(f"the daemon's connections (local ports) half a minute after "
                                 f"the Target was deleted: {now}") from None
        assert fleet.daemon.poll() is None
    finally:
        fleet.stop()
