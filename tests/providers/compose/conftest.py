"""Fixtures for the compose provider's tests against the real dockerd of tests/infra/up.sh.

Every Docker test runs once per compose flavour (v1 ``docker-compose`` 1.29, v2 standalone
binary); containers use ``network_mode: host`` and bind a free 127.0.0.1 port. Each test gets its
own environment name, so its compose projects never collide with another test's (or another
run's), and whatever it left behind is removed afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import ProviderContext, Release
from reconciler.providers.compose import ComposeProvider, create_provider
from reconciler.spec.model import Resource, ResourceKey
from tests.helpers import need
from tests.infra.testinfra import UP_HINT, Infra

IMAGE_REPO = "fraisier-compose-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _build(infra: Infra, base: str, tag: str, version_text: str, workdir: Path) -> None:
    """A tag of the tiny image whose /www/index.html says ``version_text`` (no registry: built
    locally with the classic builder, which needs no BuildKit)."""
    if infra.image_exists(tag):
        return
    context = workdir / tag.replace(":", "_").replace("/", "_")
    context.mkdir(parents=True, exist_ok=True)
    (context / "index.html").write_text(version_text + "\n")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY index.html /www/index.html\n")
    subprocess.run(
        [infra.docker_cli, "build", "-q", "-t", tag, str(context)],
        check=True,
        capture_output=True,
        timeout=60,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="session")
def test_images(
    tiny_image: str, docker_engine: Infra, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Two tags of the tiny image: ``v1`` and ``v2`` serve different /www/index.html."""
    workdir = tmp_path_factory.mktemp("images")
    images = {"v1": f"{IMAGE_REPO}:1", "v2": f"{IMAGE_REPO}:2"}
    for version, tag in images.items():
        _build(docker_engine, tiny_image, tag, f"version {version}", workdir)
    return images


@pytest.fixture(params=["v1", "v2"])
def compose_flavour(request: pytest.FixtureRequest, docker_engine: Infra) -> tuple[str, list[str]]:
    """(name, argv prefix) of one compose flavour."""
    version = str(request.param)
    argv = docker_engine.compose_argv(version)
    need(argv is not None, f"compose {version} not installed; {UP_HINT}")
    assert argv is not None
    return version, argv


@pytest.fixture
def environment() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def make_target(environment: str, docker: dict[str, Any]) -> Resource:
    spec = {"provider": "compose", "docker": docker}
    return Resource(ResourceKey(environment, "Target", "docker"), {}, spec, "targets.yaml")


def make_resource(environment: str, kind: str, name: str, spec: dict[str, Any]) -> Resource:
    full = {"target": "docker", **spec}
    return Resource(ResourceKey(environment, kind, name), {}, full, f"{name}.yaml")


def release(resource: Resource, revision: str, **kwargs: Any) -> Release:
    return Release(resource=resource, revision=revision, config_commit="c0ffee", **kwargs)


ProviderFactory = Callable[..., ComposeProvider]


@pytest.fixture
async def make_provider(
    compose_flavour: tuple[str, list[str]],
    docker_engine: Infra,
    environment: str,
    tmp_path: Path,
) -> AsyncIterator[ProviderFactory]:
    """Builds providers for this test's environment (a fresh one = a daemon restart); at the end
    every compose project of the environment is removed, volumes included."""
    _, argv = compose_flavour
    made: list[ComposeProvider] = []

    def factory(**docker_overrides: Any) -> ComposeProvider:
        docker = {"host": docker_engine.docker_host, "composeCommand": argv, **docker_overrides}
        ctx = ProviderContext(state_dir=tmp_path / "state")
        provider = create_provider(make_target(environment, docker), ctx)
        made.append(provider)
        return provider

    yield factory

    for provider in made:
        await provider.close()
    await asyncio.to_thread(_remove_environment, docker_engine, environment)


def _remove_environment(infra: Infra, environment: str) -> None:
    """Remove every container and volume of this test's compose projects."""
    prefix = f"fraisier_{environment}_"
    docker = infra.docker_cli
    listing = subprocess.run(
        [docker, "ps", "-a", "--filter", "label=com.docker.compose.project",
         "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}'],
        capture_output=True, text=True, timeout=30,
    ).stdout.splitlines()  # fmt: skip
    mine = [line.split()[0] for line in listing if line.split()[-1].startswith(prefix)]
    if mine:
        subprocess.run([docker, "rm", "-f", *mine], capture_output=True, timeout=60)
    volumes = subprocess.run(
        [docker, "volume", "ls", "-q"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    mine_volumes = [v for v in volumes if v.startswith(prefix)]
    if mine_volumes:
        subprocess.run(
            [docker, "volume", "rm", "-f", *mine_volumes], capture_output=True, timeout=60
        )


async def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)
