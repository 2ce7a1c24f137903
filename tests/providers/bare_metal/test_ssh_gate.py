"""Issue 15, item 1 over SSH + systemd: the gate judges the unit it started. A Service without a
health check whose command exits with code 3 (systemd restarting it, Restart=on-failure) fails
its gate with "exited with code 3" and its last journal lines, and is rolled back. When systemd
sees the exit before its start job is done (a loaded host), the start fails instead, and says
the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import git
from tests.helpers import stranger_server
from tests.providers.bare_metal.test_ssh_cli import target_yaml


def service(command: str, health: str = "") -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: quits
spec:
  target: hosts
  source: {{path: app}}
  command: [sh, -c, {json.dumps(command)}]
  stopTimeout: 3s
{health}"""


class Config:
    """A config repo for the first test host and the CLI run on it."""

    def __init__(self, tmp_path: Path, hosts: Any, svc: str) -> None:
        self.tmp_path = tmp_path
        self.repo = tmp_path / "config"
        (self.repo / "app").mkdir(parents=True)
        (self.repo / "app" / "README").write_text("nothing to see\n")
        (self.repo / "fleet").mkdir()
        (self.repo / "fleet" / "target.yaml").write_text(target_yaml(hosts))
        (self.repo / "fleet" / "svc.yaml").write_text(svc)
        git(self.repo, "init", "-q", "-b", "main")
        self.args = ["--repo", str(self.repo), "--path", "fleet"]

    def commit(self, message: str) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(self.tmp_path / "state"),
             "--log-format", "text", *args],
            capture_output=True, text=True, timeout=120, cwd=self.repo)


@pytest.mark.timeout(150)
def test_a_unit_that_exits_fails_its_gate_with_its_exit_code(tmp_path: Path,
                                                              ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:1]
    config = Config(tmp_path, hosts, service("echo up; exec sleep 600"))
    repo, commit, cli, repo_args = config.repo, config.commit, config.cli, config.args
    commit("runs")
    first = cli("apply", *repo_args)
    assert first.returncode == 0, first.stdout + first.stderr

    (repo / "fleet" / "svc.yaml").write_text(service("echo systemd says bye; exit 3"))
    commit("exits")
    bad = cli("apply", *repo_args)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    history = json.loads(cli("history", "quits", "-o", "json").stdout)
    assert history[0]["status"] == "rolled_back", history[0]
    steps = [s for s in history[0]["steps"] if s["action"] in ("deploy", "health")]
    # A process that exits at once fails its health gate, or its start job when systemd
    # notices the exit before the exec (a loaded host): either step says how it ended.
    failed = next(s for s in steps if s["status"] == "failed")
    assert "exited with code 3" in failed["detail"], steps
    assert "systemd says bye" in failed["detail"], steps
    # the rollback's gate saw the old unit running again
    assert steps[-1]["action"] == "health" and steps[-1]["status"] == "succeeded", steps

    # Item 7: with the unit stopped by hand and no daemon, `status` would show the database's
    # memory; `status --live` looks at the host, says so, exits 1 and records it.
    assert cli("status").returncode == 1  # OutOfSync: the rolled-back revision is desired
    hosts[0].run(["systemctl", "stop", "fraisier-default_quits.service"])
    live = cli("status", "--live", "-o", "json")
    assert live.returncode == 1, live.stdout + live.stderr
    row = next(r for r in json.loads(live.stdout)["resources"] if r["name"] == "quits")
    assert row["health"] == "Degraded", row
    assert "live state differs" in (row["lastError"] or ""), row
    assert row["healthObservedAt"] and row["healthStale"] is False, row


@pytest.mark.timeout(150)
def test_a_unit_is_not_judged_by_a_stranger_holding_its_port(tmp_path: Path,
                                                            ssh_hosts: Any) -> None:
    # The host shares this machine's loopback (tests/infra): the stranger here holds the port
    # the unit binds 2 s after its start, later than a pass "counts once the instance has run
    # min(interval, 1 s)"; its answers meanwhile are not the unit's, which listens on nothing.
    with stranger_server() as port:
        health = f"""  health:
    http: {{url: "http://{{host}}:{port}/"}}
    interval: 200ms
    startPeriod: 5s
"""
        command = f"sleep 2; exec busybox httpd -f -p 127.0.0.1:{port} -h /tmp"
        config = Config(tmp_path, ssh_hosts[:1], service(command, health))
        config.commit("a slow starter on a port someone else holds")
        out = config.cli("apply", *config.args)
        assert out.returncode == 1, out.stdout + out.stderr
        history = json.loads(config.cli("history", "quits", "-o", "json").stdout)
        steps = [s for s in history[0]["steps"] if s["action"] in ("deploy", "health")]
        failed = next(s for s in steps if s["status"] == "failed")
        assert "exited with code 1" in failed["detail"], steps
        assert "Address already in use" in failed["detail"], steps

