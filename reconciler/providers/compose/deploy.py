"""Deploying a Service with the compose provider: the scaled layout (``up`` of the whole project,
every replica together) and the per-replica layout of strategies rolling and canary (one
project per replica, sharing a plan computed once per Release: rendered template, images,
volumes, the old layout's containers to adopt), then waiting until the containers run and
pass their healthcheck. A Job or Schedule is installed by ``jobs.JobRunner``.
"""

from __future__ import annotations

import asyncio
import math
import posixpath
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ProviderError
from reconciler.observe.redact import redact
from reconciler.providers import Instance, InstanceState, Release
from reconciler.providers.compose.cli import ComposeCLI
from reconciler.providers.compose.containers import (
    EXIT_LINES,
    health_of,
    health_output,
    int_label,
    is_deployed,
    is_running,
    labels_of,
    slot_of,
    tail,
)
from reconciler.providers.compose.host import COMMAND_TIMEOUT_S, UP_TIMEOUT_S, ComposeHost, Prepared
from reconciler.providers.compose.jobs import JobRunner
from reconciler.providers.compose.observe import Observer
from reconciler.providers.compose.render import (
    LABEL_COMPOSE_REVISION,
    LABEL_IMAGE,
    LABEL_REVISION,
    LAYOUT_PER_REPLICA,
    NUMBER_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    VOLUME_LABEL,
    Rendered,
    compose_section,
    layout,
    pull_policy,
    replica_document,
    replicas,
    sandbox_hint,
    seconds,
    volumes_to_create,
)

# How long what a Release's replica deploys share (rendered template, exported files, images
# checked or pulled, old-layout containers) is reused: one rollout, not forever.
PLAN_TTL_S = 600.0
_POLL_S = 0.1


@dataclass(frozen=True)
class _ReplicaPlan:
    """What the per-replica deploys of one Release share, computed once (``_replica_plan``)."""

    template: Rendered
    workdir: str
    pull_override: str | None  # pull policy written into the replica documents
    adoptable: tuple[dict[str, Any], ...]  # containers of the scaled layout (the old one)
    created: float


class Deployer:
    """Brings Services to a release on one Docker host."""

    def __init__(self, host: ComposeHost, jobs: JobRunner, observer: Observer) -> None:
        self.host = host
        self.jobs = jobs
        self.observer = observer  # a replica's deploy returns its state as observe reports it
        # id(release) -> (the release, its shared replica plan being or having been computed)
        self._plans: dict[int, tuple[weakref.ref[Release], asyncio.Task[_ReplicaPlan]]] = {}
        self._plan_lock = asyncio.Lock()

    async def deploy(self, release: Release, instance: Instance) -> InstanceState | None:
        """Scaled layout: ``up`` the whole project — compose replaces every replica of a service
        together, so the first instance's call does the work and the others find it done.
        Per-replica layout (rolling, canary): ``up`` of that one replica's project only; returns
        the replica as the deploy last saw it (the health gate starts from it), None when it
        did not look (``wait: false``)."""
        resource = release.resource
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            return await self._deploy_replica(release, instance)
        prepared = await self.host.prepare(release)
        rendered = prepared.rendered
        count = replicas(resource)
        section = compose_section(resource)
        wait = bool(section.get("wait", True))
        wait_timeout = seconds(section.get("waitTimeout"), 60.0)
        if resource.kind != "Service":
            await self.jobs.install(release, prepared)
            return None
        async with self.host.lock(rendered.project):
            cli = await self.host.cli()
            # A strategy change from rolling/canary: the replicas' own projects make way.
            grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
            await self.host.remove_replica_projects(resource, cli, grace=grace)
            if await self._already_deployed(prepared, release.revision, count):
                return None
            env = self.host.env(release, rendered)
            await self.host.write_document(prepared, cli)
            await self.host.ensure_images(cli, prepared, pull_policy(resource), env)
            args = ["up", "-d", "--no-deps", "--remove-orphans"]
            for service in rendered.services:
                args += ["--scale", f"{service}={count}"]
            args += rendered.services
            started = time.monotonic()
            await self._up(cli, prepared, env, rendered, args, UP_TIMEOUT_S + wait_timeout)
            # compose v1 takes ~0.7 s to start: asked while the containers start
            recording = asyncio.ensure_future(self.host.record_config_hashes(cli, prepared, env))
            try:
                if wait and count > 0:
                    remaining = wait_timeout - (time.monotonic() - started)
                    await self._wait_started(rendered, count, max(remaining, 1.0))
            finally:
                await recording
            self.host.ctx.logger.info(
                "compose: %s up on %s at %s",
                rendered.project,
                self.host.host_id,
                rendered.compose_revision,
            )
        return None

    async def _already_deployed(self, prepared: Prepared, revision: str, count: int) -> bool:
        rendered = prepared.rendered
        containers, hashes = await asyncio.gather(
            self.host.project_containers(rendered.project),
            self.host.config_hashes(prepared.compose_file),
        )
        wanted = {(s, n) for s in rendered.services for n in range(1, count + 1)}
        seen: set[tuple[str, int]] = set()
        for container in containers:
            labels = labels_of(container)
            if (
                labels.get(LABEL_REVISION) != revision
                or labels.get(LABEL_COMPOSE_REVISION) != rendered.compose_revision
                or str((container.get("Config") or {}).get("Image")) != labels.get(LABEL_IMAGE)
                or not is_running(container)
                or health_of(container) == "unhealthy"
                or (hashes is not None and hashes.edited(container))
            ):
                return False
            seen.add((labels.get(SERVICE_LABEL, ""), int(labels.get(NUMBER_LABEL, "0") or 0)))
        return seen == wanted and len(containers) == len(wanted)

    async def _up(self, cli: ComposeCLI, prepared: Prepared, env: Mapping[str, str],
                  rendered: Rendered, args: list[str], limit_s: float) -> None:
        """``compose ARGS`` for an ``up``; a failure says why, with the containers' health."""
        code, out = await self.host.compose(cli, prepared, env, *args, timeout=limit_s)
        if code != 0:
            raise ProviderError(
                f"{self.host.host_id}: compose up of {rendered.project} failed (exit {code}): "
                f"{tail(out)}{await self._health_summary(rendered.project)}"
            )

    async def _health_summary(self, project: str) -> str:
        try:
            containers = await self.host.project_containers(project)
        except ProviderError:
            return ""
        parts = []
        for c in containers:
            name = str(c.get("Name", "")).lstrip("/")
            state = c.get("State") or {}
            health = health_of(c)
            if health == "unhealthy":
                parts.append(f"{name} unhealthy ({health_output(c)})")
            elif not is_running(c):
                parts.append(f"{name} {state.get('Status')} (exit code {state.get('ExitCode')})")
        return ("; " + "; ".join(parts)) if parts else ""

    async def _wait_started(
        self,
        rendered: Rendered,
        count: int,
        timeout: float,  # noqa: ASYNC109
        services: list[str] | None = None,
    ) -> tuple[float | None, list[dict[str, Any]]]:
        """Until every replica runs and, when it has a healthcheck, is healthy; then the Docker
        host's time read before the last poll and the containers that poll saw.

        Polled here for v1 and v2 alike: v2's ``up --wait`` reports a crash-looping container
        under a restart policy as ready (seen with 2.40), and v1 has no such flag. One poll
        that sees a container running is enough: every deploy of a Service is followed by the
        health gate, whose watcher looks at the container soon after and whose stay-up rule
        passes only the container seen here (its id and start time) once it has run for the
        probe interval, so one that dies right after starting fails the gate with its exit
        code and output. (Two polls 100 ms apart used to be required here: docs/performance.md,
        session 11, compose gate waits.)"""
        deadline = time.monotonic() + timeout
        wanted = {(s, n) for s in services or rendered.services for n in range(1, count + 1)}
        while True:
            ready: set[tuple[str, int]] = set()
            now = await self.host.engine.clock()  # before the poll: ages not overstated
            polled = await self.host.project_containers(rendered.project)
            for c in polled:
                labels = labels_of(c)
                slot = (labels.get(SERVICE_LABEL, ""), int(labels.get(NUMBER_LABEL, "0") or 0))
                if slot not in wanted:
                    continue  # another service of the project, not being deployed here
                state = c.get("State") or {}
                name = str(c.get("Name", "")).lstrip("/")
                health = health_of(c)
                if state.get("Restarting") or state.get("Status") in ("exited", "dead"):
                    raise ProviderError(
                        f"{self.host.host_id}: container {name} exited (exit code "
                        f"{state.get('ExitCode')}, restarts {c.get('RestartCount', 0)})"
                        + await self._why_exited(name, rendered.sandbox)
                    )
                if health == "unhealthy":
                    raise ProviderError(
                        f"{self.host.host_id}: container {name} is unhealthy ({health_output(c)})"
                    )
                if is_running(c) and health in ("healthy", "none"):
                    ready.add(slot)
            if wanted <= ready:
                return now, polled
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"{self.host.host_id}: {rendered.project} not healthy after {timeout:g}s "
                    f"(ready: {len(ready & wanted)}/{len(wanted)})"
                )
            await asyncio.sleep(_POLL_S)

    async def _why_exited(self, container: str, profile: str) -> str:
        """``; last output: …`` of a container that exited, and the sandbox setting that likely
        stopped it (redacted: the message reaches the store)."""
        try:
            lines = [line.rstrip() for line in await self.host.engine.logs(container, EXIT_LINES)]
        except ProviderError:  # output is a courtesy: the failure stands without it
            return ""
        lines = [line for line in lines if line.strip()]
        if not lines:
            return ""
        hint = sandbox_hint(profile, "\n".join(lines))
        return redact("; last output: " + " | ".join(lines) + (f"; {hint}" if hint else ""))

    async def _replica_plan(self, release: Release) -> _ReplicaPlan:
        """The plan shared by a Release's replica deploys: computed by the first deploy, awaited
        by the concurrent ones, reused for PLAN_TTL_S (a failed one is not kept)."""
        key = id(release)
        async with self._plan_lock:
            now = time.monotonic()
            for k, (ref, old) in list(self._plans.items()):
                expired = old.done() and (
                    old.cancelled()
                    or old.exception() is not None
                    or now - old.result().created > PLAN_TTL_S
                )
                if ref() is None or expired:
                    del self._plans[k]
            entry = self._plans.get(key)
            if entry is not None and entry[0]() is release:
                task = entry[1]
            else:
                task = asyncio.create_task(self._make_replica_plan(release))
                self._plans[key] = (weakref.ref(release), task)
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done():
                async with self._plan_lock:
                    if self._plans.get(key, (None, None))[1] is task:
                        del self._plans[key]
            raise

    async def _make_replica_plan(self, release: Release) -> _ReplicaPlan:
        # The compose CLI's detection (processes, once per host) goes on beside the export and
        # the engine's answers about images.
        detecting = asyncio.ensure_future(self.host.cli())
        await asyncio.sleep(0)  # its processes start before this task's first engine request
        try:
            return await self._plan_with(release, detecting)
        finally:
            if not detecting.done():
                detecting.cancel()
            await asyncio.gather(detecting, return_exceptions=True)

    async def _plan_with(self, release: Release, detecting: asyncio.Future[ComposeCLI]
                         ) -> _ReplicaPlan:
        resource = release.resource
        prepared = await self.host.prepare(release)  # renders the template, exports files once
        template = prepared.rendered
        base = template.project
        env = self.host.env(release, template)
        policy = pull_policy(resource)
        # Images: checked (never), pulled when absent (missing) or pulled (always) once for the
        # release, not by each replica's `up` (five concurrent pulls of one image otherwise).
        absent = []
        for service in template.services:
            if policy == "always" or await self.host.engine.image(template.images[service]) is None:
                absent.append(service)
        cli = await detecting
        if absent and policy == "never":
            ref = template.images[absent[0]]
            raise ProviderError(
                f"{self.host.host_id}: image {ref} is not on the Docker host and pullPolicy "
                "is never",
                hint="load or build the image on the host, or use pullPolicy: missing",
            )
        if absent:
            first = replica_document(template, 1, None)
            pull_doc = Prepared(
                first,
                posixpath.join(self.host.project_dir(base), "pull", "compose.yaml"),
                prepared.workdir,
            )
            await self.host.write_document(pull_doc, cli)
            code, out = await self.host.compose(
                cli, pull_doc, env, "pull", *absent, timeout=COMMAND_TIMEOUT_S
            )
            if code != 0:
                raise ProviderError(
                    f"{self.host.host_id}: pulling images of {resource.key} failed: {tail(out)}"
                )
        # Named volumes: the resource's, shared by its replicas, labelled as compose labels
        # the scaled layout's (so a strategy change in either direction keeps them).
        for name, volume, config in volumes_to_create(template):
            await self.host.engine.create_volume(
                name,
                {PROJECT_LABEL: base, VOLUME_LABEL: volume, **dict(config.get("labels") or {})},
                config.get("driver"),
                {str(k): str(v) for k, v in (config.get("driver_opts") or {}).items()},
            )
        # The scaled layout's containers (a strategy change): each is replaced when its replica
        # is deployed; those beyond compose.replicas go now, as replicas of scaled-down ones.
        count = replicas(resource)
        adoptable: list[dict[str, Any]] = []
        for container in await self.host.project_containers(base):
            labels = labels_of(container)
            number = int_label(labels.get(NUMBER_LABEL))
            if labels.get(SERVICE_LABEL) in template.services and 1 <= number <= count:
                adoptable.append(container)
            else:
                await self.host.engine.remove_container(str(container["Id"]))
        if (
            not adoptable
            and await self.host.transport.read_file(self.host.compose_file(base)) is not None
        ):
            # Every scaled replica was replaced: its project's network and document go too.
            await self.host.down(
                cli, base, self.host.compose_file(base), self.host.project_dir(base), 0
            )
            await self.host.transport.run(
                ["rm", "-f", "--", self.host.compose_file(base)], timeout=30
            )
        await self.host.remove_replica_projects(resource, cli, above=count)
        return _ReplicaPlan(
            template,
            prepared.workdir,
            "missing" if policy == "always" else None,
            tuple(adoptable),
            time.monotonic(),
        )

    async def _deploy_replica(self, release: Release, instance: Instance) -> InstanceState | None:
        """Bring replica ``n`` of one compose service to the release, leaving the others alone;
        the replica's state as last seen (None with ``wait: false``)."""
        resource = release.resource
        service, number = self.host.slot(resource, instance)
        section = compose_section(resource)
        wait = bool(section.get("wait", True))
        wait_timeout = seconds(section.get("waitTimeout"), 60.0)
        plan = await self._replica_plan(release)
        rendered = replica_document(plan.template, number, plan.pull_override)
        base = plan.template.project
        prepared = Prepared(rendered, self.host.replica_file(base, number), plan.workdir)
        async with self.host.lock(rendered.project):
            # The scaled layout's container of this slot makes way (it may hold the port).
            grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
            old = [c for c in plan.adoptable if slot_of(c, base) == (service, number)]
            for container in old:
                await self.host.engine.stop_container(str(container["Id"]), grace)
                await self.host.engine.remove_container(str(container["Id"]))
            now = await self.host.engine.clock()
            listed = await self.host.project_containers(rendered.project)
            mine = [c for c in listed if labels_of(c).get(SERVICE_LABEL) == service]
            hashes = await self.host.config_hashes(prepared.compose_file)
            if len(mine) == 1 and is_deployed(mine[0], release.revision, rendered, hashes):
                # already there: its state (and age, which the gate's stay-up rule counts)
                return await self.observer.replica_state(
                    resource, instance, (service, number), listed, [], hashes, now
                )
            cli = await self.host.cli()
            env = self.host.env(release, rendered)
            await self.host.write_document(prepared, cli)
            args = ["up", "-d", "--no-deps", "--remove-orphans", "--scale", f"{service}=1", service]
            started = time.monotonic()
            await self._up(cli, prepared, env, rendered, args, UP_TIMEOUT_S + wait_timeout)
            recording = asyncio.ensure_future(self.host.record_config_hashes(cli, prepared, env))
            seen: tuple[float | None, list[dict[str, Any]]] | None = None
            try:
                if wait:
                    remaining = wait_timeout - (time.monotonic() - started)
                    seen = await self._wait_started(rendered, 1, max(remaining, 1.0), [service])
            finally:
                await recording
            self.host.ctx.logger.info(
                "compose: %s of %s up on %s at %s",
                instance.id,
                rendered.project,
                self.host.host_id,
                rendered.compose_revision,
            )
            if seen is None:
                return None
            # The scaled layout's container of this slot was removed above, and the replica's
            # own one runs: observe_instance would report the same from the scaled project's.
            hashes = await self.host.config_hashes(prepared.compose_file)  # just recorded
            return await self.observer.replica_state(
                resource, instance, (service, number), seen[1], [], hashes, seen[0]
            )
