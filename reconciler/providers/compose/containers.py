"""What Docker reports about a container, read for the compose provider: its labels, health
(and the output of its last check), whether it runs and for how long, the (service, replica)
slot it fills, whether it is the deployed revision, and the config hashes compose recorded for a
rendered document (``ConfigHashes``: a hand edit through compose is drift). Also ``tail``: the
end of a command's output for an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.providers import Health
from reconciler.providers.compose.render import (
    LABEL_COMPOSE_REVISION,
    LABEL_IMAGE,
    LABEL_REPLICA,
    LABEL_REVISION,
    NUMBER_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    Rendered,
    replica_of_project,
)

EXIT_LINES = 5  # output lines of an exited container that a failed deploy reports
_TAIL_CHARS = 1500
# Compose's hash of a service's configuration, which it puts on every container it creates.
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"


def tail(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:]


def labels_of(container: Mapping[str, Any]) -> dict[str, str]:
    return dict((container.get("Config") or {}).get("Labels") or {})


def health_of(container: Mapping[str, Any]) -> str:
    health = (container.get("State") or {}).get("Health") or {}
    return str(health.get("Status") or "none")


def health_output(container: Mapping[str, Any]) -> str:
    log = ((container.get("State") or {}).get("Health") or {}).get("Log") or []
    if not log:
        return ""
    last = log[-1]
    return f"exit {last.get('ExitCode')}: {str(last.get('Output') or '').strip()[-300:]}"


def is_running(container: Mapping[str, Any]) -> bool:
    state = container.get("State") or {}
    return bool(state.get("Running")) and not state.get("Restarting")


def up_for(container: Mapping[str, Any], now: float | None) -> float | None:
    """How long a running container has run at ``now`` (the Docker host's time, seconds since
    the epoch: ``DockerEngine.clock``), from its ``State.StartedAt``; None when it does not run
    or either time is unknown. A start after ``now`` (the clock was read before the container)
    counts as 0."""
    if now is None or not is_running(container):
        return None
    try:
        started = datetime.fromisoformat(str((container.get("State") or {}).get("StartedAt")))
    except ValueError:
        return None
    if started.year < 2000:  # Docker's zero time: never started
        return None
    return max(0.0, now - started.timestamp())


def int_label(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def slot_of(container: Mapping[str, Any], base: str) -> tuple[str, int]:
    """(service, replica) a container of resource project ``base`` fills: its compose container
    number in the scaled project ``base``, the number in its project's name ``base_r<n>`` in the
    per-replica layout (else its replica label; (service, 0) when it has none)."""
    labels = labels_of(container)
    service = labels.get(SERVICE_LABEL, "")
    project = labels.get(PROJECT_LABEL, "")
    if project == base:
        return service, int_label(labels.get(NUMBER_LABEL))
    number = replica_of_project(base, project)
    if number is not None:
        return service, number
    return service, int_label(labels.get(LABEL_REPLICA))


@dataclass(frozen=True)
class ConfigHashes:
    """What compose computes for a rendered document, per service (``CONFIG_HASH_FILE``)."""

    compose_revision: str
    services: Mapping[str, str]

    def edited(self, container: Mapping[str, Any]) -> bool:
        """The container was made from this document's revision, but not from this document:
        compose's own hash of its configuration differs (a hand edit through compose)."""
        labels = labels_of(container)
        wanted = self.services.get(labels.get(SERVICE_LABEL, ""))
        return (
            wanted is not None
            and labels.get(LABEL_COMPOSE_REVISION) == self.compose_revision
            and labels.get(CONFIG_HASH_LABEL) != wanted
        )


def is_deployed(
    container: Mapping[str, Any],
    revision: str,
    rendered: Rendered,
    hashes: ConfigHashes | None = None,
) -> bool:
    labels = labels_of(container)
    return (
        not (hashes is not None and hashes.edited(container))
        and labels.get(LABEL_REVISION) == revision
        and labels.get(LABEL_COMPOSE_REVISION) == rendered.compose_revision
        and str((container.get("Config") or {}).get("Image")) == labels.get(LABEL_IMAGE)
        and is_running(container)
        and health_of(container) != "unhealthy"
    )


# Docker's health status -> the contract's (a container without a check has status "none")
DOCKER_HEALTH = {
    "healthy": Health.HEALTHY,
    "unhealthy": Health.UNHEALTHY,
    "starting": Health.STARTING,
}
