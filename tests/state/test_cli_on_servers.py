"""The real CLI pipeline (apply → journal → status/history) on PostgreSQL and MariaDB: the same
commands an operator runs, with ``--db`` pointing at a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, git
from tests.state.backends import raw_query

JOB = """apiVersion: fraisier.dev/v1
kind: Job
metadata: {name: migrate}
spec:
  target: local
  source: {path: app}
  command: [python3, job.py]
  env: {MSG: "héllo job", CODE: "CODE_VALUE"}
  timeout: 30s
"""


@pytest.mark.timeout(120)
def test_apply_status_history_on_a_server_database(server_url: str, tmp_path: Path) -> None:
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "job.py").write_text(
        "import os, sys\nprint('job says', os.environ.get('MSG', ''))\n"
        "sys.exit(int(os.environ.get('CODE', '0')))\n")
    git(repo, "init", "-q", "-b", "main")
    fleet = Fleet(repo, tmp_path / "state", tmp_path / "root")
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {tmp_path / 'root'}}}
""")
    db = ("--db", server_url)
    fleet.write("job.yaml", JOB.replace("CODE_VALUE", "3"))
    fleet.commit("job fails")
    failed = fleet.cli(*db, "apply", *fleet.repo_args())
    assert failed.returncode == 1, failed.stdout + failed.stderr
    runs = json.loads(fleet.cli(*db, "history", "migrate", "-o", "json").stdout)
    assert (runs[0]["status"], runs[0]["exitCode"]) == ("failed", 3)

    fleet.write("job.yaml", JOB.replace("CODE_VALUE", "0"))
    fleet.commit("job fixed")
    fixed = fleet.cli(*db, "apply", *fleet.repo_args())
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    runs = json.loads(fleet.cli(*db, "history", "migrate", "-o", "json").stdout)
    assert [(r["status"], r["exitCode"]) for r in runs] == [("succeeded", 0), ("failed", 3)]
    status = json.loads(fleet.cli(*db, "status", "-o", "json").stdout)
    job = next(r for r in status["resources"] if r["name"] == "migrate")
    assert job["lastResult"] == "succeeded"
    # the journal is really in the server database, not in a SQLite file of the state dir
    assert raw_query(server_url, "SELECT COUNT(*) FROM tb_deployment") == [(2,)]
    assert not list((tmp_path / "state").glob("*.db"))
    # the audit trail too: both runs, attributed to the CLI user, each with its commit
    audit = json.loads(fleet.cli(*db, "audit", "migrate", "-o", "json").stdout)
    assert [(e["action"], e["outcome"]) for e in audit] == [("run", "succeeded"),
                                                           ("run", "failed")]
    assert all(e["actor"].startswith("cli:") for e in audit)
    assert audit[0]["configCommit"] == git(repo, "rev-parse", "HEAD")
    # plus the Target, recorded (no deployment) by the first apply
    (target,) = json.loads(fleet.cli(*db, "audit", "Target/local", "-o", "json").stdout)
    assert (target["action"], target["outcome"]) == ("deploy", "succeeded")
    assert target["actor"].startswith("cli:")
    assert raw_query(server_url, "SELECT COUNT(*) FROM tb_audit_event") == [(3,)]
