"""The Dockerfile builds and runs, with no registry: its `FROM debian:bookworm-slim` is a base image
made here from Debian packages (tests/deploy/build-base-image.sh, cached by a label), the build
runs with --network none and installs from this machine's wheels, and the container answers
/healthz and becomes `healthy` by its own HEALTHCHECK, as a non-root user with its state in a
volume.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, Wheels, copy_source
from tests.deploy.test_systemd_unit import free_port
from tests.helpers import need
from tests.infra.testinfra import Infra

BASE_SCRIPT = Path(__file__).with_name("build-base-image.sh")
BASE_TAG = "debian:bookworm-slim"


def docker(infra: Infra, *args: str, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([infra.docker_cli, *args], capture_output=True, text=True,
                          timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image(docker_engine: Infra, wheels: Wheels,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need(shutil.which("mmdebstrap") is not None,
         "mmdebstrap missing (apt-get install mmdebstrap): it makes the base image")
    started = time.monotonic()
    base = subprocess.run(["bash", str(BASE_SCRIPT), BASE_TAG], capture_output=True, text=True,
                          timeout=420, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                            "DOCKER": docker_engine.docker_cli})
    assert base.returncode == 0, base.stderr[-2000:]
    print(base.stdout.strip(), f"({time.monotonic() - started:.1f}s)")

    context = copy_source(tmp_path_factory.mktemp("context"))
    (context / "wheels").mkdir()
    for wheel in wheels.deps.glob("*.whl"):
        shutil.copy2(wheel, context / "wheels")
    tag = f"fraisier-test:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    build = docker(docker_engine, "build", "--network", "none", "-t", tag,
                   "--build-arg", "PIP_INSTALL_ARGS=--no-index --find-links /src/wheels",
                   str(context), timeout=420, check=False)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    print(f"docker build: {time.monotonic() - started:.1f}s")
    try:
        yield tag
    finally:
        docker(docker_engine, "rmi", "-f", tag, check=False)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_image_metadata(docker_engine: Infra, image: str) -> None:
    (info,) = json.loads(docker(docker_engine, "image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert "/var/lib/fraisier" in config["Volumes"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["reconciler"]
    size_mb = info["Size"] / 1e6
    print(f"image {image}: {size_mb:.0f} MB")
    # python3 + git + ssh client + the venv; a runaway (build tools, caches) would double it.
    assert size_mb < 400, size_mb
    whoami = docker(docker_engine, "run", "--rm", "--network", "none", "--entrypoint", "id",
                    image).stdout
    assert whoami.startswith("uid=10001(fraisier)"), whoami
    version = docker(docker_engine, "run", "--rm", "--network", "none", image, "--version").stdout
    assert "reconciler" in version


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_container_serves_healthz_and_turns_healthy(docker_engine: Infra, image: str,
                                                    tmp_path: Path) -> None:
    repo = tmp_path / "config"
    (repo / "fleet").mkdir(parents=True)
    (repo / "fleet" / "target.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: local}\n"
        "spec: {provider: bare_metal, transport: local}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=ops", "-c", "user.email=ops@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, timeout=30)
    subprocess.run([*git, "add", "-A"], check=True, timeout=30)
    subprocess.run([*git, "commit", "-q", "-m", "fleet"], check=True, timeout=30)
    repo.chmod(0o755)
    tmp_path.chmod(0o755)

    port = free_port()
    name = f"fraisier-image-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-state"
    run = docker(docker_engine, "run", "-d", "--name", name, "--network", "host",
                 "-v", f"{repo}:/config:ro", "-v", f"{volume}:/var/lib/fraisier",
                 "-e", f"FRAISIER_HEALTH_URL=http://127.0.0.1:{port}/healthz",
                 "--health-interval", "1s", "--health-start-period", "0s",
                 image, "daemon", "--repo", "/config", "--path", "fleet",
                 "--listen", f"127.0.0.1:{port}", check=False)
    assert run.returncode == 0, run.stderr
    try:
        deadline = time.monotonic() + 60
        body = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        logs = docker(docker_engine, "logs", name, check=False)
        assert '"ready": true' in body, (body, logs.stdout[-2000:], logs.stderr[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            assert response.status == 200
        health = ""
        while time.monotonic() < deadline:
            health = docker(docker_engine, "inspect", "-f", "{{.State.Health.Status}}",
                            name).stdout.strip()
            if health == "healthy":
                break
            time.sleep(0.5)
        assert health == "healthy", docker(docker_engine, "inspect", name).stdout[-3000:]
        # State landed in the volume (SQLite database), written by the non-root user.
        listing = docker(docker_engine, "exec", name, "ls", "-ln", "/var/lib/fraisier").stdout
        assert ".db" in listing and " 10001 " in listing, listing
        # owner-only under the container's default umask (022): state dir 0700, database 0600
        modes = docker(docker_engine, "exec", name, "stat", "-c", "%a %n", "/var/lib/fraisier",
                       "/var/lib/fraisier/fraisier.db").stdout.split("\n")
        assert modes[:2] == ["700 /var/lib/fraisier", "600 /var/lib/fraisier/fraisier.db"], modes
        stopped = time.monotonic()
        docker(docker_engine, "stop", "-t", "20", name, timeout=60)
        code = docker(docker_engine, "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        print(f"docker stop: exit {code} after {time.monotonic() - stopped:.1f}s")
        assert code == "0", "SIGTERM must end the daemon cleanly"
    finally:
        docker(docker_engine, "rm", "-f", name, check=False)
        docker(docker_engine, "volume", "rm", "-f", volume, check=False)


def test_dockerfile_from_matches_the_base_image_tag() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert f"ARG BASE={BASE_TAG}" in text
    assert "FROM ${BASE} AS build" in text and "\nFROM ${BASE}\n" in text
