"""Staging and production from one definition, through the real CLI and real processes:
diff (with origins), apply, a production-only change that leaves staging's revision and
process alone, render, and an undefined value refused with both positions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.state import DB_FILE_NAME
from tests.e2e.conftest import Fleet, free_port, http_get

pytestmark = pytest.mark.timeout(180)


def environments_yaml(staging_port: int, production_port: int, production_greeting: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: staging}}
spec:
  values:
    port: "{staging_port}"
    greeting: hello from staging
    interval: 200ms
---
apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: production}}
spec:
  values:
    port: "{production_port}"
    greeting: {production_greeting}
    interval: 300ms
"""


def definitions_yaml(root: Path, extra_env: str = "") -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
  environments: [staging, production]
spec:
  provider: bare_metal
  transport: local
  root: {root}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
  environments: [staging, production]
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, app.py, --port, "${{port}}"]
  env:
    GREETING: ${{greeting}}{extra_env}
  stopTimeout: 3s
  health:
    http: {{url: "http://{{host}}:${{port}}/healthz"}}
    interval: ${{interval}}
    timeout: 1s
    startPeriod: 1s
    failureThreshold: 3
"""


def pids(root: Path, environment: str) -> set[int]:
    return {int(json.loads(p.read_text())["pid"]) for p in root.rglob("*.pid")
            if environment in str(p.relative_to(root))}


def revisions(fleet: Fleet) -> dict[str, str]:
    status = fleet.json("status")
    return {r["resource"]: r["appliedRevision"] for r in status["resources"]}


def test_one_definition_two_environments(fleet: Fleet) -> None:
    staging_port, production_port = free_port(), free_port()
    (fleet.repo / "fleet" / "target.yaml").unlink()
    fleet.write("environments.yaml", environments_yaml(staging_port, production_port, "p1"))
    fleet.write("api.yaml", definitions_yaml(fleet.root))
    fleet.commit("api in staging and production")

    diff = fleet.cli("diff", *fleet.repo_args())
    assert diff.returncode == 1, diff.stderr
    for key in ("staging/Service/api", "production/Service/api", "staging/Target/local",
                "production/Target/local"):
        assert f"+ {key}" in diff.stdout

    first = fleet.cli("apply", *fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(http_get(staging_port)[1])["greeting"] == "hello from staging"
    assert json.loads(http_get(production_port)[1])["greeting"] == "p1"
    before = revisions(fleet)
    staging_pids = pids(fleet.root, "staging")
    assert staging_pids and staging_pids.isdisjoint(pids(fleet.root, "production"))

    # A production value changes: only production's resolved document, hence its revision.
    fleet.write("environments.yaml", environments_yaml(staging_port, production_port, "p2"))
    fleet.commit("production greeting p2")
    plan = fleet.json("diff", *fleet.repo_args(), "--show-origin")
    changed = {r["resource"]: r for r in plan["resources"] if r["action"] != "unchanged"}
    assert set(changed) == {"production/Service/api"}, changed
    [change] = changed["production/Service/api"]["changes"]
    assert (change["path"], change["old"], change["new"]) == ("spec.env.GREETING", "p1", "p2")
    [origin] = change["origins"]
    # ${greeting} is written at api.yaml line 21, column 15; production defines it at line 16
    assert origin == {"path": "spec.env.GREETING", "value": "greeting",
                      "use": "fleet/api.yaml:21:15", "definition": "fleet/environments.yaml:16:15"}
    text = fleet.cli("diff", *fleet.repo_args(), "--show-origin")
    assert "${greeting} used at fleet/api.yaml:21:15, defined at fleet/environments.yaml:16:15" \
        in text.stdout

    second = fleet.cli("apply", *fleet.repo_args())
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(http_get(production_port)[1])["greeting"] == "p2"
    after = revisions(fleet)
    assert after["production/Service/api"] != before["production/Service/api"]
    assert {k: v for k, v in after.items() if k != "production/Service/api"} == \
        {k: v for k, v in before.items() if k != "production/Service/api"}
    # staging was not redeployed: the same process answers, and its history has one deployment
    assert pids(fleet.root, "staging") == staging_pids
    assert json.loads(http_get(staging_port)[1])["greeting"] == "hello from staging"
    assert len(fleet.json("history", "staging/Service/api")) == 1

    rendered = fleet.cli("render", "fleet", "-e", "production")
    assert rendered.returncode == 0, rendered.stderr
    assert "GREETING: p2" in rendered.stdout and "staging" not in rendered.stdout
    assert fleet.cli("validate", "fleet", "-e", "qa").returncode == 2

    # A value used but defined nowhere: refused, both ends located, nothing changes.
    fleet.write("api.yaml", definitions_yaml(fleet.root, "\n    REGION: ${region}"))
    fleet.commit("uses an undefined value")
    refused = fleet.cli("apply", *fleet.repo_args())
    assert refused.returncode == 2, refused.stdout + refused.stderr
    for environment, line in (("staging", 3), ("production", 12)):
        assert (f"fleet/api.yaml:22:13: spec.env.REGION: ${{region}} is not defined for "
                f"environment '{environment}' (Environment '{environment}' at "
                f"fleet/environments.yaml:{line}:") in refused.stderr
    assert revisions(fleet) == after
    assert pids(fleet.root, "staging") == staging_pids


def test_each_environment_takes_its_own_encrypted_file(fleet: Fleet, tmp_path: Path) -> None:
    """A value chooses which SOPS file a shared definition reads per environment; render, diff
    (with origins) and apply never show a decrypted value, and each process gets its own."""
    from tests.e2e.test_secrets_redacted import environ_of
    from tests.e2e.test_sops_secrets import hits
    from tests.spec.sops_writer import generate_identity, sops_yaml

    staging_secret, production_secret = "s0ps-V1-4c0ffee9d1", "s0ps-V2-8badf00d77"
    assert not hits(b"nothing") and hits(production_secret.encode())  # the grep can hit
    identity, public = generate_identity()
    keys = tmp_path / "operator" / "age.txt"  # outside the repo
    keys.parent.mkdir()
    keys.write_text(identity)
    (fleet.repo / "secrets").mkdir()
    for environment, value in (("staging", staging_secret), ("production", production_secret)):
        (fleet.repo / "secrets" / f"{environment}.yaml").write_bytes(
            sops_yaml({"db": {"password": value}}, [public]))
    staging_port, production_port = free_port(), free_port()
    (fleet.repo / "fleet" / "target.yaml").unlink()
    fleet.write("environments.yaml", environments_yaml(staging_port, production_port, "p1")
                .replace("    interval: 200ms\n", "    interval: 200ms\n    secrets: staging\n")
                .replace("    interval: 300ms\n", "    interval: 300ms\n    secrets: production\n"))
    fleet.write("api.yaml", definitions_yaml(
        fleet.root, "\n    DB_PASSWORD: {sops: {file: \"secrets/${secrets}.yaml\", "
                    "key: db.password}}"))
    fleet.commit("per-environment encrypted files")
    env = {**os.environ, "RECONCILER_AGE_IDENTITY": str(keys)}

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir",
                               str(fleet.state), "--log-level", "debug", *args],
                              capture_output=True, timeout=90, cwd=fleet.repo, env=env)
        assert not hits(proc.stdout + proc.stderr), args
        return proc

    rendered = run("render", "fleet", "-e", "production", "--show-origin")
    assert rendered.returncode == 0, rendered.stderr
    assert b"file: secrets/production.yaml" in rendered.stdout
    assert b"${secrets} used at fleet/api.yaml:" in rendered.stdout
    assert run("diff", *fleet.repo_args(), "--show-origin").returncode == 1
    applied = run("apply", *fleet.repo_args())
    assert applied.returncode == 0, applied.stderr[-2000:]
    production_of = {}
    for pidfile in fleet.root.rglob("*.pid"):
        environ = environ_of(int(json.loads(pidfile.read_text())["pid"]))
        production_of[environ.get("DB_PASSWORD")] = "production" in str(pidfile)
    assert production_of == {staging_secret: False, production_secret: True}
    stored = b"".join(p.read_bytes() for p in fleet.state.glob(DB_FILE_NAME + "*"))  # + -wal
    assert b"secrets/production.yaml" in stored  # the reference is recorded
    assert not hits(stored)  # the values are not
