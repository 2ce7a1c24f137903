"""Two real processes writing one SQLite file at once (the daemon plus a CLI command)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler.spec.model import ResourceKey
from reconciler.state.migrations import default_sql_dir, discover
from reconciler.state.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[2]
N = 150  # iterations per process, ~10 write transactions each


@pytest.mark.timeout(120)
def test_two_processes_no_lost_writes_no_lock_errors(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.state.writer_process", url, tag, str(N), str(go)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag in ("daemon", "cli")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                proc.kill()
                _, err = proc.communicate(timeout=10)
                pytest.fail(f"writer did not start: {line!r}\n{err}")
        started = time.monotonic()
        go.touch()
        results = [proc.communicate(timeout=100) for proc in procs]
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    diagnostics = "\n".join(
        f"--- {tag}: exit {proc.returncode}\n{out}\n{err}"
        for tag, proc, (out, err) in zip(("daemon", "cli"), procs, results, strict=True)
    )
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, diagnostics
        assert "locked" not in err and "busy" not in err.lower(), diagnostics
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    print(f"2 processes x {N} iterations in {elapsed:.2f} s; {summaries}")

    # migrations: applied exactly once between the two racing processes
    files = discover(default_sql_dir("sqlite"))
    assert sum(s["migrated"] for s in summaries) == len(files), summaries

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM tb_schema_migration").fetchone() == (len(files),)
        rows = conn.execute(
            "SELECT seq, identifier, status, \"trigger\" FROM v_deployment "
            "WHERE name = 'shared' ORDER BY seq"
        ).fetchall()
        # every deployment of both processes, numbered 1..2N with no gap and no duplicate
        assert [r[0] for r in rows] == list(range(1, 2 * N + 1))
        assert [r[1] for r in rows] == [f"prod/Service/shared#{i}" for i in range(1, 2 * N + 1)]
        assert {r[2] for r in rows} == {"succeeded"}
        assert sorted(r[3] for r in rows) == ["cli"] * N + ["daemon"] * N
        # the two really ran at the same time: their deployments interleave
        switches = sum(1 for a, b in itertools.pairwise(rows) if a[3] != b[3])
        print(f"deployment order switched process {switches} times")
        assert switches >= 2, (switches, elapsed, summaries)
        events = conn.execute(
            "SELECT deployment, COUNT(*) FROM v_deployment_event GROUP BY deployment"
        ).fetchall()
        assert len(events) == 2 * N and {c for _, c in events} == {3}
        assert conn.execute("SELECT COUNT(*) FROM tb_deployment_step WHERE status = 'succeeded'"
                            ).fetchone() == (2 * N,)
        for tag in ("daemon", "cli"):
            assert conn.execute(
                "SELECT desired_revision FROM v_resource WHERE name = ?", (f"own-{tag}",)
            ).fetchone() == (f"{tag}-{N - 1}",)
        # each shared delivery id was new to exactly one process
        assert sum(s["shared_deliveries"] for s in summaries) == N
        assert conn.execute("SELECT COUNT(*) FROM tb_webhook_delivery").fetchone() == (3 * N,)
        # the lease excluded the other process: no read-modify-write was lost
        wins = sum(s["lock_wins"] for s in summaries)
        assert wins > 0
        assert conn.execute(
            "SELECT desired_revision FROM v_resource WHERE name = 'counter'"
        ).fetchone() == (str(wins),)
    finally:
        conn.close()


async def test_reader_does_not_block_writer(store: SQLiteStore, api: ResourceKey) -> None:
    """WAL: a long read transaction in another connection does not stop the store writing."""
    await store.record_desired(api, revision="r1", spec_hash="h", spec={}, config_commit=None)
    reader = sqlite3.connect(store.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT desired_revision FROM v_resource").fetchone() == ("r1",)
        await asyncio.wait_for(
            store.record_desired(api, revision="r2", spec_hash="h2", spec={},
                                 config_commit=None),
            timeout=5,
        )
        # the reader keeps its snapshot until it ends its transaction
        assert reader.execute("SELECT desired_revision FROM v_resource").fetchone() == ("r1",)
        reader.execute("COMMIT")
        assert reader.execute("SELECT desired_revision FROM v_resource").fetchone() == ("r2",)
    finally:
        reader.close()


async def test_writer_waits_for_another_writer(store: SQLiteStore, api: ResourceKey) -> None:
    """A write lock held elsewhere delays the store (busy_timeout) instead of failing it."""
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO tb_webhook_delivery (id, identifier, provider, delivery_id, "
                      "received_at) VALUES ('a', 'a', 'github', 'held', "
                      "'2026-01-01T00:00:00.000000+00:00')")
        write = asyncio.ensure_future(store.record_delivery("github", "held"))
        await asyncio.sleep(0.3)
        assert not write.done()  # waiting for the lock, event loop still free
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, timeout=5) is False  # sees the committed row
    finally:
        other.close()


async def test_event_loop_stays_responsive_during_lock_wait(
    store: SQLiteStore, api: ResourceKey
) -> None:
    other = sqlite3.connect(store.path, isolation_level=None)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    try:
        other.execute("BEGIN IMMEDIATE")
        tick_task = asyncio.create_task(ticker())
        write = asyncio.create_task(
            store.record_desired(api, revision="r", spec_hash="h", spec={}, config_commit=None)
        )
        await asyncio.sleep(0.5)
        other.execute("ROLLBACK")
        await asyncio.wait_for(write, timeout=5)
        tick_task.cancel()
    finally:
        other.close()
    assert ticks >= 20  # ~50 expected; a blocked loop would give ~0


@pytest.mark.timeout(60)
def test_opening_while_another_connection_writes_waits_for_it(tmp_path: Path) -> None:
    """A fresh database is switched to WAL on open, which needs it to itself; SQLite refuses
    that at once, without its busy wait, while another connection holds a write transaction
    (a CI run's two writer processes opening one new database together failed so)."""
    db = tmp_path / "fresh.db"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (a)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        store = SQLiteStore(db)
    finally:
        release.join()
        other.close()
    try:
        assert store.journal_mode == "wal"
    finally:
        asyncio.run(store.close())
