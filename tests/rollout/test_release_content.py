"""``Release.content`` names what a release's export writes: providers export once for every
release of one content, so equal names must mean equal files. Real git repo, real exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.state import default_db_url, open_store
from tests.source.test_git import git

pytestmark = pytest.mark.timeout(60)


def service(name: str, folder: str) -> str:
    return json.dumps({"apiVersion": "fraisier.dev/v1", "kind": "Service",
                       "metadata": {"name": name},
                       "spec": {"target": "t", "command": ["app"], "source": {"path": folder}}})


async def test_equal_content_names_mean_equal_exported_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for folder, text in (("a", "A1"), ("b", "B1")):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "f").write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "a" / "f").write_text("A2")
    git(repo, "commit", "-q", "-am", "two")
    second = git(repo, "rev-parse", "HEAD").strip()
    target = json.dumps({"apiVersion": "fraisier.dev/v1", "kind": "Target",
                         "metadata": {"name": "t"}, "spec": {"provider": "bare_metal"}})
    docs = "\n---\n".join([target, service("x", "a"), service("y", "a"), service("z", "b")])
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "fleet.yaml").write_text(docs)
    desired = load_desired_state(files_from_directory(tmp_path / "desired"))
    x, y, z = (desired.resources[k] for k in sorted(desired.resources) if k.kind == "Service")
    source = GitSource(str(repo), state_dir=tmp_path / "state")
    source.sync()
    store = open_store(default_db_url(tmp_path / "state"))
    engine = Reconciler(store, state_dir=tmp_path / "state", source=source)
    try:
        releases = {(r.name, commit): engine.release_for(r, "rev", commit)
                    for r in (x, y, z) for commit in (first, second)}
        contents: dict[str | None, set[bytes]] = {}
        for n, release in enumerate(releases.values()):
            assert release.content is not None and release.export is not None
            dest = tmp_path / f"out{n}"
            await release.export(dest)
            contents.setdefault(release.content, set()).add((dest / "f").read_bytes())
        # one file content per name, and the folders/commits that differ have other names
        assert all(len(files) == 1 for files in contents.values())
        assert releases["x", first].content == releases["y", first].content
        assert releases["x", first].content != releases["x", second].content
        assert releases["x", first].content != releases["z", first].content
        assert len(contents) == 4  # a@1, a@2, b@1, b@2
    finally:
        await engine.close()
        await store.close()
