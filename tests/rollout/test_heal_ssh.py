"""Self-heal per instance on real systemd+sshd test hosts, through `reconciler apply` (which
observes applied Services first and heals what drifted, as the daemon's heal pass does).

- One unit stopped on one host: only that host is redeployed; the healthy hosts keep the very
  same process (systemd InvocationID unchanged), so no two hosts are ever down together.
- A blocked Service (its newest revision was rolled back): a crashed instance is restarted on
  the blocked-at (applied) revision, and `diff --live` shows the crash beside "blocked".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.rollout.fleets import ssh_fleet
from tests.rollout.test_rolling_ssh import APP, greetings, service, steps

pytestmark = [pytest.mark.integration]
UNIT = "fraisier-default_api.service"
ROLLING = """
    type: rolling
    maxParallel: 1"""


def invocation(host: Any) -> str:
    return host.sh(f"systemctl show -p InvocationID --value {UNIT}").strip()


def active(host: Any) -> str:
    return host.sh(f"systemctl show -p ActiveState --value {UNIT}").strip()


def deployed(tmp_path: Path, hosts: Any) -> tuple[Fleet, dict[str, int]]:
    fleet, ports = ssh_fleet(tmp_path, hosts, APP)
    fleet.ports = ports  # type: ignore[attr-defined]
    fleet.write("api.yaml", service("v1", ROLLING))
    fleet.commit("v1")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(greetings(fleet).values()) == {"v1"}
    return fleet, ports


@pytest.mark.timeout(300)
def test_heal_of_one_stopped_unit_restarts_only_that_instance(tmp_path: Path,
                                                              ssh_hosts: Any) -> None:
    hosts = list(ssh_hosts)
    fleet, _ = deployed(tmp_path, hosts)
    sick = hosts[1]
    before = {h.name: invocation(h) for h in hosts}
    sick.sh(f"systemctl stop {UNIT}")
    assert active(sick) == "inactive"

    healed = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    after = {h.name: invocation(h) for h in hosts}
    restarted = sorted(n for n in after if after[n] != before[n])
    # The figure of docs/reliability.md: 1 of N instances restarted.
    assert restarted == [sick.name], (restarted, len(hosts))
    assert set(greetings(fleet).values()) == {"v1"}
    newest = fleet.json("history", "api")[0]
    assert newest["strategy"] == "heal", newest
    assert [i for a, i in steps(newest) if a == "deploy"] == [sick.name], steps(newest)
    assert newest["status"] == "succeeded"
    live = fleet.cli("diff", *fleet.repo_args(), "--live", timeout=60)
    assert live.returncode == 0, live.stdout + live.stderr


@pytest.mark.timeout(300)
def test_blocked_service_is_kept_running_on_its_applied_revision(tmp_path: Path,
                                                                 ssh_hosts: Any) -> None:
    hosts = list(ssh_hosts)[:2]
    fleet, _ = deployed(tmp_path, hosts)
    for h in hosts:  # v2 fails its health check everywhere: rolled back, then blocked
        h.run(["touch", "/etc/fraisier-fail-v2"])
    fleet.write("api.yaml", service("v2", ROLLING))
    fleet.commit("v2")
    bad = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert set(greetings(fleet).values()) == {"v1"}
    crashed = hosts[0]
    healthy_before = invocation(hosts[1])
    crashed.sh(f"systemctl stop {UNIT}")  # the v1 process of a blocked Service dies

    live = fleet.cli("diff", *fleet.repo_args(), "--live", timeout=60)
    assert live.returncode == 1, live.stdout + live.stderr
    assert "blocked" in live.stdout, live.stdout
    assert "live state differs" in live.stdout and crashed.name in live.stdout, live.stdout

    healed = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert healed.returncode == 1, healed.stdout + healed.stderr  # still blocked: v2 waits
    assert "blocked" in healed.stdout, healed.stdout
    assert active(crashed) == "active"
    assert set(greetings(fleet).values()) == {"v1"}, greetings(fleet)
    assert invocation(hosts[1]) == healthy_before
    newest = fleet.json("history", "api")[0]
    assert newest["strategy"] == "heal" and newest["status"] == "succeeded", newest
    assert [i for a, i in steps(newest) if a == "deploy"] == [crashed.name]
    # healed: `diff --live` is back to "blocked" alone, no drift
    again = fleet.cli("diff", *fleet.repo_args(), "--live", timeout=60)
    assert "live state differs" not in again.stdout, again.stdout
