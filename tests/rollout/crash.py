"""SIGKILL the daemon at chosen journal steps of a rollout, restart it, and check it converges.

A trial: commit a new revision, start `reconciler daemon`, wait until the rollout has journaled
``k`` steps, SIGKILL the daemon, start it again, and wait until the fleet serves the revision (or,
for a revision made to fail, is rolled back to the last good one). The journal is then checked:
no deployment left pending/in progress, no step left open, every interrupted deployment closed
as cancelled and followed by a resuming one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Fleet, free_port

LOG_DIR = Path("/var/tmp/fraisier-crash")  # daemon logs of the trials, kept for a post-mortem
TERMINAL = {"succeeded", "failed", "rolled_back", "rollback_failed", "cancelled"}


@dataclass
class Trial:
    scenario: str
    kill_at: int
    killed_during: str
    converged: bool
    lost: int
    seconds: float


@dataclass
class CrashHarness:
    fleet: Fleet
    scenario: str
    write_service: Callable[[str, bool], None]  # (greeting, failing)
    live_greetings: Callable[[], set[str]]
    trials: list[Trial] = field(default_factory=list)
    good: str | None = None
    n: int = 0

    @property
    def db(self) -> Path:
        return self.fleet.state / "fraisier.db"

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
            return list(conn.execute(sql))

    def steps(self) -> int:
        try:
            return int(self._query("SELECT count(*) FROM tb_deployment_step")[0][0])
        except (sqlite3.OperationalError, IndexError):
            return 0

    def open_step(self) -> str:
        try:
            rows = self._query("SELECT action, instance FROM tb_deployment_step "
                               "WHERE finished_at IS NULL ORDER BY pk_deployment_step DESC")
        except sqlite3.OperationalError:
            return "?"
        return f"{rows[0][0]}@{rows[0][1]}" if rows else "between steps"

    def daemon(self) -> subprocess.Popen[bytes]:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() else "-" for c in self.scenario)
        log = open(LOG_DIR / f"{name}.log", "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(self.fleet.state),
             "daemon", *self.fleet.repo_args(), "--interval", "2s", "--heal-interval", "1h",
             "--listen", f"127.0.0.1:{free_port()}"],
            cwd=self.fleet.repo, stdout=log, stderr=log)

    def settled(self, greeting: str, failing: bool) -> bool:
        rows = self._query("SELECT applied_revision, desired_revision, last_result "
                           "FROM tb_resource WHERE kind = 'Service' AND deleted = 0")
        open_deps = self._query("SELECT count(*) FROM tb_deployment "
                                "WHERE status IN ('pending', 'in_progress')")
        if not rows or open_deps[0][0]:
            return False
        applied, desired, result = rows[0]
        want = self.good if failing else greeting
        if failing:
            ok = result == "rolled_back" and applied != desired
        else:
            ok = result == "succeeded" and applied == desired
        return ok and self.live_greetings() == {want}

    def lost_records(self) -> int:
        """Journal contradictions: open deployments or steps, cancelled ones without a reason."""
        bad = self._query("SELECT count(*) FROM tb_deployment WHERE status IN "
                          "('pending', 'in_progress')")[0][0]
        bad += self._query("SELECT count(*) FROM tb_deployment_step "
                           "WHERE finished_at IS NULL")[0][0]
        bad += self._query("SELECT count(*) FROM tb_deployment d WHERE d.status = 'cancelled' "
                           "AND NOT EXISTS (SELECT 1 FROM tb_deployment_event e WHERE "
                           "e.fk_deployment = d.pk_deployment AND (e.message LIKE "
                           "'%interrupted%' OR e.message LIKE '%stopped at%'))")[0][0]
        return int(bad)

    def baseline(self, greeting: str = "v0") -> None:
        self.write_service(greeting, False)
        self.fleet.commit(greeting)
        proc = self.fleet.cli("apply", *self.fleet.repo_args(), timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.good = greeting

    def trial(self, kill_at: int, *, failing: bool = False, timeout: float = 90) -> Trial:
        self.n += 1
        greeting = f"{self.scenario}-{self.n}"
        self.write_service(greeting, failing)
        self.fleet.commit(greeting)
        before = self.steps()
        started = time.monotonic()
        first = self.daemon()
        try:
            deadline = time.monotonic() + timeout
            while self.steps() < before + kill_at and time.monotonic() < deadline:
                if self.settled(greeting, failing):
                    break  # finished before step k: killed after the rollout instead
                time.sleep(0.02)
            during = self.open_step()
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        second = self.daemon()
        try:
            deadline = time.monotonic() + timeout
            converged = False
            while time.monotonic() < deadline:
                if self.settled(greeting, failing):
                    converged = True
                    break
                time.sleep(0.2)
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(timeout=30)
            except subprocess.TimeoutExpired:
                second.kill()
        if converged and not failing:
            self.good = greeting
        trial = Trial(self.scenario, kill_at, during, converged, self.lost_records(),
                      round(time.monotonic() - started, 1))
        self.trials.append(trial)
        return trial
