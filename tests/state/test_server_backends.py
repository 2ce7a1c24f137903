"""PostgreSQL and MariaDB only: several processes, the real CLI, failed migrations, secrets."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.errors import MigrationError, StoreError
from reconciler.state import open_store
from reconciler.state.migrations import default_sql_dir, discover
from tests.state.backends import dialect_of, raw_query

REPO = Path(__file__).resolve().parents[2]
N = 60  # iterations per writer process, ~10 write transactions each


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_DB")}
    env.update(extra)
    return env


@pytest.mark.timeout(120)
def test_two_processes_no_lost_writes(server_url: str, tmp_path: Path) -> None:
    """The daemon and a CLI command (two processes) migrate and write one database at once."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.state.writer_process", server_url, tag, str(N),
             str(go)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        for tag in ("daemon", "cli")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                proc.kill()
                pytest.fail(f"writer did not start: {line!r}\n{proc.communicate(timeout=10)[1]}")
        go.touch()
        results = [proc.communicate(timeout=100) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    diagnostics = "\n".join(f"--- exit {p.returncode}\n{out}\n{err}"
                            for p, (out, err) in zip(procs, results, strict=True))
    assert all(p.returncode == 0 for p in procs), diagnostics
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    files = discover(default_sql_dir(dialect_of(server_url)))
    assert sum(s["migrated"] for s in summaries) == len(files), summaries  # exactly once
    rows = raw_query(server_url, "SELECT seq, identifier, status, trigger_ FROM ("
                                 "SELECT seq, identifier, status, " +
                                 ("`trigger`" if "mysql" in server_url else '"trigger"') +
                                 " AS trigger_, name FROM v_deployment) AS d "
                                 "WHERE name = 'shared' ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, 2 * N + 1))
    assert [r[1] for r in rows] == [f"prod/Service/shared#{i}" for i in range(1, 2 * N + 1)]
    assert {r[2] for r in rows} == {"succeeded"}
    assert sorted(r[3] for r in rows) == ["cli"] * N + ["daemon"] * N
    switches = sum(1 for a, b in itertools.pairwise(rows) if a[3] != b[3])
    assert switches >= 2, switches  # they really ran at the same time
    assert raw_query(server_url, "SELECT COUNT(*) FROM tb_deployment_event") == [(3 * 2 * N,)]
    assert sum(s["shared_deliveries"] for s in summaries) == N
    wins = sum(s["lock_wins"] for s in summaries)
    assert wins > 0
    assert raw_query(server_url, "SELECT desired_revision FROM v_resource "
                                 "WHERE name = 'counter'") == [(str(wins),)]


def _cli(url: str, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--db", url, *args], cwd=REPO,
        capture_output=True, text=True, timeout=60, env=env or _env(),
    )


@pytest.mark.timeout(120)
def test_cli_db_migrate_and_status(server_url: str) -> None:
    files = discover(default_sql_dir(dialect_of(server_url)))
    before = _cli(server_url, "db", "status")
    assert before.returncode == 1, before.stderr  # pending
    assert before.stdout.count("pending") == len(files)
    migrated = _cli(server_url, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"{len(files)} migration(s) applied" in migrated.stdout
    assert _cli(server_url, "db", "migrate").stdout.strip().endswith("up to date")
    after = _cli(server_url, "db", "status", "-o", "json")
    assert after.returncode == 0, after.stderr
    document = json.loads(after.stdout)
    assert document["pending"] == 0
    assert [m["name"] for m in document["migrations"]] == [f.name for f in files]
    # the environment variable works as well as --db
    env_status = subprocess.run([sys.executable, "-m", "reconciler", "db", "status"], cwd=REPO,
                                capture_output=True, text=True, timeout=60,
                                env=_env(RECONCILER_DB=server_url))
    assert env_status.returncode == 0, env_status.stderr


@pytest.mark.timeout(60)
def test_passwords_never_shown(server_url: str) -> None:
    """A refused login names the URL without its password; the env password is really used."""
    dialect = dialect_of(server_url)
    scheme, rest = server_url.split("://", 1)
    user, host = rest.split("@", 1)
    # wrong port: nothing listens, whatever the backend
    bad = f"{scheme}://{user}:Hunter2Secret@127.0.0.1:1/{host.rsplit('/', 1)[1]}"
    result = _cli(bad, "db", "status")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Hunter2Secret" not in output and ":***@" in output, output
    if dialect == "mysql":  # root has no password here: a supplied one is refused
        result = _cli(server_url, "db", "status",
                      env=_env(RECONCILER_DB_PASSWORD="EnvSecretValue9"))
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "Access denied" in output, output
        assert "EnvSecretValue9" not in output


async def test_failed_mysql_migration_is_undone_and_can_be_rerun(
    server_url: str, tmp_path: Path
) -> None:
    """MySQL commits DDL implicitly: the runner drops what the failed file had created, says
    so, leaves the file unrecorded; once fixed, the file applies cleanly.
    PostgreSQL: the same failure rolls back inside the transaction."""
    import shutil

    dialect = dialect_of(server_url)
    sql_dir = tmp_path / "sql" / dialect
    shutil.copytree(default_sql_dir(dialect), sql_dir)
    bad = sql_dir / "900_audit.sql"
    bad.write_text(
        "CREATE TABLE tb_audit (pk_audit INTEGER PRIMARY KEY, note VARCHAR(50));\n"
        "CREATE VIEW v_audit AS SELECT pk_audit AS id, note FROM tb_audit;\n"
        "CREATE TABLE tb_audit_broken (pk INTEGER PRIMARY KEY, oops NO_SUCH_TYPE);\n"
    )
    store = open_store(server_url, sql_dir=sql_dir)
    try:
        with pytest.raises(MigrationError) as info:
            await store.migrate()
        message = str(info.value)
        assert "900_audit.sql: statement 3 of 3 failed" in message
        if dialect == "mysql":
            assert "undone by dropping" in message and "table tb_audit" in message
            assert "view v_audit" in message
        tables = raw_query(server_url, "SELECT table_name FROM information_schema.tables "
                                       "WHERE table_name IN (%s, %s, %s)",
                           ("tb_audit", "v_audit", "tb_audit_broken"))
        assert tables == []
        applied = [m.version for m in await store.migration_status() if m.applied_at]
        assert 900 not in applied and 1 in applied  # earlier files stay applied
        bad.write_text(bad.read_text().replace("NO_SUCH_TYPE", "INTEGER"))
        assert [m.version for m in await store.migrate()] == [900]
        assert raw_query(server_url, "SELECT COUNT(*) FROM v_audit") == [(0,)]
    finally:
        await store.close()


async def test_unreachable_server_fails_after_retrying(server_backend: str) -> None:
    """Nothing listening: the store retries with backoff, then raises a StoreError naming the
    operation (bounded by retry_seconds, not forever)."""
    url = ("postgresql://postgres@127.0.0.1:1/x" if server_backend == "postgresql"
           else "mysql://root@127.0.0.1:1/x")
    store = open_store(url)
    store.retry_seconds = 1.0  # type: ignore[attr-defined]
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="list_resources failed after"):
            await store.list_resources()
    finally:
        await store.close()
    assert 0.9 < time.monotonic() - started < 8


def _sample(name: str, **labels: str) -> float:
    from reconciler.observe.metrics import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_metrics_hooks(server_url: str) -> None:
    """Every operation is timed per backend; failed attempts are counted, refusals are not;
    the pool publishes its connections; lease acquisition feeds the lock wait histogram."""
    from reconciler.errors import NotFound
    from reconciler.spec.model import ResourceKey

    backend = dialect_of(server_url)
    timed = ("reconciler_db_query_duration_seconds_count",
             {"backend": backend, "operation": "record_desired"})
    before = _sample(timed[0], **timed[1])
    errors_before = _sample("reconciler_db_errors_total")
    lock_waits = _sample("reconciler_lock_wait_seconds_count")
    store = open_store(server_url)
    try:
        await store.migrate()
        for i in range(3):
            await store.record_desired(ResourceKey("m", "Job", f"j{i}"), revision="r",
                                       spec_hash="h", spec={}, config_commit=None)
        await store.acquire_lock("l", "o", 5)
        with pytest.raises(NotFound):
            await store.set_suspended(ResourceKey("m", "Job", "missing"), True)
        assert _sample(timed[0], **timed[1]) == before + 3
        assert _sample("reconciler_lock_wait_seconds_count") == lock_waits + 1
        assert _sample("reconciler_db_errors_total") == errors_before  # NotFound: no DB error
        assert _sample("reconciler_db_connections", state="open") >= 1
        assert _sample("reconciler_db_connections", state="idle") >= 1
        raw_query(server_url, "DROP VIEW v_resource")
        with pytest.raises(StoreError, match="schema is missing or outdated"):
            await store.get_resource(ResourceKey("m", "Job", "j0"))
        assert _sample("reconciler_db_errors_total") == errors_before + 1
    finally:
        await store.close()
