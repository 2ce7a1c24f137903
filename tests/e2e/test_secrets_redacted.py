"""Secret values never leave the service process: not in CLI output, logs, the database, the
state dir, the target root or the metrics.

A fleet uses secret references ({env: NAME} and {file: /path}) with distinctive values. Every
CLI command of a normal run (validate, diff, apply, status, history; text and JSON; debug log
level), a rollback, and a short daemon run (with /metrics, /readyz and a webhook) are captured,
and every byte they wrote is grepped. The values do reach the service (checked in
/proc/<pid>/environ), so the test would notice references that were never resolved.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, free_port, git, greeting, http_get, service_yaml, wait_for

pytestmark = pytest.mark.timeout(240)

ENV_SECRET = "s3cr3t-ENV-7c1d9a4e5b"
FILE_SECRET = "s3cr3t-FILE-2f8e6b0c13"
WEBHOOK_SECRET = "s3cr3t-HOOK-91ab33d0e7"
SECRETS = (ENV_SECRET, FILE_SECRET, WEBHOOK_SECRET)


def secret_env(secret_file: Path) -> str:
    return ("\n    DB_PASSWORD: {env: FRAISIER_TEST_DB_PASSWORD}"
            f"\n    API_TOKEN: {{file: {secret_file}}}")


def hits(data: bytes) -> list[str]:
    """Which secret values (plain, or in a few encodings a leak could take) occur in data."""
    found = []
    for secret in SECRETS:
        forms = {secret.encode(), secret.encode("utf-16-le"), secret.encode().hex().encode(),
                 json.dumps(secret).encode()}
        forms.add(base64.b64encode(secret.encode()).rstrip(b"="))
        if any(form in data for form in forms):
            found.append(secret)
    return found


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}



def test_secret_values_appear_nowhere(fleet: Fleet, tmp_path: Path) -> None:
    secret_file = tmp_path / "secrets" / "api_token"
    secret_file.parent.mkdir()
    secret_file.write_text(FILE_SECRET + "\n")
    os.environ["FRAISIER_TEST_DB_PASSWORD"] = ENV_SECRET  # the CLI children inherit it
    outputs: dict[str, bytes] = {}

    def run(*args: str, level: str = "debug", fmt: str = "json") -> subprocess.CompletedProcess[
            bytes]:
        cmd = [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
               "--log-format", fmt, "--log-level", level, *args]
        proc = subprocess.run(cmd, capture_output=True, timeout=90, cwd=fleet.repo)
        name = f"{fmt}: {' '.join(args)}"
        outputs[f"{name} (stdout)"] = proc.stdout
        outputs[f"{name} (stderr)"] = proc.stderr
        return proc

    try:
        port = free_port()
        fleet.write("api.yaml", service_yaml("api", port, greeting="one",
                                             extra_env=secret_env(secret_file)))
        fleet.commit("api with secrets")
        for fmt in ("json", "text"):
            assert run("validate", str(fleet.repo / "fleet"), fmt=fmt).returncode == 0
            assert run("diff", *fleet.repo_args(), fmt=fmt).returncode in (0, 1)
            assert run("diff", *fleet.repo_args(), "-o", "json", fmt=fmt).returncode in (0, 1)
        applied = run("apply", *fleet.repo_args())
        assert applied.returncode == 0, applied.stderr[-2000:]
        assert greeting(port) == "one"

        # The values did reach the service process (so the references really were resolved).
        pid = int(json.loads(next(fleet.root.rglob("api.pid")).read_text())["pid"])
        service_env = environ_of(pid)
        assert service_env["DB_PASSWORD"] == ENV_SECRET
        assert service_env["API_TOKEN"] == FILE_SECRET

        # A failing revision: failure messages and the rollback go through the error paths.
        fleet.write("api.yaml", service_yaml("api", port, greeting="two", fail=True,
                                             extra_env=secret_env(secret_file)))
        fleet.commit("broken health")
        assert run("apply", *fleet.repo_args(), fmt="text").returncode != 0
        assert greeting(port) == "one"
        # A reference that cannot be resolved: the error names it, never a value.
        fleet.write("api.yaml", service_yaml(
            "api", port, greeting="three",
            extra_env=secret_env(secret_file) + "\n    OTHER: {env: FRAISIER_TEST_UNSET}"))
        fleet.commit("unresolvable reference")
        unresolved = run("apply", *fleet.repo_args())
        assert unresolved.returncode != 0
        assert b"env:FRAISIER_TEST_UNSET" in unresolved.stdout + unresolved.stderr
        for fmt in ("json", "text"):
            for output in ("json", "text"):
                assert run("status", "-o", output, fmt=fmt).returncode in (0, 1)
                assert run("history", "api", "-o", output, fmt=fmt).returncode == 0
                assert run("audit", "-o", output, fmt=fmt).returncode == 0
        assert run("logs", "api", *fleet.repo_args()).returncode == 0
        assert run("db", "status", "-o", "json").returncode == 0
        history = json.loads(outputs["json: history api -o json (stdout)"])
        assert {h["status"] for h in history} >= {"succeeded", "rolled_back"}
        # the Target's own audit row (it has no deployment) is in the database scanned below
        trail = json.loads(outputs["json: audit -o json (stdout)"])
        assert {e["resource"] for e in trail} >= {"default/Service/api", "default/Target/local"}

        # A short daemon run: one more commit rolled out, then metrics and readiness scraped.
        fleet.write("api.yaml", service_yaml("api", port, greeting="four",
                                             extra_env=secret_env(secret_file)))
        fleet.commit("four")
        listen = free_port()
        env = {**os.environ, "FRAISIER_TEST_HOOK": WEBHOOK_SECRET}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
             "--log-level", "debug", "daemon", *fleet.repo_args(),
             "--listen", f"127.0.0.1:{listen}", "--interval", "2s",
             "--webhook-secret", "gitlab=env:FRAISIER_TEST_HOOK",
             "--webhook-repo", "https://gitlab.example.com/acme/fleet.git"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            wait_for(lambda: greeting(port) == "four", timeout=60, step=0.1)
            wait_for(lambda: http_get(listen, "/readyz")[0] == 200, timeout=30, step=0.1)
            # A webhook with a wrong token: its rejection is logged, never the token compared.
            request = urllib.request.Request(
                f"http://127.0.0.1:{listen}/webhooks/gitlab", data=b"{}", method="POST",
                headers={"X-Gitlab-Token": "wrong-token", "X-Gitlab-Event": "Push Hook",
                         "Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as rejected:
                urllib.request.urlopen(request, timeout=5)
            assert rejected.value.code == 401
            outputs["GET /readyz"] = http_get(listen, "/readyz")[1].encode()
            wait_for(lambda: "reconciler_reconcile_total" in http_get(listen, "/metrics")[1],
                     timeout=10)
            time.sleep(5)  # a few polls and a self-heal pass go by
            outputs["GET /metrics"] = http_get(listen, "/metrics")[1].encode()
            outputs["GET /healthz"] = http_get(listen, "/healthz")[1].encode()
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                out, err = daemon.communicate(timeout=30)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
        outputs["daemon (stdout)"], outputs["daemon (stderr)"] = out, err
        assert daemon.returncode == 0, err[-3000:]
        assert b"desired state loaded" in err and b"reconcile_total" in outputs["GET /metrics"]
    finally:
        os.environ.pop("FRAISIER_TEST_DB_PASSWORD", None)

    leaks = {name: found for name, data in outputs.items() if (found := hits(data))}
    # Every file the reconciler wrote: database (and WAL), caches, clones, releases, pidfiles,
    # service logs. The bare_metal provider with the local supervisor hands the environment to
    # the process directly (Popen env=) and writes no env file, so nothing is exempt.
    files = [p for root in (fleet.state, fleet.root) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix in (".db", ".sqlite", ".sqlite3") for p in files), files
    for path in files:
        found = hits(path.read_bytes())
        if found:
            leaks[str(path)] = found
    assert not leaks, leaks


SSH_SECRET = "s3cr3t-SSH-5d0c7e19aa"


@pytest.mark.timeout(150)
def test_ssh_target_keeps_secret_values_to_the_environment_file(tmp_path: Path,
                                                                 ssh_host: Any) -> None:
    """Over SSH + systemd the provider must write the values somewhere the unit can read them:
    the ``environment`` file (mode 0600). Nowhere else on the host: not in the unit, the
    releases, the journal (sudo logs every command line it runs) or the command line of any
    process (readable by every user of the host through ps) while a build step runs."""
    from tests.providers.bare_metal.conftest import HOST_APP

    host = ssh_host
    port = free_port()
    host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-", str(port)])
    since = host.sh("date +%s").strip()
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(HOST_APP)
    (repo / "app" / "VERSION").write_text("v1\n")
    (repo / "fleet").mkdir()
    (repo / "fleet" / "fleet.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: hosts}}
spec:
  provider: bare_metal
  transport: ssh
  hosts:
    - name: {host.name}
      address: {host.address}
      port: {host.port}
      user: {host.sudo_user}
      sudo: true
      identityFile: {host.identity_file}
      knownHosts: {host.known_hosts}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  target: hosts
  source: {{path: app}}
  build: [sh, -c, "sleep 3; echo built > BUILT"]
  command: [python3, app.py]
  env:
    GREETING: hi
    TOKEN: {{env: FRAISIER_TEST_SSH_TOKEN}}
  stopTimeout: 3s
  health:
    exec: {{command: [python3, app.py, check]}}
    interval: 100ms
    timeout: 2s
    startPeriod: 1s
""")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "ssh fleet")
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
         "--log-level", "debug", "apply", "--repo", str(repo), "--path", "fleet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "FRAISIER_TEST_SSH_TOKEN": SSH_SECRET})
    # Every process command line on the host, sampled while the build runs.
    seen_in_ps: set[str] = set()
    # Filtered here, not on the host: a remote grep would carry the value in its own argv.
    scan = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$f 2>/dev/null; echo; done"
    try:
        while apply.poll() is None:
            seen_in_ps.update(line for line in host.sh(scan, timeout=10).splitlines()
                              if SSH_SECRET in line)
            time.sleep(0.05)
        out, err = apply.communicate(timeout=5)
    finally:
        if apply.poll() is None:
            apply.kill()
    assert apply.returncode == 0, err[-3000:]
    assert http_get(port)[1].startswith("v1 hi")
    assert not hits(out + err) and SSH_SECRET.encode() not in out + err

    # The pattern goes in on stdin (grep -f /dev/stdin), never on a command line.
    files = host.run(["sh", "-c", "grep -rlF -f /dev/stdin /srv/fraisier /etc/systemd/system "
                      "/tmp /var/tmp /root /home 2>/dev/null || true"],
                     input=SSH_SECRET.encode()).stdout.decode().split()
    assert len(files) == 1 and files[0].endswith("/api/environment"), files
    assert host.sh(f"stat -c %a {files[0]}").strip() == "600"
    logged = host.run(["sh", "-c", "grep -rhF -f /dev/stdin /var/log 2>/dev/null || true"],
                      input=SSH_SECRET.encode()).stdout.decode().splitlines()
    journal = host.sh(f"journalctl --no-pager -o cat --since @{since} 2>/dev/null || true",
                      timeout=30)
    logged += [line for line in journal.splitlines() if SSH_SECRET in line]
    def around(line: str) -> str:
        redacted = line.replace(SSH_SECRET, "<SECRET>")
        return redacted[max(0, redacted.find("<SECRET>") - 100):][:160]

    problems = {what: [around(line) for line in lines[:2]]
                for what, lines in (("process command lines", sorted(seen_in_ps)),
                                    ("journal or /var/log", logged))}
    # (Before 002b7d1 the build got the values as `env -i -- NAME=value` words: visible in ps
    # for the whole build and logged by sudo to the journal.)
    assert not any(problems.values()), problems
