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


@pytest.mark.timeout(150)
def test_apply_update_rollback_logs_through_the_cli(tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:2]
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
    (repo / "fleet" / "job.yaml").write_text(JOB_YAML)
    git(repo, "init", "-q", "-b", "main")

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


@pytest.mark.timeout(150)
def test_daemon_heals_a_stopped_service_and_a_moved_current(tmp_path: Path,
                                                            ssh_hosts: Any) -> None:
    """The daemon's self-heal loop sees drift through observe() and redeploys."""
    hosts = ssh_hosts[:2]
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
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    state = tmp_path / "state"
    env = {**os.environ, "FRAISIER_SSH_E2E_TOKEN": SECRET}
    base = [sys.executable, "-m", "reconciler", "--state-dir", str(state)]
    daemon = subprocess.Popen(
        [*base, "daemon", "--repo", str(repo), "--path", "fleet",
         "--listen", f"127.0.0.1:{free_port()}", "--interval", "1s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def serving(host: Any) -> str | None:
        try:
            return http(ports[host.name])
        except OSError:
            return None

    def wait(predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.2)

    def newest() -> dict[str, Any]:
        history = json.loads(subprocess.run(
            [*base, "history", "api", "-o", "json"], capture_output=True, text=True,
            timeout=60, env=env).stdout or "[]")
        return dict(history[0]) if history else {}

    try:
        # serving is not enough: the hand-made drift below must come after the deployment has
        # ended, or its own last steps (a restart, the switch of `current`) undo it
        wait(lambda: all(serving(h) == "v1 hi" for h in hosts)
             and newest().get("status") == "succeeded", 60)
        first = newest()["deployment"]
        unit = "fraisier-default_api.service"
        current = f"{DEFAULT_ROOT}/default/api/current"
        good = hosts[1].sh(f"readlink {current}").strip()
        # by hand: stop the service on one host, point `current` elsewhere on the other
        hosts[0].run(["systemctl", "stop", unit])
        hosts[1].run(["sh", "-c", 'mkdir -p "$1" && ln -sfn releases/elsewhere "$2"', "-",
                      f"{DEFAULT_ROOT}/default/api/releases/elsewhere", current])
        assert serving(hosts[0]) is None
        wait(lambda: serving(hosts[0]) == "v1 hi"
             and hosts[1].sh(f"readlink {current}").strip() == good, 60)
        # the hosts serve again once the heal's deploy steps ran; the deployment is recorded
        # succeeded after its health gate, a moment later (longer on a loaded machine)
        wait(lambda: newest().get("deployment") != first
             and newest().get("status") != "in_progress", 60)
        assert newest()["trigger"] == "drift" and newest()["status"] == "succeeded", newest()
        assert hosts[0].sh(f"systemctl is-active {unit}").strip() == "active"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            assert daemon.wait(timeout=30) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
