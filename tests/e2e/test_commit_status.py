"""Commit statuses end to end: `reconciler apply` on a real bare_metal fleet (local host) with
--commit-status for GitHub, GitLab, Gitea and Bitbucket fakes that refuse anything their
published API description does not allow. Per host, for context fraisier/default:
a good commit goes pending -> success, a commit whose health gate fails pending -> failure,
a commit a sync window holds stays pending "deferred by sync window"."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Fleet, free_port, service_yaml, wait_for
from tests.e2e.test_sync_windows import deny_now_until, ready
from tests.source.commit_status_fakes import FakeHosts

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fakes() -> Iterator[FakeHosts]:
    with FakeHosts() as hosts:
        yield hosts
        for fake in hosts.hosts.values():
            assert fake.violations == [], fake.violations


def apply(fleet: Fleet, fakes: FakeHosts) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
           "--log-format", "json", "apply", *fleet.repo_args()]
    for flag in fakes.flags():
        cmd += ["--commit-status", flag]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=fleet.repo,
                          env={**os.environ, **fakes.env()})


def test_good_failed_and_deferred_commits_on_four_hosts(fleet: Fleet, fakes: FakeHosts) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    good = fleet.commit("api one")
    first = apply(fleet, fakes)
    assert first.returncode == 0, first.stdout + first.stderr

    fleet.write("api.yaml", service_yaml("api", port, greeting="two", fail=True))
    bad = fleet.commit("api two, health fails")
    second = apply(fleet, fakes)
    assert second.returncode == 1, second.stdout + second.stderr

    window = deny_now_until(datetime.now(UTC) + timedelta(minutes=30))
    fleet.write("api.yaml", service_yaml("api", port, greeting="three") + window)
    held = fleet.commit("api three, in a deny window")
    third = apply(fleet, fakes)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "deferred" in third.stdout

    for name, fake in fakes.hosts.items():
        ok = fake.transitions(good, "fraisier/default")
        assert [s for s, _ in ok] == ["pending", "success"], (name, ok)
        assert ok[0][1] == "rollout of 2 resource(s) started", (name, ok)
        failed = fake.transitions(bad, "fraisier/default")
        assert [s for s, _ in failed] == ["pending", "failure"], (name, failed)
        assert "default/Service/api: rolled_back (FR" in failed[1][1], (name, failed)
        assert "http" not in failed[1][1]  # no error text (URLs, hosts) on a commit page
        deferred = fake.transitions(held, "fraisier/default")
        assert [s for s, _ in deferred] == ["pending"], (name, deferred)
        assert deferred[0][1].startswith("deferred by sync window: outside sync window"), name
        assert len(fake.statuses) == 3, (name, fake.statuses.keys())  # nothing else was set
    # The host's own vocabulary went over the wire.
    bitbucket = fakes.hosts["bitbucket"].statuses[(bad, "fraisier/default")]
    assert [t.raw_state for t in bitbucket] == ["INPROGRESS", "FAILED"]
    gitlab = fakes.hosts["gitlab"].statuses[(bad, "fraisier/default")]
    assert [t.raw_state for t in gitlab] == ["pending", "failed"]
    # Tokens never reach the output.
    for proc in (first, second, third):
        for token in fakes.env().values():
            assert token not in proc.stdout + proc.stderr


def test_bad_commit_status_values_are_usage_errors(fleet: Fleet) -> None:
    fleet.commit("just the target")
    for value, why in [("github:acme,token=env:X", "REPO must be OWNER/NAME"),
                       ("github:acme/config,token=env:FRAISIER_TEST_UNSET",
                        "env:FRAISIER_TEST_UNSET is not set")]:
        proc = fleet.cli("apply", *fleet.repo_args(), "--commit-status", value)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--commit-status" in proc.stderr and why in proc.stderr, proc.stderr
    assert fleet.json("status")["resources"] == []  # nothing was applied


def test_daemon_reports_a_deferred_commit_then_its_release(fleet: Fleet,
                                                          fakes: FakeHosts) -> None:
    """The daemon: a commit held by a window is pending "deferred by sync window" (once, not at
    every pass), then pending "rollout started" and success when the window opens."""
    port, listen = free_port(), free_port()
    fleet.commit("the Target only")
    cmd = [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
           "text", "daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}",
           "--interval", "1s"]
    for flag in fakes.flags():
        cmd += ["--commit-status", flag]
    daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **fakes.env()})
    try:
        wait_for(lambda: ready(listen), timeout=60, step=0.2)
        opens = datetime.now(UTC) + timedelta(seconds=6)
        fleet.write("api.yaml", service_yaml("api", port) + deny_now_until(opens))
        held = fleet.commit("api, in a deny window ending in a few seconds")

        def states(name: str) -> list[str]:
            return [s for s, _ in fakes.hosts[name].transitions(held, "fraisier/default")]

        wait_for(lambda: all(states(n)[-1:] == ["success"] for n in fakes.hosts),
                 timeout=60, step=0.2)
    finally:
        daemon.terminate()
        out, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, out
    for name, fake in fakes.hosts.items():
        seen = fake.transitions(held, "fraisier/default")
        assert [s for s, _ in seen] == ["pending", "pending", "success"], (name, seen)
        assert seen[0][1].startswith("deferred by sync window: "), (name, seen)
        assert seen[1][1] == "rollout of 1 resource(s) started", (name, seen)
    for token in fakes.env().values():
        assert token not in out
