"""A hand edit through compose is drift (issue 15, item 8).

Someone copies the rendered compose file, edits it, and runs ``compose up`` with it: the container
is recreated with fraisier's labels kept (they are in the copy). Compose's own hash of the
service's configuration (``com.docker.compose.config-hash``) no longer matches what compose
computes for the rendered document, so observe reports drift — in this provider and in a fresh
one (another process) — and a redeploy of the same release puts the document back.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.providers.compose.render import project_name, replica_project
from tests.providers.compose.conftest import free_port, http_get, make_resource, release
from tests.providers.compose.test_compose_docker import only_state, web_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _hand_edit(argv: list[str], project: str, rendered: Path, tmp_path: Path) -> None:
    document: dict[str, Any] = yaml.safe_load(rendered.read_text())
    service = document["services"]["web"]
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    service["environment"] = {**environment, "HAND_EDIT": "1"}
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(document))
    out = subprocess.run(
        [*argv, "-p", project, "-f", str(edited), "--project-directory", str(rendered.parent),
         "up", "-d", "--no-deps", "web"],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr


async def test_container_recreated_from_an_edited_copy_is_drift(
    make_provider, environment, test_images, compose_flavour, tmp_path: Path
) -> None:
    _, argv = compose_flavour
    port = free_port()
    provider = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    (instance,) = await provider.instances(service)
    await provider.deploy(release(service, "r1"), instance)
    before = await only_state(provider, service)
    assert before.revision == "r1" and before.running

    project = project_name(service)
    (rendered,) = (tmp_path / "state").rglob(f"{project}/compose.yaml")
    await asyncio.to_thread(_hand_edit, argv, project, rendered, tmp_path)

    for observer in (provider, make_provider()):  # this process, and a fresh one
        edited = await only_state(observer, service)
        assert edited.facts["container_id"] != before.facts["container_id"]  # recreated
        assert edited.running
        assert edited.revision != "r1", edited  # drift: not the applied revision
        assert "changed outside fraisier" in edited.detail, edited.detail

    # Reconciling the same release again brings the rendered document back.
    healer = make_provider()
    await healer.deploy(release(service, "r1"), instance)
    healed = await only_state(healer, service)
    assert healed.revision == "r1" and healed.running, healed
    assert healed.facts["container_id"] != edited.facts["container_id"]
    assert await http_get(port, "/version") == (200, "version v1\n")
    assert (await only_state(make_provider(), service)).revision == "r1"


async def test_the_recorded_hashes_are_what_compose_config_hash_says(
    make_provider, environment, test_images, compose_flavour, tmp_path: Path
) -> None:
    """The hashes kept beside the document (read from the labels compose gave the containers it
    made in the deploy's ``up``) are those ``compose config --hash`` computes for the document:
    the reference a later hand edit is compared with. Scaled layout, two replicas, and the
    per-replica layout of a rolling Service."""
    _, argv = compose_flavour
    provider = make_provider()
    scaled = make_resource(environment, "Service", "web",
                           web_spec(test_images["v1"], free_port(), replicas=1))
    rolling = make_resource(environment, "Service", "roll",
                            {**web_spec(test_images["v1"], free_port()),
                             "strategy": {"type": "rolling", "maxParallel": 1}})
    for service in (scaled, rolling):
        for instance in await provider.instances(service):
            await provider.deploy(release(service, "r1"), instance)
    state = tmp_path / "state"
    (scaled_doc,) = state.rglob(f"{project_name(scaled)}/compose.yaml")
    (replica_doc,) = state.rglob(f"{project_name(rolling)}/replicas/1/compose.yaml")
    # (document, its compose project, its project directory), as the provider ran `up`
    runs = [(scaled_doc, project_name(scaled), scaled_doc.parent),
            (replica_doc, replica_project(project_name(rolling), 1), replica_doc.parents[2])]
    for document, project, workdir in runs:
        recorded = json.loads((document.parent / "config-hash.json").read_text())["services"]
        out = subprocess.run(
            [*argv, "-p", project, "-f", str(document), "--project-directory", str(workdir),
             "config", "--hash", "*"],
            capture_output=True, text=True, timeout=60, env=provider.base_env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert recorded == dict(line.split() for line in out.stdout.splitlines()), document
