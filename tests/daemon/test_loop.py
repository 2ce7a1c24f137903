"""The daemon's pass and the audit trail: Target changes are audited with the actor of the pass
that made them (no deployment writes their row), never with a secret value.

Real git (a local config repo), the real engine and a real SQLite store; the daemon's pass
function is driven directly (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.loop import Daemon
from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource
from reconciler.state.sqlite import SQLiteStore
from tests.e2e.conftest import git

pytestmark = pytest.mark.timeout(90)

TOKEN_ENV = "FRAISIER_TEST_AUDIT_COOLIFY_TOKEN"
TOKEN = "s3cr3t-AUDIT-TARGET-4be1c09d"


@dataclass
class Setup:
    work: Path
    root: Path
    daemon: Daemon
    store: SQLiteStore

    def local_target(self, keep: int) -> None:
        (self.work / "fleet" / "local.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {self.root}, keepReleases: {keep}}}
""")

    def commit(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    async def run_pass(self, reason: str) -> None:
        self.daemon.trigger(reason)
        await self.daemon.reconcile_once()


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    work, state = tmp_path / "work", tmp_path / "state"
    (work / "fleet").mkdir(parents=True)
    (work / "fleet" / "coolify.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: paas}}
spec:
  provider: coolify
  url: http://127.0.0.1:9/
  token: {{env: {TOKEN_ENV}}}
""")
    git(work, "init", "-q", "-b", "main")
    state.mkdir()
    store = SQLiteStore(state / "fraisier.db")
    await store.migrate()
    source = GitSource(str(work), path="fleet", state_dir=state)
    engine = Reconciler(store, state_dir=state, source=source)
    cfg = DaemonConfig(repo=str(work), ref=None, path="fleet", listen_host="127.0.0.1",
                       listen_port=0, interval=3600, prune=True, state_dir=state,
                       db_url=store.url)
    it = Setup(work, tmp_path / "root", Daemon(cfg, store, source, engine), store)
    try:
        yield it
    finally:
        it.daemon.stop()
        await engine.close()
        await store.close()


async def test_target_changes_are_audited_with_the_actor_of_the_pass(setup: Setup) -> None:
    setup.local_target(3)
    first = setup.commit("two targets")
    await setup.run_pass("startup")
    created = await setup.store.list_audit(limit=0)
    assert sorted((e.resource, e.action, e.actor, e.outcome, e.config_commit, e.message)
                  for e in created) == [
        (f"default/Target/{name}", "deploy", "startup", "succeeded", first,
         "target recorded (create)") for name in ("local", "paas")]
    assert all(e.revision and e.deployment is None for e in created)

    await setup.run_pass("poll")  # nothing changed: nothing audited
    assert len(await setup.store.list_audit(limit=0)) == 2

    setup.local_target(5)
    second = setup.commit("keep more releases")
    await setup.run_pass("commit")  # a commit seen on the local repo
    (updated, *_) = await setup.store.list_audit(limit=0)
    assert (updated.resource, updated.action, updated.actor, updated.config_commit,
            updated.message) == ("default/Target/local", "deploy", "watch", second,
                                 "target recorded (update)")
    assert updated.revision != next(e.revision for e in created
                                    if e.resource == "default/Target/local")

    (setup.work / "fleet" / "local.yaml").unlink()
    third = setup.commit("drop the local target")
    await setup.run_pass("poll")
    (removed, *_) = await setup.store.list_audit(limit=0)
    assert (removed.resource, removed.action, removed.actor, removed.outcome,
            removed.config_commit, removed.message) == (
        "default/Target/local", "prune", "poll", "succeeded", third, "target removed")
    assert removed.revision == updated.revision  # what was applied until then
    assert len(await setup.store.list_audit(limit=0)) == 4

    # The coolify Target's token is a reference: its value is in no audit row, nor anywhere
    # in the database file.
    for event in await setup.store.list_audit(limit=0):
        assert TOKEN not in repr(event)
    db = Path(setup.store.path)
    data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert TOKEN.encode() not in data and b"default/Target/paas" in data
