"""The test infrastructure itself: hosts, reset, systemd units, tiny image, compose v1 and v2."""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers import free_port, need
from tests.infra.testinfra import Infra, InfraHost


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def wait_http(url: str, timeout: float = 15.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.timeout(60)
def test_hosts_are_distinct_and_both_users_log_in(testhosts: tuple[InfraHost, ...]) -> None:
    assert len(testhosts) >= 2
    machine_ids = set()
    for host in testhosts:
        name, machine_id, state = host.sh(
            "hostname; cat /etc/machine-id; systemctl is-system-running || true"
        ).split()
        assert name == host.name
        assert state in {"running", "degraded"}
        machine_ids.add(machine_id)
        assert host.sh("id -un; sudo -n id -u", user="deploy").split() == ["deploy", "0"]
    assert len(machine_ids) == len(testhosts)


@pytest.mark.timeout(60)
def test_reset_removes_units_and_files_quickly(ssh_host: InfraHost) -> None:
    ssh_host.sh(
        "mkdir -p /srv/fraisier/releases/a && echo x >/srv/fraisier/releases/a/f && "
        "printf '[Service]\\nExecStart=/bin/sleep 600\\nTimeoutStopSec=90\\n"
        "KillSignal=SIGCONT\\n' >/etc/systemd/system/fraisier-reset-probe.service && "
        "systemctl daemon-reload && systemctl start fraisier-reset-probe.service && "
        "systemd-run --unit fraisier-transient-probe /bin/sleep 600 >/dev/null 2>&1"
    )
    assert ssh_host.sh("systemctl is-active fraisier-reset-probe.service").strip() == "active"

    started = time.perf_counter()
    ssh_host.reset()
    elapsed = time.perf_counter() - started

    states = ssh_host.sh(
        "systemctl list-units --all --plain --no-legend 'fraisier-*' | wc -l; "
        "ls /etc/systemd/system | grep -c fraisier || true; "
        "test -e /srv/fraisier && echo present || echo gone"
    ).split()
    assert states == ["0", "0", "gone"]
    assert elapsed < 1.5, f"reset took {elapsed:.2f}s"


@pytest.mark.timeout(60)
def test_systemd_unit_on_a_host_serves_http_to_this_machine(ssh_host: InfraHost) -> None:
    port = free_port()
    unit = (
        "[Service]\n"
        "ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1"
        f" --directory /srv/fraisier {port}\n"
    )
    ssh_host.run(["mkdir", "-p", "/srv/fraisier"])
    ssh_host.run(["sh", "-c", "cat >/srv/fraisier/hello.txt"], input=b"hello from the host\n")
    ssh_host.run(
        ["sh", "-c", "cat >/etc/systemd/system/fraisier-http-probe.service"], input=unit.encode()
    )
    ssh_host.run(["systemctl", "daemon-reload"])
    ssh_host.run(["sudo", "-n", "systemctl", "start", "fraisier-http-probe.service"], user="deploy")
    status, body = wait_http(f"http://127.0.0.1:{port}/hello.txt")
    assert (status, body) == (200, "hello from the host\n")
    ssh_host.reset()
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}/hello.txt", timeout=1)


@pytest.mark.timeout(60)
def test_tiny_image_serves_http_on_loopback(testinfra: Infra, tiny_image: str) -> None:
    port = free_port()
    name = f"fraisier-tiny-probe-{uuid.uuid4().hex[:8]}"
    run = subprocess.run(
        [
            testinfra.docker_cli, "run", "-d", "--rm", "--init", "--name", name,
            "--network", "host", tiny_image,
            "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health") == (200, "ok\n")
    finally:
        subprocess.run([testinfra.docker_cli, "rm", "-f", name], capture_output=True, timeout=30)


COMPOSE_FILE = """\
services:
  web:
    image: {image}
    pull_policy: never
    network_mode: host
    init: true
    command: ["busybox", "httpd", "-f", "-p", "127.0.0.1:{port}", "-h", "/www"]
    healthcheck:
      test: ["CMD", "busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/health"]
      interval: 1s
      timeout: 2s
      retries: 3
  worker:
    image: {image}
    pull_policy: never
    network_mode: host
    init: true
    command: ["sh", "-c", "while true; do sleep 5; done"]
    depends_on: [web]
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_compose_up_ps_down(
    testinfra: Infra, tiny_image: str, tmp_path: Path, version: str
) -> None:
    argv = testinfra.compose_argv(version)
    need(argv is not None, f"compose {version} not installed by tests/infra/up.sh")
    assert argv is not None
    port = free_port()
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE.format(image=tiny_image, port=port))
    project = ["-p", f"fraisier-infra-{version}-{uuid.uuid4().hex[:6]}"]

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *project, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stderr
        assert wait_http(f"http://127.0.0.1:{port}/health") == (200, "ok\n")
        deadline = time.monotonic() + 20
        while "healthy" not in (ps := compose("ps")).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "healthy" in ps.stdout, ps.stdout
    finally:
        down = compose("down", "--timeout", "5")
    assert down.returncode == 0, down.stderr
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}/health", timeout=1)


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """A test server's port is never one an outgoing connection could take meanwhile."""
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(1024 < p < start for p in ports), sorted(ports)
    assert len(ports) > 1  # chosen at random: parallel workers rarely collide
