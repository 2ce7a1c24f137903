"""Two `reconciler daemon --ha` replicas on one server database split a fleet, never deploy a
resource twice, and a SIGKILLed replica's share is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, greeting, service_yaml, wait_for
from tests.helpers import need

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["postgresql", "mysql"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.state.backends import available, throwaway_url

    ok, reason = available(str(request.param))
    need(ok, reason)
    with throwaway_url(str(request.param), tmp_path) as url:
        yield url



def start(fleet: Fleet, db: str, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--db", db, "--state-dir", str(state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{free_port()}", "--interval", "2s",
         "--ha", "--shard-ttl", "3s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_replicas_split_the_fleet_and_take_over(fleet: Fleet, server_db: str,
                                                tmp_path: Path) -> None:
    ports = {f"svc{i}": free_port() for i in range(6)}
    for name, port in ports.items():
        fleet.write(f"{name}.yaml", service_yaml(name, port, greeting="one"))
    fleet.commit()
    # Two replicas on one host share the release root (the Target's root); each its own state.
    a = start(fleet, server_db, tmp_path / "state-a")
    b = start(fleet, server_db, tmp_path / "state-b")
    try:
        wait_for(lambda: all(greeting(p) == "one" for p in ports.values()), timeout=90,
                 step=0.2)
        db = ["--db", server_db]

        def history(name: str) -> list[dict[str, object]]:
            out = fleet.cli(*db, "history", name, "-o", "json")
            return list(json.loads(out.stdout)) if out.stdout else []

        for name in ports:
            assert [d["status"] for d in history(name)] == ["succeeded"], name
        # SIGKILL one replica; a new commit still reaches every service.
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        for name, port in ports.items():
            fleet.write(f"{name}.yaml", service_yaml(name, port, greeting="two"))
        fleet.commit("two")
        wait_for(lambda: all(greeting(p) == "two" for p in ports.values()), timeout=90,
                 step=0.2)
        for name in ports:
            statuses = [d["status"] for d in history(name)]
            assert statuses.count("succeeded") == 2 and "in_progress" not in statuses, statuses
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# In-progress deployments whose provider work is done (deploy step succeeded) and whose health
# gate is open, with the owner of the resource's lease.
_GATING = """SELECT d.id, d.name, l.owner FROM v_deployment AS d
JOIN v_lock AS l ON l.name = CONCAT('resource:', d.environment, '/', d.kind, '/', d.name)
WHERE d.status = 'in_progress'
  AND EXISTS (SELECT 1 FROM v_deployment_step AS s WHERE s.deployment_id = d.id
              AND s.action = 'deploy' AND s.status = 'succeeded')"""


@pytest.mark.timeout(420)
def test_a_killed_replicas_finished_rollouts_are_adopted(fleet: Fleet, server_db: str,
                                                         tmp_path: Path) -> None:
    """A replica SIGKILLed while its rollouts wait in their health gates (every process
    already started at the new revision): the survivor adopts those deployments — gated,
    recorded succeeded with `adopt` steps — and starts none of them again (before: cancelled
    and deployed a second time, every process restarted)."""
    from tests.state.backends import raw_query

    ports = {f"svc{i}": free_port() for i in range(6)}
    for name, port in ports.items():
        fleet.write(f"{name}.yaml", service_yaml(name, port, greeting="one"))
    fleet.commit()
    replicas = {}
    for label in ("a", "b"):
        proc = start(fleet, server_db, tmp_path / f"state-{label}")
        replicas[proc.pid] = proc
    try:
        def settled() -> bool:
            return not raw_query(server_db, "SELECT 1 FROM v_deployment "
                                            "WHERE status IN ('pending', 'in_progress')")

        wait_for(lambda: all(greeting(p) == "one" for p in ports.values()) and settled(),
                 timeout=90, step=0.2)
        for name, port in ports.items():
            fleet.write(f"{name}.yaml", service_yaml(name, port, greeting="two",
                                                     start_period="30s",
                                                     extra_env='\n    SLOW_START: "6"'))
        fleet.commit("two")

        def owner_pid(owner: str) -> int:
            return int(owner.split(":")[1])

        gating: list[tuple[object, ...]] = []

        def some_gating() -> bool:
            gating[:] = raw_query(server_db, _GATING)
            return bool(gating)

        wait_for(some_gating, timeout=90, step=0.05)
        victim = replicas[owner_pid(str(gating[0][2]))]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        # everything the victim had started at the new revision (its deploy step done)
        adoptable = {str(row[1]): str(row[0]) for row in raw_query(server_db, _GATING)
                     if owner_pid(str(row[2])) == victim.pid}
        assert adoptable
        started = {name: fleet.process(name) for name in adoptable}

        wait_for(lambda: all(greeting(p) == "two" for p in ports.values()), timeout=120,
                 step=0.2)
        wait_for(settled, timeout=60, step=0.2)
        db = ["--db", server_db]
        for name, dep_id in adoptable.items():
            history = json.loads(fleet.cli(*db, "history", name, "-o", "json").stdout)
            brief = [(d["deployment"], d["status"], d["trigger"],
                      [s["action"] for s in d["steps"]]) for d in history]
            assert history[0]["id"] == dep_id, (name, dep_id, brief)  # nothing after it
            adopted = history[0]
            assert adopted["status"] == "succeeded", adopted
            assert "adopt" in [s["action"] for s in adopted["steps"]], adopted["steps"]
            assert [d["trigger"] for d in history].count("resume") == 0, history
            # the process the victim started is the one running (same pid and start time)
            assert fleet.process(name) == started[name], (name, brief)
    finally:
        for proc in replicas.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in replicas.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
