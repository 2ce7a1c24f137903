"""The daemon against a real repo: commit → rollout, failed health → rollback, bad commit kept
out, schedules fire, metrics served, SIGTERM exits cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import (
    Fleet,
    free_port,
    greeting,
    service_yaml,
    stop_daemon,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""



def test_daemon_follows_commits(fleet: Fleet) -> None:
    port, listen = free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.write("report.yaml", """apiVersion: fraisier.dev/v1
kind: Schedule
metadata: {name: report}
spec:
  target: local
  schedule: "* * * * *"
  source: {path: app}
  command: [python3, job.py]
  env: {MSG: scheduled}
  timeout: 30s
""")
    fleet.commit()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}", "--interval", "30s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{listen}"
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, timeout=60, step=0.2)
        wait_for(lambda: greeting(port) == "one", timeout=30)
        assert get(base + "/healthz")[0] == 200

        # commit → rollout, measured (not asserted tightly: CI machines vary)
        fleet.write("api.yaml", service_yaml("api", port, greeting="two"))
        fleet.commit("two")
        t0 = time.monotonic()
        wait_for(lambda: greeting(port) == "two", timeout=30, step=0.02)
        print(f"commit -> new revision serving: {time.monotonic() - t0:.2f}s")

        # failing health → rolled back, old revision keeps serving
        fleet.write("api.yaml", service_yaml("api", port, greeting="three", fail=True))
        fleet.commit("three, broken")
        wait_for(lambda: fleet.json("history", "api")[0]["status"] == "rolled_back", timeout=60,
                 step=0.3)
        assert greeting(port) == "two"

        # an invalid commit is reported and nothing is applied
        fleet.write("api.yaml", "apiVersion: fraisier.dev/v1\nkind: Service\nmetadata: {name: [\n")
        fleet.commit("broken yaml")
        wait_for(lambda: "invalid" in (json.loads(get(base + "/readyz")[1]).get("lastError")
                                       or ""), timeout=30, step=0.2)
        assert greeting(port) == "two"
        metrics = get(base + "/metrics")[1]
        assert "reconciler_desired_state_errors_total 1.0" in metrics
        converged = next(line for line in metrics.splitlines()
                         if line.startswith('reconciler_reconcile_total{result="converged"}'))
        assert float(converged.split()[-1]) > 0
        assert 'reconciler_rollbacks_total{reason="health"} 1.0' in metrics

        # the schedule fires at the next minute boundary
        wait_for(lambda: any(d["trigger"] == "schedule" and d["status"] != "in_progress"
                             for d in fleet.json("history", "report")), timeout=75, step=1)
        run = next(d for d in fleet.json("history", "report") if d["trigger"] == "schedule")
        assert run["status"] == "succeeded"
    finally:
        code = stop_daemon(daemon)
    out = daemon.stdout.read() if daemon.stdout else ""
    assert code == 0, out[-3000:]
    assert "Traceback" not in out


def test_daemon_heals_a_killed_service(fleet: Fleet) -> None:
    import os

    port, listen = free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="alive", start_period="10s"))
    fleet.commit()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}", "--interval", "2s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: greeting(port) == "alive", timeout=60)
        wait_for(lambda: fleet.json("history", "api")[0]["status"] == "succeeded", timeout=60,
                 step=0.2)
        pidfile = next(fleet.root.rglob("*.pid"))
        pid = int(json.loads(pidfile.read_text())["pid"])
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: greeting(port) is None, timeout=10)
        wait_for(lambda: greeting(port) == "alive", timeout=60, step=0.2)
        wait_for(lambda: fleet.json("history", "api")[0]["status"] != "in_progress",
                 timeout=30, step=0.1)
        hist = fleet.json("history", "api")
        assert "drift" in hist[0]["trigger"] and hist[0]["status"] == "succeeded", hist
    finally:
        assert stop_daemon(daemon) == 0
