"""Sync windows through the real CLI and daemon: a change outside its window is shown as
deferred by `diff` (exit 1), left undeployed by `apply` with the reason in `status`, deployed by
`apply --ignore-windows`; the daemon deploys it when the window opens, without waiting for its
poll interval."""

from __future__ import annotations

import http.client
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for

pytestmark = pytest.mark.timeout(180)


def deny_now_until(end: datetime) -> str:
    """A deny window active now that ends at ``end`` (after now, within the hour): it started
    at the top of the current UTC minute."""
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    seconds = math.ceil((end - start).total_seconds())
    return (f'\n  syncWindows:\n    - {{kind: deny, schedule: "{start.minute} {start.hour} * * *",'
            f" duration: {seconds}s}}\n")


def serving(port: int) -> bool:
    try:
        return http_get(port, timeout=1.0)[0] == 200
    except (OSError, http.client.HTTPException):  # refused, or cut off by the process going away
        return False


def ready(listen: int) -> bool:
    try:
        return http_get(listen, "/readyz", timeout=1.0)[0] == 200
    except OSError:
        return False


def api_status(fleet: Fleet) -> dict[str, object]:
    """The status row of Service api ({} until the daemon has recorded it)."""
    return next((r for r in fleet.json("status")["resources"] if r["name"] == "api"), {})


def test_diff_apply_status_and_override(fleet: Fleet) -> None:
    port = free_port()
    window = deny_now_until(datetime.now(UTC) + timedelta(minutes=30))
    fleet.write("api.yaml", service_yaml("api", port) + window)
    fleet.commit("api, in a deny window")

    diff = fleet.cli("diff", *fleet.repo_args())
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "> default/Service/api  (deferred: outside sync window: next opens " in diff.stdout
    assert "UTC is active)" in diff.stdout
    assert "+ default/Target/local" in diff.stdout  # the Target has no window: not deferred
    plan = fleet.json("diff", *fleet.repo_args())
    item = next(r for r in plan["resources"] if r["name"] == "api")
    assert item["action"] == "deferred"
    assert item["changes"]  # what would change is still shown
    opens_at = datetime.fromisoformat(item["opensAt"])
    assert timedelta(minutes=29) < opens_at - datetime.now(UTC) <= timedelta(minutes=31)
    assert f"next opens {opens_at.isoformat()} (deny " in item["reason"]

    apply = fleet.cli("apply", *fleet.repo_args())
    assert apply.returncode == 0, apply.stdout + apply.stderr  # deferred is not a failure
    assert "default/Service/api: deferred — outside sync window" in apply.stdout
    assert not serving(port)
    api = api_status(fleet)
    assert api["sync"] == "OutOfSync" and api["appliedRevision"] is None
    assert str(api["lastError"]).startswith("outside sync window: next opens ")
    status = fleet.cli("status")
    assert status.returncode == 1
    assert "outside sync window: next opens" in status.stdout
    assert fleet.json("history", "api") == []

    forced = fleet.cli("apply", *fleet.repo_args(), "--ignore-windows")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert serving(port)
    api = api_status(fleet)
    assert (api["sync"], api["lastResult"], api["lastError"]) == ("Synced", "succeeded", None)
    deployments = fleet.json("history", "api")
    assert [(d["status"], d["trigger"]) for d in deployments] == [("succeeded", "apply")]
    assert fleet.cli("diff", *fleet.repo_args()).returncode == 0  # applied: nothing deferred


def test_daemon_applies_when_the_window_opens_not_at_the_next_poll(fleet: Fleet) -> None:
    port, listen = free_port(), free_port()
    fleet.commit("the Target only")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "text", "daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}",
         "--interval", "10m"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: ready(listen), timeout=60, step=0.2)
        # the commit is seen at once; its pass defers the Service until the window ends
        opens = datetime.now(UTC) + timedelta(seconds=5)
        fleet.write("api.yaml", service_yaml("api", port) + deny_now_until(opens))
        fleet.commit("api, in a deny window ending in a few seconds")
        wait_for(lambda: str(api_status(fleet).get("lastError") or "").startswith(
            "outside sync window") or datetime.now(UTC) >= opens, timeout=30, step=0.1)
        if datetime.now(UTC) < opens - timedelta(seconds=0.5):
            assert not serving(port)
        wait_for(lambda: serving(port), timeout=40, step=0.1)
        served_at = datetime.now(UTC)
        assert served_at >= opens
        print(f"window opened -> serving: {(served_at - opens).total_seconds():.2f}s")
        # serving comes a moment before the gate records its verdict
        deployments = wait_for(lambda: [d for d in fleet.json("history", "api")
                                        if d["status"] != "in_progress"], timeout=30, step=0.1)
        assert [d["status"] for d in deployments] == ["succeeded"]
        assert "window" in deployments[0]["trigger"]  # a pass of its own, not the 10m poll
    finally:
        daemon.terminate()
        out, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, out
    assert "pass scheduled when one opens" in out  # the commit's pass did defer it
