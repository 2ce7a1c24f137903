"""kill -9 of `reconciler apply` mid-rollout: the rerun resumes, nothing is left in_progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for

pytestmark = pytest.mark.timeout(180)


def test_kill_9_mid_rollout_then_rerun_resumes(fleet: Fleet) -> None:
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
    interrupted = fleet.json("history", "api")[0]
    assert interrupted["status"] == "in_progress"  # the journal shows where it died

    rerun = fleet.cli("apply", *fleet.repo_args())
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    history = fleet.json("history", "api")
    assert all(d["status"] not in ("in_progress", "pending") for d in history)
    by_id = {d["id"]: d for d in history}
    assert by_id[interrupted["id"]]["status"] == "cancelled"
    assert "interrupted during health" in json.dumps(by_id[interrupted["id"]]["events"])
    assert history[0]["status"] == "succeeded" and history[0]["trigger"] == "resume"
    assert json.loads(http_get(port)[1])["greeting"] == "two"
