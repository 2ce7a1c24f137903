"""Coolify faults under the real CLI: ``reconciler apply`` against the fake Coolify (which checks
every request and answer against the v4 OpenAPI contract) while it answers 5xx, resets
connections, loses the answer to a queued deploy, answers slower than the request timeout, or
has its API switched off (429s: tests/providers/coolify/test_errors.py). Each trial is a new
commit to roll out: the apply either converges or fails honestly (exit 1, journal closed), the
next apply without the fault converges, and Coolify never builds one commit twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.journal import deployment_ids, journal_problems, newest_status
from tests.chaos.report import record_trial
from tests.providers.coolify.conftest import ALL_ABILITIES, contract, fake  # noqa: F401
from tests.providers.coolify.fake_coolify import FakeCoolify
from tests.providers.coolify.test_end_to_end import Fleet, service_yaml
from tests.state.backends import raw_query

pytestmark = pytest.mark.timeout(120)
SCENARIO = "Coolify faults (fake, v4 contract)"


def target_yaml(url: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: coolify
spec:
  provider: coolify
  url: {url}
  token: {{env: COOLIFY_E2E_TOKEN}}
  pollInterval: 50ms
  pollMaxInterval: 200ms
  deployTimeout: 30s
  requestTimeout: 400ms
  connectTimeout: 1s
  retry: {{attempts: 3, backoff: 50ms, maxBackoff: 200ms, maxRetryAfter: 5s}}
"""


def _deploy_5xx(server: FakeCoolify, app: Any) -> None:
    server.inject_5xx.extend([("/deploy", 503), ("/deploy", 500)])


def _resets(server: FakeCoolify, app: Any) -> None:
    server.drop_connections = 2


def _answer_lost(server: FakeCoolify, app: Any) -> None:
    server.deploy_fault_after_queue = 1


def _slow(server: FakeCoolify, app: Any) -> None:
    server.slow_responses.extend([(f"/applications/{app.uuid}", 1.0)] * 2)


def _api_off(server: FakeCoolify, app: Any) -> None:
    server.api_enabled = False


FAULTS: list[tuple[str, Callable[[FakeCoolify, Any], None]]] = [
    ("503+500 on /deploy", _deploy_5xx),
    ("2 connections reset", _resets),
    ("deploy queued, answer lost", _answer_lost),
    ("answers slower than requestTimeout", _slow),
    ("API disabled", _api_off),
]


def _clear(server: FakeCoolify) -> None:
    server.inject_5xx.clear()
    server.inject_429.clear()
    server.slow_responses.clear()
    server.drop_connections = 0
    server.deploy_fault_after_queue = 0
    server.api_enabled = True


async def test_coolify_faults_converge(fake: FakeCoolify, tmp_path: Path,  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = fake.add_token(ALL_ABILITIES)
    monkeypatch.setenv("COOLIFY_E2E_TOKEN", token)
    monkeypatch.setenv("API_KEY_E2E", "chaos-not-a-secret")
    fleet = Fleet(tmp_path, fake, token)
    await fleet.git("init", "-q", "-b", "main")
    fleet.write("target.yaml", target_yaml(fake.url))
    app = fake.add_app("api")
    url = f"sqlite:///{fleet.state / 'fraisier.db'}"
    fleet.write("api.yaml", service_yaml(app.uuid, f"{0:040x}"))
    await fleet.commit("first")
    code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
    assert code == 0, out + err

    honest_failures = 0
    for trial, (name, inject) in enumerate(FAULTS, start=1):
        started = time.monotonic()
        sha = f"{trial:040x}"
        fleet.write("api.yaml", service_yaml(app.uuid, sha))
        await fleet.commit(name)
        before = deployment_ids(url)
        inject(fake, app)
        try:
            code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
        finally:
            _clear(fake)
        assert "Traceback" not in out + err, out + err
        assert code in (0, 1), (name, code, out, err)
        note = f"{name}: apply exit {code}"
        if code == 1:
            honest_failures += 1
            # failed honestly: nothing left open in the journal before the rerun
            assert journal_problems(url, before) == [], (name, journal_problems(url, before))
            interrupted = newest_status(url, "api")
            force = ["--force"] if interrupted in ("rolled_back", "rollback_failed") else []
            code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo), *force)
            note += f" ({interrupted}), rerun{' --force' if force else ''} exit {code}"
        [api] = raw_query(url, "SELECT sync_status, applied_revision FROM v_resource "
                               "WHERE kind = 'Service' AND name = 'api'")
        builds = [d.status for d in fake.history(app.uuid) if d.commit == sha]
        converged = (code == 0 and api[0] == "Synced" and app.running_commit == sha
                     and builds.count("finished") == 1)
        problems = journal_problems(url, before)
        record_trial(SCENARIO, converged, len(problems), note=note,
                     seconds=time.monotonic() - started)
        assert converged, (name, out, err, api, builds)
        assert problems == [], (name, problems)
    assert honest_failures >= 1, "no fault was severe enough to fail an apply"
