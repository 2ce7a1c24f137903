"""Issue 16, problem 3: the operator policy (``--policy`` / ``RECONCILER_POLICY``).

Real CLI and daemon processes, real git repos, real files and symlinks. A policy file outside
the repo says per environment which secrets, endpoints and traffic commands the desired state
may use; a bad policy file stops the command at start (exit 2, ``file:line:col``); a commit that
breaks the policy is refused as a whole (validate and apply exit 2 naming each place, the daemon
keeps the last good state and converges again on the next good commit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import free_port, git, wait_for

ALLOWED_SECRET = "allowed-9f1c2e7d"
OUTSIDE_SECRET = "s3cr3t-OUTSIDE-41aa0c9e"


def cli(state: Path, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RECONCILER_POLICY": "", **(env or {})}, cwd=cwd)


def write_policy(path: Path, secrets_dir: Path, coolify_url: str) -> Path:
    path.write_text(textwrap.dedent(f"""\
        apiVersion: fraisier.dev/v1
        kind: Policy
        metadata: {{name: test}}
        spec:
          environments:
            production:
              secrets:
                env: ["APP_*"]
                fileDirs: [{secrets_dir}]
              endpoints:
                coolifyUrls: ["{coolify_url}"]
                localHost: false
              traffic: false
            "*":
              secrets:
                env: ["*"]
                fileDirs: [{secrets_dir}]
              endpoints:
                coolifyUrls: ["http://127.0.0.1:*", "*://coolify.example.org"]
                localHost: true
              traffic: true
        """))
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    allowed = tmp_path / "secrets"
    allowed.mkdir()
    (allowed / "token").write_text(ALLOWED_SECRET + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "token").write_text(OUTSIDE_SECRET + "\n")
    (allowed / "escape").symlink_to(outside / "token")
    return allowed


def target(name: str, environment: str, spec: str) -> str:
    return (f"---\napiVersion: fraisier.dev/v1\nkind: Target\n"
            f"metadata: {{name: {name}, environment: {environment}}}\nspec: {spec}\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["validate", "diff", "apply", "daemon"])
def test_a_bad_policy_file_stops_each_command_at_start(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(textwrap.dedent("""\
        apiVersion: fraisier.dev/v1
        kind: Policy
        spec:
          environments:
            production:
              secrets: {env: [APP_*], vault: yes}
              traffic: "no"
        """))
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "t.yaml").write_text(target("local", "default", "{provider: bare_metal}"))
    git(tmp_path / "fleet", "init", "-q", "-b", "main")
    git(tmp_path / "fleet", "add", "-A")
    git(tmp_path / "fleet", "commit", "-q", "-m", "x")
    args = {"validate": ["validate", str(tmp_path / "fleet")],
            "diff": ["diff", "--repo", str(tmp_path / "fleet")],
            "apply": ["apply", "--repo", str(tmp_path / "fleet")],
            "daemon": ["daemon", "--repo", str(tmp_path / "fleet"),
                       "--listen", f"127.0.0.1:{free_port()}"]}[command]
    # by flag for validate and diff, by environment variable for apply and the daemon
    if command in ("validate", "diff"):
        proc = cli(tmp_path / "state", *args, "--policy", str(bad))
    else:
        proc = cli(tmp_path / "state", *args, env={"RECONCILER_POLICY": str(bad)})
    assert proc.returncode == 2, proc
    assert f"{bad}:6:31: spec.environments.production.secrets: unknown field 'vault'" \
        in proc.stderr, proc.stderr
    assert f"{bad}:7:16: spec.environments.production.traffic: expected true or false" \
        in proc.stderr, proc.stderr
    assert "error[FR111]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "fraisier.db").exists() or command in ("diff", "apply")


@pytest.mark.timeout(60)
def test_validate_with_a_policy_names_each_violation(tmp_path: Path, secrets_dir: Path) -> None:
    pol = write_policy(tmp_path / "policy.yaml", secrets_dir, "https://coolify.example.com")
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    ok_token = f"{{file: {secrets_dir / 'token'}}}"
    (fleet / "ok.yaml").write_text(
        target("paas", "production", f"{{provider: coolify, url: 'https://coolify.example.com',"
                                     f" token: {ok_token}}}")
        + target("paas", "staging", "{provider: coolify, url: 'http://127.0.0.1:9',"
                                    " token: {env: ANYTHING}}"))
    # without the bad file the fleet is valid under the policy
    assert cli(tmp_path / "s", "validate", str(fleet), "--policy", str(pol)).returncode == 0
    (fleet / "bad.yaml").write_text(
        target("other-env", "production", "{provider: coolify, url: 'https://coolify.example.com',"
                                          " token: {env: OTHER_TOKEN}}")
        + target("outside", "production", "{provider: coolify, url: 'https://coolify.example.com',"
                                          f" token: {{file: {tmp_path / 'elsewhere' / 'token'}}}}}")
        + target("escape", "production", "{provider: coolify, url: 'https://coolify.example.com',"
                                         f" token: {{file: {secrets_dir / 'escape'}}}}}")
        + target("url", "production", "{provider: coolify, url: 'https://evil.example.net',"
                                      f" token: {ok_token}}}")
        + target("plain", "staging", "{provider: coolify, url: 'http://coolify.example.org',"
                                     " token: {env: APP_T}}")
        + target("local", "production", "{provider: bare_metal, transport: local}")
        + target("ssh", "production", "{provider: bare_metal, transport: ssh, hosts: "
                                      "[{name: a, address: 127.0.0.1}]}")
        + target("docker", "production", "{provider: compose}"))
    proc = cli(tmp_path / "s", "validate", str(fleet), "--policy", str(pol))
    assert proc.returncode == 2, proc
    found = [line.split(": ", 1)[0].rsplit(":", 2)[1:]
             for line in proc.stderr.splitlines() if "bad.yaml:" in line]
    text = (fleet / "bad.yaml").read_text().splitlines()
    # each location points at the offending value (the transport default: the spec itself)
    pointed = [text[int(row) - 1][int(col) - 1:].split(",")[0].split("}")[0] for row, col in found]
    assert pointed == ["{env: OTHER_TOKEN", f"{{file: {tmp_path / 'elsewhere' / 'token'}",
                       f"{{file: {secrets_dir / 'escape'}", "'https://evil.example.net'",
                       "'http://coolify.example.org'", "local", "127.0.0.1", "compose"], pointed
    for expected in ("env:OTHER_TOKEN is not allowed in environment 'production'",
                     "secrets.fileDirs", "escape (-> ", "https://evil.example.net is not an "
                     "endpoint allowed", "http://coolify.example.org would receive credentials "
                     "over plain http", "the local host (the reconciler's own) is not allowed",
                     "127.0.0.1 is not an endpoint allowed", "unix:///var/run/docker.sock is "
                     "not an endpoint allowed"):
        assert expected in proc.stderr, (expected, proc.stderr)
    assert OUTSIDE_SECRET not in proc.stderr and ALLOWED_SECRET not in proc.stderr


@pytest.mark.timeout(30)
def test_the_resolver_checks_again_and_reads_only_regular_files(
        tmp_path: Path, secrets_dir: Path) -> None:
    """A spec that never went through the loader (read back from the database for a
    rollback) is held to the same rules when its references are resolved."""
    from reconciler.spec import policy
    from reconciler.spec.policy import SecretRefused, load_policy
    from reconciler.spec.secrets import resolve_secret

    os.mkfifo(secrets_dir / "fifo")  # would block a plain open() forever
    before = policy.active()
    policy.install(load_policy(str(write_policy(tmp_path / "p.yaml", secrets_dir, "x"))))
    try:
        assert resolve_secret({"file": str(secrets_dir / "token")},
                              environment="production") == ALLOWED_SECRET
        for ref in ({"file": str(secrets_dir / "escape")},
                    {"file": str(tmp_path / "elsewhere" / "token")},
                    {"env": "OTHER"}, {"env": "RECONCILER_DB"},
                    {"file": "/proc/self/environ"}):
            with pytest.raises(SecretRefused) as caught:
                resolve_secret(ref, environment="production")
            assert OUTSIDE_SECRET not in caught.value.message
        with pytest.raises(Exception, match="not a regular file"):
            resolve_secret({"file": str(secrets_dir / "fifo")}, environment="production")
    finally:
        policy.install(before)


def readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except OSError:
        return {}


@pytest.mark.timeout(120)
def test_the_daemon_refuses_a_commit_that_breaks_the_policy_as_a_whole(
        tmp_path: Path, secrets_dir: Path) -> None:
    pol = write_policy(tmp_path / "policy.yaml", secrets_dir, "https://coolify.example.com")
    repo, state = tmp_path / "config", tmp_path / "state"
    repo.mkdir()
    root = tmp_path / "root"

    def local(keep: int) -> str:
        return target("local", "staging", f"{{provider: bare_metal, transport: local, "
                                          f"root: {root}, keepReleases: {keep}}}")

    (repo / "fleet.yaml").write_text(local(3))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "good")
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "daemon",
             "--repo", str(repo), "--listen", f"127.0.0.1:{port}", "--interval", "1s"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "RECONCILER_POLICY": str(pol)})
    try:
        first = git(repo, "rev-parse", "HEAD")
        wait_for(lambda: readyz(port).get("commit") == first, timeout=30)

        def applied() -> str | None:
            rows = json.loads(cli(state, "status", "-o", "json").stdout)["resources"]
            return next(r["appliedRevision"] for r in rows if r["name"] == "local")

        wait_for(applied, timeout=30)
        before = applied()
        # an allowed change and a forbidden Target in one commit: neither is applied
        (repo / "fleet.yaml").write_text(
            local(5) + target("prod-local", "production", "{provider: bare_metal}"))
        git(repo, "commit", "-qam", "breaks the policy")
        bad = git(repo, "rev-parse", "HEAD")
        ready = wait_for(lambda: bad[:12] in str((r := readyz(port)).get("lastError")) and r,
                         timeout=30)
        assert ready["commit"] == first and "breaks the operator policy" in ready["lastError"]
        assert "fleet.yaml:10:7: transport: the local host" in ready["lastError"], ready
        assert applied() == before
        # the next good commit converges
        (repo / "fleet.yaml").write_text(local(5))
        git(repo, "commit", "-qam", "fixed")
        fixed = git(repo, "rev-parse", "HEAD")
        wait_for(lambda: readyz(port).get("commit") == fixed
                 and readyz(port).get("lastError") is None, timeout=30)
        wait_for(lambda: applied() != before, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    audit = json.loads(cli(state, "audit", "-o", "json").stdout)
    assert [e["configCommit"] for e in audit if e["action"] == "refuse"] == [bad], audit


@pytest.mark.timeout(60)
def test_a_policy_inside_the_config_repo_is_refused(tmp_path: Path) -> None:
    """The committer could edit it: it would allow whatever they commit."""
    repo = tmp_path / "config"
    repo.mkdir()
    (repo / "t.yaml").write_text(target("local", "default", "{provider: bare_metal}"))
    inside = write_policy(repo / "policy.yaml", tmp_path, "https://c.example.com")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    proc = cli(tmp_path / "state", "apply", "--repo", str(repo), "--policy", str(inside))
    assert proc.returncode == 2, proc
    assert "error[FR111]" in proc.stderr and "must be outside the config repository" in proc.stderr


def test_the_documented_policy_example_is_valid() -> None:
    from reconciler.spec.policy import parse_policy

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = parse_policy(example, "docs/security.md")
    production = loaded.rules_for("production")
    assert production.traffic is False and production.local_host is False
    assert loaded.rules_for("staging").coolify_urls == (
        "https://coolify-staging.acme.example", "http://127.0.0.1:*")


CANARY = """apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: search, environment: {environment}}}
spec:
  target: hosts
  command: [python3, app.py, --port, "{{port}}"]
  health:
    http: {{url: "http://{{host}}:{{port}}/healthz"}}
  strategy:
    type: canary
    ports: {{blue: 18188, green: 18189}}
    prometheus: {{url: "{prometheus}"}}
    traffic:
      command: [sh, -c, 'cat /proc/$PPID/environ > {marker}']
    steps:
      - setWeight: 20
      - analysis: {{duration: 2s, interval: 500ms}}
"""


@pytest.mark.timeout(60)
def test_traffic_commands_and_prometheus_urls_follow_the_policy(
        tmp_path: Path, secrets_dir: Path) -> None:
    marker = tmp_path / "stolen"
    repo = tmp_path / "config"
    repo.mkdir()
    hosts = "{provider: bare_metal, transport: ssh, hosts: [{name: a, address: 127.0.0.1}]}"
    (repo / "fleet.yaml").write_text(
        target("hosts", "production", hosts) + "---\n"
        + CANARY.format(environment="production", marker=marker,
                        prometheus="http://127.0.0.1:9090")
        + target("hosts", "staging", hosts) + "---\n"
        + CANARY.format(environment="staging", marker=marker,
                        prometheus="http://reader:pw@prometheus.example.com:9090"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    # the built-in default: a password for Prometheus over plain http is refused, the rest passes
    default = cli(tmp_path / "state", "validate", str(repo))
    assert default.returncode == 2
    assert [line.split(": ", 1)[1] for line in default.stderr.splitlines()
            if "fleet.yaml:" in line] == [
        "strategy.prometheus.url: http://prometheus.example.com:9090 would receive credentials "
        "over plain http; use https (plain http only to a loopback address or an endpoint the "
        "policy lists in endpoints.prometheusUrls)"], default.stderr
    # the policy: production may run no traffic command and names no Prometheus or SSH host
    pol = write_policy(tmp_path / "policy.yaml", secrets_dir, "https://c.example.com")
    applied = cli(tmp_path / "state", "apply", "--repo", str(repo), "--policy", str(pol))
    assert applied.returncode == 2, applied
    problems = [line.split(": ", 1)[1].split(":", 1)[0] for line in applied.stderr.splitlines()
                if "fleet.yaml:" in line]
    assert problems == ["hosts[0].address", "strategy.prometheus.url", "strategy.traffic",
                        "hosts[0].address", "strategy.prometheus.url"], applied.stderr
    assert not marker.exists()
