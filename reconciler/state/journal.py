"""The deployment journal's rules, once for every store (SQLite, PostgreSQL, MySQL).

A deployment moves only along ``TRANSITIONS``; entering ``in_progress`` stamps ``started_at``,
entering a final status ``finished_at`` (and the store writes its audit row in the same
transaction). Every transition is an event; every provider action a step, started before it
runs and finished once. Identifiers: ``env/Kind/name#n``, ``…#n/event/m``, ``…#n/step/m``,
n and m counting from 1. The stores only say how rows are read and written.
"""

from __future__ import annotations

from typing import Any

from reconciler.errors import NotFound, StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state.store import (
    DEPLOYMENT_STATUSES,
    FINAL_STATUSES,
    IN_PROGRESS,
    PENDING,
    STEP_STARTED,
    STEP_STATUSES,
    TRANSITIONS,
    TransitionError,
)

Row = dict[str, Any]


def deployment_row(deployment_id: str, key: ResourceKey, pk_resource: int, seq: int,
                   created_at: Any) -> Row:
    """The columns every new deployment starts with: ``pending``, the ``seq``-th of its
    resource (the caller adds what it deploys)."""
    return {
        "id": deployment_id,
        "identifier": f"{key}#{seq}",
        "fk_resource": pk_resource,
        "seq": seq,
        "status": PENDING,
        "created_at": created_at,
    }


def event_row(event_id: str, pk_deployment: int, identifier: str, seq: int, status: str,
              message: str | None, at: Any) -> Row:
    """The ``seq``-th event of the deployment ``identifier``: it entered ``status``."""
    return {
        "id": event_id,
        "identifier": f"{identifier}/event/{seq}",
        "fk_deployment": pk_deployment,
        "seq": seq,
        "status": status,
        "message": message,
        "at": at,
    }


def transition_extra(status: str, error: str | None, output: str | None,
                     exit_code: int | None) -> dict[str, Any]:
    """Check a ``transition`` target status; the optional columns it sets (those given)."""
    if status not in DEPLOYMENT_STATUSES:
        raise TransitionError(f"unknown deployment status {status!r}")
    return {
        name: value
        for name, value in (("error", error), ("output", output), ("exit_code", exit_code))
        if value is not None
    }


def transition_values(deployment: Row, status: str, extra: dict[str, Any], at: Any) -> Row:
    """The columns a transition of ``deployment`` (its ``identifier`` and current ``status``)
    to ``status`` sets, at ``at``; raises TransitionError when TRANSITIONS does not allow it."""
    current = deployment["status"]
    if status not in TRANSITIONS.get(current, frozenset()):
        raise TransitionError(
            f"{deployment['identifier']}: {current} -> {status} is not an allowed transition"
        )
    values: dict[str, Any] = {"status": status, **extra}
    if status == IN_PROGRESS:
        values["started_at"] = at
    if status in FINAL_STATUSES:
        values["finished_at"] = at
    return values


def step_row(step_id: str, deployment: Row, seq: int, action: str, instance: str,
             detail: str | None, started_at: Any) -> Row:
    """The ``seq``-th step of ``deployment`` (its ``pk_deployment`` and ``identifier``),
    journaled before the action runs."""
    return {
        "id": step_id,
        "identifier": f"{deployment['identifier']}/step/{seq}",
        "fk_deployment": deployment["pk_deployment"],
        "seq": seq,
        "action": action,
        "instance": instance,
        "status": STEP_STARTED,
        "detail": detail,
        "started_at": started_at,
    }


def check_finish_status(status: str) -> None:
    if status not in STEP_STATUSES or status == STEP_STARTED:
        raise StoreError(
            f"finish_step: status must be one of {', '.join(STEP_STATUSES[1:])}, "
            f"not {status!r}"
        )


def found_step(step: Row | None, step_id: str) -> Row:
    if step is None:
        raise NotFound(f"no deployment step {step_id}")
    return step


def step_to_finish(step: Row, status: str, *, retrying: bool = False) -> bool:
    """Whether ``step`` (its ``identifier`` and ``status``) is to be finished as ``status``: a
    step finishes once. False only for a retried write whose first attempt committed."""
    if step["status"] != STEP_STARTED:
        if retrying and step["status"] == status:
            return False
        raise StoreError(f"step {step['identifier']} already finished ({step['status']})")
    return True
