"""What a pass tells the outside about the config commit it applies, per environment: the
narrow interface between the engine and commit-status reporters (``source/commit_status.py``).

The engine calls :func:`report_started` once the plan is known and :func:`report_finished` when
the pass ends; a ``CommitStatusSink`` only queues the update (``report`` never blocks and never
raises), so a slow or broken git host cannot hold a pass.

Per environment, only where something acts (created, updated, deleted or window-deferred):
- start: ``pending`` "rollout of N resource(s) started", or ``pending`` "deferred by sync window"
  when every change of the environment waits for its window;
- end: ``failure`` when a resource failed or was rolled back, ``success`` when all
  converged, ``pending`` "deferred by sync window" when the rest converged and some changes
  still wait for their window; nothing when a resource is still waiting (a paused canary, a
  lease) or the pass was interrupted: the status stays ``pending`` until a pass decides.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from reconciler.plan.planner import BLOCKED, CREATE, DEFERRED, DELETE, UPDATE, PlanItem
from reconciler.rollout.outcome import Outcome
from reconciler.spec.model import ResourceKey

DEFERRED_DESCRIPTION = "deferred by sync window"
MAX_DESCRIPTION = 140  # GitHub refuses longer descriptions; the shortest limit of the four
_ROLLING = (CREATE, UPDATE, DELETE)


class CommitState(enum.Enum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class StatusUpdate:
    commit: str  # the full config commit SHA
    environment: str
    state: CommitState
    description: str
    deferred: bool = False  # pending because a sync window holds the change


class CommitStatusSink(Protocol):
    def report(self, update: StatusUpdate) -> None:
        """Queue one update; must neither block nor raise."""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 1] + "…"


def _by_environment(items: Iterable[PlanItem]) -> dict[str, list[PlanItem]]:
    envs: dict[str, list[PlanItem]] = {}
    for item in items:
        if item.action in _ROLLING or item.action == DEFERRED:
            envs.setdefault(item.key.environment, []).append(item)
    return envs


def report_started(sink: CommitStatusSink, commit: str | None, items: Iterable[PlanItem],
                   selected: set[ResourceKey] | None = None) -> None:
    if not commit:
        return
    chosen = (i for i in items if selected is None or i.key in selected)
    for environment, env_items in sorted(_by_environment(chosen).items()):
        rolling = [i for i in env_items if i.action in _ROLLING]
        if rolling:
            sink.report(StatusUpdate(commit, environment, CommitState.PENDING,
                                     _short(f"rollout of {len(rolling)} resource(s) started")))
        else:
            sink.report(StatusUpdate(commit, environment, CommitState.PENDING,
                                     _deferred_text(env_items), deferred=True))


def _deferred_text(items: list[PlanItem]) -> str:
    deferred = [i for i in items if i.action == DEFERRED]
    first = deferred[0].reason if deferred else ""
    return _short(f"{DEFERRED_DESCRIPTION}: {first}" if first else DEFERRED_DESCRIPTION)


def report_finished(sink: CommitStatusSink, commit: str | None, items: Iterable[PlanItem],
                    outcomes: Mapping[ResourceKey, Outcome], *, interrupted: bool) -> None:
    if not commit or interrupted:
        return
    for environment, env_items in sorted(_by_environment(items).items()):
        done = [outcomes[i.key] for i in env_items if i.key in outcomes]
        if not done:
            continue  # not part of this pass (``only``)
        failed = [o for o in done if not o.ok and not o.waiting]
        if failed:
            # The resource, its outcome and error code, not the error text: a commit page may
            # be public, and error texts name hosts, URLs and paths (``reconciler history``
            # has them).
            first = failed[0]
            why = f"{first.key}: {first.result}" + (f" ({first.code})" if first.code else "")
            sink.report(StatusUpdate(commit, environment, CommitState.FAILURE,
                                     _short(f"{len(failed)} of {len(done)} failed; {why}")))
        elif any(o.waiting for o in done):
            continue  # still rolling out (paused, waiting for a lease): stays pending
        elif any(i.action == DEFERRED for i in env_items):
            sink.report(StatusUpdate(commit, environment, CommitState.PENDING,
                                     _deferred_text(env_items), deferred=True))
        else:
            applied = sum(1 for o in done if o.action != BLOCKED)
            sink.report(StatusUpdate(commit, environment, CommitState.SUCCESS,
                                     _short(f"{applied} resource(s) applied")))
