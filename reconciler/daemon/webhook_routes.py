"""HTTP receiver for git-host webhooks: ``POST /webhooks/{github|gitlab|gitea|bitbucket}``.

The order of checks is deliberate: unknown or unconfigured provider (404) → per-peer rate limit
(429; charged before anything is verified, so unsigned traffic only ever spends its own peer's
budget) → body cap (413, before reading past the cap) and body timeout (408) → signature (401;
nothing else runs for an unauthenticated request) → parse (400) → replay check on the digest of
the verified body (200 duplicate) → per-provider rate limit (429; only fresh, verified
deliveries are charged, so anonymous requests cannot starve signed ones) → trigger decision
(200 ignored with a reason) → ``on_push`` (202 with the reconcile id). ``on_push`` must only
enqueue, so a git host gets its answer well inside its delivery timeout (Bitbucket: 10 s).

Replay protection is keyed on what the signature covers: the body (SHA-256), per provider. The
delivery-id headers are not signed, so a captured request with a changed, removed or re-cased id
is still the same delivery; GitLab deliveries without ``Idempotency-Key`` are covered the same
way. The digest is recorded *before* ``on_push`` runs: a captured, signed request replayed later
must never trigger again. The cost is that a delivery whose enqueue failed (503) or that met the
provider's rate limit is answered "duplicate" when the host retries it; the daemon's periodic
poll covers that case.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from reconciler.daemon.http_guard import RefusalLog, read_body
from reconciler.observe.metrics import WEBHOOK_REQUESTS
from reconciler.source.webhooks import (
    PROVIDERS,
    WebhookAuthError,
    WebhookEvent,
    WebhookPayloadError,
    check_secret,
    delivery_digest,
    matches,
    parse,
    verify,
)

log = logging.getLogger("reconciler.daemon.webhooks")

DEFAULT_MAX_BODY_BYTES = 1 << 20
# Peers with a bucket at once; past that the least recently seen one is forgotten (a full
# bucket, so forgetting it grants nothing).
_MAX_PEERS = 4096

OnPush = Callable[[WebhookEvent], Awaitable[str]]
SeenDelivery = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    per_second: float = 5.0
    burst: int = 20

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError("rate limit needs per_second > 0 and burst >= 1")


@dataclass(frozen=True)
class WebhookConfig:
    """What the receiver needs; secrets are already resolved from their references.

    A provider without a secret is not served (404): unauthenticated webhooks are never accepted.
    """

    secrets: Mapping[str, bytes] = field(repr=False)
    repo_urls: Sequence[str] = ()
    branches: Sequence[str] = ()
    """Branch names or globs; empty means every branch of the watched repositories."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rate_limit: RateLimit = field(default_factory=RateLimit)
    """Applied per provider, to verified fresh deliveries only."""
    peer_rate_limit: RateLimit = field(default_factory=RateLimit)
    """Applied per peer address, before anything is verified."""
    body_timeout: float = 30.0
    """Seconds to receive the whole body (a slow sender holds a connection no longer)."""
    enqueue_timeout: float = 5.0
    """Upper bound on ``on_push``; it should only enqueue."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.secrets) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"unknown webhook provider(s): {', '.join(unknown)}")
        for provider, secret in self.secrets.items():
            check_secret(provider, secret)
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if not self.enqueue_timeout > 0:
            raise ValueError("enqueue_timeout must be positive")
        if not self.body_timeout > 0:
            raise ValueError("body_timeout must be positive")


class TokenBucket:
    """Classic token bucket on a monotonic clock."""

    def __init__(
        self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


def webhook_routes(
    config: WebhookConfig,
    on_push: OnPush,
    seen_delivery: SeenDelivery,
    *,
    clock: Callable[[], float] = time.monotonic,
    refusals: RefusalLog | None = None,
) -> list[web.RouteDef]:
    """Routes for the daemon's aiohttp app.

    ``seen_delivery(provider, key)`` records a delivery key (the digest of the verified body)
    and returns False when it was recorded before (``Store.record_delivery`` has exactly this
    contract). ``on_push`` enqueues a reconcile for the event and returns its id. Rate-limited
    requests go to ``refusals`` (one summary log line per interval) instead of a line each.
    """
    buckets = {
        name: TokenBucket(config.rate_limit.per_second, config.rate_limit.burst, clock)
        for name in PROVIDERS
    }
    peer_buckets: OrderedDict[str, TokenBucket] = OrderedDict()
    refused = refusals or RefusalLog()

    def peer_bucket(peer: str) -> TokenBucket:
        bucket = peer_buckets.get(peer)
        if bucket is None:
            limit = config.peer_rate_limit
            bucket = peer_buckets[peer] = TokenBucket(limit.per_second, limit.burst, clock)
            if len(peer_buckets) > _MAX_PEERS:
                peer_buckets.popitem(last=False)
        else:
            peer_buckets.move_to_end(peer)
        return bucket

    def too_many(wait: float, outcome_fields: dict[str, Any]) -> web.Response:
        label = outcome_fields["provider"] if outcome_fields["provider"] in PROVIDERS else "unknown"
        WEBHOOK_REQUESTS.labels(label, "rate_limited").inc()
        refused.note("rate_limited", outcome_fields["remote"])
        return web.json_response({"status": "rate_limited"}, status=429,
                                 headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        fields: dict[str, Any] = {
            # Client-chosen text: bounded and printable before it reaches a log line.
            "provider": "".join(
                c if c.isprintable() else "?" for c in request.match_info["provider"][:40]
            ),
            "remote": request.remote,
            "delivery_id": None,
            "event_kind": None,
            "reason": None,
            "reconcile_id": None,
        }

        def respond(
            status: int,
            outcome: str,
            body: dict[str, Any],
            headers: Mapping[str, str] | None = None,
        ) -> web.Response:
            fields.update(
                status=status,
                outcome=outcome,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            # Unknown path segments are collapsed so clients cannot mint label values.
            label = fields["provider"] if fields["provider"] in PROVIDERS else "unknown"
            WEBHOOK_REQUESTS.labels(label, outcome).inc()
            level = logging.INFO if status < 400 else logging.WARNING
            log.log(
                level,
                "webhook %s: %d %s",
                fields["provider"],
                status,
                outcome,
                extra=dict(fields),
            )
            response = web.json_response(
                {"status": outcome, **body}, status=status, headers=headers
            )
            if status == 413:
                # The unread rest of the body is not worth draining: drop the connection.
                response.force_close()
            return response

        provider = request.match_info["provider"].lower()
        if provider not in PROVIDERS:
            return respond(404, "unknown_provider", {})
        fields["provider"] = provider
        secret = config.secrets.get(provider)
        if not secret:
            return respond(404, "provider_not_enabled", {})

        wait = peer_bucket(str(request.remote)).take()
        if wait > 0:
            return too_many(wait, fields)

        cap = config.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            return respond(413, "too_large", {"max_bytes": cap})
        try:
            body = await read_body(request, cap, config.body_timeout)
        except TimeoutError:
            refused.note("body_timeout", fields["remote"])
            response = respond(408, "body_timeout", {})
            response.force_close()
            return response
        if body is None:
            return respond(413, "too_large", {"max_bytes": cap})
        fields["body_bytes"] = len(body)

        try:
            verify(provider, request.headers, body, secret)
        except WebhookAuthError as exc:
            # The message names the failing check, never the secret or the signature.
            fields["reason"] = exc.message
            return respond(401, "unauthorized", {})

        try:
            event = parse(provider, request.headers, body)
        except WebhookPayloadError as exc:
            fields["reason"] = exc.message
            return respond(400, "bad_payload", {"reason": exc.message})
        fields["delivery_id"] = event.delivery_id
        fields["event_kind"] = event.kind

        try:
            fresh = await seen_delivery(provider, delivery_digest(body))
        except Exception as exc:
            fields["reason"] = f"delivery store failed: {type(exc).__name__}"
            return respond(503, "unavailable", {})
        if not fresh:
            return respond(200, "duplicate", {})

        wait = buckets[provider].take()
        if wait > 0:
            return too_many(wait, fields)

        triggers: list[WebhookEvent] = []
        reasons: list[str] = []
        for single in event.split():
            ok, reason = matches(single, config.repo_urls, config.branches)
            if ok:
                triggers.append(single)
            else:
                reasons.append(reason)
        if not triggers:
            reason = "; ".join(dict.fromkeys(reasons))
            fields["reason"] = reason
            return respond(200, "ignored", {"reason": reason})

        reconcile_ids: list[str] = []
        try:
            async with asyncio.timeout(config.enqueue_timeout):
                for single in triggers:
                    reconcile_ids.append(await on_push(single))
        except Exception as exc:
            fields["reason"] = f"enqueue failed: {type(exc).__name__}"
            return respond(503, "unavailable", {})
        fields["reconcile_id"] = reconcile_ids[0]
        result: dict[str, Any] = {"reconcile_id": reconcile_ids[0]}
        if len(reconcile_ids) > 1:
            result["reconcile_ids"] = reconcile_ids
        return respond(202, "accepted", result)

    return [web.post("/webhooks/{provider}", handle)]
