"""The compose provider on a Docker host reached over SSH (``docker.host: ssh://...``).

The remote host is a systemd+sshd test host container whose docker CLI (Debian's client, plus
the compose v2 plugin) talks to the test dockerd through its socket, mounted in: compose and
docker run *on that host*, through the SSH transport, exactly as on a real remote Docker host.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.providers import ProviderContext
from reconciler.providers.compose import ComposeProvider, create_provider
from reconciler.providers.compose.engine import CliEngine
from reconciler.providers.compose.render import project_name
from tests.helpers import need
from tests.infra.testinfra import UP_HINT, Infra
from tests.providers.compose.conftest import (
    _remove_environment,
    eventually,
    free_port,
    http_get,
    make_resource,
    make_target,
    release,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass(frozen=True)
class DockerSSHHost:
    container: str
    port: int
    identity_file: str
    known_hosts: str
    docker_cli: str

    def ssh_ok(self) -> bool:
        argv = [
            "ssh", "-q", "-o", "BatchMode=yes", "-o", "ConnectTimeout=1",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-i", self.identity_file,
            "-p", str(self.port), "root@127.0.0.1", "true",
        ]  # fmt: skip
        try:
            return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ssh_ok():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.container} (127.0.0.1:{self.port}) not answering SSH")
            time.sleep(0.2)

    def cat(self, path: str) -> str:
        argv = [self.docker_cli, "exec", self.container, "cat", path]
        return subprocess.run(argv, capture_output=True, check=True, timeout=30).stdout.decode()


@pytest.fixture(scope="module")
def docker_ssh_host(
    docker_engine: Infra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockerSSHHost]:
    """A test host with the docker CLI and compose v2 that reach the test dockerd."""
    infra = docker_engine
    need(infra.image_exists(infra.testhost_image), f"{infra.testhost_image} missing; {UP_HINT}")
    need(infra.compose_v2 is not None, f"compose v2 not installed; {UP_HINT}")
    assert infra.compose_v2 is not None
    work = tmp_path_factory.mktemp("sshhost")
    port = free_port()
    name = f"fraisier-compose-ssh-{uuid.uuid4().hex[:6]}"
    key = work / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key), "-C", name], check=True
    )
    (work / "port.conf").write_text(f"Port {port}\nListenAddress 127.0.0.1\n")
    pub = Path(infra.identity_file + ".pub").read_text()
    (work / "authorized_keys").write_text(pub)
    (work / "authorized_keys").chmod(0o644)
    host_key = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    known_hosts = work / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key}\n")
    socket_path = infra.docker_host.removeprefix("unix://")
    subprocess.run(
        [
            infra.docker_cli, "run", "-d", "--name", name, "--hostname", name,
            "--add-host", f"{name}:127.0.1.1", "--network", "host", "--cgroupns", "host",
            "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
            "--security-opt", "apparmor=unconfined", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", "-v", f"{work}:/etc/ssh/test:ro",
            "-v", f"{socket_path}:/var/run/docker.sock",
            "-v", f"{infra.docker_cli}:/usr/local/bin/docker:ro",
            "-v", f"{infra.compose_v2}:/usr/local/lib/docker/cli-plugins/docker-compose:ro",
            "--label", "fraisier.testinfra=1", infra.testhost_image,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    host = DockerSSHHost(name, port, infra.identity_file, str(known_hosts), infra.docker_cli)
    try:
        host.wait_ssh(timeout=60)
        yield host
    finally:
        subprocess.run([infra.docker_cli, "rm", "-f", name], capture_output=True, timeout=60)


@pytest.fixture
async def ssh_provider(
    docker_ssh_host: DockerSSHHost, docker_engine: Infra, environment: str, tmp_path: Path
) -> AsyncIterator[ComposeProvider]:
    host = docker_ssh_host
    target = make_target(
        environment,
        {
            "host": f"ssh://root@127.0.0.1:{host.port}",
            "identityFile": host.identity_file,
            "knownHosts": host.known_hosts,
            "stateDir": "/var/lib/fraisier/compose",
        },
    )
    provider = create_provider(target, ProviderContext(state_dir=tmp_path))
    try:
        yield provider
    finally:
        await provider.close()
        _remove_environment(docker_engine, environment)


async def test_service_and_job_over_ssh(ssh_provider, docker_ssh_host, environment, test_images):
    provider = ssh_provider
    assert isinstance(provider.engine, CliEngine)  # the engine socket is the remote host's
    port = free_port()
    spec = {
        "compose": {
            "image": test_images["v1"],
            "pullPolicy": "never",
            "networkMode": "host",
            "command": ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
            "volumes": ["data:/data"],
            "healthcheck": {"test": ["wget", "-q", "-O-", f"http://127.0.0.1:{port}/health"],
                            "interval": "500ms", "retries": 2},
        },
        "env": {"TOKEN": {"env": "T"}},
    }  # fmt: skip
    service = make_resource(environment, "Service", "web", spec)
    (instance,) = await provider.instances(service)

    await provider.deploy(release(service, "r1", env={"TOKEN": "remote-secret"}), instance)

    assert (await provider.cli()).is_v2  # `docker compose` found on the remote host
    assert await http_get(port, "/index.html") == (200, "version v1\n")
    (state,) = await provider.observe(service)
    assert state.revision == "r1" and state.running and state.facts["health"] == "healthy"
    # the rendered document lives on the remote host, without the secret
    document = docker_ssh_host.cat(
        f"/var/lib/fraisier/compose/{project_name(service)}/compose.yaml"
    )
    assert "TOKEN" in document and "remote-secret" not in document

    job = make_resource(
        environment,
        "Job",
        "report",
        {
            "command": ["/bin/sh", "-c", "echo remote-run $TOKEN; exit 4"],
            "env": {"TOKEN": {"env": "T"}},
            "compose": {"image": test_images["v1"], "pullPolicy": "never", "networkMode": "host"},
        },
    )
    (job_instance,) = await provider.instances(job)
    result = await provider.run(release(job, "j1", env={"TOKEN": "s"}), job_instance)
    assert result.exit_code == 4 and "remote-run s" in result.output
    assert await provider.logs(job, job_instance) == ["remote-run s"]

    await provider.remove(service, instance)
    (gone,) = await provider.observe(service)
    assert gone.detail == "container missing"


async def test_replicas_over_ssh(ssh_provider, docker_ssh_host, environment, test_images):
    """Per-replica projects (strategy rolling) through the SSH transport and the docker CLI."""
    provider = ssh_provider
    first, second = free_port(), free_port()
    port_of = {"1": first, "2": second}
    spec = {
        "strategy": {"type": "rolling"},
        "env": {"PORT_1": str(first), "PORT_2": str(second)},
        "compose": {
            "image": test_images["v1"],
            "pullPolicy": "never",
            "networkMode": "host",
            "replicas": 2,
            "command": ["/bin/sh", "-c", "exec httpd -f -p 127.0.0.1:$PORT_{replica} -h /www"],
            "volumes": ["data:/data"],
        },
    }
    service = make_resource(environment, "Service", "web", spec)
    instances = await provider.instances(service)
    shared = release(service, "r1")
    for instance in instances:  # both at once would be the engine's batch; here in turn
        await provider.deploy(shared, instance)
    states = {s.instance.id: s for s in await provider.observe(service)}
    assert set(states) == {"web-1", "web-2"}
    assert all(s.revision == "r1" and s.running for s in states.values())
    # their age, by the remote engine's clock (its offset read once with `docker info`)
    assert all(s.up_for is not None and 0 <= s.up_for < 120 for s in states.values()), states
    for replica, port in port_of.items():
        # no healthcheck: a deploy returns once the container runs, maybe before httpd listens
        async def served(port: int = port) -> bool:
            with contextlib.suppress(OSError):
                return await http_get(port, "/index.html") == (200, "version v1\n")
            return False

        await eventually(served, timeout=10)
    base = project_name(service)
    document = docker_ssh_host.cat(f"/var/lib/fraisier/compose/{base}/replicas/2/compose.yaml")
    assert "$$PORT_2" in document and f"{base}_r2" not in document  # -p names the project
    assert await provider.engine.volumes({"com.docker.compose.project": base}) == [f"{base}_data"]

    for instance in instances:
        await provider.remove(service, instance)
    assert await provider.engine.containers({"dev.fraisier.resource": str(service.key)}) == []
