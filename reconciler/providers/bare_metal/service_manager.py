"""The seam between the bare-metal provider and whatever keeps a service process alive.

``Supervisor`` (this machine, detached processes + pidfiles) implements it; systemd over SSH
has a provider of its own (remote.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from reconciler.providers.contract import Listening


@dataclass(frozen=True)
class ServiceRef:
    """Which service instance: enough to find it again, from any process."""

    environment: str
    name: str  # the service directory's name ("api"; "migrate.job" for a Job)
    service_dir: str  # <root>/<environment>/<name>
    log_path: str

    def __str__(self) -> str:
        return f"{self.environment}/{self.name}"


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one revision. ``env`` is the complete environment (secrets included): never
    log it or put it in an error message."""

    argv: list[str]
    cwd: str
    revision: str
    env: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ServiceStatus:
    running: bool
    revision: str | None = None
    pid: int | None = None
    started_at: str | None = None
    detail: str = ""
    exit_code: int | None = None  # of an exited process, when known


class ServiceManager(Protocol):
    async def start(self, ref: ServiceRef, launch: LaunchSpec) -> ServiceStatus:
        """Start ``launch`` detached; returns once the process exists (health is the caller's)."""

    async def stop(self, ref: ServiceRef, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; a no-op when nothing runs."""

    async def status(self, ref: ServiceRef) -> ServiceStatus:
        """Is it running, and which revision."""

    async def logs(self, ref: ServiceRef, tail: int) -> list[str]:
        """The last ``tail`` lines of its output."""

    async def listening(self, ref: ServiceRef, pid: int) -> Listening | None:
        """The sockets the running service's processes listen on, when its main process is
        still ``pid``; None when it is not, or that cannot be read."""

    async def remove(self, ref: ServiceRef) -> None:
        """Forget the service (state files, unit files); the caller stops it first."""
