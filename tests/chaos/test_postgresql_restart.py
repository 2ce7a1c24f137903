"""PostgreSQL restarted (stop -m fast, start) while ``reconciler apply --db postgresql://…``
rolls a Service out on the local host: the pass completes (the store reconnects with backoff) or
fails honestly, the next apply converges, and no deployment record is lost or left open.

tests/state/test_resilience.py covers the store alone (40 writes across a stop/start); this is
the same fault under a whole reconcile: planning, the journal of a rollout, the health gate. The
server is the test's own (tests/state/private_postgresql.py), not the shared one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.journal import deployment_ids, journal_problems
from tests.chaos.report import record_trial
from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for
from tests.state.backends import raw_query
from tests.state.private_postgresql import PrivatePostgreSQL

pytestmark = pytest.mark.timeout(150)
SCENARIO = "PostgreSQL restart during a reconcile"


def in_phase(url: str, action: str) -> bool:
    try:
        return bool(raw_query(
            url, "SELECT 1 FROM v_deployment_step AS s JOIN v_deployment AS d "
                 "ON d.id = s.deployment_id WHERE d.status = 'in_progress' AND s.action = %s",
            (action,)))
    except Exception:  # not migrated yet
        return False


def restart_postgresql(server: PrivatePostgreSQL) -> None:
    try:
        server.stop("fast")
        time.sleep(0.5)
    finally:
        if not server.running():
            server.start()


def test_postgresql_restart_mid_reconcile(fleet: Fleet, tmp_path: Path,
                                          private_postgresql: PrivatePostgreSQL) -> None:
    server = private_postgresql
    port = free_port()
    url = server.url
    db = ["--db", url]
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.commit("one")
    first = fleet.cli(*db, "apply", *fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    # restarted while the new revision waits to become healthy, then while it is started
    for greeting, when in (("two", "health"), ("three", "start")):
        _trial(fleet, server, port, greeting, when)
    _daemon_trial(fleet, server, port, tmp_path)


def _daemon_trial(fleet: Fleet, server: PrivatePostgreSQL, port: int, tmp_path: Path) -> None:
    """The same fault under the daemon: it must ride it out and converge on its own."""
    started = time.monotonic()
    url = server.url
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--db", url,
         "daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{free_port()}",
         "--interval", "1s"],
        cwd=fleet.repo, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        time.sleep(1.0)  # let it load the current commit (already applied: nothing to do)
        fleet.write("api.yaml", service_yaml("api", port, greeting="four", start_period="20s",
                                             extra_env='\n    SLOW_START: "2"'))
        fleet.commit("four, slow start")
        wait_for(lambda: in_phase(url, "health"), timeout=40, step=0.05)
        before = deployment_ids(url)
        restart_postgresql(server)

        def settled() -> bool:
            try:
                return (not journal_problems(url, before)
                        and '"four"' in http_get(port)[1]
                        and raw_query(url, "SELECT sync_status FROM v_resource "
                                           "WHERE name = 'api'") == [("Synced",)])
            except Exception:  # the server is still coming back
                return False

        try:
            wait_for(settled, timeout=60, step=0.25)
            converged = True
        except AssertionError:
            converged = False
        alive = daemon.poll() is None
        problems = journal_problems(url, before)
        record_trial(SCENARIO, converged and alive, len(problems),
                     note=f"restart during health under the daemon: "
                          f"{'converged on its own' if converged else 'did not converge'}",
                     seconds=time.monotonic() - started)
        assert alive, log.read_text(errors="replace")[-3000:]
        assert converged, log.read_text(errors="replace")[-3000:]
        assert problems == [], problems
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=10)


def _trial(fleet: Fleet, server: PrivatePostgreSQL, port: int, greeting: str, when: str) -> None:
    url = server.url
    db = ["--db", url]
    started = time.monotonic()
    fleet.write("api.yaml", service_yaml("api", port, greeting=greeting, start_period="20s",
                                         extra_env='\n    SLOW_START: "2"'))
    fleet.commit(f"{greeting}, slow start")
    count = len(deployment_ids(url))
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), *db,
         "--log-format", "text", "apply", *fleet.repo_args()],
        cwd=fleet.repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if when == "health":  # waiting for the new revision to become healthy
            wait_for(lambda: in_phase(url, "health"), timeout=30, step=0.05)
        else:  # the new deployment is recorded: its revision is being started
            wait_for(lambda: len(deployment_ids(url)) > count, timeout=30, step=0.02)
        before = deployment_ids(url)
        restart_postgresql(server)
        out, _ = apply.communicate(timeout=90)
    finally:
        if apply.poll() is None:
            apply.kill()
            apply.wait(timeout=10)
        if not server.running():
            server.start()
    assert apply.returncode in (0, 1, 2), out
    assert "Traceback" not in out, out
    if apply.returncode == 2:  # failed honestly: a coded error, not a crash
        assert "error[FR" in out, out

    rerun = fleet.cli(*db, "apply", *fleet.repo_args())
    problems = journal_problems(url, before)
    status = fleet.json("--db", url, "status")["resources"]
    converged = (rerun.returncode == 0 and status[0]["sync"] == "Synced"
                 and f'"{greeting}"' in http_get(port)[1])
    record_trial(SCENARIO, converged, len(problems),
                 note=f"restart during {when}: apply exit {apply.returncode}",
                 seconds=time.monotonic() - started)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert converged, (status, http_get(port))
    assert problems == [], problems
