"""The PostgreSQL/MySQL script splitter: statement ends inside quotes, comments and bodies."""

from __future__ import annotations

import pytest

from reconciler.errors import MigrationError
from reconciler.state.migrations import default_sql_dir, split_sql_script


def test_postgresql_quotes_comments_and_dollar_bodies() -> None:
    script = """-- a comment; with a semicolon
CREATE TABLE "we;ird" (x TEXT DEFAULT 'a;b''c');
/* block; comment */
CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION 'no; way';
    RETURN NEW;
END;
$body$;
SELECT $$x;y$$, 'tail'
"""
    statements = split_sql_script(script, "postgresql")
    assert len(statements) == 3
    assert statements[0].endswith("""CREATE TABLE "we;ird" (x TEXT DEFAULT 'a;b''c')""")
    assert "RETURN NEW;\nEND;\n$body$" in statements[1]
    assert statements[2] == "SELECT $$x;y$$, 'tail'"


def test_mysql_backticks_backslashes_hash_comments_and_delimiter() -> None:
    script = """# hash comment; here
CREATE TABLE `a;b` (x VARCHAR(9) DEFAULT 'it\\'s;');
DELIMITER //
CREATE TRIGGER t BEFORE UPDATE ON `a;b` FOR EACH ROW
BEGIN
    SET NEW.x = 'y;z';
END//
DELIMITER ;
INSERT INTO `a;b` VALUES ('1');
"""
    statements = split_sql_script(script, "mysql")
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'it\\'s;')")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END")
    assert statements[2] == "INSERT INTO `a;b` VALUES ('1')"


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_unterminated_quotes_are_errors(dialect: str) -> None:
    with pytest.raises(MigrationError, match="unterminated"):
        split_sql_script("SELECT 'never closed;", dialect)
    with pytest.raises(MigrationError, match="unterminated"):
        split_sql_script("SELECT 1; /* open", dialect)


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_shipped_migrations_split_into_create_statements(dialect: str) -> None:
    for path in sorted(default_sql_dir(dialect).glob("*.sql")):
        statements = split_sql_script(path.read_text(), dialect)
        assert statements, path
        for statement in statements:
            code = "\n".join(line for line in statement.splitlines()
                             if not line.lstrip().startswith("--"))
            assert code.lstrip().upper().startswith(("CREATE ", "ALTER ", "DROP ", "INSERT ")), (
                path, statement[:80])
