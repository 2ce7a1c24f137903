"""The health gate of one instance, journaled as a ``health`` step.

A gate judges the instance its deploy started, known by the ``Identity`` the provider reports
(pid + start time, systemd invocation, container, Coolify deployment), not whatever answers on
its port: a probe that passes while the new process has died (an older process still holds the
port) must not make a release healthy. So, beside the judge, a watcher observes the instance
(first soon, then every probe ``interval``); the instance exiting, or being replaced by a
restart, fails the gate at once with "exited with code N" and its last output lines.

The judge: with probes (http/tcp/exec), they decide (``health/wait.py``). Where the provider
reads what the instance listens on (``reports_listening``), a pass of an http/tcp probe of the
instance's own address counts at once when the instance's processes hold every probed port, and
not at all when they hold no listening socket (another process answered); otherwise it counts
once the instance has been seen running, the same one, for min(interval, 1 s). Without probes, the
provider's own signal decides once settled: a platform check that passed on this instance
(Docker healthcheck, Coolify) is enough; without one the instance must still run, the same one,
``startPeriod`` after the deploy (``DEFAULT_STAY_UP_S`` without a ``health`` section).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from enum import Enum
from typing import Any

from reconciler.errors import ProviderError
from reconciler.health import has_probes, wait_healthy, wait_settled
from reconciler.health.probes import probed_ports
from reconciler.health.wait import (
    DEFAULT_INTERVAL_S,
    FIRST_RETRY_S,
    HealthPolicy,
    ProbeProgress,
)
from reconciler.observe import metrics
from reconciler.observe.tracing import span
from reconciler.providers import (
    Instance,
    InstanceState,
    Listening,
    Provider,
    listening_of,
    look_again,
    observe_one,
    probe_site,
)
from reconciler.providers.contract import Health, Phase
from reconciler.rollout.core import HEALTH_CHECK, EngineCore
from reconciler.rollout.lastlines import LAST_LINES, tail, with_output
from reconciler.rollout.strategies import health_for
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource

# How long a Service without probes must keep running after its deploy (its
# ``health.startPeriod`` when it has a health section without probes).
DEFAULT_STAY_UP_S = 1.0
# A probe pass counts once the instance it judges has run this long (or its probe interval, if
# shorter): a process that dies at start (a port held by another, a bad argument) is seen gone
# first, while a gate does not wait a whole default interval for every instance.
PASS_AFTER_UP_S = 1.0


# A look at the instance: an observation, or ``look_again`` of the gate's first look.
Look = Callable[[], Awaitable[InstanceState | None]]


def departure(started: InstanceState | None, now: InstanceState | None) -> str | None:
    """Why ``now`` is no longer the instance ``started`` (None: it still runs, the same one)."""
    if now is None:
        return "not found"
    if now.phase is Phase.MISSING:
        return now.detail or "missing"
    if not now.running:
        if now.exit_code is not None:
            return f"exited with code {now.exit_code}"
        return f"exited ({now.detail})" if now.detail else "exited"
    if started is not None and started.running and not now.identity.same_as(started.identity):
        return f"restarted: {started.identity} was replaced by {now.identity}"
    return None


async def _why_not_running(observed: Look) -> str:
    """What the provider says of an instance that failed its probes and is not running (e.g.
    which sandbox setting stopped it); empty when it runs or cannot be observed."""
    try:
        state = await observed()
    except ProviderError:
        return ""
    if state is None or state.running or not state.detail:
        return ""
    return f"; the instance is not running: {state.detail}"


# The last output lines a failed gate found, for the Outcome (set per health_gate call).
_LAST_OUTPUT: ContextVar[list[str] | None] = ContextVar("reconciler_gate_output",
                                                         default=None)


class Gate(EngineCore):
    """The health gate of one instance."""

    async def health_gate(self, deployment_id: str, provider: Provider, resource: Resource,
                          instance: Instance, as_deployed: InstanceState | None = None
                          ) -> tuple[bool, str]:
        """``as_deployed``: the instance as its deploy observed it right after the (re)start
        (``Provider.deploy``), the gate's first look; None: the gate looks first."""
        health = health_for(resource, instance)
        step = await self.store.start_step(deployment_id, "health", instance.id)
        started = time.monotonic()

        def observed() -> Any:
            return observe_one(provider, resource, instance)

        policy = HealthPolicy.from_spec(health or {})
        interval = policy.interval if health else DEFAULT_INTERVAL_S

        with span("health_gate", resource=str(resource.key), instance=instance.id):
            # the judge and the watcher run as tasks: they fill this list, shared with them
            output: list[str] = []
            token = _LAST_OUTPUT.set(output)
            try:
                first = as_deployed if as_deployed is not None else await observed()

                def looked_again() -> Awaitable[InstanceState | None]:
                    # is the first look's instance still up, and for how long
                    return look_again(provider, resource, instance, first)

                gone = departure(None, first)
                if gone is not None:
                    ok, message = False, await _with_output(provider, resource, instance,
                                                            first, gone)
                else:
                    def on_probe(progress: ProbeProgress) -> None:
                        self.emit(resource.key, HEALTH_CHECK,
                                  f"{instance.id}: {progress.describe()}")

                    self.emit(resource.key, HEALTH_CHECK, f"{instance.id}: starting")
                    ok, message = await _race(
                        _judge(provider, resource, instance, health, policy, first, observed,
                               looked_again, started, on_probe),
                        _watch(provider, resource, instance, first, looked_again, interval))
            finally:
                _LAST_OUTPUT.reset(token)
        metrics.HEALTH_CHECK_DURATION.observe(time.monotonic() - started)
        if not ok:
            metrics.HEALTH_CHECK_FAILURES.inc()
            self.emit(resource.key, "health check failed", f"{instance.id}: {message}")
            if output:
                self.failed_output[resource.key] = tuple(output)
        await self.store.finish_step(step, "succeeded" if ok else "failed", message)
        if ok:  # `status` says how fresh the health it shows is
            await self.store.mark_observed([resource.key])
        return ok, message


async def _race(judge: Any, watch: Any) -> tuple[bool, str]:
    """The judge's verdict, unless the watcher sees the instance go first."""
    tasks = [asyncio.ensure_future(judge), asyncio.ensure_future(watch)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        result: tuple[bool, str] = next(iter(done)).result()
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _watch(provider: Provider, resource: Resource, instance: Instance,
                 first: InstanceState | None, looked_again: Look,
                 interval: float) -> tuple[bool, str]:
    """Look until the instance is gone or replaced: soon after the start (most exits come
    early), then every probe interval. Returns only with a failure."""
    pause = FIRST_RETRY_S
    while True:
        await asyncio.sleep(min(pause, interval))
        pause *= 2
        now = await looked_again()
        gone = departure(first, now)
        if gone is not None:
            return False, await _with_output(provider, resource, instance, now, gone)


async def _judge(provider: Provider, resource: Resource, instance: Instance,
                 health: dict[str, Any] | None, policy: HealthPolicy,
                 first: InstanceState | None, observed: Look, looked_again: Look,
                 started: float, on_probe: Callable[[ProbeProgress], None]
                 ) -> tuple[bool, str]:
    if has_probes(health):
        runner, cwd = probe_site(provider, instance, first)
        answers = ProbeAnswers(provider, resource, instance, first,
                           probed_ports(health or {}, instance))
        result = await wait_healthy(health, instance, transport=runner, cwd=cwd,
                                    on_probe=on_probe,
                                    confirm=answers.confirm if answers.checked else None)
        if not result.healthy:
            return False, result.message + await _why_not_running(observed)
        if answers.last is Answerer.INSTANCE:
            # its own processes hold the probed ports: the pass was its own; a platform's own
            # health signal (a Docker healthcheck) is read again, as the time rule's look does
            last = first if first is None or first.health is Health.UNKNOWN else await observed()
        else:
            # A pass from whatever holds the port counts once our instance has been up for a
            # probe interval (the watcher fails the gate meanwhile if it goes).
            last = await _stayed_up(looked_again, first, started,
                                    min(policy.interval, PASS_AFTER_UP_S))
        message = result.message
    else:
        # The provider's own signal (Docker healthcheck, Coolify status), once decided, must
        # not be negative; then the instance must stay up for its start period.
        state = await wait_settled(observed)
        problem = departure(first, state) or (state.problem if state is not None else None)
        if problem is not None:
            return False, await _with_output(provider, resource, instance, state, problem)
        if not health and state is not None and state.health is Health.HEALTHY:
            # The platform's own check (a Docker healthcheck, Coolify's) passed on this very
            # instance, which has therefore run at least one check interval: that is the
            # signal the user declared, and the default stay-up would only add dead time.
            message = "healthy by the platform's own check"
            last = await observed()
        else:
            stay = (to_seconds((health or {}).get("startPeriod"), DEFAULT_STAY_UP_S)
                    if health else DEFAULT_STAY_UP_S)
            last = await _stayed_up(looked_again, first, started, stay)
            message = f"running for {stay:g}s"
    gone = departure(first, last) or (last.problem if last is not None else None)
    if gone is not None:
        return False, await _with_output(provider, resource, instance, last, gone)
    return True, message


class Answerer(Enum):
    """Who answered a passing probe of the instance's own address, by what it listens on."""

    INSTANCE = "instance"  # it listens on every probed port
    UNKNOWN = "unknown"  # not told, or it listens elsewhere (a local proxy may pass probes on)
    OTHER = "other"  # it listens on nothing: another process holds the port


def answerer(ports: Sequence[int], listening: Listening | None) -> Answerer:
    if listening is None or not ports:
        return Answerer.UNKNOWN
    if all(port in listening.tcp_ports for port in ports):
        return Answerer.INSTANCE
    return Answerer.OTHER if listening.none else Answerer.UNKNOWN


class ProbeAnswers:
    """Asks, after each passing probe, what the started instance listens on (where the
    provider tells): a pass on a port only another process holds is not the instance's."""

    def __init__(self, provider: Provider, resource: Resource, instance: Instance,
                 first: InstanceState | None, ports: tuple[int, ...]) -> None:
        self.provider, self.resource, self.instance = provider, resource, instance
        self.first, self.ports = first, ports
        self.checked = bool(ports) and provider.capabilities.reports_listening
        self.last = Answerer.UNKNOWN
        self.told = False  # the provider has read it once in this gate

    async def confirm(self) -> str | None:
        try:
            heard = await listening_of(self.provider, self.resource, self.instance, self.first)
        except ProviderError:
            heard = None
        self.last = answerer(self.ports, heard)
        if heard is None and self.told:
            # It could be read before: a read that fails now (the instance going, a process
            # gone mid-read) is no licence for the time rule, which a dying instance can pass.
            return "what the started instance listens on could not be read this time"
        # Never read (an image without a shell, descriptors it may not read): the time rule.
        self.told = self.told or heard is not None
        if self.last is not Answerer.OTHER:
            return None
        shown = ", ".join(str(p) for p in self.ports)
        return (f"the started instance listens on no socket: another process holds "
                f"port {shown}")


async def _stayed_up(look: Look,
                     first: InstanceState | None, started: float,
                     needed: float) -> InstanceState | None:
    """The instance's look once it has been up for ``needed``: by its host's clock when the
    provider reports its age (the first look's ``up_since``: a process started well before the
    gate began waits less, and the time between that look and the gate's start counts), else
    since the gate began. Not later than ``needed`` after the gate began: the instance has
    been seen, the same one, that long."""
    since = first.up_since if first is not None else None
    await _sleep_until(min(started, since if since is not None else started) + needed)
    while True:
        last = await look()
        if last is None or not last.running:
            return last  # the caller says why it is gone
        short = needed - last.up_for if last.up_for is not None else needed
        wait = min(short, started + needed - time.monotonic())
        if wait <= 0:
            return last
        await asyncio.sleep(wait)


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.monotonic()))


async def _with_output(provider: Provider, resource: Resource, instance: Instance,
                       state: InstanceState | None, why: str) -> str:
    """``why`` with the instance's last output lines (redacted: they go to the store)."""
    lines = list(state.last_output) if state is not None else []
    if not lines:
        try:
            lines = await provider.logs(resource, instance, tail=LAST_LINES)
        except Exception:  # output is a courtesy: the verdict stands without it
            lines = []
    if state is not None and state.detail and state.detail not in why:
        # what the provider says of it (e.g. the sandbox setting), also of a process that was
        # replaced: what it says of the run that ended
        why += f"; {state.detail}"
    kept = tail(lines)
    holder = _LAST_OUTPUT.get()
    if holder is not None:
        holder[:] = kept
    return with_output(why, kept)
