"""Reconciler-side Target settings give no resource a new revision (issue 15, item 10).

``Target.spec.ssh`` says how the reconciler reaches the hosts: changing a timeout re-records the
Target and redeploys nothing (the migration Job does not run again); a field that reaches the
hosts still updates every resource, and ``diff`` names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import git
from tests.providers.bare_metal.conftest import HOST_APP, free_port
from tests.providers.bare_metal.test_ssh_cli import JOB_YAML, SECRET, service_yaml, target_yaml


@pytest.mark.timeout(180)
def test_ssh_timeouts_redeploy_nothing_and_diff_names_the_target_field(
        tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:2]
    for host in hosts:
        host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-", str(free_port())])
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(HOST_APP)
    (repo / "app" / "VERSION").write_text("v1\n")
    (repo / "fleet").mkdir()
    target = target_yaml(hosts)
    (repo / "fleet" / "target.yaml").write_text(target)
    (repo / "fleet" / "api.yaml").write_text(service_yaml())
    (repo / "fleet" / "job.yaml").write_text(JOB_YAML)
    git(repo, "init", "-q", "-b", "main")

    def commit(message: str) -> None:
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", message)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
             "--log-format", "text", *args],
            capture_output=True, text=True, timeout=120, cwd=repo,
            env={**os.environ, "FRAISIER_SSH_E2E_TOKEN": SECRET})

    def plan() -> dict[str, Any]:
        out = cli("diff", *repo_args, "-o", "json")
        return {r["resource"]: r for r in json.loads(out.stdout)["resources"]}

    repo_args = ["--repo", str(repo), "--path", "fleet"]
    commit("v1")
    first = cli("apply", *repo_args)
    assert first.returncode == 0, first.stdout + first.stderr

    # Only how the reconciler reaches the hosts changes.
    (repo / "fleet" / "target.yaml").write_text(target.replace(
        "  transport: ssh\n",
        "  transport: ssh\n  ssh: {connectTimeout: 7s, commandTimeout: 2m}\n"
        "  concurrency: 2\n"))
    commit("ssh timeouts")
    items = plan()
    assert items["default/Target/hosts"]["action"] == "update"
    assert items["default/Service/api"]["action"] == "unchanged", items
    assert items["default/Job/migrate"]["action"] == "unchanged", items
    second = cli("apply", *repo_args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(json.loads(cli("history", "migrate", "-o", "json").stdout)) == 1
    assert len(json.loads(cli("history", "api", "-o", "json").stdout)) == 1
    assert cli("diff", *repo_args).returncode == 0

    # A field that reaches the hosts: every resource updates, and diff says why.
    (repo / "fleet" / "target.yaml").write_text(
        (repo / "fleet" / "target.yaml").read_text().replace("memoryMax: 256M",
                                                             "memoryMax: 300M"))
    commit("memory")
    items = plan()
    for name in ("default/Service/api", "default/Job/migrate"):
        assert items[name]["action"] == "update"
        assert "Target hosts: spec.systemd.limits.memoryMax" in items[name]["reason"], items[name]
    text = cli("diff", *repo_args)
    assert text.returncode == 1
    assert "spec.systemd.limits.memoryMax" in text.stdout


@pytest.mark.timeout(180)
def test_records_applied_under_the_old_revision_formula_redeploy_nothing(
        tmp_path: Path, ssh_hosts: Any) -> None:
    """A database written before connection fields were left out of revisions holds, for every
    resource on an SSH Target, the revision of the whole Target document. Upgrading must not
    redeploy the fleet (the Job must not run again): the pass records the new revision."""
    import asyncio

    from reconciler.source.git import GitSource
    from reconciler.source.revisions import Revisions
    from reconciler.spec.loader import load_desired_state
    from reconciler.state import default_db_url, open_store

    hosts = ssh_hosts[:1]
    for host in hosts:
        host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-", str(free_port())])
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(HOST_APP)
    (repo / "app" / "VERSION").write_text("v1\n")
    (repo / "fleet").mkdir()
    (repo / "fleet" / "target.yaml").write_text(target_yaml(hosts).replace(
        "  transport: ssh\n", "  transport: ssh\n  ssh: {connectTimeout: 7s}\n"))
    (repo / "fleet" / "api.yaml").write_text(service_yaml())
    (repo / "fleet" / "job.yaml").write_text(JOB_YAML)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "--log-format",
             "text", *args],
            capture_output=True, text=True, timeout=120, cwd=repo,
            env={**os.environ, "FRAISIER_SSH_E2E_TOKEN": SECRET})

    repo_args = ["--repo", str(repo), "--path", "fleet"]
    first = cli("apply", *repo_args)
    assert first.returncode == 0, first.stdout + first.stderr

    async def as_the_old_version_recorded() -> dict[str, str]:
        source = GitSource(str(repo), path="fleet", state_dir=tmp_path / "git")
        commit = source.sync().commit
        desired = load_desired_state(source.files(commit), commit=commit)
        revisions = Revisions(source, tmp_path / "git")
        store = open_store(default_db_url(state))
        legacy: dict[str, str] = {}
        try:
            for key, resource in desired.resources.items():
                old = revisions.legacy_revision_of(resource, desired)
                if old is None:
                    continue
                record = await store.get_resource(key)
                assert record is not None and record.applied_spec is not None
                await store.record_applied(key, revision=old, spec_hash=resource.hash,
                                           spec=record.applied_spec,
                                           config_commit=record.config_commit)
                legacy[str(key)] = old
        finally:
            await store.close()
        return legacy

    legacy = asyncio.run(as_the_old_version_recorded())
    assert set(legacy) == {"default/Service/api", "default/Job/migrate"}
    assert cli("diff", *repo_args).returncode == 0  # nothing to deploy
    second = cli("apply", *repo_args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(json.loads(cli("history", "migrate", "-o", "json").stdout)) == 1
    assert len(json.loads(cli("history", "api", "-o", "json").stdout)) == 1

    async def applied() -> dict[str, str | None]:
        store = open_store(default_db_url(state))
        try:
            return {str(r.key): r.applied_revision
                    for r in await store.list_resources(with_specs=False)}
        finally:
            await store.close()

    now = asyncio.run(applied())
    for name, old in legacy.items():
        assert now[name] not in (None, old), now  # the new revision, recorded
    assert cli("diff", *repo_args).returncode == 0
