"""The Docker host of a compose Target as the provider's parts share it (``ComposeHost``): the
transport and engine, the compose CLI (detected once), per-project locks and folders on the
host, the compose process's environment, rendering a release and placing its document and
files, running compose, the config hashes of a document, image pulls per the pull policy,
listing a project's containers and ``down`` of per-replica projects.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import Instance, ProviderContext, Release
from reconciler.providers.compose.cli import ComposeCLI, detect
from reconciler.providers.compose.containers import (
    CONFIG_HASH_LABEL,
    ConfigHashes,
    labels_of,
    tail,
)
from reconciler.providers.compose.engine import DockerEngine
from reconciler.providers.compose.render import (
    LABEL_RESOURCE,
    LAYOUT_PER_REPLICA,
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    Rendered,
    compose_section,
    is_file_reference,
    layout,
    project_name,
    render,
    replica_of_project,
    replica_project,
    replicas,
    service_names,
)
from reconciler.spec.model import Resource
from reconciler.transport import Transport

UP_TIMEOUT_S = 300.0  # `up` itself (create/recreate/start), on top of any health wait
COMMAND_TIMEOUT_S = 120.0  # stop, down, pull of one project
KEEP_RELEASES = 5
# Variables of the compose process that a resource's env must not override.
_RESERVED_ENV = re.compile(r"^(PATH|HOME|DOCKER_.*|COMPOSE_.*)$")
# Beside a project's compose.yaml: what ``compose config --hash`` gave for the rendered document
# (JSON {"compose_revision": ..., "services": {service: hash}}), so a container recreated from a
# hand-edited copy of the document (fraisier's labels kept) is seen as drift by any process.
CONFIG_HASH_FILE = "config-hash.json"
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def _dir_name(revision: str) -> str:
    """A directory name for a revision: readable when the revision is, unique always."""
    safe = _UNSAFE_DIR_CHARS.sub("_", revision)[:64]
    if safe == revision and safe not in ("", ".", ".."):
        return safe
    return f"{safe}-{sha256(revision.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Prepared:
    """A release rendered and placed on the Docker host."""

    rendered: Rendered
    compose_file: str  # where the document goes on the Docker host
    workdir: str  # --project-directory: relative paths in the document resolve here


class ComposeHost:
    """One Docker host as the compose provider's parts share it: how to reach it (transport,
    engine, the compose CLI detected once), where each project's files are, per-project locks,
    and the steps every part takes (render and place a release, run compose, record and read
    config hashes, list containers, ``down`` projects)."""

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
        self.made_dirs: set[str] = set()
        # compose file -> its config hashes (read once; rewritten only by a deploy)
        self._hashes: dict[str, ConfigHashes | None] = {}

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

    def lock(self, project: str) -> asyncio.Lock:
        return self._project_locks.setdefault(project, asyncio.Lock())

    def project_dir(self, project: str) -> str:
        return posixpath.join(self.state_root, project)

    def compose_file(self, project: str) -> str:
        return posixpath.join(self.project_dir(project), "compose.yaml")

    async def mkdir(self, path: str) -> None:
        await self.transport.run(["mkdir", "-p", "--", path], timeout=30, check=True)

    def replica_dir(self, base: str, number: int) -> str:
        return posixpath.join(self.project_dir(base), "replicas", str(number))

    def replica_file(self, base: str, number: int) -> str:
        return posixpath.join(self.replica_dir(base, number), "compose.yaml")

    def env(self, release: Release | None, rendered: Rendered | None) -> dict[str, str]:
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

    async def prepare(self, release: Release) -> Prepared:
        """Render the release; export its files (once per revision) when it has any."""
        resource = release.resource
        section = compose_section(resource)
        project = project_name(resource)
        project_dir = self.project_dir(project)
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
        rendered = render(
            resource, release.revision, file_text, target_sandbox=self.target.spec.get("sandbox")
        )
        return Prepared(rendered, self.compose_file(project), workdir)

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
            await self.mkdir(release_dir)
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

    async def compose(
        self,
        cli: ComposeCLI,
        prepared: Prepared,
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

    async def record_config_hashes(
        self, cli: ComposeCLI, prepared: Prepared, env: Mapping[str, str]
    ) -> None:
        """Keep beside the document just brought up the hash compose computes for each of its
        services: the one compose labelled the service's containers with in that ``up`` (it
        makes or keeps only containers whose label is the document's hash), else — a service
        without a container, containers that disagree — what ``compose config --hash`` says
        with the same CLI and environment as ``up``. The label costs one engine listing; the
        command, a compose process per replica deployed."""
        services = await self._labelled_hashes(prepared)
        code: int | None = 0
        if services is None:
            code, out = await self.compose(
                cli, prepared, env, "config", "--hash", "*", timeout=COMMAND_TIMEOUT_S
            )
            services = {}
            for line in out.splitlines() if code == 0 else ():
                parts = line.split()
                if len(parts) == 2 and parts[0] in prepared.rendered.services:
                    services[parts[0]] = parts[1]
        path = self._hash_file(prepared.compose_file)
        if not services:
            # An older compose without `config --hash`: drift is then read from the labels only.
            self.ctx.logger.warning(
                "compose: %s on %s: no config hash (`config --hash` exit %s); hand edits "
                "through compose are not detected",
                prepared.rendered.project,
                self.host_id,
                code,
            )
            self._hashes[prepared.compose_file] = None
            await self.transport.run(["rm", "-f", "--", path], timeout=30)
            return
        hashes = ConfigHashes(prepared.rendered.compose_revision, services)
        data = {"compose_revision": hashes.compose_revision, "services": services}
        await self.transport.write_file(path, json.dumps(data).encode(), mode=0o600)
        self._hashes[prepared.compose_file] = hashes

    async def _labelled_hashes(self, prepared: Prepared) -> dict[str, str] | None:
        """Each service's config-hash label, when every service of the document has
        containers (one-off ones aside) in its project and they all carry one same value."""
        rendered = prepared.rendered
        listed = await self.engine.labelled(
            {PROJECT_LABEL: rendered.project}, [SERVICE_LABEL, CONFIG_HASH_LABEL, ONEOFF_LABEL]
        )
        seen: dict[str, set[str]] = {service: set() for service in rendered.services}
        for _, labels in listed:
            service = labels.get(SERVICE_LABEL, "")
            if service in seen and labels.get(ONEOFF_LABEL) != "True":
                seen[service].add(labels.get(CONFIG_HASH_LABEL, ""))
        if any(len(values) != 1 or "" in values for values in seen.values()):
            return None
        return {service: values.pop() for service, values in seen.items()}

    async def config_hashes(self, compose_file: str) -> ConfigHashes | None:
        """The recorded config hashes of a compose file (None: none recorded)."""
        if compose_file in self._hashes:
            return self._hashes[compose_file]
        raw = await self.transport.read_file(self._hash_file(compose_file))
        hashes: ConfigHashes | None = None
        if raw is not None:
            try:
                data = json.loads(raw)
                hashes = ConfigHashes(
                    str(data["compose_revision"]),
                    {str(k): str(v) for k, v in dict(data["services"]).items()},
                )
            except (ValueError, KeyError, TypeError):
                hashes = None  # unreadable: compared by the labels only
        self._hashes[compose_file] = hashes
        return hashes

    async def write_document(self, prepared: Prepared, cli: ComposeCLI) -> None:
        directory = posixpath.dirname(prepared.compose_file)
        data = prepared.rendered.yaml(compose_v1=not cli.is_v2).encode()
        if directory not in self.made_dirs:
            # Written first: a transport that makes the parent folders (this machine's) needs
            # no `mkdir` process per replica; one that does not (SSH) fails, and `mkdir` runs.
            try:
                await self.transport.write_file(prepared.compose_file, data, mode=0o600)
            except ProviderError:
                await self.mkdir(directory)
            else:
                self.made_dirs.add(directory)
                return
            self.made_dirs.add(directory)
        await self.transport.write_file(prepared.compose_file, data, mode=0o600)

    async def ensure_images(
        self,
        cli: ComposeCLI,
        prepared: Prepared,
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
                code, out = await self.compose(
                    cli, prepared, env, "pull", *absent, timeout=COMMAND_TIMEOUT_S
                )
                if code != 0:
                    raise ProviderError(
                        f"{self.host_id}: pulling images of {rendered.project} failed: {tail(out)}"
                    )
        if policy == "always":
            code, out = await self.compose(
                cli, prepared, env, "pull", *rendered.services, timeout=COMMAND_TIMEOUT_S
            )
            if code != 0:
                raise ProviderError(
                    f"{self.host_id}: pulling images of {rendered.project} failed: {tail(out)}"
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

    async def project_containers(self, project: str, oneoff: bool = False) -> list[dict[str, Any]]:
        containers = await self.engine.containers({PROJECT_LABEL: project})
        return [c for c in containers if (labels_of(c).get(ONEOFF_LABEL) == "True") == oneoff]

    async def resource_containers(self, resource: Resource) -> list[dict[str, Any]]:
        """Every (non one-off) container fraisier made for the resource, in any project."""
        containers = await self.engine.containers({LABEL_RESOURCE: str(resource.key)})
        return [c for c in containers if labels_of(c).get(ONEOFF_LABEL) != "True"]

    def slot(self, resource: Resource, instance: Instance, strict: bool = True) -> tuple[str, int]:
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

    async def down(
        self, cli: ComposeCLI, project: str, file: str, workdir: str, grace: int
    ) -> None:
        argv = cli.argv(project, file, workdir, "down", "--remove-orphans", "-t", str(grace))
        result = await self.transport.run(argv, timeout=COMMAND_TIMEOUT_S, env=self.base_env)
        if not result.ok:
            raise ProviderError(
                f"{self.host_id}: compose down of {project} failed: {tail(result.text())}"
            )

    async def remove_replica_projects(
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
            async with self.lock(project):
                file = self.replica_file(base, number)
                if await self.transport.read_file(file) is not None:
                    await self.down(cli, project, file, self.project_dir(base), grace)
                for container_id, owner in leftovers:
                    if owner == project:
                        await self.engine.remove_container(container_id)
                await self.transport.run(
                    ["rm", "-rf", "--", self.replica_dir(base, number)], timeout=60
                )
                self.made_dirs.discard(self.replica_dir(base, number))

        await asyncio.gather(*(down(n) for n in sorted(numbers)))
        self.ctx.logger.info(
            "compose: removed replica projects %s of %s on %s",
            sorted(numbers),
            resource.key,
            self.host_id,
        )

    def run_record_file(self, project: str) -> str:
        return posixpath.join(self.project_dir(project), "last-run.json")

    def run_log_file(self, project: str) -> str:
        return posixpath.join(self.project_dir(project), "last-run.log")


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
