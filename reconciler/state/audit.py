"""Who changed what: the actor of a state change, and the audit rows the stores write.

Every store writes an audit row by itself when a deployment reaches a final status (inside the
transaction of that ``transition``), so no code path that deploys, rolls back, runs or prunes
can forget it. The *actor* of that row is, first match wins:

1. the actor set for the current task with :func:`acting_as` (the CLI sets
   ``cli:<user>@<host>`` for its whole run; the daemon sets the actor of each pass, so the
   deployments a pass resumes or prunes are attributed to what woke it);
2. derived from the deployment's trigger by :func:`actor_for_trigger` (``commit`` → ``watch``,
   ``drift`` → ``heal``, ``webhook:github:<delivery>`` as is, …).

Changes that are not deployments (suspend, resume, a webhook whose commit never arrived) are
recorded with ``Store.record_audit`` by the code that makes them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.errors import StoreError
from reconciler.observe.printable import printable
from reconciler.spec.model import ResourceKey
from reconciler.state.store import (
    DEPLOYMENT_STATUSES,
    FAILED,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    AuditRecord,
)

MAX_ACTOR = 255
MAX_MESSAGE = 2000
MAX_IDENTIFIER = 768  # the longest unique key MySQL/InnoDB indexes in utf8mb4
# How long audit events are kept (the daemon deletes older ones; `reconciler db prune-audit`).
AUDIT_RETENTION_ENV = "RECONCILER_AUDIT_RETENTION"
DEFAULT_AUDIT_RETENTION = "90d"
_DAYS = re.compile(r"([0-9]+(?:\.[0-9]+)?)d?")

_ACTOR: ContextVar[str | None] = ContextVar("fraisier_audit_actor", default=None)

# A pass woken by several things at once is attributed to the most specific one.
_PRIORITY = ("cli:", "webhook:", "replica:", "watch", "heal", "schedule", "sighup", "retry",
             "startup", "poll")
# Daemon wake-up reasons and engine triggers whose actor has another name.
_RENAMED = {"commit": "watch", "drift": "heal", "apply": "cli", "manual": "cli",
            "shards": "replica"}


def clip(text: str, limit: int, *, lines: bool = False) -> str:
    """Printable (newlines kept with ``lines``), at most ``limit`` characters (… when cut)."""
    return printable(text, limit, lines=lines)


def utc_time(text: str) -> datetime:
    """An ISO-8601 time (UTC when it names no zone) as an aware UTC ``datetime``. ValueError
    when it is not one, or when it is outside year 1 to 9999 once in UTC (what every store
    can compare with; 0001-01-01T00:00+01:00 is in year 0)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is outside year 1 to 9999 in UTC") from None


def cli_actor() -> str:
    """``cli:<user>@<host>``; under sudo, ``cli:<invoking user>(sudo)@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo != user:
        user = f"{sudo}(sudo)"
    return clip(f"cli:{user}@{socket.gethostname()}", MAX_ACTOR)


def current_actor() -> str | None:
    return _ACTOR.get()


@contextlib.contextmanager
def acting_as(actor: str | None) -> Iterator[None]:
    """Attribute the state changes made inside the block (and the tasks it starts) to
    ``actor``; None leaves the current one."""
    if actor is None:
        yield
        return
    token = _ACTOR.set(clip(actor, MAX_ACTOR))
    try:
        yield
    finally:
        _ACTOR.reset(token)


def actor_for_trigger(trigger: str) -> str:
    """The actor named by a trigger: the most specific part of a comma-joined list."""
    parts = [_RENAMED.get(p.strip(), p.strip()) for p in trigger.split(",") if p.strip()]
    if not parts:
        return "unknown"
    for prefix in _PRIORITY:
        for part in parts:
            if part.startswith(prefix):
                return clip(part, MAX_ACTOR)
    return clip(parts[0], MAX_ACTOR)


def action_for(kind: str, strategy: str, trigger: str, status: str, previous: str) -> str:
    """The audited action of a deployment that reached ``status`` from ``previous``."""
    if previous == FAILED and status in (ROLLED_BACK, ROLLBACK_FAILED):
        return "rollback"  # the automatic rollback after a failed deployment
    if strategy == "rollback" or trigger == "manual":
        return "rollback"
    if strategy == "delete" or trigger == "prune":
        return "prune"
    if strategy == "run":
        return "run"
    if strategy == "install" or kind == "Schedule":
        return "install"
    return "deploy"


def audit_identifier(deployment_identifier: str | None, status: str, fallback: str) -> str:
    """``<deployment identifier>:<status>`` (a deployment reaches each final status once), or
    ``fallback`` (an id-based key) when there is no deployment or the key would be too long."""
    if deployment_identifier:
        candidate = f"{deployment_identifier}:{status}"
        if len(candidate) <= MAX_IDENTIFIER:
            return candidate
    return fallback


def audit_values(action: str, *, actor: str, outcome: str, resource: ResourceKey | None,
                 deployment: str | None, config_commit: str | None, revision: str | None,
                 message: str | None) -> dict[str, Any]:
    """Checked, clipped column values of a new audit row (all but ``at``)."""
    if outcome not in DEPLOYMENT_STATUSES:
        raise StoreError(f"record_audit: outcome {outcome!r} is not one of "
                         f"{', '.join(DEPLOYMENT_STATUSES)}")
    if not action or not actor:
        raise StoreError("record_audit: action and actor are required")
    row_id = str(uuid.uuid4())
    identifier = f"{resource if resource is not None else '-'}:{action}:{row_id}"
    return {
        "id": row_id,
        "identifier": identifier if len(identifier) <= MAX_IDENTIFIER else f"audit:{row_id}",
        "actor": clip(actor, MAX_ACTOR),
        "action": clip(action, 32),
        "resource": str(resource) if resource is not None else None,
        "deployment": deployment,
        "config_commit": config_commit,
        "revision": revision,
        "outcome": outcome,
        "message": clip(message, MAX_MESSAGE, lines=True) if message else None,
    }


def parse_retention(text: str) -> timedelta | None:
    """An audit retention: days (``90d``, or a bare number ``90``) or a Go duration (``720h``);
    ``0`` keeps events forever (None). Raises ValueError naming the text otherwise."""
    value = text.strip()
    if (days := _DAYS.fullmatch(value)) is not None:
        retention = timedelta(days=float(days.group(1)))
    else:
        from reconciler.spec.durations import parse_duration

        try:
            retention = timedelta(seconds=parse_duration(value))
        except ValueError:
            raise ValueError(f"{text!r} is not an audit retention: expected days (90d, 90), a "
                             "duration (720h) or 0 to keep events forever") from None
    return retention if retention > timedelta(0) else None


def audit_import_values(record: AuditRecord, at: Any) -> dict[str, Any]:
    return {
        "id": record.id, "identifier": record.identifier, "at": at, "actor": record.actor,
        "action": record.action, "resource": record.resource, "deployment": record.deployment,
        "config_commit": record.config_commit, "revision": record.revision,
        "outcome": record.outcome, "message": record.message,
    }


__all__ = [
    "AUDIT_RETENTION_ENV",
    "DEFAULT_AUDIT_RETENTION",
    "MAX_ACTOR",
    "MAX_MESSAGE",
    "acting_as",
    "action_for",
    "actor_for_trigger",
    "audit_identifier",
    "audit_import_values",
    "audit_values",
    "cli_actor",
    "clip",
    "current_actor",
    "parse_retention",
]
