"""validate / diff / apply / status / history / rollback / suspend through the real CLI."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml

pytestmark = pytest.mark.timeout(180)


def test_apply_deploys_updates_and_rolls_back_a_failed_health_check(fleet: Fleet) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    c1 = fleet.commit("api one")

    diff = fleet.cli("diff", *fleet.repo_args())
    assert diff.returncode == 1, diff.stderr
    assert "+ default/Service/api" in diff.stdout

    first = fleet.cli("apply", *fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(http_get(port)[1])["greeting"] == "one"
    assert fleet.cli("diff", *fleet.repo_args()).returncode == 0

    status = fleet.json("status")
    api = next(r for r in status["resources"] if r["name"] == "api")
    assert (api["sync"], api["health"], api["lastResult"]) == ("Synced", "Healthy", "succeeded")
    assert api["configCommit"] == c1

    # An update: new greeting, new revision, new process.
    fleet.write("api.yaml", service_yaml("api", port, greeting="two"))
    c2 = fleet.commit("api two")
    plan = fleet.json("diff", *fleet.repo_args())
    change = next(r for r in plan["resources"] if r["name"] == "api")
    assert change["action"] == "update"
    assert {"op": "~", "path": "spec.env.GREETING", "old": "one", "new": "two"} in change["changes"]
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    assert json.loads(http_get(port)[1])["greeting"] == "two"

    # A change whose health check fails is rolled back to "two" and recorded as such.
    fleet.write("api.yaml", service_yaml("api", port, greeting="three", fail=True))
    fleet.commit("api three, broken")
    bad = fleet.cli("apply", *fleet.repo_args())
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert json.loads(http_get(port)[1])["greeting"] == "two"
    history = fleet.json("history", "api")
    assert [d["status"] for d in history[:3]] == ["rolled_back", "succeeded", "succeeded"]
    assert history[0]["configCommit"] != c2
    assert any(s["action"] == "rollback" for s in history[0]["steps"])
    assert all(d["status"] != "in_progress" for d in history)

    # The rolled-back revision is not retried until it changes.
    again = fleet.cli("apply", *fleet.repo_args())
    assert again.returncode == 1
    assert len(fleet.json("history", "api")) == len(history)
    assert "rolled back" in fleet.cli("diff", *fleet.repo_args()).stdout

    # A fix is a new revision: deployed.
    fleet.write("api.yaml", service_yaml("api", port, greeting="four"))
    fleet.commit("api four")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    assert json.loads(http_get(port)[1])["greeting"] == "four"
    assert fleet.cli("status").returncode == 0


def test_invalid_commit_exits_2_and_changes_nothing(fleet: Fleet) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    before = fleet.json("status")
    history_before = fleet.json("history", "api")

    fleet.write("api.yaml", service_yaml("api", port, greeting="x") + "  bogus: [unclosed\n")
    fleet.commit("broken yaml")
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 2
    assert "fleet/api.yaml:" in out.stderr
    assert "Traceback" not in out.stderr
    assert fleet.json("status") == before
    assert fleet.json("history", "api") == history_before
    assert fleet.cli("diff", *fleet.repo_args()).returncode == 2


def test_jobs_record_exit_code_and_output_and_gate_dependents(fleet: Fleet) -> None:
    port = free_port()
    fleet.write("job.yaml", """apiVersion: fraisier.dev/v1
kind: Job
metadata: {name: migrate}
spec:
  target: local
  source: {path: app}
  command: [python3, job.py]
  env: {MSG: "hello job", CODE: "3"}
  timeout: 30s
""")
    fleet.write("api.yaml", service_yaml("api", port, depends="\n  dependsOn: [Job/migrate]"))
    fleet.commit()
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 1
    job = fleet.json("history", "migrate")[0]
    assert (job["status"], job["exitCode"]) == ("failed", 3)
    assert fleet.json("history", "api") == []  # waited for its dependency

    fleet.write("job.yaml", fleet.repo.joinpath("fleet/job.yaml").read_text()
                .replace('CODE: "3"', 'CODE: "0"'))
    fleet.commit("fix job")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    hist = fleet.cli("history", "migrate", "-o", "json")
    runs = json.loads(hist.stdout)
    assert (runs[0]["status"], runs[0]["exitCode"]) == ("succeeded", 0)
    assert http_get(port)[0] == 200


def test_manual_rollback_suspend_resume(fleet: Fleet) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="a"))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    fleet.write("api.yaml", service_yaml("api", port, greeting="b"))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    rb = fleet.cli("rollback", "api", *fleet.repo_args())
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert json.loads(http_get(port)[1])["greeting"] == "a"
    hist = fleet.json("history", "api")
    assert (hist[0]["trigger"], hist[0]["strategy"], hist[0]["status"]) == (
        "manual", "rollback", "succeeded")
    # The operator's rollback sticks: apply does not redeploy "b" until a new commit.
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 1
    assert json.loads(http_get(port)[1])["greeting"] == "a"

    assert fleet.cli("suspend", "api").returncode == 0
    fleet.write("api.yaml", service_yaml("api", port, greeting="c"))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    assert json.loads(http_get(port)[1])["greeting"] == "a"
    assert fleet.cli("resume", "api").returncode == 0
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    assert json.loads(http_get(port)[1])["greeting"] == "c"


def test_unknown_resource_names_are_clear_errors(fleet: Fleet) -> None:
    out = fleet.cli("history", "nope")
    assert out.returncode == 2
    assert "no resource named 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_environment_filter_plans_and_prunes_only_that_environment(fleet: Fleet) -> None:
    port_a, port_b = free_port(), free_port()
    fleet.write("target-b.yaml", fleet.repo.joinpath("fleet/target.yaml").read_text()
                .replace("name: local", "name: local\n  environment: b"))
    fleet.write("api.yaml", service_yaml("api", port_a))
    fleet.write("api-b.yaml", service_yaml("api", port_b).replace(
        "name: api\n", "name: api\n  environment: b\n"))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args(), "-e", "b").returncode == 0
    names = {r["resource"] for r in fleet.json("status")["resources"]}
    assert names == {"b/Target/local", "b/Service/api"}
    plan = fleet.json("diff", *fleet.repo_args(), "-e", "default", "--prune")
    assert {r["resource"] for r in plan["resources"]} == {"default/Target/local",
                                                          "default/Service/api"}
    assert fleet.cli("diff", *fleet.repo_args(), "-e", "b", "--prune").returncode == 0


def test_drift_shows_in_diff_live_and_apply_heals_it(fleet: Fleet) -> None:
    import os
    import signal

    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="x"))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    pid = int(json.loads(next(fleet.root.rglob("*.pid")).read_text())["pid"])
    os.killpg(pid, signal.SIGKILL)
    assert fleet.cli("diff", *fleet.repo_args()).returncode == 0  # the record alone: in sync
    live = fleet.cli("diff", "--live", *fleet.repo_args())
    assert live.returncode == 1 and "drift" in live.stdout, live.stdout
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    assert json.loads(http_get(port)[1])["greeting"] == "x"
    assert fleet.json("history", "api")[0]["trigger"] == "apply"
    assert fleet.cli("diff", "--live", *fleet.repo_args()).returncode == 0
