"""Disk full on the state dir of a SQLite store: a real, small tmpfs mounted over the state dir
is filled up (leaving a few different amounts of free space, so the write fails at different
points of the pass). ``reconciler apply`` must fail with a clear error (code + hint, no
traceback), leave an intact database (``PRAGMA integrity_check``), and once space is freed the
next apply converges with nothing lost."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.journal import deployment_ids, journal_problems
from tests.chaos.report import record_trial
from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml
from tests.helpers import need

pytestmark = pytest.mark.timeout(120)
SCENARIO = "disk full on the SQLite state dir"
FREE_BYTES = (0, 4096, 24576, 98304)  # what is left on the state dir when apply runs


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "8m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(where)], capture_output=True, text=True, timeout=30)
    need(mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of ``directory`` up, then give back ``leave`` bytes."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    # unbuffered: a buffered writer keeps the tail of a partial write and raises ENOSPC again
    # when closed, whenever the free space is not a multiple of the chunk
    with filler.open("wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
    with contextlib.suppress(OSError):
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_disk_full_fails_clearly_then_converges(fleet: Fleet) -> None:
    port = free_port()
    with small_tmpfs(fleet.state):
        db = fleet.state / "fraisier.db"
        url = f"sqlite:///{db}"
        fleet.write("api.yaml", service_yaml("api", port, greeting="g0"))
        fleet.commit("g0")
        first = fleet.cli("apply", *fleet.repo_args())
        assert first.returncode == 0, first.stdout + first.stderr
        assert db.exists(), sorted(p.name for p in fleet.state.iterdir())
        failures = 0
        for trial, leave in enumerate(FREE_BYTES, start=1):
            started = time.monotonic()
            greeting = f"g{trial}"
            fleet.write("api.yaml", service_yaml("api", port, greeting=greeting))
            fleet.commit(greeting)
            before = deployment_ids(url)
            filler = fill(fleet.state, leave)
            try:
                full = fleet.cli("apply", *fleet.repo_args())
                err = full.stderr
                assert "Traceback" not in err and "internal error" not in err, err
                if full.returncode == 2:  # the pass could not go on: code and hint
                    failures += 1
                    assert "error[FR300]" in err and "KiB free" in err, err
                    assert "hint: free disk space" in err, err
                elif full.returncode == 1:  # the resource failed on it (engine caught it)
                    failures += 1
                    assert "disk" in full.stdout and "KiB free" in full.stdout, full.stdout
                else:
                    assert full.returncode == 0, (full.returncode, full.stdout, err)
            finally:
                filler.unlink()
            # Checked before anything else writes (a WAL reader needs the -shm file, hence
            # after freeing the space): what the failed apply left behind is intact.
            assert integrity(db) == "ok"
            rerun = fleet.cli("apply", *fleet.repo_args())
            problems = journal_problems(url, before)
            converged = (rerun.returncode == 0
                         and fleet.json("status")["resources"][0]["sync"] == "Synced"
                         and greeting in http_get(port)[1])
            record_trial(SCENARIO, converged, len(problems),
                         note=f"{leave} B free: apply exit {full.returncode}",
                         seconds=time.monotonic() - started)
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            assert converged, fleet.json("status")
            assert problems == [], problems
            assert integrity(db) == "ok"
        assert failures >= 1, "the disk never filled up while applying"
