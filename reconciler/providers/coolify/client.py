"""A small Coolify v4 API client: Bearer auth, bounded retries, errors an operator can act on.

Retries: transport faults and 5xx answers are retried with jittered exponential backoff up to
``retry.attempts`` tries; 429 waits for ``Retry-After`` (bounded by ``retry.maxRetryAfter``) up to
``retry.rateLimitAttempts`` tries. A request that queues a deployment is sent with ``once=True``:
its answer may be lost after Coolify queued it, and a forced deploy or a rollback is never
skipped as a duplicate, so the provider looks for the queued deployment before sending it again.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from reconciler.backoff import equal_jitter, exponential
from reconciler.observe.redact import redact

from .config import TargetSettings
from .errors import (
    CoolifyAPIDisabled,
    CoolifyAuthError,
    CoolifyConfigError,
    CoolifyError,
    CoolifyForbidden,
    CoolifyNotFound,
    CoolifyRateLimited,
    CoolifyRequestError,
    CoolifyUnavailable,
)

_RETRY_STATUSES = frozenset({500, 502, 503, 504})


class CoolifyClient:
    """One httpx.AsyncClient per Target. Never logs bodies, headers or query values."""

    def __init__(
        self,
        settings: TargetSettings,
        token: str,
        logger: logging.Logger,
        *,
        token_ref: str,
    ) -> None:
        self.settings = settings
        self._logger = logger
        self._token_ref = token_ref
        self._secrets: set[str] = {token}
        verify: bool | ssl.SSLContext = settings.verify_tls
        if settings.ca_bundle:
            try:
                verify = ssl.create_default_context(cafile=settings.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise CoolifyConfigError(
                    f"Target caBundle {settings.ca_bundle}: cannot load CA certificates: {exc}"
                ) from None
        self._http = httpx.AsyncClient(
            base_url=settings.api_base,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": "fraisier-reconciler",
            },
            verify=verify,
            timeout=httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout),
            follow_redirects=False,
        )

    def add_secrets(self, values: Iterable[str]) -> None:
        """Values that must never appear in an error message (env values, tokens)."""
        self._secrets.update(v for v in values if v)

    def redact(self, text: str) -> str:
        # Values under 3 characters (env flags such as "1") would garble every message.
        return redact(text, secrets=(s for s in self._secrets if len(s) >= 3),
                      urls=(self.settings.url,))

    async def close(self) -> None:
        await self._http.aclose()

    def backoff(self, attempt: int) -> float:
        """The wait before retry ``attempt``: exponential, capped, equal jitter."""
        policy = self.settings.retry
        return equal_jitter(exponential(attempt, first=policy.backoff, cap=policy.max_backoff))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        once: bool = False,
    ) -> httpx.Response:
        """``once``: a transport fault or 5xx raises CoolifyUnavailable at once (the caller
        decides whether sending again is safe); 429 is still waited for (nothing was done)."""
        policy = self.settings.retry
        attempts = 1 if once else policy.attempts
        faults = 0
        throttled = 0
        while True:
            started = time.monotonic()
            try:
                response = await self._http.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                faults += 1
                if isinstance(exc, httpx.LocalProtocolError):
                    # its text quotes the offending header value (the token) byte-escaped,
                    # which redact() cannot recognise
                    reason = "LocalProtocolError: the request could not be encoded"
                else:
                    reason = self.redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
                if faults >= attempts:
                    raise CoolifyUnavailable(
                        f"Coolify at {self.settings.url} did not answer {method} {path} after "
                        f"{faults} attempt(s): {reason}"
                    ) from None
                delay = self.backoff(faults)
                self._logger.warning(
                    "coolify request failed, retrying",
                    extra={
                        "method": method,
                        "path": path,
                        "attempt": faults,
                        "error": reason,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                continue
            elapsed = time.monotonic() - started
            self._logger.debug(
                "coolify request",
                extra={
                    "method": method,
                    "path": path,
                    "status": response.status_code,
                    "duration_s": round(elapsed, 4),
                },
            )
            if response.status_code == 429:
                throttled += 1
                wait = parse_retry_after(response.headers.get("Retry-After"))
                message = self._message(response)
                if wait is None:
                    wait = self.backoff(throttled)
                if wait > policy.max_retry_after:
                    raise CoolifyRateLimited(
                        f"Coolify at {self.settings.url} throttled {method} {path} ({message}) and "
                        f"asks to wait {wait:g}s, more than retry.maxRetryAfter "
                        f"({policy.max_retry_after:g}s)"
                    )
                if throttled >= policy.rate_limit_attempts:
                    raise CoolifyRateLimited(
                        f"Coolify at {self.settings.url} still throttled {method} {path} after "
                        f"{throttled} attempt(s): {message}"
                    )
                self._logger.warning(
                    "coolify throttled the request, waiting as asked",
                    extra={
                        "method": method,
                        "path": path,
                        "retry_after_s": wait,
                        "attempt": throttled,
                    },
                )
                await asyncio.sleep(wait)
                continue
            if response.status_code in _RETRY_STATUSES:
                faults += 1
                if faults >= attempts:
                    raise CoolifyUnavailable(
                        f"Coolify at {self.settings.url} answered {method} {path} with HTTP "
                        f"{response.status_code} {faults} time(s): {self._message(response)}"
                    )
                delay = self.backoff(faults)
                self._logger.warning(
                    "coolify server error, retrying",
                    extra={
                        "method": method,
                        "path": path,
                        "status": response.status_code,
                        "attempt": faults,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                continue
            if response.status_code >= 400:
                raise self._error(method, path, response)
            return response

    async def json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        once: bool = False,
    ) -> Any:
        response = await self.request(method, path, params=params, json=json, once=once)
        try:
            return response.json()
        except ValueError:
            raise CoolifyRequestError(
                f"Coolify at {self.settings.url} answered {method} {path} with HTTP "
                f"{response.status_code} but not JSON "
                f"(content-type {response.headers.get('content-type', 'none')!r}); is `url` the "
                "Coolify instance and not a login proxy?"
            ) from None

    def _message(self, response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            text = response.text.strip().splitlines()
            return self.redact(text[0][:200]) if text else f"HTTP {response.status_code}"
        if isinstance(body, Mapping):
            message = body.get("message")
            if isinstance(message, str):
                return self.redact(message)
            if isinstance(message, list):
                return self.redact("; ".join(str(m) for m in message))
        return f"HTTP {response.status_code}"

    def _error(self, method: str, path: str, response: httpx.Response) -> CoolifyError:
        status = response.status_code
        message = self._message(response)
        where = f"{method} {path} on {self.settings.url}"
        if status == 401:
            return CoolifyAuthError(
                f"Coolify rejected the API token ({status} {message}) for {where}; the token "
                f"from {self._token_ref} is wrong or revoked"
            )
        if status == 400 and "invalid token" in message.lower():
            return CoolifyAuthError(
                f"Coolify says the API token from {self._token_ref} is invalid ({status} "
                f"{message}) for {where}: it exists but belongs to no team"
            )
        if status == 403:
            lowered = message.lower()
            if "api is disabled" in lowered:
                return CoolifyAPIDisabled(
                    f"the Coolify API is disabled on {self.settings.url} "
                    f"({status} {message}) for {method} {path}"
                )
            if "not allowed to access the api" in lowered:
                return CoolifyForbidden(
                    f"Coolify at {self.settings.url} refuses this client's IP address ({message}); "
                    "add it to Settings / Advanced / Allowed IPs"
                )
            return CoolifyForbidden(f"Coolify refused {where}: {status} {message}")
        if status == 404:
            return CoolifyNotFound(f"{where}: {status} {message}")
        if status == 405:
            return CoolifyRequestError(
                f"{where}: {status} {message} (this Coolify version expects another HTTP method)"
            )
        if status == 422:
            fields = ""
            try:
                errors = response.json().get("errors")
            except (ValueError, AttributeError):
                errors = None
            if isinstance(errors, Mapping) and errors:
                # Field names only: Coolify's messages can quote the rejected value.
                fields = f" (fields: {', '.join(sorted(str(k) for k in errors))})"
            return CoolifyRequestError(f"{where}: {status} {message}{fields}")
        return CoolifyRequestError(f"{where}: HTTP {status} {message}")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
