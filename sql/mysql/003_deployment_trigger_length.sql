-- A deployment's trigger now names its actor (webhook:github:<delivery id>, cli:<user>@<host>),
-- longer than the 64 characters of 001. One ALTER per file (sql/mysql/README.md: MySQL commits
-- DDL implicitly, so a file of one statement either happened or not). PostgreSQL and SQLite
-- store TEXT already.
ALTER TABLE tb_deployment MODIFY `trigger` VARCHAR(255) NOT NULL;
