"""The compose provider: Services, Jobs and Schedules as Docker Compose projects on one Docker host.

Every resource is one compose project (``render.project_name``: stable across revisions), whose
rendered document is kept on the Docker host at ``<stateDir>/<project>/compose.yaml`` — except a
Service with strategy rolling or canary, which runs one compose project per replica
(``<project>_r<n>``, document at ``<stateDir>/<project>/replicas/<n>/compose.yaml``; see
``render.layout``) so that each replica is deployed, stopped and removed on its own. Writes go
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
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.errors import ProviderError
from reconciler.observe.redact import redact
from reconciler.providers import (
    Capabilities,
    Health,
    Identity,
    Instance,
    InstanceState,
    Phase,
    ProbeSite,
    ProviderContext,
    Release,
    RunResult,
)
from reconciler.providers.compose.cli import ComposeCLI, detect
from reconciler.providers.compose.engine import ContainerExec, DockerEngine
from reconciler.providers.compose.render import (
    LABEL_COMPOSE_REVISION,
    LABEL_IMAGE,
    LABEL_REPLICA,
    LABEL_RESOURCE,
    LABEL_REVISION,
    LAYOUT_PER_REPLICA,
    LAYOUT_SCALED,
    NUMBER_LABEL,
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    VOLUME_LABEL,
    Rendered,
    compose_section,
    is_file_reference,
    layout,
    project_name,
    pull_policy,
    render,
    replica_document,
    replica_of_project,
    replica_project,
    replicas,
    sandbox_hint,
    sandbox_profile,
    seconds,
    service_names,
    volumes_to_create,
)
from reconciler.spec.model import Resource
from reconciler.transport import Transport

UP_TIMEOUT_S = 300.0  # `up` itself (create/recreate/start), on top of any health wait
COMMAND_TIMEOUT_S = 120.0  # stop, down, pull of one project
DEFAULT_JOB_TIMEOUT_S = 600.0
KEEP_RELEASES = 5
LOG_KEEP_LINES = 1000
_EXIT_LINES = 5  # output lines of an exited container that a failed deploy reports
_POLL_S = 0.1
_TAIL_CHARS = 1500
# Variables of the compose process that a resource's env must not override.
_RESERVED_ENV = re.compile(r"^(PATH|HOME|DOCKER_.*|COMPOSE_.*)$")
# Observed revision of a container changed by hand (no release revision starts with it).
UNMANAGED_PREFIX = "unmanaged:"
# Compose's hash of a service's configuration, which it puts on every container it creates.
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
# Beside a project's compose.yaml: what ``compose config --hash`` gave for the rendered document
# (JSON {"compose_revision": ..., "services": {service: hash}}), so a container recreated from a
# hand-edited copy of the document (fraisier's labels kept) is seen as drift by any process.
CONFIG_HASH_FILE = "config-hash.json"
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# How long what a Release's replica deploys share (rendered template, exported files, images
# checked or pulled, old-layout containers) is reused: one rollout, not forever.
PLAN_TTL_S = 600.0


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
class _ReplicaPlan:
    """What the per-replica deploys of one Release share, computed once (``_replica_plan``)."""

    template: Rendered
    workdir: str
    pull_override: str | None  # pull policy written into the replica documents
    adoptable: tuple[dict[str, Any], ...]  # containers of the scaled layout (the old one)
    created: float


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


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _slot_of(container: Mapping[str, Any], base: str) -> tuple[str, int]:
    """(service, replica) a container of resource project ``base`` fills: its compose container
    number in the scaled project ``base``, the number in its project's name ``base_r<n>`` in the
    per-replica layout (else its replica label; (service, 0) when it has none)."""
    labels = _labels(container)
    service = labels.get(SERVICE_LABEL, "")
    project = labels.get(PROJECT_LABEL, "")
    if project == base:
        return service, _int(labels.get(NUMBER_LABEL))
    number = replica_of_project(base, project)
    if number is not None:
        return service, number
    return service, _int(labels.get(LABEL_REPLICA))


@dataclass(frozen=True)
class _ConfigHashes:
    """What compose computes for a rendered document, per service (``CONFIG_HASH_FILE``)."""

    compose_revision: str
    services: Mapping[str, str]

    def edited(self, container: Mapping[str, Any]) -> bool:
        """The container was made from this document's revision, but not from this document:
        compose's own hash of its configuration differs (a hand edit through compose)."""
        labels = _labels(container)
        wanted = self.services.get(labels.get(SERVICE_LABEL, ""))
        return (
            wanted is not None
            and labels.get(LABEL_COMPOSE_REVISION) == self.compose_revision
            and labels.get(CONFIG_HASH_LABEL) != wanted
        )


def _is_deployed(
    container: Mapping[str, Any],
    revision: str,
    rendered: Rendered,
    hashes: _ConfigHashes | None = None,
) -> bool:
    labels = _labels(container)
    return (
        not (hashes is not None and hashes.edited(container))
        and labels.get(LABEL_REVISION) == revision
        and labels.get(LABEL_COMPOSE_REVISION) == rendered.compose_revision
        and str((container.get("Config") or {}).get("Image")) == labels.get(LABEL_IMAGE)
        and _running(container)
        and _health(container) != "unhealthy"
    )


# Docker's health status -> the contract's (a container without a check has status "none")
_HEALTH = {"healthy": Health.HEALTHY, "unhealthy": Health.UNHEALTHY, "starting": Health.STARTING}


class ComposeProvider:
    """Drives one Docker host (a Target with ``provider: compose``)."""

    # one replica is read from its own project; exec probes run inside the container
    capabilities = Capabilities(observe_one=True, exec_probes=ProbeSite.INSTANCE)

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
        # id(release) -> (the release, its shared replica plan being or having been computed)
        self._plans: dict[int, tuple[weakref.ref[Release], asyncio.Task[_ReplicaPlan]]] = {}
        self._plan_lock = asyncio.Lock()
        self._made_dirs: set[str] = set()
        self._removing: dict[str, int] = {}  # base project -> replica removals in progress
        # compose file -> its config hashes (read once; rewritten only by a deploy)
        self._hashes: dict[str, _ConfigHashes | None] = {}

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

    def _replica_dir(self, base: str, number: int) -> str:
        return posixpath.join(self._project_dir(base), "replicas", str(number))

    def _replica_file(self, base: str, number: int) -> str:
        return posixpath.join(self._replica_dir(base, number), "compose.yaml")

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
        rendered = render(resource, release.revision, file_text,
                          target_sandbox=self.target.spec.get("sandbox"))
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

    @staticmethod
    def _hash_file(compose_file: str) -> str:
        return posixpath.join(posixpath.dirname(compose_file), CONFIG_HASH_FILE)

    async def _record_config_hashes(
        self, cli: ComposeCLI, prepared: _Prepared, env: Mapping[str, str]
    ) -> None:
        """Ask compose for its hash of every service of the document just brought up (the
        same CLI and environment as ``up``, so the same value it labelled the containers
        with) and keep it beside the document."""
        code, out = await self._compose(
            cli, prepared, env, "config", "--hash", "*", timeout=COMMAND_TIMEOUT_S
        )
        path = self._hash_file(prepared.compose_file)
        services: dict[str, str] = {}
        for line in out.splitlines() if code == 0 else ():
            parts = line.split()
            if len(parts) == 2 and parts[0] in prepared.rendered.services:
                services[parts[0]] = parts[1]
        if not services:
            # An older compose without `config --hash`: drift is then read from the labels only.
            self.ctx.logger.warning(
                "compose: %s on %s: no config hash (`config --hash` exit %s); hand edits "
                "through compose are not detected", prepared.rendered.project, self.host_id, code)
            self._hashes[prepared.compose_file] = None
            await self.transport.run(["rm", "-f", "--", path], timeout=30)
            return
        hashes = _ConfigHashes(prepared.rendered.compose_revision, services)
        data = {"compose_revision": hashes.compose_revision, "services": services}
        await self.transport.write_file(path, json.dumps(data).encode(), mode=0o600)
        self._hashes[prepared.compose_file] = hashes

    async def _config_hashes(self, compose_file: str) -> _ConfigHashes | None:
        """The recorded config hashes of a compose file (None: none recorded)."""
        if compose_file in self._hashes:
            return self._hashes[compose_file]
        raw = await self.transport.read_file(self._hash_file(compose_file))
        hashes: _ConfigHashes | None = None
        if raw is not None:
            try:
                data = json.loads(raw)
                hashes = _ConfigHashes(
                    str(data["compose_revision"]),
                    {str(k): str(v) for k, v in dict(data["services"]).items()},
                )
            except (ValueError, KeyError, TypeError):
                hashes = None  # unreadable: compared by the labels only
        self._hashes[compose_file] = hashes
        return hashes

    async def _write_document(self, prepared: _Prepared, cli: ComposeCLI) -> None:
        directory = posixpath.dirname(prepared.compose_file)
        data = prepared.rendered.yaml(compose_v1=not cli.is_v2).encode()
        if directory not in self._made_dirs:
            # Written first: a transport that makes the parent folders (this machine's) needs
            # no `mkdir` process per replica; one that does not (SSH) fails, and `mkdir` runs.
            try:
                await self.transport.write_file(prepared.compose_file, data, mode=0o600)
            except ProviderError:
                await self._mkdir(directory)
            else:
                self._made_dirs.add(directory)
                return
            self._made_dirs.add(directory)
        await self.transport.write_file(prepared.compose_file, data, mode=0o600)

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

    # -- per-replica layout (strategies rolling and canary) -------------------------------------

    def _slot(self, resource: Resource, instance: Instance, strict: bool = True) -> tuple[str, int]:
        """(compose service, replica number) of an instance of ``instances()``; with ``strict``
        off, also one beyond ``compose.replicas`` (stop/remove of a scaled-down replica)."""
        service = instance.labels.get("service")
        replica = instance.labels.get("replica")
        if service is None or replica is None:
            service, _, replica = instance.id.rpartition("-")
        if service not in service_names(resource) or not str(replica).isdigit():
            raise ProviderError(f"{resource.key}: {instance.id} is not an instance of it")
        number = int(str(replica))
        if number < 1 or (strict and number > max(replicas(resource), 1)):
            raise ProviderError(
                f"{resource.key}: {instance.id} is not an instance of it "
                f"(compose.replicas is {replicas(resource)})"
            )
        return service, number

    async def _resource_containers(self, resource: Resource) -> list[dict[str, Any]]:
        """Every (non one-off) container fraisier made for the resource, in any project."""
        containers = await self.engine.containers({LABEL_RESOURCE: str(resource.key)})
        return [c for c in containers if _labels(c).get(ONEOFF_LABEL) != "True"]

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
        resource = release.resource
        prepared = await self._prepare(release)  # renders the template, exports files once
        template = prepared.rendered
        base = template.project
        cli = await self.cli()
        env = self._env(release, template)
        policy = pull_policy(resource)
        # Images: checked (never), pulled when absent (missing) or pulled (always) once for the
        # release, not by each replica's `up` (five concurrent pulls of one image otherwise).
        absent = []
        for service in template.services:
            if policy == "always" or await self.engine.image(template.images[service]) is None:
                absent.append(service)
        if absent and policy == "never":
            ref = template.images[absent[0]]
            raise ProviderError(
                f"{self.host_id}: image {ref} is not on the Docker host and pullPolicy is never",
                hint="load or build the image on the host, or use pullPolicy: missing",
            )
        if absent:
            first = replica_document(template, 1, None)
            pull_doc = _Prepared(
                first,
                posixpath.join(self._project_dir(base), "pull", "compose.yaml"),
                prepared.workdir,
            )
            await self._write_document(pull_doc, cli)
            code, out = await self._compose(
                cli, pull_doc, env, "pull", *absent, timeout=COMMAND_TIMEOUT_S
            )
            if code != 0:
                raise ProviderError(
                    f"{self.host_id}: pulling images of {resource.key} failed: {_tail(out)}"
                )
        # Named volumes: the resource's, shared by its replicas, labelled as compose labels
        # the scaled layout's (so a strategy change in either direction keeps them).
        for name, volume, config in volumes_to_create(template):
            await self.engine.create_volume(
                name,
                {PROJECT_LABEL: base, VOLUME_LABEL: volume, **dict(config.get("labels") or {})},
                config.get("driver"),
                {str(k): str(v) for k, v in (config.get("driver_opts") or {}).items()},
            )
        # The scaled layout's containers (a strategy change): each is replaced when its replica
        # is deployed; those beyond compose.replicas go now, as replicas of scaled-down ones.
        count = replicas(resource)
        adoptable: list[dict[str, Any]] = []
        for container in await self._project_containers(base):
            labels = _labels(container)
            number = _int(labels.get(NUMBER_LABEL))
            if labels.get(SERVICE_LABEL) in template.services and 1 <= number <= count:
                adoptable.append(container)
            else:
                await self.engine.remove_container(str(container["Id"]))
        if not adoptable and await self.transport.read_file(self._compose_file(base)) is not None:
            # Every scaled replica was replaced: its project's network and document go too.
            await self._down(cli, base, self._compose_file(base), self._project_dir(base), 0)
            await self.transport.run(["rm", "-f", "--", self._compose_file(base)], timeout=30)
        await self._remove_replica_projects(resource, cli, above=count)
        return _ReplicaPlan(
            template,
            prepared.workdir,
            "missing" if policy == "always" else None,
            tuple(adoptable),
            time.monotonic(),
        )

    async def _down(
        self, cli: ComposeCLI, project: str, file: str, workdir: str, grace: int
    ) -> None:
        argv = cli.argv(project, file, workdir, "down", "--remove-orphans", "-t", str(grace))
        result = await self.transport.run(argv, timeout=COMMAND_TIMEOUT_S, env=self.base_env)
        if not result.ok:
            raise ProviderError(
                f"{self.host_id}: compose down of {project} failed: {_tail(result.text())}"
            )

    async def _remove_replica_projects(
        self, resource: Resource, cli: ComposeCLI, above: int = 0, grace: int = 0
    ) -> None:
        """``down`` the per-replica projects of the resource numbered above ``above`` (all with
        0: a strategy change back to a scaled layout), and delete their documents."""
        base = project_name(resource)
        numbers: set[int] = set()
        leftovers: list[tuple[str, str]] = []  # (container id, project)
        # labels only, no inspect: this runs once per rollout and on every scaled deploy
        listed = await self.engine.labelled({LABEL_RESOURCE: str(resource.key)}, [PROJECT_LABEL])
        for container_id, labels in listed:
            project = labels.get(PROJECT_LABEL, "")
            number = replica_of_project(base, project)
            if number is not None and number > above:
                numbers.add(number)
                leftovers.append((container_id, project))
        if not numbers:
            return

        async def down(number: int) -> None:
            project = replica_project(base, number)
            async with self._lock(project):
                file = self._replica_file(base, number)
                if await self.transport.read_file(file) is not None:
                    await self._down(cli, project, file, self._project_dir(base), grace)
                for container_id, owner in leftovers:
                    if owner == project:
                        await self.engine.remove_container(container_id)
                await self.transport.run(
                    ["rm", "-rf", "--", self._replica_dir(base, number)], timeout=60
                )
                self._made_dirs.discard(self._replica_dir(base, number))

        await asyncio.gather(*(down(n) for n in sorted(numbers)))
        self.ctx.logger.info(
            "compose: removed replica projects %s of %s on %s",
            sorted(numbers),
            resource.key,
            self.host_id,
        )

    async def _deploy_replica(self, release: Release, instance: Instance) -> None:
        """Bring replica ``n`` of one compose service to the release, leaving the others alone."""
        resource = release.resource
        service, number = self._slot(resource, instance)
        section = compose_section(resource)
        wait = bool(section.get("wait", True))
        wait_timeout = seconds(section.get("waitTimeout"), 60.0)
        plan = await self._replica_plan(release)
        rendered = replica_document(plan.template, number, plan.pull_override)
        base = plan.template.project
        prepared = _Prepared(rendered, self._replica_file(base, number), plan.workdir)
        async with self._lock(rendered.project):
            # The scaled layout's container of this slot makes way (it may hold the port).
            grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
            old = [c for c in plan.adoptable if _slot_of(c, base) == (service, number)]
            for container in old:
                await self.engine.stop_container(str(container["Id"]), grace)
                await self.engine.remove_container(str(container["Id"]))
            mine = [
                c
                for c in await self._project_containers(rendered.project)
                if _labels(c).get(SERVICE_LABEL) == service
            ]
            hashes = await self._config_hashes(prepared.compose_file)
            if len(mine) == 1 and _is_deployed(mine[0], release.revision, rendered, hashes):
                return
            cli = await self.cli()
            env = self._env(release, rendered)
            await self._write_document(prepared, cli)
            args = ["up", "-d", "--no-deps", "--remove-orphans", "--scale", f"{service}=1", service]
            started = time.monotonic()
            code, out = await self._compose(
                cli, prepared, env, *args, timeout=UP_TIMEOUT_S + wait_timeout
            )
            if code != 0:
                raise ProviderError(
                    f"{self.host_id}: compose up of {rendered.project} failed (exit {code}): "
                    f"{_tail(out)}{await self._health_summary(rendered.project)}"
                )
            recording = asyncio.ensure_future(self._record_config_hashes(cli, prepared, env))
            try:
                if wait:
                    remaining = wait_timeout - (time.monotonic() - started)
                    await self._wait_started(rendered, 1, max(remaining, 1.0), [service])
            finally:
                await recording
            self.ctx.logger.info(
                "compose: %s of %s up on %s at %s",
                instance.id,
                rendered.project,
                self.host_id,
                rendered.compose_revision,
            )

    async def _observe_replicas(self, resource: Resource) -> list[InstanceState]:
        """Each replica's own container; a replica not yet moved from the scaled layout (a
        strategy change) is reported from its old container, which its deploy replaces."""
        base = project_name(resource)
        expected = await self.instances(resource)
        scaled, tagged = await asyncio.gather(
            self._project_containers(base), self._resource_containers(resource)
        )
        current: dict[tuple[str, int], list[dict[str, Any]]] = {}
        older: dict[tuple[str, int], list[dict[str, Any]]] = {}
        extras: list[dict[str, Any]] = []
        seen: set[str] = set()
        for container in [*scaled, *tagged]:
            if container.get("Id") in seen:
                continue
            seen.add(str(container.get("Id")))
            labels = _labels(container)
            project = labels.get(PROJECT_LABEL, "")
            if project == base:
                older.setdefault(_slot_of(container, base), []).append(container)
            elif replica_of_project(base, project) is not None:
                current.setdefault(_slot_of(container, base), []).append(container)
            else:
                extras.append(container)
        states: list[InstanceState] = []
        slots = [(i.labels["service"], int(i.labels["replica"])) for i in expected]
        all_hashes = await asyncio.gather(
            *(self._config_hashes(self._replica_file(base, slot[1])) for slot in slots)
        )
        for instance, slot, hashes in zip(expected, slots, all_hashes, strict=True):
            state, left = self._replica_state(
                instance, slot, current.pop(slot, []), older.pop(slot, []), hashes
            )
            states.append(state)
            extras += left
        for leftovers in (*current.values(), *older.values()):
            extras += leftovers
        for extra in extras:
            states.append(self._extra_state(extra, _labels(extra).get(PROJECT_LABEL, base)))
        return states

    def _replica_state(
        self,
        instance: Instance,
        slot: tuple[str, int],
        found: list[dict[str, Any]],
        stale: list[dict[str, Any]],
        hashes: _ConfigHashes | None = None,
    ) -> tuple[InstanceState, list[dict[str, Any]]]:
        """The state of one replica from its own project's containers (``found``) and the
        scaled layout's of its slot (``stale``); returns it with the containers left over."""
        adopted = not found and bool(stale)
        if adopted:
            found, stale = stale, []
        found = sorted(
            found, key=lambda c: (_running(c), str((c.get("State") or {}).get("StartedAt")))
        )
        extras = found[:-1] + stale
        if not found:
            missing = InstanceState(
                instance,
                None,
                False,
                "container missing",
                phase=Phase.MISSING,
                facts={
                    "present": False,
                    "service": slot[0],
                    "project": instance.labels["project"],
                    "replica": slot[1],
                    "layout": LAYOUT_PER_REPLICA,
                },
            )
            return missing, extras
        state = self._container_state(instance, found[-1], None if adopted else hashes)
        state.facts["replica"] = slot[1]
        state.facts["layout"] = LAYOUT_SCALED if adopted else LAYOUT_PER_REPLICA
        if adopted:
            state.detail = ("in the scaled layout until deployed; " + state.detail).rstrip("; ")
        return state, extras

    async def observe_instance(self, resource: Resource, instance: Instance) -> InstanceState:
        """One instance's state, as ``observe`` reports it. A replica of the per-replica layout is
        read from its own project (and the scaled project, for a replica not moved yet) instead
        of inspecting every container of the resource: the health gate of each replica of a
        rolling update asks for it, and 20 replicas made that 400 inspects per rollout."""
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            try:
                slot = self._slot(resource, instance)
            except ProviderError:
                slot = None
            if slot is not None and "project" in instance.labels:
                base = project_name(resource)
                project = replica_project(base, slot[1])
                own, scaled, hashes = await asyncio.gather(
                    self.engine.containers(
                        {PROJECT_LABEL: project, LABEL_RESOURCE: str(resource.key)}
                    ),
                    self._project_containers(base),
                    self._config_hashes(self._replica_file(base, slot[1])),
                )
                found = [
                    c
                    for c in own
                    if _labels(c).get(ONEOFF_LABEL) != "True" and _slot_of(c, base) == slot
                ]
                stale = [c for c in scaled if _slot_of(c, base) == slot]
                state = self._replica_state(instance, slot, found, stale, hashes)[0]
                await self._diagnose(resource, state)
                return state
        for state in await self.observe(resource):
            if state.instance.id == instance.id:
                return state
        return InstanceState(instance, None, False, "not found", {"present": False},
                             phase=Phase.MISSING)

    async def _stop_replica(self, resource: Resource, instance: Instance) -> None:
        service, number = self._slot(resource, instance, strict=False)
        base = project_name(resource)
        project = replica_project(base, number)
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        async with self._lock(project):
            mine, scaled = await asyncio.gather(
                self._project_containers(project), self._project_containers(base)
            )
            targets = [
                c
                for c in [*mine, *scaled]
                if _slot_of(c, base) == (service, number) and _running(c)
            ]
            await asyncio.gather(
                *(self.engine.stop_container(str(c["Id"]), grace) for c in targets)
            )

    async def _remove_replica(self, resource: Resource, instance: Instance) -> None:
        """Delete replica ``n`` (its container; its project once empty). The last replica to go
        takes the resource's files, and its volumes with ``compose.removeVolumes``."""
        service, number = self._slot(resource, instance, strict=False)
        base = project_name(resource)
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        self._removing[base] = self._removing.get(base, 0) + 1
        try:
            await self._remove_one_replica(resource, service, number, grace)
        finally:
            self._removing[base] -= 1
        async with self._lock(base):
            # The last removal of a batch cleans up (the others are done: none in progress).
            if self._removing.get(base):
                return
            self._removing.pop(base, None)
            left = [
                *await self._resource_containers(resource),
                *await self._project_containers(base),
            ]
            if left:
                return
            if await self.transport.read_file(self._compose_file(base)) is not None:
                await self._down(
                    await self.cli(), base, self._compose_file(base), self._project_dir(base), 0
                )
            if compose_section(resource).get("removeVolumes", False):
                for volume in await self.engine.volumes({PROJECT_LABEL: base}):
                    await self.engine.remove_volume(volume)
            await self.transport.run(
                ["rm", "-rf", "--", self._project_dir(base)], timeout=60, check=True
            )
            self._made_dirs.clear()

    async def _remove_one_replica(
        self, resource: Resource, service: str, number: int, grace: int
    ) -> None:
        base = project_name(resource)
        project = replica_project(base, number)
        async with self._lock(project):
            mine, scaled = await asyncio.gather(
                self._project_containers(project), self._project_containers(base)
            )
            for container in [*mine, *scaled]:
                if _slot_of(container, base) == (service, number):
                    await self.engine.stop_container(str(container["Id"]), grace)
                    await self.engine.remove_container(str(container["Id"]))
            rest = [c for c in mine if _slot_of(c, base) != (service, number)]
            if not rest:
                file = self._replica_file(base, number)
                if await self.transport.read_file(file) is not None:
                    await self._down(await self.cli(), project, file, self._project_dir(base), 0)
                await self.transport.run(
                    ["rm", "-rf", "--", self._replica_dir(base, number)], timeout=60, check=True
                )
                self._made_dirs.discard(self._replica_dir(base, number))

    # -- Provider protocol ---------------------------------------------------------------------

    async def instances(self, resource: Resource) -> list[Instance]:
        project = project_name(resource)
        address = self.transport.address
        if resource.kind != "Service":
            service = service_names(resource)[0]
            return [Instance(service, address, {"service": service, "project": project})]
        count = replicas(resource)
        per_replica = layout(resource) == LAYOUT_PER_REPLICA
        return [
            Instance(
                f"{service}-{n}",
                address,
                {
                    "service": service,
                    "replica": str(n),
                    "project": replica_project(project, n) if per_replica else project,
                },
            )
            for service in service_names(resource)
            for n in range(1, count + 1)
        ]

    async def observe(self, resource: Resource) -> list[InstanceState]:
        if resource.kind != "Service":
            return await self._observe_runs(resource)
        states = await (self._observe_replicas(resource) if layout(resource) == LAYOUT_PER_REPLICA
                        else self._observe_scaled(resource))
        await asyncio.gather(*(self._diagnose(resource, state) for state in states))
        return states

    async def _diagnose(self, resource: Resource, state: InstanceState) -> None:
        """An exited container of ours: its last output lines, and in its detail the sandbox
        setting that likely stopped it (the gate's and ``status``'s message of it)."""
        container = state.identity.container_id
        if state.running or container is None or "unexpected" in state.instance.labels:
            return
        try:
            profile = sandbox_profile(compose_section(resource), self.target.spec.get("sandbox"))
            lines = await self.engine.logs(container, _EXIT_LINES)
        except ProviderError:  # output is a courtesy: the state stands without it
            return
        state.last_output = tuple(line.rstrip() for line in lines if line.strip())
        hint = sandbox_hint(profile, "\n".join(state.last_output))
        if hint:
            state.detail = f"{state.detail}; {hint}" if state.detail else hint
            state.facts["sandbox_hint"] = hint

    async def _observe_scaled(self, resource: Resource) -> list[InstanceState]:
        project = project_name(resource)
        expected = await self.instances(resource)
        by_slot: dict[tuple[str, int], list[dict[str, Any]]] = {}
        containers, hashes = await asyncio.gather(
            self._project_containers(project), self._config_hashes(self._compose_file(project))
        )
        for container in containers:
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
                        phase=Phase.MISSING,
                    )
                )
                continue
            states.append(self._container_state(instance, found[-1], hashes))
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

    def _container_state(
        self,
        instance: Instance,
        container: dict[str, Any],
        hashes: _ConfigHashes | None = None,
    ) -> InstanceState:
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
        elif hashes is not None and hashes.edited(container):
            details.append(
                "container's configuration differs from the rendered document (compose config "
                "hash): changed outside fraisier"
            )
            revision = f"{UNMANAGED_PREFIX}edited"
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
        exit_code = state.get("ExitCode")
        return InstanceState(
            instance,
            revision,
            running,
            "; ".join(details),
            facts,
            # Docker's own check is the instance's health whether or not deploy waited for it
            health=_HEALTH.get(health, Health.UNKNOWN),
            exit_code=None if running or exit_code is None else int(exit_code),
            identity=Identity(
                pid=int(state["Pid"]) if running and state.get("Pid") else None,
                started_at=state.get("StartedAt"),
                container_id=str(container.get("Id") or "") or None,
            ),
        )

    def probe_runner(self, instance: Instance, state: InstanceState) -> ContainerExec:
        """``health.exec`` runs in the instance's container (``docker exec``)."""
        # no container (missing): the engine's "no such container" fails the probe
        return ContainerExec(self.engine, state.identity.container_id or instance.id)

    async def deploy(self, release: Release, instance: Instance) -> None:
        """Scaled layout: ``up`` the whole project — compose replaces every replica of a service
        together, so the first instance's call does the work and the others find it done.
        Per-replica layout (rolling, canary): ``up`` of that one replica's project only."""
        resource = release.resource
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            await self._deploy_replica(release, instance)
            return
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
            cli = await self.cli()
            # A strategy change from rolling/canary: the replicas' own projects make way.
            grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
            await self._remove_replica_projects(resource, cli, grace=grace)
            if await self._already_deployed(prepared, release.revision, count):
                return
            env = self._env(release, rendered)
            await self._write_document(prepared, cli)
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
            # compose v1 takes ~0.7 s to start: asked while the containers start
            recording = asyncio.ensure_future(self._record_config_hashes(cli, prepared, env))
            try:
                if wait and count > 0:
                    remaining = wait_timeout - (time.monotonic() - started)
                    await self._wait_started(rendered, count, max(remaining, 1.0))
            finally:
                await recording
            self.ctx.logger.info(
                "compose: %s up on %s at %s",
                rendered.project,
                self.host_id,
                rendered.compose_revision,
            )

    async def _already_deployed(self, prepared: _Prepared, revision: str, count: int) -> bool:
        rendered = prepared.rendered
        containers, hashes = await asyncio.gather(
            self._project_containers(rendered.project),
            self._config_hashes(prepared.compose_file),
        )
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
                or (hashes is not None and hashes.edited(container))
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

    async def _wait_started(
        self,
        rendered: Rendered,
        count: int,
        timeout: float,  # noqa: ASYNC109
        services: list[str] | None = None,
    ) -> None:
        """Until every replica runs and, when it has a healthcheck, is healthy.

        Polled here for v1 and v2 alike: v2's ``up --wait`` reports a crash-looping container
        under a restart policy as ready (seen with 2.40), and v1 has no such flag. A container
        counts as started once two polls in a row see it running with the same start time and
        restart count, so one that dies right after starting is not taken for a success."""
        deadline = time.monotonic() + timeout
        wanted = {(s, n) for s in services or rendered.services for n in range(1, count + 1)}
        seen_running: dict[tuple[str, int], tuple[str, str, int]] = {}
        while True:
            ready: set[tuple[str, int]] = set()
            for c in await self._project_containers(rendered.project):
                labels = _labels(c)
                slot = (labels.get(SERVICE_LABEL, ""), int(labels.get(NUMBER_LABEL, "0") or 0))
                if slot not in wanted:
                    continue  # another service of the project, not being deployed here
                state = c.get("State") or {}
                name = str(c.get("Name", "")).lstrip("/")
                health = _health(c)
                if state.get("Restarting") or state.get("Status") in ("exited", "dead"):
                    raise ProviderError(
                        f"{self.host_id}: container {name} exited (exit code "
                        f"{state.get('ExitCode')}, restarts {c.get('RestartCount', 0)})"
                        + await self._why_exited(name, rendered.sandbox)
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

    async def _why_exited(self, container: str, profile: str) -> str:
        """``; last output: …`` of a container that exited, and the sandbox setting that likely
        stopped it (redacted: the message reaches the store)."""
        try:
            lines = [line.rstrip() for line in await self.engine.logs(container, _EXIT_LINES)]
        except ProviderError:  # output is a courtesy: the failure stands without it
            return ""
        lines = [line for line in lines if line.strip()]
        if not lines:
            return ""
        hint = sandbox_hint(profile, "\n".join(lines))
        return redact("; last output: " + " | ".join(lines) + (f"; {hint}" if hint else ""))

    async def stop(self, resource: Resource, instance: Instance) -> None:
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            await self._stop_replica(resource, instance)
            return
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
            # Containers without a document here (state dir lost), a Job's or Schedule's runs
            # in progress, replicas of a per-replica layout left by a strategy change: stopped
            # through the engine.
            containers = await self.engine.containers({PROJECT_LABEL: project})
            if resource.kind == "Service":
                containers += await self._resource_containers(resource)
            for container in containers:
                if _running(container):
                    await self.engine.stop_container(str(container["Id"]), grace)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        """``down`` the project. Volumes go only with ``compose.removeVolumes: true``."""
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            await self._remove_replica(resource, instance)
            return
        project = project_name(resource)
        section = compose_section(resource)
        remove_volumes = bool(section.get("removeVolumes", False))
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        if resource.kind == "Service":  # replicas of a per-replica layout (strategy change)
            await self._remove_replica_projects(resource, await self.cli(), grace=grace)
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
            self._made_dirs.clear()

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
            await self._write_document(prepared, cli)
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
            await self._write_document(prepared, cli)
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
        if layout(resource) == LAYOUT_PER_REPLICA:
            slot = self._slot(resource, instance, strict=False)
            number = replica_project(project, slot[1])
            found = [
                c
                for c in [
                    *await self._project_containers(number),
                    *await self._project_containers(project),
                ]
                if _slot_of(c, project) == slot
            ]
            return await self.engine.logs(str(found[0]["Id"]), tail) if found else []
        for container in await self._project_containers(project):
            labels = _labels(container)
            if labels.get(SERVICE_LABEL) == service and labels.get(NUMBER_LABEL) == replica:
                return await self.engine.logs(str(container["Id"]), tail)
        return []

    async def close(self) -> None:
        await self.engine.close()
        await self.transport.close()


# The Go runtime of compose v2, a short-lived process: its garbage collector ran through a
# replica's `up` (~12 ms of CPU of ~57, with nothing freed: the heap stays ~50 MB); off, with a
# memory limit that starts it again for a long pull. A release's own env may set them.
GO_RUNTIME_ENV = {"GOGC": "off", "GOMEMLIMIT": "256MiB"}


def local_base_env(docker_host: str) -> dict[str, str]:
    """The compose process's environment on this machine: only what the CLI needs, so the
    reconciler's own variables (tokens included) do not leak into compose interpolation."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_RUNTIME_DIR", "DOCKER_CONFIG")
    env = {**GO_RUNTIME_ENV, **{k: os.environ[k] for k in keep if k in os.environ}}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["DOCKER_HOST"] = docker_host
    return env
