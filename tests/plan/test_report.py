"""`reconciler diff --base`: the plan of a change between two commits, rendered for a pull
request (golden files in tests/plan/golden/; regenerate with FRAISIER_UPDATE_GOLDEN=1 and read
the diff before committing), and its exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.plan.diff import FieldChange
from reconciler.plan.report import HIDDEN, MARKER, is_secret_change, masked
from tests.plan.sample import AT, SECRET_LITERAL, build

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FRAISIER_UPDATE_GOLDEN") == "1"
@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    repo = tmp_path_factory.mktemp("plan") / "config"
    base, head = build(repo)
    return repo, base, head


def diff(repo: Path, *args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_DB"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(state), "diff", "--repo",
         str(repo), "--path", "fleet", "--prune", "--at", AT, *args],
        capture_output=True, text=True, env=env, timeout=60)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.mark.timeout(120)
def test_markdown_and_text_of_a_change_match_the_golden_files(
        sample: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, _ = sample
    md = diff(repo, "--base", base, "-o", "markdown", state=tmp_path)
    assert md.returncode == 1, md.stderr  # changes pending
    assert md.stderr == ""
    check_golden("change.md", md.stdout)
    text = diff(repo, "--base", base, state=tmp_path)
    assert text.returncode == 1, text.stderr
    check_golden("change.txt", text.stdout)
    out = md.stdout
    assert out.startswith(MARKER)
    # the secret literal and the secret reference's new name are nowhere
    for shown in (md.stdout, text.stdout):
        assert SECRET_LITERAL not in shown
        assert "API_DB_PASSWORD_V2" not in shown
        assert "spec.env.DB_PASSWORD.env: (secret: value not shown)" in shown
        assert "spec.env.API_TOKEN: (secret: value not shown)" in shown
    # apply order: the Job before the Service that depends on it, deletions last and the
    # dependent one (legacy-ui) deleted before what it depends on
    prod = out.split("Environment `prod`")[1].split("Environment `staging`")[0]
    order = [line.split("`")[1] for line in prod.splitlines() if line.startswith("| ")
             and "`" in line]
    assert order.index("Job/migrate") < order.index("Service/api") < order.index("Service/cache")
    assert order.index("Service/legacy-ui") < order.index("Service/legacy-api")
    assert order[-2:] == ["Service/legacy-ui", "Service/legacy-api"]
    # the staging change is deferred by its Target's deny window, with when it opens
    assert "⏸️ deferred | `Service/shop`" in out and "2026-12-04T16:00:00+00:00" in out


@pytest.mark.timeout(120)
def test_json_names_targets_hosts_strategies_and_hides_secrets(
        sample: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, _ = sample
    done = diff(repo, "--base", base, "-o", "json", state=tmp_path)
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["base"] == base and doc["against"] == "base"
    by = {r["resource"]: r for r in doc["resources"]}
    api = by["prod/Service/api"]
    assert (api["action"], api["target"], api["hosts"], api["strategy"]) == (
        "update", "web", ["web-1", "web-2"], "rolling")
    assert by["prod/Service/cache"]["strategy"] == "blue-green"
    assert by["prod/Service/cache"]["dependsOn"] == ["prod/Service/api"]
    assert by["staging/Service/shop"]["action"] == "deferred"
    secret = [c for c in api["changes"] if c["path"] == "spec.env.DB_PASSWORD.env"]
    assert secret == [{"op": "~", "path": "spec.env.DB_PASSWORD.env", "old": HIDDEN,
                       "new": HIDDEN, "secret": True}]
    assert SECRET_LITERAL not in done.stdout


@pytest.mark.timeout(120)
def test_exit_codes_no_change_changes_error(sample: tuple[Path, str, str],
                                            tmp_path: Path) -> None:
    repo, base, head = sample
    same = diff(repo, "--base", head, "-o", "markdown", state=tmp_path)
    assert same.returncode == 0, same.stderr
    assert "No change" in same.stdout and same.stdout.startswith(MARKER)
    assert diff(repo, "--base", base, state=tmp_path).returncode == 1
    bad = diff(repo, "--base", "no-such-ref", state=tmp_path)
    assert bad.returncode == 2
    assert "cannot resolve ref 'no-such-ref'" in bad.stderr
    # -o markdown needs something to compare with
    nothing = diff(repo, "-o", "markdown", state=tmp_path)
    assert nothing.returncode == 2 and "--base" in nothing.stderr


def test_markdown_is_capped_and_counts_what_it_left_out(
        sample: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, _ = sample
    done = diff(repo, "--base", base, "-o", "markdown", "--max-chars", "1500", state=tmp_path)
    assert done.returncode == 1
    assert len(done.stdout) <= 1500
    assert "Left out to stay under 1,500 characters:" in done.stdout
    assert done.stdout.startswith(MARKER)


def test_secret_detection() -> None:
    docs = ({"spec": {"env": {"DB": {"env": "A"}, "PLAIN": "x"}}},)
    assert is_secret_change(FieldChange("~", "spec.env.DB.env", "A", "B"), docs)
    assert is_secret_change(FieldChange("~", "spec.env.DB", "lit", {"env": "B"}), docs)
    assert is_secret_change(FieldChange("+", "spec.env.STRIPE_KEY", None, "sk"), docs)
    assert not is_secret_change(FieldChange("~", "spec.env.PLAIN", "x", "y"), docs)
    assert masked({"A": {"file": "/x"}, "PASSWORD": "p", "B": ["ok"]}) == {
        "A": HIDDEN, "PASSWORD": HIDDEN, "B": ["ok"]}


async def _record_base(url: str, repo: Path, base: str, state: Path) -> None:
    """The base commit recorded as applied, as a pass that deployed it would leave it."""
    from reconciler.source.git import GitSource
    from reconciler.source.revisions import Revisions
    from reconciler.spec.loader import load_desired_state
    from reconciler.state import open_store

    source = GitSource(str(repo), path="fleet", state_dir=state)
    desired = load_desired_state(source.files(base), commit=base, tree=source.tree(base))
    revisions = Revisions(source, state).resolve(desired)
    store = open_store(url)
    try:
        await store.migrate()
        for key, resource in desired.resources.items():
            fields = {"revision": revisions[key], "spec_hash": resource.hash,
                      "spec": resource.document(), "config_commit": base}
            await store.record_desired(key, **fields)
            await store.record_applied(key, **fields)
    finally:
        await store.close()


@contextlib.contextmanager
def plan_reader(backend: str, url: str) -> Iterator[str]:
    """A login that may only SELECT from the view v_resource (docs/pull-requests.md), and the
    database URL as that login."""
    import psycopg
    import pymysql

    user = f"fraisier_plan_{uuid.uuid4().hex[:8]}"
    database = url.rsplit("/", 1)[1]
    if backend == "postgresql":
        def admin(sql: str) -> None:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql)

        admin(f"CREATE ROLE {user} LOGIN")
        admin(f"GRANT USAGE ON SCHEMA public TO {user}")
        admin(f"GRANT SELECT ON v_resource TO {user}")
        try:
            yield f"postgresql://{user}@127.0.0.1:5432/{database}"
        finally:
            admin(f"DROP OWNED BY {user}")
            admin(f"DROP ROLE {user}")
        return

    def my_admin(sql: str) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=10)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    my_admin(f"CREATE USER '{user}'@'%'")
    my_admin(f"GRANT SELECT ON `{database}`.`v_resource` TO '{user}'@'%'")
    try:
        yield f"mysql://{user}@127.0.0.1:3306/{database}"
    finally:
        my_admin(f"DROP USER '{user}'@'%'")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_against_recorded_state_with_select_on_v_resource_only(
        backend: str, sample: tuple[Path, str, str], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    repo, base, _ = sample
    url = request.getfixturevalue(f"{backend}_url")
    asyncio.run(_record_base(url, repo, base, tmp_path))
    from_base = json.loads(diff(repo, "--base", base, "-o", "json", state=tmp_path).stdout)
    with plan_reader(backend, url) as reader:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path), "--db", reader,
             "diff", "--repo", str(repo), "--path", "fleet", "--prune", "--at", AT,
             "--base", base, "-o", "json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        recorded = json.loads(done.stdout)
        md = subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path), "--db", reader,
             "diff", "--repo", str(repo), "--path", "fleet", "--prune", "--at", AT,
             "-o", "markdown"], capture_output=True, text=True, timeout=60)
        assert md.returncode == 1, md.stderr
        assert "against the recorded state (database, read-only)" in md.stdout
    assert recorded["against"] == "database"

    def actions(doc: dict[str, Any]) -> list[tuple[str, str]]:
        return [(r["resource"], r["action"]) for r in doc["resources"]]

    # the recorded state is the base commit applied: the same plan, in the same order
    assert actions(recorded) == actions(from_base)
