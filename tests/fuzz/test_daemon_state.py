"""Fuzzing the daemon's handling of invalid commits: a real daemon pass (``Daemon.reconcile_once``
on a local git repo, a SQLite store) after each commit of a mutated, invalid desired state.

Properties: the pass does not raise; the store is byte-for-byte what the last good commit left
(no resource, deployment or event recorded); the daemon keeps the last good desired state and
reports the invalid commit in ``last_error``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.loop import Daemon
from reconciler.errors import SpecError
from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.state import open_store
from tests.fuzz.conftest import fuzz, mutate, mutations
from tests.fuzz.test_loader import YAML_PIECES

TARGET = b"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
  labels: {tier: fuzz}
spec:
  provider: bare_metal
  transport: local
  serviceManager: supervisor
  root: ROOT
"""
JOB = b"""apiVersion: fraisier.dev/v1
kind: Schedule
metadata: {name: nightly, environment: default}
spec:
  target: local
  schedule: "0 3 * * *"
  timezone: UTC
  source: {path: app}
  command: [/bin/true]
  dependsOn: [Target/local]
"""
SEEDS = {"fleet/target.yaml": TARGET, "fleet/nightly.yaml": JOB}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=30)


@dataclass
class Setup:
    loop: asyncio.AbstractEventLoop
    repo: Path
    db: Path
    daemon: Daemon
    good_commit: str

    def snapshot(self) -> list[str]:
        with sqlite3.connect(self.db) as connection:
            return list(connection.iterdump())


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="fuzz-daemon-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        (repo / "fleet").mkdir(parents=True)
        (repo / "app").mkdir()
        (repo / "app" / "README").write_text("the Schedule's release\n")
        SEEDS["fleet/target.yaml"] = TARGET.replace(b"ROOT", str(root / "srv").encode())
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.email", "fuzz@example.invalid")
        git(repo, "config", "user.name", "fuzz")
        for name, data in SEEDS.items():
            (repo / name).write_bytes(data)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "good")
        state_dir = root / "state"
        db = state_dir / "fraisier.db"
        cfg = DaemonConfig(
            repo=str(repo), ref=None, path="fleet", listen_host="127.0.0.1", listen_port=0,
            interval=3600, prune=True, state_dir=state_dir, db_url=f"sqlite:///{db}", heal=False,
        )
        store = open_store(cfg.db_url)
        loop.run_until_complete(store.migrate())
        source = GitSource(cfg.repo, path=cfg.path, state_dir=state_dir)
        engine = Reconciler(store, state_dir=state_dir, source=source)
        daemon = Daemon(cfg, store, source, engine)
        loop.run_until_complete(daemon.reconcile_once())
        assert daemon.desired is not None and daemon.last_error is None, daemon.last_error
        good = daemon.desired.commit
        assert good is not None
        try:
            yield Setup(loop, repo, db, daemon, good)
        finally:
            loop.run_until_complete(engine.close())
            loop.run_until_complete(store.close())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()


def is_invalid(repo: Path) -> bool:
    try:
        load_desired_state(files_from_directory(repo / "fleet"))
    except SpecError:
        return True
    return False


@fuzz(0.2)
@given(st.sampled_from(sorted(SEEDS)), mutations(YAML_PIECES))
def test_an_invalid_commit_changes_nothing(setup: Setup, name: str, edits: list[Any]) -> None:
    for seed_name, data in SEEDS.items():
        (setup.repo / seed_name).write_bytes(mutate(data, edits) if seed_name == name else data)
    assume(is_invalid(setup.repo))
    before = setup.snapshot()
    git(setup.repo, "commit", "-qam", "fuzzed", "--allow-empty")

    setup.loop.run_until_complete(setup.daemon.reconcile_once())

    assert setup.daemon.desired is not None
    assert setup.daemon.desired.commit == setup.good_commit, "the last good state was replaced"
    assert setup.daemon.last_error and "invalid" in setup.daemon.last_error
    assert setup.snapshot() == before, "an invalid commit changed the store"


def test_the_good_commit_was_recorded(setup: Setup) -> None:
    """Guard against a vacuous snapshot: the good commit's resources are in the store."""
    dump = "\n".join(setup.snapshot())
    assert "nightly" in dump and "local" in dump
