"""Two `reconciler daemon --ha` replicas on one server database split a fleet, never deploy a
resource twice, and a SIGKILLed replica's share is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for
from tests.helpers import need

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["postgresql", "mysql"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from tests.state.backends import available, throwaway_url

    ok, reason = available(str(request.param))
    need(ok, reason)
    with throwaway_url(str(request.param), tmp_path) as url:
        yield url


def greeting(port: int) -> str | None:
    try:
        return str(json.loads(http_get(port)[1])["greeting"])
    except (OSError, ValueError, KeyError):
        return None


def start(fleet: Fleet, db: str, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--db", db, "--state-dir", str(state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{free_port()}", "--interval", "2s",
         "--ha", "--shard-ttl", "3s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_replicas_split_the_fleet_and_take_over(fleet: Fleet, server_db: str,
                                                tmp_path: Path) -> None:
    ports = {f"svc{i}": free_port() for i in range(6)}
    for name, port in ports.items():
        fleet.write(f"{name}.yaml", service_yaml(name, port, greeting="one"))
    fleet.commit()
    # Two replicas on one host share the release root (the Target's root); each its own state.
    a = start(fleet, server_db, tmp_path / "state-a")
    b = start(fleet, server_db, tmp_path / "state-b")
    try:
        wait_for(lambda: all(greeting(p) == "one" for p in ports.values()), timeout=90,
                 step=0.2)
        db = ["--db", server_db]

        def history(name: str) -> list[dict[str, object]]:
            out = fleet.cli(*db, "history", name, "-o", "json")
            return list(json.loads(out.stdout)) if out.stdout else []

        for name in ports:
            assert [d["status"] for d in history(name)] == ["succeeded"], name
        # SIGKILL one replica; a new commit still reaches every service.
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        for name, port in ports.items():
            fleet.write(f"{name}.yaml", service_yaml(name, port, greeting="two"))
        fleet.commit("two")
        wait_for(lambda: all(greeting(p) == "two" for p in ports.values()), timeout=90,
                 step=0.2)
        for name in ports:
            statuses = [d["status"] for d in history(name)]
            assert statuses.count("succeeded") == 2 and "in_progress" not in statuses, statuses
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
