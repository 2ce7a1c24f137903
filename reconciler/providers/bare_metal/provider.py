"""The bare-metal provider: releases on a host, a service manager to run them.

Layout on the host (``root`` from the Target)::

    <root>/<environment>/<name>/releases/<revision>/    see releases.py
    <root>/<environment>/<name>/current -> releases/<revision>
    <root>/<environment>/<name>/logs/<name>.log         service output, and every Job run's
    <root>/<environment>/<name>/run/                    service-manager state (pidfile)
    <root>/<environment>/<name>/last_run.json           a Job/Schedule's last result

``<name>`` is the resource name for a Service and ``<name>.job`` / ``<name>.schedule`` for the
other kinds, so a Service and a Job of the same name never share a directory.

Services deploy "recreate" style on the host: ensure the release (export + build, before anything
stops), stop the old process, switch ``current``, start the new one. Blue-green or rolling across
hosts is the rollout stage's business, one ``deploy`` per instance.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import pwd
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import (
    Capabilities,
    Identity,
    Instance,
    InstanceState,
    Listening,
    Phase,
    Release,
    RunResult,
    workload_env,
)
from reconciler.providers.bare_metal.releases import ReleaseStore, within
from reconciler.providers.bare_metal.service_manager import LaunchSpec, ServiceManager, ServiceRef
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource, ResourceKey
from reconciler.transport import CommandTimeout, Transport

_APPEND_LOG = ('umask 077 && mkdir -p -- "$1" && touch -- "$2" && chmod 600 -- "$2" && '
               'exec dd of="$2" oflag=append conv=notrunc status=none')
DEFAULT_KEEP_RELEASES = 5
DEFAULT_STOP_TIMEOUT_S = 10.0
DEFAULT_JOB_TIMEOUT_S = 3600.0
BUILD_TIMEOUT_S = 1800.0
DEFAULT_CONCURRENCY = 4
RUN_OUTPUT_LIMIT = 64 * 1024  # bytes of a Job's output kept in RunResult (the log has it all)
TIMEOUT_EXIT_CODE = 124  # what coreutils timeout(1) reports, familiar to operators
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_environment() -> dict[str, str]:
    """The few variables every process gets before the release's own ``env``: the daemon's
    other variables (its database URL, tokens) must not leak into services."""
    home = os.environ.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = "/"
    env = {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        "HOME": home,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }
    if os.environ.get("TZ"):
        env["TZ"] = os.environ["TZ"]
    return env


def process_environment(release: Release) -> dict[str, str]:
    """A process's whole environment: the base, the release's ``env``, then the FRAISIER_*
    variables (the schemas reject those names in ``env``; they win here all the same)."""
    return {
        **base_environment(),
        **release.env,
        **workload_env(release.resource, release.revision),
    }


def _argv(value: Any, what: str, resource: Resource) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise ProviderError(f"{resource.key}: {what} must be a non-empty list of arguments")
    return [str(a) for a in value]


class BareMetalProvider:
    """``Provider`` for ``provider: bare_metal`` Targets (one host per transport)."""

    # Schedules are run by the daemon's scheduler (through run()), not by the host; the one
    # instance is this machine, so exec probes run here.
    capabilities = Capabilities(reports_listening=True)

    def __init__(
        self,
        target: Resource,
        transport: Transport,
        manager: ServiceManager,
        root: str,
        *,
        keep_releases: int = DEFAULT_KEEP_RELEASES,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.target = target
        self.transport = transport
        self.manager = manager
        self.root = root
        self.keep_releases = keep_releases
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._locks: dict[ResourceKey, asyncio.Lock] = {}
        self._jobs: dict[ResourceKey, set[asyncio.Task[Any]]] = {}
        self.instance = Instance(id=transport.host_id, address=transport.address)

    # -- naming --------------------------------------------------------------------------------

    @staticmethod
    def dir_name(resource: Resource) -> str:
        if resource.kind == "Service":
            return resource.name
        return f"{resource.name}.{resource.kind.lower()}"

    def service_dir(self, resource: Resource) -> str:
        return posixpath.join(self.root, resource.environment, self.dir_name(resource))

    def ref(self, resource: Resource) -> ServiceRef:
        name = self.dir_name(resource)
        service_dir = self.service_dir(resource)
        return ServiceRef(
            environment=resource.environment,
            name=name,
            service_dir=service_dir,
            log_path=posixpath.join(service_dir, "logs", f"{name}.log"),
        )

    def releases(self, resource: Resource) -> ReleaseStore:
        return ReleaseStore(self.transport, self.service_dir(resource), str(self.ref(resource)))

    def _lock(self, key: ResourceKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _check_instance(self, instance: Instance) -> None:
        if instance.id != self.instance.id:
            raise ProviderError(
                f"bare_metal target {self.target.name}: no instance {instance.id!r} "
                f"(this target has {self.instance.id!r})"
            )

    @staticmethod
    def stop_timeout(resource: Resource) -> float:
        return to_seconds(resource.spec.get("stopTimeout"), DEFAULT_STOP_TIMEOUT_S)

    # -- Provider -----------------------------------------------------------------------------

    async def instances(self, resource: Resource) -> list[Instance]:
        return [self.instance]

    async def observe(self, resource: Resource) -> list[InstanceState]:
        store = self.releases(resource)
        current = await store.current()
        facts: dict[str, Any] = {"current": current, "service_dir": store.service_dir}
        # where the command (and an exec health probe) runs
        working_dir = (within(store.path(current), resource.spec.get("workingDir"))
                       if current is not None else None)
        if resource.kind != "Service":
            raw = await self.transport.read_file(posixpath.join(store.service_dir, "last_run.json"))
            if raw:
                try:
                    facts["last_run"] = json.loads(raw)
                except ValueError:
                    facts["last_run"] = None
            running = bool(self._jobs.get(resource.key))
            detail = "running" if running else "idle"
            return [InstanceState(self.instance, current, running, detail, facts,
                                  working_dir=working_dir)]
        status = await self.manager.status(self.ref(resource))
        facts.update(pid=status.pid, started_at=status.started_at)
        # Not running: report what `current` points at, which is what a start would run.
        revision = status.revision if status.running else current
        return [InstanceState(
            self.instance, revision, status.running, status.detail, facts,
            phase=None if status.running or current is not None else Phase.MISSING,
            working_dir=working_dir,
            exit_code=None if status.running else status.exit_code,
            identity=Identity(pid=status.pid, started_at=status.started_at),
        )]

    async def deploy(self, release: Release, instance: Instance) -> None:
        self._check_instance(instance)
        resource = release.resource
        spec = resource.spec
        command = _argv(spec.get("command"), "command", resource)
        env = process_environment(release)
        if resource.kind == "Service" and command is None:
            raise ProviderError(f"{resource.key}: a Service needs a command")
        store = self.releases(resource)
        async with self._lock(resource.key), self._slots:
            release_dir, _created = await store.ensure(
                release,
                build=_argv(spec.get("build"), "build", resource),
                working_dir=spec.get("workingDir"),
                env=env,
                build_timeout_s=BUILD_TIMEOUT_S,
            )
            if resource.kind == "Service" and command is not None:
                ref = self.ref(resource)
                await self.manager.stop(ref, self.stop_timeout(resource))
                await store.switch(release.revision)
                await self.manager.start(
                    ref,
                    LaunchSpec(
                        argv=command,
                        cwd=within(release_dir, spec.get("workingDir")),
                        revision=release.revision,
                        env=env,
                    ),
                )
            else:
                # A Job/Schedule is not started here: run() does that. Make it the current one.
                await store.switch(release.revision)
            await store.prune(self.keep_releases)

    async def listening(self, resource: Resource, instance: Instance,
                        seen: InstanceState) -> Listening | None:
        self._check_instance(instance)
        if resource.kind != "Service" or seen.identity.pid is None:
            return None
        return await self.manager.listening(self.ref(resource), seen.identity.pid)

    async def stop(self, resource: Resource, instance: Instance) -> None:
        self._check_instance(instance)
        if resource.kind == "Service":
            async with self._lock(resource.key):
                await self.manager.stop(self.ref(resource), self.stop_timeout(resource))
            return
        # A Job/Schedule run in progress is cancelled, which kills its process group.
        tasks = list(self._jobs.get(resource.key, ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        await self.stop(resource, instance)
        async with self._lock(resource.key):
            ref = self.ref(resource)
            await self.manager.remove(ref)
            await self.transport.run(
                ["rm", "-rf", "--", ref.service_dir], timeout=120.0, check=True
            )

    async def run(self, release: Release, instance: Instance) -> RunResult:
        self._check_instance(instance)
        resource = release.resource
        spec = resource.spec
        command = _argv(spec.get("command"), "command", resource)
        if command is None:
            raise ProviderError(f"{resource.key}: nothing to run (no command)")
        timeout_s = to_seconds(spec.get("timeout"), DEFAULT_JOB_TIMEOUT_S)
        env = process_environment(release)
        store = self.releases(resource)
        ref = self.ref(resource)
        task = asyncio.current_task()
        # Lock before slot, as deploy() does (the other order can deadlock at concurrency 1).
        async with self._lock(resource.key), self._slots:
            release_dir, _created = await store.ensure(
                release,
                build=_argv(spec.get("build"), "build", resource),
                working_dir=spec.get("workingDir"),
                env=env,
                build_timeout_s=BUILD_TIMEOUT_S,
            )
            await store.switch(release.revision)
            await store.prune(self.keep_releases)
        async with self._slots:
            if task is not None:
                self._jobs.setdefault(resource.key, set()).add(task)
            started_at = datetime.now(UTC).isoformat(timespec="seconds")
            try:
                await self._append_log(
                    ref, f"[fraisier {started_at}] run revision {release.revision}\n".encode()
                )
                try:
                    result = await self.transport.run(
                        command,
                        timeout=timeout_s,
                        env=env,
                        cwd=within(release_dir, spec.get("workingDir")),
                    )
                    # stdout, then stderr: separate pipes, so their interleaving is lost
                    exit_code, output = result.returncode, result.stdout + result.stderr
                    if exit_code < 0:  # killed by a signal: report it as a shell would
                        exit_code = 128 - exit_code
                except CommandTimeout as exc:
                    exit_code = TIMEOUT_EXIT_CODE
                    output = (
                        exc.stdout
                        + exc.stderr
                        + f"\n[fraisier] timed out after {timeout_s:g}s; killed\n".encode()
                    )
                finished_at = datetime.now(UTC).isoformat(timespec="seconds")
                await self._append_log(
                    ref, output + f"[fraisier {finished_at}] exit {exit_code}\n".encode()
                )
                record = {
                    "revision": release.revision,
                    "exit_code": exit_code,
                    "started_at": started_at,
                    "finished_at": finished_at,
                }
                await self.transport.write_file(
                    posixpath.join(ref.service_dir, "last_run.json"),
                    json.dumps(record).encode() + b"\n",
                )
            finally:
                if task is not None:
                    self._jobs.get(resource.key, set()).discard(task)
        tail = output[-RUN_OUTPUT_LIMIT:]
        return RunResult(exit_code, tail.decode(errors="replace"))

    async def _append_log(self, ref: ServiceRef, data: bytes) -> None:
        # dd appends stdin to the file; the paths are positional arguments, never shell text.
        # Job output may carry secrets: folder and file owner-only whatever the host's umask.
        await self.transport.run(
            ["sh", "-c", _APPEND_LOG, "sh", posixpath.dirname(ref.log_path), ref.log_path],
            stdin=data,
            timeout=60.0,
            check=True,
        )

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        self._check_instance(instance)
        return await self.manager.logs(self.ref(resource), tail)

    async def close(self) -> None:
        await self.transport.close()
