"""End to end: `reconciler apply` of a Service that writes into its release on a sandboxed SSH
Target fails, and says which sandbox setting stopped it and how to allow it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import git
from tests.providers.bare_metal.conftest import HOST_APP, free_port
from tests.providers.bare_metal.test_ssh_cli import target_yaml

SCRIBBLER = """\
open("cache.db", "w").write("x")  # into the release (the working directory): read-only
""" + HOST_APP

SERVICE = """apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
spec:
  target: hosts
  source: {path: app}
  command: [python3, app.py]
  stopTimeout: 3s
  health:
    exec: {command: [python3, check.py]}
    interval: 200ms
    timeout: 2s
    startPeriod: 1s
    failureThreshold: 3
"""

CHECK = """\
import sys, urllib.request
port = int(open("/etc/fraisier-test-port").read())
with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
"""


@pytest.mark.timeout(150)
def test_apply_reports_the_sandbox_setting_that_stopped_a_service(tmp_path: Path,
                                                                  ssh_host: Any) -> None:
    ssh_host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-", str(free_port())])
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(SCRIBBLER)
    (repo / "app" / "check.py").write_text(CHECK)
    (repo / "app" / "VERSION").write_text("v1\n")
    (repo / "fleet").mkdir()
    (repo / "fleet" / "target.yaml").write_text(target_yaml([ssh_host]))
    (repo / "fleet" / "api.yaml").write_text(SERVICE)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "scribbler")
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
         "--log-format", "text", "apply", "--repo", str(repo), "--path", "fleet"],
        capture_output=True, text=True, timeout=120, cwd=repo, env=dict(os.environ),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Read-only file system" in output or "ProtectSystem=strict" in output, output
    assert "systemd.allow.writablePaths" in output, output
