"""A reconciler SIGKILLed between writing a unit file and `systemctl daemon-reload`.

The unit file on the host then holds the new content while systemd still runs the old one
(``NeedDaemonReload=yes``). The next deploy finds the file identical to what it would write: it
must reload anyway, because systemd says so, or the unit restarts with the old
``FRAISIER_REVISION`` and every heal pass calls it drift and redeploys (a heal loop).

The kill is placed with the test-only hook ``FRAISIER_TEST_HOLD_AFTER_UNIT_WRITE``
(reconciler/providers/bare_metal/systemd.py): the deploy writes the unit, says so in the marker
file and waits; the test SIGKILLs the process there. A trial converges when the next apply leaves
both hosts running the new revision's unit, and has a heal loop when `diff --live` still reports
drift after it.

Trials: 5 on two real systemd+sshd hosts in `make test`, FRAISIER_CHAOS_TRIALS for more (the
figure in docs/reliability.md is 20). The hook puts every kill at the same point, and each trial
asserts that its kill left a unit unloaded: without the fix every trial heal-loops, so the first
one already fails; the later trials only add run-to-run variation (which host was written when
the kill came).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.bare_metal.systemd import HOLD_AFTER_UNIT_WRITE_ENV
from tests.chaos.journal import deployment_ids, journal_problems
from tests.chaos.report import record_trial
from tests.chaos.units import process_revision, unit_props
from tests.e2e.conftest import wait_for as wait
from tests.rollout.fleets import ssh_fleet
from tests.rollout.test_rolling_ssh import APP, greetings, service

SCENARIO = "SIGKILL between unit write and daemon-reload (SSH, 2 hosts)"
TRIALS = int(os.environ.get("FRAISIER_CHAOS_TRIALS", "5"))
UNIT = "fraisier-default_api.service"


def unit_state(host: Any) -> tuple[str, str, str]:
    """(FRAISIER_REVISION of the unit's process, `current` release, NeedDaemonReload)."""
    props = unit_props(host, UNIT, "NeedDaemonReload")
    current = host.sh("readlink /srv/fraisier/default/api/current").strip().rsplit("/", 1)[-1]
    return process_revision(host, props), current, props["NeedDaemonReload"]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_sigkill_after_unit_write_never_heal_loops(tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:2]
    fleet, ports = ssh_fleet(tmp_path, hosts, APP)
    fleet.ports = ports  # type: ignore[attr-defined]
    strategy = "\n    type: recreate"
    fleet.write("api.yaml", service("v0", strategy))
    fleet.commit("v0")
    first = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    url = f"sqlite:///{fleet.state / 'fraisier.db'}"
    before = deployment_ids(url)
    loops = 0
    notes: list[str] = []
    for n in range(1, TRIALS + 1):
        started = time.monotonic()
        # a unit setting changes (the revision alone no longer changes the unit)
        fleet.write("api.yaml", service(f"v{n}", strategy).replace(
            "stopTimeout: 2s", f"stopTimeout: {n + 2}s"))
        fleet.commit(f"v{n}")
        marker = tmp_path / f"held-{n}"
        apply = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
             "--log-format", "text", "apply", *fleet.repo_args()],
            cwd=fleet.repo, env={**os.environ, HOLD_AFTER_UNIT_WRITE_ENV: str(marker)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait(lambda: marker.exists() or apply.poll() is not None, timeout=60, step=0.02)
            assert apply.poll() is None, apply.communicate()[0].decode()
        finally:
            os.kill(apply.pid, signal.SIGKILL)
            apply.communicate(timeout=10)
        # What the kill left: a unit written but not loaded (systemd says so).
        left = [unit_state(h)[2] for h in hosts]
        assert "yes" in left, left
        again = fleet.cli("apply", *fleet.repo_args(), timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        states = {h.name: unit_state(h) for h in hosts}
        live = fleet.cli("diff", *fleet.repo_args(), "--live", timeout=60)
        looping = live.returncode != 0 or any(
            unit_rev != current or reload != "no" for unit_rev, current, reload in states.values())
        served = set(greetings(fleet).values())
        converged = not looping and served == {f"v{n}"}
        loops += looping
        note = (f"trial {n}: left NeedDaemonReload={','.join(left)}; next apply "
                f"{'heal loop: ' + live.stdout.strip()[-200:] if looping else 'converged'}")
        notes.append(note)
        record_trial(SCENARIO, converged, 0, note=note, seconds=time.monotonic() - started)
    problems = journal_problems(url, before)
    assert problems == [], problems
    assert loops == 0, "\n".join(notes)
