"""Run one Service rollout with its strategy: batches, slots, canary steps, traffic, waits.

The engine owns the deployment record and its bookkeeping; a ``RolloutRun`` only acts, and every
action goes through ``engine.step`` (journal first, then act) so a crash leaves an open step the
next start recovers. It remembers what it changed (instances moved in place, the slot it started,
whether traffic moved) so ``revert`` undoes exactly that, newest first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.errors import ReconcilerError
from reconciler.health.probes import probe
from reconciler.health.wait import has_probes
from reconciler.providers import (
    Instance,
    InstanceState,
    Provider,
    Release,
    probe_site,
    stage_ahead,
)
from reconciler.rollout import control
from reconciler.rollout.strategies import (
    BLUE_GREEN,
    CANARY,
    SLOTS,
    Strategy,
    health_for,
    other_slot,
    resolve_count,
    slot_resource,
)
from reconciler.spec.durations import parse_duration
from reconciler.spec.model import Resource
from reconciler.state.store import DeploymentRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from reconciler.rollout.traffic import Backend, TrafficRouter
    from reconciler.spec.model import ResourceKey
    from reconciler.state.store import Store

log = logging.getLogger("reconciler.rollout")

POLL_S = 0.5  # how often waits look for promote/abort/suspend signals
STAGE_AHEAD = 8  # instances of later batches staged at once while the first batches roll

# The gates a rollout can fail (RolloutFailed.gate).
HEALTH = "health"
ANALYSIS = "analysis"


class RolloutFailed(ReconcilerError):
    """A gate of the rollout failed (health, analysis): the engine rolls back."""

    code = "FR421"
    hint = ("it was rolled back: `reconciler history NAME -o json` shows the failed gate or "
            "measurement, `reconciler logs NAME` the new revision's output; commit a fix")
    exit_code = 1

    def __init__(self, message: str, *, gate: str = HEALTH) -> None:
        super().__init__(message)
        self.gate = gate  # HEALTH or ANALYSIS: the reason the rollback is counted under


class Aborted(ReconcilerError):
    code = "FR422"
    hint = ("an operator ran `reconciler abort NAME`; commit a fix to roll forward, or "
            "`reconciler apply --force` to retry this revision")
    exit_code = 1

    def __init__(self, actor: str) -> None:
        super().__init__(f"aborted by {actor}")
        self.actor = actor


class Interrupted(Exception):
    """The reconciler is stopping: leave the rollout for the next start to resume."""


class RolloutEngine(Protocol):
    """What a rollout uses of the engine: its store, its journal, gate and events."""

    store: Store
    stopping: bool

    def emit(self, key: ResourceKey, phase: str, message: str = "",
             error: ReconcilerError | None = None) -> None: ...

    async def step(self, deployment_id: str, action: str, instance: Instance,
                   operation: Awaitable[Any], detail: str = "") -> Any: ...

    async def health_gate(self, deployment_id: str, provider: Provider, resource: Resource,
                          instance: Instance, as_deployed: InstanceState | None = None
                          ) -> tuple[bool, str]: ...

    def release_for(self, resource: Resource, revision: str, commit: str | None) -> Release: ...


@dataclass
class RolloutRun:
    engine: RolloutEngine
    dep: DeploymentRecord
    provider: Provider
    resource: Resource
    release: Release
    strategy: Strategy
    on_detach: Callable[[], None] = lambda: None
    # What has been changed so far (for revert):
    moved: list[Instance] = field(default_factory=list)  # in place, in order
    slot_old: Resource | None = None
    slot_new: Resource | None = None
    old_instances: list[Instance] = field(default_factory=list)
    new_instances: list[Instance] = field(default_factory=list)
    started_new: list[Instance] = field(default_factory=list)
    traffic_moved: bool = False
    promoted_full: bool = False
    # Instances an interrupted deployment of this revision already moved and gated, still
    # running it: a resumed rollout continues after them instead of restarting them.
    done: set[str] = field(default_factory=set)
    # Instances whose deploy step failed (unreachable, frozen): a rollback tries them last.
    unreached: list[Instance] = field(default_factory=list)
    # Stagings ahead still going on, by instance id (``_stage_ahead``).
    staging: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _router: TrafficRouter | None = None

    @property
    def key(self) -> Any:
        return self.resource.key

    @property
    def revision(self) -> str:
        return self.release.revision

    # -- entry points -----------------------------------------------------------------------
    async def execute(self, instances: list[Instance]) -> str:
        """Roll out; returns a summary. Raises RolloutFailed/Aborted/ReconcilerError to make the
        engine revert, Interrupted to leave it for a resume."""
        await control.clear(self.engine.store, self.key)
        if self.strategy.slotted:
            return await self._slotted()
        if self.strategy.type == CANARY:
            return await self._canary_in_place(instances)
        return await self._batched(instances)

    @property
    def can_revert_in_place(self) -> bool:
        return bool(self.moved)

    # -- in place: recreate, rolling ----------------------------------------------------------
    async def _batched(self, instances: list[Instance]) -> str:
        batches = self.strategy.batches(instances)
        resumed = 0
        self._stage_ahead([i for batch in batches[1:] for i in batch if i.id not in self.done])
        try:
            for n, batch in enumerate(batches, 1):
                if all(i.id in self.done for i in batch):
                    self.moved.extend(batch)  # gated before the interruption: reverted on failure
                    resumed += 1
                    continue
                if n > resumed + 1:
                    await self.checkpoint(f"batch {n}/{len(batches)}")
                    if self.strategy.pause_s:
                        await self.wait(self.strategy.pause_s, f"pause before batch {n}")
                await self._move(batch, f"batch {n}/{len(batches)}")
        finally:
            await self._stop_staging(list(self.staging))
        return f"{len(instances)} instance(s) in {len(batches)} batch(es)" + (
            f", resumed after batch {resumed}" if resumed else "")

    def _stage_ahead(self, instances: list[Instance]) -> None:
        """The new release staged on ``instances`` (later batches), in rollout order, while the
        first batches deploy and gate, where the provider can (``stages_ahead``): a batch's
        upload is then done when its turn comes. Nothing that runs changes, so this is not a
        journaled step; a failure is left to the instance's own deploy, which delivers again.
        A staging not done when its instance's turn comes is stopped: the deploy delivers
        under its own retry policy (a host that froze under a staging is not waited for
        twice)."""
        if not instances or not self.provider.capabilities.stages_ahead:
            return
        slots = asyncio.Semaphore(STAGE_AHEAD)

        async def stage(instance: Instance) -> None:
            async with slots:
                try:
                    await stage_ahead(self.provider, self.release, instance)
                except (ReconcilerError, OSError) as exc:
                    log.debug("staging ahead failed", extra={
                        "resource": str(self.key), "instance": instance.id, "error": str(exc)})

        for instance in instances:
            self.staging[instance.id] = asyncio.create_task(stage(instance))

    async def _stop_staging(self, instance_ids: list[str]) -> None:
        tasks = [t for t in (self.staging.pop(i, None) for i in instance_ids) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _move(self, batch: list[Instance], label: str) -> None:
        """Deploy the new revision to ``batch`` at once, then gate every instance of it."""
        self.moved.extend(batch)
        detail = f"revision {self.revision} ({label})"

        async def deploy_and_gate(instance: Instance) -> tuple[bool, str]:
            # each instance is gated as soon as it is up, not when the slowest of its batch is
            if instance.id in self.done:  # moved and gated before an interruption
                return True, "gated before the interruption"
            await self._stop_staging([instance.id])  # done by now, or its deploy takes over
            try:
                started: InstanceState | None = await self.engine.step(
                    self.dep.id, "deploy", instance,
                    self.provider.deploy(self.release, instance), detail)
            except (ReconcilerError, OSError, TimeoutError):
                self.unreached.append(instance)
                raise
            return await self.engine.health_gate(self.dep.id, self.provider, self.resource,
                                                 instance, started)

        results = await _all(deploy_and_gate(i) for i in batch)
        bad = [f"{i.id}: health check failed: {msg}"
               for i, (ok, msg) in zip(batch, results, strict=True) if not ok]
        if bad:
            raise RolloutFailed("; ".join(bad))

    # -- canary in place ----------------------------------------------------------------------
    async def _canary_in_place(self, instances: list[Instance]) -> str:
        total = len(instances)
        for n, step in enumerate(self.strategy.steps, 1):
            label = f"step {n}/{len(self.strategy.steps)}"
            if self.promoted_full:
                break
            await self.checkpoint(label)
            if "setCanary" in step:
                want = resolve_count(step["setCanary"], total)
                batch = [i for i in instances[:want] if i not in self.moved]
                if batch:
                    await self._move(batch, f"{label}: canary {want}/{total}")
            elif "pause" in step:
                await self._pause(step["pause"], label)
            elif "analysis" in step:
                await self._analysis(step["analysis"], self.resource, self.moved or instances,
                                     label)
        rest = [i for i in instances if i not in self.moved]
        if rest:
            await self.checkpoint("promotion")
            size = resolve_count(self.strategy.max_parallel, len(rest), default=len(rest))
            for start in range(0, len(rest), size):
                await self._move(rest[start:start + size], "promotion")
        return f"canary promoted to {total} instance(s)"

    # -- slots: blue-green, weighted canary ---------------------------------------------------
    async def _slotted(self) -> str:
        ports = self.strategy.ports
        slots = {s: slot_resource(self.resource, s, int(ports[s])) for s in SLOTS}
        observed = {s: await self.provider.observe(slots[s]) for s in SLOTS}
        record = await self.engine.store.get_resource(self.key)
        applied = record.applied_revision if record else None

        def runs(slot: str, revision: str | None) -> bool:
            states = observed[slot]
            return bool(states) and all(st.running and (revision is None
                                                        or st.revision == revision)
                                        for st in states)

        # Resume: a slot already running this revision everywhere is the new one (a crash
        # after it started); otherwise the slot serving the applied revision is the old one.
        new = next((s for s in SLOTS if runs(s, self.revision)), None)
        if new is not None:
            old: str | None = other_slot(new)
        else:
            old = next((s for s in SLOTS if runs(s, applied)), None) or next(
                (s for s in SLOTS if any(st.running for st in observed[s])), None)
            new = other_slot(old)
        if old is not None and not any(st.running for st in observed[old]):
            old = None
        self.slot_new = slots[new]
        self.slot_old = slots[old] if old else None
        self.new_instances = await self.provider.instances(self.slot_new)
        self.old_instances = (await self.provider.instances(self.slot_old)
                              if self.slot_old else [])
        new_release = self.engine.release_for(self.slot_new, self.revision,
                                              self.release.config_commit)
        # 1. the new slot beside the old one, health-gated
        self.started_new = list(self.new_instances)
        started: list[InstanceState | None] = await _all(
            self.engine.step(self.dep.id, "deploy", i, self.provider.deploy(new_release, i),
                             f"revision {self.revision} (slot {new})")
            for i in self.new_instances)
        results = await asyncio.gather(*(
            self.engine.health_gate(self.dep.id, self.provider, self.slot_new, i, state)
            for i, state in zip(self.new_instances, started, strict=True)))
        bad = [f"{i.id} (slot {new}): health check failed: {msg}"
               for i, (ok, msg) in zip(self.new_instances, results, strict=True) if not ok]
        if bad:
            raise RolloutFailed("; ".join(bad))
        # 2. traffic: weighted steps (canary), then everything
        if self.strategy.type == CANARY:
            for n, step in enumerate(self.strategy.steps, 1):
                label = f"step {n}/{len(self.strategy.steps)}"
                if self.promoted_full:
                    break
                await self.checkpoint(label)
                if "setWeight" in step:
                    await self._route(int(step["setWeight"]), f"{label}: weight")
                elif "pause" in step:
                    await self._pause(step["pause"], label)
                elif "analysis" in step:
                    await self._analysis(step["analysis"], self.slot_new, self.new_instances,
                                         label)
        await self.checkpoint("switch")
        await self._route(100, f"switch to slot {new}")
        # 3. keep the old slot for an instant revert, then retire it
        if self.slot_old is not None:
            if self.strategy.type == BLUE_GREEN and self.strategy.scale_down_delay_s > 0:
                await self.wait(self.strategy.scale_down_delay_s,
                                f"keeping slot {old} for an instant revert")
            old_resource = self.slot_old
            await _all(self.engine.step(self.dep.id, "retire", i,
                                        self.provider.stop(old_resource, i), f"slot {old}")
                       for i in self.old_instances)
        await self._retire_unslotted()
        return f"slot {new} serving" + (f", slot {old} retired" if old else "")

    async def _retire_unslotted(self) -> None:
        """A Service that ran without slots before (another strategy) stops its plain unit once
        a slot serves."""
        states = await self.provider.observe(self.resource)
        for state in states:
            if state.running:
                await self.engine.step(self.dep.id, "retire", state.instance,
                                       self.provider.stop(self.resource, state.instance),
                                       "unslotted instance")

    def router(self) -> TrafficRouter | None:
        if self.strategy.traffic is None:
            return None
        if self._router is None:
            from reconciler.rollout.traffic import router_from_spec

            self._router = router_from_spec(self.strategy.traffic, service=self.key.name)
        return self._router

    def _backends(self, weight_new: int) -> list[Backend]:
        from reconciler.rollout.traffic import Backend

        traffic = self.strategy.traffic or {}
        fixed = (traffic.get("nginx") or {}).get("address")
        out: list[Backend] = []
        pairs = [(self.slot_new, self.new_instances, weight_new)]
        if self.slot_old is not None:
            pairs.append((self.slot_old, self.old_instances, 100 - weight_new))
        for slot_res, instances, weight in pairs:
            if slot_res is None or weight <= 0:
                continue
            slot = slot_res.labels.get("fraisier.dev/slot", "")
            port = int(self.strategy.ports[slot])
            out += [Backend(str(fixed or i.address), port, weight) for i in instances]
        return out

    async def _route(self, weight_new: int, label: str) -> None:
        router = self.router()
        if router is None:
            return
        backends = self._backends(weight_new)
        self.traffic_moved = True
        await self.engine.step(self.dep.id, "traffic", Instance("traffic"),
                               router.route(backends), f"{label} {weight_new}% new")

    # -- waits, signals, analysis -------------------------------------------------------------
    async def _pause(self, pause: dict[str, Any], label: str) -> None:
        duration = pause.get("duration")
        seconds = parse_duration(str(duration)) if duration else None
        step = await self.engine.store.start_step(
            self.dep.id, "pause", "rollout",
            f"{label}: " + (f"{duration}" if seconds is not None else "until promoted"))
        try:
            how = await self.wait(seconds, label)
        except BaseException as exc:
            await self.engine.store.finish_step(step, "failed", str(exc) or type(exc).__name__)
            raise
        await self.engine.store.finish_step(step, "succeeded", how)

    async def checkpoint(self, where: str) -> None:
        """Between batches and steps: stop, abort, or wait while the resource is suspended."""
        await self.wait(0.0, where)

    async def wait(self, seconds: float | None, what: str) -> str:
        """Wait ``seconds`` (None: until promoted; 0: just look at the signals). Returns how it
        ended: ``elapsed``, ``promoted`` or ``promoted (full)``. Suspending the resource pauses
        the rollout here (journaled as a ``suspended`` step); abort raises ``Aborted``; a
        stopping reconciler raises ``Interrupted``."""
        store = self.engine.store
        deadline = None if seconds is None else time.monotonic() + seconds
        detached = False
        paused_step: str | None = None
        try:
            while True:
                if self.engine.stopping:
                    raise Interrupted(what)
                actor = await control.consume(store, self.key, control.ABORT)
                if actor is not None:
                    raise Aborted(actor)
                full = await control.consume(store, self.key, control.PROMOTE_FULL)
                if full is not None:
                    self.promoted_full = True
                    self.engine.emit(self.key, "promoted", f"fully, by {full}")
                    return "promoted (full)"
                if seconds is None or seconds > 0:
                    who = await control.consume(store, self.key, control.PROMOTE)
                    if who is not None:
                        self.engine.emit(self.key, "promoted", f"{what}, by {who}")
                        return "promoted"
                record = await store.get_resource(self.key)
                suspended = bool(record and record.suspended)
                if suspended and paused_step is None:
                    self.engine.emit(self.key, "paused", f"suspended at {what}")
                    paused_step = await store.start_step(self.dep.id, "suspended", "rollout",
                                                         f"paused at {what}")
                    await store.update_status(self.key, last_error=f"rollout paused at {what}"
                                              " (resource suspended; `reconciler resume`)")
                elif paused_step is not None and not suspended:
                    self.engine.emit(self.key, "resumed", what)
                    await store.finish_step(paused_step, "succeeded", "resumed")
                    await store.update_status(self.key, last_error=None)
                    paused_step = None
                if paused_step is None and deadline is not None \
                        and time.monotonic() >= deadline:
                    return "elapsed"
                if (seconds is None or paused_step is not None) and not detached:
                    # Waiting on a person: the pass goes on without this rollout.
                    detached = True
                    if seconds is None:
                        await store.update_status(
                            self.key, last_error=f"rollout paused at {what}: waiting for "
                                                 f"`reconciler promote {self.key.name}`")
                    self.on_detach()
                await asyncio.sleep(POLL_S)
        finally:
            if paused_step is not None:
                await store.finish_step(paused_step, "interrupted", what)

    async def _analysis(self, spec: dict[str, Any], resource: Resource,
                        instances: list[Instance], label: str) -> None:
        from reconciler.rollout.analysis import run_analysis

        async def health() -> tuple[bool, str]:
            return await self.instant_health(resource, instances)

        step = await self.engine.store.start_step(self.dep.id, "analysis", "rollout",
                                                  f"{label}: {spec.get('duration')}")
        try:
            result = await run_analysis(
                spec, prometheus_url=self.strategy.prometheus_url,
                variables={"name": self.key.name, "environment": self.key.environment,
                           "revision": self.revision,
                           **({"slot": resource.labels["fraisier.dev/slot"]}
                              if "fraisier.dev/slot" in resource.labels else {})},
                health=health, should_stop=lambda: self.engine.stopping)
        except BaseException as exc:
            await self.engine.store.finish_step(step, "failed", str(exc) or type(exc).__name__)
            raise
        await self.engine.store.finish_step(step, "succeeded" if result.passed else "failed",
                                            result.message[:2000])
        if self.engine.stopping:
            raise Interrupted(label)
        if not result.passed:
            raise RolloutFailed(f"{label}: analysis failed: {result.message}", gate=ANALYSIS)

    async def instant_health(self, resource: Resource,
                             instances: list[Instance]) -> tuple[bool, str]:
        """One look at every instance: running per the provider, and its probes pass once."""
        states = {s.instance.id: s for s in await self.provider.observe(resource)}
        problems: list[str] = []
        for instance in instances:
            state = states.get(instance.id)
            problem = state.problem if state is not None else "not found"
            if problem is not None:
                problems.append(f"{instance.id}: {problem}")
                continue
            health = health_for(resource, instance)
            if has_probes(health):
                assert health is not None
                runner, cwd = probe_site(self.provider, instance, state)
                result = await probe(health, instance, transport=runner, cwd=cwd)
                if not result.ok:
                    problems.append(f"{instance.id}: {result.message}")
        return (not problems, "; ".join(problems) or f"{len(instances)} instance(s) healthy")

    # -- revert -----------------------------------------------------------------------------
    async def revert_slots(self) -> tuple[bool, str]:
        """Undo a slotted rollout: traffic back to the old slot, the new slot stopped.
        Returns (an old slot still serves, message)."""
        if self.traffic_moved and self.slot_old is not None:
            await self._route(0, f"revert to slot {self.slot_old.labels['fraisier.dev/slot']}")
        new = self.slot_new
        if new is not None:
            await _all(self.engine.step(self.dep.id, "stop", i, self.provider.stop(new, i),
                                        "new slot")
                       for i in self.started_new)
        if self.slot_old is None:
            return False, "no previous slot to keep serving"
        return True, f"slot {self.slot_old.labels['fraisier.dev/slot']} kept serving"


async def _all(awaitables: Any) -> list[Any]:
    """Run concurrently; wait for every one even when some fail, then raise the first error
    (a half-finished sibling must not be left running unjournaled). Returns the results."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)
