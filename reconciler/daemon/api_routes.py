"""Read-only JSON API of the daemon, behind a bearer token.

- ``GET /api/v1/status``: every resource with desired/applied revision, sync and health status,
  last result and error, suspended flag (what ``reconciler status -o json`` prints).
  Optional filters ``?environment=`` and ``?kind=``.
- ``GET /api/v1/resources/{environment}/{kind}/{name}/history?limit=N``: its deployments,
  newest first, with events and steps (what ``reconciler history NAME -o json`` prints).
- ``GET /api/v1/audit?limit=N&resource=environment/Kind/name&since=ISO-8601``: the audit trail,
  newest first (what ``reconciler audit -o json`` prints).

Without a configured token the routes do not exist (404): this API is never served
unauthenticated. A missing or wrong token is answered 401, compared in constant time.
Nothing secret is returned: stored specs (secret references) and captured job output are left
out, and errors are the engine's own messages, which never carry secret values.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import datetime
from typing import Any

from aiohttp import web

from reconciler.errors import ReconcilerError
from reconciler.spec.model import ResourceKey
from reconciler.state.audit import utc_time
from reconciler.state.store import AuditRecord, DeploymentRecord, ResourceRecord, Store

log = logging.getLogger("reconciler.daemon.api")

MIN_TOKEN_BYTES = 16
DEFAULT_HISTORY_LIMIT = 20
MAX_HISTORY_LIMIT = 200
DEFAULT_AUDIT_LIMIT = 50
_HEADERS = {"Cache-Control": "no-store"}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fraisier"', **_HEADERS}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def resource_json(r: ResourceRecord) -> dict[str, Any]:
    return {
        "resource": str(r.key), "environment": r.key.environment, "kind": r.key.kind,
        "name": r.key.name, "desiredRevision": r.desired_revision,
        "appliedRevision": r.applied_revision, "configCommit": r.config_commit,
        "sync": r.sync_status, "health": r.health_status, "lastResult": r.last_result,
        "lastError": r.last_error, "failedRevision": r.failed_revision,
        "suspended": r.suspended, "updatedAt": _iso(r.updated_at),
        "healthObservedAt": _iso(r.health_observed_at),
    }


def deployment_json(d: DeploymentRecord) -> dict[str, Any]:
    return {
        "id": d.id, "deployment": d.identifier, "resource": str(d.key), "status": d.status,
        "trigger": d.trigger, "strategy": d.strategy, "fromRevision": d.from_revision,
        "toRevision": d.to_revision, "configCommit": d.config_commit, "error": d.error,
        "exitCode": d.exit_code, "createdAt": _iso(d.created_at),
        "startedAt": _iso(d.started_at), "finishedAt": _iso(d.finished_at),
        "events": [{"status": e.status, "message": e.message, "at": _iso(e.at)}
                   for e in d.events],
        "steps": [{"seq": s.seq, "action": s.action, "instance": s.instance,
                   "status": s.status, "detail": s.detail, "startedAt": _iso(s.started_at),
                   "finishedAt": _iso(s.finished_at)} for s in d.steps],
    }


def audit_json(e: AuditRecord) -> dict[str, Any]:
    return {
        "id": e.id, "identifier": e.identifier, "at": _iso(e.at), "actor": e.actor,
        "action": e.action, "resource": e.resource, "deployment": e.deployment,
        "configCommit": e.config_commit, "revision": e.revision, "outcome": e.outcome,
        "message": e.message,
    }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers or _HEADERS,
                             dumps=lambda doc: json.dumps(doc, ensure_ascii=False))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status=status, headers=headers)


def api_routes(store: Store, token: bytes | None) -> list[web.RouteDef]:
    """Routes for the daemon's aiohttp app; ``[]`` when no token is configured."""
    if not token:
        return []
    if len(token) < MIN_TOKEN_BYTES:
        raise ValueError(f"the API token must be at least {MIN_TOKEN_BYTES} bytes long")
    expected = bytes(token)

    def authorized(request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, expected)

    def refuse(request: web.Request) -> web.Response:
        # The header's value is never logged: it may be a real token sent to the wrong daemon.
        log.warning("api request refused: missing or wrong bearer token",
                    extra={"path": request.path, "remote": request.remote})
        return _error(401, "unauthorized", _CHALLENGE)

    async def status(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse(request)
        environment = request.query.get("environment")
        kind = request.query.get("kind")
        try:
            records = await store.list_resources()
        except ReconcilerError as exc:
            log.error("api: store unavailable", extra={"error": exc.message})
            return _error(503, "store unavailable")
        rows = [resource_json(r) for r in records
                if (environment is None or r.key.environment == environment)
                and (kind is None or r.key.kind == kind)]
        healthy = all(r["sync"] == "Synced" and r["health"] == "Healthy"
                      for r in rows if not r["suspended"])
        counts: dict[str, dict[str, int]] = {"sync": {}, "health": {}}
        for r in rows:
            counts["sync"][r["sync"]] = counts["sync"].get(r["sync"], 0) + 1
            counts["health"][r["health"]] = counts["health"].get(r["health"], 0) + 1
        return _json({"healthy": healthy, "count": len(rows), "summary": counts,
                      "resources": rows})

    async def history(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse(request)
        raw_limit = request.query.get("limit", str(DEFAULT_HISTORY_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            return _error(400, f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        info = request.match_info
        key = ResourceKey(info["environment"], info["kind"], info["name"])
        try:
            record = await store.get_resource(key)
            if record is None:
                return _error(404, "resource not found")
            deployments = await store.list_deployments(key, limit=limit)
        except ReconcilerError as exc:
            log.error("api: store unavailable", extra={"error": exc.message})
            return _error(503, "store unavailable")
        return _json({"resource": str(key), "deployments": [deployment_json(d)
                                                            for d in deployments]})

    async def audit(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse(request)
        try:
            limit = int(request.query.get("limit", str(DEFAULT_AUDIT_LIMIT)))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            return _error(400, f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        key = None
        if "resource" in request.query:
            parts = request.query["resource"].split("/")
            if len(parts) != 3 or not all(parts):
                return _error(400, "resource must be environment/Kind/name")
            key = ResourceKey(*parts)
        since = None
        if "since" in request.query:
            try:
                since = utc_time(request.query["since"])
            except ValueError:
                return _error(400, "since must be an ISO-8601 time from year 1 to 9999 in UTC")
        try:
            events = await store.list_audit(limit, resource=key, since=since)
        except ReconcilerError as exc:
            log.error("api: store unavailable", extra={"error": exc.message})
            return _error(503, "store unavailable")
        return _json({"events": [audit_json(e) for e in events]})

    return [
        web.get("/api/v1/status", status),
        web.get("/api/v1/resources/{environment}/{kind}/{name}/history", history),
        web.get("/api/v1/audit", audit),
    ]
