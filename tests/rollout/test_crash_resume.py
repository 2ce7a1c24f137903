"""SIGKILL of the daemon at ≥ 20 journal points across rolling, blue-green and canary rollouts on
bare metal (local and SSH+systemd hosts) and Docker Compose: after a restart every rollout
resumes or rolls back, the fleet converges, and the journal has no open or unexplained record.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.report import record_trial
from tests.e2e.conftest import Fleet, free_port
from tests.rollout.crash import CrashHarness
from tests.rollout.fleets import local_fleet, new_fleet, ssh_fleet
from tests.rollout.proxy import Nginx, start_nginx
from tests.rollout.test_rolling_ssh import APP as HOST_APP
from tests.rollout.test_rolling_ssh import service as ssh_api_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def get(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.read().decode()
    except OSError as exc:
        return f"down ({exc})"


def check(harness: CrashHarness) -> None:
    for t in harness.trials:
        print(f"{t.scenario}: kill at {t.kill_at} ({t.killed_during}) converged={t.converged} "
              f"lost={t.lost} {t.seconds}s")
    for t in harness.trials:
        record_trial(f"SIGKILL daemon: {t.scenario}", t.converged, t.lost,
                     note=f"killed at step {t.kill_at} ({t.killed_during})", seconds=t.seconds)
    summary = [(t.kill_at, t.killed_during, t.converged, t.lost) for t in harness.trials]
    assert all(t.converged for t in harness.trials), summary
    assert all(t.lost == 0 for t in harness.trials), summary


# -- blue-green on the local host, behind a real nginx ------------------------------------------
@pytest.fixture
def local_bg(tmp_path: Path) -> Iterator[tuple[Fleet, Nginx, dict[str, int]]]:
    fleet = local_fleet(tmp_path)
    ports = {"blue": free_port(), "green": free_port()}
    proxy = start_nginx(tmp_path / "nginx", free_port(), "web", ports["blue"])
    try:
        yield fleet, proxy, ports
    finally:
        proxy.stop()
        fleet.stop_all()


def test_sigkill_during_blue_green_on_local_bare_metal(local_bg: Any) -> None:
    fleet, proxy, ports = local_bg

    def write(greeting: str, failing: bool) -> None:
        fleet.write("web.yaml", f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, app.py, --port, "{{port}}"]
  env: {{GREETING: "{greeting}", FAIL_HEALTH: "{'1' if failing else '0'}"}}
  stopTimeout: 2s
  health:
    http: {{url: "http://{{host}}:{{port}}/healthz"}}
    interval: 100ms
    startPeriod: 1s
    failureThreshold: 2
  strategy:
    type: blue-green
    scaleDownDelay: 1s
    ports: {{blue: {ports['blue']}, green: {ports['green']}}}
    traffic:
      nginx: {{upstreamFile: "{proxy.upstream_file}", upstream: web, config: "{proxy.config}"}}
""")

    def live() -> set[str]:
        # what clients see through nginx, and that only one slot is left running
        through = get(proxy.port)
        slots = [get(p) for p in ports.values()]
        running = [s for s in slots if not s.startswith("down")]
        if len(running) != 1:
            return {"two slots running"}
        return {json.loads(through)["greeting"]} if through.startswith("{") else {through}

    harness = CrashHarness(fleet, "blue-green (bare metal, local)", write, live)
    harness.baseline()
    # steps of a blue-green rollout: deploy, health, traffic, retire
    for kill_at in (1, 2, 3, 4):
        harness.trial(kill_at)
    harness.trial(2, failing=True)
    harness.trial(1)
    harness.trial(3, failing=True)
    check(harness)


# -- rolling and canary on SSH+systemd hosts ----------------------------------------------------
@pytest.fixture
def ssh_setup(tmp_path: Path, ssh_hosts: Any) -> tuple[Fleet, dict[str, int], Any]:
    fleet, ports = ssh_fleet(tmp_path, ssh_hosts, HOST_APP)
    return fleet, ports, ssh_hosts


def ssh_service(fleet: Fleet, hosts: Any, strategy: str) -> Any:
    def write(greeting: str, failing: bool) -> None:
        if failing:  # the app fails its health check where this marker exists
            hosts[0].run(["touch", f"/etc/fraisier-fail-{greeting}"])
        fleet.write("api.yaml", ssh_api_service(greeting, strategy))
    return write


def test_sigkill_during_rolling_and_canary_on_ssh_hosts(ssh_setup: Any) -> None:
    fleet, ports, hosts = ssh_setup

    def live() -> set[str]:
        return {get(p) for p in ports.values()}

    rolling = ssh_service(fleet, hosts, """
    type: rolling
    maxParallel: 2""")
    harness = CrashHarness(fleet, "rolling (bare metal, SSH+systemd)", rolling, live)
    harness.baseline()
    # 3 hosts, batches of 2: deploy, deploy, health, health, deploy, health
    for kill_at in (1, 3, 5):
        harness.trial(kill_at)
    check(harness)

    canary_steps = ssh_service(fleet, hosts, """
    type: canary
    steps:
      - setCanary: 1
      - pause: {duration: 1s}
      - setCanary: 2""")
    harness2 = CrashHarness(fleet, "canary (bare metal, SSH+systemd)", canary_steps, live)
    harness2.good = harness.good
    harness2.n = harness.n
    # deploy h1, health, pause, deploy h2, health, deploy h3, health
    for kill_at in (3, 4):
        harness2.trial(kill_at)
    # a failing canary, killed while rolling back would be too late to hit reliably; kill in
    # the canary's health gate: the restart deploys it again, fails, and rolls back
    harness2.trial(2, failing=True)
    check(harness2)


# -- rolling replicas and blue-green slots on Docker Compose -----------------------------------
@pytest.fixture
def compose_fleet(tmp_path: Path, docker_engine: Any, tiny_image: str) -> Iterator[Any]:
    from tests.providers.compose.conftest import _remove_environment
    from tests.providers.compose.test_compose_replicas import port_prefix

    environment = f"crash-{tmp_path.name[-12:].lower().strip('-_') or 'x'}"
    environment = "".join(c if c.isalnum() else "-" for c in environment).strip("-")
    fleet = new_fleet(tmp_path)
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: docker, environment: {environment}}}
spec:
  provider: compose
  docker: {{host: "{docker_engine.docker_host}"}}
""")
    prefix = port_prefix(7)  # 4 replicas, then the blue/green slots <prefix>6 and <prefix>7
    try:
        yield fleet, environment, tiny_image, prefix
    finally:
        _remove_environment(docker_engine, environment)


def compose_service(fleet: Fleet, environment: str, image: str, port: str,
                    strategy: str, replicas: int) -> Any:
    def write(greeting: str, failing: bool) -> None:
        health = "/nothing-here" if failing else "/"
        script = (f'mkdir -p /srv && echo "$GREETING" > /srv/index.html && exec httpd -f -p '
                  f"127.0.0.1:{port} -h /srv")
        fleet.write("web.yaml", f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: web, environment: {environment}}}
spec:
  target: docker
  env: {{GREETING: "{greeting}"}}
  stopTimeout: 2s
  health:
    http: {{url: "http://{{host}}:{port.replace('{port}', '{port}')}{health}"}}
    interval: 200ms
    startPeriod: 1s
    failureThreshold: 2
  compose:
    image: {image}
    pullPolicy: never
    networkMode: host
    replicas: {replicas}
    command: [/bin/sh, -c, '{script}']
    stopGracePeriod: 2s
  strategy:{strategy}
""")
    return write


def test_sigkill_during_rolling_and_blue_green_on_compose(compose_fleet: Any) -> None:
    fleet, environment, image, prefix = compose_fleet
    ports = [int(f"{prefix}{n}") for n in range(1, 5)]

    def replicas_live() -> set[str]:
        return {get(p).strip() for p in ports}

    rolling = compose_service(fleet, environment, image, f"{prefix}{{replica}}", """
    type: rolling
    maxParallel: 2""", 4)
    harness = CrashHarness(fleet, "rolling (compose replicas)", rolling, replicas_live)
    harness.baseline()
    # 4 replicas, batches of 2: deploy, deploy, health, health, deploy, deploy, health, health
    for kill_at in (2, 4, 6):
        harness.trial(kill_at)
    harness.trial(3, failing=True)
    check(harness)

    slots = {"blue": ports[0] + 5, "green": ports[0] + 6}

    def slot_live() -> set[str]:
        running = [get(p).strip() for p in slots.values()]
        up = [r for r in running if not r.startswith("down")]
        return set(up) if len(up) == 1 else {"not exactly one slot: " + "|".join(running)}

    bg = compose_service(fleet, environment, image, "{port}", f"""
    type: blue-green
    scaleDownDelay: 500ms
    ports: {{blue: {slots['blue']}, green: {slots['green']}}}""", 1)
    # The switch from rolling (4 replica projects) to blue-green retires the replicas.
    harness2 = CrashHarness(fleet, "blue-green (compose)", bg, slot_live)
    harness2.baseline("bg-0")
    for kill_at in (1, 2, 3):
        harness2.trial(kill_at)
    check(harness2)
