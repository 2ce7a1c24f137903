"""Recovery through the real CLI on the real dockerd: each command is a new process, so what one
run knows reaches the next only through the database (and Docker itself).

- rollback after a restart: v1, v2, then a broken v3 (its health check fails) applied by a new
  process, with the provider's on-disk documents deleted: rolled back to v2, read from the DB;
- drift healed: a container removed by hand is redeployed by ``reconciler daemon``.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import stop_daemon
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import (
    IMAGE_REPO,
    CliFleet,
    _build,
    _remove_environment,
    docker_json,
    document,
    free_port,
    http_get_sync,
    project_containers,
    wait_until,
)

pytestmark = [pytest.mark.integration]


class ComposeFleet(CliFleet):
    def __init__(self, tmp: Path, infra: Infra, compose: list[str]) -> None:
        super().__init__(tmp)
        self.infra = infra
        self.compose = compose
        self.environment = f"r{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.project = f"fraisier_{self.environment}_service_web"

    def target(self) -> str:
        docker = {"host": self.infra.docker_host, "composeCommand": self.compose}
        return document("Target", "docker", self.environment, {"provider": "compose",
                                                                "docker": docker})  # fmt: skip

    def web(self, image: str) -> str:
        """httpd serving the image's /www; healthy only when index.html says ``version``."""
        spec: dict[str, Any] = {
            "target": "docker",
            "stopTimeout": "2s",
            "health": {
                "http": {
                    "url": f"http://{{host}}:{self.port}/index.html",
                    "expectStatus": 200,
                    "bodyContains": "version",
                },
                "interval": "200ms",
                "timeout": "1s",
                "startPeriod": "1s",
                "failureThreshold": 3,
            },
            "compose": {
                "image": image,
                "pullPolicy": "never",
                "networkMode": "host",
                "command": ["httpd", "-f", "-p", f"127.0.0.1:{self.port}", "-h", "/www"],
                "waitTimeout": "20s",
            },
        }
        return document("Service", "web", self.environment, spec)

    def container(self) -> dict[str, Any]:
        """Inspect data of the one container of the web project."""
        ids = project_containers(self.infra, self.project)
        assert len(ids) == 1, ids
        [shown] = docker_json(self.infra, "inspect", ids[0])
        return dict(shown)


@pytest.fixture
def fleet(tmp_path: Path, docker_engine: Infra, compose_cli: list[str]) -> Iterator[ComposeFleet]:
    f = ComposeFleet(tmp_path, docker_engine, compose_cli)
    try:
        yield f
    finally:
        _remove_environment(docker_engine, f.environment)


@pytest.fixture(scope="session")
def broken_image(
    tiny_image: str, docker_engine: Infra, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A tag that runs fine but whose index.html fails the web health check."""
    tag = f"{IMAGE_REPO}:3-broken"
    _build(docker_engine, tiny_image, tag, "broken build", tmp_path_factory.mktemp("broken"))
    return tag


@pytest.mark.timeout(90)
def test_rollback_after_restart_uses_the_previous_image_from_the_database(
    fleet: ComposeFleet, test_images: dict[str, str], broken_image: str
) -> None:
    fleet.commit({"target.yaml": fleet.target(), "web.yaml": fleet.web(test_images["v1"])}, "v1")
    proc = fleet.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fleet.commit({"web.yaml": fleet.web(test_images["v2"])}, "v2")
    proc = fleet.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert http_get_sync(fleet.port, "/index.html") == (200, "version v2\n")
    v2_revision = fleet.status_of("web")["appliedRevision"]

    # Nothing but the database remembers v2 now: no process survives between CLI runs, and the
    # provider's rendered compose documents on disk go too.
    for path in sorted((fleet.state / "compose").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    fleet.commit({"web.yaml": fleet.web(broken_image)}, "v3, broken")
    proc = fleet.apply()
    assert proc.returncode == 1, proc.stdout + proc.stderr

    history = fleet.json("history", "web")
    assert [d["status"] for d in history] == ["rolled_back", "succeeded", "succeeded"]
    assert history[0]["fromRevision"] == v2_revision
    assert any(s["action"] == "rollback" and s["status"] == "succeeded"
               for s in history[0]["steps"])  # fmt: skip
    shown = fleet.container()
    assert shown["Config"]["Image"] == test_images["v2"]
    assert shown["Config"]["Labels"]["dev.fraisier.revision"] == v2_revision
    assert shown["State"]["Running"] is True
    assert http_get_sync(fleet.port, "/index.html") == (200, "version v2\n")
    web = fleet.status_of("web")
    assert (web["appliedRevision"], web["lastResult"]) == (v2_revision, "rolled_back")


@pytest.mark.timeout(90)
def test_daemon_redeploys_a_container_removed_by_hand(
    fleet: ComposeFleet, test_images: dict[str, str]
) -> None:
    fleet.commit({"target.yaml": fleet.target(), "web.yaml": fleet.web(test_images["v1"])}, "v1")
    listen = free_port()
    daemon = subprocess.Popen(
        fleet.argv("--log-format", "json", "daemon", *fleet.repo_args(), "-e", fleet.environment,
                   "--listen", f"127.0.0.1:{listen}", "--interval", "2s"),
        cwd=fleet.repo, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: http_get_sync(fleet.port, "/index.html")[0] == 200, 30,
                   "the daemon's first pass deploys web")  # fmt: skip
        wait_until(lambda: fleet.status_of("web")["sync"] == "Synced", 10, "web recorded Synced")
        before = fleet.container()

        subprocess.run([fleet.infra.docker_cli, "rm", "-f", before["Id"]], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        assert project_containers(fleet.infra, fleet.project) == []

        def healed() -> bool:
            ids = project_containers(fleet.infra, fleet.project)
            return (len(ids) == 1 and ids[0] != before["Id"]
                    and http_get_sync(fleet.port, "/index.html")[0] == 200)  # fmt: skip

        wait_until(healed, 30, "the removed container is redeployed", step=0.2)
        after = fleet.container()
        assert after["Config"]["Image"] == test_images["v1"]
        revision = "dev.fraisier.revision"
        assert after["Config"]["Labels"][revision] == before["Config"]["Labels"][revision]
        wait_until(lambda: fleet.json("history", "web")[0]["status"] == "succeeded", 10,
                   "the redeploy is recorded")  # fmt: skip
        history = fleet.json("history", "web")
        assert "drift" in history[0]["trigger"], history[0]
        assert [d["status"] for d in history] == ["succeeded", "succeeded"]
    finally:
        code = stop_daemon(daemon)
    out = daemon.stdout.read() if daemon.stdout else ""
    assert code == 0, out[-3000:]
    assert "drift detected" in out
