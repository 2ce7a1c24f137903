"""A weighted canary gated by a real Prometheus: the analysis step queries the new revision's
error rate (the example app's own /metrics, scraped every second) while a request loop sends
traffic through a real nginx. A healthy revision is promoted; one answering 40 % errors fails
its analysis, traffic goes back to the old slot and the revision is recorded rolled back."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, free_port
from tests.rollout.fleets import local_fleet
from tests.rollout.proxy import Nginx, Prometheus, RequestLoop, start_nginx, start_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# no 500 at all is no series at all: "or vector(0)" makes that a rate of 0
# {slot} is filled by the analysis with the new revision's slot, which the app labels its
# metrics with (env SLOT: "{slot}")
ERROR_RATE = ('(sum(rate(app_requests_total{slot="{slot}",code="500"}[5s])) '
              'or vector(0)) / sum(rate(app_requests_total{slot="{slot}"}[5s]))')


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Fleet, Nginx, Prometheus, dict[str, int]]]:
    fleet = local_fleet(tmp_path)
    ports = {"blue": free_port(), "green": free_port()}
    proxy = start_nginx(tmp_path / "nginx", free_port(), "web", ports["blue"])
    prom = start_prometheus(tmp_path / "prom", free_port(),
                            [f"127.0.0.1:{p}" for p in ports.values()])
    try:
        yield fleet, proxy, prom, ports
    finally:
        prom.stop()
        proxy.stop()
        fleet.stop_all()


def write(fleet: Fleet, proxy: Nginx, prom: Prometheus, ports: dict[str, int], greeting: str,
          error_rate: float) -> None:
    query = ERROR_RATE.replace("'", "''")
    fleet.write("web.yaml", f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, app.py, --port, "{{port}}"]
  env: {{GREETING: "{greeting}", ERROR_RATE: "{error_rate}", SLOT: "{{slot}}"}}
  stopTimeout: 2s
  health:
    http: {{url: "http://{{host}}:{{port}}/healthz"}}
    interval: 200ms
    startPeriod: 1s
  strategy:
    type: canary
    ports: {{blue: {ports['blue']}, green: {ports['green']}}}
    traffic:
      nginx: {{upstreamFile: "{proxy.upstream_file}", upstream: web, config: "{proxy.config}"}}
    prometheus: {{url: "{prom.url}"}}
    steps:
      - setWeight: 50
      - pause: {{duration: 4s}}
      - analysis:
          duration: 5s
          interval: 1s
          failureLimit: 1   # the first scrapes of a new slot may not hold two samples yet
          queries:
            - name: error-rate
              query: '{query}'
              max: 0.1
""")


def test_canary_promoted_when_prometheus_agrees_and_rolled_back_when_not(setup: Any) -> None:
    fleet, proxy, prom, ports = setup
    loop = RequestLoop(proxy.url).start()
    try:
        write(fleet, proxy, prom, ports, "v1", 0.0)
        fleet.commit("v1")
        first = fleet.cli("apply", *fleet.repo_args(), timeout=120)
        assert first.returncode == 0, first.stdout + first.stderr

        write(fleet, proxy, prom, ports, "v2", 0.0)
        fleet.commit("v2 healthy")
        second = fleet.cli("apply", *fleet.repo_args(), timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        dep = fleet.json("history", "web")[0]
        analysis = [s for s in dep["steps"] if s["action"] == "analysis"]
        assert analysis and analysis[0]["status"] == "succeeded", analysis
        assert "error-rate" in (analysis[0]["detail"] or "")

        write(fleet, proxy, prom, ports, "v3", 0.4)
        fleet.commit("v3 errors")
        third = fleet.cli("apply", *fleet.repo_args(), timeout=120)
        assert third.returncode == 1, third.stdout + third.stderr
    finally:
        loop.stop()
    dep = fleet.json("history", "web")[0]
    assert dep["status"] == "rolled_back", dep
    analysis = [s for s in dep["steps"] if s["action"] == "analysis"]
    assert analysis[0]["status"] == "failed"
    assert "error-rate" in analysis[0]["detail"] and "above max 0.1" in analysis[0]["detail"]
    # traffic is back on v2 only
    bodies = RequestLoop(proxy.url).start()
    time.sleep(1.0)
    bodies.stop()
    assert bodies.bodies and {json.loads(b)["greeting"] for b in bodies.bodies} == {"v2"}
    assert bodies.errors == []
