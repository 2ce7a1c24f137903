"""The real CLI (`reconciler apply`, `status`, `history`, `logs`) driving real compose projects.

Covers the engine/provider seams: the observed revision equals the applied one (no false drift),
an image update, the rollback of a broken commit to the last good document (the volume and the
served version survive), a Job run on apply, and secrets kept out of output, DB and files.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import ProviderContext, load_provider
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import (
    _remove_environment,
    free_port,
    http_get,
    make_resource,
    make_target,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "compose-e2e-secret-4b1d"


async def run(*argv: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=100)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Fleet:
    def __init__(self, tmp: Path, infra: Infra, compose: list[str], images: dict[str, str]) -> None:
        self.repo = tmp / "config"
        self.state = tmp / "state"
        self.repo.mkdir()
        self.infra = infra
        self.compose = compose
        self.images = images
        self.environment = f"e{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.env = {
            **os.environ,
            "WEB_TOKEN": SECRET,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
        }

    async def git(self, *args: str) -> None:
        code, _, err = await run("git", "-C", str(self.repo), *args, cwd=self.repo, env=self.env)
        assert code == 0, err

    async def commit(self, files: dict[str, str], message: str) -> None:
        for name, text in files.items():
            (self.repo / name).write_text(text)
        await self.git("add", "-A")
        await self.git("commit", "-q", "-m", message)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "reconciler", "--state-dir", str(self.state)]
        return await run(*argv, "--log-format", "json", *args, cwd=self.repo, env=self.env)

    async def cli_json(self, *args: str) -> Any:
        _, out, err = await self.cli(*args, "-o", "json")
        assert out, err
        return json.loads(out)

    def header(self, kind: str, name: str) -> str:
        return (
            f"apiVersion: fraisier.dev/v1\nkind: {kind}\n"
            f"metadata:\n  name: {name}\n  environment: {self.environment}\n"
        )

    def target(self) -> str:
        return self.header("Target", "docker") + (
            "spec:\n  provider: compose\n  docker:\n"
            f"    host: {self.infra.docker_host}\n    composeCommand: {json.dumps(self.compose)}\n"
        )

    def web(self, image: str, command: str = "httpd") -> str:
        script = (
            "echo boot >> /data/boots && cp /www/index.html /data/version && echo ok > /data/ok"
            f" && exec {command} -f -p 127.0.0.1:{self.port} -h /data"
        )
        spec = {
            "target": "docker",
            "env": {"TOKEN": {"env": "WEB_TOKEN"}, "MODE": "e2e"},
            "health": {
                "http": {"url": f"http://{{host}}:{self.port}/ok", "expectStatus": 200},
                "interval": "200ms",
                "timeout": "1s",
                "failureThreshold": 3,
            },
            "compose": {
                "image": image,
                "pullPolicy": "never",
                "networkMode": "host",
                "command": ["/bin/sh", "-c", script],
                "volumes": ["data:/data"],
                "waitTimeout": "10s",
            },
        }
        return self.header("Service", "web") + "spec: " + json.dumps(spec) + "\n"

    def job(self) -> str:
        spec = {
            "target": "docker",
            "command": ["/bin/sh", "-c", "echo migrated with ${#TOKEN}-char token"],
            "env": {"TOKEN": {"env": "WEB_TOKEN"}},
            "timeout": "30s",
            "compose": {"image": self.images["v1"], "pullPolicy": "never", "networkMode": "host"},
        }
        return self.header("Job", "migrate") + "spec: " + json.dumps(spec) + "\n"


@pytest.fixture
async def fleet(
    tmp_path: Path, docker_engine: Infra, compose_cli: list[str], test_images: dict[str, str]
) -> AsyncIterator[Fleet]:
    f = Fleet(tmp_path, docker_engine, compose_cli, test_images)
    await f.git("init", "-q", "-b", "main")
    try:
        yield f
    finally:
        await asyncio.to_thread(_remove_environment, docker_engine, f.environment)


async def observed_revision(fleet: Fleet) -> str | None:
    target = make_target(
        fleet.environment, {"host": fleet.infra.docker_host, "composeCommand": fleet.compose}
    )
    provider = load_provider(target, ProviderContext(state_dir=fleet.state))
    try:
        web = make_resource(fleet.environment, "Service", "web", {"compose": {"image": "x"}})
        [state] = await provider.observe(web)
        return state.revision
    finally:
        await provider.close()


def resource_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    [entry] = [r for r in status["resources"] if r["name"] == name]
    return entry


async def test_apply_update_and_rollback_through_the_cli(fleet: Fleet) -> None:
    await fleet.commit(
        {"target.yaml": fleet.target(), "web.yaml": fleet.web(fleet.images["v1"]),
         "job.yaml": fleet.job()},
        "web v1 + migrate",
    )  # fmt: skip
    code, out, err = await fleet.cli("validate", str(fleet.repo))
    assert code == 0, out + err

    code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
    assert code == 0, out + err
    assert await http_get(fleet.port, "/version") == (200, "version v1\n")
    status = await fleet.cli_json("status")
    web = resource_status(status, "web")
    assert (web["sync"], web["health"], web["lastResult"]) == ("Synced", "Healthy", "succeeded")
    # what the daemon's drift check compares
    assert await observed_revision(fleet) == web["appliedRevision"]
    assert resource_status(status, "migrate")["lastResult"] == "succeeded"
    code, out, err = await fleet.cli("diff", "--repo", str(fleet.repo))
    assert code == 0, out + err

    # Image update.
    await fleet.commit({"web.yaml": fleet.web(fleet.images["v2"])}, "web v2")
    code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
    assert code == 0, out + err
    assert await http_get(fleet.port, "/version") == (200, "version v2\n")
    good_revision = resource_status(await fleet.cli_json("status"), "web")["appliedRevision"]

    # A broken commit (the command does not exist): rolled back to v2, data kept.
    await fleet.commit({"web.yaml": fleet.web(fleet.images["v1"], "no-such-httpd")}, "broken")
    code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
    assert code == 1, out + err
    assert await http_get(fleet.port, "/version") == (200, "version v2\n")
    history = await fleet.cli_json("history", "web")
    assert [d["status"] for d in history[:3]] == ["rolled_back", "succeeded", "succeeded"]
    assert await observed_revision(fleet) == good_revision
    # v1, v2, the broken one's restarts, the rollback: all recorded in the one volume
    status_code, boots = await http_get(fleet.port, "/boots")
    assert status_code == 200 and boots.count("boot") >= 4

    code, out, err = await fleet.cli("logs", "migrate")
    assert code == 0 and f"migrated with {len(SECRET)}-char token" in out, out + err

    # The secret is nowhere in what the CLI printed, the state database or the state files.
    assert SECRET not in out + err
    for db in fleet.state.rglob("*.db"):
        assert SECRET not in "\n".join(sqlite3.connect(db).iterdump())
    for path in fleet.state.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".yaml", ".txt"):
            assert SECRET not in path.read_text(errors="replace"), path
