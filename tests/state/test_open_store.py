"""open_store URLs, default locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.errors import StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state import (
    default_db_url,
    default_state_dir,
    open_store,
    resolve_db_url,
    sqlite_path,
)
from reconciler.state.sqlite import SQLiteStore


async def test_absolute_url_creates_parent_dirs(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "state.db"
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")
    store = open_store(url)
    try:
        assert isinstance(store, SQLiteStore)
        assert store.url == url
        await store.migrate()
        await store.record_desired(
            ResourceKey("default", "Job", "j"), revision="r", spec_hash="h", spec={},
            config_commit=None,
        )
    finally:
        await store.close()
    assert target.is_file()


async def test_relative_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel/dir/state.db")
    try:
        await store.migrate()
    finally:
        await store.close()
    assert (tmp_path / "rel" / "dir" / "state.db").is_file()


async def test_memory_url() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        await store.migrate()
        assert await store.record_delivery("github", "1") is True
        assert await store.record_delivery("github", "1") is False
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "cls"),
    [("postgresql://fraisier:s3cret@127.0.0.1/fraisier", "PostgresStore"),
     ("postgres://u:pw@h/db", "PostgresStore"),
     ("mysql://root@127.0.0.1/test", "MySQLStore"),
     ("mariadb://u:pw@h:3307/db", "MySQLStore")],
)
async def test_server_urls_pick_their_backend_without_connecting(url: str, cls: str) -> None:
    store = open_store(url)  # lazy: nothing listens on host "h"
    try:
        assert type(store).__name__ == cls
        assert store.url == url
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1", "mysql://u@h:notaport/db",
                                 "postgresql://u@h/db?bogus_option=1"])
def test_bad_server_urls(url: str) -> None:
    with pytest.raises(StoreError):
        open_store(url)


@pytest.mark.parametrize("url", ["redis://x", "state.db", "sqlite://relative.db", "sqlite:///"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreError):
        open_store(url)


def test_unwritable_parent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create"):
        open_store(f"sqlite:///{blocker}/sub/state.db")


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite:///rel/x.db") == "rel/x.db"


def test_default_db_url_round_trips(tmp_path: Path) -> None:
    url = default_db_url(tmp_path)
    assert url == f"sqlite:///{tmp_path}/fraisier.db"
    assert sqlite_path(url) == str(tmp_path / "fraisier.db")
    assert default_db_url(Path("state")) == "sqlite:///state/fraisier.db"


def test_default_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECONCILER_STATE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/from-systemd:/var/lib/second")
    assert default_state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("RECONCILER_STATE_DIR")
    assert default_state_dir() == Path("/var/lib/from-systemd")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/fraisier")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # an ordinary user
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "fraisier"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # XDG requires absolute paths
    assert default_state_dir() == Path.home() / ".local" / "state" / "fraisier"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path.home() / ".local" / "state" / "fraisier"


def test_resolve_db_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECONCILER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("RECONCILER_DB", raising=False)
    assert resolve_db_url() == default_db_url(tmp_path)
    monkeypatch.setenv("RECONCILER_DB", "sqlite:///env.db")
    assert resolve_db_url() == "sqlite:///env.db"
    assert resolve_db_url("sqlite:///flag.db") == "sqlite:///flag.db"


async def test_retry_window_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_DB_RETRY_SECONDS", "2.5")
    store = open_store("postgresql://u@h/db")
    try:
        assert store.retry_seconds == 2.5  # type: ignore[attr-defined]
    finally:
        await store.close()
    monkeypatch.setenv("RECONCILER_DB_RETRY_SECONDS", "soon")
    with pytest.raises(StoreError, match="not a number"):
        open_store("mysql://u@h/db")


async def test_sqlite_synchronous_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WAL with synchronous=NORMAL by default (no fsync per commit); FULL on request."""

    async def mode(name: str) -> int:
        store = open_store(f"sqlite:///{tmp_path / name}")
        try:
            assert isinstance(store, SQLiteStore)
            row = store._executor.submit(
                lambda: store._conn.execute("PRAGMA synchronous").fetchone()).result()
            return int(row[0])
        finally:
            await store.close()

    assert await mode("a.db") == 1  # NORMAL
    monkeypatch.setenv("RECONCILER_SQLITE_SYNC", "full")
    assert await mode("b.db") == 2  # FULL
    monkeypatch.setenv("RECONCILER_SQLITE_SYNC", "sometimes")
    with pytest.raises(StoreError, match="RECONCILER_SQLITE_SYNC"):
        await mode("c.db")
