"""What one resource's turn in a pass came to (``Outcome``), and the pass's (``ReconcileResult``).

Kinds are fields, never read from the message: ``result`` (converged, skipped, a deployment
status) and ``waiting`` (not done yet by design: a dependency, a lease, a paused rollout, a stop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.spec.model import ResourceKey
from reconciler.state import store as st

# Outcomes of one resource in one pass.
CONVERGED = "converged"
SKIPPED = "skipped"

ProgressFn = Callable[[ResourceKey, str, str], None]


@dataclass
class Outcome:
    key: ResourceKey
    action: str
    result: str  # converged | skipped | a deployment status
    revision: str | None = None
    message: str = ""
    deployment: str | None = None
    code: str = ""  # the FRnnn code of the error behind a failure (docs/errors.md)
    hint: str = ""  # its one-line remediation
    # Not done yet by design (waiting for a dependency, a lease, a paused rollout, a resume):
    # neither converged nor failed, and no reason for the daemon to back off.
    waiting: bool = False
    # A failed run's last output lines (rollout/lastlines.py): shown under the failure
    last_output: tuple[str, ...] = ()
    # The deployment was interrupted (a crash, a killed replica) after its instances were
    # moved; recovery found them running the revision and gated them: nothing redeployed.
    adopted: bool = False

    @property
    def ok(self) -> bool:
        return self.result in (CONVERGED, st.SUCCEEDED, SKIPPED) and not self.waiting

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"resource": str(self.key), "action": self.action,
                               "result": self.result, "revision": self.revision,
                               "message": self.message, "deployment": self.deployment}
        if self.code:
            doc.update(code=self.code, hint=self.hint)
        if self.last_output:
            doc["lastOutput"] = list(self.last_output)
        if self.adopted:
            doc["adopted"] = True
        return doc


@dataclass(repr=False)
class ReconcileResult:
    commit: str | None
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False

    def __repr__(self) -> str:  # short: asyncio reprs task results
        return (f"ReconcileResult(commit={self.commit!r}, resources={len(self.outcomes)}, "
                f"converged={self.converged})")

    @property
    def converged(self) -> bool:
        return not self.interrupted and all(o.ok for o in self.outcomes)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "converged": self.converged,
                "durationSeconds": round(self.duration_s, 3),
                "resources": [o.to_json() for o in self.outcomes]}


class DeploymentFailed(ReconcilerError):
    code = "FR800"
    hint = ("`reconciler history NAME` shows the deployment and the step that failed; fix the "
            "cause named above and commit again (or `reconciler rollback NAME`)")
    exit_code = 1

