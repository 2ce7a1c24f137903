"""Fraisier: a declarative GitOps reconciler for fleets that do not live on Kubernetes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.spec.provider_schemas import ProviderSchemas

__version__ = "0.1.0"
API_VERSION = "fraisier.dev/v1"
KINDS = ("Target", "Service", "Job", "Schedule", "Notifier")


def _hand_provider_schemas() -> None:
    """The composition root: ``spec`` validates with the providers' schema fragments, which it
    cannot import itself (docs/architecture.md); they are read on the first validation."""
    from reconciler.spec.provider_schemas import use_provider_schemas

    def fragments() -> Mapping[str, ProviderSchemas]:
        from reconciler.providers.registry import provider_schemas

        return provider_schemas()

    use_provider_schemas(fragments)


_hand_provider_schemas()
