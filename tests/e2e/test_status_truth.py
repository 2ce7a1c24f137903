"""`status` is what is known, with how fresh it is (issue 15, item 7): after a `git revert` of
a rolled-back commit the desired revision is recorded again, so the resource is Synced."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Fleet, free_port, git, service_yaml

pytestmark = pytest.mark.timeout(150)


def api_row(fleet: Fleet) -> dict[str, object]:
    status = fleet.json("status")
    return next(r for r in status["resources"] if r["name"] == "api")


def test_reverting_a_rolled_back_commit_is_synced_again(fleet: Fleet) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.commit("good")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    good = api_row(fleet)["appliedRevision"]

    fleet.write("api.yaml", service_yaml("api", port, greeting="two", fail=True))
    fleet.commit("bad")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 1
    assert api_row(fleet)["sync"] == "OutOfSync"

    git(fleet.repo, "revert", "--no-edit", "HEAD")
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 0, out.stdout + out.stderr
    row = api_row(fleet)
    assert row["desiredRevision"] == row["appliedRevision"] == good, row
    assert row["sync"] == "Synced", row
    status = fleet.cli("status")
    assert status.returncode == 0, status.stdout


def test_status_says_how_fresh_health_is_and_live_observes(fleet: Fleet) -> None:
    import time

    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port))
    fleet.commit("api")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    out = fleet.cli("status")
    assert out.returncode == 0, out.stdout
    line = next(x for x in out.stdout.splitlines() if "Service/api" in x)
    assert "Healthy, " in line and " ago" in line, line
    row = api_row(fleet)
    assert row["healthObservedAt"] and row["healthStale"] is False, row

    # Nobody has looked for longer than --max-age: unknown, not the database's "Healthy".
    time.sleep(1.2)
    stale = fleet.cli("status", "--max-age", "1s")
    assert stale.returncode == 1, stale.stdout
    assert "Unknown: not observed for " in stale.stdout, stale.stdout
    assert next(r for r in fleet.json("status", "--max-age", "1s")["resources"]
                if r["name"] == "api")["healthStale"] is True

    # The processes die and no daemon runs: --live looks, says so, and records it.
    fleet.stop_all()
    live = fleet.cli("status", "--live")
    assert live.returncode == 1, live.stdout + live.stderr
    line = next(x for x in live.stdout.splitlines() if "Service/api" in x)
    assert "Degraded, 0s ago" in line, line
    assert "live state differs" in line, line
    after = fleet.json("status")
    assert after["healthy"] is False
    assert api_row(fleet)["health"] == "Degraded"
