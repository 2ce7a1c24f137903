"""Bare metal over SSH: releases on every host of the Target, run by systemd.

Layout on each host (``root`` defaults to /srv/fraisier)::

    <root>/<environment>/<dir>/releases/<revision>/   uploaded over SFTP (see releases.py)
    <root>/<environment>/<dir>/current -> releases/<revision>
    <root>/<environment>/<dir>/environment            env + secrets, mode 0600 (EnvironmentFile)
    <root>/<environment>/<dir>/unit.sha256            hash of the unit as installed (drift)
    /etc/systemd/system/fraisier-<environment>_<name>….service / .timer

A deploy on one host: make sure the release is there (export once per pass, upload the tree),
write the unit and environment files that changed (daemon-reload only then), switch ``current``
atomically, (re)start. A rollback is the same call with an older release: its directory is still
there, so nothing is uploaded — unit, switch, restart.

A Target::

    kind: Target
    metadata: {name: web}
    spec:
      provider: bare_metal
      transport: ssh                 # serviceManager defaults to systemd
      keepReleases: 5
      systemd: {user: app, restart: on-failure, limits: {memoryMax: 512M}}
      hosts:
        - {name: web1, address: 10.0.0.11, user: deploy, sudo: true,
           identityFile: /etc/fraisier/id_ed25519, knownHosts: /etc/fraisier/known_hosts}

Connections: one pooled SSH connection per host (``SSHPool``), opened on first use and closed by
``close()``; a later call opens a new one. A connection lost in the middle of a deploy (host
rebooting) is retried with backoff until ``RETRY_DEADLINE_S``: every step is idempotent. Host-key,
login and configuration errors are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from reconciler.backoff import equal_jitter, exponential
from reconciler.errors import ProviderError
from reconciler.providers import (
    ENV_REVISION,
    Capabilities,
    Exporter,
    Identity,
    Instance,
    InstanceState,
    Listening,
    Phase,
    ProbeSite,
    Release,
    RunResult,
    instance_release,
    placement_of,
    workload_env,
)
from reconciler.providers.bare_metal import procfs
from reconciler.providers.bare_metal.commit import CommitRequest, host_commits
from reconciler.providers.bare_metal.known_processes import KnownProcesses
from reconciler.providers.bare_metal.listening import unit_listening
from reconciler.providers.bare_metal.provider import (
    BUILD_TIMEOUT_S,
    DEFAULT_CONCURRENCY,
    DEFAULT_JOB_TIMEOUT_S,
    DEFAULT_KEEP_RELEASES,
    DEFAULT_STOP_TIMEOUT_S,
    RUN_OUTPUT_LIMIT,
    BareMetalProvider,
)
from reconciler.providers.bare_metal.releases import ReleaseStore, publish_modes, within
from reconciler.providers.bare_metal.systemd import (
    UNIT_DIR,
    Group,
    Systemd,
    UnitNames,
    UnitSettings,
    digest,
    exit_code_of,
    observe_batcher,
    on_calendar,
    render_service_unit,
    render_timer_unit,
)
from reconciler.providers.bare_metal.unit_sandbox import sandbox_hint
from reconciler.providers.bare_metal.unit_text import env_file
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource, ResourceKey
from reconciler.transport import Transport
from reconciler.transport.ssh import (
    SSHAuthError,
    SSHConfigError,
    SSHError,
    SSHHostConfig,
    SSHHostKeyError,
    SSHPool,
    SSHTransport,
)

T = TypeVar("T")
log = logging.getLogger("reconciler.provider.bare_metal")

DEFAULT_ROOT = "/srv/fraisier"
EXPORTS_KEPT = 16  # release exports kept on this machine for further uploads
PROC_READ_LIMIT = 4096  # bytes of a /proc file read (a stat line is a few hundred)
RETRY_DEADLINE_S = 20.0  # then the host is declared down (its deploy fails naming it)
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 5.0
_REMOTE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Run the build ($2...) with the variables of the environment file $1 exported. The file is
# rendered by env_file(): every value double-quoted with "\`$ escaped, so sh reads it as data.
_BUILD_SCRIPT = 'set -a && . "$1" && set +a && shift && exec "$@"'
_NOT_RETRIED = (SSHHostKeyError, SSHAuthError, SSHConfigError)


def _retryable(exc: BaseException) -> bool:
    """A lost or refused connection, also when wrapped (a failed export names its cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SSHError):
            return not isinstance(seen, _NOT_RETRIED)
        seen = seen.__cause__
    return False


def _revision_in(path: str, releases_dir: str) -> str | None:
    """``<releases_dir>/<revision>/...`` -> revision."""
    prefix = releases_dir.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return path[len(prefix):].split("/", 1)[0] or None


class SystemdSSHProvider:
    """``Provider`` for ``provider: bare_metal`` Targets with ``transport: ssh``."""

    # The daemon's own scheduler must not run this provider's Schedules: systemd timers do.
    # One host is observed on its own; exec probes run on the instance's host.
    capabilities = Capabilities(
        observe_one=True, schedules_natively=True, exec_probes=ProbeSite.INSTANCE,
        host_batching=True, stages_ahead=True, rechecks=True, reports_listening=True,
    )

    def __init__(
        self,
        target: Resource,
        hosts: list[SSHHostConfig],
        root: str,
        *,
        keep_releases: int = DEFAULT_KEEP_RELEASES,
        concurrency: int = DEFAULT_CONCURRENCY,
        systemd: dict[str, Any] | None = None,
        retry_deadline_s: float = RETRY_DEADLINE_S,
        known_processes: KnownProcesses | None = None,
    ) -> None:
        if not hosts:
            raise ProviderError(f"Target {target.key}: transport ssh needs at least one host")
        names = [h.host_id for h in hosts]
        if len(set(names)) != len(names):
            raise ProviderError(f"Target {target.key}: host names must be unique: {names}")
        self.target = target
        self.hosts = {h.host_id: h for h in hosts}
        self.root = root
        self.keep_releases = keep_releases
        self.systemd_section = systemd or {}
        self.retry_deadline_s = retry_deadline_s
        self.pool = SSHPool()
        self._slots = {h.host_id: asyncio.Semaphore(max(1, concurrency)) for h in hosts}
        self._locks: dict[tuple[ResourceKey, str], asyncio.Lock] = {}
        self._exports: dict[str, Path] = {}  # release content -> its export, oldest first
        self._export_locks: dict[str, asyncio.Lock] = {}
        self._export_readers: dict[str, int] = {}  # uploads reading an export now
        self._export_root: tempfile.TemporaryDirectory[str] | None = None
        self._exporting: dict[str, asyncio.Task[None]] = {}  # exports started ahead
        self._warming: dict[str, asyncio.Task[None]] = {}
        self._pruning: set[asyncio.Task[None]] = set()  # see _prune_after
        # each host's units' main processes as last observed in full, kept between processes
        # (what an observation need not ask again, and what a ``recheck`` compares with)
        self.known_processes = (known_processes if known_processes is not None
                                else KnownProcesses(None))
        # each host's own values ({vars.NAME} in health checks and env)
        self._vars: dict[str, dict[str, str]] = {
            str(h["name"]): {str(k): str(v) for k, v in (h.get("vars") or {}).items()}
            for h in target.spec.get("hosts") or [] if isinstance(h, dict) and "name" in h
        }

    # -- naming --------------------------------------------------------------------------------

    def service_dir(self, resource: Resource) -> str:
        return posixpath.join(
            self.root, resource.environment, BareMetalProvider.dir_name(resource)
        )

    @staticmethod
    def units(resource: Resource) -> UnitNames:
        return UnitNames.of(resource.environment, resource.name, resource.kind)

    def _config(self, instance: Instance) -> SSHHostConfig:
        config = self.hosts.get(instance.id)
        if config is None:
            raise ProviderError(
                f"bare_metal target {self.target.name}: no host {instance.id!r} "
                f"(hosts: {sorted(self.hosts)})"
            )
        return config

    def probe_runner(self, instance: Instance, state: InstanceState) -> Transport:
        """``health.exec`` runs on the instance's host, over the pooled connection."""
        return self.transport_for(instance)

    def transport_for(self, instance: Instance) -> Transport:
        """The pooled connection to ``instance``'s host (exec health checks run there)."""
        return self._pooled(self._config(instance))

    def _pooled(self, config: SSHHostConfig) -> SSHTransport:
        """The pooled connection to a host, its observations knowing the working directories
        known for the host's units (this provider's, which outlive a pool that ``close``
        replaces)."""
        transport: SSHTransport = self.pool.get(config)
        observe_batcher(transport).known = self.known_processes.host(config.host_id)
        return transport

    def _lock(self, key: ResourceKey, host: str) -> asyncio.Lock:
        return self._locks.setdefault((key, host), asyncio.Lock())

    # -- releases ------------------------------------------------------------------------------

    def _release_tree(
        self, release: Release
    ) -> Callable[[], contextlib.AbstractAsyncContextManager[Path]] | None:
        """What lends ``release``'s files as a local directory (modes published) to upload:
        exported the first time a host needs them, then shared read-only by every host and by
        every release of the same ``content`` (1,000 Services from one folder: one export, not
        a copy per deploy). A host that already has the release never asks. The newest
        ``EXPORTS_KEPT`` exports are kept (a daemon lives through many commits); an older one
        goes once no upload reads it."""
        export = release.export
        if export is None:
            return None
        key = self._export_key(release)

        @contextlib.asynccontextmanager
        async def tree() -> AsyncIterator[Path]:
            async with self._export_locks.setdefault(key, asyncio.Lock()):
                path = await self._exported(key, export)
                self._export_readers[key] = self._export_readers.get(key, 0) + 1
            try:
                yield path
            finally:
                self._export_readers[key] -= 1
                self._drop_old_exports()

        return tree

    @staticmethod
    def _export_key(release: Release) -> str:
        return release.content or f"{release.resource.key}@{release.revision}"

    async def _exported(self, key: str, export: Exporter) -> Path:
        """The export kept under ``key``, made now if there is none (the caller holds the
        key's lock)."""
        path = self._exports.get(key)
        if path is None:
            if self._export_root is None:
                self._export_root = tempfile.TemporaryDirectory(prefix="fraisier-ssh-export-")
            path = Path(tempfile.mkdtemp(dir=self._export_root.name))
            try:
                await export(path)
                await asyncio.to_thread(publish_modes, path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
        self._exports.pop(key, None)
        self._exports[key] = path  # the newest last
        return path

    def _export_ahead(self, release: Release) -> None:
        """Start exporting ``release``'s files (a local ``git archive``) while the host is asked
        whether it has them (a login, an SFTP session, a read): the upload that follows finds
        them ready. A host that has the release (a rollback) leaves one export unused, kept for
        the next release of the same content. A failure is left to the upload's own export,
        which reports it."""
        export = release.export
        key = self._export_key(release)
        if export is None or key in self._exports or key in self._exporting:
            return
        lock = self._export_locks.setdefault(key, asyncio.Lock())
        if lock.locked():  # being exported for an upload now
            return

        async def ahead() -> None:
            async with lock:
                with contextlib.suppress(Exception):
                    await self._exported(key, export)

        task = asyncio.create_task(ahead())
        self._exporting[key] = task
        task.add_done_callback(lambda _: self._exporting.pop(key, None))

    def _drop_old_exports(self) -> None:
        for key in list(self._exports)[: max(0, len(self._exports) - EXPORTS_KEPT)]:
            if self._export_readers.get(key, 0) == 0 and not self._export_locks[key].locked():
                shutil.rmtree(self._exports.pop(key), ignore_errors=True)
                self._export_readers.pop(key, None)
                self._export_locks.pop(key, None)

    def _store(self, transport: Transport, resource: Resource) -> ReleaseStore:
        return ReleaseStore(transport, self.service_dir(resource), str(resource.key))

    # -- retry ---------------------------------------------------------------------------------

    async def _retrying(self, instance: Instance, what: str,
                        op: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.retry_deadline_s
        attempt = 1
        while True:
            try:
                return await op()
            except ProviderError as exc:
                delay = exponential(attempt, first=_RETRY_FIRST_S, cap=_RETRY_MAX_S)
                if not _retryable(exc) or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(equal_jitter(delay))
                attempt += 1
                # transport messages name the host and command, never a value
                log.warning("%s: %s retried after: %s", instance.id, what, exc.message)

    # -- units ---------------------------------------------------------------------------------

    def _settings(self, resource: Resource) -> UnitSettings:
        """The Target's ``systemd`` settings for ``resource``; a blue-green slot's copy
        (``web-green``) takes the overrides written for the Service (``web``)."""
        name = resource.name.removesuffix(placement_of(resource).name_suffix)
        return UnitSettings.from_target(self.systemd_section, name)

    def _profile(self, resource: Resource) -> str:
        return self._settings(resource).sandbox.profile

    def _unit_files(self, release: Release) -> tuple[dict[str, tuple[bytes, int]], list[str]]:
        """(files to install, OnCalendar values) for ``release``."""
        resource = release.resource
        spec = resource.spec
        command = spec.get("command")
        if isinstance(command, str) or not isinstance(command, list) or not command:
            raise ProviderError(f"{resource.key}: a {resource.kind} needs a command (argv list)")
        argv = [str(a) for a in command]
        service_dir = self.service_dir(resource)
        working_dir = within(posixpath.join(service_dir, "current"), spec.get("workingDir"))
        if "/" in argv[0] and not argv[0].startswith("/"):
            # relative to the release, as the local supervisor runs it
            argv[0] = posixpath.normpath(posixpath.join(working_dir, argv[0]))
        settings = self._settings(resource)
        names = self.units(resource)
        env_path = posixpath.join(service_dir, "environment")
        unit_env = workload_env(resource, release.revision)
        process_env = {ENV_REVISION: unit_env.pop(ENV_REVISION), **release.env}
        unit = render_service_unit(
            description=f"fraisier {resource.key}",
            argv=argv,
            working_dir=working_dir,
            env_path=env_path,
            settings=settings,
            # FRAISIER_SERVICE and FRAISIER_ENVIRONMENT in the unit (`systemctl show -p
            # Environment`); FRAISIER_REVISION in the environment file, so that a release that
            # changes only code leaves the unit as it is: no daemon-reload (systemd re-reads
            # its whole configuration) per deploy.
            environment=unit_env,
            oneshot=resource.kind != "Service",
            timeout_s=to_seconds(spec.get("timeout"), DEFAULT_JOB_TIMEOUT_S)
            if resource.kind != "Service" else None,
            stop_timeout_s=to_seconds(spec.get("stopTimeout"), DEFAULT_STOP_TIMEOUT_S),
            install=resource.kind == "Service",
            kind=resource.kind,
            state_name=names.base.removeprefix("fraisier-"),
        ).encode()
        files: dict[str, tuple[bytes, int]] = {
            posixpath.join(UNIT_DIR, names.service): (unit, 0o644),
            env_path: (env_file(process_env), 0o600),
            posixpath.join(service_dir, "unit.sha256"): (digest(unit).encode() + b"\n", 0o644),
        }
        calendars: list[str] = []
        if resource.kind == "Schedule":
            calendars = on_calendar(spec.get("schedule", ""), spec.get("timezone", "UTC"))
            timer = render_timer_unit(f"fraisier {resource.key} timer", calendars).encode()
            files[posixpath.join(UNIT_DIR, names.timer)] = (timer, 0o644)
        return files, calendars

    async def _stage(
        self, release: Release, instance: Instance
    ) -> tuple[Transport, ReleaseStore, bool, list[str]]:
        """Release uploaded (or reused), unit and environment files installed; systemd not
        reloaded, ``current`` not switched. Returns the transport, the release store (its
        state already read), whether a unit file was written and the units' names."""
        resource = release.resource
        transport = self.transport_for(instance)
        files, calendars = self._unit_files(release)  # validates before anything is touched
        store = self._store(transport, resource)
        systemd = Systemd(transport)
        build = resource.spec.get("build")
        build_argv: list[str] | None = None
        if isinstance(build, list) and build:
            # The build sees the release's environment (secrets too) by reading the 0600 file,
            # never through its command line: write that file first.
            env_path = posixpath.join(self.service_dir(resource), "environment")
            await systemd.install({env_path: files[env_path]}, reload=False)
            build_argv = ["sh", "-c", _BUILD_SCRIPT, "fraisier-build", env_path,
                          *(str(a) for a in build)]
        await store.ensure(
            release,
            tree=self._release_tree(release),
            record=False,  # written with the switch's history, by flush() or prune()
            build=build_argv,
            working_dir=resource.spec.get("workingDir"),
            env={"PATH": _REMOTE_PATH, "LANG": "C.UTF-8",
                 **workload_env(resource, release.revision)},
            build_timeout_s=BUILD_TIMEOUT_S,
        )
        if calendars:
            await systemd.check_calendar(calendars)
        written = await systemd.install(files, reload=False)
        units = [posixpath.basename(p) for p in files if p.startswith(UNIT_DIR + "/")]
        return transport, store, written, units

    async def stage(self, release: Release, instance: Instance) -> None:
        """The release's tree uploaded to the host for a deploy to come (``stages_ahead``):
        only ``releases/<revision>`` and the record that it is complete; no unit, environment
        file or ``current`` changes, so what runs does not. A release with a build is left to
        its deploy (the build reads the environment file, which the running unit reads too)."""
        resource = release.resource
        self._config(instance)
        if resource.spec.get("build"):
            return
        self._export_ahead(release)
        async with self._lock(resource.key, instance.id), self._slots[instance.id]:
            transport = self.transport_for(instance)
            await self._store(transport, resource).ensure(
                release, tree=self._release_tree(release), build=None,
                working_dir=resource.spec.get("workingDir"), env={},
                build_timeout_s=BUILD_TIMEOUT_S)

    async def _prepare(self, release: Release, instance: Instance
                       ) -> tuple[Transport, ReleaseStore]:
        """Staged, systemd reloaded if a unit changed, ``current`` switched (a Job's run)."""
        transport, store, written, units = await self._stage(release, instance)
        systemd = Systemd(transport)
        if written or (units and await systemd.needs_reload(units)):
            await systemd.daemon_reload()
        await store.switch(release.revision)
        return transport, store

    # -- Provider ------------------------------------------------------------------------------

    async def instances(self, resource: Resource) -> list[Instance]:
        instances = [Instance(id=h.host_id, address=h.address, vars=self._vars.get(h.host_id, {}))
                     for h in self.hosts.values()]
        # Log in to every host now, concurrently: a rolling deploy then finds host N's
        # connection ready instead of paying for each login in turn. Failures are not
        # reported here; the first real call on that host raises them.
        for instance in instances[1:]:
            transport = self._pooled(self._config(instance))
            if instance.id not in self._warming:
                task = asyncio.create_task(self._warm(transport))
                self._warming[instance.id] = task
        return instances

    async def _warm(self, transport: SSHTransport) -> None:
        with contextlib.suppress(ProviderError, OSError):
            await transport.connect()

    async def deploy(self, release: Release, instance: Instance) -> InstanceState | None:
        """Staged, committed with the host's other deploys; a Service's instance as observed
        right after its restart (by the commit's own remote command)."""
        self._config(instance)
        resource = release.resource
        release = instance_release(release, instance)
        names = self.units(resource)

        if resource.kind == "Service":
            unit: str | None = names.service
        elif resource.kind == "Schedule":
            unit = names.timer
        else:
            unit = None  # a Job runs in run(); deploying installs it

        async def once() -> tuple[InstanceState | None, ReleaseStore]:
            commits = host_commits(self.transport_for(instance))
            async with commits.staging(self._slots[instance.id]):
                transport, store, written, units = await self._stage(release, instance)
            # reload, switch and restart together with the host's other deploys in flight; a
            # Service's unit is observed by the same remote command once restarted (the state
            # its health gate starts from)
            outcome = await commits.commit(CommitRequest(
                switch=store.switch_args(release.revision), restart=unit,
                unit_written=written, units=tuple(units),
                observe=self._observe_group(resource) if resource.kind == "Service" else None))
            if not outcome.switched:
                raise ProviderError(
                    f"{resource.key}: switching current to {release.revision} on "
                    f"{instance.id} failed: {outcome.output.strip()[-500:]}"
                )
            await store.switched(release.revision)
            if not outcome.ok:
                await store.flush()
                journal = await Systemd(transport).journal(names.service, 10)
                message = f"{outcome.output.strip()[-500:]}\n" + "\n".join(journal)
                hint = sandbox_hint(self._profile(resource), message)
                raise ProviderError(
                    f"{instance.id}: starting {unit} failed"
                    f"{self._how_it_ended(resource, instance, outcome.observed)}: {message}"
                    + (f"\n{hint}" if hint else "")
                )
            if outcome.observed is None:
                return None, store
            return self._state(resource, instance, outcome.observed), store

        # The lock is held until the old releases are pruned, which goes on beside the health
        # gate: the next operation on this Service and host finds them pruned, the gate does
        # not wait for it.
        self._export_ahead(release)
        lock = self._lock(resource.key, instance.id)
        await lock.acquire()
        try:
            started, store = await self._retrying(instance, f"deploy of {resource.key}", once)
        except BaseException:
            lock.release()
            raise
        self._prune_after(store, release.revision, instance, lock)
        return started

    def _how_it_ended(self, resource: Resource, instance: Instance,
                      observed: Mapping[str, str] | None) -> str:
        """", its process exited with code N" when the commit's look at a unit whose start
        failed says so: a process that exits at once fails its start job or its health gate
        (whichever systemd notices first), and both say how it ended."""
        if observed is None:
            return ""
        state = self._state(resource, instance, observed)
        return f", its process exited with code {state.exit_code}" \
            if state.exit_code is not None else ""

    def _prune_after(self, store: ReleaseStore, revision: str, instance: Instance,
                     lock: asyncio.Lock) -> None:
        """Prune ``store``'s old releases (and write the history a commit recorded) in a task
        that releases ``lock`` when done; ``close()`` waits for it. A failure leaves the old
        releases for the next deploy: the release it deployed runs all the same."""
        async def prune() -> None:
            try:
                await store.prune(self.keep_releases, current=revision)
            except (ProviderError, OSError) as exc:
                log.warning("%s: pruning old releases of %s failed: %s", instance.id,
                            store.label, exc.message if isinstance(exc, ProviderError) else exc)
            finally:
                lock.release()

        task = asyncio.create_task(prune())
        self._pruning.add(task)
        task.add_done_callback(self._pruning.discard)

    async def run(self, release: Release, instance: Instance) -> RunResult:
        self._config(instance)
        resource = release.resource
        release = instance_release(release, instance)
        names = self.units(resource)
        timeout_s = to_seconds(resource.spec.get("timeout"), DEFAULT_JOB_TIMEOUT_S)
        async with self._lock(resource.key, instance.id), self._slots[instance.id]:
            transport, store = await self._retrying(
                instance, f"install of {resource.key}", lambda: self._prepare(release, instance)
            )
            await store.prune(self.keep_releases, current=release.revision)
        # Not retried: a run that lost its connection may still be going on the host.
        props, output = await Systemd(transport).run_oneshot(names.service, timeout_s)
        exit_code = exit_code_of(props)
        text = output[-RUN_OUTPUT_LIMIT:].decode(errors="replace")
        if exit_code != 0:
            status = f"status={props.get('ExecMainStatus', '')}/{props.get('Result', '')}"
            hint = sandbox_hint(self._profile(resource), f"{text}\n{status}")
            if hint:
                text += f"\nfraisier: {hint}\n"
        return RunResult(exit_code, text)

    async def observe(self, resource: Resource) -> list[InstanceState]:
        instances = await self.instances(resource)
        return list(await asyncio.gather(*(self._observe(resource, i) for i in instances)))

    async def observe_instance(self, resource: Resource, instance: Instance) -> InstanceState:
        """One host's state (the health gate of one instance needs no other host's)."""
        return await self._observe(resource, instance)

    async def recheck(self, resource: Resource, instance: Instance,
                      seen: InstanceState) -> InstanceState | None:
        """Two SFTP reads, no process on the host (an observation starts a shell and
        ``systemctl``): the main process ``seen`` still there with the start time it had when
        last observed, and the host's uptime for its age. None whenever that is not certain
        (gone, replaced, reads through sudo, a failed read): the caller observes then. None as
        well while another look at the host is under way: many Services gated at once on a host
        are observed together, one command for all, which costs less than their rechecks."""
        pid = seen.identity.pid
        transport = self.transport_for(instance)
        looks = observe_batcher(transport)
        known = looks.known.get(self.units(resource).service)
        if pid is None or known is None or known.pid != pid or not transport.reads_in_process:
            return None
        if looks.looking:
            return None
        looks.rechecks += 1
        try:
            stat_raw, uptime_raw = await asyncio.gather(
                transport.read_file(f"/proc/{pid}/stat", limit=PROC_READ_LIMIT),
                transport.read_file("/proc/uptime", limit=PROC_READ_LIMIT))
        except ProviderError:
            return None
        finally:
            looks.rechecks -= 1
        stat_line = (stat_raw or b"").decode(errors="replace")
        stat = procfs.stat_of(pid, stat_line)
        if stat is None or stat.dead or stat.start_time != known.start:
            return None
        up_for = procfs.age_s(pid, stat_line, (uptime_raw or b"").decode(errors="replace"))
        if up_for is None:
            return None
        return replace(seen, up_for=up_for, observed_at=time.monotonic())

    async def listening(self, resource: Resource, instance: Instance,
                        seen: InstanceState) -> Listening | None:
        """What the unit's processes listen on, while ``seen``'s main process is its own."""
        pid = seen.identity.pid
        if resource.kind != "Service" or pid is None:
            return None
        return await unit_listening(self.transport_for(instance), pid,
                                    self.units(resource).service)

    def _observe_group(self, resource: Resource) -> Group:
        """What ``OBSERVE_SCRIPT`` is given for ``resource``'s unit."""
        names = self.units(resource)
        return (names.service, self.service_dir(resource),
                posixpath.join(UNIT_DIR, names.service),
                names.timer if resource.kind == "Schedule" else "")

    async def _observe(self, resource: Resource, instance: Instance) -> InstanceState:
        systemd = Systemd(self.transport_for(instance))
        try:
            props = await systemd.observe(*self._observe_group(resource))
        except ProviderError as exc:
            if not _retryable(exc):
                raise
            return InstanceState(instance, None, False, f"unreachable: {exc.message}",
                                 {"reachable": False})
        return self._state(resource, instance, props)

    def _state(self, resource: Resource, instance: Instance,
               props: Mapping[str, str]) -> InstanceState:
        """The instance as ``OBSERVE_SCRIPT``'s properties of its unit describe it."""
        names = self.units(resource)
        service_dir = self.service_dir(resource)
        releases_dir = posixpath.join(service_dir, "releases")
        current_link = props.get("FraisierCurrent", "")
        current = posixpath.basename(current_link.rstrip("/")) or None
        cwd = props.get("FraisierCwd", "")
        running_revision = _revision_in(cwd, releases_dir)
        unit_hash = props.get("FraisierUnitHash") or None
        recorded = props.get("FraisierRecordedHash") or None
        unit_edited = bool(
            (recorded and unit_hash != recorded) or props.get("NeedDaemonReload") == "yes"
        )
        active, sub = props.get("ActiveState", ""), props.get("SubState", "")
        facts: dict[str, Any] = {
            "current": current,
            "service_dir": service_dir,
            "unit": names.service,
            "active_state": active,
            "sub_state": sub,
            "main_pid": int(props.get("MainPID") or 0) or None,
            "exec_main_status": props.get("ExecMainStatus"),
            "restarts": props.get("NRestarts"),
            "unit_file_state": props.get("UnitFileState"),
            "unit_hash": unit_hash,
            "unit_edited": unit_edited,
            "running_revision": running_revision,
        }
        working_dir = (
            within(posixpath.join(releases_dir, current), resource.spec.get("workingDir"))
            if current is not None else None
        )
        if resource.kind == "Service":
            running = active == "active" and sub == "running"
        else:
            running = active == "activating"
            facts["last_result"] = props.get("Result")
            if resource.kind == "Schedule":
                facts["timer_state"] = props.get("TimerActiveState")
                facts["next_run"] = props.get("TimerNextElapseUSecRealtime")
                facts["last_trigger"] = props.get("TimerLastTriggerUSec")
        revision = current
        details = [f"{active}/{sub}" if active else "unknown"]
        if unit_edited:
            revision = f"unit-edited:{current or '-'}"
            details.append(f"unit file {names.service} was changed outside fraisier")
        elif running and running_revision and running_revision != current:
            revision = f"moved:{current or '-'}"
            details.append(f"running {running_revision} but current points at {current}")
        if resource.kind == "Schedule" and facts.get("timer_state") not in ("active", None):
            revision = revision if revision != current else f"timer-stopped:{current or '-'}"
            details.append(f"timer {names.timer} is {facts.get('timer_state')}")
        status = props.get("ExecMainStatus")
        journal = props.get("FraisierJournal")
        if not running and journal:
            hint = sandbox_hint(self._profile(resource), journal)
            if hint:
                details.append(hint)
                facts["sandbox_hint"] = hint
        main_pid = facts["main_pid"]
        up_for = None
        if running and main_pid:
            stat_line = props.get("FraisierStat", "")
            up_for = procfs.age_s(main_pid, stat_line, props.get("FraisierUptime", ""))
        return InstanceState(
            instance, revision, running, "; ".join(details), facts,
            phase=Phase.MISSING if not running and current is None else None,
            up_for=up_for,
            exit_code=int(status) if not running and status and status.isdigit() else None,
            working_dir=working_dir,
            identity=Identity(
                pid=facts["main_pid"] if running else None,
                started_at=props.get("ExecMainStartTimestamp") or None,
                unit_invocation=props.get("InvocationID") or None,
            ),
        )

    async def stop(self, resource: Resource, instance: Instance) -> None:
        names = self.units(resource)
        units = [names.timer, names.service] if resource.kind == "Schedule" else [names.service]
        async with self._lock(resource.key, instance.id):
            result = await Systemd(self.transport_for(instance)).systemctl(
                "stop", "--", *units, check=False
            )
            if result.returncode not in (0, 5):  # 5: not loaded, i.e. nothing to stop
                raise ProviderError(
                    f"{instance.id}: stopping {' '.join(units)} failed: "
                    f"{result.text().strip()[-500:]}"
                )

    async def remove(self, resource: Resource, instance: Instance) -> None:
        names = self.units(resource)
        units = [names.service] + ([names.timer] if resource.kind == "Schedule" else [])
        async with self._lock(resource.key, instance.id):
            transport = self.transport_for(instance)
            await Systemd(transport).remove_units(units)
            await transport.run(
                ["rm", "-rf", "--", self.service_dir(resource)], timeout=120.0, check=True
            )
            self.known_processes.forget(instance.id, names.service)

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        return await Systemd(self.transport_for(instance)).journal(
            self.units(resource).service, tail
        )

    async def close(self) -> None:
        """Close every connection (the provider stays usable: the next call reconnects)."""
        if self._pruning:
            await asyncio.gather(*self._pruning, return_exceptions=True)
        warming, self._warming = list(self._warming.values()), {}
        warming += list(self._exporting.values())
        for task in warming:
            task.cancel()
        await asyncio.gather(*warming, return_exceptions=True)
        pool, self.pool = self.pool, SSHPool()
        await pool.close()
        self.known_processes.save()
        self._exports.clear()
        self._export_locks.clear()
        self._export_readers.clear()
        if self._export_root is not None:
            with contextlib.suppress(OSError):
                self._export_root.cleanup()
            self._export_root = None
