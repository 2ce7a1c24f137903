"""Prune removes a Target's Services before the Target (issue 15, item 9)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_prune_removes_services_before_their_target(fleet: Fleet) -> None:
    good, bad = free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", good))
    # Its first deploy fails: recorded, never applied.
    fleet.write("bad.yaml", service_yaml("bad", bad, fail=True))
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 1
    assert http_get(good)[0] == 200
    pids = [int(json.loads(p.read_text())["pid"]) for p in fleet.root.rglob("*.pid")
            if "api" in str(p)]
    assert pids and all(_alive(p) for p in pids)

    for name in ("api.yaml", "bad.yaml", "target.yaml"):
        (fleet.repo / "fleet" / name).unlink()
    fleet.write("README.md", "nothing deployed here any more\n")
    fleet.commit("remove everything")
    plan = fleet.json("diff", *fleet.repo_args(), "--prune")
    order = [r["resource"] for r in plan["resources"] if r["action"] == "delete"]
    assert order.index("default/Target/local") == len(order) - 1, order

    out = fleet.cli("apply", *fleet.repo_args(), "--prune")
    assert out.returncode == 0, out.stdout + out.stderr
    # The Service's process went with it (its Target was still known when it was pruned).
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=10)
    status = fleet.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert fleet.json("status")["resources"] == []


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL1vggaFRUNcgjzpK8S8NzfAQqZ8AGv3leyC/S+gc6e+"


@pytest.mark.timeout(150)
def test_prune_of_a_never_deployed_service_on_an_unreachable_host_ends(
        fleet: Fleet, testinfra: Any) -> None:
    """A Service whose first deploy failed because its host never answered: removing it and its
    Target from git with --prune forgets both (nothing of it ever ran), in order, and `status`
    exits 0 — instead of a prune that fails on every pass and `status` exit 1 for good."""
    closed = free_port()  # nothing listens: the host is gone
    key = testinfra.identity_file
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
spec:
  provider: bare_metal
  transport: ssh
  ssh: {{connectTimeout: 1s, retryDeadline: 2s}}
  hosts:
    - {{name: gone, address: 127.0.0.1, port: {closed}, user: root, identityFile: {key},
        hostKeys: ["{HOST_KEY}"]}}
""")
    fleet.write("api.yaml", service_yaml("api", free_port()))
    fleet.commit()
    first = fleet.cli("apply", *fleet.repo_args())
    assert first.returncode == 1, first.stdout + first.stderr

    for name in ("api.yaml", "target.yaml"):
        (fleet.repo / "fleet" / name).unlink()
    fleet.write("README.md", "nothing deployed here any more\n")
    fleet.commit("remove everything")
    pruned = fleet.cli("apply", *fleet.repo_args(), "--prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    status = fleet.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert fleet.json("status")["resources"] == []
    assert fleet.cli("apply", *fleet.repo_args(), "--prune").returncode == 0


@pytest.mark.timeout(200)
def test_a_target_stays_until_its_services_are_pruned(
        fleet: Fleet, ssh_host: Any, testinfra: Any) -> None:
    """A Service's prune fails (its host's sshd is down): its Target is not pruned after it
    in that pass, and the next pass, with the host back, removes the Service's unit and then
    the Target."""
    import subprocess

    from tests.providers.bare_metal.conftest import HOST_APP

    port = free_port()
    ssh_host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-", str(port)])
    (fleet.repo / "app" / "app.py").write_text(HOST_APP)
    (fleet.repo / "app" / "VERSION").write_text("v1\n")
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
spec:
  provider: bare_metal
  transport: ssh
  ssh: {{connectTimeout: 1s, retryDeadline: 2s}}
  hosts:
    - {{name: {ssh_host.name}, address: {ssh_host.address}, port: {ssh_host.port}, user: root,
        identityFile: {ssh_host.identity_file}, knownHosts: {ssh_host.known_hosts}}}
""")
    fleet.write("api.yaml", f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
spec:
  target: local
  source: {{path: app}}
  command: [python3, app.py]
  stopTimeout: 3s
  health:
    http: {{url: "http://{{host}}:{port}/"}}
    interval: 100ms
    startPeriod: 1s
""")
    fleet.commit()
    first = fleet.cli("apply", *fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert http_get(port)[0] == 200

    for name in ("api.yaml", "target.yaml"):
        (fleet.repo / "fleet" / name).unlink()
    fleet.write("README.md", "nothing deployed here any more\n")
    fleet.commit("remove everything")

    def sshd(action: str) -> None:
        subprocess.run([testinfra.docker_cli, "exec", ssh_host.container, "systemctl", action,
                        "ssh"], check=True, capture_output=True, timeout=30)

    sshd("stop")
    try:
        failed = fleet.cli("apply", *fleet.repo_args(), "--prune")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        left = {r["resource"] for r in fleet.json("status")["resources"]}
        assert left == {"default/Service/api", "default/Target/local"}, left
    finally:
        sshd("start")
    ssh_host.wait_ssh(timeout=15)
    pruned = fleet.cli("apply", *fleet.repo_args(), "--prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert fleet.json("status")["resources"] == []
    assert "fraisier-default_api" not in ssh_host.sh("ls /etc/systemd/system")
    wait_for(lambda: http_get(port, timeout=0.5)[0] != 200 if _listening(port) else True)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
