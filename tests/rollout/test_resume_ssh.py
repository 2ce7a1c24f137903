"""A rolling rollout to real systemd+sshd hosts, SIGKILLed after its first batch was gated:
the next apply continues with the second batch and leaves the first host's process alone
(systemd InvocationID unchanged), instead of starting again at batch 1.
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

from tests.e2e.conftest import wait_for as wait
from tests.rollout.fleets import ssh_fleet
from tests.rollout.test_rolling_ssh import APP, greetings, service, steps
from tests.state.backends import raw_query

pytestmark = [pytest.mark.integration]
UNIT = "fraisier-default_api.service"
ROLLING = """
    type: rolling
    maxParallel: 1"""


def invocation(host: Any) -> str:
    return host.sh(f"systemctl show -p InvocationID --value {UNIT}").strip()


@pytest.mark.timeout(300)
def test_resumed_rollout_continues_after_the_last_gated_batch(tmp_path: Path,
                                                              ssh_hosts: Any) -> None:
    first, second = list(ssh_hosts)[:2]
    fleet, _ = ssh_fleet(tmp_path, [first, second], APP)
    fleet.ports = _  # type: ignore[attr-defined]
    fleet.write("api.yaml", service("v1", ROLLING))
    fleet.commit("v1")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr

    data = fleet.repo / "app" / "data"  # a slower upload: room to kill during batch 2
    data.mkdir()
    for i in range(100):
        (data / f"{i}.bin").write_bytes(os.urandom(16384))
    # with a build, the release is not staged ahead on host 2 while batch 1 rolls: its upload
    # stays in batch 2's deploy, where the kill lands
    fleet.write("api.yaml", service("v2", ROLLING).replace(
        "  command: [python3, app.py]\n", "  command: [python3, app.py]\n  build: [\"true\"]\n"))
    fleet.commit("v2")
    url = f"sqlite:///{fleet.state / 'fraisier.db'}"
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "text", "apply", *fleet.repo_args()], cwd=fleet.repo,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait(lambda: bool(raw_query(
            url, "SELECT 1 FROM v_deployment_step AS s JOIN v_deployment AS d "
                 "ON d.id = s.deployment_id WHERE d.status = 'in_progress' "
                 "AND s.action = 'deploy' AND s.instance = %s", (second.name,)))
            or apply.poll() is not None, timeout=60, step=0.01)
        assert apply.poll() is None, apply.communicate()[0].decode()
    finally:
        os.kill(apply.pid, signal.SIGKILL)
        apply.communicate(timeout=10)
    gated = invocation(first)
    killed_at = time.monotonic()

    resumed = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    print(f"resumed apply took {time.monotonic() - killed_at:.1f}s")
    assert set(greetings(fleet).values()) == {"v2"}, greetings(fleet)
    assert invocation(first) == gated  # batch 1 was not restarted
    newest = fleet.json("history", "api")[0]
    assert [i for a, i in steps(newest) if a == "deploy"] == [second.name], steps(newest)
