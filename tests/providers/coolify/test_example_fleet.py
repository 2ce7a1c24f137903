"""examples/fleet/coolify.yaml, driven by the real CLI against the contract-validating fake.

The example is copied as it is into a throw-away git repository; the only edit is the Target's
placeholder `url`, pointed at the fake's loopback address. The fake runs in this test's event
loop, so the CLI runs as asyncio subprocesses. Covered: `diff -e coolify-demo` shows the Coolify
resources, `apply` converges (commit pinned, envs synced, the secret kept out of every output),
a failing commit is rolled back to the last good one (checked in the fake's state), a commit
changed by hand in "the Coolify UI" is reported as drift by the daemon and healed by it, and
the API-disabled and persistent-500 faults end in honest, actionable failures.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import free_port

from .conftest import ALL_ABILITIES
from .fake_coolify import FakeApp, FakeCoolify

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "fleet"
ENVIRONMENT = "coolify-demo"
PLACEHOLDER_URL = "https://coolify.example.invalid"
APP_NAME = "shop-api"
SECRET = "postgres://shop:example-fleet-secret-5b9e@db.internal/shop"
BAD = "badc0ffee" + "0" * 31
BY_HAND = "c0ffee11" + "1" * 32


def example_service() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((EXAMPLE / "coolify.yaml").read_text()))
    [service] = [d for d in docs if d["kind"] == "Service"]
    return service


GOOD = example_service()["spec"]["coolify"]["gitCommitSha"]


async def run(*argv: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class ExampleFleet:
    """A git repo holding a copy of examples/fleet, and the CLI pointed at it."""

    def __init__(self, tmp: Path, fake: FakeCoolify, token: str) -> None:
        self.repo = tmp / "config"
        self.state = tmp / "state"
        self.fake = fake
        self.env = {
            **os.environ,
            "COOLIFY_TOKEN": token,
            "SHOP_DATABASE_URL": SECRET,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
        }
        self.outputs: list[str] = []

    @property
    def example(self) -> Path:
        return self.repo / "fleet" / "coolify.yaml"

    async def setup(self) -> None:
        shutil.copytree(EXAMPLE, self.repo / "fleet")
        text = self.example.read_text()
        # Only the Target's url changes: everything else is tested as shipped.
        pointed, count = re.subn(
            rf"^(  url: ){re.escape(PLACEHOLDER_URL)}(?=\s)",
            rf"\g<1>{self.fake.url}",
            text,
            flags=re.M,
        )
        assert count == 1, "the example's Target url line moved; update this test"
        self.example.write_text(pointed)
        await self.git("init", "-q", "-b", "main")
        await self.commit("examples/fleet as shipped, Coolify url pointed at the fake")

    async def git(self, *args: str) -> str:
        code, out, err = await run("git", "-C", str(self.repo), *args, cwd=self.repo, env=self.env)
        assert code == 0, err
        return out.strip()

    async def commit(self, message: str) -> None:
        await self.git("add", "-A")
        await self.git("commit", "-q", "-m", message)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "reconciler", "--state-dir", str(self.state)]
        code, out, err = await run(
            *argv, "--log-format", "json", *args, cwd=self.repo, env=self.env
        )
        self.outputs.append(out + err)
        return code, out, err

    async def cli_json(self, *args: str) -> Any:
        _, out, err = await self.cli(*args, "-o", "json")
        assert out, err
        return json.loads(out)

    def repo_args(self) -> list[str]:
        return ["--repo", str(self.repo), "--path", "fleet", "-e", ENVIRONMENT]

    async def status_of(self, name: str) -> dict[str, Any]:
        status = await self.cli_json("status")
        [row] = [r for r in status["resources"] if r["name"] == name]
        return dict(row)

    def assert_secret_kept_out(self) -> None:
        for text in self.outputs:
            assert SECRET not in text
        for db in self.state.rglob("*.db"):
            connection = sqlite3.connect(db)
            try:
                assert SECRET not in "\n".join(connection.iterdump())
            finally:
                connection.close()
        for path in self.state.rglob("*"):
            if path.is_file() and path.suffix != ".db":
                assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture
async def fleet(fake: FakeCoolify, tmp_path: Path) -> ExampleFleet:
    example = ExampleFleet(tmp_path, fake, fake.add_token(ALL_ABILITIES))
    await example.setup()
    return example


def shop_app(fake: FakeCoolify) -> FakeApp:
    # Another application first: the lookup by name must pick the right one.
    fake.add_app("shop-worker", fqdn="https://worker.example.invalid")
    return fake.add_app(APP_NAME, fqdn="https://shop.example.invalid", status="running:healthy")


async def converge(fleet: ExampleFleet, app: FakeApp) -> None:
    code, out, err = await fleet.cli("apply", *fleet.repo_args())
    assert code == 0, out + err
    assert (app.git_commit_sha, app.running_commit) == (GOOD, GOOD)


async def test_example_diff_then_apply_converges_and_rolls_back_a_failed_commit(
    fleet: ExampleFleet, fake: FakeCoolify
) -> None:
    app = shop_app(fake)
    fake.fail_commits.add(BAD)

    # diff shows the Coolify Target and Service, and only the coolify-demo environment.
    code, out, err = await fleet.cli("diff", *fleet.repo_args())
    assert code == 1, out + err
    assert f"{ENVIRONMENT}/Target/coolify" in out and f"{ENVIRONMENT}/Service/shop" in out
    plan = await fleet.cli_json("diff", *fleet.repo_args())
    assert plan["inSync"] is False
    assert {(r["resource"], r["action"]) for r in plan["resources"]} == {
        (f"{ENVIRONMENT}/Target/coolify", "create"),
        (f"{ENVIRONMENT}/Service/shop", "create"),
    }
    [shop_plan] = [r for r in plan["resources"] if r["kind"] == "Service"]
    [spec_change] = [c for c in shop_plan["changes"] if c["path"] == "spec"]
    assert spec_change["new"]["coolify"]["gitCommitSha"] == GOOD
    # The plan shows the secret's reference, never its value.
    assert spec_change["new"]["coolify"]["envs"]["DATABASE_URL"] == {"env": "SHOP_DATABASE_URL"}
    assert fake.calls("PATCH", "") == 0 and fake.calls("POST", "") == 0  # diff changes nothing

    await converge(fleet, app)
    assert app.auto_deploy is False
    status = await fleet.cli_json("status")
    # Only coolify-demo was reconciled: the bare-metal and compose demos were not touched.
    assert {r["environment"] for r in status["resources"]} == {ENVIRONMENT}
    [shop] = [r for r in status["resources"] if r["name"] == "shop"]
    assert (shop["sync"], shop["health"], shop["lastResult"]) == ("Synced", "Healthy", "succeeded")
    good_revision = shop["appliedRevision"]
    assert {e.key: e.value for e in app.envs} == {
        "APP_ENV": "production",
        "DATABASE_URL": SECRET,
        "FRAISIER_REVISION": good_revision,
        "FRAISIER_SERVICE": "shop",
        "FRAISIER_ENVIRONMENT": ENVIRONMENT,
    }
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [(GOOD, "finished")]
    code, out, err = await fleet.cli("diff", *fleet.repo_args())
    assert code == 0, out + err

    # A commit whose Coolify build fails: the deployment ends `failed`, the engine rolls back
    # to the last good document, which pins the good commit again.
    fleet.example.write_text(fleet.example.read_text().replace(GOOD, BAD))
    await fleet.commit("shop at a commit that does not build")
    code, out, err = await fleet.cli("apply", *fleet.repo_args())
    assert code == 1, out + err
    assert "rolled_back" in out, out
    assert (app.git_commit_sha, app.running_commit) == (GOOD, GOOD)
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [
        (GOOD, "finished"),
        (BAD, "failed"),
        (GOOD, "finished"),
    ]
    # Each deployment ran with its own revision in FRAISIER_REVISION; the rollback's is the
    # good document's again.
    rolled_back, failed, first = fake.history(app.uuid)
    assert first.envs and rolled_back.envs and failed.envs
    assert first.envs["FRAISIER_REVISION"] == rolled_back.envs["FRAISIER_REVISION"]
    assert rolled_back.envs["FRAISIER_REVISION"] == good_revision
    assert failed.envs["FRAISIER_REVISION"] not in ("", good_revision)
    assert {e.key: e.value for e in app.envs}["FRAISIER_REVISION"] == good_revision
    history = await fleet.cli_json("history", "shop")
    assert [d["status"] for d in history[:2]] == ["rolled_back", "succeeded"]
    assert "ended failed" in (history[0]["error"] or ""), history[0]
    shop = await fleet.status_of("shop")
    assert shop["lastResult"] == "rolled_back"

    # The rolled-back commit is not tried again by the next pass: it waits for a new commit.
    await fleet.cli("apply", *fleet.repo_args())
    assert len(fake.history(app.uuid)) == 3
    assert app.git_commit_sha == GOOD

    fleet.assert_secret_kept_out()


async def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    seen: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; seen: {seen()}"
        await asyncio.sleep(0.1)


class Daemon:
    """`reconciler daemon` as a subprocess whose JSON log lines are collected as they come."""

    def __init__(self, fleet: ExampleFleet, *flags: str) -> None:
        self.fleet = fleet
        self.flags = flags
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Daemon:
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "--state-dir",
            str(self.fleet.state),
            "--log-format",
            "json",
            "daemon",
            *self.fleet.repo_args(),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--interval",
            "1s",
            *self.flags,
        ]
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.fleet.repo,
            env=self.fleet.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.fleet.outputs.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def running(self, predicate: Callable[[], bool]) -> Callable[[], bool]:
        """``predicate``, failing at once with what the daemon said if it has exited: not a
        wait to the timeout for lines a dead process will never write."""

        def check() -> bool:
            if predicate():
                return True
            assert self.proc is not None
            assert self.proc.returncode is None, (
                f"the daemon exited with {self.proc.returncode}: {self.fleet.outputs[-3:]}")
            return False

        return check

    def messages(self) -> list[str]:
        return [f"{line.get('msg')} {line.get('error') or ''}" for line in self.lines]

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("msg") == message]

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None and self._reader is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        finally:
            await asyncio.wait_for(self._reader, timeout=5)


async def test_commit_changed_in_coolify_by_hand_is_drift_for_the_daemon(
    fleet: ExampleFleet, fake: FakeCoolify
) -> None:
    app = shop_app(fake)
    await converge(fleet, app)

    # Someone pins another commit in the Coolify UI and redeploys it.
    app.git_commit_sha = BY_HAND
    fake.queue(app)
    await wait_for(lambda: app.running_commit == BY_HAND, 10, "the hand-made deployment")

    # Report only: the daemon sees the drift, marks the Service OutOfSync, touches nothing.
    async with Daemon(fleet, "--no-heal") as daemon:
        await wait_for(daemon.running(lambda: bool(daemon.logged("drift detected"))), 30,
                       "drift detected", daemon.messages)
        [first, *_] = daemon.logged("drift detected")
        assert first["resource"] == f"{ENVIRONMENT}/Service/shop", first
        assert first["detail"].startswith(f"{app.uuid}: coolify status running"), first
    shop = await fleet.status_of("shop")
    assert shop["sync"] == "OutOfSync", shop
    assert app.git_commit_sha == BY_HAND
    assert len(fake.history(app.uuid)) == 2

    # Self-heal: the daemon puts the pinned commit back and redeploys it.
    async with Daemon(fleet) as daemon:
        await wait_for(
            daemon.running(lambda: app.git_commit_sha == GOOD and app.running_commit == GOOD),
            30,
            "the daemon to heal the drift",
        )
        await wait_for(lambda: bool(daemon.logged("drift detected")), 5, "the drift log line")
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [
        (GOOD, "finished"),
        (BY_HAND, "finished"),
        (GOOD, "finished"),
    ]
    history = await fleet.cli_json("history", "shop")
    assert "drift" in history[0]["trigger"] and history[0]["status"] == "succeeded", history[0]
    shop = await fleet.status_of("shop")
    assert (shop["sync"], shop["lastResult"]) == ("Synced", "succeeded"), shop
    fleet.assert_secret_kept_out()


async def test_api_disabled_and_persistent_5xx_fail_the_apply_honestly(
    fleet: ExampleFleet, fake: FakeCoolify
) -> None:
    app = shop_app(fake)

    fake.api_enabled = False
    code, out, err = await fleet.cli("apply", *fleet.repo_args())
    assert code == 1, out + err
    assert "the Coolify API is disabled on" in out and "API is disabled." in out, out + err
    assert fake.history(app.uuid) == [] and app.git_commit_sha == "HEAD"
    shop = await fleet.status_of("shop")
    assert shop["lastResult"] == "failed" and "API is disabled" in (shop["lastError"] or ""), shop

    fake.api_enabled = True
    fake.inject_5xx.extend([("/applications", 500)] * 50)
    lookups = fake.calls("GET", "/applications")
    started = time.monotonic()
    code, out, err = await fleet.cli("apply", *fleet.repo_args())
    assert code == 1, out + err
    assert time.monotonic() - started < 30  # bounded retries (example: 4 tries, 500ms backoff)
    # The example's retry.attempts is 4: four tries, then the failure says what happened.
    assert "GET /applications with HTTP 500 4 time(s): Server Error" in out, out + err
    assert fake.calls("GET", "/applications") - lookups == 4
    assert fake.history(app.uuid) == [] and app.git_commit_sha == "HEAD"

    # Coolify answers again: the next pass converges.
    fake.inject_5xx.clear()
    await converge(fleet, app)
    fleet.assert_secret_kept_out()
