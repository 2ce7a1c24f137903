"""Encrypted secrets in the config repo, end to end through the real CLI and daemon.

A Service's env takes one value from a SOPS file and one from a whole age file of the config
repo; the reconciler holds the age identity (outside the repo). The running process sees the
values; re-encrypting a new value redeploys it (the same value re-encrypted does not); a
tampered file refuses the commit (the daemon keeps the last good state, /readyz says why, the
metric and the audit trail count it). Every byte the commands, the daemon and the databases
(SQLite file, a PostgreSQL database) hold is grepped for the values.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for
from tests.e2e.test_secrets_redacted import environ_of
from tests.spec.sops_writer import age_file, generate_identity, sops_dotenv, sops_yaml
from tests.state.backends import available, raw_query, throwaway_url

pytestmark = pytest.mark.timeout(240)

V1 = "s0ps-V1-4c0ffee9d1"
V2 = "s0ps-V2-8badf00d77"
TOKEN = "ag3-TOKEN-17e2c5aa90"
SECRETS = (V1, V2, TOKEN)

SOPS_ENV = ("\n    DB_PASSWORD: {sops: {file: secrets/prod.yaml, key: db.password}}"
            "\n    API_TOKEN: {age: {file: secrets/token.age}}"
            "\n    REGION: {sops: {file: secrets/region.env, key: region}}")


def hits(data: bytes) -> list[str]:
    import base64

    found = []
    for secret in SECRETS:
        forms = {secret.encode(), secret.encode("utf-16-le"), secret.encode().hex().encode(),
                 base64.b64encode(secret.encode()).rstrip(b"=")}
        if any(form in data for form in forms):
            found.append(secret)
    return found


def _pid(fleet: Fleet) -> int:
    return int(json.loads(next(fleet.root.rglob("api.pid")).read_text())["pid"])


def _env_of_api(fleet: Fleet) -> dict[str, str]:
    try:
        return environ_of(_pid(fleet))
    except (StopIteration, OSError, ValueError):
        return {}


def test_sops_secrets_deploy_redeploy_refuse_and_never_leak(fleet: Fleet, tmp_path: Path
                                                            ) -> None:
    identity, public = generate_identity()
    keys = tmp_path / "operator" / "age.txt"  # outside the repo
    keys.parent.mkdir()
    keys.write_text(identity)
    secrets = fleet.repo / "secrets"
    secrets.mkdir()

    def write_secret(value: str) -> None:
        (secrets / "prod.yaml").write_bytes(
            sops_yaml({"db": {"user_unencrypted": "app", "password": value}}, [public]))

    write_secret(V1)
    (secrets / "token.age").write_bytes(age_file(TOKEN.encode() + b"\n", [public], True))
    (secrets / "region.env").write_bytes(sops_dotenv({"region": "eu-west"}, [public]))
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port, extra_env=SOPS_ENV))
    fleet.commit("api with encrypted secrets")
    env = {**os.environ, "RECONCILER_AGE_IDENTITY": str(keys)}
    outputs: dict[str, bytes] = {}

    def run(*args: str, fmt: str = "json", db: str | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        cmd = [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
               "--log-format", fmt, "--log-level", "debug",
               *(["--db", db] if db else []), *args]
        proc = subprocess.run(cmd, capture_output=True, timeout=90, cwd=fleet.repo, env=env)
        outputs[f"{fmt}: {' '.join(args)} (stdout)"] = proc.stdout
        outputs[f"{fmt}: {' '.join(args)} (stderr)"] = proc.stderr
        return proc

    for fmt in ("json", "text"):
        assert run("validate", str(fleet.repo / "fleet"), fmt=fmt).returncode == 0
        assert run("diff", *fleet.repo_args(), fmt=fmt).returncode == 1
        assert run("diff", *fleet.repo_args(), "-o", "json", fmt=fmt).returncode == 1
    applied = run("apply", *fleet.repo_args())
    assert applied.returncode == 0, applied.stderr[-2000:]
    seen = _env_of_api(fleet)
    assert (seen["DB_PASSWORD"], seen["API_TOKEN"], seen["REGION"]) == (V1, TOKEN, "eu-west")
    first = fleet.json("status")

    # The same value re-encrypted (new data key, new ciphertext): nothing to deploy.
    write_secret(V1)
    fleet.commit("re-encrypt, same value")
    assert run("diff", *fleet.repo_args()).returncode == 0

    # Without the identity the commit cannot be used: refused, named, nothing applied.
    bare = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
                           "diff", *fleet.repo_args()], capture_output=True, timeout=60,
                          cwd=fleet.repo, env={k: v for k, v in os.environ.items()
                                               if k != "RECONCILER_AGE_IDENTITY"})
    assert bare.returncode == 2
    assert b"secrets/prod.yaml cannot be decrypted" in bare.stderr
    assert public.encode() in bare.stderr
    assert b"holds no age identity" in bare.stderr

    # A new value: the daemon redeploys the Service (its revision changed), and then a
    # tampered commit is refused with the last good state kept.
    write_secret(V2)
    fleet.commit("rotate the db password")
    rotated = run("diff", *fleet.repo_args(), fmt="text")
    assert rotated.returncode == 1 and b"an encrypted secret's value changed" in rotated.stdout
    listen = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
         "--log-level", "debug", "daemon", *fleet.repo_args(), "--listen",
         f"127.0.0.1:{listen}", "--interval", "1s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        wait_for(lambda: _env_of_api(fleet).get("DB_PASSWORD") == V2, timeout=60, step=0.1)
        tampered = (secrets / "prod.yaml").read_text().replace("user_unencrypted: app",
                                                               "user_unencrypted: root")
        (secrets / "prod.yaml").write_text(tampered)
        bad = fleet.commit("edit the sops file by hand")
        wait_for(lambda: bad[:12] in http_get(listen, "/readyz")[1], timeout=30, step=0.1)
        outputs["GET /readyz"] = http_get(listen, "/readyz")[1].encode()
        outputs["GET /metrics"] = http_get(listen, "/metrics")[1].encode()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            out, err = daemon.communicate(timeout=30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
    outputs["daemon (stdout)"], outputs["daemon (stderr)"] = out, err
    assert daemon.returncode == 0, err[-3000:]
    readyz = outputs["GET /readyz"].decode()
    assert "secrets/prod.yaml" in readyz and "MAC mismatch" in readyz and public in readyz
    assert re.search(r'reconciler_desired_state_refused_total\{reason="secrets"\} 1\.0',
                     outputs["GET /metrics"].decode())
    assert _env_of_api(fleet).get("DB_PASSWORD") == V2  # the last good state kept running
    def applied(status: dict[str, Any]) -> str:
        return next(str(r["appliedRevision"]) for r in status["resources"]
                    if r["resource"] == "default/Service/api")

    assert applied(fleet.json("status")) != applied(first)  # a new revision for the new value
    trail = run("audit", "-o", "json")
    assert trail.returncode == 0
    refusals = [e for e in json.loads(trail.stdout) if e.get("action") == "refuse"]
    assert refusals and "secrets/prod.yaml" in json.dumps(refusals)
    assert {e.get("actor") for e in refusals} == {"secrets"}
    for fmt in ("json", "text"):
        assert run("status", "-o", "text", fmt=fmt).returncode in (0, 1)
        assert run("history", "api", "-o", "json", fmt=fmt).returncode == 0

    # The same fleet applied into a PostgreSQL database: every row of every table grepped.
    pg_rows = b""
    if available("postgresql")[0]:
        write_secret(V2)
        fleet.commit("repair the file")
        with throwaway_url("postgresql", tmp_path) as url:
            fleet.stop_all()
            assert run("apply", *fleet.repo_args(), db=url).returncode in (0, 1)
            tables = raw_query(url, "SELECT table_name FROM information_schema.tables "
                                    "WHERE table_schema = 'public'")
            assert len(tables) > 3
            for (table,) in tables:
                rows = raw_query(url, f'SELECT * FROM "{table}"')
                pg_rows += repr(rows).encode()
        assert b"default/Service/api" in pg_rows  # the deployment and its audit rows
        outputs["postgresql rows"] = pg_rows
    elif os.environ.get("RECONCILER_REQUIRE_INTEGRATION") == "1":
        pytest.fail("PostgreSQL not reachable at 127.0.0.1:5432")

    leaks = {name: found for name, data in outputs.items() if (found := hits(data))}
    files = [p for p in fleet.state.rglob("*") if p.is_file()]
    assert any(p.suffix in (".db", ".sqlite", ".sqlite3") for p in files), files
    for path in files + [p for p in fleet.root.rglob("*") if p.is_file()]:
        if found := hits(path.read_bytes()):
            leaks[str(path)] = found
    assert not leaks, leaks
