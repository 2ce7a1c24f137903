"""`reconciler audit` through the real CLI: applies, a failed run, suspend/resume and a refused
rollback are each audited with the CLI user, the config commit and the outcome."""

from __future__ import annotations

import getpass
import json
import socket

import pytest

from tests.e2e.conftest import Fleet

pytestmark = pytest.mark.timeout(120)


def job_yaml(code: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Job
metadata: {{name: migrate}}
spec:
  target: local
  source: {{path: app}}
  command: [python3, job.py]
  env: {{MSG: "hello job", CODE: "{code}"}}
  timeout: 30s
"""


def test_audit_trail_through_the_cli(fleet: Fleet) -> None:
    me = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    fleet.write("job.yaml", job_yaml("0"))
    first = fleet.commit("job")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    fleet.write("job.yaml", job_yaml("3"))
    second = fleet.commit("job fails")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 1
    assert fleet.cli("suspend", "migrate").returncode == 0
    assert fleet.cli("resume", "migrate").returncode == 0
    refused = fleet.cli("rollback", "migrate", "--to", "0000000", *fleet.repo_args())
    assert refused.returncode != 0 and "Traceback" not in refused.stderr

    events = fleet.json("audit", "migrate")
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("rollback", "failed"), ("resume", "succeeded"), ("suspend", "succeeded"),
        ("run", "failed"), ("run", "succeeded")]
    assert {e["actor"] for e in events} == {me}
    assert {e["resource"] for e in events} == {"default/Job/migrate"}
    run_failed, run_ok = events[3], events[4]
    assert (run_ok["configCommit"], run_failed["configCommit"]) == (first, second)
    # with its last output lines (rollout/lastlines.py)
    assert run_failed["message"] == "exited with code 3; last output: job says hello job"
    assert run_ok["deployment"] == "default/Job/migrate#1"
    assert "no succeeded deployment" in events[0]["message"]
    # the Target recorded by the first apply has no deployment, but is audited all the same
    # (once: the second apply left it unchanged)
    everything = fleet.json("audit")
    assert {e["resource"] for e in everything} == {"default/Job/migrate", "default/Target/local"}
    (target,) = fleet.json("audit", "Target/local")
    assert (target["action"], target["outcome"], target["actor"], target["configCommit"],
            target["message"]) == ("deploy", "succeeded", me, first, "target recorded (create)")
    assert target["revision"] and target["deployment"] is None

    assert [e["action"] for e in fleet.json("audit", "-n", "2")] == ["rollback", "resume"]
    assert len(fleet.json("audit", "--since", "1h")) == 6
    assert fleet.json("audit", "--since", "2999-01-01T00:00:00") == []
    bad = fleet.cli("audit", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr

    text = fleet.cli("audit", "Job/migrate")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "ACTOR", "ACTION", "RESOURCE", "OUTCOME", "COMMIT",
                                "REVISION", "MESSAGE"]
    assert len(lines) == 6 and me in lines[1] and second[:12] in lines[4]
    # history still reads well: the trigger column is the CLI's "apply"
    history = json.loads(fleet.cli("history", "migrate", "-o", "json").stdout)
    assert [d["trigger"] for d in history] == ["apply", "apply"]
    # db check reports the migrated audit table as nothing pending
    check = fleet.cli("db", "check", "-o", "json")
    assert check.returncode == 0 and json.loads(check.stdout)["pendingMigrations"] == []
    # an operator signal is audited too (here nobody was rolling out: nothing to promote)
    assert fleet.cli("promote", "migrate").returncode == 1
    newest = fleet.json("audit", "-n", "1")[0]
    assert (newest["action"], newest["outcome"], newest["actor"]) == ("promote", "cancelled", me)
