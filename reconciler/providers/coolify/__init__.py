"""Coolify v4 provider (API 4.2+: every state-changing route is POST/PATCH/DELETE).

``create_provider(target, ctx)`` is the factory the provider registry loads for
``spec.provider: coolify``.
"""

from __future__ import annotations

from reconciler.providers import ProviderContext
from reconciler.spec.model import Resource

from .errors import (
    CoolifyAPIDisabled,
    CoolifyAuthError,
    CoolifyConfigError,
    CoolifyDeployFailed,
    CoolifyDeployTimeout,
    CoolifyError,
    CoolifyForbidden,
    CoolifyNotFound,
    CoolifyRateLimited,
    CoolifyRequestError,
    CoolifyUnavailable,
    CoolifyUnsupported,
)
from .provider import CoolifyProvider


def create_provider(target: Resource, ctx: ProviderContext) -> CoolifyProvider:
    return CoolifyProvider(target, ctx)


__all__ = [
    "CoolifyAPIDisabled",
    "CoolifyAuthError",
    "CoolifyConfigError",
    "CoolifyDeployFailed",
    "CoolifyDeployTimeout",
    "CoolifyError",
    "CoolifyForbidden",
    "CoolifyNotFound",
    "CoolifyProvider",
    "CoolifyRateLimited",
    "CoolifyRequestError",
    "CoolifyUnavailable",
    "CoolifyUnsupported",
    "create_provider",
]
