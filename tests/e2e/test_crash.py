"""kill -9 of `reconciler apply` mid-rollout: the rerun adopts what it finished, nothing is left
in_progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for

pytestmark = pytest.mark.timeout(180)


def test_kill_9_in_the_health_gate_then_rerun_adopts(fleet: Fleet) -> None:
    """Killed once the new process was started (its gate waiting for it): the rerun finds it
    running the revision, gates it and records the interrupted deployment as succeeded, with
    an ``adopt`` step, without starting it again (before: cancelled, then deployed again)."""
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0

    slow = service_yaml("api", port, greeting="two", start_period="20s",
                        extra_env='\n    SLOW_START: "4"')
    fleet.write("api.yaml", slow)
    fleet.commit("slow start")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "apply",
         *fleet.repo_args()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def in_health_gate() -> bool:
            hist = fleet.json("history", "api")
            return bool(hist) and hist[0]["status"] == "in_progress" and any(
                s["action"] == "health" for s in hist[0]["steps"])
        wait_for(in_health_gate, timeout=30, step=0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    started = fleet.process("api")
    interrupted = fleet.json("history", "api")[0]
    assert interrupted["status"] == "in_progress"  # the journal shows where it died

    rerun = fleet.cli("apply", *fleet.repo_args())
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert json.loads(http_get(port)[1])["greeting"] == "two"
    assert fleet.process("api") == started  # the process the killed apply started
    history = fleet.json("history", "api")
    assert all(d["status"] not in ("in_progress", "pending") for d in history)
    newest = history[0]
    assert newest["id"] == interrupted["id"] and newest["status"] == "succeeded"
    actions = [s["action"] for s in newest["steps"]]
    assert actions.count("deploy") == 1 and "adopt" in actions, actions
    assert actions.index("deploy") < actions.index("adopt"), actions
