"""Issue 16, problem 8: state files never take the process umask. Outside the systemd unit
(``UMask=0077``) a reconciler started from a shell (umask 022) or a container entrypoint
(sometimes 000) used to leave its state dir 0755 and its SQLite database and the services' logs
0644 (0666 under umask 000): anyone on the host could read deployment errors, secrets echoed in
service output, the git mirror. Now: state dir 0700; database, -wal, -shm and logs 0600.

Real CLI and daemon processes under umask 022 and 000, a real git repo, a real local fleet.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for
from tests.e2e.conftest import fleet as fleet

ROOT = Path(__file__).resolve().parents[2]
UMASKS = [0o022, 0o000]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def with_umask(value: int) -> Callable[[], None]:
    def set_umask() -> None:
        os.umask(value)

    return set_umask


def cli(fleet: Fleet, umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), *args],
        capture_output=True, text=True, timeout=120, cwd=fleet.repo,
        preexec_fn=with_umask(umask))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask{u:03o}")
def test_apply_creates_owner_only_state_and_logs(fleet: Fleet, umask: int) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, extra_env='\n    TOKEN: "t0k3n"'))
    fleet.write("job.yaml", """apiVersion: fraisier.dev/v1
kind: Job
metadata: {name: migrate}
spec:
  target: local
  source: {path: app}
  command: [python3, job.py]
  env: {MSG: "job output with a secret", CODE: "0"}
  timeout: 30s
""")
    fleet.commit()
    out = cli(fleet, umask, "apply", *fleet.repo_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert http_get(port)[0] == 200

    assert mode(fleet.state) == 0o700
    assert mode(fleet.state / "fraisier.db") == 0o600
    service_log = fleet.root / "default" / "api" / "logs" / "api.log"
    job_log = fleet.root / "default" / "migrate.job" / "logs" / "migrate.job.log"
    assert "job output with a secret" in job_log.read_text()
    for log in (service_log, job_log):
        assert mode(log) == 0o600, log
        assert mode(log.parent) == 0o700, log.parent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask{u:03o}")
def test_daemon_database_wal_and_shm_are_owner_only(fleet: Fleet, umask: int) -> None:
    """The daemon keeps the database open: its -wal and -shm files exist while it runs."""
    fleet.commit("empty fleet but a Target")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{port}", "--interval", "1h"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=fleet.repo,
        preexec_fn=with_umask(umask))
    try:
        def ready() -> bool:
            try:
                return http_get(port, "/readyz")[0] == 200
            except OSError:  # not listening yet
                assert proc.poll() is None, proc.communicate()[1]
                return False

        wait_for(ready, timeout=60)
        db = fleet.state / "fraisier.db"
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()
        assert (mode(fleet.state), mode(db), mode(wal), mode(shm)) == (
            0o700, 0o600, 0o600, 0o600)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.timeout(60)
def test_an_older_state_dir_is_tightened(tmp_path: Path) -> None:
    """A state dir and database an older version left 0755/0644 are made owner-only; a
    --db in an existing, shared working folder does not change that folder."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    db = state / "fraisier.db"
    db.touch()
    db.chmod(0o644)
    wal = Path(f"{db}-wal")
    wal.write_bytes(b"")
    wal.chmod(0o644)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), "db",
                           "migrate"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          preexec_fn=with_umask(0o022))
    assert proc.returncode == 0, proc.stderr
    assert (mode(state), mode(db)) == (0o700, 0o600)
    assert not wal.exists() or mode(wal) == 0o600

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state),
                           "--db", "sqlite:///here.db", "db", "migrate"],
                          capture_output=True, text=True, timeout=60, cwd=shared,
                          preexec_fn=with_umask(0o000))
    assert proc.returncode == 0, proc.stderr
    assert mode(shared) == 0o755 and mode(shared / "here.db") == 0o600
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state),
                           "--db", f"sqlite:///{tmp_path}/new/sub/x.db", "db", "migrate"],
                          capture_output=True, text=True, timeout=60, cwd=shared,
                          preexec_fn=with_umask(0o000))
    assert proc.returncode == 0, proc.stderr
    assert mode(tmp_path / "new") == 0o700 and mode(tmp_path / "new" / "sub") == 0o700
    assert mode(tmp_path / "new" / "sub" / "x.db") == 0o600


def test_shipped_images_and_unit_keep_the_state_dir_owner_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "install -d -o fraisier -g fraisier -m 0700 /var/lib/fraisier" in dockerfile
    unit = (ROOT / "systemd" / "reconciler.service").read_text()
    assert "StateDirectoryMode=0700" in unit and "UMask=0077" in unit
