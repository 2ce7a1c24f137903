"""Where notifications go: ``kind: Notifier`` resources of the config repo (URL by secret
reference, resolved under the operator policy) and the operator's ``--notify`` URLs (trusted)."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.notifications.events import DEFAULT_EVENTS, PLATFORM, Event, EventKind
from reconciler.notifications.settings import DEFAULT_REPEAT_S
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import DesiredState, Resource
from reconciler.spec.secrets import describe_ref, resolve_secret

log = logging.getLogger("reconciler.notifications")



def label_of(url: str, owner: str) -> str:
    """The metric/log name of a destination: who configured it and the service's scheme, never
    the URL (Apprise URLs carry tokens in the user, host and path: slack://TOKEN/TOKEN/TOKEN)."""
    scheme = url.partition("://")[0].lower() if "://" in url else "invalid"
    return f"{owner}:{scheme}"


@dataclass(frozen=True)
class Destination:
    id: str  # stable across restarts: the state file keys what was sent by it
    label: str  # redacted: for metrics and logs
    url: str = field(repr=False)
    events: frozenset[EventKind] = DEFAULT_EVENTS
    environments: frozenset[str] | None = None  # None: every environment
    kinds: frozenset[str] | None = None
    names: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    repeat_s: float = DEFAULT_REPEAT_S

    def wants(self, event: Event) -> bool:
        """Is ``event`` about something this destination watches (its kind aside)?"""
        if event.kind in PLATFORM or event.resource is None:
            return True
        key = event.resource
        if self.environments is not None and key.environment not in self.environments:
            return False
        if self.kinds is not None and key.kind not in self.kinds:
            return False
        if self.names and not any(fnmatch.fnmatchcase(key.name, p) for p in self.names):
            return False
        if self.labels:
            have = dict(event.labels)
            return all(have.get(k) == v for k, v in self.labels)
        return True


def from_notifier(resource: Resource, environ: Mapping[str, str] | None = None) -> Destination:
    """A Notifier resource's destination; raises ``ReconcilerError`` (naming the reference,
    never its value) when its URL cannot be resolved."""
    spec: dict[str, Any] = resource.spec
    url = resolve_secret(spec["url"], environ=environ, environment=resource.environment)
    if "://" not in url:
        raise NotifierError(f"{resource.key}: {describe_ref(spec['url'])} is not an Apprise "
                            "URL (scheme://…)")
    envs = spec.get("environments")
    environments = None if envs and "*" in envs else frozenset(envs or [resource.environment])
    selector = spec.get("selector") or {}
    kinds = frozenset(selector["kinds"]) if selector.get("kinds") else None
    events = frozenset(EventKind(e) for e in spec["events"]) if spec.get("events") \
        else DEFAULT_EVENTS
    return Destination(
        id=str(resource.key), label=label_of(url, f"{resource.environment}/{resource.name}"),
        url=url, events=events, environments=environments, kinds=kinds,
        names=tuple(selector.get("names") or ()),
        labels=tuple(sorted((selector.get("labels") or {}).items())),
        repeat_s=to_seconds(spec.get("repeatInterval"), DEFAULT_REPEAT_S))


def operator_destinations(values: Iterable[str], repeat_s: float = DEFAULT_REPEAT_S,
                          environ: Mapping[str, str] | None = None) -> list[Destination]:
    """``--notify`` values and ``RECONCILER_NOTIFY`` (URLs separated by spaces; not commas,
    which Apprise URLs use: ``mailto://…?to=a@x,b@y``): a URL, or ``env:NAME`` / ``file:PATH``
    naming where it is (so no token shows in ``ps``)."""
    out: list[Destination] = []
    n = 0
    for value in values:
        for item in value.split():
            kind, sep, where = item.partition(":")
            if sep and kind in ("env", "file") and not where.startswith("//"):
                url = resolve_secret({kind: where}, environ=environ, trusted=True)
            else:
                url = item
            if "://" not in url:
                raise NotifierError(f"--notify: {kind if sep else 'value'} {n + 1} is not an "
                                    "Apprise URL (scheme://…), env:NAME or file:PATH")
            n += 1
            label = label_of(url, f"operator{n}")
            out.append(Destination(id=label, label=label, url=url, repeat_s=repeat_s))
    return out


def from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    value = (os.environ if environ is None else environ).get("RECONCILER_NOTIFY", "")
    return [value] if value.strip() else []


class NotifierError(ReconcilerError):
    code = "FR880"
    hint = ("give the destination as an Apprise URL (https://github.com/caronc/apprise/wiki), "
            "e.g. slack://…, mailto://…, ntfy://…, json://host/path, by secret reference")
    exit_code = 2


class Notifiers:
    """The destinations of the current desired state (resolved once per commit) plus the
    operator's."""

    def __init__(self, operator: list[Destination]) -> None:
        self.operator = operator
        self._commit: object = object()
        self._repo: list[Destination] = []

    def of(self, desired: DesiredState | None) -> list[Destination]:
        if desired is not None and desired.commit != self._commit:
            self._commit = desired.commit
            self._repo = []
            for resource in desired.notifiers.values():
                try:
                    self._repo.append(from_notifier(resource))
                except ReconcilerError as exc:  # one bad Notifier silences only itself
                    log.error("notifier not usable", extra={
                        "notifier": str(resource.key), "error": exc.message})
        return [*self.operator, *self._repo]
