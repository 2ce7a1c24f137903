"""A webhook pass runs exactly at the pushed SHA: real git (a bare ``file://`` remote), the real
GitHub push sample parsed by the real parser, the real engine running a Job on the local host,
and a real SQLite store (pins.py, through the daemon that owns them). The daemon's pass function
is driven directly (no HTTP, no timers)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.loop import Daemon
from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource
from reconciler.source.webhooks import parse
from reconciler.spec.model import ResourceKey
from reconciler.state.sqlite import SQLiteStore
from tests.helpers import need

pytestmark = pytest.mark.timeout(90)

CONTRACTS = Path(os.environ.get("RECONCILER_CONTRACTS", Path(__file__).resolve().parents[3]
                                / "shared" / "contracts"))
SAMPLE = CONTRACTS / "webhooks" / "github" / "push.new-branch.json"
JOB = ResourceKey("default", "Job", "migrate")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


@dataclass
class Setup:
    work: Path
    daemon: Daemon
    store: SQLiteStore

    def commit(self, message: str, branch: str = "main") -> str:
        (self.work / "fleet" / "job.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Job
metadata: {{name: migrate}}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, -c, "print('{message}')"]
  timeout: 30s
""")
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        sha = git(self.work, "rev-parse", "HEAD")
        git(self.work, "push", "-q", "origin", branch)
        return sha

    async def push(self, after: str, before: str = "0" * 40, branch: str = "main") -> str:
        """The real GitHub sample re-pointed at ``after``, parsed as the HTTP route does."""
        doc: dict[str, Any] = copy.deepcopy(json.loads(SAMPLE.read_bytes()))
        doc.update(ref=f"refs/heads/{branch}", before=before, after=after, created=False,
                   deleted=False)
        delivery = str(uuid.uuid4())
        event = parse("github", {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery},
                      json.dumps(doc).encode())
        assert event.after == after and event.delivery_id == delivery
        await self.daemon.on_push(event)
        return delivery

    async def deployments(self) -> list[Any]:
        return await self.store.list_deployments(JOB)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    need(SAMPLE.is_file(), f"webhook sample {SAMPLE} not found")
    work, state = tmp_path / "work", tmp_path / "state"
    (work / "app").mkdir(parents=True)
    (work / "app" / "README").write_text("release content\n")
    (work / "fleet").mkdir()
    (work / "fleet" / "target.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {tmp_path / 'root'}}}
""")
    git(work, "init", "-q", "-b", "main")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    git(work, "remote", "add", "origin", str(remote))
    state.mkdir()
    store = SQLiteStore(state / "fraisier.db")
    await store.migrate()
    it = Setup(work, None, store)  # type: ignore[arg-type]
    it.commit("zero")
    source = GitSource(remote.as_uri(), ref="main", path="fleet", state_dir=state)
    engine = Reconciler(store, state_dir=state, source=source)
    cfg = DaemonConfig(repo=remote.as_uri(), ref="main", path="fleet", listen_host="127.0.0.1",
                       listen_port=0, interval=3600, prune=False, state_dir=state,
                       db_url=store.url, pin_retries=2, pin_backoff=0.05)
    it.daemon = Daemon(cfg, store, source, engine)
    it.daemon.trigger("startup")
    await it.daemon.reconcile_once()
    try:
        yield it
    finally:
        it.daemon.stop()
        await it.daemon.pins.drain()
        await engine.close()
        await store.close()


async def test_webhook_for_the_first_of_two_pushed_commits_runs_at_that_commit(
        setup: Setup) -> None:
    first = setup.commit("one")
    second = setup.commit("two")  # pushed too: the branch head is now `second`
    delivery = await setup.push(first)
    await setup.daemon.reconcile_once()
    newest = (await setup.deployments())[0]
    assert (newest.config_commit, newest.status) == (first, "succeeded")
    assert newest.trigger == f"webhook:github:{delivery}"
    assert setup.daemon.desired is not None and setup.daemon.desired.commit == first
    (event, *_) = await setup.store.list_audit(resource=JOB)
    assert (event.actor, event.action, event.config_commit, event.outcome) == (
        f"webhook:github:{delivery}", "run", first, "succeeded")

    # A poll follows the branch head.
    setup.daemon.trigger("poll")
    await setup.daemon.reconcile_once()
    assert (await setup.deployments())[0].config_commit == second


async def test_newest_push_wins_and_a_late_older_one_never_goes_back(setup: Setup) -> None:
    before = len(await setup.deployments())
    first, second = setup.commit("one"), setup.commit("two")
    # delivered out of order and queued together: one pass, at the newer commit
    await setup.push(second)
    await setup.push(first)
    await setup.daemon.reconcile_once()
    runs = await setup.deployments()
    assert len(runs) == before + 1 and runs[0].config_commit == second
    # a late delivery of the older push once the newer one is applied: nothing happens
    await setup.push(first)
    await setup.daemon.reconcile_once()
    assert len(await setup.deployments()) == before + 1
    assert setup.daemon.desired is not None and setup.daemon.desired.commit == second


async def test_other_wake_ups_get_their_own_pass_at_the_head(setup: Setup) -> None:
    first, second = setup.commit("one"), setup.commit("two")
    await setup.push(first)
    setup.daemon.trigger("poll")
    await setup.daemon.reconcile_once()
    assert (await setup.deployments())[0].config_commit == first
    assert setup.daemon.reasons == {"poll"} and setup.daemon.wake.is_set()
    await setup.daemon.reconcile_once()
    newest = (await setup.deployments())[0]
    assert (newest.config_commit, newest.trigger) == (second, "poll")


async def test_missing_commit_is_fetched_again_then_reported(setup: Setup) -> None:
    before = len(await setup.deployments())
    ghost = "f" * 40
    delivery = await setup.push(ghost)
    daemon = setup.daemon
    passes = 0
    while passes < 10:
        await daemon.reconcile_once()  # fetches, does not find it, schedules a retry
        passes += 1
        daemon.wake.clear()
        try:
            await asyncio.wait_for(daemon.wake.wait(), 2.0)
        except TimeoutError:
            break  # no retry scheduled any more
    assert passes == 3  # the first fetch and pin_retries=2 more
    await daemon.pins.drain()
    assert len(await setup.deployments()) == before  # nothing ran at another commit
    assert daemon.last_error is not None and ghost[:12] in daemon.last_error
    (event, *_) = await setup.store.list_audit()
    assert (event.action, event.actor, event.outcome, event.config_commit) == (
        "sync", f"webhook:github:{delivery}", "failed", ghost)
    assert event.message is not None and "not found after fetching after 3 attempts" in \
        event.message


async def test_commit_not_on_the_followed_branch_is_refused(setup: Setup) -> None:
    git(setup.work, "checkout", "-q", "-b", "feature")
    elsewhere = setup.commit("feature work", branch="feature")
    git(setup.work, "checkout", "-q", "main")
    before = len(await setup.deployments())
    await setup.push(elsewhere)  # claims to be on main
    await setup.daemon.reconcile_once()
    assert len(await setup.deployments()) == before
    (event, *_) = await setup.store.list_audit()
    assert (event.action, event.outcome, event.config_commit) == ("sync", "failed", elsewhere)
    assert event.message is not None and "not on the followed branch" in event.message
