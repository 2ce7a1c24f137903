"""A plan from two commits alone: revisions are resolved beforehand from the config repo
(``reconciler.source.revisions``), so ``make_plan`` needs no store, engine or provider — what a
pull-request plan needs. Real git repository, real loader."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.plan.planner import UNCHANGED, UPDATE, make_plan
from reconciler.source.git import GitSource
from reconciler.source.revisions import Revisions
from reconciler.spec.loader import load_desired_state
from reconciler.spec.model import DesiredState
from reconciler.state.store import ResourceRecord

pytestmark = pytest.mark.timeout(60)

FLEET = {
    "fleet/target.yaml": """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: local, environment: prod}
spec: {provider: bare_metal, transport: local}
""",
    "fleet/services.yaml": """apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api, environment: prod}
spec:
  target: local
  source: {path: app}
  command: [python3, app.py]
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: web, environment: prod}
spec:
  target: local
  command: [/bin/sleep, "60"]
""",
    "app/app.py": "print('v1')\n",
}


def git(repo: Path, *argv: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def test_a_plan_between_two_commits_needs_only_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q")
    before = commit(repo, FLEET, "v1")
    after = commit(repo, {"app/app.py": "print('v2')\n"}, "v2: the app changes, no document")
    source = GitSource(str(repo), path="fleet")

    def at(sha: str) -> DesiredState:
        return load_desired_state(source.files(sha), commit=sha)

    revisions = Revisions(source, tmp_path / "state")
    old, new = at(before), at(after)
    applied = [ResourceRecord(key, str(n), applied_revision=revisions.revision_of(r, old),
                              applied_spec=r.document())
               for n, (key, r) in enumerate(old.resources.items())]
    plan = make_plan(new, applied, revisions.resolve(new))
    actions = {i.key.name: i.action for i in plan.items}
    assert actions == {"local": UNCHANGED, "api": UPDATE, "web": UNCHANGED}
    api = next(i for i in plan.items if i.key.name == "api")
    assert api.reason.endswith("(source content changed)")
    assert not (tmp_path / "state").exists()  # nothing fetched, cloned or exported
