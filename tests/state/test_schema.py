"""The SQLite schema itself: Trinity conventions, constraints, the transition trigger, views."""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.spec.model import ResourceKey
from reconciler.state.sqlite import SQLiteStore
from reconciler.state.sqlite_resources import PLAN_LISTING_SQL
from reconciler.state.store import (
    DEPLOYMENT_STATUSES,
    FAILED,
    IN_PROGRESS,
    PENDING,
    SUCCEEDED,
    TRANSITIONS,
)


@pytest.fixture
def conn(store: SQLiteStore) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(store.path, isolation_level=None)
    c.execute("PRAGMA foreign_keys = ON")
    yield c
    c.close()


def tables(conn: sqlite3.Connection, kind: str) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name", (kind,)
        )
    ]


def test_trinity_columns_on_every_write_table(conn: sqlite3.Connection) -> None:
    entity_tables = [t for t in tables(conn, "table") if t != "tb_schema_migration"]
    assert set(entity_tables) >= {
        "tb_resource", "tb_deployment", "tb_deployment_event", "tb_deployment_step", "tb_lock",
        "tb_webhook_delivery", "tb_notification",
    }
    for table in entity_tables:
        assert table.startswith("tb_"), table
        entity = table[3:]
        info = {row[1]: row for row in conn.execute(f"PRAGMA table_info({table})")}
        assert info[f"pk_{entity}"][5] == 1 and info[f"pk_{entity}"][2] == "INTEGER", table
        assert "id" in info and "identifier" in info, table
        unique_columns = set()
        for index in conn.execute(f"PRAGMA index_list({table})"):
            if index[2]:  # unique
                cols = [c[2] for c in conn.execute(f"PRAGMA index_info({index[1]})")]
                if len(cols) == 1:
                    unique_columns.add(cols[0])
        assert {"id", "identifier"} <= unique_columns, table
        for fk in conn.execute(f"PRAGMA foreign_key_list({table})"):
            parent, column, target = fk[2], fk[3], fk[4]
            assert column == f"fk_{parent[3:]}" and target == f"pk_{parent[3:]}", (table, fk)


def test_a_read_view_per_entity_and_no_pk_in_views(conn: sqlite3.Connection) -> None:
    views = set(tables(conn, "view"))
    for table in tables(conn, "table"):
        if table != "tb_schema_migration":
            assert f"v_{table[3:]}" in views
    for view in views:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({view})")]
        assert not any(c.startswith(("pk_", "fk_")) for c in columns), view
        conn.execute(f"SELECT * FROM {view}").fetchall()  # queryable


def trigger_allows(
    conn: sqlite3.Connection, trigger_sql: str, pk: int, old: str, new: str
) -> bool:
    """Does the trigger let a row in status ``old`` move to ``new``? (rolled back afterwards)"""
    conn.execute("BEGIN")
    try:
        # Put the row into `old` with the trigger out of the way (DDL is transactional).
        conn.execute("DROP TRIGGER tr_deployment_status_transition")
        conn.execute("UPDATE tb_deployment SET status = ? WHERE pk_deployment = ?", (old, pk))
        conn.execute(trigger_sql)
        try:
            conn.execute("UPDATE tb_deployment SET status = ? WHERE pk_deployment = ?", (new, pk))
            return True
        except sqlite3.IntegrityError as exc:
            assert "illegal deployment status transition" in str(exc)
            return False
    finally:
        conn.execute("ROLLBACK")


async def test_transition_trigger_matches_transitions(
    store: SQLiteStore, conn: sqlite3.Connection, api: ResourceKey
) -> None:
    (trigger_sql,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'tr_deployment_status_transition'"
    ).fetchone()
    d = await store.create_deployment(
        api, from_revision=None, to_revision="r1", config_commit=None, trigger="t", strategy="s"
    )
    (pk,) = conn.execute("SELECT pk_deployment FROM tb_deployment WHERE id = ?", (d.id,)).fetchone()
    for old, new in itertools.product(DEPLOYMENT_STATUSES, DEPLOYMENT_STATUSES):
        expected = new == old or new in TRANSITIONS.get(old, frozenset())
        assert trigger_allows(conn, trigger_sql, pk, old, new) == expected, (old, new)
    (status,) = conn.execute("SELECT status FROM tb_deployment WHERE pk_deployment = ?",
                             (pk,)).fetchone()
    assert status == PENDING  # every probe was rolled back


async def test_hand_written_sql_cannot_rewrite_history(
    store: SQLiteStore, conn: sqlite3.Connection, api: ResourceKey
) -> None:
    d = await store.create_deployment(
        api, from_revision=None, to_revision="r1", config_commit=None, trigger="t", strategy="s"
    )
    await store.transition(d.id, IN_PROGRESS)
    await store.transition(d.id, SUCCEEDED)
    with pytest.raises(sqlite3.IntegrityError, match="illegal"):
        conn.execute("UPDATE tb_deployment SET status = 'pending' WHERE id = ?", (d.id,))
    # other columns stay editable
    conn.execute("UPDATE tb_deployment SET output = 'note' WHERE id = ?", (d.id,))


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE tb_resource SET sync_status = 'Fine'", "CHECK"),
        ("UPDATE tb_resource SET health_status = 'ok'", "CHECK"),
        ("UPDATE tb_resource SET suspended = 2", "CHECK"),
        ("UPDATE tb_resource SET desired_spec = '{not json'", "CHECK"),
        ("UPDATE tb_deployment SET spec = '[1,'", "CHECK"),
        ("INSERT INTO tb_deployment (id, identifier, fk_resource, seq, status, to_revision, "
         "\"trigger\", strategy, created_at) VALUES ('x', 'x', 999, 1, 'pending', 'r', 't', 's', "
         "'2026-01-01T00:00:00.000000+00:00')", "FOREIGN KEY"),
        ("INSERT INTO tb_deployment (id, identifier, fk_resource, seq, status, to_revision, "
         "\"trigger\", strategy, created_at) SELECT 'y', 'y', pk_resource, 9, 'done', 'r', 't', "
         "'s', 'now' FROM tb_resource", "CHECK"),
        ("INSERT INTO tb_deployment_step (id, identifier, fk_deployment, seq, action, instance, "
         "status, started_at) SELECT 'z', 'z', pk_deployment, 9, 'a', 'i', 'running', 'now' "
         "FROM tb_deployment", "CHECK"),
        ("DELETE FROM tb_resource", "FOREIGN KEY"),
        ("INSERT INTO tb_webhook_delivery (id, identifier, provider, delivery_id, received_at) "
         "SELECT 'w2', 'w2', provider, delivery_id, received_at FROM tb_webhook_delivery",
         "UNIQUE"),
    ],
)
async def test_constraints(
    store: SQLiteStore, conn: sqlite3.Connection, api: ResourceKey, sql: str, message: str
) -> None:
    await store.record_desired(api, revision="r1", spec_hash="h", spec={}, config_commit=None)
    await store.create_deployment(
        api, from_revision=None, to_revision="r1", config_commit=None, trigger="t", strategy="s"
    )
    await store.record_delivery("github", "d1")
    with pytest.raises(sqlite3.IntegrityError, match=message):
        conn.execute(sql)


async def test_v_resource_status_shows_the_newest_deployment(
    store: SQLiteStore, conn: sqlite3.Connection, api: ResourceKey
) -> None:
    idle = ResourceKey("prod", "Target", "web")
    await store.record_desired(idle, revision="r1", spec_hash="h", spec={}, config_commit=None)
    first = await store.create_deployment(
        api, from_revision=None, to_revision="r1", config_commit=None, trigger="t", strategy="s"
    )
    await store.transition(first.id, IN_PROGRESS)
    await store.transition(first.id, SUCCEEDED)
    second = await store.create_deployment(
        api, from_revision="r1", to_revision="r2", config_commit=None, trigger="t", strategy="s"
    )
    await store.transition(second.id, IN_PROGRESS)
    await store.transition(second.id, FAILED)
    conn.row_factory = sqlite3.Row
    rows = {
        r["identifier"]: r for r in conn.execute("SELECT * FROM v_resource_status")
    }
    assert rows["prod/Service/api"]["last_deployment"] == "prod/Service/api#2"
    assert rows["prod/Service/api"]["last_deployment_status"] == FAILED
    assert rows["prod/Service/api"]["last_deployment_revision"] == "r2"
    after = await store.get_deployment(second.id)
    assert after is not None and after.finished_at is not None
    assert rows["prod/Service/api"]["last_deployment_at"] == after.finished_at.isoformat()
    assert rows["prod/Target/web"]["last_deployment"] is None
    assert rows["prod/Target/web"]["last_deployment_status"] is None


async def test_v_deployment_history_newest_first(
    store: SQLiteStore, conn: sqlite3.Connection, api: ResourceKey
) -> None:
    other = ResourceKey("prod", "Job", "etl")
    made = []
    for key in (api, other, api):
        made.append(await store.create_deployment(
            key, from_revision=None, to_revision="r", config_commit="c", trigger="poll",
            strategy="recreate",
        ))
    await store.transition(made[0].id, IN_PROGRESS)
    await store.transition(made[0].id, SUCCEEDED)
    conn.row_factory = sqlite3.Row
    rows = list(conn.execute("SELECT * FROM v_deployment_history"))
    assert [r["identifier"] for r in rows] == [
        "prod/Service/api#2", "prod/Job/etl#1", "prod/Service/api#1",
    ]
    assert rows[0]["resource"] == "prod/Service/api" and rows[0]["trigger"] == "poll"
    assert rows[2]["status"] == SUCCEEDED
    assert rows[2]["duration_seconds"] is not None and rows[2]["duration_seconds"] >= 0
    assert rows[0]["duration_seconds"] is None
    assert rows[0]["status"] == PENDING


async def test_timestamps_are_iso_utc_with_microseconds(
    store: SQLiteStore, conn: sqlite3.Connection, api: ResourceKey
) -> None:
    d = await store.create_deployment(
        api, from_revision=None, to_revision="r1", config_commit=None, trigger="t", strategy="s"
    )
    await store.transition(d.id, IN_PROGRESS)
    await store.start_step(d.id, "a", "i")
    await store.acquire_lock("l", "o", 10)
    await store.record_delivery("github", "x")
    await store.claim_notice("operator1:json", "commits", "refused", "m1", 60)
    await store.notice_delivered("m1")
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
    values = []
    for table, columns in {
        "tb_resource": ("created_at", "updated_at"),
        "tb_deployment": ("created_at", "started_at"),
        "tb_deployment_event": ("at",),
        "tb_deployment_step": ("started_at",),
        "tb_lock": ("acquired_at", "expires_at"),
        "tb_webhook_delivery": ("received_at",),
        "tb_notification": ("sent_at", "delivered_at"),
        "tb_schema_migration": ("applied_at",),
    }.items():
        for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}"):
            values.extend(row)
    assert values and all(pattern.match(v) for v in values), values


def test_store_pragmas(store: SQLiteStore, tmp_path: Path) -> None:
    assert store.journal_mode == "wal"
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent
    finally:
        conn.close()


async def test_read_queries_use_their_indexes(tmp_path: Path, api: ResourceKey) -> None:
    """Newest-first and crash-recovery reads walk an index, and no stale statistics appear."""
    db = tmp_path / "plans.db"
    s = SQLiteStore(db)
    await s.migrate()
    await s.create_deployment(
        api, from_revision=None, to_revision="r1", config_commit=None, trigger="t", strategy="s"
    )
    await s.list_deployments()
    await s.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).fetchone() == (0,)

        def plan(sql: str) -> str:
            return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))

        newest = plan("SELECT * FROM v_deployment ORDER BY created_at DESC, seq DESC LIMIT 50")
        assert "ix_deployment_created_at" in newest and "TEMP B-TREE" not in newest, newest
        unfinished = plan(
            "SELECT * FROM v_deployment WHERE status IN ('pending', 'in_progress') "
            "ORDER BY created_at, seq"
        )
        assert "ix_deployment_unfinished" in unfinished, unfinished
        per_resource = plan(
            "SELECT * FROM v_deployment WHERE environment = 'prod' AND kind = 'Service' "
            "AND name = 'api' ORDER BY seq DESC LIMIT 50"
        )
        assert "SCAN" not in per_resource, per_resource
        # the plan listing reads an index, not the rows with their documents (a warm diff)
        listing = plan(PLAN_LISTING_SQL)
        assert "COVERING INDEX ix_resource_plan" in listing, listing
    finally:
        conn.close()
