"""A container the sandbox stops is reported with the setting that likely stopped it and how to
allow it (docs/sandboxing.md, "When the sandbox stops a container"): `reconciler apply` on the
real dockerd, busybox commands that fail only because of the compose sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import (
    CliFleet,
    _remove_environment,
    document,
    free_port,
)

pytestmark = [pytest.mark.integration]


class SandboxFleet(CliFleet):
    def __init__(self, tmp: Path, infra: Infra, compose: list[str]) -> None:
        super().__init__(tmp)
        self.infra = infra
        self.compose = compose
        self.environment = f"d{uuid.uuid4().hex[:8]}"
        self.port = free_port()

    def target(self) -> str:
        docker = {"host": self.infra.docker_host, "composeCommand": self.compose}
        return document("Target", "docker", self.environment, {"provider": "compose",
                                                                "docker": docker})  # fmt: skip

    def web(self, image: str, first: str, spec_extra: dict[str, Any] | None = None,
            **compose: Any) -> str:
        """busybox httpd, started once ``first`` succeeded (else the container exits 3)."""
        script = f"{first} || exit 3; exec httpd -f -p 127.0.0.1:{self.port} -h /"
        spec = {
            **(spec_extra or {}),
            "target": "docker",
            "stopTimeout": "1s",
            "compose": {
                "image": image,
                "pullPolicy": "never",
                "networkMode": "host",
                "init": True,
                "command": ["sh", "-c", script],
                "waitTimeout": "10s",
                **compose,
            },
        }
        return document("Service", "web", self.environment, spec)

    def failure(self, web: str) -> str:
        """Everything the store recorded of the failed deploy of ``web`` (apply exits 1)."""
        self.commit({"target.yaml": self.target(), "web.yaml": web}, "web")
        proc = self.apply()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (deployment,) = self.json("history", "web")
        assert deployment["status"] == "failed", deployment
        return " ".join(str(s.get("message") or "") for s in deployment["steps"]) + " " + str(
            deployment.get("error") or "")


@pytest.fixture
def fleet(tmp_path: Path, docker_engine: Infra, compose_cli: list[str]) -> Iterator[SandboxFleet]:
    f = SandboxFleet(tmp_path, docker_engine, compose_cli)
    try:
        yield f
    finally:
        _remove_environment(docker_engine, f.environment)


@pytest.mark.timeout(90)
def test_write_outside_writable_paths_names_read_only_root(fleet: SandboxFleet,
                                                           tiny_image: str) -> None:
    message = fleet.failure(fleet.web(tiny_image, "echo x > /data", sandbox="strict",
                                      writablePaths=["/tmp"]))
    assert "Read-only file system" in message, message  # the container's own words
    assert "sandbox 'strict' likely caused this" in message, message
    assert "compose.writablePaths" in message and "read-only" in message, message


@pytest.mark.timeout(90)
def test_dropped_capability_names_capabilities(fleet: SandboxFleet, tiny_image: str) -> None:
    # root without CAP_CHOWN: chown of a file it owns to another user is refused. No restart:
    # with Docker's restart policy the gate may look after Docker started it again, and then
    # it sees a restart, whose message has the last output but no sandbox hint (a CI run).
    message = fleet.failure(fleet.web(tiny_image, "touch /tmp/f && chown 1:1 /tmp/f",
                                      user="0:0", restart="no"))
    assert "Operation not permitted" in message, message
    assert "sandbox 'default' likely caused this" in message, message
    assert "compose.capabilities" in message and "CHOWN" in message, message


@pytest.mark.timeout(90)
def test_container_that_exits_during_the_gate_names_read_only_root(fleet: SandboxFleet,
                                                                   tiny_image: str) -> None:
    # Up long enough for the deploy's wait to see it running; gone while the gate watches
    # (no restart: it stays exited, so the gate reads the exited container's state).
    # httpd never listens: the probe fails only after the long start period, the watcher first.
    health = {"tcp": {"port": fleet.port}, "interval": "200ms", "startPeriod": "20s"}
    message = fleet.failure(fleet.web(tiny_image, "sleep 1; echo x > /data", {"health": health},
                                      sandbox="strict", restart="no"))
    assert "exited" in message and "Read-only file system" in message, message
    assert "sandbox 'strict' likely caused this" in message, message
    assert "compose.writablePaths" in message, message
