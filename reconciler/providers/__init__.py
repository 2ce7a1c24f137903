"""The provider contract and registry, re-exported (contract.py, registry.py).

A provider drives one kind of target (bare metal, compose, Coolify). Core code obtains one through
``load_provider(target, ctx)``, which resolves the Target's ``spec.provider`` name through the
registry (built-ins and ``reconciler.providers`` entry points alike) — core never imports a
provider module directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.providers.contract import (
        SLOT_LABEL,
        Capabilities,
        CommandRunner,
        Exporter,
        Health,
        Identity,
        Instance,
        InstanceState,
        Listening,
        Phase,
        Placement,
        ProbeSite,
        Provider,
        ProviderContext,
        ProviderFactory,
        Release,
        RunResult,
        instance_release,
        listening_of,
        look_again,
        observe_one,
        placement_of,
        probe_site,
        stage_ahead,
    )
    from reconciler.spec.model import Resource

# The contract's names (those of ``__all__`` not defined here) are read from it on first use
# (PEP 562): importing the package for its registry (the schema fragments a `diff` validates
# with) does not import the contract (docs/performance.md, session 10).


def __getattr__(name: str) -> Any:
    if name in __all__:  # a name of the contract's: this module's own are defined
        from reconciler.providers import contract

        value = getattr(contract, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ENV_ENVIRONMENT",
    "ENV_REVISION",
    "ENV_SERVICE",
    "RESERVED_ENV_PREFIX",
    "SLOT_LABEL",
    "Capabilities",
    "CommandRunner",
    "Exporter",
    "Health",
    "Identity",
    "Instance",
    "InstanceState",
    "Listening",
    "Phase",
    "Placement",
    "ProbeSite",
    "Provider",
    "ProviderContext",
    "ProviderFactory",
    "Release",
    "RunResult",
    "instance_release",
    "listening_of",
    "load_provider",
    "look_again",
    "observe_one",
    "placement_of",
    "probe_site",
    "stage_ahead",
    "workload_env",
]

# Variables every deployed process gets from Fraisier (and that a spec cannot set: the schemas
# reserve the whole prefix, so a future variable breaks no fleet).
RESERVED_ENV_PREFIX = "FRAISIER_"
ENV_REVISION = "FRAISIER_REVISION"
ENV_SERVICE = "FRAISIER_SERVICE"
ENV_ENVIRONMENT = "FRAISIER_ENVIRONMENT"


def workload_env(resource: Resource, revision: str) -> dict[str, str]:
    """What a process of ``resource`` at ``revision`` learns about itself: the revision the
    deployment records, the resource's name and environment. A blue-green/canary slot (a copy of
    the Service named ``<name>-<slot>``) reports the Service's own name. Not secret: they may be
    shown in unit files, container configs and logs."""
    from reconciler.providers.contract import placement_of

    name = resource.name
    suffix = placement_of(resource).name_suffix
    if suffix and name.endswith(suffix):
        name = name[: -len(suffix)]
    return {ENV_REVISION: revision, ENV_SERVICE: name, ENV_ENVIRONMENT: resource.environment}


def load_provider(target: Resource, ctx: ProviderContext) -> Provider:
    """Instantiate the provider a Target asks for."""
    from reconciler.providers.registry import provider_info

    return provider_info(str(target.spec.get("provider", ""))).make(target, ctx)
