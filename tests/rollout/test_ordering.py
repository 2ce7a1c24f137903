"""dependsOn as a DAG: a resource starts when its own dependencies are done, not when a whole
wave is; a failed dependency blocks its dependents with the reason in `status`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port
from tests.rollout.fleets import local_fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = local_fleet(tmp_path)
    yield f
    f.stop_all()


def svc(name: str, *, slow: int = 0, fail: bool = False, depends: str = "") -> str:
    port = free_port()
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  target: local
  source: {{path: app}}{depends}
  command: [{sys.executable}, app.py, --port, "{port}"]
  env: {{SLOW_START: "{slow}", FAIL_HEALTH: "{'1' if fail else '0'}"}}
  stopTimeout: 2s
  health:
    http: {{url: "http://{{host}}:{port}/healthz"}}
    interval: 100ms
    startPeriod: 10s
    failureThreshold: 2
"""


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_dependents_start_when_their_own_dependencies_are_done(fleet: Fleet) -> None:
    fleet.write("a.yaml", svc("slow", slow=8))
    fleet.write("b.yaml", svc("base"))
    fleet.write("c.yaml", svc("after-base", depends="\n  dependsOn: [base]"))
    fleet.commit("three")
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 0, out.stdout + out.stderr
    slow = fleet.json("history", "slow")[0]
    base = fleet.json("history", "base")[0]
    after = fleet.json("history", "after-base")[0]
    assert ts(after["startedAt"]) >= ts(base["finishedAt"])
    # with waves, after-base would have waited for slow (same wave as base) to finish
    assert ts(after["startedAt"]) < ts(slow["finishedAt"])


def test_a_failed_dependency_blocks_its_dependents_with_the_reason(fleet: Fleet) -> None:
    fleet.write("b.yaml", svc("base", fail=True))
    fleet.write("c.yaml", svc("after-base", depends="\n  dependsOn: [base]"))
    fleet.commit("broken base")
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 1
    status = {r["name"]: r for r in fleet.json("status")["resources"]}
    reason = status["after-base"]["lastError"]
    assert "waiting for default/Service/base" in reason and "failed" in reason, reason
    assert fleet.json("history", "after-base") == []


def test_daemon_keeps_a_paused_canary_across_passes_until_promoted(fleet: Fleet) -> None:
    import os
    import signal
    import subprocess
    import time

    port = free_port()
    canary = """
  strategy:
    type: canary
    steps:
      - setCanary: 1
      - pause: {}
"""
    fleet.write("a.yaml", svc("paused") + canary)
    fleet.commit("canary")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--interval", "1s", "--listen", f"127.0.0.1:{port}"],
        cwd=fleet.repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def waiting() -> bool:
            res = {r["name"]: r for r in fleet.json("status")["resources"]}
            return "waiting for `reconciler promote" in (res.get("paused", {})
                                                         .get("lastError") or "")
        deadline = time.monotonic() + 60
        while not waiting():
            assert time.monotonic() < deadline, "the canary never paused"
            time.sleep(0.3)
        time.sleep(3)  # several poll passes: the paused rollout is neither cancelled nor redone
        history = fleet.json("history", "paused")
        assert len(history) == 1 and history[0]["status"] == "in_progress"
        assert fleet.cli("promote", "paused").returncode == 0
        deadline = time.monotonic() + 30
        while fleet.json("history", "paused")[0]["status"] != "succeeded":
            assert time.monotonic() < deadline, fleet.json("history", "paused")
            time.sleep(0.3)
        assert len(fleet.json("history", "paused")) == 1
    finally:
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
