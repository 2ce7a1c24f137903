"""examples/fleet/compose.yaml, unchanged, applied by the real CLI to the real dockerd.

The example's Target says ``compose: auto`` (v2 ``docker compose`` when the plugin answers, else
``docker-compose``): applied as it is, and once more with that one field set to ``v1``, so both
compose versions run it. Its names are fixed (environment docker-demo, port 18090), so runs on
one machine take turns through a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import need
from tests.infra.testinfra import UP_HINT, Infra
from tests.providers.compose.conftest import (
    CliFleet,
    _remove_environment,
    docker_json,
    http_get_sync,
    project_containers,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "fleet"
ENVIRONMENT = "docker-demo"
PORT = 18090
SERVICE_PROJECT = "fraisier_docker-demo_service_hello"
JOB_PROJECT = "fraisier_docker-demo_job_migrate"


@contextlib.contextmanager
def example_lock() -> Iterator[None]:
    path = Path(tempfile.gettempdir()) / "fraisier-example-docker-demo.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compose_major(argv: list[str]) -> str | None:
    proc = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30)
    text = proc.stdout.strip().lstrip("v")
    return text.split(".", 1)[0] if proc.returncode == 0 and text else None


@pytest.mark.parametrize("compose", ["auto", "v1"])
def test_example_fleet_applies_on_the_real_engine(
    compose: str, docker_engine: Infra, tiny_image: str, tmp_path: Path
) -> None:
    need(tiny_image == "fraisier-tiny:1", f"the example runs fraisier-tiny:1, not {tiny_image}")
    plugin = compose_major([docker_engine.docker_cli, "compose"])
    on_path = compose_major(["docker-compose"]) if shutil.which("docker-compose") else None
    expected = (plugin or on_path) if compose == "auto" else on_path
    need(expected is not None, f"no docker compose plugin nor docker-compose; {UP_HINT}")
    if compose == "v1":
        need(on_path == "1", f"docker-compose on PATH is not compose v1; {UP_HINT}")
    fleet = CliFleet(tmp_path, "fleet")
    shutil.copytree(EXAMPLE, fleet.repo / "fleet", dirs_exist_ok=True)
    if compose != "auto":
        text = (fleet.repo / "fleet" / "compose.yaml").read_text()
        assert text.count("compose: auto") == 1
        (fleet.repo / "fleet" / "compose.yaml").write_text(
            text.replace("compose: auto", f"compose: {compose}")
        )
    fleet.commit({}, f"examples/fleet (compose: {compose})")

    with example_lock():
        _remove_environment(docker_engine, ENVIRONMENT)  # leftovers of an interrupted run
        try:
            proc = subprocess.run(
                fleet.argv("--log-format", "json", "--log-level", "info", "apply",
                           *fleet.repo_args(), "-e", ENVIRONMENT),
                capture_output=True, text=True, timeout=90, env=fleet.env,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stdout + proc.stderr
            logs = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
            detected = [e["msg"] for e in logs if "compose CLI on" in e.get("msg", "")]
            # e.g. "compose CLI on docker: docker compose 2.40.3"
            assert len(detected) == 1, detected
            assert re.search(r"v?(\d+)\.\d+\.\d+$", detected[0])[1] == expected, detected  # type: ignore[index]

            assert http_get_sync(PORT) == (200, "<h1>fraisier tiny</h1>\n")
            status = {r["name"]: r for r in fleet.json("status")["resources"]}
            hello, migrate = status["hello"], status["migrate"]
            assert (hello["sync"], hello["health"], hello["lastResult"]) == (
                "Synced", "Healthy", "succeeded",
            )  # fmt: skip
            assert migrate["lastResult"] == "succeeded"
            # Only docker-demo was reconciled: the bare-metal demo next to it was not touched.
            assert {r["environment"] for r in status.values()} == {ENVIRONMENT}

            [container] = project_containers(docker_engine, SERVICE_PROJECT)
            [shown] = docker_json(docker_engine, "inspect", container)
            assert shown["Config"]["Image"] == "fraisier-tiny:1"
            assert shown["State"]["Health"]["Status"] == "healthy"
            assert shown["Config"]["Labels"]["dev.fraisier.revision"] == hello["appliedRevision"]
            assert shown["HostConfig"]["NetworkMode"] == "host"
            assert project_containers(docker_engine, JOB_PROJECT) == []  # the run was removed

            job_logs = fleet.cli("logs", "migrate")
            assert "migrating to schema 3" in job_logs.stdout, job_logs.stdout + job_logs.stderr
            diff = fleet.cli("diff", *fleet.repo_args(), "-e", ENVIRONMENT)
            assert diff.returncode == 0, diff.stdout + diff.stderr

            # Gone from git + --prune: the environment is removed from the engine.
            fleet.commit({"compose.yaml": None}, "drop the docker-demo")
            proc = fleet.apply("-e", ENVIRONMENT, "--prune")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert project_containers(docker_engine, SERVICE_PROJECT) == []
            assert fleet.json("status")["resources"] == []
            assert http_get_sync(PORT)[0] == 0
        finally:
            _remove_environment(docker_engine, ENVIRONMENT)  # volumes outlive a prune
