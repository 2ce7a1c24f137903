"""Recovery adopts what a killed reconciler already finished (real systemd+sshd test hosts).

`reconciler apply` is SIGKILLed during a rollout to two hosts; the next apply recovers it:

- killed in the health gate, after every host switched and restarted the unit: the deployment
  is adopted — gated again, recorded succeeded with an ``adopt`` step per host — and no unit is
  restarted a second time (systemd InvocationID unchanged). Before: cancelled, then deployed
  again, every unit restarted for the same revision;
- killed before the switch (in the release's build): still cancelled and deployed again;
- killed in the gate of a revision that fails it: adoption's gate fails, the rollout resumes
  and is rolled back, as before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.e2e.conftest import wait_for as wait
from tests.rollout.fleets import ssh_fleet
from tests.rollout.test_rolling_ssh import APP, greetings, steps
from tests.state.backends import raw_query

pytestmark = [pytest.mark.integration]
UNIT = "fraisier-default_api.service"
# the test app, waiting SLOW_START seconds before it listens: the health gate holds meanwhile
SLOW_APP = APP.replace(
    "http.server.HTTPServer.allow_reuse_address = True",
    'import time\ntime.sleep(float(os.environ.get("SLOW_START", "0")))\n'
    "http.server.HTTPServer.allow_reuse_address = True")


def service(greeting: str, *, slow_start: float = 0, build_s: float = 0) -> str:
    build = f"\n  build: [sleep, \"{build_s}\"]" if build_s else ""
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  target: hosts
  source: {{path: app}}
  command: [python3, app.py]{build}
  env: {{GREETING: "{greeting}", SLOW_START: "{slow_start}"}}
  stopTimeout: 2s
  health:
    exec: {{command: [python3, app.py, check]}}
    interval: 200ms
    timeout: 5s
    startPeriod: 8s
    failureThreshold: 3
  strategy: {{type: recreate}}
"""


def invocations(hosts: Any) -> dict[str, str]:
    return {h.name: h.sh(f"systemctl show -p InvocationID --value {UNIT}").strip()
            for h in hosts}


def setup(tmp_path: Path, hosts: Any) -> tuple[Fleet, str]:
    fleet, ports = ssh_fleet(tmp_path, hosts, SLOW_APP)
    fleet.ports = ports  # type: ignore[attr-defined]
    fleet.write("api.yaml", service("v1"))
    fleet.commit("v1")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return fleet, f"sqlite:///{fleet.state / 'fraisier.db'}"


def kill_apply_when(fleet: Fleet, ready: Callable[[], bool]) -> None:
    """Start `reconciler apply`, SIGKILL it once ``ready()`` holds (it must not end first)."""
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "text", "apply", *fleet.repo_args()], cwd=fleet.repo,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait(lambda: ready() or apply.poll() is not None, timeout=90, step=0.02)
        assert apply.poll() is None, apply.communicate()[0].decode()
    finally:
        os.kill(apply.pid, signal.SIGKILL)
        apply.communicate(timeout=10)


def open_steps(url: str, action: str, status: str) -> int:
    return int(raw_query(
        url, "SELECT count(*) FROM v_deployment_step AS s JOIN v_deployment AS d "
             "ON d.id = s.deployment_id WHERE d.status = 'in_progress' AND s.action = %s "
             "AND s.status = %s", (action, status))[0][0])


@pytest.mark.timeout(300)
def test_killed_after_the_switch_is_adopted_without_a_second_restart(
        tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = list(ssh_hosts)[:2]
    fleet, url = setup(tmp_path, hosts)
    fleet.write("api.yaml", service("v2", slow_start=4))
    fleet.commit("v2")
    # every host deployed (switched, restarted), the gate waiting for the slow start
    kill_apply_when(fleet, lambda: open_steps(url, "deploy", "succeeded") == len(hosts)
                    and open_steps(url, "health", "started") > 0)
    started = invocations(hosts)
    interrupted = fleet.json("history", "api")[0]
    assert interrupted["status"] == "in_progress"

    out = fleet.cli("apply", *fleet.repo_args(), "-o", "json", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(greetings(fleet).values()) == {"v2"}, greetings(fleet)
    assert invocations(hosts) == started  # not restarted a second time
    [api] = [r for r in json.loads(out.stdout)["resources"] if r["resource"].endswith("/api")]
    assert api["result"] == "succeeded" and api.get("adopted") is True, api
    assert api["deployment"] == interrupted["deployment"], api
    history = fleet.json("history", "api")
    newest = history[0]
    assert newest["id"] == interrupted["id"], [(d["status"], d["trigger"]) for d in history]
    assert newest["status"] == "succeeded"
    adopted = [(a, i) for a, i in steps(newest) if a == "adopt"]
    assert sorted(adopted) == sorted(("adopt", h.name) for h in hosts), steps(newest)
    after = steps(newest)[steps(newest).index(adopted[0]):]
    assert {a for a, _ in after} == {"adopt", "health"}, steps(newest)  # no deploy after
    status = {r["name"]: r for r in fleet.json("status")["resources"]}
    assert status["api"]["appliedRevision"] == newest["toRevision"], status["api"]
    assert status["api"]["sync"] == "Synced" and status["api"]["lastResult"] == "succeeded"


@pytest.mark.timeout(300)
def test_killed_before_the_switch_is_deployed_again(tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = list(ssh_hosts)[:2]
    fleet, url = setup(tmp_path, hosts)
    before = invocations(hosts)
    fleet.write("api.yaml", service("v2", build_s=3))
    fleet.commit("v2")
    # killed while each host builds the release: nothing switched or restarted yet
    kill_apply_when(fleet, lambda: open_steps(url, "deploy", "started") == len(hosts))
    assert invocations(hosts) == before
    interrupted = fleet.json("history", "api")[0]

    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(greetings(fleet).values()) == {"v2"}, greetings(fleet)
    now = invocations(hosts)
    assert all(now[h] != before[h] for h in now), (before, now)
    history = {d["id"]: d for d in fleet.json("history", "api")}
    assert history[interrupted["id"]]["status"] == "cancelled"
    assert not [s for s in steps(history[interrupted["id"]]) if s[0] == "adopt"]
    newest = fleet.json("history", "api")[0]
    assert newest["status"] == "succeeded" and newest["trigger"] == "resume"
    assert sorted(i for a, i in steps(newest) if a == "deploy") == sorted(h.name for h in hosts)


@pytest.mark.timeout(300)
def test_adoption_whose_gate_fails_resumes_and_rolls_back(tmp_path: Path,
                                                          ssh_hosts: Any) -> None:
    hosts = list(ssh_hosts)[:2]
    fleet, url = setup(tmp_path, hosts)
    hosts[0].run(["touch", "/etc/fraisier-fail-v2"])  # v2 fails its health check on host 1
    fleet.write("api.yaml", service("v2", slow_start=4))
    fleet.commit("v2")
    kill_apply_when(fleet, lambda: open_steps(url, "deploy", "succeeded") == len(hosts)
                    and open_steps(url, "health", "started") > 0)
    interrupted = fleet.json("history", "api")[0]

    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert set(greetings(fleet).values()) == {"v1"}, greetings(fleet)
    history = {d["id"]: d for d in fleet.json("history", "api")}
    first = history[interrupted["id"]]
    assert first["status"] == "cancelled"
    assert sorted(i for a, i in steps(first) if a == "adopt") == sorted(h.name for h in hosts)
    newest = fleet.json("history", "api")[0]
    assert newest["status"] == "rolled_back" and newest["trigger"] == "resume", newest
