"""Wait until an instance is healthy, with Docker/Kubernetes-style thresholds.

Timing (all Go durations): wait ``initialDelay``, then probe every ``interval`` (measured from the
start of one probe to the start of the next). Failures while ``startPeriod`` lasts (counted from
the call) do not count. Until the first pass, while ``startPeriod`` lasts, probes come sooner:
50 ms apart, then twice as far each time up to ``interval`` (as Docker's ``start_interval``), so
an instance that listens 300 ms after its start is healthy then, not at the next ``interval``
(2 s by default); failures that count and consecutive passes stay ``interval`` apart. Healthy
after ``successThreshold`` consecutive passes; unhealthy after ``failureThreshold`` consecutive
counted failures. A service that flaps between the two never reaches either threshold, so an
overall deadline (by default the time the thresholds could need, twice over) ends the wait as
unhealthy.

A health section without http/tcp/exec means "healthy when its process is running": give
``is_running`` and it is asked once, after ``initialDelay``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.health.probes import DEFAULT_TIMEOUT_S, PROBE_KINDS, ProbeResult, probe
from reconciler.providers.contract import CommandRunner, Health, Instance, InstanceState
from reconciler.spec.durations import to_seconds

DEFAULT_INTERVAL_S = 2.0
DEFAULT_INITIAL_DELAY_S = 0.0
DEFAULT_START_PERIOD_S = 10.0
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_FAILURE_THRESHOLD = 3
FIRST_RETRY_S = 0.05  # the first probe after a failed one in the start period
# How long the gate waits for a platform health check (Docker's) still "starting" to decide.
SETTLE_DEADLINE_S = 60.0
SETTLE_POLL_S = 0.2


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    message: str
    probes: int


@dataclass(frozen=True)
class HealthPolicy:
    interval: float
    timeout: float
    initial_delay: float
    start_period: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def from_spec(cls, health: Mapping[str, Any]) -> HealthPolicy:
        policy = cls(
            interval=to_seconds(health.get("interval"), DEFAULT_INTERVAL_S),
            timeout=to_seconds(health.get("timeout"), DEFAULT_TIMEOUT_S),
            initial_delay=to_seconds(health.get("initialDelay"), DEFAULT_INITIAL_DELAY_S),
            start_period=to_seconds(health.get("startPeriod"), DEFAULT_START_PERIOD_S),
            success_threshold=int(health.get("successThreshold", DEFAULT_SUCCESS_THRESHOLD)),
            failure_threshold=int(health.get("failureThreshold", DEFAULT_FAILURE_THRESHOLD)),
        )
        if policy.success_threshold < 1 or policy.failure_threshold < 1:
            raise ValueError("successThreshold and failureThreshold must be at least 1")
        return policy

    def default_deadline(self) -> float:
        per_probe = self.interval + self.timeout
        needed = self.start_period + (self.success_threshold + self.failure_threshold) * per_probe
        return self.initial_delay + 2 * needed


def has_probes(health: Mapping[str, Any] | None) -> bool:
    if not health:
        return False
    return any(health.get(k) is not None for k in PROBE_KINDS)


@dataclass(frozen=True)
class ProbeProgress:
    """Where a health gate stands after one probe: for people watching (``apply`` on a
    terminal), never for deciding anything."""

    number: int  # probes so far
    ok: bool
    message: str
    passes: int  # consecutive passes / needed
    success_threshold: int
    failures: int  # consecutive failures counted (not during the start period) / allowed
    failure_threshold: int
    elapsed_s: float
    deadline_s: float

    def describe(self) -> str:
        verdict = "ok" if self.ok else "failing"
        return (f"probe {self.number} {verdict}: {self.passes} of {self.success_threshold} "
                f"passes, {self.failures} of {self.failure_threshold} failures, "
                f"{self.elapsed_s:.0f}s of {self.deadline_s:.0f}s")


async def wait_healthy(
    health: Mapping[str, Any] | None,
    instance: Instance,
    *,
    transport: CommandRunner | None = None,
    cwd: str | None = None,
    is_running: Callable[[], Awaitable[bool]] | None = None,
    deadline_s: float | None = None,
    on_probe: Callable[[ProbeProgress], None] | None = None,
    confirm: Callable[[], Awaitable[str | None]] | None = None,
) -> HealthResult:
    """Probe ``instance`` until the thresholds decide; never raises for an unhealthy service.
    ``transport`` and ``cwd`` are where exec probes run (see ``probe``); ``on_probe`` hears
    of every probe (progress on a terminal). ``confirm`` is asked after each passing probe
    whether the pass was the instance's own: a reason why not makes it a failed probe."""
    health = health or {}
    policy = HealthPolicy.from_spec(health)
    started = time.monotonic()
    if policy.initial_delay > 0:
        await asyncio.sleep(policy.initial_delay)

    if not has_probes(health):
        if is_running is None:
            raise ValueError("health has no http/tcp/exec probe and no is_running check was given")
        running = await is_running()
        return HealthResult(running, "process running" if running else "process not running", 1)

    deadline = started + (deadline_s if deadline_s is not None else policy.default_deadline())
    passes = failures = probes = 0
    passed_once = False
    retry = FIRST_RETRY_S
    last = ""
    while True:
        probe_started = time.monotonic()
        result = await probe(health, instance, transport=transport, cwd=cwd)
        probes += 1
        last = result.message
        if result.ok and confirm is not None:
            why_not = await confirm()
            if why_not is not None:
                result = ProbeResult(False, f"{last}, but {why_not}", result.duration_s)
                last = result.message
        if result.ok:
            passed_once = True
            passes += 1
            failures = 0
        else:
            passes = 0
            if probe_started - started >= policy.start_period:
                failures += 1
        if on_probe is not None:
            on_probe(ProbeProgress(probes, result.ok, last, passes, policy.success_threshold,
                                   failures, policy.failure_threshold,
                                   time.monotonic() - started, deadline - started))
        if result.ok and passes >= policy.success_threshold:
            return HealthResult(True, last, probes)
        if not result.ok and failures >= policy.failure_threshold:
            return HealthResult(False, f"{last} ({failures} consecutive failures)", probes)
        next_at = probe_started + policy.interval
        if not passed_once and probe_started - started < policy.start_period:
            next_at = probe_started + min(retry, policy.interval)
            retry *= 2
        if next_at >= deadline:
            return HealthResult(
                False, f"not healthy within {deadline - started:g}s; last: {last}", probes
            )
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def wait_settled(
    observe: Callable[[], Awaitable[InstanceState | None]],
    deadline_s: float = SETTLE_DEADLINE_S,
) -> InstanceState | None:
    """The instance's state once the platform's own health check has decided (``health`` is not
    ``STARTING``), or as it is after ``deadline_s``: a gate without a ``health`` section judges
    the instance by that state (``InstanceState.problem``)."""
    deadline = time.monotonic() + deadline_s
    while True:
        state = await observe()
        if state is None or state.health is not Health.STARTING or not state.running:
            return state
        if time.monotonic() >= deadline:
            return state
        await asyncio.sleep(SETTLE_POLL_S)
