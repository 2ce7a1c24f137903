"""A frozen host during an SSH deploy to two hosts: ``docker pause`` (every process of the
systemd+sshd test host stopped by the cgroup freezer; its TCP port still accepts connections,
nothing answers) while ``reconciler apply`` rolls a new release out to it.

The apply must not hang: the pooled connection is dropped after a few unanswered keepalives, a
new login times out, the deploy retries until the Target's ``ssh.retryDeadline`` and fails naming
the host. The deployment is recorded as failed (rolled back), the other host runs one coherent
revision, and after ``docker unpause`` the next apply converges. Short SSH timings come from the
Target spec, so the whole trial takes about 25 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.journal import deployment_ids, journal_problems, newest_status
from tests.chaos.report import record_trial
from tests.chaos.test_ssh_faults import SSHFleet, http
from tests.chaos.units import process_revision, unit_props
from tests.e2e.conftest import wait_for as wait
from tests.providers.bare_metal.conftest import PORT_FILE, free_port
from tests.providers.bare_metal.test_ssh_cli import service_yaml, target_yaml
from tests.state.backends import raw_query

SCENARIO_FREEZE = "test host frozen (docker pause) during an SSH deploy"
# keepalives every 0.5 s (3 unanswered: dropped), 1 s per login attempt, 3 s of retries
SSH_TIMING = "  ssh: {connectTimeout: 1s, keepaliveInterval: 500ms, commandTimeout: 5s, " \
             "retryDeadline: 3s}\n"
HANG_BOUND_S = 40.0  # pause -> apply exited (about 17 s measured; the default retry budget is 90 s)


def docker(infra: Any, *args: str) -> None:
    done = subprocess.run([infra.docker_cli, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def history(fleet: SSHFleet) -> list[dict[str, Any]]:
    """`reconciler history api -o json` of the fleet's state, newest deployment first."""
    argv = [*fleet.argv()[:fleet.argv().index("apply")], "history", "api", "-o", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=fleet.repo)
    assert done.returncode == 0, done.stderr
    deployments: list[dict[str, Any]] = json.loads(done.stdout)
    return deployments


def unit_revision(host: Any) -> tuple[str, str, str]:
    """(FRAISIER_REVISION of the unit's process, release `current` points at, ActiveState)."""
    props = unit_props(host, "fraisier-default_api.service", "ActiveState")
    current = host.sh("readlink /srv/fraisier/default/api/current").strip().rsplit("/", 1)[-1]
    return process_revision(host, props), current, props["ActiveState"]


@pytest.mark.timeout(120)
def test_frozen_host_mid_deploy(tmp_path: Path, ssh_hosts: Any, testinfra: Any) -> None:
    started = time.monotonic()
    good, frozen = ssh_hosts[0], ssh_hosts[1]
    ports = {}
    for host in (good, frozen):
        ports[host.name] = free_port()
        host.run(["sh", "-c", 'printf %s "$1" >"$2"', "-", str(ports[host.name]), PORT_FILE])
    fleet = SSHFleet(tmp_path, good)
    target = target_yaml([good, frozen]).replace("  transport: ssh\n",
                                                 "  transport: ssh\n" + SSH_TIMING, 1)
    (fleet.repo / "fleet" / "target.yaml").write_text(target)
    (fleet.repo / "fleet" / "api.yaml").write_text(
        service_yaml() + "  strategy: {type: rolling, maxParallel: 1}\n")
    fleet.release("v1")
    first = fleet.apply()
    assert first.returncode == 0, first.stdout + first.stderr
    assert http(ports[good.name]) == "v1 hi" and http(ports[frozen.name]) == "v1 hi"
    v1_revision = unit_revision(good)[0]

    fleet.release("v2", files=100)
    before = deployment_ids(fleet.url)
    apply = fleet.start_apply()
    paused_at: float | None = None
    try:
        # rolling, one host at a time: freeze the second host once its own deploy step began
        wait(lambda: bool(raw_query(
            fleet.url, "SELECT 1 FROM v_deployment_step WHERE action = 'deploy' "
                       "AND instance = %s", (frozen.name,))) or apply.poll() is not None,
             timeout=20, step=0.01)
        assert apply.poll() is None, "the apply ended before the fault"
        docker(testinfra, "pause", frozen.container)
        paused_at = time.monotonic()
        try:
            out, _ = apply.communicate(timeout=HANG_BOUND_S)
        except subprocess.TimeoutExpired:
            apply.kill()
            out, _ = apply.communicate(timeout=10)
            raise AssertionError(f"apply hung {HANG_BOUND_S:g} s on a frozen host:\n{out}") \
                from None
        failed_after = time.monotonic() - paused_at
        assert "Traceback" not in out, out
        assert apply.returncode == 1, out  # a failed resource, not a crash
        assert frozen.name in out, out  # the error names the host, and why
        assert "no SSH login within connectTimeout 1s" in out, out
        status = newest_status(fleet.url, "api")
        assert status in ("failed", "rolled_back", "rollback_failed"), status
        newest = history(fleet)[0]
        steps = [s for s in newest["steps"] if s["instance"] == frozen.name]
        assert any(s["status"] == "failed" and frozen.name in (s.get("detail") or "")
                   for s in steps), steps
        # the other host: one coherent revision, running (the old one after the rollback)
        unit_rev, current, active = unit_revision(good)
        assert active == "active" and http(ports[good.name]) in ("v1 hi", "v2 hi")
        served = http(ports[good.name]).split()[0]
        assert (unit_rev == v1_revision) == (served == "v1"), (unit_rev, current, served)
        assert unit_rev == current, (unit_rev, current)
        # the rollback tries every host: the frozen one failing does not leave this one on v2
        assert served == "v1", (status, served)
    finally:
        if paused_at is not None:
            docker(testinfra, "unpause", frozen.container)
        if apply.poll() is None:
            apply.kill()
            apply.wait(timeout=10)
    frozen.wait_ssh(timeout=15)

    force = ["--force"] if status in ("rolled_back", "rollback_failed") else []
    rerun = fleet.apply(*force)
    converged = rerun.returncode == 0
    serving = converged and all(http(p) == "v2 hi" for p in ports.values())
    problems = journal_problems(fleet.url, before)
    seconds = time.monotonic() - started
    note = (f"v2 frozen during deploy to {frozen.name}: apply exit {apply.returncode} "
            f"{failed_after:.1f}s after the pause ({status}, {good.name} kept "
            f"{served}); unpaused, rerun{' --force' if force else ''} exit {rerun.returncode}")
    record_trial(SCENARIO_FREEZE, converged and serving, len(problems), note=note,
                 seconds=seconds)
    assert converged, rerun.stdout + rerun.stderr
    assert serving, {h: http(p) for h, p in ports.items()}
    assert problems == [], problems
    for host in (good, frozen):
        assert unit_revision(host)[0] == unit_revision(host)[1] != v1_revision


SCENARIO_FREEZE_DEFAULTS = ("test host frozen (docker pause) during an SSH deploy, "
                            "default SSH settings")
# With default settings (docs/reliability.md, "frozen host"): the frozen host is declared down
# (its deploy step fails) in about 35 s; the healthy host is restored first; the apply ends once
# the rollback gives up on the frozen host (its own 30 s deadline).
DECLARED_DOWN_BOUND_S = 50.0
HEALTHY_BACK_BOUND_S = 45.0
APPLY_BOUND_S = 80.0


@pytest.mark.timeout(240)
def test_frozen_host_default_settings_healthy_host_restored_first(
        tmp_path: Path, ssh_hosts: Any, testinfra: Any) -> None:
    started = time.monotonic()
    good, frozen = ssh_hosts[0], ssh_hosts[1]
    ports = {}
    for host in (good, frozen):
        ports[host.name] = free_port()
        host.run(["sh", "-c", 'printf %s "$1" >"$2"', "-", str(ports[host.name]), PORT_FILE])
    fleet = SSHFleet(tmp_path, good)
    (fleet.repo / "fleet" / "target.yaml").write_text(target_yaml([good, frozen]))
    (fleet.repo / "fleet" / "api.yaml").write_text(
        service_yaml() + "  strategy: {type: rolling, maxParallel: 1}\n")
    fleet.release("v1")
    first = fleet.apply()
    assert first.returncode == 0, first.stdout + first.stderr
    fleet.release("v2", files=100)
    apply = fleet.start_apply()
    paused_at: float | None = None
    served_v2 = False
    back_after: float | None = None
    down_after: float | None = None
    try:
        wait(lambda: bool(raw_query(
            fleet.url, "SELECT 1 FROM v_deployment_step WHERE action = 'deploy' "
                       "AND instance = %s", (frozen.name,))) or apply.poll() is not None,
             timeout=30, step=0.01)
        assert apply.poll() is None, "the apply ended before the fault"
        docker(testinfra, "pause", frozen.container)
        paused_at = time.monotonic()
        while apply.poll() is None and time.monotonic() - paused_at < APPLY_BOUND_S:
            answer = http(ports[good.name])
            served_v2 = served_v2 or answer == "v2 hi"
            if back_after is None and served_v2 and answer == "v1 hi":
                back_after = time.monotonic() - paused_at
            if down_after is None and raw_query(
                    fleet.url, "SELECT 1 FROM v_deployment_step WHERE action = 'deploy' "
                               "AND instance = %s AND status = 'failed'", (frozen.name,)):
                down_after = time.monotonic() - paused_at
            time.sleep(0.1)
        if apply.poll() is None:
            apply.kill()
        out, _ = apply.communicate(timeout=10)
        apply_after = time.monotonic() - paused_at
        if back_after is None and http(ports[good.name]) == "v1 hi":
            back_after = apply_after
        assert apply.returncode == 1, out
        newest = history(fleet)[0]
        steps = newest["steps"]
        rollbacks = [s["instance"] for s in steps if s["action"] == "rollback"]
        assert rollbacks == [good.name, frozen.name], rollbacks  # the reachable host first
        assert newest["status"] == "rollback_failed", newest["status"]
        assert http(ports[good.name]) == "v1 hi"
    finally:
        if paused_at is not None:
            docker(testinfra, "unpause", frozen.container)
        if apply.poll() is None:
            apply.kill()
            apply.wait(timeout=10)
    frozen.wait_ssh(timeout=15)
    rerun = fleet.apply("--force")
    converged = rerun.returncode == 0 and all(http(p) == "v2 hi" for p in ports.values())
    note = (f"defaults: {frozen.name} declared down {down_after}s after the pause; "
            f"{good.name} back on v1 after {back_after}s; apply exit {apply.returncode} after "
            f"{apply_after:.1f}s; rerun --force exit {rerun.returncode}")
    record_trial(SCENARIO_FREEZE_DEFAULTS, converged, 0, note=note,
                 seconds=time.monotonic() - started)
    print(note)
    assert down_after is not None and down_after < DECLARED_DOWN_BOUND_S, note
    assert back_after is not None and back_after < HEALTHY_BACK_BOUND_S, note
    assert apply_after < APPLY_BOUND_S, note
    assert converged, rerun.stdout + rerun.stderr
