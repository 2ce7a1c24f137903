"""Fixtures for the state tests: real SQLite files in tmp_path, and throw-away databases on
the real PostgreSQL and MariaDB servers for the backend-parametrised contract suite."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.spec.model import ResourceKey
from reconciler.state import Store, open_store
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


# -- the backend-parametrised contract suite --------------------------------------------------
# (imports local to keep the SQLite fixtures above independent of the server drivers)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    from tests.helpers import need
    from tests.state.backends import available

    name = str(request.param)
    ok, reason = available(name)
    need(ok, reason)
    return name


@pytest.fixture(params=["postgresql", "mysql"])
def server_backend(request: pytest.FixtureRequest) -> str:
    from tests.helpers import need
    from tests.state.backends import available

    name = str(request.param)
    ok, reason = available(name)
    need(ok, reason)
    return name


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on the backend under test."""
    from tests.state.backends import throwaway_url

    with throwaway_url(backend, tmp_path) as url:
        yield url


@pytest.fixture
def server_url(server_backend: str, tmp_path: Path) -> Iterator[str]:
    from tests.state.backends import throwaway_url

    with throwaway_url(server_backend, tmp_path) as url:
        yield url


@pytest.fixture
async def any_store(db_url: str) -> AsyncIterator[Store]:
    """A migrated store on a fresh database of each backend."""
    s = open_store(db_url)
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
async def any_second(db_url: str, any_store: Store) -> AsyncIterator[Store]:
    """Another store (its own connections) on the same database."""
    s = open_store(db_url)
    yield s
    await s.close()


@pytest.fixture
def any_sql_copy(backend: str, tmp_path: Path) -> Path:
    """A private copy of the backend's sql/<dialect> folder, free to edit."""
    target = tmp_path / "sql" / backend
    shutil.copytree(default_sql_dir(backend), target)
    return target
