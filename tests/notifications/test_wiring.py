"""The daemon's hooks: a real config repo (git), the real engine running a Job on the local host,
the daemon's pass function driven directly. A failed Job and a refused commit reach a loopback
JSON receiver through Apprise, each saying which commit (short SHA, subject, author); a daemon
that has not converged for --notify-stale-after says so once, and once when it converges; drift
found by the heal check (fake provider) is told, and its heal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.loop import Daemon
from reconciler.notifications.destinations import operator_destinations
from reconciler.notifications.settings import DeliveryLimits, NotifySettings
from reconciler.notifications.sink import Notifications
from reconciler.notifications.wiring import start_notifications
from reconciler.providers import registry
from reconciler.rollout.engine import Reconciler
from reconciler.rollout.outcome import ReconcileResult
from reconciler.source.git import GitSource
from reconciler.spec.model import DesiredState
from reconciler.spec.validate import reload_schemas
from reconciler.state.sqlite import SQLiteStore
from tests.notifications.receivers import Receiver
from tests.providers.fake import World, fake_info

pytestmark = pytest.mark.timeout(60)


def git(repo: Path, *args: str) -> str:
    who = {"NAME": "Ada Lovelace", "EMAIL": "ada@example.invalid"}
    env = {**os.environ, **{f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER")
                            for k, v in who.items()}}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


async def settle(n: Notifications) -> None:
    await asyncio.wait_for(n.intake.join(), 10)
    assert await n.deliveries.drain(10)


async def test_failed_job_and_refused_commit_reach_the_operator_destination(
        tmp_path: Path) -> None:
    receiver = await Receiver().start()
    work, state = tmp_path / "work", tmp_path / "state"
    (work / "app").mkdir(parents=True)
    (work / "app" / "README").write_text("release\n")
    (work / "target.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {tmp_path / 'root'}}}
""")
    (work / "job.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Job
metadata: {{name: migrate}}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, -c, "import sys; print('schema v7 missing'); sys.exit(3)"]
  timeout: 30s
""")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "migrate to schema v7")
    first = git(work, "rev-parse", "HEAD")
    state.mkdir()
    store = SQLiteStore(state / "fraisier.db")
    await store.migrate()
    source = GitSource(str(work), state_dir=state)
    engine = Reconciler(store, state_dir=state, source=source)
    cfg = DaemonConfig(repo=str(work), ref=None, path="", listen_host="127.0.0.1",
                       listen_port=0, interval=3600, prune=False, state_dir=state,
                       db_url=store.url)
    daemon = Daemon(cfg, store, source, engine)
    settings = NotifySettings(urls=[f"json://127.0.0.1:{receiver.port}/ops"],
                              ui_url="https://fraisier.example", stale_after_s=None,
                              limits=DeliveryLimits(backoff_s=0.05))
    notifications = start_notifications(daemon, settings, state)
    try:
        daemon.trigger("startup")
        await daemon.reconcile_once()
        await settle(notifications)
        [hit] = receiver.hits
        doc = hit.json()
        assert doc["type"] == "failure" and "1 FAILED in default" in doc["title"]
        message = doc["message"]
        assert f"commit {first[:7]} 'migrate to schema v7' by Ada Lovelace" in message
        assert "FAILED: default/Job/migrate on local" in message  # where: the host
        assert "https://fraisier.example/resources/default/Job/migrate" in message

        (work / "broken.yaml").write_text("apiVersion: fraisier.dev/v1\nkind: Service\n"
                                          "metadata: {name: x}\nspec: {nope: 1}\n")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", "add x")
        bad = git(work, "rev-parse", "HEAD")
        receiver.hits.clear()
        daemon.trigger("poll")
        await daemon.reconcile_once()
        await settle(notifications)
        refused = [h.json() for h in receiver.hits if "commit refused" in h.json()["title"]]
        assert len(refused) == 1, [h.json()["title"] for h in receiver.hits]
        assert f"{bad[:7]} 'add x' by Ada Lovelace" in refused[0]["message"]
        assert "broken.yaml" in refused[0]["message"]
        receiver.hits.clear()
        daemon.trigger("poll")  # the same refused commit again: told once
        await daemon.reconcile_once()
        await settle(notifications)
        assert not [h for h in receiver.hits if "commit refused" in h.json()["title"]]
    finally:
        await notifications.close()
        await engine.close()
        await store.close()
        await receiver.stop()


async def test_not_converging_is_told_once_and_so_is_converging_again(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    n = Notifications(operator_destinations([f"json://127.0.0.1:{receiver.port}/ops"]),
                      state_dir=tmp_path, stale_after_s=0.3,
                      last_error=lambda: "fetch failed: host unreachable")
    n.start()
    try:
        await asyncio.wait_for(receiver.arrived.wait(), 5)
        await asyncio.sleep(0.5)  # more checks: held back as repeats
        await settle(n)
        [stale] = receiver.hits
        assert "NOT CONVERGING" in stale.json()["title"]
        assert "fetch failed: host unreachable" in stale.json()["message"]
        receiver.hits.clear()
        n.pass_finished(ReconcileResult(commit="e" * 40), DesiredState({}))
        await settle(n)
        [back] = receiver.hits
        assert "converging again" in back.json()["title"] and back.json()["type"] == "success"
    finally:
        await n.close()
        await receiver.stop()


def test_a_notify_value_that_is_no_url_stops_the_daemon_before_it_starts(
        tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "daemon", "--repo",
                                      str(tmp_path), "--notify", "hooks.example/abc"])
    assert result.exit_code == 2
    assert "--notify" in result.output and "not an Apprise URL" in result.output


async def test_drift_found_by_the_heal_check_is_told_and_so_is_its_heal(
        tmp_path: Path) -> None:
    world = World()
    registry.register(fake_info(world))
    reload_schemas()
    receiver = await Receiver().start()
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    (work / "fleet.yaml").write_text("""apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: fleet}
spec: {provider: fake, instances: 2}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api}
spec: {target: fleet, command: [app], fake: {health: healthy}}
""")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "api")
    state.mkdir()
    store = SQLiteStore(state / "fraisier.db")
    await store.migrate()
    source = GitSource(str(work), state_dir=state)
    engine = Reconciler(store, state_dir=state, source=source)
    cfg = DaemonConfig(repo=str(work), ref=None, path="", listen_host="127.0.0.1",
                       listen_port=0, interval=3600, prune=False, state_dir=state,
                       db_url=store.url)
    daemon = Daemon(cfg, store, source, engine)
    notifications = start_notifications(daemon, NotifySettings(
        urls=[f"json://127.0.0.1:{receiver.port}/ops"], stale_after_s=None), state)
    heal: asyncio.Task[None] | None = None
    try:
        daemon.trigger("startup")
        await daemon.reconcile_once()
        world.kill("api-2")
        daemon.passed.set()
        heal = asyncio.create_task(daemon.self_heal.run())  # its first check runs at once
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        [drift] = [h.json() for h in receiver.hits]
        assert "drift detected" in drift["title"] and "default/Service/api" in drift["message"]
        assert "api-2" in drift["message"] and drift["type"] == "warning"
        receiver.hits.clear()
        await daemon.reconcile_once()  # the heal pass the check triggered
        await settle(notifications)
        [healed] = [h.json() for h in receiver.hits]
        assert "drift healed" in healed["title"] and healed["type"] == "success"
    finally:
        if heal is not None:
            heal.cancel()
            await asyncio.gather(heal, return_exceptions=True)
        await notifications.close()
        await engine.close()
        await store.close()
        await receiver.stop()
        registry.unregister("fake")
        reload_schemas()
