"""CLI contract: validate, db migrate/status, -o json documents, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, service_yaml

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, cwd: Path | None = None, env_state: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "reconciler"]
    if env_state is not None:
        cmd += ["--state-dir", str(env_state)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_validate_example_fleet_is_valid() -> None:
    out = run("validate", str(ROOT / "examples" / "fleet"))
    assert out.returncode == 0, out.stderr
    assert "valid:" in out.stdout


def test_validate_reports_every_problem_with_location(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Service\nmetadata: {name: api}\n"
        "spec:\n  target: nowhere\n  command: [x]\n")
    (tmp_path / "b.yaml").write_text("kind: [\n")
    out = run("validate", str(tmp_path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert any(line.startswith(f"{tmp_path}/a.yaml:5:") for line in lines), lines
    assert any(line.startswith(f"{tmp_path}/b.yaml:") for line in lines), lines
    assert "Traceback" not in out.stderr


def test_validate_missing_path_exits_2(tmp_path: Path) -> None:
    out = run("validate", str(tmp_path / "absent"))
    assert out.returncode == 2


def test_db_migrate_and_status(tmp_path: Path) -> None:
    state = tmp_path / "state"
    status = run("db", "status", "-o", "json", env_state=state)
    assert status.returncode == 1  # everything pending on a new database
    doc = json.loads(status.stdout)
    assert doc["pending"] >= 1
    migrate = run("db", "migrate", env_state=state)
    assert migrate.returncode == 0, migrate.stderr
    assert "applied" in migrate.stdout
    again = run("db", "migrate", env_state=state)
    assert again.returncode == 0 and "up to date" in again.stdout
    final = run("db", "status", "-o", "json", env_state=state)
    assert final.returncode == 0
    assert json.loads(final.stdout)["pending"] == 0


def test_db_url_flag_and_env(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x/state.db"
    out = run("--db", url, "db", "migrate")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x" / "state.db").exists()


def test_json_outputs_are_single_documents(fleet: Fleet) -> None:
    fleet.write("api.yaml", service_yaml("api", free_port()))
    fleet.commit()
    for args in (["diff", *fleet.repo_args()], ["apply", *fleet.repo_args()],
                 ["diff", *fleet.repo_args()], ["status"], ["history", "api"]):
        proc = fleet.cli(*args, "-o", "json")
        json.loads(proc.stdout)  # one valid JSON document, nothing else on stdout
        assert "Traceback" not in proc.stderr
    assert fleet.cli("diff", *fleet.repo_args()).returncode == 0


def test_diff_on_a_non_repo_is_a_clear_error(tmp_path: Path) -> None:
    out = run("diff", "--repo", str(tmp_path), env_state=tmp_path / "s")
    assert out.returncode == 2
    assert "not a git repository" in out.stderr
    assert "Traceback" not in out.stderr


def test_db_check(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run("db", "check", env_state=state).returncode == 1  # nothing migrated yet
    assert run("db", "migrate", env_state=state).returncode == 0
    out = run("db", "check", "-o", "json", env_state=state)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["reachable"] and doc["pendingMigrations"] == []


def test_db_copy_sqlite_to_postgresql(fleet: Fleet, tmp_path: Path, postgresql_url: str) -> None:

    fleet.write("api.yaml", service_yaml("api", free_port()))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    from reconciler.state import default_db_url

    src = default_db_url(fleet.state)
    dst = postgresql_url
    out = run("db", "copy", "--from", src, "--to", dst)
    assert out.returncode == 0, out.stderr
    assert "copied 2 resources" in out.stdout
    hist = run("--db", dst, "history", "api", "-o", "json")
    assert json.loads(hist.stdout)[0]["status"] == "succeeded"
    again = run("db", "copy", "--from", src, "--to", dst)
    assert again.returncode != 0 and "Traceback" not in again.stderr


def test_logs_host_filter_and_new_lines(fleet: Fleet) -> None:
    from reconciler.cli.logs import _new_lines

    assert _new_lines(["a", "b", "c"], ["b", "c", "d"]) == ["d"]
    assert _new_lines([], ["x"]) == ["x"]
    assert _new_lines(["a"], ["z"]) == ["z"]
    fleet.write("api.yaml", service_yaml("api", free_port()))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    out = fleet.cli("logs", "api", "--host", "local", "-n", "5")
    assert out.returncode == 0 and "[local] " in out.stdout
    missing = fleet.cli("logs", "api", "--host", "nope")
    assert missing.returncode == 2 and "no instance named nope" in missing.stderr
