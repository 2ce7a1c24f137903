"""An anonymous connection flood against the daemon, with a real Service under it.

The daemon runs with the open-files limit systemd gives a service (``LimitNOFILE=1024:524288``;
the hard limit is this process's own when it may not raise it), follows a local config repo and
supervises one real Service (the example app, a local process) with self-heal checking it every
second. Then 2,000 connections from 8 loopback peer addresses send half a request each and hold
it; the ones the daemon closes are reopened at once. While they are held:

- ``/healthz`` is probed every 100 ms from another address: p99 under 1 s, every answer 200;
- a signed GitHub push (the real sample, re-pointed at the repo's commit) goes out every second:
  every one answered 202;
- self-heal must see no drift (``reconciler_drift_resources`` stays 0), the Service's process is
  the same one afterwards (no restart) and no deployment is made.

Bounded and loopback only. The hold is ``FRAISIER_FLOOD_HOLD`` seconds (default 5; the figure in
docs/reliability.md was measured with 30).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.chaos.journal import deployment_ids, journal_problems
from tests.chaos.report import record_trial
from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for
from tests.helpers import need
from tests.security.httpfront import (
    GITHUB_SAMPLE,
    Flood,
    github_headers,
    github_push,
    loopback_sources,
    metric,
    start,
    stop,
    systemd_nofile,
    timed_get,
)
from tests.security.httpfront import (
    request as http_request,
)

pytestmark = pytest.mark.timeout(240)
SCENARIO = "HTTP connection flood (daemon, soft 1024 open files)"
HOLD = float(os.environ.get("FRAISIER_FLOOD_HOLD", "5"))
CONNECTIONS = 2000


def service_pid(fleet: Fleet) -> int:
    pidfile = next(fleet.root.rglob("*.pid"))
    return int(json.loads(pidfile.read_text())["pid"])


def serves(port: int) -> bool:
    try:
        return http_get(port)[0] == 200
    except OSError:
        return False


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_half_open_flood_with_a_service_under_the_daemon(fleet: Fleet, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    need(GITHUB_SAMPLE.is_file(), f"webhook sample {GITHUB_SAMPLE} not found")
    app_port = free_port()
    fleet.write("api.yaml", service_yaml("api", app_port, greeting="steady"))
    head = fleet.commit("api")
    soft, hard = systemd_nofile()
    daemon = start(tmp_path, repo=fleet.repo, nofile=(soft, hard),
                   extra_args=("--heal-interval", "1s"))
    request.addfinalizer(lambda: stop(daemon))  # whatever fails below (stop is idempotent)
    db = f"sqlite:///{daemon.state / 'fraisier.db'}"
    flood = Flood(daemon.port, CONNECTIONS, loopback_sources(8))
    request.addfinalizer(flood.close)
    started = time.monotonic()
    try:
        wait_for(lambda: serves(app_port), timeout=60, step=0.2)
        pid = service_pid(fleet)
        before = deployment_ids(db)
        flood.fill()
        time.sleep(0.3)
        flood.send_partial()
        latencies: list[float] = []
        failed_probes = 0
        webhooks: list[int] = []
        drift_seen = 0.0
        reopened = 0
        deadline = time.monotonic() + HOLD
        next_hook = time.monotonic()
        while time.monotonic() < deadline:
            seconds, status = timed_get(daemon, timeout=5)
            latencies.append(seconds)
            failed_probes += status != 200
            if time.monotonic() >= next_hook:
                body = github_push(len(webhooks))
                doc = json.loads(body)
                # the commit already applied; a distinct body each (replays are not new pushes)
                doc.update(after=head, ref="refs/heads/main", x_probe=len(webhooks))
                body = json.dumps(doc).encode()
                try:
                    webhooks.append(http_request(daemon.port, "POST", "/webhooks/github",
                                                 body, github_headers(body, None),
                                                 timeout=5)[0])
                except OSError:
                    webhooks.append(0)
                drift_seen = max(drift_seen, metric(daemon.port, "reconciler_drift_resources"))
                next_hook += 1.0
            reopened += flood.refill()
            time.sleep(0.1)
        held = len(flood.sockets)
        refused = {reason: metric(daemon.port, "reconciler_http_refused_total",
                                  f'reason="{reason}"')
                   for reason in ("connections", "peer_connections", "fd_reserve", "evicted",
                                  "header_timeout")}
    finally:
        flood.close()
    try:
        time.sleep(1.5)  # one more self-heal check after the flood
        drift_seen = max(drift_seen, metric(daemon.port, "reconciler_drift_resources"))
        same_pid = service_pid(fleet) == pid
        deployments = deployment_ids(db) - before
        problems = journal_problems(db, before)
        daemon_alive = daemon.alive()
        drift_lines = daemon.log_lines("drift detected")
    finally:
        code = stop(daemon)
    worst = p99(latencies)
    note = (f"{CONNECTIONS} half-open held {HOLD:.0f}s (soft {soft}, hard {hard}): "
            f"/healthz p99 {worst * 1000:.1f} ms over {len(latencies)} probes, "
            f"{failed_probes} failed; webhooks {webhooks.count(202)}/{len(webhooks)} 202; "
            f"drift {drift_seen:.0f}; service restarts {0 if same_pid else 1}; "
            f"deployments {len(deployments)}; connections held at the end {held}, "
            f"reopened {reopened}; refused {refused}")
    print(note)
    ok = (worst < 1.0 and failed_probes == 0 and webhooks and set(webhooks) == {202}
          and drift_seen == 0 and same_pid and not deployments and not problems
          and daemon_alive and code == 0 and not drift_lines)
    record_trial(SCENARIO, ok, len(problems), note=note, seconds=time.monotonic() - started)
    assert worst < 1.0 and failed_probes == 0, note
    assert webhooks and set(webhooks) == {202}, note
    assert drift_seen == 0 and not drift_lines, drift_lines
    assert same_pid, "the Service was restarted during the flood"
    assert not deployments, deployments
    assert not problems, problems
    assert daemon_alive and code == 0
