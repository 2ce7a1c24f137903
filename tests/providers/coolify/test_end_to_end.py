"""The real CLI (`reconciler apply`, `status`, `history`) driving the fake Coolify.

The fake runs in this test's event loop, so the CLI is started with asyncio subprocesses.
Covers the engine/provider seams: revision reporting (no false drift), the rollback of a
failed commit to the last good document, and secrets kept out of the CLI's output and DB.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import ProviderContext, load_provider
from reconciler.spec.model import Resource, ResourceKey

from .conftest import ALL_ABILITIES
from .fake_coolify import FakeCoolify

pytestmark = pytest.mark.timeout(120)

GOOD = "a1b2c3d4e5f6" + "0" * 28
BAD = "deadbeef" + "0" * 32
SECRET = "e2e-secret-value-do-not-print-7f3a"


async def run(*argv: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Fleet:
    def __init__(self, tmp: Path, fake: FakeCoolify, token: str) -> None:
        self.repo = tmp / "config"
        self.state = tmp / "state"
        self.repo.mkdir()
        self.env = {
            **os.environ,
            "COOLIFY_E2E_TOKEN": token,
            "API_KEY_E2E": SECRET,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
        }
        self.fake = fake

    async def git(self, *args: str) -> str:
        code, out, err = await run("git", "-C", str(self.repo), *args, cwd=self.repo, env=self.env)
        assert code == 0, err
        return out.strip()

    def write(self, name: str, text: str) -> None:
        (self.repo / name).write_text(text)

    async def commit(self, message: str) -> None:
        await self.git("add", "-A")
        await self.git("commit", "-q", "-m", message)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "reconciler", "--state-dir", str(self.state)]
        return await run(*argv, "--log-format", "json", *args, cwd=self.repo, env=self.env)

    async def cli_json(self, *args: str) -> Any:
        _, out, err = await self.cli(*args, "-o", "json")
        assert out, err
        return json.loads(out)


def target_yaml(url: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: coolify
spec:
  provider: coolify
  url: {url}
  token: {{env: COOLIFY_E2E_TOKEN}}
  pollInterval: 50ms
  pollMaxInterval: 200ms
  deployTimeout: 30s
  retry: {{attempts: 3, backoff: 50ms}}
"""


def service_yaml(uuid: str, sha: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
spec:
  target: coolify
  coolify:
    uuid: {uuid}
    gitCommitSha: "{sha}"
    autoDeploy: false
    envs:
      API_KEY: {{env: API_KEY_E2E}}
      MODE: production
"""


async def observe(fleet: Fleet, uuid: str) -> list[Any]:
    target = Resource(
        ResourceKey("default", "Target", "coolify"),
        {},
        {"provider": "coolify", "url": fleet.fake.url, "token": {"env": "COOLIFY_E2E_TOKEN"}},
        "target.yaml",
    )
    service = Resource(
        ResourceKey("default", "Service", "api"), {}, {"coolify": {"uuid": uuid}}, "api.yaml"
    )
    provider = load_provider(target, ProviderContext(state_dir=fleet.state))
    try:
        return await provider.observe(service)
    finally:
        await provider.close()


@pytest.fixture
async def fleet(fake: FakeCoolify, tmp_path: Path) -> Fleet:
    f = Fleet(tmp_path, fake, fake.add_token(ALL_ABILITIES))
    await f.git("init", "-q", "-b", "main")
    f.write("target.yaml", target_yaml(fake.url))
    return f


async def test_apply_deploys_then_rolls_back_a_failed_commit(
    fleet: Fleet, fake: FakeCoolify, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COOLIFY_E2E_TOKEN", fleet.env["COOLIFY_E2E_TOKEN"])
    app = fake.add_app("api", fqdn="https://api.example.test")
    fake.fail_commits.add(BAD)
    fleet.write("api.yaml", service_yaml(app.uuid, GOOD))
    await fleet.commit("api at good commit")

    code, out, err = await fleet.cli("validate", str(fleet.repo))
    assert code == 0, out + err

    code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
    assert code == 0, out + err
    assert app.git_commit_sha == GOOD and app.running_commit == GOOD
    assert app.auto_deploy is False

    # Observed revision == applied revision: status is in sync, nothing is redeployed.
    status = await fleet.cli_json("status")
    [api] = [r for r in status["resources"] if r["name"] == "api"]
    assert api["lastResult"] == "succeeded", api
    assert (api["sync"], api["health"]) == ("Synced", "Healthy")
    good_revision = api["appliedRevision"]
    assert {e.key: e.value for e in app.envs} == {
        "API_KEY": SECRET,
        "MODE": "production",
        "FRAISIER_REVISION": good_revision,
        "FRAISIER_SERVICE": "api",
        "FRAISIER_ENVIRONMENT": "default",
    }
    # What the daemon's drift check compares: observe() reports the applied revision.
    [state] = await observe(fleet, app.uuid)
    assert state.revision == api["appliedRevision"]
    code, out, err = await fleet.cli("diff", "--repo", str(fleet.repo))
    assert code == 0, out + err

    # A commit that fails to build: Coolify marks the deployment failed, the engine rolls
    # back to the last good document, which pins the good commit again.
    fleet.write("api.yaml", service_yaml(app.uuid, BAD))
    await fleet.commit("api at broken commit")
    code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
    assert code == 1, out + err
    assert app.git_commit_sha == GOOD
    assert app.running_commit == GOOD
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [
        (GOOD, "finished"),
        (BAD, "failed"),
        (GOOD, "finished"),
    ]
    history = await fleet.cli_json("history", "api")
    assert [d["status"] for d in history[:2]] == ["rolled_back", "succeeded"]
    # The rollback's deployment runs with the good document's revision again.
    rolled_back = fake.history(app.uuid)[0]
    assert rolled_back.envs and rolled_back.envs["FRAISIER_REVISION"] == good_revision
    assert {e.key: e.value for e in app.envs}["FRAISIER_REVISION"] == good_revision
    # observe() reports the good revision back (the FRAISIER_ envs are not compared).
    [state] = await observe(fleet, app.uuid)
    assert state.revision == good_revision

    # The secret is nowhere in what the CLI printed nor in the state database.
    assert SECRET not in out + err
    for db in fleet.state.rglob("*.db"):
        dump = "\n".join(sqlite3.connect(db).iterdump())
        assert SECRET not in dump
    for path in fleet.state.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".txt"):
            assert SECRET not in path.read_text(errors="replace")
