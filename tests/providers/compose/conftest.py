"""Fixtures for the compose provider's tests against the real dockerd of tests/infra/up.sh.

Every Docker test runs once per compose flavour (v1 ``docker-compose`` 1.29, v2 standalone
binary); containers use ``network_mode: host`` and bind a free 127.0.0.1 port. Each test gets its
own environment name, so its compose projects never collide with another test's (or another
run's), and whatever it left behind is removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import ProviderContext, Release
from reconciler.providers.compose import ComposeProvider, create_provider
from reconciler.spec.model import Resource, ResourceKey
from tests.helpers import free_port as free_port  # re-exported: tests import it from here
from tests.helpers import need
from tests.infra.testinfra import UP_HINT, Infra

IMAGE_REPO = "fraisier-compose-test"


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


async def http_get(port: int, path: str = "/", timeout: float = 2.0,
                   listening_within: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET. A refused connection is tried again for ``listening_within``
    seconds: a deploy without a Docker healthcheck returns once the container runs, which may
    be before its server listens (the health gate of a rollout waits for that; a provider test
    does not have one)."""
    deadline = time.monotonic() + listening_within
    while True:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)
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


# -- the real CLI on a real config repo (test_example_fleet, test_cli_recovery, ...) -------------

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


class CliFleet:
    """A git config repo under ``repo`` (documents in ``repo/<folder>``) and the ``reconciler``
    CLI run on it as a new process each time, with its own state dir (SQLite database)."""

    def __init__(self, tmp: Path, folder: str = "fleet", env: dict[str, str] | None = None) -> None:
        self.repo = tmp / "config"
        self.state = tmp / "state"
        self.folder = folder
        self.env = {**os.environ, **GIT_ENV, **(env or {})}
        (self.repo / folder).mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(self.repo), *args],
            capture_output=True, text=True, timeout=30, env=self.env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (or, with None, delete) files of the folder, commit, return the commit."""
        for name, text in files.items():
            path = self.repo / self.folder / name
            if text is None:
                path.unlink()
            else:
                path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", "--state-dir", str(self.state), *args]

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv("--log-format", "json", *args),
            capture_output=True, text=True, timeout=timeout, cwd=self.repo, env=self.env,
        )  # fmt: skip

    def repo_args(self) -> list[str]:
        return ["--repo", str(self.repo), "--path", self.folder]

    def apply(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.cli("apply", *self.repo_args(), *args, timeout=timeout)

    def json(self, *args: str) -> Any:
        proc = self.cli(*args, "-o", "json")
        assert proc.stdout, proc.stderr
        return json.loads(proc.stdout)

    def status_of(self, name: str) -> dict[str, Any]:
        entries = [r for r in self.json("status")["resources"] if r["name"] == name]
        assert len(entries) == 1, entries
        return dict(entries[0])


def document(kind: str, name: str, environment: str, spec: dict[str, Any]) -> str:
    """One YAML document (the spec as JSON, which is YAML)."""
    return (
        f"apiVersion: fraisier.dev/v1\nkind: {kind}\n"
        f"metadata:\n  name: {name}\n  environment: {environment}\n"
        f"spec: {json.dumps(spec)}\n"
    )


def docker_json(infra: Infra, *args: str, host: str | None = None) -> Any:
    """``docker [-H host] <args>`` (an inspect-like command) as parsed JSON."""
    argv = [infra.docker_cli, *(["-H", host] if host else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def project_containers(infra: Infra, project: str, host: str | None = None) -> list[str]:
    """Ids of the containers (running or not) of a compose project."""
    argv = [infra.docker_cli, *(["-H", host] if host else []), "ps", "-a", "-q", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={project}"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def http_get_sync(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1:port, or (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(step)
