"""`reconciler diff --base`: the plan of a change between two commits, rendered for a pull
request (golden files in tests/plan/golden/; regenerate with FRAISIER_UPDATE_GOLDEN=1 and read
the diff before committing), and its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.plan.diff import FieldChange
from reconciler.plan.report import HIDDEN, MARKER, is_secret_change, masked

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FRAISIER_UPDATE_GOLDEN") == "1"
AT = "2026-12-04T15:00:00Z"  # a Friday, 16:00 in Paris: inside staging's deny window
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmsl6Yz0tn0sKEvVbvRQW4jF9yXvWc0NRLZDGdf4rSa"
SECRET_LITERAL = "s3cr3t-literal-value"

TARGET_WEB = f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: web, environment: prod}}
spec:
  provider: bare_metal
  transport: ssh
  hosts:
    - {{name: web-1, address: 127.0.0.1, port: 2222, user: deploy, hostKeys: ["{KEY}"]}}
    - {{name: web-2, address: 127.0.0.1, port: 2223, user: deploy, hostKeys: ["{KEY}"]}}
"""

BASE_PROD = TARGET_WEB + """---
apiVersion: fraisier.dev/v1
kind: Job
metadata: {name: migrate, environment: prod}
spec:
  target: web
  source: {path: app}
  command: [python3, app.py, migrate]
  env: {SCHEMA_VERSION: "3"}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api, environment: prod}
spec:
  target: web
  dependsOn: [Job/migrate]
  source: {path: app}
  command: [python3, app.py, --port, "18081"]
  env:
    GREETING: hello
    DB_PASSWORD: {env: API_DB_PASSWORD}
  strategy: {type: rolling, maxParallel: 1}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: legacy-api, environment: prod}
spec:
  target: web
  source: {path: app}
  command: [python3, app.py, --port, "18090"]
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: legacy-ui, environment: prod}
spec:
  target: web
  dependsOn: [legacy-api]
  source: {path: app}
  command: [python3, app.py, --port, "18091"]
"""

HEAD_PROD = TARGET_WEB + f"""---
apiVersion: fraisier.dev/v1
kind: Job
metadata: {{name: migrate, environment: prod}}
spec:
  target: web
  source: {{path: app}}
  command: [python3, app.py, migrate]
  env: {{SCHEMA_VERSION: "4"}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api, environment: prod}}
spec:
  target: web
  dependsOn: [Job/migrate]
  source: {{path: app}}
  command: [python3, app.py, --port, "18081"]
  env:
    GREETING: hello again
    DB_PASSWORD: {{env: API_DB_PASSWORD_V2}}
    API_TOKEN: {SECRET_LITERAL}
  strategy: {{type: rolling, maxParallel: 1}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: cache, environment: prod}}
spec:
  target: web
  dependsOn: [api]
  source: {{path: app}}
  command: [python3, app.py, --port, "18082"]
  strategy: {{type: blue-green, ports: {{blue: 18083, green: 18084}}}}
"""

STAGING = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: frozen, environment: staging}}
spec:
  provider: bare_metal
  transport: local
  syncWindows:
    - {{kind: deny, schedule: "0 14 * * 5", duration: 3h, timezone: Europe/Paris}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: shop, environment: staging}}
spec:
  target: frozen
  source: {{path: app}}
  command: [python3, app.py, --port, "18085"]
  env: {{GREETING: {greeting}}}
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org",
           "GIT_AUTHOR_DATE": "2026-12-01T10:00:00Z", "GIT_COMMITTER_DATE": "2026-12-01T10:00:00Z"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        if text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        else:
            path.unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A config repo with two commits: base and head (fixed dates: fixed commit ids)."""
    repo = tmp_path_factory.mktemp("plan") / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, {"app/app.py": "print('v1')\n", "fleet/prod.yaml": BASE_PROD,
                         "fleet/staging.yaml": STAGING.format(greeting="hi")}, "base")
    head = commit(repo, {"app/app.py": "print('v1')\n", "fleet/prod.yaml": HEAD_PROD,
                         "fleet/staging.yaml": STAGING.format(greeting="hello")}, "head")
    return repo, base, head


def diff(repo: Path, *args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_DB"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(state), "diff", "--repo",
         str(repo), "--path", "fleet", "--prune", "--at", AT, *args],
        capture_output=True, text=True, env=env, timeout=60)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.mark.timeout(120)
def test_markdown_and_text_of_a_change_match_the_golden_files(
        sample: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, _ = sample
    md = diff(repo, "--base", base, "-o", "markdown", state=tmp_path)
    assert md.returncode == 1, md.stderr  # changes pending
    assert md.stderr == ""
    check_golden("change.md", md.stdout)
    text = diff(repo, "--base", base, state=tmp_path)
    assert text.returncode == 1, text.stderr
    check_golden("change.txt", text.stdout)
    out = md.stdout
    assert out.startswith(MARKER)
    # the secret literal and the secret reference's new name are nowhere
    for shown in (md.stdout, text.stdout):
        assert SECRET_LITERAL not in shown
        assert "API_DB_PASSWORD_V2" not in shown
        assert "spec.env.DB_PASSWORD.env: (secret: value not shown)" in shown
        assert "spec.env.API_TOKEN: (secret: value not shown)" in shown
    # apply order: the Job before the Service that depends on it, deletions last and the
    # dependent one (legacy-ui) deleted before what it depends on
    prod = out.split("Environment `prod`")[1].split("Environment `staging`")[0]
    order = [line.split("`")[1] for line in prod.splitlines() if line.startswith("| ")
             and "`" in line]
    assert order.index("Job/migrate") < order.index("Service/api") < order.index("Service/cache")
    assert order.index("Service/legacy-ui") < order.index("Service/legacy-api")
    assert order[-2:] == ["Service/legacy-ui", "Service/legacy-api"]
    # the staging change is deferred by its Target's deny window, with when it opens
    assert "⏸️ deferred | `Service/shop`" in out and "2026-12-04T16:00:00+00:00" in out


@pytest.mark.timeout(120)
def test_json_names_targets_hosts_strategies_and_hides_secrets(
        sample: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, _ = sample
    done = diff(repo, "--base", base, "-o", "json", state=tmp_path)
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["base"] == base and doc["against"] == "base"
    by = {r["resource"]: r for r in doc["resources"]}
    api = by["prod/Service/api"]
    assert (api["action"], api["target"], api["hosts"], api["strategy"]) == (
        "update", "web", ["web-1", "web-2"], "rolling")
    assert by["prod/Service/cache"]["strategy"] == "blue-green"
    assert by["prod/Service/cache"]["dependsOn"] == ["prod/Service/api"]
    assert by["staging/Service/shop"]["action"] == "deferred"
    secret = [c for c in api["changes"] if c["path"] == "spec.env.DB_PASSWORD.env"]
    assert secret == [{"op": "~", "path": "spec.env.DB_PASSWORD.env", "old": HIDDEN,
                       "new": HIDDEN, "secret": True}]
    assert SECRET_LITERAL not in done.stdout


@pytest.mark.timeout(120)
def test_exit_codes_no_change_changes_error(sample: tuple[Path, str, str],
                                            tmp_path: Path) -> None:
    repo, base, head = sample
    same = diff(repo, "--base", head, "-o", "markdown", state=tmp_path)
    assert same.returncode == 0, same.stderr
    assert "No change" in same.stdout and same.stdout.startswith(MARKER)
    assert diff(repo, "--base", base, state=tmp_path).returncode == 1
    bad = diff(repo, "--base", "no-such-ref", state=tmp_path)
    assert bad.returncode == 2
    assert "cannot resolve ref 'no-such-ref'" in bad.stderr
    # -o markdown needs something to compare with
    nothing = diff(repo, "-o", "markdown", state=tmp_path)
    assert nothing.returncode == 2 and "--base" in nothing.stderr


def test_markdown_is_capped_and_counts_what_it_left_out(
        sample: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, base, _ = sample
    done = diff(repo, "--base", base, "-o", "markdown", "--max-chars", "1500", state=tmp_path)
    assert done.returncode == 1
    assert len(done.stdout) <= 1500
    assert "Left out to stay under 1,500 characters:" in done.stdout
    assert done.stdout.startswith(MARKER)


def test_secret_detection() -> None:
    docs = ({"spec": {"env": {"DB": {"env": "A"}, "PLAIN": "x"}}},)
    assert is_secret_change(FieldChange("~", "spec.env.DB.env", "A", "B"), docs)
    assert is_secret_change(FieldChange("~", "spec.env.DB", "lit", {"env": "B"}), docs)
    assert is_secret_change(FieldChange("+", "spec.env.STRIPE_KEY", None, "sk"), docs)
    assert not is_secret_change(FieldChange("~", "spec.env.PLAIN", "x", "y"), docs)
    assert masked({"A": {"file": "/x"}, "PASSWORD": "p", "B": ["ok"]}) == {
        "A": HIDDEN, "PASSWORD": HIDDEN, "B": ["ok"]}
