"""Errors the Coolify provider raises on purpose.

Every message names the Coolify URL, the HTTP route and what the operator can do about it; none
carries the API token or an env value (the client redacts every known secret before raising).
"""

from __future__ import annotations

from reconciler.errors import ProviderError


class CoolifyError(ProviderError):
    """Base of the Coolify provider's errors."""

    code = "FR430"
    hint = "see the message; the Coolify UI shows the application's deployments and logs"


class CoolifyConfigError(CoolifyError):
    """The Target or the Service's `coolify:` section cannot be used as written."""

    code = "FR431"
    hint = ("fix the Target/Service document (reconciler/providers/coolify/schema/*.json "
            "describe each field)")


class CoolifyAuthError(CoolifyError):
    """401 Unauthenticated / 400 Invalid token: the token is wrong, revoked or has no team."""

    code = "FR432"
    hint = (
        "create a new API token in Coolify (Keys & Tokens / API tokens) and put it where the "
        "Target's `token` reference points; the value itself is never printed"
    )


class CoolifyAPIDisabled(CoolifyError):
    """403 API is disabled: the instance has API access switched off."""

    code = "FR433"
    hint = (
        "enable API access in Coolify (Settings / Advanced / API Access), or call "
        "GET /api/v1/enable with a root token from the instance's team"
    )


class CoolifyForbidden(CoolifyError):
    """403 for any other reason: a missing token ability or the IP allowlist."""

    code = "FR434"
    hint = (
        "give the token the abilities it needs (read, write, deploy; read:sensitive for logs) "
        "and check Settings / Advanced / Allowed IPs"
    )


class CoolifyNotFound(CoolifyError):
    """404: the application, deployment or env does not exist for this token's team."""

    code = "FR435"
    hint = (
        "check the Service's `coolify.uuid` / `coolify.name` / `coolify.tag` and the token's team"
    )


class CoolifyRequestError(CoolifyError):
    """The API refused the request (400/405/409/422): a provider bug or an incompatible version."""

    code = "FR436"
    hint = (
        "check the Coolify version (4.2 or newer is required) and the Service's `coolify:` section"
    )


class CoolifyRateLimited(CoolifyError):
    """429 that did not clear within the configured bound."""

    code = "FR437"
    hint = "the Coolify deployment queue is full; raise `retry.maxRetryAfter` or try again later"


class CoolifyUnavailable(CoolifyError):
    """The API could not be reached (network faults, 5xx) after the configured retries."""

    code = "FR438"
    hint = "check that Coolify is up and reachable from here (`url`, TLS settings, firewall)"


class CoolifyDeployFailed(CoolifyError):
    """A Coolify deployment ended `failed` or `cancelled-by-user`, or did not take effect."""

    code = "FR439"
    hint = "open the deployment in the Coolify UI, or run `reconciler logs NAME`"


class CoolifyDeployTimeout(CoolifyError):
    """A Coolify deployment did not finish within the deploy timeout."""

    code = "FR440"
    hint = "raise `deployTimeout` (Target or Service) or look at the Coolify deployment queue"


class CoolifyUnsupported(CoolifyError):
    """An operation the Coolify API has no equivalent for."""

    code = "FR441"
    hint = (
        "run one-off work as a Coolify scheduled task, or put the Job on a bare_metal/compose "
        "Target"
    )
