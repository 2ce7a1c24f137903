"""One summary per destination per pass: the events a destination watches, less the problems it
was told of within its repeat interval, plus the recoveries of problems it was told of (once).

``Memory`` is what each destination was told: the open problem of each subject and when it was
sent. It is kept in the delivery state file, so a restart neither repeats nor forgets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.notifications.destinations import Destination
from reconciler.notifications.events import (
    CLOSED_BY_IN_SYNC,
    PROBLEMS,
    RECOVERIES,
    Event,
    EventKind,
    title_of,
)

MAX_LINES = 40  # lines of detail in one message; the rest is counted
MAX_REASON = 300


@dataclass
class Sent:
    kind: str
    at: float


Memory = dict[str, dict[str, Sent]]  # destination id -> subject -> open problem told


@dataclass
class Message:
    """What one destination is sent for one pass (or one platform event)."""

    id: str
    destination: str  # Destination.id
    title: str
    body: str
    severity: str  # apprise NotifyType: info | success | warning | failure
    kinds: list[str]  # event kinds in it, for the metric
    opened: dict[str, str] = field(default_factory=dict)  # subject -> problem it records as told
    closed: list[str] = field(default_factory=list)  # subjects it records as recovered
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "destination": self.destination, "title": self.title,
                "body": self.body, "severity": self.severity, "kinds": self.kinds,
                "opened": self.opened, "closed": self.closed, "created": self.created}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Message:
        return cls(**doc)


def select(dest: Destination, events: Iterable[Event], memory: dict[str, Sent],
           now: float) -> tuple[list[Event], int]:
    """The events ``dest`` is to be told now, and how many were held back as repeats.
    ``memory`` (this destination's) is not changed: the message records what it tells."""
    chosen: list[Event] = []
    held = 0
    for event in events:
        if not dest.wants(event):
            continue
        told = memory.get(event.subject)
        if event.kind in PROBLEMS:
            if event.kind not in dest.events:
                continue
            if (told is not None and now - told.at < dest.repeat_s
                    and (told.kind == event.kind
                         or told.kind in _CONTINUES.get(event.kind, ()))):
                held += 1
                continue
            chosen.append(event)
        elif event.kind in RECOVERIES:
            if event.kind == EventKind.IN_SYNC and (
                    told is None or EventKind(told.kind) not in CLOSED_BY_IN_SYNC):
                continue
            if told is not None:  # closes a problem this destination was told of
                chosen.append(_recovery_of(told, event))
            elif event.kind in dest.events and event.kind in (EventKind.SUCCEEDED,
                                                              EventKind.DRIFT_HEALED):
                chosen.append(event)  # a plain success, when asked for
    return chosen, held


# A problem that is the next state of one already told: a revision rolled back (or failed) is
# blocked in the passes after, and saying so again is a repeat, not news.
_CONTINUES = {EventKind.BLOCKED: {str(EventKind.FAILED), str(EventKind.ROLLED_BACK),
                                  str(EventKind.ROLLBACK_FAILED)}}


def continued_by(kind: str) -> frozenset[str]:
    """The problems ``kind`` continues (told again as ``kind``, it is a repeat, not news)."""
    try:
        return frozenset(_CONTINUES.get(EventKind(kind), ()))
    except ValueError:
        return frozenset()


def _recovery_of(told: Sent, event: Event) -> Event:
    """A success named after the problem it ends: a deferred change applied is ``released``,
    a drift redeployed ``drift_healed``."""
    if event.kind == EventKind.SUCCEEDED:
        if told.kind == EventKind.DEFERRED:
            return event.with_kind(EventKind.RELEASED)
        if told.kind == EventKind.DRIFT_DETECTED:
            return event.with_kind(EventKind.DRIFT_HEALED)
    return event


_ORDER = {k: n for n, k in enumerate([
    EventKind.ROLLBACK_FAILED, EventKind.FAILED, EventKind.ROLLED_BACK, EventKind.REFUSED,
    EventKind.NOT_CONVERGING, EventKind.BLOCKED, EventKind.DRIFT_DETECTED, EventKind.DEFERRED,
    EventKind.CONVERGING, EventKind.DRIFT_HEALED, EventKind.RELEASED, EventKind.IN_SYNC,
    EventKind.SUCCEEDED])}
_FAILURES = {EventKind.ROLLBACK_FAILED, EventKind.FAILED, EventKind.ROLLED_BACK,
             EventKind.REFUSED, EventKind.NOT_CONVERGING}
_WARNINGS = {EventKind.BLOCKED, EventKind.DRIFT_DETECTED, EventKind.DEFERRED}


def compose(dest: Destination, events: list[Event], *, message_id: str, now: float,
            ui_url: str | None = None) -> Message:
    """One message telling ``events`` (at least one) to ``dest``."""
    events = sorted(events, key=lambda e: (_ORDER[e.kind], e.subject))
    counts = Counter(e.kind for e in events)
    kinds = [k for k in _ORDER if counts[k]]
    summary = ", ".join(f"{counts[k]} {title_of(k)}" for k in kinds)
    where = sorted({e.environment for e in events if e.environment})
    commits = {e.commit.sha: e.commit for e in events if e.commit is not None}
    title = f"Fraisier: {summary}"
    if where:
        title += f" in {', '.join(where)}"
    lines: list[str] = []
    for commit in commits.values():
        lines.append(f"commit {commit.line()}")
    for event in events[:MAX_LINES]:
        lines.append(line_of(event, ui_url))
    if len(events) > MAX_LINES:
        rest = Counter(e.kind for e in events[MAX_LINES:])
        lines.append("… and " + ", ".join(f"{n} more {title_of(k)}" for k, n in rest.items()))
    present = set(counts)
    severity = ("failure" if present & _FAILURES else "warning" if present & _WARNINGS
                else "success")
    opened = {e.subject: str(e.kind) for e in events if e.kind in PROBLEMS}
    closed = [e.subject for e in events if e.kind in RECOVERIES]
    return Message(message_id, dest.id, title, "\n".join(lines), severity,
                   [str(k) for k in kinds], opened, closed, now)


def line_of(event: Event, ui_url: str | None) -> str:
    what = title_of(event.kind)
    text = f"{what}: {event.subject}"
    if event.hosts:
        text += f" on {', '.join(event.hosts[:5])}" + (
            f" (+{len(event.hosts) - 5})" if len(event.hosts) > 5 else "")
    if event.revision:
        text += f" (revision {event.revision[:12]})"
    if event.outcome and event.outcome != str(event.kind):
        text += f" [{event.outcome}]"
    if event.reason:
        reason = " ".join(event.reason.split())
        text += f": {reason[:MAX_REASON]}" + ("…" if len(reason) > MAX_REASON else "")
    if ui_url and event.resource is not None:
        key = event.resource
        text += f" {ui_url.rstrip('/')}/resources/{key.environment}/{key.kind}/{key.name}"
    return text


def remember(memory: dict[str, Sent], message: Message) -> None:
    """Record what ``message`` told (called when it is queued, so the next pass does not tell
    it again; ``forget`` undoes it if it could not be delivered)."""
    for subject in message.closed:
        memory.pop(subject, None)
    for subject, kind in message.opened.items():
        memory[subject] = Sent(kind, message.created)


def forget(memory: dict[str, Sent], message: Message) -> None:
    """``message`` was never delivered: its problems count as not told (the next pass tells
    them); its recoveries cannot be undone cheaply and are simply lost."""
    for subject, kind in message.opened.items():
        told = memory.get(subject)
        if told is not None and told.kind == kind and told.at == message.created:
            del memory[subject]
