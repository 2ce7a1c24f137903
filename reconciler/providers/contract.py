"""The provider contract: everything core and a provider say to each other (docs/architecture.md).

Core (plan, rollout, daemon, health) reads a provider only through what is declared here:

- ``Provider``: the methods every provider has;
- ``Capabilities``: what a provider declares it can do (one frozen value per provider class),
  read instead of probing for attributes;
- ``InstanceState``: what ``observe`` reports, typed (phase, health, identity, working dir),
  instead of keys of a free-form mapping;
- ``Placement``: what core decides about how a resource's instances are laid out (independent
  instances, a slot's name suffix), handed *in* so a provider never reads strategy names and a
  strategy never reads provider fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from reconciler.providers.capabilities import Capabilities, ProbeSite
from reconciler.spec.hostvars import substitute_vars
from reconciler.spec.model import Resource
from reconciler.transport import CommandResult

# -- what runs where --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One place a Service runs: a host, a replica, an application."""

    id: str
    address: str = "127.0.0.1"
    labels: Mapping[str, str] = field(default_factory=dict)
    # this instance's own values, for ``{vars.NAME}`` in health checks and env
    # (``reconciler/spec/hostvars.py``; bare_metal: the host's ``vars``)
    vars: Mapping[str, str] = field(default_factory=dict)


Exporter = Callable[[Path], Awaitable[None]]


@dataclass
class Release:
    """A revision of a resource ready to deliver.

    ``export(dest)`` writes the release's files into a local directory (from the config repo at
    ``config_commit``, an app repo at a pinned SHA, or a verified artifact); providers that keep
    old releases reuse them instead of exporting again. ``env`` holds resolved values, secrets
    included: hand it to the process, never to a log, an exception or the store.

    ``content`` names what ``export`` writes: releases with the same ``content`` export the same
    files (a folder of a git commit, an artifact by its sha256), so a provider may export once
    for all of them; None when that is not known (export per resource and revision).
    """

    resource: Resource
    revision: str
    config_commit: str | None
    export: Exporter | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)
    content: str | None = None


@dataclass
class RunResult:
    exit_code: int
    output: str


@dataclass
class ProviderContext:
    state_dir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("reconciler.provider"))


# -- capabilities: providers/capabilities.py (re-exported) -------------------------------------


# -- observed state ---------------------------------------------------------------------------


class Phase(StrEnum):
    RUNNING = "running"
    EXITED = "exited"  # was there and stopped: exit_code and last_output say how
    MISSING = "missing"  # nothing of the resource on the instance


class Health(StrEnum):
    """The platform's own health signal of an instance (Docker healthcheck, Coolify status)."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STARTING = "starting"  # a check is defined and has not decided yet
    UNKNOWN = "unknown"  # the platform has no signal (no check defined)


@dataclass(frozen=True)
class Identity:
    """What exactly runs, so two observations can tell a restart from the same process."""

    pid: int | None = None
    started_at: str | None = None
    unit_invocation: str | None = None  # systemd InvocationID
    container_id: str | None = None
    deployment_uuid: str | None = None  # Coolify deployment

    def parts(self) -> dict[str, Any]:
        """Each field under a name for people."""
        return {"pid": self.pid, "started": self.started_at, "invocation": self.unit_invocation,
                "container": self.container_id, "deployment": self.deployment_uuid}

    def __bool__(self) -> bool:
        return any(v is not None for v in self.parts().values())

    def same_as(self, other: Identity) -> bool:
        """Could this be the same process as ``other``: no field both know differs (a field
        one observation lacks, a pid of a stopped unit say, decides nothing)."""
        mine, theirs = self.parts(), other.parts()
        return all(mine[k] is None or theirs[k] is None or mine[k] == theirs[k] for k in mine)

    def __str__(self) -> str:
        known = [f"{k} {str(v)[:12] if k == 'container' else v}"
                 for k, v in self.parts().items() if v is not None]
        return ", ".join(known) or "an unknown instance"


@dataclass(frozen=True)
class Listening:
    """The listening sockets an instance's processes hold (all of them: a unit's cgroup, a
    supervised process group), as its provider reads them on its host."""

    tcp_ports: frozenset[int]  # TCP ports (IPv4 or IPv6) in LISTEN
    unix_sockets: int = 0  # listening unix stream sockets (a server behind a local proxy)
    # sockets in none of the tables read (UDP, netlink, another network namespace's): each may
    # be listening for all that is known
    unknown_sockets: int = 0

    @property
    def none(self) -> bool:
        """It holds no socket that listens or may listen."""
        return not self.tcp_ports and not self.unix_sockets and not self.unknown_sockets


@dataclass
class InstanceState:
    """Observed facts about one instance (kept apart from operations, as pyinfra does).

    ``running`` and ``phase`` agree: give ``phase`` (``MISSING`` when nothing is there) or only
    ``running`` (then ``phase`` is ``RUNNING`` or ``EXITED``). ``facts`` is free-form detail for
    people (``reconciler status -o json``); core never interprets a key of it.
    """

    instance: Instance
    revision: str | None
    running: bool
    detail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    phase: Phase | None = None
    health: Health = Health.UNKNOWN
    exit_code: int | None = None
    last_output: tuple[str, ...] = ()
    identity: Identity = field(default_factory=Identity)
    working_dir: str | None = None  # where the release runs; exec probes start there
    # How long the instance (``identity``) had been running when observed, by its host's own
    # clock; None when the provider cannot tell. The health gate's stay-up rule counts it.
    up_for: float | None = None
    # When it was observed, on this machine's monotonic clock: set as the state is made, right
    # after the reads, so ``up_since`` never dates the start earlier than it was. A provider
    # that ``replace``s a state with a new ``up_for`` gives it a new ``observed_at`` too.
    observed_at: float = field(default_factory=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.phase is None:
            self.phase = Phase.RUNNING if self.running else Phase.EXITED
        else:
            self.running = self.phase is Phase.RUNNING

    @property
    def up_since(self) -> float | None:
        """When the instance started, on this machine's monotonic clock (None: its age is not
        known): its age at any later moment, however long ago the look was."""
        return None if self.up_for is None else self.observed_at - self.up_for

    @property
    def problem(self) -> str | None:
        """Why the instance is not up by its own account (None: running, not unhealthy)."""
        if self.phase is Phase.MISSING:
            return self.detail or "missing"
        if not self.running:
            return self.detail or (f"exited ({self.exit_code})" if self.exit_code is not None
                                   else "not running")
        if self.health is Health.UNHEALTHY:
            return self.detail or "unhealthy"
        return None


# -- placement --------------------------------------------------------------------------------

SLOT_LABEL = "fraisier.dev/slot"
# Strategies whose instances move one at a time (so each needs its own unit of deployment).
_INDEPENDENT_STRATEGIES = frozenset({"rolling", "canary"})


@dataclass(frozen=True)
class Placement:
    """How core wants a resource's instances laid out; providers map it to their own terms.

    ``independent_instances``: each instance is deployed, stopped and removed on its own, and
    instances may run different revisions for a while. ``slot``: the resource is one slot of a
    blue-green/canary pair; names the provider derives from the user's (a compose project, say)
    take ``name_suffix`` so two slots never share one.
    """

    independent_instances: bool = False
    slot: str | None = None

    @property
    def name_suffix(self) -> str:
        return f"-{self.slot}" if self.slot else ""


def placement_of(resource: Resource) -> Placement:
    """The placement core gives ``resource``: from its strategy (core's field) and the slot
    label core sets on a slot's copy (rollout/strategies.py)."""
    strategy = resource.spec.get("strategy")
    kind = strategy.get("type") if isinstance(strategy, dict) else None
    return Placement(
        independent_instances=resource.kind == "Service" and kind in _INDEPENDENT_STRATEGIES,
        slot=resource.labels.get(SLOT_LABEL) or None,
    )


# -- the protocol -----------------------------------------------------------------------------


class CommandRunner(Protocol):
    """Runs one argv (a ``Transport`` is one; so is a container's ``exec``)."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - per-call timeouts are the protocol
        cwd: str | None = None,
    ) -> CommandResult: ...


@runtime_checkable
class Provider(Protocol):
    """What a target kind must do. Every call is idempotent and has its own timeouts."""

    capabilities: Capabilities

    async def instances(self, resource: Resource) -> list[Instance]:
        """Where this resource runs (hosts, replicas)."""

    async def observe(self, resource: Resource) -> list[InstanceState]:
        """Live state of each instance: which revision runs, is it up."""

    async def deploy(self, release: Release, instance: Instance) -> InstanceState | None:
        """Deliver ``release`` to ``instance`` and (re)start it. Returns once started; health is
        checked by the caller. Deploying a release that is already on the instance reuses it.
        Returns the instance as observed right after the (re)start when the provider observed
        it on the way (the health gate then starts from it, without observing it again);
        None otherwise."""

    async def stop(self, resource: Resource, instance: Instance) -> None:
        """Stop the resource on the instance, keeping its releases."""

    async def remove(self, resource: Resource, instance: Instance) -> None:
        """Stop and delete everything the resource left on the instance."""

    async def run(self, release: Release, instance: Instance) -> RunResult:
        """Run a Job/Schedule release to completion."""

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of output."""

    async def close(self) -> None:
        """Release connections."""


class ObservesOne(Protocol):
    """Required with ``Capabilities.observe_one``."""

    async def observe_instance(self, resource: Resource, instance: Instance) -> InstanceState: ...


class StagesAhead(Protocol):
    """Required with ``Capabilities.stages_ahead``."""

    async def stage(self, release: Release, instance: Instance) -> None:
        """Deliver ``release``'s files to ``instance`` for a deploy to come; nothing that runs
        there changes (no restart, no switch, no configuration the running instance reads).
        Best effort: the deploy delivers whatever staging did not."""


class Rechecks(Protocol):
    """Required with ``Capabilities.rechecks``."""

    async def recheck(self, resource: Resource, instance: Instance,
                      seen: InstanceState) -> InstanceState | None:
        """``seen`` (an observation of ``instance``, running) with ``up_for`` as of now, when
        the very process it saw still runs; None when it does not or that cannot be told
        cheaply (core then observes the instance, which says what became of it)."""


class ReportsListening(Protocol):
    """Required with ``Capabilities.reports_listening``."""

    async def listening(self, resource: Resource, instance: Instance,
                        seen: InstanceState) -> Listening | None:
        """The sockets the instance ``seen`` (running) listens on, now; None when that cannot
        be told (it is gone, or its processes' file descriptors cannot be read)."""


class ProbesInInstance(Protocol):
    """Required with ``Capabilities.exec_probes = ProbeSite.INSTANCE``."""

    def probe_runner(self, instance: Instance, state: InstanceState) -> CommandRunner: ...


ProviderFactory = Callable[[Resource, ProviderContext], Provider]


# -- reading a provider through its declaration (what core calls) -----------------------------


def capabilities_of(provider: Provider) -> Capabilities:
    return provider.capabilities


async def observe_one(provider: Provider, resource: Resource,
                      instance: Instance) -> InstanceState | None:
    """One instance's state, the cheapest way the provider declares."""
    if provider.capabilities.observe_one:
        return await cast(ObservesOne, provider).observe_instance(resource, instance)
    for state in await provider.observe(resource):
        if state.instance.id == instance.id:
            return state
    return None


async def look_again(provider: Provider, resource: Resource, instance: Instance,
                     seen: InstanceState | None) -> InstanceState | None:
    """``instance`` as it is now, for a caller that only asks whether what it ``seen`` still
    runs, the same one, and for how long: the provider's cheap ``recheck`` where it declares one
    and it can tell, else an observation. Never a recheck of an instance with a platform health
    signal (a recheck reports ``seen``'s, which may have changed since)."""
    if (provider.capabilities.rechecks and seen is not None and seen.running
            and seen.health is Health.UNKNOWN):
        again = await cast(Rechecks, provider).recheck(resource, instance, seen)
        if again is not None:
            return again
    return await observe_one(provider, resource, instance)


async def stage_ahead(provider: Provider, release: Release, instance: Instance) -> None:
    """``release`` staged on ``instance`` for its deploy to come, where the provider declares
    it can (``stages_ahead``); nothing otherwise."""
    if provider.capabilities.stages_ahead:
        await cast(StagesAhead, provider).stage(release, instance)


async def listening_of(provider: Provider, resource: Resource, instance: Instance,
                       seen: InstanceState | None) -> Listening | None:
    """What the instance ``seen`` listens on, where the provider declares it can tell
    (``reports_listening``); None otherwise."""
    if not provider.capabilities.reports_listening or seen is None or not seen.running:
        return None
    return await cast(ReportsListening, provider).listening(resource, instance, seen)


def probe_site(provider: Provider, instance: Instance,
               state: InstanceState | None) -> tuple[CommandRunner | None, str | None]:
    """(runner, cwd) for ``health.exec`` of ``instance``: None runner means this machine."""
    cwd = state.working_dir if state is not None else None
    if provider.capabilities.exec_probes is ProbeSite.INSTANCE and state is not None:
        return cast(ProbesInInstance, provider).probe_runner(instance, state), cwd
    return None, cwd


def instance_release(release: Release, instance: Instance) -> Release:
    """``release`` with ``{vars.NAME}`` in its plain env values (not secrets) replaced by the
    instance's values: what a provider with per-instance values deploys to ``instance``."""
    spec_env = release.resource.spec.get("env")
    if not instance.vars or not isinstance(spec_env, dict):
        return release
    env = dict(release.env)
    changed = False
    for key, value in spec_env.items():
        if isinstance(value, str) and "{vars." in value and key in env:
            env[key] = substitute_vars(value, instance.vars)
            changed = True
    return replace(release, env=env) if changed else release
