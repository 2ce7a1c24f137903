"""The daemon's notification settings (its flags) and delivery limits: light to import, so the
CLI can take the flags without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_REPEAT_S = 4 * 3600.0


@dataclass
class DeliveryLimits:
    queue: int = 100  # messages waiting per destination; past it new ones are dropped
    attempts: int = 4  # sends of one message before it is given up
    backoff_s: float = 1.0  # before the 2nd attempt; doubled each time, jittered ±50 %
    max_backoff_s: float = 30.0
    timeout_s: float = 15.0  # one attempt, however Apprise's own timeouts are set
    delivered_kept: int = 500  # ids of delivered messages remembered in the state file


@dataclass
class NotifySettings:
    urls: list[str] = field(default_factory=list, repr=False)  # --notify / RECONCILER_NOTIFY
    ui_url: str | None = None  # links in messages: <ui_url>/resources/<env>/<kind>/<name>
    stale_after_s: float | None = 1800.0  # not_converging after this without a converged pass
    repeat_s: float = DEFAULT_REPEAT_S  # of the operator destinations
    limits: DeliveryLimits = field(default_factory=DeliveryLimits)


