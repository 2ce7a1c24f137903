"""The provider Protocol and registry.

A provider drives one kind of target (bare metal, compose, Coolify). Core code obtains one through
``load_provider(target, ctx)``, which resolves the Target's ``spec.provider`` name to a factory
through the ``reconciler.providers`` entry-point group (or the built-in table below) — core never
imports a provider module directly.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from reconciler.errors import ProviderError
from reconciler.spec.model import Resource

# name -> "module:factory"; entry points of the same name take precedence (plugins).
BUILTIN_PROVIDERS: dict[str, str] = {
    "bare_metal": "reconciler.providers.bare_metal:create_provider",
    "compose": "reconciler.providers.compose:create_provider",
    "coolify": "reconciler.providers.coolify:create_provider",
}


@dataclass(frozen=True)
class Instance:
    """One place a Service runs: a host, a replica, an application."""

    id: str
    address: str = "127.0.0.1"
    labels: Mapping[str, str] = field(default_factory=dict)


Exporter = Callable[[Path], Awaitable[None]]


@dataclass
class Release:
    """A revision of a resource ready to deliver.

    ``export(dest)`` writes the release's files into a local directory (from the config repo at
    ``config_commit``, an app repo at a pinned SHA, or a verified artifact); providers that keep
    old releases reuse them instead of exporting again. ``env`` holds resolved values, secrets
    included: hand it to the process, never to a log, an exception or the store.
    """

    resource: Resource
    revision: str
    config_commit: str | None
    export: Exporter | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)


# Variables every deployed process gets from Fraisier (and that a spec cannot set: the schemas
# reserve the whole prefix, so a future variable breaks no fleet).
RESERVED_ENV_PREFIX = "FRAISIER_"
ENV_REVISION = "FRAISIER_REVISION"
ENV_SERVICE = "FRAISIER_SERVICE"
ENV_ENVIRONMENT = "FRAISIER_ENVIRONMENT"
_SLOT_LABEL = "fraisier.dev/slot"


def workload_env(resource: Resource, revision: str) -> dict[str, str]:
    """What a process of ``resource`` at ``revision`` learns about itself: the revision the
    deployment records, the resource's name and environment. A blue-green/canary slot (a copy of
    the Service named ``<name>-<slot>``) reports the Service's own name. Not secret: they may be
    shown in unit files, container configs and logs."""
    name = resource.name
    slot = resource.labels.get(_SLOT_LABEL)
    if slot and name.endswith(f"-{slot}"):
        name = name[: -len(slot) - 1]
    return {ENV_REVISION: revision, ENV_SERVICE: name, ENV_ENVIRONMENT: resource.environment}


@dataclass
class InstanceState:
    """Observed facts about one instance (kept apart from operations, as pyinfra does)."""

    instance: Instance
    revision: str | None
    running: bool
    detail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    exit_code: int
    output: str


@dataclass
class ProviderContext:
    state_dir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("reconciler.provider"))


@runtime_checkable
class Provider(Protocol):
    """What a target kind must do. Every call is idempotent and has its own timeouts."""

    async def instances(self, resource: Resource) -> list[Instance]:
        """Where this resource runs (hosts, replicas)."""

    async def observe(self, resource: Resource) -> list[InstanceState]:
        """Live state of each instance: which revision runs, is it up."""

    async def deploy(self, release: Release, instance: Instance) -> None:
        """Deliver ``release`` to ``instance`` and (re)start it. Returns once started; health is
        checked by the caller. Deploying a release that is already on the instance reuses it."""

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

    # Optional: ``async def observe_instance(resource, instance) -> InstanceState`` — one
    # instance's state, for providers where observing every instance costs a round trip each
    # (SSH hosts); the health gate of one instance uses it when present.


ProviderFactory = Callable[[Resource, ProviderContext], Provider]


def _resolve_factory(name: str) -> ProviderFactory:
    # importlib.metadata only here: importing this module (the health probes, the spec and
    # `validate` do) needs no package metadata; loading a provider does.
    from importlib.metadata import entry_points

    for ep in entry_points(group="reconciler.providers"):
        if ep.name == name:
            factory: ProviderFactory = ep.load()
            return factory
    target = BUILTIN_PROVIDERS.get(name)
    if target is None:
        known = ", ".join(sorted(BUILTIN_PROVIDERS))
        raise ProviderError(f"unknown provider {name!r}; known: {known}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ProviderError(f"provider {name!r} is not available in this build: {exc}") from exc
    found: ProviderFactory = getattr(module, attr)
    return found


def load_provider(target: Resource, ctx: ProviderContext) -> Provider:
    """Instantiate the provider a Target asks for."""
    name = str(target.spec.get("provider", ""))
    return _resolve_factory(name)(target, ctx)
