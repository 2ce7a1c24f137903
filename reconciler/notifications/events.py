"""What a notification tells: kinds of event (an enum, never read from a message) and the event
itself (what, where, which commit, outcome, reason)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.spec.model import ResourceKey


class EventKind(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    DRIFT_DETECTED = "drift_detected"
    DRIFT_HEALED = "drift_healed"
    BLOCKED = "blocked"
    DEFERRED = "deferred"
    RELEASED = "released"
    REFUSED = "refused"  # a commit invalid or refused by the operator policy
    NOT_CONVERGING = "not_converging"
    CONVERGING = "converging"
    # Sent only to close a problem told before: the resource is in sync with nothing deployed
    # (the bad commit was reverted to what runs), so no deployment will ever report success.
    IN_SYNC = "in_sync"


# A problem stays open for its subject until a recovery closes it: repeats of the same open
# problem are held back for the repeat interval, and the recovery is sent once.
PROBLEMS = frozenset({EventKind.FAILED, EventKind.ROLLED_BACK, EventKind.ROLLBACK_FAILED,
                      EventKind.DRIFT_DETECTED, EventKind.BLOCKED, EventKind.DEFERRED,
                      EventKind.REFUSED, EventKind.NOT_CONVERGING})
RECOVERIES = frozenset({EventKind.SUCCEEDED, EventKind.DRIFT_HEALED, EventKind.RELEASED,
                        EventKind.CONVERGING, EventKind.IN_SYNC})
# Problems a resource found in sync (unchanged) ends; not drift: the plan does not see live state.
CLOSED_BY_IN_SYNC = frozenset({EventKind.FAILED, EventKind.ROLLED_BACK,
                               EventKind.ROLLBACK_FAILED, EventKind.BLOCKED,
                               EventKind.DEFERRED})
# Events of the daemon or of a whole commit, not of one resource.
PLATFORM = frozenset({EventKind.REFUSED, EventKind.NOT_CONVERGING, EventKind.CONVERGING})
# What a destination gets unless it lists its events: everything but plain successes (a
# success that ends a problem it was told of still comes, as that problem's recovery).
DEFAULT_EVENTS = frozenset(EventKind) - {EventKind.SUCCEEDED, EventKind.IN_SYNC}
# Subjects of platform events.
DAEMON = "daemon"
COMMITS = "commits"

_TITLES = {
    EventKind.SUCCEEDED: "succeeded", EventKind.FAILED: "FAILED",
    EventKind.ROLLED_BACK: "ROLLED BACK", EventKind.ROLLBACK_FAILED: "ROLLBACK FAILED",
    EventKind.DRIFT_DETECTED: "drift detected", EventKind.DRIFT_HEALED: "drift healed",
    EventKind.BLOCKED: "blocked", EventKind.DEFERRED: "deferred by sync window",
    EventKind.RELEASED: "released (sync window open)", EventKind.REFUSED: "commit refused",
    EventKind.NOT_CONVERGING: "NOT CONVERGING", EventKind.CONVERGING: "converging again",
    EventKind.IN_SYNC: "back in sync",
}


def title_of(kind: EventKind) -> str:
    return _TITLES[kind]


@dataclass(frozen=True)
class CommitInfo:
    """The config commit an event comes from: what people recognise it by."""

    sha: str
    subject: str = ""
    author: str = ""

    @property
    def short(self) -> str:
        return self.sha[:7]

    def line(self) -> str:
        text = self.short
        if self.subject:
            text += f" {self.subject!r}"
        if self.author:
            text += f" by {self.author}"
        return text


@dataclass(frozen=True)
class Event:
    kind: EventKind
    subject: str  # what a problem is open on: a resource key, "daemon" or "commits"
    resource: ResourceKey | None = None
    labels: tuple[tuple[str, str], ...] = ()
    hosts: tuple[str, ...] = ()
    commit: CommitInfo | None = None
    outcome: str = ""  # the deployment status or pass result behind it
    reason: str = ""
    revision: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def environment(self) -> str | None:
        return self.resource.environment if self.resource is not None else None

    def with_kind(self, kind: EventKind) -> Event:
        return Event(kind, self.subject, self.resource, self.labels, self.hosts, self.commit,
                     self.outcome, self.reason, self.revision, self.extra)

    def with_hosts(self, hosts: tuple[str, ...]) -> Event:
        return Event(self.kind, self.subject, self.resource, self.labels, hosts, self.commit,
                     self.outcome, self.reason, self.revision, self.extra)
