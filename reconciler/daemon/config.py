"""What the daemon is told at start (``reconciler daemon``'s options, resolved by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from reconciler.daemon.http_guard import HttpLimits
from reconciler.notifications.settings import NotifySettings


@dataclass
class DaemonConfig:
    repo: str
    ref: str | None
    path: str
    listen_host: str
    listen_port: int
    interval: float
    prune: bool
    state_dir: Path
    db_url: str
    heal: bool = True
    max_backoff: float = 300.0
    webhook_secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    webhook_repos: list[str] = field(default_factory=list)
    webhook_branches: list[str] = field(default_factory=list)
    api_token: bytes | None = field(default=None, repr=False)
    environments: set[str] = field(default_factory=set)
    heal_interval: float | None = None  # None: every --interval
    # a pass running longer makes /readyz not ready (None: overrun.default_limit(interval))
    pass_overrun: float | None = None
    ha: bool = False  # share the fleet with other replicas on the same database
    shard_ttl: float = 15.0
    pin_retries: int = 6  # fetches of a pushed commit not found yet (0.5 s, 1 s, 2 s, … apart)
    pin_backoff: float = 0.5
    # audit events older than this are deleted (None: kept forever), every audit_prune_interval
    audit_retention: timedelta | None = timedelta(days=90)
    audit_prune_interval: float = 3600.0
    # webhook delivery ids (replay protection) are forgotten after this, on the same timer: a
    # replay older than that still cannot move the fleet back (a pass never goes backwards)
    delivery_retention: timedelta = timedelta(days=30)
    http: HttpLimits = field(default_factory=HttpLimits)  # timeouts and connection caps
    # --commit-status targets (source/commit_status.py StatusTarget)
    commit_status: list[Any] = field(default_factory=list)
    notify: NotifySettings = field(default_factory=NotifySettings)  # --notify, --ui-url, …
