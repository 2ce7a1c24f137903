"""Typed settings read from a Coolify Target and from a Service's `coolify:` section.

The documents were schema-checked by the loader (schema/*.json beside this module); this module
still checks what it relies on, so a provider built from a hand-made Resource fails with a clear
CoolifyConfigError instead of a KeyError deep inside a deploy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from reconciler.errors import SecretError
from reconciler.observe.redact import redact
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource
from reconciler.spec.secrets import describe_ref, is_secret_ref
from reconciler.spec.secrets import resolve_secret as resolve_shared

from .errors import CoolifyConfigError

GIT_SHA = re.compile(r"^[0-9a-f]{7,40}$")  # what Coolify records as a deployment's commit
# A pin must be the full SHA: Coolify's shallow clone fetches the pinned commit by SHA
# (ApplicationDeploymentJob), which git cannot do with an abbreviation.
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_duration(value: Any, where: str) -> float:
    """A spec duration ("1m30s", "500ms"; plain numbers are seconds) as seconds, read by the
    spec stage's parser (what validates loads); a CoolifyConfigError naming ``where``."""
    if value is None:
        raise CoolifyConfigError(f"{where}: expected a duration like '30s', got {value!r}")
    try:
        return to_seconds(value, 0.0)
    except ValueError as exc:
        raise CoolifyConfigError(f"{where}: {exc}") from exc


def describe_secret_ref(ref: Any) -> str:
    """A printable name for a secret reference: 'env:NAME' / 'file:/path' (never the value)."""
    return describe_ref(ref)


def resolve_secret(ref: Any, where: str, environment: str) -> str:
    """Resolve one `{env: NAME}` / `{file: path}` reference written in ``environment``.
    Errors name the reference only."""
    if not is_secret_ref(ref):
        raise CoolifyConfigError(
            f"{where}: expected a secret reference {{env: NAME}} or {{file: /path}}"
        )
    try:
        return resolve_shared(ref, environment=environment)
    except SecretError as exc:
        raise type(exc)(f"{where}: {exc.message}") from None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 120.0
    rate_limit_attempts: int = 5


@dataclass(frozen=True)
class TargetSettings:
    name: str
    url: str
    api_base: str
    token_ref: Mapping[str, Any]
    # A second token with only `read`: deployment status is polled with it, because Coolify
    # adds the whole deployment log to every answer for a token with read:sensitive.
    status_token_ref: Mapping[str, Any] | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None
    request_timeout: float = 30.0
    connect_timeout: float = 10.0
    deploy_timeout: float = 1800.0
    poll_interval: float = 2.0
    poll_max_interval: float = 15.0
    cancel_on_timeout: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_target(cls, target: Resource) -> TargetSettings:
        spec = target.spec
        where = f"{target.file}: Target {target.name}"
        url = spec.get("url")
        if not isinstance(url, str) or not url:
            raise CoolifyConfigError(
                f"{where}: `url` is required (e.g. https://coolify.example.com)"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CoolifyConfigError(
                f"{where}: `url` must be an http(s) URL, got {redact(url)!r}")
        if parts.username or parts.password:
            raise CoolifyConfigError(f"{where}: `url` must not carry credentials; use `token`")
        base = url.rstrip("/")
        api_base = base if base.endswith("/api/v1") else f"{base}/api/v1"
        token = spec.get("token")
        if not is_secret_ref(token):
            raise CoolifyConfigError(
                f"{where}: `token` must be a secret reference {{env: NAME}} or {{file: /path}}"
            )
        status_token = spec.get("statusToken")
        if status_token is not None and not is_secret_ref(status_token):
            raise CoolifyConfigError(
                f"{where}: `statusToken` must be a secret reference {{env: NAME}} or "
                "{file: /path}"
            )
        retry_spec = spec.get("retry") or {}
        retry = RetryPolicy(
            attempts=int(retry_spec.get("attempts", RetryPolicy.attempts)),
            backoff=parse_duration(retry_spec.get("backoff", "500ms"), f"{where}: retry.backoff"),
            max_backoff=parse_duration(
                retry_spec.get("maxBackoff", "10s"), f"{where}: retry.maxBackoff"
            ),
            max_retry_after=parse_duration(
                retry_spec.get("maxRetryAfter", "2m"), f"{where}: retry.maxRetryAfter"
            ),
            rate_limit_attempts=int(
                retry_spec.get("rateLimitAttempts", RetryPolicy.rate_limit_attempts)
            ),
        )
        if retry.attempts < 1 or retry.rate_limit_attempts < 1:
            raise CoolifyConfigError(f"{where}: retry attempts must be at least 1")
        ca_bundle = spec.get("caBundle")
        return cls(
            name=target.name,
            url=base,
            api_base=api_base,
            token_ref=dict(token),  # type: ignore[arg-type,unused-ignore]
            status_token_ref=dict(status_token) if status_token is not None else None,
            verify_tls=bool(spec.get("verifyTls", True)),
            ca_bundle=str(ca_bundle) if ca_bundle else None,
            request_timeout=parse_duration(
                spec.get("requestTimeout", "30s"), f"{where}: requestTimeout"
            ),
            connect_timeout=parse_duration(
                spec.get("connectTimeout", "10s"), f"{where}: connectTimeout"
            ),
            deploy_timeout=parse_duration(
                spec.get("deployTimeout", "30m"), f"{where}: deployTimeout"
            ),
            poll_interval=parse_duration(spec.get("pollInterval", "2s"), f"{where}: pollInterval"),
            poll_max_interval=parse_duration(
                spec.get("pollMaxInterval", "15s"), f"{where}: pollMaxInterval"
            ),
            cancel_on_timeout=bool(spec.get("cancelOnTimeout", True)),
            retry=retry,
        )


@dataclass(frozen=True)
class EnvSpec:
    """One desired Coolify env. ``value`` is a literal string or a secret reference."""

    key: str
    value: Any
    is_literal: bool = False
    is_multiline: bool = False
    is_shown_once: bool = False

    @property
    def secret(self) -> bool:
        return is_secret_ref(self.value)


@dataclass(frozen=True)
class ServiceSettings:
    uuid: str | None
    name: str | None
    tag: str | None
    git_commit_sha: str | None
    image_name: str | None
    image_tag: str | None
    image_mode: bool
    envs: tuple[EnvSpec, ...]
    prune_envs: bool
    force: bool
    auto_deploy: bool | None
    deploy_timeout: float | None

    @property
    def lookup_key(self) -> tuple[str | None, str | None, str | None]:
        return (self.uuid, self.name, self.tag)

    @classmethod
    def from_resource(cls, resource: Resource) -> ServiceSettings:
        where = f"{resource.file}: {resource.kind} {resource.name}"
        section = resource.spec.get("coolify")
        if not isinstance(section, Mapping):
            raise CoolifyConfigError(
                f"{where}: a {resource.kind} on a Coolify target needs a `coolify:` section "
                "naming the application (uuid, name or tag)"
            )
        uuid = _opt_str(section, "uuid", where)
        name = _opt_str(section, "name", where)
        tag = _opt_str(section, "tag", where)
        if not (uuid or name or tag):
            raise CoolifyConfigError(f"{where}: coolify: set `uuid`, or `name` and/or `tag`")
        sha = _opt_str(section, "gitCommitSha", where)
        if sha is not None and not FULL_SHA.match(sha):
            raise CoolifyConfigError(
                f"{where}: coolify.gitCommitSha must be a full commit SHA (40 lowercase hex "
                "digits); an abbreviated SHA cannot be fetched by Coolify's shallow clone"
            )
        image = section.get("image")
        image_name = image_tag = None
        if image is not None:
            if not isinstance(image, Mapping):
                raise CoolifyConfigError(f"{where}: coolify.image must be a mapping {{name, tag}}")
            image_name = _opt_str(image, "name", where)
            image_tag = _opt_str(image, "tag", where)
        if sha is not None and image is not None:
            raise CoolifyConfigError(f"{where}: coolify: set `gitCommitSha` or `image`, not both")
        envs: list[EnvSpec] = []
        for key, raw in (section.get("envs") or {}).items():
            if not isinstance(key, str) or not ENV_KEY.match(key):
                raise CoolifyConfigError(
                    f"{where}: coolify.envs: {key!r} is not a valid variable name"
                )
            envs.append(_env_spec(key, raw, where))
        timeout = section.get("deployTimeout")
        return cls(
            uuid=uuid,
            name=name,
            tag=tag,
            git_commit_sha=sha,
            image_name=image_name,
            image_tag=image_tag,
            image_mode=image is not None,
            envs=tuple(envs),
            prune_envs=bool(section.get("pruneEnvs", False)),
            force=bool(section.get("force", False)),
            auto_deploy=section.get("autoDeploy")
            if isinstance(section.get("autoDeploy"), bool)
            else None,
            deploy_timeout=parse_duration(timeout, f"{where}: coolify.deployTimeout")
            if timeout
            else None,
        )


def _opt_str(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CoolifyConfigError(f"{where}: coolify.{key} must be a non-empty string")
    return value


def _env_spec(key: str, raw: Any, where: str) -> EnvSpec:
    if isinstance(raw, bool) or raw is None:
        raise CoolifyConfigError(
            f"{where}: coolify.envs.{key}: expected a string or a secret reference"
        )
    if isinstance(raw, int | float):
        return EnvSpec(key, str(raw))
    if isinstance(raw, str) or is_secret_ref(raw):
        return EnvSpec(key, raw)
    if isinstance(raw, Mapping) and "value" in raw:
        value = raw["value"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) or is_secret_ref(value)):
            raise CoolifyConfigError(
                f"{where}: coolify.envs.{key}.value: expected a string or a secret reference"
            )
        return EnvSpec(
            key,
            value,
            is_literal=bool(raw.get("literal", False)),
            is_multiline=bool(raw.get("multiline", False)),
            is_shown_once=bool(raw.get("shownOnce", False)),
        )
    raise CoolifyConfigError(
        f"{where}: coolify.envs.{key}: expected a string, a secret reference or {{value: ...}}"
    )
