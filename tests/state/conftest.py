"""Fixtures for the state tests: real SQLite files in tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.spec.model import ResourceKey
from reconciler.state.migrations import default_sql_dir
from reconciler.state.sqlite import SQLiteStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "fraisier.db"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A migrated store on a fresh file."""
    s = SQLiteStore(tmp_path / "fraisier.db")
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A private copy of sql/sqlite, free to edit."""
    target = tmp_path / "sql" / "sqlite"
    shutil.copytree(default_sql_dir("sqlite"), target)
    return target


@pytest.fixture
def api() -> ResourceKey:
    return ResourceKey("prod", "Service", "api")
