"""Bare-metal provider: releases in directories on a host, processes kept by a service manager.

Now: ``transport: local`` with the built-in process ``Supervisor``. The provider is written
against ``Transport`` and ``ServiceManager``, so SSH hosts with systemd plug in beside it.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import ProviderError
from reconciler.providers import ProviderContext
from reconciler.providers.bare_metal.provider import (
    DEFAULT_CONCURRENCY,
    DEFAULT_KEEP_RELEASES,
    BareMetalProvider,
)
from reconciler.providers.bare_metal.service_manager import (
    LaunchSpec,
    ServiceManager,
    ServiceRef,
    ServiceStatus,
)
from reconciler.providers.bare_metal.supervisor import Supervisor
from reconciler.spec.model import Resource
from reconciler.transport.local import LocalTransport

__all__ = [
    "BareMetalProvider",
    "LaunchSpec",
    "ServiceManager",
    "ServiceRef",
    "ServiceStatus",
    "Supervisor",
    "create_provider",
]


def _positive_int(spec: dict[str, object], key: str, default: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProviderError(f"bare_metal: {key} must be a positive integer, got {value!r}")
    return value


def create_provider(target: Resource, ctx: ProviderContext) -> BareMetalProvider:
    spec = target.spec
    provider = spec.get("provider", "bare_metal")
    if provider != "bare_metal":
        raise ProviderError(f"Target {target.key}: provider is {provider!r}, not 'bare_metal'")
    transport = spec.get("transport", "local")
    if transport == "ssh":
        raise ProviderError(
            f"Target {target.key}: bare_metal over SSH is not available yet; it arrives with the "
            "systemd service manager (use transport: local for now)"
        )
    if transport != "local":
        raise ProviderError(f"Target {target.key}: unknown transport {transport!r} (local, ssh)")
    manager = spec.get("serviceManager", "supervisor")
    if manager != "supervisor":
        raise ProviderError(
            f"Target {target.key}: serviceManager {manager!r} is not available for "
            "transport: local; use supervisor"
        )
    root_value = spec.get("root")
    root = (
        Path(str(root_value))
        if root_value
        else Path(ctx.state_dir) / "bare_metal" / target.environment / target.name
    )
    return BareMetalProvider(
        target,
        LocalTransport(),
        Supervisor(),
        str(root.absolute()),
        keep_releases=_positive_int(spec, "keepReleases", DEFAULT_KEEP_RELEASES),
        concurrency=_positive_int(spec, "concurrency", DEFAULT_CONCURRENCY),
    )
