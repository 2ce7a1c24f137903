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
from tests.providers.bare_metal.test_ssh_cli import target_yaml


def service(command: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: quits
spec:
  target: hosts
  source: {{path: app}}
  command: [sh, -c, {json.dumps(command)}]
  stopTimeout: 3s
"""


@pytest.mark.timeout(150)
def test_a_unit_that_exits_fails_its_gate_with_its_exit_code(tmp_path: Path,
                                                              ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:1]
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "README").write_text("nothing to see\n")
    (repo / "fleet").mkdir()
    (repo / "fleet" / "target.yaml").write_text(target_yaml(hosts))
    (repo / "fleet" / "svc.yaml").write_text(service("echo up; exec sleep 600"))
    git(repo, "init", "-q", "-b", "main")

    def commit(message: str) -> None:
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", message)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
             "--log-format", "text", *args],
            capture_output=True, text=True, timeout=120, cwd=repo)

    repo_args = ["--repo", str(repo), "--path", "fleet"]
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
