"""Logs stay one JSON object per line and failures are at warning/error (issue 15, item 11):
dependency warnings (asyncssh's CryptographyDeprecationWarning) go into the structured log or
are dropped when harmless; a failed gate and its rollback are not `info`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, service_yaml

pytestmark = pytest.mark.timeout(120)


def json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not one JSON object per line: {line!r}") from None
    return out


def test_dependency_warnings_are_structured_and_harmless_ones_dropped() -> None:
    # as every command runs: logging set up by the CLI, then the SSH transport (asyncssh) is
    # loaded on first use; a library warning that is not known harmless still reaches the log
    code = ("import sys, warnings\n"
            "from reconciler.cli import cli\n"
            "from reconciler.observe.logging import setup_logging\n"
            "setup_logging('json', 'info')\n"
            "import reconciler.transport.ssh\n"
            "warnings.warn('a library says so', UserWarning)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "CryptographyDeprecationWarning" not in proc.stderr, proc.stderr
    entries = json_lines(proc.stderr)
    captured = [e for e in entries if "a library says so" in e["msg"]]
    assert captured and captured[0]["level"] == "warning", entries
    assert captured[0]["logger"] == "py.warnings"


def test_a_failed_gate_and_its_rollback_are_logged_at_warning_and_error(
        fleet: Fleet, tmp_path: Any) -> None:
    from tests.e2e.conftest import free_port

    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.commit("good")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    fleet.write("api.yaml", service_yaml("api", port, greeting="two", fail=True))
    fleet.commit("bad")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "json", "--log-level", "info", "apply", *fleet.repo_args()],
        capture_output=True, text=True, timeout=90, cwd=fleet.repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    entries = json_lines(proc.stderr)
    by_phase = {e.get("phase"): e["level"] for e in entries if e.get("phase")}
    assert by_phase.get("failed") == "error", entries
    assert by_phase.get("health check failed") == "warning", entries
    assert by_phase.get("rolled back") == "warning", entries
    errors = [e for e in entries if e["level"] == "error"]
    assert any(e.get("resource") == "default/Service/api" for e in errors), entries
