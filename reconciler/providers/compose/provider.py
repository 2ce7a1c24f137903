"""The compose provider: Services, Jobs and Schedules as Docker Compose projects on one Docker host.

Every resource is one compose project (``render.project_name``: stable across revisions), whose
rendered document is kept on the Docker host at ``<stateDir>/<project>/compose.yaml``. Writes go
through the compose CLI (``up``, ``run``, ``stop``, ``down``) run through a ``Transport``; reads
(observe, logs, waits) go to the engine (``engine.DockerEngine``). Containers carry the core's
revision and the compose revision as labels, so a fresh provider — after a daemon restart — reads
what runs from Docker alone, and a container removed or replaced by hand shows up as drift.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import posixpath
import re
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import Instance, InstanceState, ProviderContext, Release, RunResult
from reconciler.providers.compose.cli import ComposeCLI, detect
from reconciler.providers.compose.engine import DockerEngine
from reconciler.providers.compose.render import (
    LABEL_COMPOSE_REVISION,
    LABEL_IMAGE,
    LABEL_REVISION,
    NUMBER_LABEL,
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    Rendered,
    compose_section,
    is_file_reference,
    project_name,
    pull_policy,
    render,
    replicas,
    seconds,
    service_names,
)
from reconciler.spec.model import Resource
from reconciler.transport import Transport

UP_TIMEOUT_S = 300.0  # `up` itself (create/recreate/start), on top of any health wait
COMMAND_TIMEOUT_S = 120.0  # stop, down, pull of one project
DEFAULT_JOB_TIMEOUT_S = 600.0
KEEP_RELEASES = 5
LOG_KEEP_LINES = 1000
_POLL_S = 0.1
_TAIL_CHARS = 1500
# Variables of the compose process that a resource's env must not override.
_RESERVED_ENV = re.compile(r"^(PATH|HOME|DOCKER_.*|COMPOSE_.*)$")
# Observed revision of a container changed by hand (no release revision starts with it).
UNMANAGED_PREFIX = "unmanaged:"
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def _tail(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:]


def _dir_name(revision: str) -> str:
    """A directory name for a revision: readable when the revision is, unique always."""
    safe = _UNSAFE_DIR_CHARS.sub("_", revision)[:64]
    if safe == revision and safe not in ("", ".", ".."):
        return safe
    return f"{safe}-{sha256(revision.encode()).hexdigest()[:12]}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class _Prepared:
    """A release rendered and placed on the Docker host."""

    rendered: Rendered
    compose_file: str  # where the document goes on the Docker host
    workdir: str  # --project-directory: relative paths in the document resolve here


def _labels(container: Mapping[str, Any]) -> dict[str, str]:
    return dict((container.get("Config") or {}).get("Labels") or {})


def _health(container: Mapping[str, Any]) -> str:
    health = (container.get("State") or {}).get("Health") or {}
    return str(health.get("Status") or "none")


def _health_output(container: Mapping[str, Any]) -> str:
    log = ((container.get("State") or {}).get("Health") or {}).get("Log") or []
    if not log:
        return ""
    last = log[-1]
    return f"exit {last.get('ExitCode')}: {str(last.get('Output') or '').strip()[-300:]}"


def _running(container: Mapping[str, Any]) -> bool:
    state = container.get("State") or {}
    return bool(state.get("Running")) and not state.get("Restarting")


class ComposeProvider:
    """Drives one Docker host (a Target with ``provider: compose``)."""

    def __init__(
        self,
        target: Resource,
        ctx: ProviderContext,
        transport: Transport,
        engine: DockerEngine,
        *,
        state_root: str,
        base_env: Mapping[str, str],
    ) -> None:
        self.target = target
        self.ctx = ctx
        self.transport = transport
        self.engine = engine
        self.state_root = state_root
        self.base_env = dict(base_env)
        docker = target.spec.get("docker") or {}
        self.compose_preference = str(docker.get("compose", "auto"))
        explicit = docker.get("composeCommand")
        self.compose_command = [str(a) for a in explicit] if explicit else None
        self._cli: ComposeCLI | None = None
        self._cli_lock = asyncio.Lock()
        self._project_locks: dict[str, asyncio.Lock] = {}
        self._active_runs: set[str] = set()  # container names of runs being waited for here

    # -- helpers -------------------------------------------------------------------------------

    @property
    def host_id(self) -> str:
        return self.transport.host_id

    async def cli(self) -> ComposeCLI:
        """The compose CLI of the Docker host (detected once)."""
        async with self._cli_lock:
            if self._cli is None:
                self._cli = await detect(
                    self.transport, self.compose_preference, self.compose_command, self.base_env
                )
                self.ctx.logger.info("compose CLI on %s: %s", self.host_id, self._cli.describe())
            return self._cli

    def _lock(self, project: str) -> asyncio.Lock:
        return self._project_locks.setdefault(project, asyncio.Lock())

    def _project_dir(self, project: str) -> str:
        return posixpath.join(self.state_root, project)

    def _compose_file(self, project: str) -> str:
        return posixpath.join(self._project_dir(project), "compose.yaml")

    async def _mkdir(self, path: str) -> None:
        await self.transport.run(["mkdir", "-p", "--", path], timeout=30, check=True)

    def _env(self, release: Release | None, rendered: Rendered | None) -> dict[str, str]:
        """Environment of the compose process: the base (PATH, DOCKER_HOST, ...) plus the
        release's resolved env — secrets reach containers only this way, never via a file."""
        env = dict(self.base_env)
        if release is None:
            return env
        for name in rendered.secret_env_names if rendered else []:
            if name not in release.env:
                raise ProviderError(
                    f"{release.resource.key}: secret env {name} was not resolved for this release"
                )
        for key, value in release.env.items():
            if not _RESERVED_ENV.match(key):
                env[key] = value
        return env

    async def _prepare(self, release: Release) -> _Prepared:
        """Render the release; export its files (once per revision) when it has any."""
        resource = release.resource
        section = compose_section(resource)
        project = project_name(resource)
        project_dir = self._project_dir(project)
        workdir = project_dir
        file_text: str | None = None
        if release.export is not None:
            release_dir = posixpath.join(project_dir, "releases", _dir_name(release.revision))
            marker = posixpath.join(release_dir, ".fraisier-complete")
            if await self.transport.read_file(marker) is None:
                await self._export(release, release_dir, marker)
            workdir = release_dir
            if is_file_reference(section):
                relative = self._relative_file(resource, section)
                data = await self.transport.read_file(posixpath.join(release_dir, relative))
                if data is None:
                    raise ProviderError(
                        f"{resource.key}: compose file {relative} is not in the release's files"
                    )
                file_text = data.decode()
                workdir = posixpath.join(release_dir, posixpath.dirname(relative))
        elif is_file_reference(section):
            raise ProviderError(
                f"{resource.key}: compose.file needs the release's files (spec.source)",
                hint="add spec.source (e.g. path: <folder of the config repo>) holding the file",
            )
        rendered = render(resource, release.revision, file_text)
        return _Prepared(rendered, self._compose_file(project), workdir)

    @staticmethod
    def _relative_file(resource: Resource, section: Mapping[str, Any]) -> str:
        raw = str(section["file"])
        path = PurePosixPath(posixpath.normpath(raw))
        if path.is_absolute() or ".." in path.parts:
            raise ProviderError(
                f"{resource.key}: compose.file must be a path inside the release ({raw!r})"
            )
        return str(path)

    async def _export(self, release: Release, release_dir: str, marker: str) -> None:
        assert release.export is not None
        with tempfile.TemporaryDirectory(prefix="fraisier-compose-") as tmp:
            await release.export(Path(tmp))
            await self._mkdir(release_dir)
            await self.transport.put_tree(Path(tmp), release_dir)
        await self.transport.write_file(marker, release.revision.encode())
        await self._prune_releases(posixpath.dirname(release_dir), keep=release_dir)

    async def _prune_releases(self, releases_dir: str, keep: str) -> None:
        """Keep the newest KEEP_RELEASES release folders (rollback reuses them)."""
        listing = await self.transport.run(["ls", "-1t", "--", releases_dir], timeout=30)
        if not listing.ok:
            return
        names = listing.stdout.decode(errors="replace").split()
        old = [posixpath.join(releases_dir, n) for n in names[KEEP_RELEASES:]]
        old = [p for p in old if p != keep]
        if old:
            await self.transport.run(["rm", "-rf", "--", *old], timeout=60)

    async def _compose(
        self,
        cli: ComposeCLI,
        prepared: _Prepared,
        env: Mapping[str, str],
        *args: str,
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[int, str]:
        rendered = prepared.rendered
        argv = cli.argv(rendered.project, prepared.compose_file, prepared.workdir, *args)
        result = await self.transport.run(argv, timeout=timeout, env=env)
        return result.returncode, result.text()

    async def _write_document(self, prepared: _Prepared) -> None:
        await self._mkdir(posixpath.dirname(prepared.compose_file))
        await self.transport.write_file(
            prepared.compose_file, prepared.rendered.yaml().encode(), mode=0o600
        )

    async def _ensure_images(
        self,
        cli: ComposeCLI,
        prepared: _Prepared,
        policy: str,
        env: Mapping[str, str],
        now: bool = False,
    ) -> None:
        """Honour the pull policy where compose v1 does not (it ignores ``pull_policy``), or,
        with ``now``, before anything is started (installing a Job/Schedule)."""
        if cli.is_v2 and not now:
            return  # v2 honours pull_policy from the document
        rendered = prepared.rendered
        if policy == "missing" and now:
            absent = [
                s for s in rendered.services if await self.engine.image(rendered.images[s]) is None
            ]
            if absent:
                code, out = await self._compose(
                    cli, prepared, env, "pull", *absent, timeout=COMMAND_TIMEOUT_S
                )
                if code != 0:
                    raise ProviderError(
                        f"{self.host_id}: pulling images of {rendered.project} failed: {_tail(out)}"
                    )
        if policy == "always":
            code, out = await self._compose(
                cli, prepared, env, "pull", *rendered.services, timeout=COMMAND_TIMEOUT_S
            )
            if code != 0:
                raise ProviderError(
                    f"{self.host_id}: pulling images of {rendered.project} failed: {_tail(out)}"
                )
        elif policy == "never":
            for service in rendered.services:
                ref = rendered.images[service]
                if await self.engine.image(ref) is None:
                    raise ProviderError(
                        f"{self.host_id}: image {ref} is not on the Docker host and "
                        "pullPolicy is never",
                        hint="load or build the image on the host, or use pullPolicy: missing",
                    )

    async def _project_containers(self, project: str, oneoff: bool = False) -> list[dict[str, Any]]:
        containers = await self.engine.containers({PROJECT_LABEL: project})
        return [c for c in containers if (_labels(c).get(ONEOFF_LABEL) == "True") == oneoff]

    # -- Provider protocol ---------------------------------------------------------------------

    async def instances(self, resource: Resource) -> list[Instance]:
        project = project_name(resource)
        address = self.transport.address
        if resource.kind != "Service":
            service = service_names(resource)[0]
            return [Instance(service, address, {"service": service, "project": project})]
        count = replicas(resource)
        return [
            Instance(
                f"{service}-{n}",
                address,
                {"service": service, "replica": str(n), "project": project},
            )
            for service in service_names(resource)
            for n in range(1, count + 1)
        ]

    async def observe(self, resource: Resource) -> list[InstanceState]:
        if resource.kind != "Service":
            return await self._observe_runs(resource)
        project = project_name(resource)
        expected = await self.instances(resource)
        by_slot: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for container in await self._project_containers(project):
            labels = _labels(container)
            try:
                number = int(labels.get(NUMBER_LABEL, "0"))
            except ValueError:
                number = 0
            by_slot.setdefault((labels.get(SERVICE_LABEL, ""), number), []).append(container)
        states: list[InstanceState] = []
        for instance in expected:
            slot = (instance.labels["service"], int(instance.labels["replica"]))
            found = by_slot.pop(slot, [])
            # A running container wins over stopped leftovers with the same slot.
            found.sort(key=lambda c: (_running(c), str((c.get("State") or {}).get("StartedAt"))))
            if not found:
                states.append(
                    InstanceState(
                        instance,
                        None,
                        False,
                        "container missing",
                        {"present": False, "service": slot[0], "project": project},
                    )
                )
                continue
            states.append(self._container_state(instance, found[-1]))
            for extra in found[:-1]:
                states.append(self._extra_state(extra, project))
        for containers in by_slot.values():
            for extra in containers:
                states.append(self._extra_state(extra, project))
        return states

    def _extra_state(self, container: dict[str, Any], project: str) -> InstanceState:
        labels = _labels(container)
        name = str(container.get("Name", "")).lstrip("/")
        instance = Instance(
            name or str(container.get("Id", ""))[:12],
            self.transport.address,
            {
                "service": labels.get(SERVICE_LABEL, ""),
                "replica": labels.get(NUMBER_LABEL, ""),
                "project": project,
                "unexpected": "true",
            },
        )
        state = self._container_state(instance, container)
        state.detail = ("unexpected container; " + state.detail).rstrip("; ")
        return state

    def _container_state(self, instance: Instance, container: dict[str, Any]) -> InstanceState:
        labels = _labels(container)
        state = container.get("State") or {}
        image = str((container.get("Config") or {}).get("Image", ""))
        health = _health(container)
        running = _running(container)
        revision = labels.get(LABEL_REVISION)
        deployed_image = labels.get(LABEL_IMAGE)
        details: list[str] = []
        # A container fraisier did not create as it stands reports a revision of its own that
        # can never equal a deployed one, so the core sees drift (None would mean "unknown").
        if revision is None:
            details.append("container was not deployed by fraisier")
            revision = f"{UNMANAGED_PREFIX}{image}"
        elif deployed_image is not None and image != deployed_image:
            details.append(
                f"container runs {image}, its revision was rendered with {deployed_image}"
            )
            revision = f"{UNMANAGED_PREFIX}{image}"
        if not running:
            details.append(f"{state.get('Status', 'unknown')} (exit code {state.get('ExitCode')})")
        if health == "unhealthy":
            details.append(f"unhealthy ({_health_output(container)})")
        facts: dict[str, Any] = {
            "present": True,
            "container": str(container.get("Name", "")).lstrip("/"),
            "container_id": str(container.get("Id", ""))[:12],
            "service": labels.get(SERVICE_LABEL),
            "project": labels.get(PROJECT_LABEL),
            "image": image,
            "image_id": container.get("Image"),
            "status": state.get("Status"),
            "health": health,
            "restart_count": container.get("RestartCount", 0),
            "exit_code": state.get("ExitCode"),
            "oom_killed": bool(state.get("OOMKilled")),
            "started_at": state.get("StartedAt"),
            "finished_at": state.get("FinishedAt"),
            "compose_revision": labels.get(LABEL_COMPOSE_REVISION),
        }
        if health != "none":
            health_state = state.get("Health") or {}
            facts["health_failing_streak"] = health_state.get("FailingStreak", 0)
            facts["health_last_output"] = _health_output(container)
        return InstanceState(instance, revision, running, "; ".join(details), facts)

    async def deploy(self, release: Release, instance: Instance) -> None:
        """``up`` the whole project: compose replaces every replica of a service together, so
        the first instance's call does the work and the others find it done."""
        resource = release.resource
        prepared = await self._prepare(release)
        rendered = prepared.rendered
        count = replicas(resource)
        section = compose_section(resource)
        wait = bool(section.get("wait", True))
        wait_timeout = seconds(section.get("waitTimeout"), 60.0)
        if resource.kind != "Service":
            await self._install(release, prepared)
            return
        async with self._lock(rendered.project):
            if await self._already_deployed(rendered, release.revision, count):
                return
            cli = await self.cli()
            env = self._env(release, rendered)
            await self._write_document(prepared)
            await self._ensure_images(cli, prepared, pull_policy(resource), env)
            args = ["up", "-d", "--no-deps", "--remove-orphans"]
            for service in rendered.services:
                args += ["--scale", f"{service}={count}"]
            args += rendered.services
            started = time.monotonic()
            code, out = await self._compose(
                cli, prepared, env, *args, timeout=UP_TIMEOUT_S + wait_timeout
            )
            if code != 0:
                raise ProviderError(
                    f"{self.host_id}: compose up of {rendered.project} failed (exit {code}): "
                    f"{_tail(out)}{await self._health_summary(rendered.project)}"
                )
            if wait and count > 0:
                remaining = wait_timeout - (time.monotonic() - started)
                await self._wait_started(rendered, count, max(remaining, 1.0))
            self.ctx.logger.info(
                "compose: %s up on %s at %s",
                rendered.project,
                self.host_id,
                rendered.compose_revision,
            )

    async def _already_deployed(self, rendered: Rendered, revision: str, count: int) -> bool:
        containers = await self._project_containers(rendered.project)
        wanted = {(s, n) for s in rendered.services for n in range(1, count + 1)}
        seen: set[tuple[str, int]] = set()
        for container in containers:
            labels = _labels(container)
            if (
                labels.get(LABEL_REVISION) != revision
                or labels.get(LABEL_COMPOSE_REVISION) != rendered.compose_revision
                or str((container.get("Config") or {}).get("Image")) != labels.get(LABEL_IMAGE)
                or not _running(container)
                or _health(container) == "unhealthy"
            ):
                return False
            seen.add((labels.get(SERVICE_LABEL, ""), int(labels.get(NUMBER_LABEL, "0") or 0)))
        return seen == wanted and len(containers) == len(wanted)

    async def _health_summary(self, project: str) -> str:
        try:
            containers = await self._project_containers(project)
        except ProviderError:
            return ""
        parts = []
        for c in containers:
            name = str(c.get("Name", "")).lstrip("/")
            state = c.get("State") or {}
            health = _health(c)
            if health == "unhealthy":
                parts.append(f"{name} unhealthy ({_health_output(c)})")
            elif not _running(c):
                parts.append(f"{name} {state.get('Status')} (exit code {state.get('ExitCode')})")
        return ("; " + "; ".join(parts)) if parts else ""

    async def _wait_started(self, rendered: Rendered, count: int, timeout: float) -> None:  # noqa: ASYNC109
        """Until every replica runs and, when it has a healthcheck, is healthy.

        Polled here for v1 and v2 alike: v2's ``up --wait`` reports a crash-looping container
        under a restart policy as ready (seen with 2.40), and v1 has no such flag. A container
        counts as started once two polls in a row see it running with the same start time and
        restart count, so one that dies right after starting is not taken for a success."""
        deadline = time.monotonic() + timeout
        wanted = {(s, n) for s in rendered.services for n in range(1, count + 1)}
        seen_running: dict[tuple[str, int], tuple[str, str, int]] = {}
        while True:
            ready: set[tuple[str, int]] = set()
            for c in await self._project_containers(rendered.project):
                labels = _labels(c)
                slot = (labels.get(SERVICE_LABEL, ""), int(labels.get(NUMBER_LABEL, "0") or 0))
                state = c.get("State") or {}
                name = str(c.get("Name", "")).lstrip("/")
                health = _health(c)
                if state.get("Restarting") or state.get("Status") in ("exited", "dead"):
                    raise ProviderError(
                        f"{self.host_id}: container {name} exited (exit code "
                        f"{state.get('ExitCode')}, restarts {c.get('RestartCount', 0)})"
                    )
                if health == "unhealthy":
                    raise ProviderError(
                        f"{self.host_id}: container {name} is unhealthy ({_health_output(c)})"
                    )
                if _running(c) and health in ("healthy", "none"):
                    stamp = (
                        str(c.get("Id")),
                        str(state.get("StartedAt")),
                        c.get("RestartCount", 0),
                    )
                    # A passed Docker healthcheck already proves it stayed up; without one,
                    # two polls must agree.
                    if health == "healthy" or seen_running.get(slot) == stamp:
                        ready.add(slot)
                    seen_running[slot] = stamp
            if wanted <= ready:
                return
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"{self.host_id}: {rendered.project} not healthy after {timeout:g}s "
                    f"(ready: {len(ready & wanted)}/{len(wanted)})"
                )
            await asyncio.sleep(_POLL_S)

    async def stop(self, resource: Resource, instance: Instance) -> None:
        project = project_name(resource)
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        async with self._lock(project):
            if await self.transport.read_file(self._compose_file(project)) is not None:
                cli = await self.cli()
                argv = cli.argv(
                    project,
                    self._compose_file(project),
                    self._project_dir(project),
                    "stop",
                    "-t",
                    str(grace),
                    *service_names(resource),
                )
                result = await self.transport.run(
                    argv, timeout=COMMAND_TIMEOUT_S, env=self.base_env
                )
                if not result.ok:
                    raise ProviderError(
                        f"{self.host_id}: compose stop of {project} failed: {_tail(result.text())}"
                    )
            # Containers without a document here (state dir lost), and a Job's or Schedule's
            # runs in progress: stopped through the engine.
            for container in await self.engine.containers({PROJECT_LABEL: project}):
                if _running(container):
                    await self.engine.stop_container(str(container["Id"]), grace)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        """``down`` the project. Volumes go only with ``compose.removeVolumes: true``."""
        project = project_name(resource)
        section = compose_section(resource)
        remove_volumes = bool(section.get("removeVolumes", False))
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        async with self._lock(project):
            if await self.transport.read_file(self._compose_file(project)) is not None:
                cli = await self.cli()
                args = ["down", "--remove-orphans", "-t", str(grace)]
                if remove_volumes:
                    args.append("--volumes")
                argv = cli.argv(
                    project, self._compose_file(project), self._project_dir(project), *args
                )
                result = await self.transport.run(
                    argv, timeout=COMMAND_TIMEOUT_S, env=self.base_env
                )
                if not result.ok:
                    raise ProviderError(
                        f"{self.host_id}: compose down of {project} failed: {_tail(result.text())}"
                    )
            # Whatever the document did not name (one-off runs, a lost state dir) goes too.
            for container in await self.engine.containers({PROJECT_LABEL: project}):
                await self.engine.remove_container(str(container["Id"]))
            if remove_volumes:
                for volume in await self.engine.volumes({PROJECT_LABEL: project}):
                    await self.engine.remove_volume(volume)
            await self.transport.run(
                ["rm", "-rf", "--", self._project_dir(project)], timeout=60, check=True
            )

    # -- Jobs and Schedules ----------------------------------------------------------------------

    def _run_record(self, project: str) -> str:
        return posixpath.join(self._project_dir(project), "last-run.json")

    def _run_log(self, project: str) -> str:
        return posixpath.join(self._project_dir(project), "last-run.log")

    async def _install(self, release: Release, prepared: _Prepared) -> None:
        """Deploying a Job or Schedule installs it: document and files in place, images present
        (pulled per the pull policy), nothing started — ``run`` starts it, the daemon's
        scheduler at each cron fire for a Schedule."""
        rendered = prepared.rendered
        self._one_service(release.resource, rendered)
        async with self._lock(rendered.project):
            cli = await self.cli()
            env = self._env(release, rendered)
            await self._write_document(prepared)
            await self._ensure_images(cli, prepared, pull_policy(release.resource), env, True)
            await self._update_record(rendered.project, {"installed_revision": release.revision})

    @staticmethod
    def _one_service(resource: Resource, rendered: Rendered) -> str:
        if len(rendered.services) != 1:
            raise ProviderError(
                f"{resource.key}: a {resource.kind} runs exactly one compose service, "
                f"not {len(rendered.services)} ({', '.join(rendered.services)})"
            )
        return rendered.services[0]

    async def run(self, release: Release, instance: Instance) -> RunResult:
        """Run the Job/Schedule's service once to completion (``compose run``), in a detached
        container that is waited for, read and removed: the engine keeps stdout and stderr
        apart from compose's own progress lines, and a timeout can kill exactly that one."""
        resource = release.resource
        prepared = await self._prepare(release)
        rendered = prepared.rendered
        project = rendered.project
        service = self._one_service(resource, rendered)
        timeout = seconds(resource.spec.get("timeout"), DEFAULT_JOB_TIMEOUT_S)
        name = f"{project}-{service}-run-{secrets.token_hex(4)}"
        async with self._lock(project):
            cli = await self.cli()
            env = self._env(release, rendered)
            await self._write_document(prepared)
            await self._ensure_images(cli, prepared, pull_policy(resource), env)
            for leftover in await self._project_containers(project, oneoff=True):
                # Exited runs nobody here is waiting for: a reconciler that died mid-run.
                if not _running(leftover) and leftover.get("Name", "").lstrip("/") not in (
                    self._active_runs
                ):
                    await self.engine.remove_container(str(leftover["Id"]))
            args = ["run", "-d", "--name", name, "--no-deps", service]
            section = compose_section(resource)
            if is_file_reference(section) and resource.spec.get("command"):
                args += [str(a) for a in resource.spec["command"]]
            started = time.monotonic()
            self._active_runs.add(name)
            try:
                code, out = await self._compose(cli, prepared, env, *args, timeout=UP_TIMEOUT_S)
            except ProviderError:
                self._active_runs.discard(name)
                await self.engine.remove_container(name)
                raise
        # Waiting happens outside the project lock: with concurrencyPolicy Allow, runs overlap.
        try:
            if code != 0:
                raise ProviderError(
                    f"{self.host_id}: compose run of {project} failed (exit {code}): {_tail(out)}"
                )
            exit_code = await self.engine.wait(name, timeout)
            if exit_code is None:
                await self.engine.stop_container(name, 0)
            lines = await self.engine.logs(name, LOG_KEEP_LINES)
        finally:
            try:
                await self.engine.remove_container(name)
            finally:
                self._active_runs.discard(name)
        output = "\n".join(lines)
        if exit_code is None:
            exit_code = 124  # as timeout(1) reports it
            output += f"\n[fraisier] timed out after {timeout:g}s; the container was killed"
        async with self._lock(project):
            await self._record_run(release, project, exit_code, time.monotonic() - started, output)
        return RunResult(exit_code, output)

    async def _record_run(
        self, release: Release, project: str, exit_code: int, duration: float, output: str
    ) -> None:
        changes: dict[str, Any] = {
            "revision": release.revision,
            "exit_code": exit_code,
            "finished_at": _now(),
            "duration_s": round(duration, 3),
        }
        if exit_code == 0:
            changes["last_success_revision"] = release.revision
        await self._update_record(project, changes)
        kept = "\n".join(output.splitlines()[-LOG_KEEP_LINES:])
        await self.transport.write_file(self._run_log(project), kept.encode(), mode=0o600)

    async def _update_record(self, project: str, changes: Mapping[str, Any]) -> None:
        record = {**await self._read_record(project), **changes}
        await self._mkdir(self._project_dir(project))
        await self.transport.write_file(self._run_record(project), json.dumps(record).encode())

    async def _read_record(self, project: str) -> dict[str, Any]:
        data = await self.transport.read_file(self._run_record(project))
        if not data:
            return {}
        try:
            record = json.loads(data)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    async def _observe_runs(self, resource: Resource) -> list[InstanceState]:
        """A Job/Schedule has no long-running container: its state is the last run (revision of
        the last successful run) and whether a run is going on now."""
        project = project_name(resource)
        (instance,) = await self.instances(resource)
        record = await self._read_record(project)
        active = [c for c in await self._project_containers(project, oneoff=True) if _running(c)]
        facts: dict[str, Any] = {
            "project": project,
            "last_revision": record.get("revision"),
            "last_exit_code": record.get("exit_code"),
            "last_finished_at": record.get("finished_at"),
            "last_duration_s": record.get("duration_s"),
            "active_runs": len(active),
        }
        detail = ""
        if record.get("exit_code") not in (None, 0):
            detail = f"last run exited {record.get('exit_code')}"
        facts["installed_revision"] = record.get("installed_revision")
        # A Schedule is deployed by installing it; a Job by running it successfully.
        if resource.kind == "Schedule":
            revision = record.get("installed_revision")
        else:
            revision = record.get("last_success_revision")
        return [InstanceState(instance, revision, bool(active), detail, facts)]

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        project = project_name(resource)
        if resource.kind != "Service":
            active = [
                c for c in await self._project_containers(project, oneoff=True) if _running(c)
            ]
            if active:
                return await self.engine.logs(str(active[-1]["Id"]), tail)
            data = await self.transport.read_file(self._run_log(project))
            return data.decode(errors="replace").splitlines()[-tail:] if data else []
        service = instance.labels.get("service")
        replica = instance.labels.get("replica")
        for container in await self._project_containers(project):
            labels = _labels(container)
            if labels.get(SERVICE_LABEL) == service and labels.get(NUMBER_LABEL) == replica:
                return await self.engine.logs(str(container["Id"]), tail)
        return []

    async def close(self) -> None:
        await self.engine.close()
        await self.transport.close()


def local_base_env(docker_host: str) -> dict[str, str]:
    """The compose process's environment on this machine: only what the CLI needs, so the
    reconciler's own variables (tokens included) do not leak into compose interpolation."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR", "DOCKER_CONFIG")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["DOCKER_HOST"] = docker_host
    return env
