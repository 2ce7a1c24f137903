"""The migration runner on real SQLite files (and a private copy of sql/sqlite)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import MigrationError, StoreError
from reconciler.state.migrations import (
    MigrationRunner,
    SQLiteMigrationConnection,
    checksum_of,
    default_sql_dir,
    discover,
    split_sqlite_script,
)
from reconciler.state.sqlite import SQLiteStore


def objects(path: Path | str) -> set[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return {
            (kind, name)
            for kind, name in conn.execute(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
        }
    finally:
        conn.close()


def tracking(path: Path | str) -> list[tuple[int, str, str]]:
    """(version, name, checksum) rows of the tracking table."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(
            "SELECT version, name, checksum FROM tb_schema_migration ORDER BY version"
        ))
    finally:
        conn.close()


def test_default_sql_dir_is_the_repo_folder() -> None:
    folder = default_sql_dir("sqlite")
    assert folder.name == "sqlite" and folder.parent.name == "sql"
    assert (folder / "001_initial.sql").is_file()


async def test_migrate_is_idempotent(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    store = SQLiteStore(db_path)
    try:
        pending = await store.migration_status()
        assert [m.applied_at for m in pending] == [None] * len(pending)
        assert (pending[0].version, pending[0].name) == (1, "initial")

        applied = await store.migrate()
        files = discover(default_sql_dir("sqlite"))
        assert [(m.version, m.name, m.checksum) for m in applied] == [
            (f.version, f.name, f.checksum) for f in files
        ]
        assert all(m.applied_at is not None for m in applied)
        schema = objects(db_path)
        assert ("table", "tb_resource") in schema and ("view", "v_resource_status") in schema

        assert await store.migrate() == []
        assert objects(db_path) == schema
        status = await store.migration_status()
        assert [m.version for m in status] == [f.version for f in files]
        assert all(m.applied_at is not None for m in status)
    finally:
        await store.close()
    # a new connection (a new process, say) applies nothing either
    again = SQLiteStore(db_path)
    try:
        assert await again.migrate() == []
    finally:
        await again.close()
    assert len(tracking(db_path)) == len(files)


async def test_new_file_is_pending_then_applied(tmp_path: Path, sql_copy: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite", sql_dir=sql_copy)
    try:
        await store.migrate()
        (sql_copy / "900_add_note.sql").write_text(
            "-- a later release\nALTER TABLE tb_resource ADD COLUMN note TEXT;\n"
            "CREATE INDEX ix_resource_note ON tb_resource (note);\n"
        )
        status = await store.migration_status()
        assert [(m.version, m.applied_at is None) for m in status][-1] == (900, True)
        applied = await store.migrate()
        assert [(m.version, m.name) for m in applied] == [(900, "add_note")]
        assert ("index", "ix_resource_note") in objects(tmp_path / "db.sqlite")
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_edited_applied_file_is_refused(tmp_path: Path, sql_copy: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = SQLiteStore(db, sql_dir=sql_copy)
    try:
        await store.migrate()
        initial = sql_copy / "001_initial.sql"
        initial.write_text(initial.read_text() + "\n-- sneaky edit\n")
        (sql_copy / "900_later.sql").write_text("CREATE TABLE tb_later (x INTEGER);")
        with pytest.raises(MigrationError, match=r"001_initial\.sql") as info:
            await store.migrate()
        assert "changed after it was applied" in str(info.value)
        with pytest.raises(MigrationError, match=r"001_initial\.sql"):
            await store.migration_status()
        # nothing after the edited file was applied either
        assert ("table", "tb_later") not in objects(db)
        assert 900 not in [v for v, _, _ in tracking(db)]
    finally:
        await store.close()


def test_crlf_checkout_is_not_an_edit() -> None:
    assert checksum_of("CREATE TABLE a (x);\r\nSELECT 1;\r\n") == checksum_of(
        "CREATE TABLE a (x);\nSELECT 1;\n"
    )


async def test_failing_migration_leaves_nothing_behind(tmp_path: Path, sql_copy: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = SQLiteStore(db, sql_dir=sql_copy)
    try:
        await store.migrate()
        before = objects(db)
        shipped = [v for v, _, _ in tracking(db)]
        bad = sql_copy / "900_broken.sql"
        bad.write_text(
            "CREATE TABLE tb_half (pk_half INTEGER PRIMARY KEY, id TEXT);\n"
            "CREATE INDEX ix_half ON tb_half (id);\n"
            "INSERT INTO tb_half (id) VALUES ('row');\n"
            "ALTER TABLE tb_resource ADD COLUMN half TEXT;\n"
            "INSERT INTO tb_does_not_exist VALUES (1);\n"
        )
        with pytest.raises(MigrationError, match=r"900_broken\.sql") as info:
            await store.migrate()
        assert "statement 5 of 5" in str(info.value)
        assert objects(db) == before  # no table, no index, no column
        conn = sqlite3.connect(db)
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(tb_resource)")}
        finally:
            conn.close()
        assert "half" not in columns
        assert [v for v, _, _ in tracking(db)] == shipped
        # the store still works, and the fixed file applies
        assert await store.record_delivery("github", "after-failure") is True
        bad.write_text("CREATE TABLE tb_half (pk_half INTEGER PRIMARY KEY, id TEXT);\n")
        assert [m.name for m in await store.migrate()] == ["broken"]
    finally:
        await store.close()


def test_first_migration_failing_on_fresh_database(tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE t1 (x);\nCREATE TABLE t1 (x);\n")
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        with pytest.raises(MigrationError, match=r"001_a\.sql"):
            MigrationRunner(SQLiteMigrationConnection(conn), folder).migrate()
        assert not conn.in_transaction
    finally:
        conn.close()
    assert objects(tmp_path / "db.sqlite") == {("table", "tb_schema_migration")}
    assert tracking(tmp_path / "db.sqlite") == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("1_short.sql", "NNN_name.sql"), ("001-dash.sql", "NNN_name.sql"), ("abc.sql", "NNN_name")],
)
def test_misnamed_files_are_refused(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "001_ok.sql").write_text("SELECT 1;")
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message):
        discover(tmp_path)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="also used by"):
        discover(tmp_path)


def test_out_of_order_pending_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE a (x);")
    (folder / "003_c.sql").write_text("CREATE TABLE c (x);")
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        runner = MigrationRunner(SQLiteMigrationConnection(conn), folder)
        assert [m.version for m in runner.migrate()] == [1, 3]
        (folder / "002_b.sql").write_text("CREATE TABLE b (x);")
        with pytest.raises(MigrationError, match=r"002_b\.sql"):
            runner.migrate()
    finally:
        conn.close()


def test_applied_version_without_file_is_listed(tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE a (x);")
    (folder / "002_b.sql").write_text("CREATE TABLE b (x);")
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        runner = MigrationRunner(SQLiteMigrationConnection(conn), folder)
        runner.migrate()
        (folder / "002_b.sql").unlink()  # an older release reading a newer database
        status = runner.status()
        assert [(m.version, m.name, m.applied_at is not None) for m in status] == [
            (1, "a", True), (2, "b", True),
        ]
        assert runner.pending() == []
    finally:
        conn.close()


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        discover(tmp_path / "nope")


def test_connection_must_be_in_manual_transaction_mode(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite")  # default isolation_level ""
    try:
        with pytest.raises(MigrationError):
            SQLiteMigrationConnection(conn)
    finally:
        conn.close()


def test_split_handles_strings_comments_and_trigger_bodies() -> None:
    script = """
    -- leading comment; with a semicolon
    CREATE TABLE t (a TEXT DEFAULT 'x;y', "we;ird" TEXT); /* block; comment */
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET a = 'in;trigger';
        SELECT 1;
    END;
    -- only a comment here;
    INSERT INTO t (a) VALUES ('it''s; fine')
    """
    statements = split_sqlite_script(script)
    assert len(statements) == 3
    assert statements[0].endswith("""TEXT DEFAULT 'x;y', "we;ird" TEXT);""")
    assert statements[1].startswith("/* block; comment */")  # harmless leading comment
    assert statements[1].rstrip().endswith("END;")
    assert statements[2].endswith("VALUES ('it''s; fine')")
    conn = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            conn.execute(statement)
        assert conn.execute("SELECT a FROM t").fetchone() == ("in;trigger",)
    finally:
        conn.close()


def test_split_refuses_an_unterminated_statement() -> None:
    with pytest.raises(MigrationError, match="unterminated"):
        split_sqlite_script("CREATE TABLE t (a TEXT DEFAULT 'oops);")


def test_initial_schema_splits_into_real_statements() -> None:
    sql = (default_sql_dir("sqlite") / "001_initial.sql").read_text()
    statements = split_sqlite_script(sql)
    triggers = [s for s in statements if "CREATE TRIGGER" in s]
    assert len(triggers) == 1 and triggers[0].endswith("END;")
    assert all(sqlite3.complete_statement(s) for s in statements)


async def test_store_without_schema_says_to_migrate(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "empty.db")
    try:
        with pytest.raises(StoreError, match="schema is missing"):
            await store.list_resources()
    finally:
        await store.close()


def test_renamed_applied_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE a (x);")
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        runner = MigrationRunner(SQLiteMigrationConnection(conn), folder)
        runner.migrate()
        (folder / "001_a.sql").rename(folder / "001_renamed.sql")
        with pytest.raises(MigrationError, match=r"001_renamed\.sql.*applied as 'a'"):
            runner.migrate()
    finally:
        conn.close()


async def test_step_table_rebuild_keeps_rows(tmp_path: Path, sql_copy: Path) -> None:
    """003 rebuilds tb_deployment_step: rows, constraints, cascade and view survive it."""
    from reconciler.spec.model import ResourceKey

    rebuild = sql_copy / "003_step_interrupted.sql"
    # 003 and every later file are held back (a pending file older than an applied one is
    # refused), then put back together
    later = sorted(p for p in sql_copy.glob("*.sql") if p.name >= rebuild.name)
    held_back = {p: p.read_text() for p in later}
    for p in later:
        p.unlink()
    db = tmp_path / "db.sqlite"
    store = SQLiteStore(db, sql_dir=sql_copy)
    try:
        await store.migrate()
        key = ResourceKey("prod", "Service", "api")
        d = await store.create_deployment(
            key, from_revision=None, to_revision="r1", config_commit=None, trigger="t",
            strategy="s",
        )
        s1 = await store.start_step(d.id, "upload", "h1", detail="ü")
        await store.finish_step(s1, "succeeded")
        s2 = await store.start_step(d.id, "restart", "h1")
        with pytest.raises(StoreError):  # not allowed before 003
            await store.finish_step(s2, "interrupted")
        before = await store.get_deployment(d.id)

        for p, text in held_back.items():
            p.write_text(text)
        assert [m.version for m in await store.migrate()] == [int(p.name[:3]) for p in later]
        after = await store.get_deployment(d.id)
        assert after == before
        await store.finish_step(s2, "interrupted", "reconciler stopped")
        s3 = await store.start_step(d.id, "health", "h1")
        final = await store.get_deployment(d.id)
        assert final is not None
        assert [(s.seq, s.status) for s in final.steps] == [
            (1, "succeeded"), (2, "interrupted"), (3, "started"),
        ]
        assert final.steps[2].id == s3
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        fks = conn.execute("PRAGMA foreign_key_list(tb_deployment_step)").fetchall()
        assert [(fk[2], fk[3], fk[4], fk[6]) for fk in fks] == [
            ("tb_deployment", "fk_deployment", "pk_deployment", "CASCADE")
        ]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE tb_deployment_step SET status = 'bogus'")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("UPDATE tb_deployment_step SET seq = 1")
        assert ("table", "tb_deployment_step_new") not in objects(db)
    finally:
        conn.close()


def rebuild_deployment_table_sql(db: Path, directive: bool) -> str:
    """A migration rebuilding tb_deployment (a parent with ON DELETE CASCADE children), the
    way a future release would to add a status to its CHECK: SQLite's documented procedure."""
    conn = sqlite3.connect(db)
    try:
        (table_sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tb_deployment'"
        ).fetchone()
        dependents = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
            "((type IN ('index', 'trigger') AND tbl_name = 'tb_deployment') OR "
            "(type = 'view' AND sql LIKE '%tb_deployment %'))"
        ).fetchall()
    finally:
        conn.close()
    new_table = table_sql.replace("CREATE TABLE tb_deployment", "CREATE TABLE tb_deployment_new")
    new_table = new_table.replace("'cancelled'))", "'cancelled', 'superseded'))", 1)
    assert "superseded" in new_table
    views = [(name, sql) for kind, name, sql in dependents if kind == "view"]
    others = [sql for kind, _, sql in dependents if kind != "view"]
    parts = ["-- fraisier: foreign_keys=off"] if directive else []
    parts += [f"DROP VIEW {name};" for name, _ in views]
    parts += [
        new_table + ";",
        "INSERT INTO tb_deployment_new SELECT * FROM tb_deployment;",
        "DROP TABLE tb_deployment;",
        "ALTER TABLE tb_deployment_new RENAME TO tb_deployment;",
    ]
    parts += [sql + ";" for sql in others]
    parts += [sql + ";" for _, sql in views]
    return "\n".join(parts) + "\n"


async def journal_of(store: SQLiteStore) -> list[tuple[str, list[str], list[str]]]:
    return [
        (d.identifier, [e.status for e in d.events], [s.action for s in d.steps])
        for d in await store.list_deployments(limit=0)
    ]


@pytest.mark.parametrize("directive", [True, False], ids=["foreign_keys=off", "no-directive"])
async def test_rebuilding_a_parent_table(tmp_path: Path, sql_copy: Path, directive: bool) -> None:
    from reconciler.spec.model import ResourceKey

    db = tmp_path / "db.sqlite"
    store = SQLiteStore(db, sql_dir=sql_copy)
    try:
        await store.migrate()
        key = ResourceKey("prod", "Service", "api")
        d = await store.create_deployment(
            key, from_revision=None, to_revision="r1", config_commit=None, trigger="t",
            strategy="s",
        )
        await store.transition(d.id, "in_progress")
        await store.finish_step(await store.start_step(d.id, "upload", "h1"), "succeeded")
        before = await journal_of(store)
        assert before == [("prod/Service/api#1", ["pending", "in_progress"], ["upload"])]

        (sql_copy / "900_rebuild_deployment.sql").write_text(
            rebuild_deployment_table_sql(db, directive)
        )
        await store.migrate()
        after = await journal_of(store)
        if directive:
            assert after == before  # children kept
        else:
            # what the directive prevents: DROP TABLE's implicit DELETE cascaded to the journal
            assert after == [("prod/Service/api#1", [], [])]
        # the rebuilt table keeps its trigger and foreign-key enforcement is back on
        with pytest.raises(StoreError):
            await store.transition(d.id, "pending")
        await store.transition(d.id, "succeeded")
        raw = sqlite3.connect(db)
        try:
            raw.execute("PRAGMA foreign_keys = ON")
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
            names = {n for (n,) in raw.execute("SELECT name FROM sqlite_master")}
            assert {"tr_deployment_status_transition", "ix_deployment_unfinished",
                    "v_deployment", "v_resource_status"} <= names
            (table_sql,) = raw.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'tb_deployment'"
            ).fetchone()
            assert "superseded" in table_sql
        finally:
            raw.close()
    finally:
        await store.close()


def test_foreign_keys_off_refuses_dangling_rows_and_restores_enforcement(tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_parent_child.sql").write_text(
        "CREATE TABLE tb_parent (pk_parent INTEGER PRIMARY KEY);\n"
        "CREATE TABLE tb_child (pk_child INTEGER PRIMARY KEY,\n"
        "    fk_parent INTEGER NOT NULL REFERENCES tb_parent (pk_parent));\n"
    )
    (folder / "002_dangling.sql").write_text(
        "-- fraisier: foreign_keys=off\n"
        "INSERT INTO tb_child (fk_parent) VALUES (42);\n"
    )
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        runner = MigrationRunner(SQLiteMigrationConnection(conn), folder)
        with pytest.raises(MigrationError, match=r"002_dangling\.sql: leaves 1 row"):
            runner.migrate()
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM tb_child").fetchone() == (0,)
        assert [m.version for m in runner.status() if m.applied_at] == [1]
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            conn.execute("INSERT INTO tb_child (fk_parent) VALUES (42)")
    finally:
        conn.close()


def test_foreign_keys_directive_parsing(tmp_path: Path) -> None:
    (tmp_path / "001_on.sql").write_text("-- mentions fraisier: foreign_keys=off inline\n")
    (tmp_path / "002_off.sql").write_text("SELECT 1;\n--  fraisier:foreign_keys = OFF \n")
    on, off = discover(tmp_path)
    assert on.foreign_keys is True
    assert off.foreign_keys is False


@given(
    values=st.lists(st.text(alphabet=st.sampled_from("ab;'\"-*/\n éЖ"), max_size=12),
                    min_size=1, max_size=6),
    separators=st.lists(st.sampled_from(["\n", " ", "\n-- c;o'mment\n", "/* ;'\" */", "\t"]),
                        min_size=6, max_size=6),
)
@settings(max_examples=150, deadline=None)
def test_split_keeps_every_literal_intact(values: list[str], separators: list[str]) -> None:
    statements = [
        "INSERT INTO t (v) VALUES ('" + v.replace("'", "''") + "');" for v in values
    ]
    script = "CREATE TABLE t (v TEXT);" + "".join(
        sep + stmt for sep, stmt in zip(separators, statements, strict=False)
    )
    parts = split_sqlite_script(script)
    assert len(parts) == len(values) + 1
    conn = sqlite3.connect(":memory:")
    try:
        for part in parts:
            conn.execute(part)
        assert [v for (v,) in conn.execute("SELECT v FROM t ORDER BY rowid")] == values
    finally:
        conn.close()
