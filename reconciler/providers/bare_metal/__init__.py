"""Bare-metal provider: releases in directories on a host, processes kept by a service manager.

``transport: local`` runs processes on this machine with the built-in ``Supervisor``;
``transport: ssh`` reaches every host in ``hosts`` and runs units under systemd
(``SystemdSSHProvider``, remote.py).

remote.py (and with it asyncssh, the largest import of a CLI run) is imported only for an
``ssh`` Target: a one-shot ``reconciler apply`` of a local Target never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource
from reconciler.transport.local import LocalTransport

if TYPE_CHECKING:
    from reconciler.providers.bare_metal.remote import SystemdSSHProvider

__all__ = [
    "BareMetalProvider",
    "LaunchSpec",
    "ServiceManager",
    "ServiceRef",
    "ServiceStatus",
    "Supervisor",
    "SystemdSSHProvider",
    "create_provider",
]


def __getattr__(name: str) -> Any:
    # ``from reconciler.providers.bare_metal import SystemdSSHProvider`` keeps working, importing
    # remote.py on first use (PEP 562).
    if name == "SystemdSSHProvider":
        from reconciler.providers.bare_metal.remote import SystemdSSHProvider

        return SystemdSSHProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _positive_int(spec: dict[str, object], key: str, default: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProviderError(f"bare_metal: {key} must be a positive integer, got {value!r}")
    return value


def _ssh_provider(target: Resource, spec: dict[str, Any], ctx: ProviderContext
                  ) -> SystemdSSHProvider:
    from reconciler.providers.bare_metal.known_processes import KnownProcesses
    from reconciler.providers.bare_metal.remote import (
        DEFAULT_ROOT,
        RETRY_DEADLINE_S,
        SystemdSSHProvider,
    )
    from reconciler.transport.ssh import (
        DEFAULT_CONNECT_TIMEOUT_S,
        DEFAULT_KEEPALIVE_INTERVAL_S,
        SSHHostConfig,
    )

    manager = spec.get("serviceManager", "systemd")
    if manager != "systemd":
        raise ProviderError(
            f"Target {target.key}: serviceManager {manager!r} is not available for "
            "transport: ssh; use systemd"
        )
    hosts = spec.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise ProviderError(f"Target {target.key}: transport ssh needs a non-empty hosts list")
    ssh = spec.get("ssh") or {}
    overrides: dict[str, Any] = {}
    if "connectTimeout" in ssh:
        overrides["connect_timeout"] = to_seconds(ssh["connectTimeout"], DEFAULT_CONNECT_TIMEOUT_S)
    if "keepaliveInterval" in ssh:
        overrides["keepalive_interval"] = to_seconds(ssh["keepaliveInterval"],
                                                     DEFAULT_KEEPALIVE_INTERVAL_S)
    if "commandTimeout" in ssh:
        overrides["io_timeout"] = to_seconds(ssh["commandTimeout"], 300.0)
    configs = [SSHHostConfig.from_spec(h, **overrides) for h in hosts]
    return SystemdSSHProvider(
        target,
        configs,
        str(spec.get("root") or DEFAULT_ROOT),
        keep_releases=_positive_int(spec, "keepReleases", DEFAULT_KEEP_RELEASES),
        concurrency=_positive_int(spec, "concurrency", DEFAULT_CONCURRENCY),
        systemd=dict(spec.get("systemd") or {}),
        retry_deadline_s=to_seconds(ssh.get("retryDeadline"), RETRY_DEADLINE_S),
        known_processes=KnownProcesses(
            Path(ctx.state_dir) / "bare_metal" / target.environment
            / f"{target.name}.processes.json"),
    )


def create_provider(
    target: Resource, ctx: ProviderContext
) -> BareMetalProvider | SystemdSSHProvider:
    spec = target.spec
    provider = spec.get("provider", "bare_metal")
    if provider != "bare_metal":
        raise ProviderError(f"Target {target.key}: provider is {provider!r}, not 'bare_metal'")
    transport = spec.get("transport", "local")
    if transport == "ssh":
        return _ssh_provider(target, spec, ctx)
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
