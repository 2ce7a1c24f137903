"""`reconciler apply` notifies: a real bare_metal fleet on the local host, `apply` run as a user
runs it (a new process). A good commit tells nobody (successes are not sent by default); a
commit whose health gate fails is rolled back, and before the process exits one message has
reached the operator's --notify destination and one the Notifier of the config repo (loopback
JSON receivers, Apprise json://)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import APP, Fleet, free_port, git, service_yaml
from tests.notifications.receivers import Receiver

pytestmark = pytest.mark.timeout(120)


async def _apply(fleet: Fleet, *args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
        "text", "apply", *fleet.repo_args(), *args, cwd=fleet.repo, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_rolled_back_apply_notifies_before_it_exits(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    repo, root = tmp_path / "config", tmp_path / "root"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(APP)
    git(repo, "init", "-q", "-b", "main")
    fleet = Fleet(repo, tmp_path / "state", root)
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {root}, keepReleases: 3}}
""")
    fleet.write("notifier.yaml", """apiVersion: fraisier.dev/v1
kind: Notifier
metadata: {name: team}
spec:
  url: {env: TEAM_HOOK}
""")
    port = free_port()
    env = {"TEAM_HOOK": f"json://127.0.0.1:{receiver.port}/team"}
    notify = ("--notify", f"json://127.0.0.1:{receiver.port}/ops")
    try:
        fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
        fleet.commit("api one")
        code, out = await _apply(fleet, *notify, env=env)
        assert code == 0, out
        assert receiver.hits == []

        fleet.write("api.yaml", service_yaml("api", port, greeting="two", fail=True))
        bad = fleet.commit("api two, health fails")
        code, out = await _apply(fleet, *notify, env=env)
        assert code == 1, out
        # delivered by the process before it exited: nothing is left to wait for
        assert sorted(h.path for h in receiver.hits) == ["/ops", "/team"], out
        for hit in receiver.hits:
            body = hit.json()
            assert body["type"] == "failure" and "ROLLED BACK" in body["title"], body
            assert "default/Service/api" in body["message"], body
            assert f"commit {bad[:7]}" in body["message"], body
            assert "api two, health fails" in body["message"], body
    finally:
        fleet.stop_all()
        await receiver.stop()
